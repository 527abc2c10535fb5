"""Text from a store, a file or a file name, made to show as itself in Markdown and in Plotly.

Streamlit renders `st.markdown`, `st.caption`, `st.success` / `info` / `warning` / `error`,
headers and widget labels as Markdown (GitHub flavour, with math, emoji shortcodes, colour
directives and Material icons); Plotly renders a subset of HTML (`<a href>`, `<b>`,
`<span style>`, `<br>`) in titles, legends, tick labels and hover text. A run id, a gold
label, a config value, a column or file name is data: shown through either without this, a
name like `![u](http://x.example/u.png).csv` becomes an image the browser fetches and
`<a href="...">A</a>` a link. Every such string goes through `for_markdown` or `for_plotly`
on its way to the page (the pages and `first_core.views.plots` do so); data text in bulk (questions,
tables) goes through `st.text` / `st.dataframe`, which never render anything.
"""

from __future__ import annotations

import re

# every ASCII punctuation character: CommonMark lets each be escaped with a backslash, which
# then stands for the character itself (no emphasis, link, image, heading, list, table, math,
# `:shortcode:` or `:color[...]` directive, HTML tag or entity can start from an escaped one)
_PUNCTUATION = re.compile(r"([!-/:-@\[-`{-~])")
# GitHub's autolink literals (`http://...`, `www.`, `a@b.c`) are found in the text after the
# escapes are resolved, so escaping cannot stop them; a word joiner (U+2060, invisible) after
# the scheme or `www` and before `@` does
_AUTOLINK = re.compile(r"(?i)(?<=https)(?=:)|(?<=http)(?=:)|(?<=www)(?=\.)|(?=@)")
WORD_JOINER = "\u2060"


def for_markdown(text: object) -> str:
    """`text` as Markdown that renders exactly as `text` (line breaks kept as hard breaks,
    other runs of white space as one space): nothing in it formats, links or loads."""
    lines = [" ".join(line.split()) for line in str(text).splitlines()] or [""]
    return "  \n".join(_PUNCTUATION.sub(r"\\\1", _AUTOLINK.sub(WORD_JOINER, line))
                       for line in lines)


def for_plotly(text: object) -> str:
    """`text` for a Plotly title, legend name, tick label or hover text: `&`, `<` and `>`
    as entities, so Plotly shows them instead of reading tags (`<a>`, `<b>`, `<span>`)."""
    return str(text).replace("&", "&amp;").replace("<", "&lt;").replace(">", "&gt;")
