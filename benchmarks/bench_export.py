"""Inference speed of the exported model: PyTorch vs onnxruntime vs TorchScript vs HF
transformers' DetrForSegmentation (the peer), one process, interleaved runs, ratios.

R50 (the concrete-defect R50 config: DETR's mask head, 4 classes, 20 queries; the peer with the
same classes and queries) at 800x1066, and the tiny CPU config at its test size (320 px short
side), batch 1, random weights. Rows:

- "PyTorch": the model's own inference (``model([{"image": ...}])``: masks of the kept queries
  only, post-processing included);
- "PyTorch raw": ``forward_raw`` with masks of ALL queries (what the exported graph computes);
- "onnxruntime" / "TorchScript": the exported file's raw outputs; "+ post" adds the shared
  Python post-processing (``ExportedDETR``), i.e. the same output as "PyTorch".

FLOP/s: model FLOPs (fvcore, the raw path with all masks, multiply-adds x 2) / median time,
divided by the fp32 GEMM FLOP/s measured in the same run. The top operators of onnxruntime's
and PyTorch's R50 run are printed (onnxruntime profiling, torch.profiler).

    python -m benchmarks.bench_export [--runs 3] [--threads N] [--quantize]
"""

import argparse
import collections
import json
import os
import tempfile

import torch

from benchmarks.bench_inference import count_flops
from benchmarks.common import (
    build_peer,
    interleaved_timing,
    markdown_table,
    measure_gemm_flops,
    write_result,
)
from benchmarks.models import R50_CONFIG, TINY_CONFIG, build_ours
from d2_detr.export import ExportedDETR, export_onnx, export_torchscript
from d2_detr.export.check import pytorch_raw, relative_error


def ort_top_ops(path, image, threads, top=8):
    """(op type, share of node time) of one onnxruntime run, from its profiler."""
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.enable_profiling = True
    options.intra_op_num_threads = threads
    with tempfile.TemporaryDirectory() as tmp:
        options.profile_file_prefix = os.path.join(tmp, "ort")
        session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        feed = {"image": image[None].numpy()}
        session.run(None, feed)
        session.run(None, feed)
        trace = session.end_profiling()
        with open(trace) as f:
            events = json.load(f)
    per_op = collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
            per_op[e["args"]["op_name"]] += e["dur"]
    total = sum(per_op.values()) or 1
    return [(op, us / total) for op, us in per_op.most_common(top)]


def torch_top_ops(fn, top=8):
    """(op name, share of self CPU time) of one PyTorch call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:top]]


def exported_pair(model, cfg, image, tmp, name, threads):
    """Export ``model`` both ways into ``tmp``; the ExportedDETR runtimes and file paths."""
    onnx_path = os.path.join(tmp, f"{name}.onnx")
    ts_path = os.path.join(tmp, f"{name}.ts")
    export_onnx(model, onnx_path, image[None], cfg=cfg)
    export_torchscript(model, ts_path, image[None], cfg=cfg)
    return (
        ExportedDETR(cfg, onnx_path, threads=threads),
        ExportedDETR(cfg, ts_path, threads=threads),
        onnx_path,
    )


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--threads", type=int, default=0, help="threads (0: torch's default)")
    parser.add_argument("--height", type=int, default=800)
    parser.add_argument("--width", type=int, default=1066)
    parser.add_argument(
        "--quantize", action="store_true", help="also int8 dynamic quantization (onnxruntime)"
    )
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    threads = torch.get_num_threads()
    torch.manual_seed(0)
    h, w = args.height, args.width
    g = torch.Generator().manual_seed(0)
    image = torch.randint(0, 256, (3, h, w), generator=g).float()
    r50, r50_cfg = build_ours(R50_CONFIG)
    tiny, tiny_cfg = build_ours(TINY_CONFIG)
    peer = build_peer(num_labels=4, num_queries=20)
    for m in (r50, tiny, peer):
        m.eval()
    th = tiny_cfg.INPUT.MIN_SIZE_TEST
    tw = min(round(th * w / h), tiny_cfg.INPUT.MAX_SIZE_TEST)
    tiny_image = torch.randint(0, 256, (3, th, tw), generator=g).float()
    pixel_values = image.div(255).unsqueeze(0)
    pixel_mask = torch.ones((1, h, w), dtype=torch.long)

    tmp = tempfile.mkdtemp(prefix="bench_export_")
    r50_ort, r50_ts, r50_onnx = exported_pair(r50, r50_cfg, image, tmp, "r50", threads)
    tiny_ort, tiny_ts, _ = exported_pair(tiny, tiny_cfg, tiny_image, tmp, "tiny", threads)
    errors = {
        "r50_onnx": {
            k: relative_error(r50_ort.raw(image)[k], v) for k, v in pytorch_raw(r50, image).items()
        },
        "tiny_onnx": {
            k: relative_error(tiny_ort.raw(tiny_image)[k], v)
            for k, v in pytorch_raw(tiny, tiny_image).items()
        },
    }

    def infer(fn):
        def run():
            with torch.inference_mode():
                fn()

        return run

    candidates = {
        "peer": infer(lambda: peer(pixel_values=pixel_values, pixel_mask=pixel_mask)),
        "r50_torch": infer(lambda: r50([{"image": image}])),
        "r50_torch_raw": infer(lambda: pytorch_raw(r50, image)),
        "r50_ort": infer(lambda: r50_ort.raw(image)),
        "r50_ort_post": infer(lambda: r50_ort([{"image": image}])),
        "r50_ts": infer(lambda: r50_ts.raw(image)),
        "tiny_torch": infer(lambda: tiny([{"image": tiny_image}])),
        "tiny_torch_raw": infer(lambda: pytorch_raw(tiny, tiny_image)),
        "tiny_ort": infer(lambda: tiny_ort.raw(tiny_image)),
        "tiny_ort_post": infer(lambda: tiny_ort([{"image": tiny_image}])),
        "tiny_ts": infer(lambda: tiny_ts.raw(tiny_image)),
    }
    quantized = None
    if args.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = os.path.join(tmp, "r50_int8.onnx")
        quantize_dynamic(r50_onnx, q_path, weight_type=QuantType.QInt8)
        quantized = ExportedDETR(r50_cfg, q_path, threads=threads)
        errors["r50_onnx_int8"] = {
            k: relative_error(quantized.raw(image)[k], v)
            for k, v in pytorch_raw(r50, image).items()
        }
        candidates["r50_ort_int8"] = infer(lambda: quantized.raw(image))

    gemm_before = measure_gemm_flops()
    timing = interleaved_timing(candidates, runs=args.runs)
    gemm = (gemm_before + measure_gemm_flops()) / 2
    with torch.inference_mode():
        flops = count_flops(r50, image)
        flops_tiny = count_flops(tiny, tiny_image)

    def row(name, label, flop=None, base="peer"):
        t = timing[name]
        achieved = flop / t["median_s"] if flop else None
        return [
            label,
            f"{t['median_s']:.3f}",
            f"{t['min_s']:.3f}-{t['max_s']:.3f}",
            f"{t['median_s'] / timing[base]['median_s']:.2f}",
            f"{achieved / 1e9:.0f}" if achieved else "",
            f"{achieved / gemm:.2f}" if achieved else "",
        ]

    size, tsize = f"{h}x{w}", f"{th}x{tw}"
    rows = [
        row("peer", f"HF DetrForSegmentation R50 {size}"),
        row("r50_torch", f"PyTorch R50 {size} (model, post-processing included)", flops),
        row("r50_torch_raw", f"PyTorch R50 {size} raw (all masks)", flops),
        row("r50_ort", f"onnxruntime R50 {size} raw", flops),
        row("r50_ort_post", f"onnxruntime R50 {size} + post-processing", flops),
        row("r50_ts", f"TorchScript R50 {size} raw", flops),
    ]
    if quantized is not None:
        rows.append(row("r50_ort_int8", f"onnxruntime int8 (dynamic) R50 {size} raw", flops))
    rows += [
        row("tiny_torch", f"PyTorch tiny {tsize} (model)", flops_tiny, "tiny_torch"),
        row("tiny_torch_raw", f"PyTorch tiny {tsize} raw", flops_tiny, "tiny_torch"),
        row("tiny_ort", f"onnxruntime tiny {tsize} raw", flops_tiny, "tiny_torch"),
        row("tiny_ort_post", f"onnxruntime tiny {tsize} + post-processing", flops_tiny,
            "tiny_torch"),
        row("tiny_ts", f"TorchScript tiny {tsize} raw", flops_tiny, "tiny_torch"),
    ]  # fmt: skip
    header = ["model", "median s", "range s", "x peer (tiny: x PyTorch)", "GFLOP/s", "x GEMM"]
    print(markdown_table(header, rows))
    print(
        f"\nfp32 GEMM 2048^3: {gemm / 1e9:.0f} GFLOP/s; R50 raw forward {flops / 1e9:.1f} GFLOP, "
        f"tiny {flops_tiny / 1e9:.2f} GFLOP; {threads} threads"
    )
    for name, errs in errors.items():
        print(f"relative error {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    ort_ops = ort_top_ops(r50_onnx, image, threads)
    torch_ops = torch_top_ops(infer(lambda: pytorch_raw(r50, image)))
    print("onnxruntime R50 top ops: " + ", ".join(f"{o} {s:.0%}" for o, s in ort_ops))
    print("PyTorch R50 top ops: " + ", ".join(f"{o} {s:.0%}" for o, s in torch_ops))
    path = write_result(
        "bench_export",
        {
            "timing": timing,
            "gemm_flops": gemm,
            "flops_r50": flops,
            "flops_tiny": flops_tiny,
            "threads": threads,
            "relative_errors": errors,
            "onnxruntime_top_ops": ort_ops,
            "torch_top_ops": torch_ops,
        },
    )
    print(f"wrote {path}")
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)


if __name__ == "__main__":
    main()
