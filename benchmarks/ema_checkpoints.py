#!/usr/bin/env python
"""
Training weights vs their EMA at every checkpoint of a finished run with ``MODEL.EMA.ENABLED``
(e.g. ``make demo``'s ``output/demo/train``): PQ on the synthetic val split and on the 2 bundled
real photographs, both weights of every ``model_*.pth``.

    python -m benchmarks.ema_checkpoints output/demo/train --data output/demo/data

A checkpoint written during training holds the training weights under ``"model"`` and the
average in the EMA hook's state; ``model_final.pth`` holds the average under ``"model"`` and
the training weights in the hook's state (``d2_detr/engine/ema.py``). Writes
``output/benchmarks/<name>.json``.
"""

import argparse
import glob
import os
import re
import sys

import d2_detr  # noqa: F401  (compat before detectron2)

# isort: split
import torch
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

from d2_detr.data.datasets import register_concrete_defects
from d2_detr.engine import DETRTrainer
from d2_detr.utils.checkpoint_io import load_checkpoint_file

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import markdown_table, write_result  # noqa: E402

SYNTHETIC, REAL = "ema_ckpt_synthetic_val_panoptic", "ema_ckpt_real_train_panoptic"


def both_weights(path):
    """(training weights, averaged weights) state dicts of one checkpoint file."""
    ckpt = load_checkpoint_file(path)
    hooks = ckpt.get("trainer", {}).get("hooks", {})
    ema_state = next((v for k, v in hooks.items() if k.endswith("EMAHook")), None)
    if not ema_state or "shadow" not in ema_state:
        raise SystemExit(f"{path}: no EMA state (was the run trained with MODEL.EMA.ENABLED?)")
    if "training_model" in ema_state:  # model_final: "model" is the average
        return ema_state["training_model"], ckpt["model"]
    return ckpt["model"], ema_state["shadow"]


def panoptic(results, name):
    pan = (results.get(name) or {}).get("panoptic_seg") or {}
    return {k: round(float(v), 2) for k, v in pan.items() if k.startswith("PQ")}


def _pq_text(pq):
    return f"{pq.get('PQ', float('nan')):.1f} ({pq.get('PQ_th', float('nan')):.1f})"


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("run_dir", help="OUTPUT_DIR of a finished run (config.yaml, model_*.pth)")
    parser.add_argument("--data", required=True, help="folder holding synthetic_concrete/ and "
                        "concrete_defects/ (make demo: output/demo/data)")  # fmt: skip
    parser.add_argument("--name", default="ema_checkpoints")
    args = parser.parse_args(argv)
    setup_logger(name="d2_detr")
    register_concrete_defects(
        os.path.join(args.data, "synthetic_concrete"), name_prefix="ema_ckpt_synthetic",
        splits=("val",),
    )  # fmt: skip
    register_concrete_defects(
        os.path.join(args.data, "concrete_defects"), name_prefix="ema_ckpt_real", splits=("train",)
    )
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(os.path.join(args.run_dir, "config.yaml"))
    cfg.merge_from_list(["DATASETS.TEST", f"('{SYNTHETIC}', '{REAL}')", "MODEL.WEIGHTS", ""])
    model = DETRTrainer.build_model(cfg)
    model.eval()

    def iteration(path):
        m = re.search(r"model_(\d+)\.pth$", path)
        return int(m.group(1)) + 1 if m else cfg.SOLVER.MAX_ITER

    points, rows = [], []
    for path in sorted(glob.glob(os.path.join(args.run_dir, "model_*.pth")), key=iteration):
        point = {"checkpoint": os.path.basename(path), "iteration": iteration(path)}
        for which, weights in zip(("training", "ema"), both_weights(path)):
            model.load_state_dict({k: torch.as_tensor(v) for k, v in weights.items()})
            results = DETRTrainer.test(cfg, model)
            point[which] = {"val": panoptic(results, SYNTHETIC), "real": panoptic(results, REAL)}
        points.append(point)
        rows.append(
            [point["iteration"]]
            + [_pq_text(point[w][s]) for s in ("val", "real") for w in ("training", "ema")]
        )
    print(
        markdown_table(
            ["iteration", "val PQ (th), training", "val, EMA", "real PQ (th), training",
             "real, EMA"],
            rows,
        )  # fmt: skip
    )
    path = write_result(
        args.name,
        {"what": "training weights vs EMA at each checkpoint", "run_dir": args.run_dir,
         "points": points},
    )  # fmt: skip
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
