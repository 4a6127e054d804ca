"""Shared helpers of the benchmark scripts: interleaved timing, GEMM roofline, peer model, output.

Benchmarks compare inside ONE process and report ratios: absolute times on these machines drift.
"""

import argparse
import datetime
import json
import os
import platform
import statistics
import time

import torch  # noqa: E402

import d2_detr  # noqa: F401  (compat before torchvision / detectron2)

OUTPUT_DIR = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "output", "benchmarks"
)


def machine_info():
    """A short description of where the numbers were measured."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "date": datetime.datetime.now().strftime("%Y-%m-%d %H:%M"),
    }


def interleaved_timing(candidates, runs=5, warmup=1):
    """Time several callables in turn (A, B, A, B, ...) so drift hits all of them alike.

    Args:
        candidates: dict name -> zero-argument callable.
        runs: timed runs of each candidate; warmup: untimed runs of each before that.
    Returns:
        dict name -> {"median_s", "min_s", "max_s", "runs_s"}.
    """
    for _ in range(warmup):
        for fn in candidates.values():
            fn()
    times = {name: [] for name in candidates}
    for _ in range(runs):
        for name, fn in candidates.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {
        name: {
            "median_s": statistics.median(t),
            "min_s": min(t),
            "max_s": max(t),
            "runs_s": t,
        }
        for name, t in times.items()
    }


def measure_gemm_flops(n=2048, runs=5):
    """Median fp32 FLOP/s of an n x n matmul on this machine, now."""
    a = torch.randn(n, n)
    b = torch.randn(n, n)
    torch.mm(a, b)
    times = []
    for _ in range(runs):
        start = time.perf_counter()
        torch.mm(a, b)
        times.append(time.perf_counter() - start)
    return 2 * n**3 / statistics.median(times)


def build_peer(num_labels=4, num_queries=20):
    """HF transformers' DetrForSegmentation with random weights, R50, as FACTS.md section 5."""
    from transformers import DetrConfig, DetrForSegmentation, ResNetConfig

    config = DetrConfig(
        num_labels=num_labels,
        num_queries=num_queries,
        use_timm_backbone=False,
        use_pretrained_backbone=False,
        backbone=None,
        backbone_config=ResNetConfig(out_features=["stage1", "stage2", "stage3", "stage4"]),
    )
    return DetrForSegmentation(config)


def peak_rss_mib():
    """Peak resident set size of this process so far, in MiB."""
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def markdown_table(header, rows):
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(str(c) for c in row) + " |" for row in rows]
    return "\n".join(lines)


def load_script(name, path):
    """A script that is not in a package (``datasets/*.py``) imported as module ``name``, once."""
    import importlib.util
    import sys

    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, path)
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


def load_synthetic():
    """The synthetic generator ``datasets/synthetic_concrete.py`` (a tool, not in the package)."""
    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    return load_script(
        "synthetic_concrete", os.path.join(root, "datasets", "synthetic_concrete.py")
    )


def write_result(name, payload):
    """Write output/benchmarks/<name>.json (with machine info) and return its path."""
    os.makedirs(OUTPUT_DIR, exist_ok=True)
    payload = dict(payload, machine=machine_info())
    path = os.path.join(OUTPUT_DIR, f"{name}.json")
    with open(path, "w") as f:
        json.dump(payload, f, indent=2)
    return path


def finish_pq_plot(fig, axes, name, target, xlabel, ylabel, legend_size=None):
    """Target line, axis labels, grid and legend on each PQ curve of ``axes`` (one axis or a
    sequence); saves the figure as ``output/benchmarks/<name>.png`` and returns that path."""
    for ax in axes if isinstance(axes, (list, tuple)) else [axes]:
        ax.axhline(target, color="grey", linestyle="--", linewidth=1)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(ylabel)
        ax.grid(True, alpha=0.3)
        ax.legend(fontsize=legend_size)
    png = os.path.join(OUTPUT_DIR, f"{name}.png")
    fig.savefig(png, dpi=100, bbox_inches="tight")
    return png


def image_timing_parser(description, runs, threads_help="torch threads (0: default)"):
    """ArgumentParser with the options the per-image timing benchmarks share (``--runs``,
    ``--threads``, ``--height``, ``--width``); callers add their own."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--runs", type=int, default=runs)
    parser.add_argument("--threads", type=int, default=0, help=threads_help)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    return parser


def set_threads(args):
    """``torch.set_num_threads(args.threads)`` unless it is 0 (torch's default)."""
    if args.threads:
        torch.set_num_threads(args.threads)


TINY_CONFIG = os.path.join(
    os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
    "configs",
    "ConcreteDefects",
    "detr_tiny_cpu.yaml",
)


def trained_model_parser(description, name):
    """Options of the scripts that analyse a trained model on one split of a converted dataset:
    --weights --data --split --config-file --name and trailing config overrides."""
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--weights", required=True)
    parser.add_argument("--data", required=True, help="a converted dataset root")
    parser.add_argument("--split", default="val")
    parser.add_argument("--config-file", default=TINY_CONFIG)
    parser.add_argument("--name", default=name)
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def split_and_config(args, prefix):
    """Register ``args.split`` of ``args.data`` as ``<prefix>_<split>_panoptic``; returns that
    name and the config (``args.config_file`` + the DETR keys, overrides not yet merged)."""
    from detectron2.config import get_cfg

    from d2_detr.data.datasets import register_concrete_defects

    register_concrete_defects(args.data, name_prefix=prefix, splits=(args.split,))
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    return f"{prefix}_{args.split}_panoptic", cfg
