#!/usr/bin/env python
"""
The embedded end-to-end default (``make demo``): no download, CPU only, a few minutes.

1. draw a synthetic concrete-defect set and convert it (and the bundled real sample) to
   Detectron2's COCO-panoptic layout under ``output/demo/data``;
2. train the tiny DETR config on it (``tools/train_net.py``);
3. evaluate the trained model (``--eval-only``) and print the PQ table;
4. write panoptic overlays and the defect report (``demo/demo.py``) and the training curves
   (``tools/plot_metrics.py``) under ``output/demo``.

Every step runs the same command a user would run; each command is printed.
"""

import argparse
import os
import re
import shlex
import subprocess
import sys
import time

from d2_detr.utils.io import atomic_write_json

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
CONFIG = "configs/ConcreteDefects/detr_tiny_cpu.yaml"
# A NOMINAL scale for the report's millimetres: neither the synthetic images nor the two sample
# photographs come with a known scale. 0.5 mm/px = a 640 px wide view of 32 cm of surface.
NOMINAL_MM_PER_PIXEL = 0.5
# evaluation sets: synthetic val, and the 2 bundled real photographs (converted with no val
# split, so the converter names their split "train"; the demo never trains on them)
REAL_AND_SYNTHETIC_TEST = ("synthetic_concrete_val_panoptic", "concrete_defects_train_panoptic")
SET_NAMES = {
    "synthetic_concrete_val_panoptic": "synthetic val",
    "concrete_defects_train_panoptic": "real photos (2, never trained on)",
}


# what the demo's training adds to the tiny config: photometric + copy-paste augmentation and
# the EMA of the weights (measured on synthetic val and the real photographs, see the README's
# "From synthetic to the real photographs": the EMA keeps neighbouring evaluations within 3 PQ,
# the augmentation costs ~5 PQ on synthetic val and is the setting that finds the real crack;
# the tiny config keeps them off for tests)
DEMO_TRAINING = [
    "INPUT.PHOTOMETRIC.ENABLED", "True", "INPUT.COPY_PASTE.ENABLED", "True",
    "MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", "0.998",
]  # fmt: skip


def read_pq(log):
    """{dataset: {PQ, PQ_th, PQ_st}} from the "name: PQ .. PQ_th .. PQ_st .." lines of a log."""
    found = {}
    with open(log) as f:
        for line in f:
            m = re.match(r"\s*(\S+): PQ ([\d.]+) .*PQ_th ([\d.na]+)\s+PQ_st ([\d.na]+)", line)
            if m:
                found[m.group(1)] = {
                    k: float(v) for k, v in zip(("PQ", "PQ_th", "PQ_st"), m.groups()[1:])
                }
    return found


def run(cmd, env=None, log=None):
    """Run ``cmd`` (list) from the repository root, echoing it; stdout also copied to ``log``."""
    print("$ " + " ".join(shlex.quote(c) for c in cmd), flush=True)
    start = time.time()
    if log is None:
        subprocess.run(cmd, cwd=ROOT, env=env, check=True)
    else:
        with open(log, "w") as f:
            proc = subprocess.Popen(
                cmd, cwd=ROOT, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True
            )
            for line in proc.stdout:
                f.write(line)
                if _interesting(line):
                    print("  " + line.rstrip(), flush=True)
            if proc.wait():
                raise subprocess.CalledProcessError(proc.returncode, cmd)
    print(f"  ({time.time() - start:.0f} s)", flush=True)


def _interesting(line):
    """Lines of a training/eval log worth showing: progress, the PQ table and the summary."""
    text = line.strip()
    if text.startswith("|"):
        return "category" not in text  # result tables, not the per-category ones
    keys = (
        "eta:",
        "Panoptic quality",
        ": PQ ",
        "Panoptic Evaluation Results",
        "Error",
        "Traceback",
    )
    return any(k in text for k in keys)


def banner(text):
    print(f"\n=== {text} ===", flush=True)


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--output", default="output/demo")
    parser.add_argument("--num-images", type=int, default=200, help="synthetic images")
    parser.add_argument("--max-iter", type=int, default=2000, help="training iterations")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument(
        "--mm-per-pixel",
        type=float,
        default=NOMINAL_MM_PER_PIXEL,
        help="scale of the report (nominal: the demo's photos have no known scale)",
    )
    parser.add_argument(
        "opts", nargs=argparse.REMAINDER, help="config overrides for training (KEY VALUE ...)"
    )
    args = parser.parse_args(argv)

    py = sys.executable
    out = os.path.abspath(os.path.join(ROOT, args.output))
    data = os.path.join(out, "data")
    train_dir = os.path.join(out, "train")
    env = dict(os.environ, DETECTRON2_DATASETS=data)
    start = time.time()

    banner("1/4 data: synthetic set + the bundled real sample -> COCO panoptic")
    raw = os.path.join(data, "synthetic_raw")
    run(
        [
            py,
            "datasets/make_synthetic_concrete.py",
            "--out",
            raw,
            "--num",
            str(args.num_images),
            "--seed",
            str(args.seed),
            "--overwrite",
        ]
    )
    for raw_dir, name, val_fraction in (
        (raw, "synthetic_concrete", "0.15"),
        ("datasets/concrete_defects_sample", "concrete_defects", "0"),
    ):
        run(
            [py, "datasets/prepare_concrete_defects.py", "--raw", raw_dir,
             "--out", os.path.join(data, name), "--val-fraction", val_fraction,
             "--overwrite", "--no-progress"],
            log=os.path.join(data, f"convert_{name}.log"),
        )  # fmt: skip

    banner(f"2/4 train the tiny DETR config on CPU ({args.max_iter} iterations)")
    weights = os.path.join(train_dir, "model_final.pth")
    run(
        [
            py,
            "tools/train_net.py",
            "--config-file",
            CONFIG,
            "OUTPUT_DIR",
            train_dir,
            "DATASETS.TRAIN",
            "('synthetic_concrete_train_panoptic',)",
            "DATASETS.TEST",
            "('synthetic_concrete_val_panoptic',)",
            "SOLVER.MAX_ITER",
            str(args.max_iter),
            "SOLVER.STEPS",
            f"({int(args.max_iter * 0.8)},)",
            "SOLVER.CHECKPOINT_PERIOD",
            str(max(args.max_iter // 3, 1)),
            "TEST.EVAL_PERIOD",
            str(max(args.max_iter // 3, 1)),
        ]
        + DEMO_TRAINING
        + args.opts,
        env=env,
        log=os.path.join(out, "train.log"),
    )

    banner(
        "3/4 evaluate the trained model on the held-out synthetic val split and on the 2 real "
        "photographs (concrete_defects_train_panoptic: never trained on)"
    )
    run(
        [
            py,
            "tools/train_net.py",
            "--config-file",
            CONFIG,
            "--eval-only",
            "MODEL.WEIGHTS",
            weights,
            "OUTPUT_DIR",
            os.path.join(out, "eval"),
            "DATASETS.TEST",
            f"{REAL_AND_SYNTHETIC_TEST!r}",
        ],
        env=env,
        log=os.path.join(out, "eval.log"),
    )
    pq = read_pq(os.path.join(out, "eval.log"))

    banner("4/4 overlays, defect report, training curves")
    predictions = os.path.join(out, "predictions")
    val_images = os.path.join(data, "synthetic_concrete", "val")
    real_images = "datasets/concrete_defects_sample/images"
    run(
        [
            py,
            "demo/demo.py",
            "--config-file",
            CONFIG,
            "--input",
            val_images,
            real_images,
            "--output",
            predictions,
            "--mm-per-pixel",
            str(args.mm_per_pixel),
            "--no-progress",
            "MODEL.WEIGHTS",
            weights,
        ],
        env=env,
    )
    run([py, "tools/plot_metrics.py", train_dir, "--out", out])

    summary = {"seconds": round(time.time() - start, 1), "output": out, "panoptic_quality": pq}
    atomic_write_json(os.path.join(out, "demo_summary.json"), summary)
    rel = os.path.relpath(out, os.getcwd())
    print("\n=== panoptic quality (PQ, things / background) ===")
    for name, v in pq.items():
        label = SET_NAMES.get(name, name)
        print(
            f"  {label:36s} PQ {v['PQ']:5.1f}   things {v['PQ_th']:5.1f}   stuff {v['PQ_st']:5.1f}"
        )
    print(f"""
=== done in {summary['seconds'] / 60:.1f} min. What was done and where to look ===
  data          {rel}/data/ (synthetic_concrete: train/val splits; concrete_defects: the
                2 bundled real images), Detectron2 COCO-panoptic layout
  training      {rel}/train/ (model_final.pth, metrics.json, log.txt); log: {rel}/train.log
  evaluation    {rel}/eval.log (PQ/SQ/RQ table above, plus bbox/segm AP)
  curves        {rel}/losses.png, {rel}/eval.png
  overlays      {rel}/predictions/overlays/<path>/*.jpg (synthetic val + the real sample)
  report        {rel}/predictions/report.html (open it in a browser), defects.csv (one row
                per defect), images.csv (per image), defect_report.json
The model is tiny and trained from scratch for minutes on synthetic data: expect rough masks,
and little on the real photos (they are not in its training set). See README for real training.
""")


if __name__ == "__main__":
    main()
