"""
Example report for the README: ``docs/report_screenshot.png``.

    python docs/report_screenshot.py [--out output/report_example] [--num 4] [--mm-per-pixel 0.2]

Draws a few synthetic concrete images (``d2_detr.data.synthetic``), takes their ground-truth
masks as the "prediction" (one segment per connected piece of each class), writes the report
(CSV, JSON, HTML with overlays) at a stated nominal scale, and screenshots ``report.html`` with
headless Chromium. The layout is the one ``demo/demo.py`` writes from model predictions.
"""

import argparse
import os
import shutil
import subprocess
import sys

import d2_detr  # noqa: F401

# isort: split
import cv2
import numpy as np
from scipy import ndimage

from d2_detr.data.synthetic import draw_synthetic_sample
from d2_detr.inspection import DefectReport

CLASSES = ["rebar", "spall", "crack", "background"]
COLOURS = {"rebar": (230, 60, 40), "spall": (250, 170, 30), "crack": (40, 90, 255)}  # RGB
ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def panoptic_from_masks(masks):
    """class -> bool mask  ->  (H, W) segment ids and segments_info (rebar over spall)."""
    shape = next(iter(masks.values())).shape
    pan = np.zeros(shape, np.int32)
    infos = []
    for name in ("spall", "crack", "rebar"):  # later classes paint over earlier ones
        if name not in masks:
            continue
        lab, n = ndimage.label(masks[name], structure=np.ones((3, 3)))
        for k in range(1, n + 1):
            if (lab == k).sum() < 20:
                continue
            seg_id = len(infos) + 1
            pan[lab == k] = seg_id
            infos.append(
                {"id": seg_id, "category_id": CLASSES.index(name), "isthing": True, "score": 1.0}
            )
    infos = [i for i in infos if (pan == i["id"]).any()]
    return pan, infos


def overlay(image, pan, infos):
    out = image.astype(np.float32)
    for info in infos:
        m = pan == info["id"]
        colour = np.array(COLOURS[CLASSES[info["category_id"]]], np.float32)
        out[m] = 0.45 * out[m] + 0.55 * colour
        edge = m & ~ndimage.binary_erosion(m)
        out[edge] = colour
    return np.clip(out, 0, 255).astype(np.uint8)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", default=os.path.join(ROOT, "output", "report_example"))
    parser.add_argument("--num", type=int, default=4)
    parser.add_argument("--seed", type=int, default=7)
    parser.add_argument("--mm-per-pixel", type=float, default=0.2, help="nominal scale")
    parser.add_argument("--png", default=os.path.join(ROOT, "docs", "report_screenshot.png"))
    args = parser.parse_args()
    report = DefectReport(CLASSES, CLASSES[:3], mm_per_pixel=args.mm_per_pixel)
    os.makedirs(os.path.join(args.out, "overlays"), exist_ok=True)
    rng = np.random.default_rng(args.seed)
    done = 0
    while done < args.num:
        image, masks = draw_synthetic_sample(rng, size=(480, 320), empty_fraction=0.0)
        if not masks:
            continue
        pan, infos = panoptic_from_masks(masks)
        name = f"synthetic_{done:02d}.jpg"
        rel = os.path.join("overlays", name)
        cv2.imwrite(os.path.join(args.out, rel), overlay(image, pan, infos)[:, :, ::-1])
        report.add(f"site/{name}", pan, infos, overlay=rel)
        done += 1
    paths = report.write(args.out)
    print("report:", paths["html"])
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        sys.exit("chromium not found (apt-get install -y chromium): no screenshot taken")
    profile = os.path.join(args.out, ".chromium-profile")
    subprocess.run(
        [chromium, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--no-first-run", "--disable-background-networking", "--disable-component-update",
         "--disable-sync", f"--user-data-dir={profile}", "--window-size=1100,1500",
         "--virtual-time-budget=10000", f"--screenshot={os.path.abspath(args.png)}",
         os.path.abspath(paths["html"])],
        check=True, capture_output=True,
    )  # fmt: skip
    shutil.rmtree(profile, ignore_errors=True)
    print("screenshot:", args.png)


if __name__ == "__main__":
    main()
