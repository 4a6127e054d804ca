"""
Screenshot of a written defect report for the README: ``docs/report_screenshot.png``.

    make demo && python docs/report_screenshot.py output/demo/predictions/report.html

Opens the ``report.html`` that ``demo/demo.py`` (and so ``make demo``) wrote from model
predictions in headless Chromium (Debian's ``chromium``), as a user opens it from disk, and
saves the top of the page as a PNG.
"""

import argparse
import os
import shutil
import subprocess
import sys
import tempfile

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "report",
        nargs="?",
        default=os.path.join(ROOT, "output", "demo", "predictions", "report.html"),
        help="a report.html written by demo/demo.py (default: make demo's)",
    )
    parser.add_argument("--png", default=os.path.join(ROOT, "docs", "report_screenshot.png"))
    parser.add_argument("--size", default="1100,1500", help="window width,height in px")
    args = parser.parse_args()
    if not os.path.isfile(args.report):
        sys.exit(f"{args.report}: no such report; run `make demo` first or pass a report.html")
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found (apt-get install -y chromium): no screenshot taken")
    with tempfile.TemporaryDirectory() as profile:
        subprocess.run(
            [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--no-first-run", "--disable-background-networking", "--disable-component-update",
             "--disable-sync", f"--user-data-dir={profile}", f"--window-size={args.size}",
             "--virtual-time-budget=10000", f"--screenshot={os.path.abspath(args.png)}",
             "file://" + os.path.abspath(args.report)],
            check=True, capture_output=True,
        )  # fmt: skip
    print("screenshot:", args.png)


if __name__ == "__main__":
    main()
