#!/usr/bin/env python
"""
PNG plots of a training run from its ``metrics.json``:

    python tools/plot_metrics.py OUTPUT_DIR [--out FOLDER]

``losses.png``: total loss and each loss term (last decoder layer) over iterations;
``eval.png``: PQ / PQ_th / PQ_st, bbox AP and segm AP at each evaluation. Resumed runs append
to ``metrics.json``: for a repeated iteration the last record wins. PNGs are written atomically.
Bad input (no metrics.json, a malformed line, --out a file) ends with a message naming it and
exit code 2 (``--debug``: the traceback).
"""

import argparse
import json
import os
import re

import matplotlib

from d2_detr.utils.cli import UserError, run_cli
from d2_detr.utils.io import atomic_write

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402

EVAL_KEYS = (
    "panoptic_seg/PQ",
    "panoptic_seg/PQ_th",
    "panoptic_seg/PQ_st",
    "bbox/AP",
    "segm/AP",
)
AUX_LOSS = re.compile(r"_\d+$")


def read_metrics(path):
    """``metrics.json`` (one JSON object per line) -> {iteration: merged record}. A last line
    cut short (a run killed while writing it) is skipped; any other bad line is a UserError."""
    if not os.path.isfile(path):
        raise UserError(
            f"{path} does not exist",
            "give the OUTPUT_DIR of a training run (it holds metrics.json after 20 iterations)",
        )
    try:
        with open(path, encoding="utf-8") as f:
            lines = f.read().splitlines()
    except (OSError, UnicodeDecodeError) as e:
        raise UserError(f"{path} cannot be read: {e}") from None
    numbered = [(n, line.strip()) for n, line in enumerate(lines, 1) if line.strip()]
    records = {}
    for i, (n, line) in enumerate(numbered):
        try:
            rec = json.loads(line)
        except json.JSONDecodeError:
            if i == len(numbered) - 1 and i > 0:  # a run killed while writing its last line
                continue
            raise UserError(
                f"{path}:{n}: not a JSON line", "metrics.json holds one JSON object per line"
            ) from None
        if not isinstance(rec, dict) or not isinstance(rec.get("iteration", -1), int):
            raise UserError(
                f"{path}:{n}: not a metrics record (a JSON object with an integer 'iteration')"
            )
        records.setdefault(rec.get("iteration", -1), {}).update(rec)
    if not records:
        raise UserError(f"{path} holds no metrics records", "train for at least 20 iterations")
    return dict(sorted(records.items()))


def series(records, key):
    """(iterations, values) of ``key`` in the records that have it."""
    points = [(it, rec[key]) for it, rec in records.items() if key in rec]
    return [p[0] for p in points], [p[1] for p in points]


def _line_plot(path, curves, ylabel, title, log_y=False):
    """One PNG at ``path``: ``curves`` maps label -> (x, y, matplotlib plot kwargs)."""
    fig, ax = plt.subplots(figsize=(8, 5))
    for label, (x, y, style) in curves.items():
        ax.plot(x, y, label=label, **style)
    ax.set_xlabel("iteration")
    ax.set_ylabel(ylabel)
    if log_y:
        ax.set_yscale("log")
    ax.set_title(title)
    ax.grid(True, alpha=0.3)
    ax.legend()
    try:
        atomic_write(path, lambda f: fig.savefig(f, format="png", dpi=100, bbox_inches="tight"))
    finally:
        plt.close(fig)
    return path


def plot_metrics(output_dir, out=None):
    """Write losses.png and (if any evaluation ran) eval.png; returns the written paths."""
    records = read_metrics(os.path.join(output_dir, "metrics.json"))
    out = out or output_dir
    if os.path.exists(out) and not os.path.isdir(out):
        raise UserError(f"--out {out} is a file, not a folder", "give a folder for the PNGs")
    try:
        os.makedirs(out, exist_ok=True)
    except OSError as e:
        raise UserError(f"--out {out} cannot be created: {e.strerror or e}") from None
    if not os.access(out, os.W_OK):
        raise UserError(f"--out {out} is not writable", "give another folder")
    written = []
    loss_keys = sorted(
        {
            k
            for rec in records.values()
            for k in rec
            if k.startswith("loss_") and not AUX_LOSS.search(k)
        }
    )
    losses = {}
    for key in ["total_loss"] + loss_keys:
        x, y = series(records, key)
        if x:
            losses[key] = (x, y, {"linewidth": 2 if key == "total_loss" else 1})
    if losses:
        path = os.path.join(out, "losses.png")
        written.append(_line_plot(path, losses, "loss", "training losses", log_y=True))
    evals = {}
    for key in EVAL_KEYS:
        x, y = series(records, key)
        if x:
            evals[key] = (x, y, {"marker": "o"})
    if evals:
        written.append(_line_plot(os.path.join(out, "eval.png"), evals, "%", "evaluation"))
    return written


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("output_dir", help="training OUTPUT_DIR holding metrics.json")
    parser.add_argument("--out", default=None, help="folder for the PNGs (default: output_dir)")
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    args = parser.parse_args(argv)
    if not os.path.isdir(args.output_dir):
        what = "is a file" if os.path.exists(args.output_dir) else "does not exist"
        raise UserError(
            f"output_dir {args.output_dir} {what}", "give the OUTPUT_DIR of a training run"
        )
    for path in plot_metrics(args.output_dir, args.out):
        print(path)


if __name__ == "__main__":
    run_cli(main)
