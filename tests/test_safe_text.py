"""safe_text: store text through Markdown and Plotly shows as typed, checked against an
independent CommonMark renderer (markdown-it-py) and GitHub's autolink-literal patterns."""

from __future__ import annotations

import html
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from first_core.views.safe_text import WORD_JOINER, for_markdown, for_plotly

NASTY = ["![u](http://x.example/up.png).csv", '<a href="https://x.example/">A</a>',
         "**bold** _it_ ~~s~~ `code` ``two``", "# heading", "- item", "1. one", "> quote",
         "| a | b |", "$x^2$ $$y$$", ":material/home: :smile: :red[red]", "a & b &amp; &lt;",
         "[link](javascript:alert(1))", "<img src=x onerror=alert(1)>", "x\\y \\* \\",
         "www.x.example and a@b.example and HTTPS://y.example", "    indented code",
         "two\nlines\n\n# and a heading", "<span style='color:red'>r</span>", "", " "]

markdown_it = pytest.importorskip("markdown_it", reason="markdown-it-py (streamlit's rich) needed")
RENDER = markdown_it.MarkdownIt("commonmark").enable(["table", "strikethrough"])
# mdast-util-gfm-autolink-literal (what Streamlit's remark-gfm links with, after escapes)
GFM_URL = re.compile(r"(?i)(https?://|www(?=\.))[-.\w]+")
GFM_EMAIL = re.compile(r"[-.\w+]+@[-\w]+(\.[-\w]+)+")


def _shown(text: str) -> str:
    """What a browser shows for Markdown `text`: rendered, tags dropped, entities decoded."""
    rendered = RENDER.render(text)
    assert not re.search(r"<(?!/?p>|br ?/?>)", rendered), rendered  # only <p> and <br>
    return html.unescape(re.sub(r"<[^>]+>", "", rendered.replace("<br />\n", "\n"))).strip()


def _expected(text: str) -> str:
    return "\n".join(" ".join(line.split()) for line in text.splitlines()).strip()


@pytest.mark.parametrize("text", NASTY)
def test_markdown_shows_the_text_as_typed_and_nothing_else(text):
    safe = for_markdown(text)
    shown = _shown(safe).replace(WORD_JOINER, "")
    assert shown == _expected(text).replace("\n\n", "\n")
    visible = _shown(safe)
    assert not GFM_URL.search(visible) and not GFM_EMAIL.search(visible), visible


@given(st.text(max_size=60))
def test_any_text_renders_as_itself(text):
    safe = for_markdown(text)
    shown = _shown(safe).replace(WORD_JOINER, "")
    # markdown-it drops NUL and some control characters on its own; compare the rest
    keep = _expected(text).replace("\0", "\ufffd")
    if all(c.isprintable() or c in "\n " for c in keep) and "\n\n" not in keep:
        assert shown == keep


@pytest.mark.parametrize("text", NASTY)
def test_plotly_text_has_no_tags_and_decodes_to_the_text(text):
    safe = for_plotly(text)
    assert "<" not in safe and ">" not in safe
    assert html.unescape(safe) == text
