#!/usr/bin/env python
"""
PNG plots of a training run from its ``metrics.json``:

    python tools/plot_metrics.py OUTPUT_DIR [--out FOLDER]

``losses.png``: total loss and each loss term (last decoder layer) over iterations;
``eval.png``: PQ / PQ_th / PQ_st, bbox AP and segm AP at each evaluation. Resumed runs append
to ``metrics.json``: for a repeated iteration the last record wins.
"""

import argparse
import json
import os
import re

import matplotlib

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
    """``metrics.json`` (one JSON object per line) -> {iteration: merged record}."""
    if not os.path.isfile(path):
        raise FileNotFoundError(
            f"{path}: no metrics.json (was the training run's OUTPUT_DIR given?)"
        )
    records = {}
    with open(path) as f:
        for n, line in enumerate(f, 1):
            line = line.strip()
            if not line:
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError:
                if n == sum(1 for _ in open(path)):  # a run killed while writing its last line
                    continue
                raise ValueError(f"{path}:{n}: not a JSON line")
            records.setdefault(rec.get("iteration", -1), {}).update(rec)
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
    fig.savefig(path, dpi=100, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_metrics(output_dir, out=None):
    """Write losses.png and (if any evaluation ran) eval.png; returns the written paths."""
    records = read_metrics(os.path.join(output_dir, "metrics.json"))
    out = out or output_dir
    os.makedirs(out, exist_ok=True)
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
    args = parser.parse_args(argv)
    for path in plot_metrics(args.output_dir, args.out):
        print(path)


if __name__ == "__main__":
    main()
