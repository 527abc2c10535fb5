"""Temperature slider latency in a real browser: key press to updated metric cards.

Starts `streamlit run app.py` on a fixture store (demo-sized, n = 1,000 predictions per
split, and 1M predictions), drives headless Debian Chromium (`/usr/bin/chromium`, through
Playwright; never `playwright install`) on the Reliability page, presses the arrow key on
the temperature slider 20 times and times each move *inside the browser*: from the keydown
event to the first DOM mutation after it that changes the first panel's metric cards (ECE,
and Brier / NLL at three decimals so that a move whose rounded ECE text stays the same is
still seen); the time to the first panel's redrawn diagram is printed beside it. Each key
press waits until the page has been quiet for 400 ms, so moves do not overlap.

The baseline is the same page with `FIRST_FULL_RERUNS=1` (no `st.fragment`: every move
reruns the whole page, as before issue 12), measured in the same run on the same store.

    python benchmarks/bench_browser.py [--quick] [--moves 20] [--big-n 1000000]

Prints `RATIO slider_median_ms[demo] = X ms  (target <= 150)  PASS|MISS`, the same for
[1M] (target <= 300), the p90s and the full-rerun / fragment ratio. Timings on a shared
machine are noisy: compare the ratio, rerun on an idle machine for the absolute figures.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

CHROMIUM = Path("/usr/bin/chromium")
CHROMIUM_ARGS = ["--headless", "--no-sandbox", "--disable-gpu", "--no-first-run",
                 "--disable-background-networking", "--disable-component-update",
                 "--disable-sync"]
TARGETS_MS = {"demo": 150.0, "1M": 300.0}

# In-page probe: timestamps of every keydown and of every change of the first panel's
# metric texts, on the browser's own clock (no Python round trip in the figure).
PROBE = """() => {
  window.__moves = []; window.__charts = []; window.__keys = []; window.__last = 0;
  const cards = () => Array.from(document.querySelectorAll('[data-testid="stMetric"]'))
      .slice(0, 7).map(m => m.innerText).join('|');
  const chart = () => {
    const bars = document.querySelector('[data-testid="stPlotlyChart"] g.barlayer');
    return bars ? bars.innerHTML.length + ':' + bars.innerHTML.slice(0, 2000) : '';
  };
  let last = cards(), lastChart = chart();
  document.addEventListener('keydown', () => window.__keys.push(performance.now()), true);
  new MutationObserver(() => {
    const t = performance.now(); window.__last = t;
    const now = cards(), c = chart();
    if (now !== last) { last = now; window.__moves.push(t); }
    if (c !== lastChart) { lastChart = c; window.__charts.push(t); }
  }).observe(document.body, {subtree: true, childList: true, characterData: true,
                             attributes: true});
}"""
QUIET_MS = 400  # no DOM change for this long: the previous move has finished rendering


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@contextlib.contextmanager
def dashboard_server(store: Path, env: dict[str, str] | None = None, timeout: float = 60
                     ) -> Iterator[str]:
    """`streamlit run app.py -- --store STORE` on a free localhost port; yields its URL and
    always stops it (its whole process group) afterwards."""
    port = free_port()
    log = tempfile.NamedTemporaryFile("w+", suffix=".log", delete=False)
    proc = subprocess.Popen(
        [sys.executable, "-m", "streamlit", "run", str(ROOT / "app.py"),
         "--server.headless", "true", "--server.port", str(port),
         "--server.address", "127.0.0.1", "--browser.gatherUsageStats", "false",
         "--server.fileWatcherType", "none", "--", "--store", str(store)],
        cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        env={**os.environ, **(env or {})})
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"streamlit exited with {proc.returncode}:\n"
                                   f"{Path(log.name).read_text()}")
            try:
                with urllib.request.urlopen(f"{url}/_stcore/health", timeout=2) as r:
                    if r.read().strip() == b"ok":
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"streamlit not healthy after {timeout} s:\n"
                                   f"{Path(log.name).read_text()}")
            time.sleep(0.3)
        yield url
    finally:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        Path(log.name).unlink(missing_ok=True)


def launch(pw):
    return pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS,
                              headless=True)


def slider_moves(url: str, runs: str, moves: int, warmup: int = 3
                 ) -> tuple[list[float], list[float]]:
    """Milliseconds from each key press to the first panel's metric cards' update, and to
    its diagram's update, `moves` times."""
    from playwright.sync_api import sync_playwright

    with sync_playwright() as pw:
        browser = launch(pw)
        try:
            page = browser.new_page(viewport={"width": 1400, "height": 1200})
            page.goto(f"{url}/reliability?runs={runs}&split=test&conv=paper&mode=logit&c=0.5",
                      timeout=120_000)
            page.locator('[data-testid="stMetricValue"]').first.wait_for(timeout=120_000)
            page.locator('[data-testid="stPlotlyChart"]').first.wait_for(timeout=120_000)
            page.wait_for_timeout(1500)  # let the first render settle
            page.evaluate(PROBE)
            thumb = page.get_by_role("slider", name="Temperature c (log scale)")
            thumb.focus()
            cards, charts = [], []
            quiet = f"performance.now() - window.__last > {QUIET_MS}"
            for i in range(warmup + moves):
                page.wait_for_function(quiet, timeout=60_000)  # the last move has settled
                thumb.press("ArrowRight")
                key = page.evaluate("window.__keys[window.__keys.length - 1]")
                first_after = ("(name) => window[name].find(t => t > window.__keys["
                               "window.__keys.length - 1])")
                page.wait_for_function(f"({first_after})('__moves') && ({first_after})"
                                       "('__charts')", timeout=60_000)
                if i >= warmup:
                    cards.append(page.evaluate(first_after, "__moves") - key)
                    charts.append(page.evaluate(first_after, "__charts") - key)
            return cards, charts
        finally:
            browser.close()


def big_store(path: Path, n: int) -> Path:
    """A fixture store whose first_ts run has `n` predictions on the in-domain test split
    (the other runs stay small: only the viewed split has to be large)."""
    import numpy as np
    import pandas as pd

    from first_core import fixtures
    from first_core.evaluation.evaluate import compute_metrics
    from first_core.store.schema import RunRecord
    from first_core.store.writes import Store

    fixtures.write_fixture_store(path, 20, seed=0)
    rng = np.random.default_rng(7)
    examples = fixtures._examples(rng, "test", n)
    acc, _, sharpness, model = fixtures.PROFILES["first_ts"]
    preds = fixtures._predictions(rng, examples, acc, sharpness)
    metrics = compute_metrics(preds, n_boot=10).assign(split="test")
    record = RunRecord(run_id=fixtures.run_id("first_ts", 0), method="first_ts", model=model,
                       dataset=fixtures.DATASET, seed=0, pipeline=fixtures.PIPELINE,
                       config={"fixture": True, "n_examples": n})
    Store(path).write_run(record, preds, pd.DataFrame(metrics))
    return path


def p90(values: list[float]) -> float:
    return statistics.quantiles(values, n=10, method="inclusive")[-1]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true", help="5 moves, 20k instead of 1M")
    parser.add_argument("--moves", type=int, default=20)
    parser.add_argument("--big-n", type=int, default=1_000_000,
                        help="predictions per split of the large store")
    args = parser.parse_args()
    if not CHROMIUM.exists():
        print(f"SKIP: {CHROMIUM} not installed (apt-get install -y chromium)")
        return 0
    from first_core.fixtures import run_id, write_fixture_store

    moves, big_n = (5, 20_000) if args.quick else (args.moves, args.big_n)
    print(f"# machine: {os.cpu_count()} cores, load average {os.getloadavg()[0]:.2f}; "
          f"{moves} moves per case (other jobs slow every figure alike; compare the ratio)")
    # demo: the page's first view (student_ft beside first_ts, two panels); 1M: first_ts alone
    cases = {"demo": (1000, f"{run_id('student_ft', 0)},{run_id('first_ts', 0)}"),
             "1M": (big_n, run_id("first_ts", 0))}
    with tempfile.TemporaryDirectory() as tmp:
        for label, (n, runs) in cases.items():
            t0 = time.perf_counter()
            store = (write_fixture_store(Path(tmp) / "demo.duckdb", n, seed=0) if label == "demo"
                     else big_store(Path(tmp) / "big.duckdb", n))
            print(f"# {label}: fixture store with {n:,} predictions per split written in "
                  f"{time.perf_counter() - t0:.0f} s")
            timings, charts = {}, {}
            for mode, env in (("fragment", {}), ("full", {"FIRST_FULL_RERUNS": "1"})):
                with dashboard_server(store, env, timeout=120) as url:
                    timings[mode], charts[mode] = slider_moves(url, runs, moves)
                print(f"#   {mode:8s}: cards median {statistics.median(timings[mode]):6.1f} ms, "
                      f"p90 {p90(timings[mode]):6.1f}; diagram median "
                      f"{statistics.median(charts[mode]):6.1f} ms; cards, all: "
                      + " ".join(f"{t:.0f}" for t in timings[mode]))
            median = statistics.median(timings["fragment"])
            target = TARGETS_MS[label]
            verdict = "PASS" if median <= target else "MISS"
            print(f"RATIO slider_median_ms[{label}] = {median:.1f} ms  (target <= {target:.0f})  "
                  f"{verdict}")
            print(f"RATIO slider_p90_ms[{label}] = {p90(timings['fragment']):.1f} ms  INFO")
            print(f"RATIO diagram_median_ms[{label}] = "
                  f"{statistics.median(charts['fragment']):.1f} ms  INFO")
            print(f"RATIO full_rerun_median_ms[{label}] = "
                  f"{statistics.median(timings['full']):.1f} ms  INFO")
            print(f"RATIO full_rerun/fragment[{label}] = "
                  f"{statistics.median(timings['full']) / median:.2f}x  INFO")
    return 0


if __name__ == "__main__":
    sys.exit(main())
