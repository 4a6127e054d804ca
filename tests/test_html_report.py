"""
report.html in a real headless browser (Debian's Chromium): the defect tables match defects.csv
and the overlay pictures load from disk through their relative links.

Skipped when Chromium is missing: install it with ``apt-get install -y chromium`` (``.ci/run``
does so, so CI always runs this test).
"""

import csv
import html
import json
import os
import re
import shutil
import subprocess

import cv2
import numpy as np
import pytest

from d2_detr.inspection import DefectReport

CHROMIUM = next(
    (p for p in (shutil.which("chromium"), "/usr/bin/chromium", shutil.which("chromium-browser"))
     if p and os.path.exists(p)),
    None,
)  # fmt: skip
pytestmark = pytest.mark.skipif(
    CHROMIUM is None,
    reason="Chromium is not installed: `apt-get install -y chromium` (Debian) to run this test",
)
CLASSES = ["rebar", "spall", "crack", "background"]
FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--hide-scrollbars",
]
# Appended to a copy of report.html: after load, write what the page shows into the DOM.
CHECK_SCRIPT = """
<script>
window.addEventListener("load", () => {
  const imgs = [...document.images].map(i => ({src: i.getAttribute("src"),
    ok: i.complete && i.naturalWidth > 0, w: i.naturalWidth}));
  const rows = [...document.querySelectorAll("section.image")].flatMap(s =>
    [...s.querySelectorAll("table.defects tr[data-defect-id]")].map(r =>
      [s.dataset.image, ...[...r.cells].map(c => c.textContent)]));
  const out = document.createElement("pre");
  out.id = "check";
  out.textContent = JSON.stringify({imgs, rows});
  document.body.appendChild(out);
});
</script>
"""


def _chromium(tmp_path, *args):
    profile = tmp_path / "chromium-profile"
    cmd = [CHROMIUM, *FLAGS, f"--user-data-dir={profile}", *args]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc.stdout


def _make_report(folder):
    """Two images with defects (one in a sub-folder, a name that needs escaping), one image
    with none, one unreadable; overlays written as PNG next to the report."""
    report = DefectReport(CLASSES, defect_classes=CLASSES[:3], mm_per_pixel=0.2)
    names = ["site A/wall <1> & co.png", "b.png", "empty.png"]
    for k, name in enumerate(names):
        pan = np.zeros((80, 160), np.int32)
        infos = []
        if k < 2:
            pan[20 : 22 + 2 * k, 10:150] = 1  # crack, 2 or 4 px wide
            infos.append({"id": 1, "category_id": 2, "isthing": True, "score": 0.9})
            pan[40:70, 20 + 40 * k : 60 + 40 * k] = 2  # spall
            infos.append({"id": 2, "category_id": 1, "isthing": True, "score": 0.8})
        if k == 1:
            pan[74:77, 10:150] = 3  # rebar
            infos.append({"id": 3, "category_id": 0, "isthing": True, "score": 0.7})
        overlay = os.path.join("overlays", name)
        os.makedirs(os.path.dirname(os.path.join(folder, overlay)), exist_ok=True)
        colours = np.array([[200, 200, 200], [0, 0, 255], [0, 160, 255], [255, 0, 0]], np.uint8)
        ok, buf = cv2.imencode(".png", colours[pan])
        with open(os.path.join(folder, overlay), "wb") as f:
            f.write(buf.tobytes())
        report.add(f"sub/{name}", pan, infos, overlay=overlay)
    report.add_unreadable("sub/broken.jpg", "cannot decode <the> file")
    return report, report.write(str(folder))


def test_report_html_in_chromium(tmp_path):
    out = tmp_path / "report out"
    report, paths = _make_report(out)
    page = open(paths["html"], encoding="utf-8").read()
    assert "<script" not in page  # static: opens from disk anywhere
    assert "cannot decode &lt;the&gt; file" in page and "wall &lt;1&gt; &amp; co" in page
    check = out / "report_check.html"
    check.write_text(page.replace("</body>", CHECK_SCRIPT + "</body>"), encoding="utf-8")
    dom = _chromium(tmp_path, "--virtual-time-budget=10000", "--dump-dom", check.resolve().as_uri())
    found = re.search(r'<pre id="check">(.*?)</pre>', dom, re.S)
    assert found, dom[-2000:]
    result = json.loads(html.unescape(found.group(1)))

    imgs = result["imgs"]
    assert len(imgs) == 3 and all(i["ok"] and i["w"] == 160 for i in imgs), imgs

    with open(paths["defects_csv"], newline="") as f:
        csv_rows = list(csv.DictReader(f))
    assert len(csv_rows) == 5
    shown = {(r[0], r[1]): r[2:] for r in result["rows"]}
    assert len(shown) == len(result["rows"]) == len(csv_rows)
    header = ["class", "grade", "score", "area_px", "length_px", "width_max_px"]
    for row in csv_rows:
        cells = shown[(row["image"], row["defect_id"])]
        assert cells[: len(header)] == [row[k] for k in header], (row, cells)
        assert cells[-2] == row["width_max_mm"]  # the mm columns are there with a scale
    # worst first: the image with exposed rebar (level 3) leads; the unreadable one is last
    order = re.findall(r'<section class="image" data-image="([^"]*)"', page)
    assert [html.unescape(o) for o in order] == [
        "sub/b.png",
        "sub/site A/wall <1> & co.png",
        "sub/empty.png",
        "sub/broken.jpg",
    ]


def test_report_screenshot_renders(tmp_path):
    """The page paints (a screenshot that is not blank), as a user opening it would see."""
    out = tmp_path / "r"
    _, paths = _make_report(out)
    shot = tmp_path / "shot.png"
    _chromium(
        tmp_path,
        "--window-size=1000,900",
        "--virtual-time-budget=10000",
        f"--screenshot={shot}",
        os.path.abspath(paths["html"]),
    )
    img = cv2.imread(str(shot))
    assert img is not None and img.shape[:2] == (900, 1000)
    assert img.std() > 10 and len(np.unique(img.reshape(-1, 3), axis=0)) > 20
