#!/usr/bin/env python
"""
Convergence of the tiny config on the synthetic concrete set: PQ on its val split against
minutes of CPU training (evaluation time excluded).

    python -m benchmarks.convergence --minutes 20 --eval-every 2

Writes ``output/benchmarks/<name>.json`` (the curve, the config, the machine),
``output/benchmarks/<name>.png`` and the trained model ``output/benchmarks/<name>_run/
model_final.pth``. Goal: PQ >= 70 within 20 CPU-minutes on 2 cores.

``--overfit`` trains and evaluates on the 2 bundled real photographs instead (the longer version
of tests/test_overfit.py: how far the tiny model gets when it sees few images long enough).
"""

import argparse
import os
import subprocess
import sys

import d2_detr  # noqa: F401  (compat before detectron2)

# isort: split
import matplotlib
import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from d2_detr.data.datasets import register_concrete_defects
from d2_detr.engine import DETRTrainer, TimeBudget

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import OUTPUT_DIR, finish_pq_plot, write_result  # noqa: E402

CONFIG = os.path.join(ROOT, "configs", "ConcreteDefects", "detr_tiny_cpu.yaml")


def make_data(folder, num_images, seed):
    """Synthetic raw set -> converted dataset at ``folder/synthetic_concrete`` (reused if there)."""
    dataset = os.path.join(folder, "synthetic_concrete")
    if os.path.isfile(os.path.join(dataset, "annotations", "panoptic_val.json")):
        return dataset
    raw = os.path.join(folder, "raw")
    py = sys.executable
    subprocess.run(
        [py, "datasets/make_synthetic_concrete.py", "--out", raw, "--num", str(num_images),
         "--seed", str(seed), "--overwrite"],
        cwd=ROOT, check=True,
    )  # fmt: skip
    subprocess.run(
        [py, "datasets/prepare_concrete_defects.py", "--raw", raw, "--out", dataset,
         "--val-fraction", "0.15", "--overwrite", "--no-progress"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return dataset


def make_overfit_data(folder):
    """The bundled real sample converted with no val split, at ``folder/real_sample``."""
    dataset = os.path.join(folder, "real_sample")
    subprocess.run(
        [sys.executable, "datasets/prepare_concrete_defects.py", "--raw",
         "datasets/concrete_defects_sample", "--out", dataset, "--val-fraction", "0",
         "--overwrite", "--no-progress"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    return dataset


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0, help="training-time budget")
    parser.add_argument("--eval-every", type=float, default=2.0, help="minutes between evals")
    parser.add_argument(
        "--lr-drop-at", type=float, default=0.8,
        help="fraction of the budget after which the lr is divided by 10 (DETR's step schedule, "
        "by time; make demo drops at 80 %% of its iterations); <= 0 or >= 1: no drop",
    )  # fmt: skip
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--data", default=os.path.join(ROOT, "output", "convergence_data"))
    parser.add_argument("--name", default=None, help="default: convergence / overfit_curve")
    parser.add_argument("--overfit", action="store_true", help="the 2 real images, train = test")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    setup_logger(name="d2_detr")

    if args.overfit:
        name = args.name or "overfit_curve"
        dataset = make_overfit_data(args.data)
        register_concrete_defects(dataset, name_prefix="convergence_real", splits=("train",))
        train_set = test_set = "convergence_real_train_panoptic"
    else:
        name = args.name or "convergence"
        dataset = make_data(args.data, args.num_images, args.seed)
        prefix = "convergence_synthetic"
        register_concrete_defects(dataset, name_prefix=prefix, splits=("train", "val"))
        train_set, test_set = f"{prefix}_train_panoptic", f"{prefix}_val_panoptic"
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(CONFIG)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", f"('{train_set}',)", "DATASETS.TEST", f"('{test_set}',)",
            "OUTPUT_DIR", os.path.join(OUTPUT_DIR, f"{name}_run"),
            "SOLVER.MAX_ITER", "1000000", "SOLVER.STEPS", "(999999,)",
            "SOLVER.CHECKPOINT_PERIOD", "1000000", "TEST.EVAL_PERIOD", "0",
        ]  # fmt: skip
        + args.opts
    )
    trainer = DETRTrainer(cfg)
    drop = args.lr_drop_at if 0 < args.lr_drop_at < 1 else None
    budget = TimeBudget(args.minutes, lr_drop_at=drop, eval_every_minutes=args.eval_every)
    trainer.register_hooks([budget])  # last: the other hooks' time counts as training time
    trainer.resume_or_load(resume=False)
    trainer.train()
    curve = budget.curve
    trainer.checkpointer.save("model_final")  # for --eval-only / the demo on this model
    for point in curve:
        point.pop("results")
    path = write_result(
        name,
        {
            "what": f"tiny config: PQ on {test_set} vs training minutes",
            "config": os.path.relpath(CONFIG, ROOT),
            "opts": args.opts,
            "lr_drop_at": drop,
            "num_images": 2 if args.overfit else args.num_images,
            "torch_threads": torch.get_num_threads(),
            "curve": curve,
        },
    )
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for key in ("PQ", "PQ_th", "PQ_st"):
        ax.plot([p["minutes"] for p in curve], [p[key] for p in curve], marker="o", label=key)
    ylabel = "PQ on the 2 training images" if args.overfit else "PQ on synthetic val"
    png = finish_pq_plot(fig, ax, name, 70, "training minutes (CPU)", ylabel)
    print("minutes  iter    PQ   PQ_th  PQ_st")
    for p in curve:
        print(
            f"{p['minutes']:7.2f} {p['iteration']:5d} {p['PQ']:5.1f} {p['PQ_th']:6.1f} "
            f"{p['PQ_st']:6.1f}"
        )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
