"""Peak memory (RSS) of training (batch 2 at 800x1066), of inference (one 800x1066 image) with
the R50 model, and of the demo (``demo/demo.py``: read, predict, overlay, report) on one
6000x4000 photo with the tiny config, tiled (the default: tiles of the test size; and
``--tile 1024``) and not (``--tile 0``).

Each case runs in a fresh subprocess so that one case's peak does not hide another's.

    python -m benchmarks.bench_memory                      # every case
    python -m benchmarks.bench_memory --cases demo_tiled demo_untiled

The demo cases use an untrained tiny model biased so that every one of its 20 queries is kept
with a mask covering the photo (``--confidence-threshold 0``): the most masks post-processing
can meet, i.e. the worst case for memory, not a realistic prediction.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import torch

from benchmarks.common import OUTPUT_DIR, markdown_table, peak_rss_mib, write_result
from benchmarks.models import build_ours, random_targets

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

TARGET_TRAIN_GIB = 6.0
TARGET_DEMO_GIB = 2.0
# demo case -> its tiling arguments (default: tiles of the model's test size)
DEMO_CASES = {
    "demo_tiled": [],
    "demo_tiled_1024": ["--tile", "1024"],
    "demo_untiled": ["--tile", "0"],
}
TINY = "configs/ConcreteDefects/detr_tiny_cpu.yaml"


def demo_inputs(folder, height=4000, width=6000):
    """A 6000x4000 JPEG (concrete-like noise with dark 2 px cracks) and worst-case weights."""
    import cv2
    import numpy as np
    from detectron2.checkpoint import DetectionCheckpointer
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import d2_detr

    os.makedirs(folder, exist_ok=True)
    photo = os.path.join(folder, "photo_6000x4000.jpg")
    if not os.path.exists(photo):
        rng = np.random.default_rng(0)
        image = rng.integers(110, 150, (height, width, 3), dtype=np.uint8)
        for k in range(12):
            y = int(rng.integers(100, height - 100))
            cv2.line(image, (0, y), (width - 1, y + 200 * (k % 3 - 1)), (40, 40, 40), 2)
        cv2.imwrite(photo, image, [cv2.IMWRITE_JPEG_QUALITY, 90])
    weights = os.path.join(folder, "tiny_all_queries.pth")
    if not os.path.exists(weights):
        cfg = get_cfg()
        d2_detr.add_detr_config(cfg)
        cfg.merge_from_file(TINY)
        torch.manual_seed(0)
        model = build_model(cfg)
        with torch.no_grad():  # every query a confident defect, every mask covering the photo
            model.class_embed.weight.mul_(0.01)
            model.class_embed.bias.copy_(torch.tensor([3.0, 3.0, 3.0, -2.0, -9.0]))
            for name, p in model.named_parameters():
                if name.endswith("mask_features.bias") or name.endswith("mask_embed.layers.2.bias"):
                    p.fill_(1.0)
        DetectionCheckpointer(model, save_dir=folder).save("tiny_all_queries")
    return photo, weights


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


def run_demo_case(case, folder):
    """The demo's steps on the 6000x4000 photo, in this (fresh) process: read, predict (tiled or
    not), draw and write the overlay (one json line with the peak so far), then the report row
    with H4a's measurements of every defect (a second line)."""
    sys.path.insert(0, os.path.join(REPO, "demo"))
    from predictor import PanopticDemo

    import demo as demo_cli

    photo, weights = demo_inputs(folder)
    args = demo_cli.get_parser().parse_args(
        ["--config-file", os.path.join(REPO, TINY), "--input", photo, "--output", folder,
         *DEMO_CASES[case], "--confidence-threshold", "0", "--no-progress",
         "MODEL.WEIGHTS", weights]
    )  # fmt: skip
    cfg = demo_cli.setup_cfg(args)
    demo = PanopticDemo(cfg, weights, tile=args.tile, tile_overlap=args.tile_overlap)
    demo.report.add = lambda *a, **k: None  # predict + overlay first
    baseline = peak_rss_mib()
    start = time.time()
    (seg, info), _ = demo.run_on_image(photo, f"{case}.jpg", os.path.join(folder, f"out_{case}"))
    result = {
        "case": case,
        "photo": f"{seg.shape[1]}x{seg.shape[0]}",
        "segments": len(info),
        "before_demo_mib": baseline,
        "peak_predict_overlay_mib": peak_rss_mib(),
        "predict_overlay_s": round(time.time() - start, 1),
    }
    print(json.dumps(result), flush=True)
    del demo.report.add
    start = time.time()
    rows = demo.report.add(f"{case}.jpg", seg, info)
    result.update(
        peak_rss_mib=peak_rss_mib(), report_s=round(time.time() - start, 1), defects=len(rows)
    )
    return result


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    all_cases = ["train", "inference", *DEMO_CASES]
    parser.add_argument("--case", choices=all_cases, help="run one case (internal)")
    parser.add_argument("--cases", nargs="+", choices=all_cases, default=all_cases)
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument("--timeout", type=float, default=3600, help="seconds per case")
    args = parser.parse_args()
    folder = os.path.join(OUTPUT_DIR, "bench_memory_demo")
    if args.case:
        if args.case in DEMO_CASES:
            result = run_demo_case(args.case, folder)
        else:
            result = run_case(args.case, args.height, args.width)
        print(json.dumps(result))
        return
    if any(c in DEMO_CASES for c in args.cases):
        demo_inputs(folder)  # once, outside the measured processes
    results = {}
    for case in args.cases:
        cmd = [sys.executable, "-m", "benchmarks.bench_memory", "--case", case]
        cmd += ["--height", str(args.height), "--width", str(args.width)]
        try:
            out = subprocess.run(
                cmd, capture_output=True, text=True, cwd=REPO, timeout=args.timeout
            ).stdout
        except subprocess.TimeoutExpired as e:  # keep what the case printed so far
            out = (e.stdout or b"").decode()
            print(f"case {case}: stopped after {args.timeout} s", file=sys.stderr)
        lines = [x for x in out.strip().splitlines() if x.startswith("{")]
        if not lines:
            raise SystemExit(f"case {case} failed:\n{out[-3000:]}")
        results[case] = json.loads(lines[-1])
    rows = []
    gib = lambda mib: "-" if mib is None else f"{mib / 1024:.2f}"  # noqa: E731
    for case, r in results.items():
        if case in DEMO_CASES:
            tiling = " ".join(DEMO_CASES[case]) or "default tiles"
            what = f"demo tiny, {r['photo']} photo, {tiling}"
            base, first = r["before_demo_mib"], r["peak_predict_overlay_mib"]
        else:
            what = f"R50 {case} ({'batch 2' if case == 'train' else 'batch 1'}, "
            what += f"{args.height}x{args.width})"
            base, first = r["after_build_mib"], None
        rows.append([what, gib(first), gib(r.get("peak_rss_mib")), gib(base)])
    header = ["case", "peak GiB: predict + overlay", "peak GiB: all", "before GiB"]
    print(markdown_table(header, rows))
    if "train" in results:
        train_gib = results["train"]["peak_rss_mib"] / 1024
        print(f"\ntraining peak {train_gib:.2f} GiB (target <= {TARGET_TRAIN_GIB} GiB)")
    for case in DEMO_CASES:
        if case in results:
            r = results[case]
            peak = r.get("peak_rss_mib", r["peak_predict_overlay_mib"]) / 1024
            done = "" if "peak_rss_mib" in r else " (report step did not finish)"
            print(f"{case} peak {peak:.2f} GiB{done} (target <= {TARGET_DEMO_GIB} GiB)")
    print(f"wrote {write_result('bench_memory', results)}")


if __name__ == "__main__":
    main()
