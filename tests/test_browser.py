"""End to end in a real browser: `streamlit run` + headless Debian Chromium via Playwright.

Opens the Reliability page on a fixture store, moves the temperature slider with the
keyboard, checks that the ECE shown changes, and saves a screenshot to tests/artifacts/.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path
from urllib.parse import parse_qs, urlparse

import pytest

from first_core.fixtures import run_id, write_fixture_store

ROOT = Path(__file__).resolve().parents[1]
ARTIFACTS = ROOT / "tests" / "artifacts"
CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]

if not CHROMIUM.exists():
    pytest.skip(f"{CHROMIUM} not installed (Debian package `chromium`)", allow_module_level=True)
sync_api = pytest.importorskip("playwright.sync_api",
                               reason="playwright (Python) not installed: pip install playwright")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_healthy(url: str, server: subprocess.Popen, log: Path, timeout: float = 45) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if server.poll() is not None:
            pytest.fail(f"streamlit exited with {server.returncode}:\n{log.read_text()}")
        try:
            with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                if r.read().strip() == b"ok":
                    return
        except OSError:
            time.sleep(0.3)
    pytest.fail(f"streamlit not healthy after {timeout} s:\n{log.read_text()}")


@pytest.fixture
def server(tmp_path):
    """A dashboard on a free localhost port over a fixture store; always stopped afterwards."""
    fixture = write_fixture_store(tmp_path / "fixture.duckdb", 150, seed=0)
    port, log = free_port(), tmp_path / "streamlit.log"
    with log.open("w") as out:
        proc = subprocess.Popen(
            [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
             "--server.headless", "true", "--server.port", str(port),
             "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
             "--", "--store", str(fixture)],
            cwd=ROOT, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{port}"
    try:
        wait_healthy(url, proc, log)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()


def test_temperature_slider_changes_ece_in_chromium(server):
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    with sync_api.sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                                     headless=True)
        try:
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
        finally:
            browser.close()
    assert (ARTIFACTS / "reliability.png").stat().st_size > 10_000
