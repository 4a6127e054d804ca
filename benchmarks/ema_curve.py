#!/usr/bin/env python
"""
PQ against training minutes with and without the EMA of the weights, from ONE run: the EMA does
not change training, so every evaluation point evaluates the training weights and the averaged
ones (MODEL.EMA) on the synthetic val split and on the 2 bundled real photographs.

    python -m benchmarks.ema_curve --minutes 20 --eval-every 2 --decay 0.998
    python -m benchmarks.ema_curve --max-iter 2000 --eval-every-iters 250   # by iterations
    python -m benchmarks.ema_curve --plot output/benchmarks/a.json output/benchmarks/b.json \
        --name two_seeds                                                     # saved runs

By iterations (``--max-iter``), the learning rate drops at 80 % of them, as in ``make demo``, and
the curve does not depend on how busy the machine is.

Writes ``output/benchmarks/<name>.json`` and ``.png`` (default name ``ema_curve``).
"""

import argparse
import json
import os
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
from benchmarks.convergence import CONFIG, make_data, make_overfit_data  # noqa: E402

KEYS = ("PQ", "PQ_th", "PQ_st")


def _pq(results, name):
    res = results.get(name, results) if results else {}
    pan = res.get("panoptic_seg") or {}
    return {k: pan.get(k) for k in KEYS} | {
        k: v for k, v in pan.items() if k.startswith("PQ_") and k not in KEYS
    }


def plot_curves(runs, name, by_iter):
    """PQ of the training weights (dashed) and the EMA (solid) on synthetic val and the real
    photos; ``runs``: [(label or None, curve)], one line style per run. Returns the png path."""
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), sharey=True)
    for ax, split, title in zip(axes, ("val", "real"), ("synthetic val", "2 real photos")):
        for k, (label, curve) in enumerate(runs):
            xs = [p["iteration"] if by_iter else p["minutes"] for p in curve]
            for which, style in (("raw", "--"), ("ema", "-")):
                tag = "EMA" if which == "ema" else "training weights"
                ax.plot(
                    xs, [p[which][split]["PQ"] for p in curve], style, color=f"C{k}", marker="o",
                    label=f"{tag}, {label}" if label else tag,
                )  # fmt: skip
        ax.set_title(title)
    xlabel = "training iterations (batch 2)" if by_iter else "training minutes (CPU)"
    return finish_pq_plot(fig, list(axes), name, 80, xlabel, "PQ", legend_size=8)


def plot_saved(paths, name):
    """One figure of several saved runs (e.g. two seeds): ``--plot A.json B.json``."""
    runs = []
    for path in paths:
        with open(path) as f:
            saved = json.load(f)
        seed = dict(zip(saved["opts"][::2], saved["opts"][1::2])).get("SEED", "?")
        runs.append((f"seed {seed}", saved["curve"]))
        by_iter = saved.get("max_iter") is not None
    print(f"wrote {plot_curves(runs, name, by_iter)}")


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=20.0)
    parser.add_argument("--eval-every", type=float, default=2.0)
    parser.add_argument("--lr-drop-at", type=float, default=0.8)
    parser.add_argument("--max-iter", type=int, default=None, help="budget in iterations instead")
    parser.add_argument("--eval-every-iters", type=int, default=250)
    parser.add_argument("--decay", type=float, default=0.998)
    parser.add_argument("--num-images", type=int, default=300)
    parser.add_argument("--seed", type=int, default=0, help="data seed")
    parser.add_argument("--data", default=os.path.join(ROOT, "output", "ema_curve_data"))
    parser.add_argument("--name", default="ema_curve")
    parser.add_argument(
        "--plot", nargs="+", metavar="JSON", help="only plot these saved runs in one figure"
    )
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = parser.parse_args(argv)
    if args.plot:
        return plot_saved(args.plot, args.name)
    setup_logger(name="d2_detr")

    dataset = make_data(args.data, args.num_images, args.seed)
    register_concrete_defects(dataset, name_prefix="ema_synthetic", splits=("train", "val"))
    real = make_overfit_data(args.data)
    register_concrete_defects(real, name_prefix="ema_real", splits=("train",))
    val, photos = "ema_synthetic_val_panoptic", "ema_real_train_panoptic"
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(CONFIG)
    by_iter = args.max_iter is not None
    max_iter, steps = (args.max_iter, int(args.max_iter * 0.8)) if by_iter else (1000000, 999999)
    cfg.merge_from_list(
        [
            "SOLVER.MAX_ITER", str(max_iter), "SOLVER.STEPS", f"({steps},)",
            "DATASETS.TRAIN", "('ema_synthetic_train_panoptic',)",
            "DATASETS.TEST", f"('{val}', '{photos}')",
            "OUTPUT_DIR", os.path.join(OUTPUT_DIR, f"{args.name}_run"),
            "SOLVER.CHECKPOINT_PERIOD", "1000000", "TEST.EVAL_PERIOD", "0",
            "MODEL.EMA.ENABLED", "True", "MODEL.EMA.DECAY", str(args.decay),
        ]  # fmt: skip
        + args.opts
    )
    trainer = DETRTrainer(cfg)
    raw_points = []

    def evaluate(trainer):
        # the class's test sees the training weights; the trainer's (EMA hook) the average
        raw = DETRTrainer.test(trainer.cfg, trainer.model)
        raw_points.append({"val": _pq(raw, val), "real": _pq(raw, photos)})
        return trainer.test(trainer.cfg, trainer.model)

    if by_iter:
        drop = None
        budget = TimeBudget(eval_every_iters=args.eval_every_iters, evaluate=evaluate)
    else:
        drop = args.lr_drop_at if 0 < args.lr_drop_at < 1 else None
        budget = TimeBudget(
            args.minutes, lr_drop_at=drop, eval_every_minutes=args.eval_every, evaluate=evaluate
        )
    trainer.register_hooks([budget])
    trainer.resume_or_load(resume=False)
    trainer.train()
    curve = []
    for point, raw in zip(budget.curve, raw_points):
        results = point.pop("results")
        curve.append(
            {
                "minutes": point["minutes"],
                "iteration": point["iteration"],
                "ema": {"val": _pq(results, val), "real": _pq(results, photos)},
                "raw": raw,
            }
        )
    path = write_result(
        args.name,
        {
            "what": "PQ vs training minutes, training weights (raw) and their EMA, one run",
            "config": os.path.relpath(CONFIG, ROOT),
            "decay": args.decay,
            "opts": args.opts,
            "lr_drop_at": drop,
            "max_iter": args.max_iter,
            "num_images": args.num_images,
            "torch_threads": torch.get_num_threads(),
            "curve": curve,
        },
    )
    png = plot_curves([(None, curve)], args.name, by_iter)
    print("minutes  iter   val raw  val EMA  real raw  real EMA")
    for p in curve:
        print(
            f"{p['minutes']:7.2f} {p['iteration']:5d} {p['raw']['val']['PQ']:8.1f} "
            f"{p['ema']['val']['PQ']:8.1f} {p['raw']['real']['PQ']:9.1f} "
            f"{p['ema']['real']['PQ']:9.1f}"
        )
    print(f"wrote {path} and {png}")


if __name__ == "__main__":
    main()
