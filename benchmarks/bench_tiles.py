#!/usr/bin/env python
"""
Thin cracks on a large photo: recall of crack pixels and crack instances with tiled inference
vs the whole photo resized to the model's test size.

    python -m benchmarks.bench_tiles                       # trains the tiny config first
    python -m benchmarks.bench_tiles --weights output/benchmarks/bench_tiles_run/model_final.pth

1. Draws a 4000x3000 synthetic concrete photo with 1-3 px wide cracks (anti-aliased random
   polylines on a textured grey surface; the ground truth is each crack's own mask).
2. Needs a model that finds cracks at native resolution: unless ``--weights`` is given, it
   trains the tiny config from scratch (``tools/train_net.py``, ``--max-iter`` iterations) on
   ``--train-images`` 320x320 crops drawn the same way (1-3 px cracks, i.e. the scale a
   400 px tile keeps), converted with ``datasets/prepare_concrete_defects.py``.
3. Runs the demo's predictor on the photo: whole (resized to the test size, ``--tile 0``) and
   tiled (``--tile 1024/400`` with overlap 128/64, and the default: tiles of the test size); a
   ground-truth crack pixel counts as found when
   a predicted crack pixel lies within ``--tolerance`` px (2), a crack instance when at least half
   its pixels are found; precision is the same with the roles swapped.

Writes ``output/benchmarks/bench_tiles.json``.
"""

import argparse
import os
import subprocess
import sys
import time

import d2_detr  # noqa: F401  (compat before detectron2)

# isort: split
import cv2
import numpy as np
from detectron2.config import get_cfg

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "demo"))
from predictor import ModelPredictor, output_metadata  # noqa: E402

from benchmarks.common import OUTPUT_DIR, markdown_table, write_result  # noqa: E402
from d2_detr.inspection.tiling import resolve_tiling, tiled_panoptic  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "ConcreteDefects", "detr_tiny_cpu.yaml")


def draw_surface(rng, height, width):
    """(H, W, 3) uint8 grey concrete-like texture: blurred blotches plus grain."""
    small = rng.normal(0, 1, (height // 32 + 2, width // 32 + 2)).astype(np.float32)
    blotch = cv2.resize(small, (width, height), interpolation=cv2.INTER_CUBIC)
    grain = rng.normal(0, 6, (height, width)).astype(np.float32)
    grey = np.clip(135 + 10 * blotch + grain, 0, 255).astype(np.uint8)
    return np.repeat(grey[:, :, None], 3, axis=2)


def draw_cracks(rng, image, num, length_range, width_range=(1, 3)):
    """Draw ``num`` dark random-walk cracks in place; returns their (H, W) bool masks (list)."""
    h, w = image.shape[:2]
    masks = []
    for _ in range(num):
        width = int(rng.integers(width_range[0], width_range[1] + 1))
        length = rng.uniform(*length_range)
        x, y = rng.uniform(0, w), rng.uniform(0, h)
        angle = rng.uniform(0, 2 * np.pi)
        points, step = [(x, y)], max(4.0, length / 40)
        for _ in range(int(length / step)):
            angle += rng.normal(0, 0.25)
            x, y = x + step * np.cos(angle), y + step * np.sin(angle)
            points.append((x, y))
        pts = np.round(np.array(points)).astype(np.int32)[None]
        mask = np.zeros((h, w), np.uint8)
        cv2.polylines(mask, pts, False, 255, width, cv2.LINE_8)
        tone = int(rng.integers(40, 80))
        cv2.polylines(image, pts, False, (tone, tone, tone), width, cv2.LINE_AA)
        mask = mask > 0
        if mask.sum() > 30:
            masks.append(mask)
    return masks


def make_training_set(folder, num, seed, size=320):
    """RAW layout (images/, masks/<stem>crack.png) of ``num`` crops with 1-3 px cracks."""
    rng = np.random.default_rng(seed)
    os.makedirs(os.path.join(folder, "images"), exist_ok=True)
    os.makedirs(os.path.join(folder, "masks"), exist_ok=True)
    for i in range(num):
        image = draw_surface(rng, size, size)
        masks = draw_cracks(rng, image, int(rng.integers(1, 4)), (size * 0.3, size * 1.2))
        union = np.any(masks, axis=0) if masks else np.zeros((size, size), bool)
        cv2.imwrite(os.path.join(folder, "images", f"{i:05d}.jpg"), image)
        cv2.imwrite(
            os.path.join(folder, "masks", f"{i:05d}crack.png"), union.astype(np.uint8) * 255
        )


def train(folder, num_images, max_iter, seed):
    """Train the tiny config on the crack crops; returns the weights path and the minutes."""
    raw, data = os.path.join(folder, "raw"), os.path.join(folder, "datasets")
    run_dir = os.path.join(folder, "run")
    py, env = sys.executable, dict(os.environ, DETECTRON2_DATASETS=data)
    start = time.time()
    if not os.path.isdir(os.path.join(data, "concrete_defects")):
        make_training_set(raw, num_images, seed)
        subprocess.run(
            [py, "datasets/prepare_concrete_defects.py", "--raw", raw, "--out",
             os.path.join(data, "concrete_defects"), "--val-fraction", "0", "--test-fraction",
             "0", "--min-area", "8", "--no-progress", "--overwrite"],
            cwd=ROOT, env=env, check=True,
        )  # fmt: skip
    subprocess.run(
        [py, "tools/train_net.py", "--config-file", CONFIG,
         "DATASETS.TRAIN", "('concrete_defects_train_panoptic',)", "DATASETS.TEST", "()",
         "TEST.EVAL_PERIOD", "0", "SOLVER.MAX_ITER", str(max_iter),
         "SOLVER.STEPS", f"({int(max_iter * 0.8)},)", "SOLVER.CHECKPOINT_PERIOD", "100000",
         "SEED", str(seed), "OUTPUT_DIR", run_dir],
        cwd=ROOT, env=env, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return os.path.join(run_dir, "model_final.pth"), (time.time() - start) / 60


def recall_precision(pred, gt_masks, tolerance):
    """Pixel recall / precision within ``tolerance`` px and instance recall (>= half found)."""
    gt = np.any(gt_masks, axis=0)
    kernel = cv2.getStructuringElement(cv2.MORPH_ELLIPSE, (2 * tolerance + 1, 2 * tolerance + 1))
    near_pred = cv2.dilate(pred.astype(np.uint8), kernel) > 0
    near_gt = cv2.dilate(gt.astype(np.uint8), kernel) > 0
    found = [float(near_pred[m].mean()) for m in gt_masks]
    return {
        "pixel_recall": round(float(near_pred[gt].mean()), 4),
        "pixel_precision": round(float(near_gt[pred].mean()), 4) if pred.any() else None,
        "instance_recall": round(float(np.mean([f >= 0.5 for f in found])), 4),
        "instances": len(gt_masks),
        "predicted_crack_px": int(pred.sum()),
        "gt_crack_px": int(gt.sum()),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--weights", help="a trained tiny-config model (default: train one)")
    parser.add_argument("--max-iter", type=int, default=600)
    parser.add_argument("--train-images", type=int, default=200)
    parser.add_argument("--cracks", type=int, default=40, help="cracks in the photo")
    parser.add_argument("--tolerance", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    folder = os.path.join(OUTPUT_DIR, "bench_tiles_run")
    os.makedirs(folder, exist_ok=True)
    minutes = None
    if args.weights:
        weights, source = args.weights, f"given: {args.weights}"
    else:
        weights, minutes = train(folder, args.train_images, args.max_iter, args.seed)
        source = (
            f"tiny config trained here from scratch: {args.max_iter} iterations on "
            f"{args.train_images} 320x320 crops with 1-3 px cracks ({minutes:.1f} min)"
        )

    rng = np.random.default_rng(args.seed + 1)
    photo = draw_surface(rng, 3000, 4000)
    gt_masks = draw_cracks(rng, photo, args.cracks, (300, 1500))
    photo = cv2.imdecode(cv2.imencode(".jpg", photo, [cv2.IMWRITE_JPEG_QUALITY, 92])[1], 1)

    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.freeze()
    predictor = ModelPredictor(cfg, weights)
    crack = list(output_metadata(cfg).stuff_classes).index("crack")
    results = {"weights": source, "photo": "4000x3000", "tolerance_px": args.tolerance}
    rows = []
    auto_tile, auto_overlap = resolve_tiling(cfg.INPUT.MIN_SIZE_TEST)
    for name, tile, overlap in [
        ("whole photo resized to the test size (--tile 0)", 0, 0),
        ("tiles 1024, overlap 128 (the first default)", 1024, 128),
        ("tiles 400, overlap 64", 400, 64),
        (f"tiles {auto_tile}, overlap {auto_overlap} (default: the test size)", auto_tile,
         auto_overlap),
    ]:  # fmt: skip
        start = time.time()
        if tile:
            labels, info = tiled_panoptic(predictor, photo, tile, overlap, predictor.min_area)
        else:
            labels, info = predictor(photo)
        seconds = time.time() - start
        crack_ids = [s["id"] for s in info if s["category_id"] == crack]
        r = recall_precision(np.isin(labels, crack_ids), gt_masks, args.tolerance)
        r.update(seconds=round(seconds, 1), predicted_instances=len(crack_ids))
        results[name] = r
        rows.append(
            [name, r["pixel_recall"], r["instance_recall"], r["pixel_precision"],
             len(crack_ids), f"{seconds:.0f}"]
        )  # fmt: skip
    print(f"\nmodel: {source}; {len(gt_masks)} cracks, {results[name]['gt_crack_px']} px")
    print(
        markdown_table(
            ["4000x3000 photo, 1-3 px cracks", "crack pixel recall", "crack instance recall",
             "pixel precision", "predicted cracks", "seconds"],
            rows,
        )  # fmt: skip
    )
    print(f"wrote {write_result('bench_tiles', results)}")


if __name__ == "__main__":
    main()
