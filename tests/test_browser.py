"""End to end in a real browser: `streamlit run` + headless Debian Chromium via Playwright.

On a fixture store: the temperature slider changes the ECE (screenshot in tests/artifacts/);
the sidebar lists exactly the seven pages, also on the first request of a fresh server;
clicking a reliability bar lists that bin's examples (and the URL keeps the selection);
the Home upload box imports a file as its own pipeline; data text with Markdown images
makes the browser fetch nothing; titles and legends of the figures do not overlap; the
deferral threshold, the AUROC / AURC cards and the risk-coverage curve show and move, and a
garbage `?t=` falls back; no page requests anything from a host other than localhost.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from first_core.store.reads import list_runs, load_examples
from first_core.store.writes import Store
from first_core.fixtures import run_id, write_fixture_store

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
sys.path.insert(0, str(ROOT))
from benchmarks.bench_browser import CHROMIUM, CHROMIUM_ARGS, dashboard_server  # noqa: E402

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not installed (Debian package `chromium`; scripts/test.sh "
                "installs it when run as root)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright (Python) not installed: pip install playwright")
PAGE_TITLES = ["Home", "Reliability", "Top-k coverage", "Temperature search", "Compare runs",
               "Examples", "Learn calibration"]


@pytest.fixture(scope="module")
def fixture_path(tmp_path_factory) -> Path:
    return write_fixture_store(tmp_path_factory.mktemp("browser") / "fixture.duckdb", 150, seed=0)


@pytest.fixture
def server(fixture_path):
    """A fresh dashboard on a free localhost port over the fixture store."""
    try:
        with dashboard_server(fixture_path) as url:
            yield url
    except RuntimeError as exc:
        pytest.fail(str(exc))


@pytest.fixture
def browser():
    with sync_api.sync_playwright() as pw:
        chromium = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                      headless=True)
        try:
            yield chromium
        finally:
            chromium.close()


def sidebar_pages(page) -> list[str]:
    """The sidebar's page links once the app has finished its run (the status widget gone)."""
    links = page.locator('[data-testid="stSidebarNav"] a')
    links.first.wait_for(timeout=30_000)
    page.locator('[data-testid="stMain"] h1').first.wait_for(timeout=30_000)
    page.wait_for_function("() => !document.querySelector('[data-testid=\"stStatusWidget\"]')",
                           timeout=30_000)
    page.wait_for_timeout(300)
    return [t.strip().splitlines()[-1] for t in links.all_inner_texts()]  # drop the icon name


@pytest.mark.parametrize("first_path", ["", "reliability", "examples"])
def test_sidebar_lists_exactly_the_seven_pages_on_a_fresh_servers_first_request(
        server, browser, first_path):
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    page.goto(f"{server}/{first_path}", timeout=60_000)  # the first request of this server
    assert sidebar_pages(page) == PAGE_TITLES
    # app.py ran (its store picker is in the sidebar) and the requested page is shown
    page.locator('[data-testid="stSidebar"] [data-testid="stSelectbox"]').first.wait_for(
        timeout=30_000)
    title = {"": "first-lab", "reliability": "Reliability", "examples": "Examples"}[first_path]
    sync_api.expect(page.locator("h1").first).to_contain_text(title, timeout=30_000)
    page.reload()
    assert sidebar_pages(page) == PAGE_TITLES


def test_clicking_a_bar_lists_its_examples_and_the_url_keeps_it(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    page.goto(f"{server}/reliability?runs={run_id('student_ft', 0)}&split=test&conv=option"
              "&mode=logit&c=1&bins=10", timeout=60_000)
    chart = page.locator('[data-testid="stPlotlyChart"]').first
    chart.wait_for(timeout=30_000)
    bars = chart.locator("g.barlayer g.trace").first.locator("g.point path")
    bars.first.wait_for(timeout=30_000)
    box = bars.last.bounding_box()  # the most confident non-empty bin
    # a real mouse click at the bar's centre: Plotly's drag layer on top turns it into the
    # click-to-select event (a click on the <path> itself would never reach it)
    page.mouse.move(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    page.wait_for_timeout(300)
    page.mouse.click(box["x"] + box["width"] / 2, box["y"] + box["height"] / 2)
    sync_api.expect(page.get_by_text("Examples in the selected bin")).to_be_visible(
        timeout=30_000)
    page.wait_for_function("() => new URL(location.href).searchParams.has('bin')",
                           timeout=10_000)
    picked = int(parse_qs(urlparse(page.url).query)["bin"][0])
    assert 0 <= picked < 10
    grid = page.locator('[data-testid="stDataFrame"]')
    sync_api.expect(grid.first).to_be_visible(timeout=30_000)
    shared = page.url
    fresh = browser.new_page(viewport={"width": 1400, "height": 1400})
    fresh.goto(shared, timeout=60_000)  # the link reproduces the selection
    sync_api.expect(fresh.get_by_text(f"Bin {picked + 1} of 10")).to_be_visible(timeout=30_000)


def test_upload_box_imports_a_file_as_its_own_pipeline(tmp_path, browser):
    path = write_fixture_store(tmp_path / "up.duckdb", 20, seed=0)
    upload = tmp_path / "other-llm.csv"
    upload.write_text("example_id,split,p_A,p_B,p_C,gold\n" + "".join(
        f"e{i},test_ood,{0.8 - i / 100:.2f},{0.1 + i / 200:.3f},0.05,{'AB'[i % 4 == 0]}\n"
        for i in range(40)))
    with dashboard_server(path) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        page.goto(url, timeout=60_000)
        page.get_by_text("Import another model's predictions").click()
        # the file travels to the server on its own request: submit only once it has landed
        with page.expect_response(lambda r: "upload_file" in r.url and r.ok, timeout=60_000):
            # the predictions box (the second one takes an OpenAI Batch run's gold answers)
            page.locator('input[type="file"]').first.set_input_files(str(upload))
        page.get_by_label("Pipeline name").fill("other-llm")
        page.get_by_label("Pipeline name").press("Tab")
        page.get_by_role("button", name="Import").click()
        sync_api.expect(page.get_by_text("Imported 40 predictions")).to_be_visible(
            timeout=60_000)
        page.goto(f"{url}/reliability?runs=other-llm/imported/seed0&split=test_ood",
                  timeout=60_000)
        card = page.locator('[data-testid="stMetric"]').filter(has_text="Accuracy").first
        sync_api.expect(card).to_be_visible(timeout=30_000)
    runs = list_runs(path)
    assert runs.loc[runs["pipeline"] == "other-llm", "method"].tolist() == ["imported"]


def test_markdown_in_data_makes_the_browser_fetch_nothing(tmp_path, browser):
    path = write_fixture_store(tmp_path / "md.duckdb", 20, seed=0)
    examples = load_examples(path, split="test")
    examples.loc[:, "question"] = ("Pick one ![](http://tracker.invalid/x.png) "
                                   "[link](http://tracker.invalid/)")
    Store(path).write_examples(examples)
    with dashboard_server(path) as url:
        page = browser.new_page(viewport={"width": 1400, "height": 1200})
        fetched = []
        page.on("request", lambda r: fetched.append(r.url) if "tracker.invalid" in r.url
                else None)
        page.goto(f"{url}/examples", timeout=60_000)
        sync_api.expect(page.get_by_text("![](http://tracker.invalid/x.png)",
                                         exact=False).first).to_be_visible(timeout=30_000)
        page.goto(f"{url}/reliability?runs={run_id('student_ft', 0)}&split=test&bin=9",
                  timeout=60_000)
        sync_api.expect(page.get_by_text("Examples in the selected bin")).to_be_visible(
            timeout=30_000)
        page.wait_for_timeout(1500)
        assert page.locator('img[src*="tracker.invalid"]').count() == 0
    assert fetched == []


def test_figure_titles_and_legends_do_not_overlap(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1200})
    page.goto(f"{server}/temperature", timeout=60_000)
    charts = page.locator('[data-testid="stPlotlyChart"]')
    charts.first.locator("g.legend").wait_for(timeout=30_000)
    page.wait_for_timeout(800)
    checked = 0
    for i in range(charts.count()):
        title, legend = charts.nth(i).locator(".gtitle"), charts.nth(i).locator("g.legend")
        if not title.count() or not legend.count():
            continue
        a, b = title.first.bounding_box(), legend.first.bounding_box()
        overlap = (a["x"] < b["x"] + b["width"] and b["x"] < a["x"] + a["width"]
                   and a["y"] < b["y"] + b["height"] and b["y"] < a["y"] + a["height"])
        assert not overlap, (i, a, b)
        checked += 1
    assert checked >= 2  # both search curves have a title and a legend


def test_temperature_slider_changes_ece_in_chromium(server, browser):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page = browser.new_page(viewport={"width": 1400, "height": 1250})
    runs = f"{run_id('student_ft', 0)},{run_id('first_ts', 0)}"
    page.goto(f"{server}/reliability?runs={runs}&conv=option&mode=logit&c=1",
              timeout=30_000)
    card = page.locator('[data-testid="stMetric"]').filter(has_text="ECE").first
    ece = card.locator('[data-testid="stMetricValue"]')
    ece.wait_for(timeout=30_000)
    before = ece.inner_text()
    assert before.endswith("%")
    assert "[" in card.locator('[data-testid="stMetricDelta"]').inner_text()
    thumb = page.get_by_role("slider", name="Temperature c (log scale)")
    thumb.focus()
    for _ in range(16):  # 16 grid steps: c = 1 -> 10^(16/40) ~ 2.5
        thumb.press("ArrowRight")
    sync_api.expect(ece).not_to_have_text(before, timeout=20_000)
    page.wait_for_function("() => !new URL(location.href).searchParams.has('c') || "
                           "new URL(location.href).searchParams.get('c') !== '1'",
                           timeout=10_000)
    shared = parse_qs(urlparse(page.url).query)  # the shareable URL follows the slider
    assert float(shared["c"][0]) > 1 and shared["runs"] == [runs]
    page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=20_000)
    page.wait_for_timeout(800)  # let Plotly finish drawing before the screenshot
    page.screenshot(path=str(ARTIFACTS / "reliability.png"), full_page=True)
    assert (ARTIFACTS / "reliability.png").stat().st_size > 10_000


PAGE_PATHS = ["", "reliability", "coverage", "temperature", "compare", "examples", "learn"]


def test_no_page_fetches_anything_from_another_host(server, browser):
    """Offline use: every page, sidebar icons and favicon included (issue 23 item 12), loads
    from localhost only. Requests to any other host are recorded and blocked (as they would
    fail offline)."""
    page = browser.new_page(viewport={"width": 1400, "height": 1000})
    outside = []

    def local_only(route):
        host = urlparse(route.request.url).hostname
        if route.request.url.startswith(("data:", "blob:")) or host in ("localhost",
                                                                        "127.0.0.1"):
            route.continue_()
        else:
            outside.append(route.request.url)
            route.abort()

    page.route("**/*", local_only)
    for path in PAGE_PATHS:
        page.goto(f"{server}/{path}", timeout=60_000)
        assert sidebar_pages(page) == PAGE_TITLES
        page.wait_for_timeout(800)  # the favicon is set after the page's script has run
        assert outside == [], (path, outside)


def test_threshold_cards_and_risk_coverage_curve_in_chromium(server, browser):
    page = browser.new_page(viewport={"width": 1400, "height": 1400})
    runs = f"{run_id('student_ft', 0)},{run_id('first_ts', 0)}"
    page.goto(f"{server}/reliability?runs={runs}&split=test&conv=option&mode=logit&c=1&t=0.7",
              timeout=60_000)
    thumb = page.get_by_role("slider", name="Answer only when confidence ≥ t")
    thumb.wait_for(timeout=30_000)
    assert float(thumb.input_value()) == 0.7
    for label in ("AUROC", "AURC", "Answered", "Their accuracy",
                  "Wrong ones", "Deferred"):  # one card per panel
        sync_api.expect(page.locator('[data-testid="stMetric"]').filter(has_text=label)
                        ).to_have_count(2, timeout=30_000)
    auroc = page.locator('[data-testid="stMetric"]').filter(has_text="AUROC").first
    value = float(auroc.locator('[data-testid="stMetricValue"]').inner_text())
    assert 0.5 < value <= 1.0
    curves = page.locator('[data-testid="stPlotlyChart"]').filter(has_text="Coverage (share")
    sync_api.expect(curves).to_have_count(2, timeout=30_000)
    sync_api.expect(curves.first.get_by_text("t = 0.7").first).to_be_visible(timeout=30_000)
    answered = page.locator('[data-testid="stMetric"]').filter(has_text="Answered").first \
        .locator('[data-testid="stMetricValue"]')
    before = answered.inner_text()
    thumb.focus()
    for _ in range(20):  # 0.7 -> 0.9
        thumb.press("ArrowRight")
    sync_api.expect(answered).not_to_have_text(before, timeout=20_000)
    page.wait_for_function("() => new URL(location.href).searchParams.get('t') === '0.9'",
                           timeout=10_000)
    page.wait_for_timeout(800)
    page.screenshot(path=str(ARTIFACTS / "reliability-threshold.png"), full_page=True)
    garbage = browser.new_page(viewport={"width": 1400, "height": 1000})
    garbage.goto(f"{server}/reliability?runs={runs}&t=abc", timeout=60_000)
    thumb = garbage.get_by_role("slider", name="Answer only when confidence ≥ t")
    thumb.wait_for(timeout=30_000)
    sync_api.expect(thumb).to_have_attribute("aria-valuetext", "0.50", timeout=30_000)
    assert garbage.locator('[data-testid="stException"]').count() == 0


def test_the_readme_screenshot_script_draws_both_reliability_diagrams(fixture_path, tmp_path):
    """scripts/readme_screenshot.py (the README's picture) waits for both runs' diagrams; a
    store that is not there is one error line, not a traceback."""
    out = tmp_path / "shot.png"
    script = str(ROOT / "scripts" / "readme_screenshot.py")
    proc = subprocess.run([sys.executable, script, "--store", str(fixture_path), "--out",
                           str(out)], capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-2000:]
    from PIL import Image

    assert Image.open(out).size == (1400, 1250)
    proc = subprocess.run([sys.executable, script, "--store", str(tmp_path / "none.duckdb")],
                          capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1 and proc.stderr.startswith("error: ")
    assert "Traceback" not in proc.stderr
