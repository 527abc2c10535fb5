"""The README's screenshot: the Reliability page as it opens on a store (the demo's, after
`bash scripts/demo.sh --no-dashboard`), in headless Debian Chromium.

    python scripts/readme_screenshot.py                    # data/first.duckdb
    python scripts/readme_screenshot.py --store S --out docs/screenshot-reliability.png

The page opens on its default view (the paper's Figure 5: the fine-tuned student beside
FIRST-TS out of domain), so the picture shows what a new user sees first.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))  # run as `python scripts/readme_screenshot.py` from anywhere

from benchmarks.bench_browser import CHROMIUM, CHROMIUM_ARGS, dashboard_server  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--store", type=Path, default=ROOT / "data" / "first.duckdb")
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "screenshot-reliability.png")
    args = ap.parse_args()
    if not args.store.is_file():
        sys.exit(f"error: {args.store}: no such store (run `bash scripts/demo.sh` first)")
    from playwright.sync_api import sync_playwright

    with dashboard_server(args.store.resolve()) as url, sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=str(CHROMIUM), args=CHROMIUM_ARGS)
        page = browser.new_page(viewport={"width": 1400, "height": 1250})
        page.goto(f"{url}/reliability", timeout=60_000)
        # both runs' cards, then both reliability diagrams (Plotly draws them last)
        page.get_by_text("Trust", exact=True).nth(1).wait_for(timeout=60_000)
        page.locator(".js-plotly-plot").nth(1).wait_for(timeout=60_000)
        # without the sidebar: its page icons are emoji, which a machine without an emoji
        # font (a bare Debian) draws as empty boxes
        page.add_style_tag(content='[data-testid="stSidebar"] {display: none}')
        page.wait_for_timeout(2000)
        page.screenshot(path=str(args.out))
        browser.close()
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
