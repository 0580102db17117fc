"""Draw docs/app.png: ``leafseg serve`` on a saved model, one image segmented with an ensemble in Debian's chromium.

    python docs/app_screenshot.py --model runs/polyp/model-best --image frame.png --out docs/app.png

Needs the app extra, playwright and /usr/bin/chromium (as the browser test does).
"""

from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))
from browser import browser_page, download_mask, segment, served  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--model", required=True, help="saved model folder")
    parser.add_argument("--image", required=True, help="the image to segment")
    parser.add_argument("--out", default="docs/app.png", help="screenshot to write")
    parser.add_argument("--ensemble", type=int, default=5, help="ensemble size (>= 2 shows the uncertainty)")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        with served(Path(args.model), Path(tmp) / "serve.log") as url, browser_page(1400, 1150) as (page, _):
            segment(page, url, [Path(args.image)], ensemble=args.ensemble)
            download_mask(page, Path(tmp) / "mask.png")  # waits for the result
            page.locator("#uncertainty img").first.wait_for()
            page.wait_for_timeout(1000)  # images fade in
            page.screenshot(path=args.out, full_page=True)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
