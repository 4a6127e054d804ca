"""
Training throughput on 1 vs N CPU processes (gloo), the same total batch: images/s of
``tools/train_net.py`` as a user runs it (``--num-gpus N``), read from Detectron2's "Overall
training speed" line (steady state: the first iterations and start-up are not counted).

The runs alternate (1, N, 1, N, ...) so that load from other programs hits both alike; each
process gets cores / N threads (d2_detr's launch), so both use the whole machine.

    python -m benchmarks.bench_distributed [--procs 2] [--iters 30] [--batch 2] [--repeats 2] \
        [--size 256] [--threads 0]

Writes output/benchmarks/bench_distributed.json. Uses the tiny CPU config on synthetic 256x320
images (written to output/benchmarks/dist_data).
"""

import argparse
import json
import os
import re
import statistics
import subprocess
import sys

import numpy as np
from panopticapi.utils import id2rgb
from PIL import Image

from benchmarks.common import OUTPUT_DIR, markdown_table, write_result
from d2_detr.data.categories import CONCRETE_DEFECT_CATEGORIES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = os.path.join(ROOT, "configs", "ConcreteDefects", "detr_tiny_cpu.yaml")
COLORS = {1: (200, 90, 40), 2: (60, 60, 70), 3: (20, 20, 20), 4: (170, 170, 160)}


def write_dataset(folder, split, num_images, size=(256, 320), seed=0):
    """Panoptic layout of datasets/prepare_concrete_defects.py: random rectangles of the three
    thing classes on background (no instances json: panoptic evaluation only)."""
    rng = np.random.default_rng(seed)
    h, w = size
    for d in (split, f"panoptic_{split}", "annotations"):
        os.makedirs(os.path.join(folder, d), exist_ok=True)
    images, annotations = [], []
    for i in range(num_images):
        pan = np.full((h, w), 1, dtype=np.int64)
        segments = [{"id": 1, "category_id": 4, "iscrowd": 0}]
        for k in range(int(rng.integers(1, 4))):
            y0, x0 = int(rng.integers(0, h - 40)), int(rng.integers(0, w - 40))
            y1, x1 = y0 + int(rng.integers(10, 40)), x0 + int(rng.integers(10, 40))
            pan[y0:y1, x0:x1] = k + 2
            segments.append({"id": k + 2, "category_id": int(rng.integers(1, 4)), "iscrowd": 0})
        image = np.zeros((h, w, 3), dtype=np.uint8)
        infos = []
        for s in segments:
            m = pan == s["id"]
            if not m.any():
                continue
            image[m] = COLORS[s["category_id"]]
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(np.ptp(xs) + 1), int(np.ptp(ys) + 1)]
            infos.append({**s, "area": int(m.sum()), "bbox": bbox})
        image = np.clip(image + rng.integers(-12, 13, image.shape), 0, 255).astype(np.uint8)
        stem = f"{split}{i:04d}"
        Image.fromarray(image).save(os.path.join(folder, split, f"{stem}.jpg"), quality=95)
        Image.fromarray(id2rgb(pan)).save(os.path.join(folder, f"panoptic_{split}", f"{stem}.png"))
        images.append({"id": i, "file_name": f"{stem}.jpg", "height": h, "width": w})
        annotations.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": infos})
    with open(os.path.join(folder, "annotations", f"panoptic_{split}.json"), "w") as f:
        json.dump(
            {
                "images": images,
                "annotations": annotations,
                "categories": CONCRETE_DEFECT_CATEGORIES,
            },
            f,
        )


def train_speed(procs, iters, batch, data_root, out, size=256, threads=None):
    """Seconds per iteration (steady state) of one train_net run on ``procs`` processes."""
    env = dict(os.environ, DETECTRON2_DATASETS=data_root)
    env.pop("OMP_NUM_THREADS", None)  # launch splits the cores between the processes
    if threads:
        env["OMP_NUM_THREADS"] = str(threads)  # or: this many threads in every process
    cmd = [
        sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", CONFIG,
        "--num-gpus", str(procs), "--dist-url", "auto",
        "DATASETS.TRAIN", "('synthetic_concrete_train_panoptic',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", str(batch), "SOLVER.MAX_ITER", str(iters),
        "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0",
        "INPUT.MIN_SIZE_TRAIN", f"({size},)", "INPUT.MAX_SIZE_TRAIN", str(size * 5 // 4),
        "OUTPUT_DIR", out, "SEED", "1",
    ]  # fmt: skip
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError((proc.stdout + proc.stderr)[-3000:])
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    match = re.search(r"Overall training speed: \d+ iterations in \S+ \(([\d.]+) s / it\)", log)
    return float(match.group(1))


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--procs", type=int, default=2, help="processes of the compared run")
    parser.add_argument("--iters", type=int, default=30)
    parser.add_argument("--batch", type=int, default=2, help="total images per iteration")
    parser.add_argument("--repeats", type=int, default=2)
    parser.add_argument("--size", type=int, default=256, help="short edge of the training images")
    parser.add_argument("--threads", type=int, default=0, help="threads per process (0: split)")
    args = parser.parse_args(argv)
    data_root = os.path.join(OUTPUT_DIR, "dist_data")
    folder = os.path.join(data_root, "synthetic_concrete")
    if not os.path.exists(os.path.join(folder, "annotations", "panoptic_train.json")):
        write_dataset(folder, "train", 16)
    times = {1: [], args.procs: []}
    for r in range(args.repeats):
        for procs in times:
            out = os.path.join(OUTPUT_DIR, "dist_runs", f"p{procs}_r{r}")
            times[procs].append(
                train_speed(procs, args.iters, args.batch, data_root, out, args.size, args.threads)
            )
            print(f"{procs} process(es): {times[procs][-1]:.3f} s/it", flush=True)
    rows, payload = [], {"iters": args.iters, "total_batch": args.batch, "size": args.size}
    payload["threads_per_process"] = args.threads or "cores / processes"
    payload["runs"] = {}
    for procs, ts in times.items():
        s_it = statistics.median(ts)
        payload["runs"][str(procs)] = {"s_per_it": ts, "images_per_s": args.batch / s_it}
        rows.append([procs, args.batch // procs, f"{s_it:.3f}", f"{args.batch / s_it:.2f}"])
    ratio = statistics.median(times[1]) / statistics.median(times[args.procs])
    payload["speedup"] = ratio
    print(markdown_table(["processes", "batch / process", "s / it", "images / s"], rows))
    print(f"{args.procs} processes vs 1: {ratio:.2f}x images/s")
    print("wrote", write_result("bench_distributed", payload))


if __name__ == "__main__":
    main()
