#!/usr/bin/env python
"""
Ground truth next to the prediction for the 2 bundled real photographs, from a finished
``make demo`` (or ``demo/run_demo.py --output DIR``) run: one PNG per photograph.

    python -m benchmarks.real_photo_figure output/demo --out docs --prefix real_prediction

Left: the photograph with its ground-truth instances outlined (from the converted panoptic PNG;
rebar red, spall blue, crack yellow). Right: the demo's overlay of the predicted panoptic
segmentation (``predictions/overlays``).
"""

import argparse
import glob
import json
import os

import cv2
import numpy as np
from PIL import Image

OUTLINE = {1: (255, 0, 60), 2: (0, 120, 255), 3: (255, 200, 0)}  # dataset ids: rebar, spall, crack


def ground_truth_outline(image, pan_png, segments):
    """``image`` (H, W, 3) RGB with every thing segment of the panoptic PNG outlined."""
    pan = np.asarray(Image.open(pan_png).convert("RGB")).astype(np.int64)
    ids = pan[..., 0] + 256 * pan[..., 1] + 65536 * pan[..., 2]
    out = image.copy()
    for seg in segments:
        colour = OUTLINE.get(seg["category_id"])
        if colour is None:
            continue
        m = (ids == seg["id"]).astype(np.uint8)
        contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
        cv2.drawContours(out, contours, -1, colour, 2)
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("demo_dir", help="output folder of a demo run (holds data/, predictions/)")
    parser.add_argument("--out", default="docs")
    parser.add_argument("--prefix", default="real_prediction")
    args = parser.parse_args(argv)
    root = os.path.join(args.demo_dir, "data", "concrete_defects")
    with open(os.path.join(root, "annotations", "panoptic_train.json")) as f:
        pan_json = json.load(f)
    images = {im["id"]: im for im in pan_json["images"]}
    for ann in pan_json["annotations"]:
        im = images[ann["image_id"]]
        stem = os.path.splitext(im["file_name"])[0]
        photo = np.asarray(Image.open(os.path.join(root, "train", im["file_name"])).convert("RGB"))
        gt = ground_truth_outline(
            photo, os.path.join(root, "panoptic_train", ann["file_name"]), ann["segments_info"]
        )
        pattern = os.path.join(args.demo_dir, "predictions", "overlays", "**", f"{stem}.*")
        # synthetic val images may share the stem: the real ones come from .../images/
        found = sorted(glob.glob(pattern, recursive=True), key=lambda p: "images" not in p)
        if not found:
            raise SystemExit(f"no overlay for {stem} under {args.demo_dir}/predictions/overlays")
        pred = np.asarray(Image.open(found[0]).convert("RGB"))
        pred = cv2.resize(pred, (gt.shape[1], gt.shape[0]), interpolation=cv2.INTER_AREA)
        gap = np.full((gt.shape[0], 8, 3), 255, np.uint8)
        path = os.path.join(args.out, f"{args.prefix}_{stem}.png")
        Image.fromarray(np.concatenate([gt, gap, pred], 1)).save(path, optimize=True)
        print(f"wrote {path}")


if __name__ == "__main__":
    main()
