"""Peak memory (RSS) of training (batch 2 at 800x1066) and of inference (one 800x1066 image).

Each case runs in a fresh subprocess so that one case's peak does not hide another's.

    python -m benchmarks.bench_memory
"""

import argparse
import json
import subprocess
import sys

import torch

from benchmarks.common import markdown_table, peak_rss_mib, write_result
from benchmarks.models import build_ours, random_targets

TARGET_TRAIN_GIB = 6.0


def run_case(case, height, width):
    gen = torch.Generator().manual_seed(0)
    model, cfg = build_ours()
    baseline = peak_rss_mib()
    if case == "train":
        from d2_detr.engine.optimizer import build_detr_optimizer

        model.train()
        optimizer = build_detr_optimizer(cfg, model)
        batch = [
            {
                "image": torch.randint(0, 256, (3, height, width), dtype=torch.uint8),
                "instances": random_targets(height, width, 6, 4, gen),
            }
            for _ in range(2)
        ]
        for _ in range(2):  # the second step holds the optimizer state too
            loss = sum(model(batch).values())
            optimizer.zero_grad()
            loss.backward()
            optimizer.step()
    else:
        model.eval()
        image = torch.randint(0, 256, (3, height, width), dtype=torch.uint8)
        with torch.inference_mode():
            for _ in range(2):
                model([{"image": image}])
    return {"case": case, "peak_rss_mib": peak_rss_mib(), "after_build_mib": baseline}


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--case", choices=["train", "inference"], help="run one case (internal)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    args = parser.parse_args()
    if args.case:
        print(json.dumps(run_case(args.case, args.height, args.width)))
        return
    results = {}
    for case in ("train", "inference"):
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--case", case]
        cmd += ["--height", str(args.height), "--width", str(args.width)]
        out = subprocess.run(cmd, capture_output=True, text=True, check=True)
        results[case] = json.loads(out.stdout.strip().splitlines()[-1])
    rows = [
        [
            f"{case} ({'batch 2' if case == 'train' else 'batch 1'}, {args.height}x{args.width})",
            f"{r['peak_rss_mib'] / 1024:.2f}",
            f"{r['after_build_mib'] / 1024:.2f}",
        ]
        for case, r in results.items()
    ]
    print(markdown_table(["d2-detr R50 panoptic", "peak RSS GiB", "after model build GiB"], rows))
    train_gib = results["train"]["peak_rss_mib"] / 1024
    print(f"\ntraining peak {train_gib:.2f} GiB (target <= {TARGET_TRAIN_GIB} GiB)")
    print(f"wrote {write_result('bench_memory', results)}")


if __name__ == "__main__":
    main()
