"""Inference speed of the exported model: PyTorch vs onnxruntime vs TorchScript vs HF
transformers' DetrForSegmentation (the peer), one process, interleaved runs, ratios.

R50 (the concrete-defect R50 config: DETR's mask head, 4 classes, 20 queries; the peer with the
same classes and queries) at 800x1066, and the tiny CPU config at its test size (320 px short
side), batch 1, random weights. Rows:

- "PyTorch": the model's own inference (``model([{"image": ...}])``: masks of the kept queries
  only, post-processing included);
- "PyTorch raw": ``forward_raw`` with masks of ALL queries (what the exported graph computes);
- "onnxruntime" / "TorchScript": the exported file's raw outputs (export as
  ``tools/export_model.py`` does it: norms folded, mask head's shared conv split; onnxruntime
  with ORT_ENABLE_ALL, sequential, N threads; TorchScript frozen + optimize_for_inference);
  "+ post" adds the shared Python post-processing (``ExportedDETR``), i.e. the same output as
  "PyTorch"; "without rewrites" is the export before them (the traced model as it is) and
  "as loaded" TorchScript without freezing, for comparison in the same run.

GFLOP/s: FLOPs the path executes (fvcore on the traced module, multiply-adds x 2; the rewritten
export executes fewer than the model) / median time, and that divided by the fp32 GEMM FLOP/s
measured in the same run. The load average is recorded (the machine may be shared). The R50
onnxruntime run is profiled: top op types, time by model part (backbone stage, transformer,
mask head layer) and the fused ops of the optimised graph; torch.profiler for PyTorch.

    python -m benchmarks.bench_export [--runs 3] [--threads N] [--quantize]
"""

import collections
import json
import os
import tempfile

import torch

from benchmarks.bench_inference import count_flops
from benchmarks.common import (
    build_peer,
    image_timing_parser,
    interleaved_timing,
    markdown_table,
    measure_gemm_flops,
    set_threads,
    write_result,
)
from benchmarks.models import R50_CONFIG, TINY_CONFIG, build_ours
from d2_detr.export import ExportedDETR, export_onnx, export_torchscript, prepare_for_export
from d2_detr.export.check import pytorch_raw, relative_error


def ort_profile(path, image, threads, top=8):
    """
    One onnxruntime run of ``path`` (the session options of the benchmarked path) with its
    profiler: (op type, share of node time) of the top op types, (component, share) by the
    exported module path of each node (backbone, transformer, mask head, ...), and the op types
    of the optimised graph (which fusions applied: FusedConv = Conv + activation (+ Add),
    NCHWc layouts as ReorderInput / ReorderOutput).
    """
    import onnx

    from d2_detr.export.runtime import OnnxRuntimeBackend

    with tempfile.TemporaryDirectory() as tmp:
        optimised = os.path.join(tmp, "optimised.onnx")
        backend = OnnxRuntimeBackend(
            path, threads, optimized_model_path=optimised, profile_prefix=os.path.join(tmp, "ort")
        )
        backend(image[None])
        backend(image[None])
        with open(backend.session.end_profiling()) as f:
            events = json.load(f)
        graph_ops = collections.Counter(n.op_type for n in onnx.load(optimised).graph.node)
    per_op, per_part = collections.Counter(), collections.Counter()
    runs = [e for e in events if e.get("cat") == "Session" and e.get("name") == "model_run"]
    last_start = runs[-1]["ts"] if runs else 0
    for e in events:
        if e.get("cat") == "Node" and e["name"].endswith("_kernel_time") and e["ts"] >= last_start:
            per_op[e["args"]["op_name"]] += e["dur"]
            per_part[_component(e["name"])] += e["dur"]
    total = sum(per_op.values()) or 1
    return {
        "op_types": [(op, us / total) for op, us in per_op.most_common(top)],
        "components": [(part, us / total) for part, us in per_part.most_common(top)],
        "optimised_graph_ops": dict(graph_ops.most_common()),
    }


def _component(node_name):
    """A profiled node's model part from its exported scope name:
    '/backbone/res4/res4.0/conv1/Conv_kernel_time' -> 'backbone/res4',
    '/mask_head/head/lay5/Conv_output_0_nchwc_kernel_time' -> 'mask_head/lay5'."""
    parts = [p for p in node_name.split("/") if p and p != "model"][:-1]
    if not parts:
        return "other"
    if parts[0] == "mask_head":
        return f"mask_head/{parts[-1]}"
    if parts[0] in ("backbone", "transformer") and len(parts) > 1:
        return f"{parts[0]}/{parts[1]}"
    return parts[0]


def torch_top_ops(fn, top=8):
    """(op name, share of self CPU time) of one PyTorch call, from torch.profiler."""
    from torch.profiler import ProfilerActivity, profile

    with profile(activities=[ProfilerActivity.CPU]) as prof:
        fn()
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events) or 1
    events.sort(key=lambda e: -e.self_cpu_time_total)
    return [(e.key, e.self_cpu_time_total / total) for e in events[:top]]


def export_both(model, cfg, image, tmp, name, **rewrites):
    """Export ``model`` to ONNX and TorchScript in ``tmp``; returns the two file paths."""
    onnx_path = os.path.join(tmp, f"{name}.onnx")
    ts_path = os.path.join(tmp, f"{name}.ts")
    export_onnx(model, onnx_path, image[None], cfg=cfg, **rewrites)
    export_torchscript(model, ts_path, image[None], cfg=cfg, **rewrites)
    return onnx_path, ts_path


def load_avg():
    return [round(x, 2) for x in os.getloadavg()]


def main():
    parser = image_timing_parser(__doc__.splitlines()[0], 3, "threads (0: torch's default)")
    parser.add_argument(
        "--quantize", action="store_true", help="also int8 dynamic quantization (onnxruntime)"
    )
    args = parser.parse_args()
    set_threads(args)
    threads = torch.get_num_threads()
    load_start = load_avg()
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
    r50_onnx, r50_ts_path = export_both(r50, r50_cfg, image, tmp, "r50")
    plain = {"fold_bn": False, "split_mask_head": False}
    r50_onnx_plain, _ = export_both(r50, r50_cfg, image, tmp, "r50_plain", **plain)
    tiny_onnx, tiny_ts_path = export_both(tiny, tiny_cfg, tiny_image, tmp, "tiny")
    r50_ort = ExportedDETR(r50_cfg, r50_onnx, threads=threads)
    r50_ort_plain = ExportedDETR(r50_cfg, r50_onnx_plain, threads=threads)
    r50_ts = ExportedDETR(r50_cfg, r50_ts_path)
    r50_ts_plain = ExportedDETR(r50_cfg, r50_ts_path, optimize=False)
    tiny_ort = ExportedDETR(tiny_cfg, tiny_onnx, threads=threads)
    tiny_ts = ExportedDETR(tiny_cfg, tiny_ts_path)
    tiny_ts_plain = ExportedDETR(tiny_cfg, tiny_ts_path, optimize=False)
    ref_r50, ref_tiny = pytorch_raw(r50, image), pytorch_raw(tiny, tiny_image)
    errors = {}
    for name, runtime, ref, x in (
        ("r50_onnx", r50_ort, ref_r50, image),
        ("r50_onnx_without_rewrites", r50_ort_plain, ref_r50, image),
        ("r50_torchscript", r50_ts, ref_r50, image),
        ("tiny_onnx", tiny_ort, ref_tiny, tiny_image),
        ("tiny_torchscript", tiny_ts, ref_tiny, tiny_image),
    ):
        out = runtime.raw(x)
        errors[name] = {k: relative_error(out[k], v) for k, v in ref.items()}

    def infer(fn):
        def run():
            with torch.inference_mode():
                fn()

        return run

    candidates = {
        "peer": infer(lambda: peer(pixel_values=pixel_values, pixel_mask=pixel_mask)),
        "r50_torch": infer(lambda: r50([{"image": image}])),
        "r50_torch_raw": infer(lambda: pytorch_raw(r50, image)),
        "r50_ort_plain": infer(lambda: r50_ort_plain.raw(image)),
        "r50_ort": infer(lambda: r50_ort.raw(image)),
        "r50_ort_post": infer(lambda: r50_ort([{"image": image}])),
        "r50_ts_plain": infer(lambda: r50_ts_plain.raw(image)),
        "r50_ts": infer(lambda: r50_ts.raw(image)),
        "tiny_torch": infer(lambda: tiny([{"image": tiny_image}])),
        "tiny_torch_raw": infer(lambda: pytorch_raw(tiny, tiny_image)),
        "tiny_ort": infer(lambda: tiny_ort.raw(tiny_image)),
        "tiny_ort_post": infer(lambda: tiny_ort([{"image": tiny_image}])),
        "tiny_ts_plain": infer(lambda: tiny_ts_plain.raw(tiny_image)),
        "tiny_ts": infer(lambda: tiny_ts.raw(tiny_image)),
    }
    quantized = None
    if args.quantize:
        from onnxruntime.quantization import QuantType, quantize_dynamic

        q_path = os.path.join(tmp, "r50_int8.onnx")
        quantize_dynamic(r50_onnx, q_path, weight_type=QuantType.QInt8)
        quantized = ExportedDETR(r50_cfg, q_path, threads=threads)
        errors["r50_onnx_int8"] = {
            k: relative_error(quantized.raw(image)[k], v) for k, v in ref_r50.items()
        }
        candidates["r50_ort_int8"] = infer(lambda: quantized.raw(image))

    gemm_before = measure_gemm_flops()
    timing = interleaved_timing(candidates, runs=args.runs)
    gemm = (gemm_before + measure_gemm_flops()) / 2
    load_end = load_avg()
    with torch.inference_mode():
        flops = count_flops(r50, image)
        flops_tiny = count_flops(tiny, tiny_image)
        flops_rewritten = count_flops(prepare_for_export(r50)[0], image)
        flops_tiny_rewritten = count_flops(prepare_for_export(tiny)[0], tiny_image)

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
    fr, ftr = flops_rewritten, flops_tiny_rewritten
    rows = [
        row("peer", f"HF DetrForSegmentation R50 {size}"),
        row("r50_torch", f"PyTorch R50 {size} (model, post-processing included)", flops),
        row("r50_torch_raw", f"PyTorch R50 {size} raw (all masks)", flops),
        row("r50_ort_plain", f"onnxruntime R50 {size} raw, export without rewrites", flops),
        row("r50_ort", f"onnxruntime R50 {size} raw", fr),
        row("r50_ort_post", f"onnxruntime R50 {size} + post-processing", fr),
        row("r50_ts_plain", f"TorchScript R50 {size} raw, as loaded", fr),
        row("r50_ts", f"TorchScript R50 {size} raw, frozen + optimize_for_inference", fr),
    ]
    if quantized is not None:
        rows.append(row("r50_ort_int8", f"onnxruntime int8 (dynamic) R50 {size} raw", fr))
    rows += [
        row("tiny_torch", f"PyTorch tiny {tsize} (model)", flops_tiny, "tiny_torch"),
        row("tiny_torch_raw", f"PyTorch tiny {tsize} raw", flops_tiny, "tiny_torch"),
        row("tiny_ort", f"onnxruntime tiny {tsize} raw", ftr, "tiny_torch"),
        row("tiny_ort_post", f"onnxruntime tiny {tsize} + post-processing", ftr, "tiny_torch"),
        row("tiny_ts_plain", f"TorchScript tiny {tsize} raw, as loaded", ftr, "tiny_torch"),
        row("tiny_ts", f"TorchScript tiny {tsize} raw, frozen + optimized", ftr, "tiny_torch"),
    ]
    header = ["model", "median s", "range s", "x peer (tiny: x PyTorch)", "GFLOP/s", "x GEMM"]
    print(markdown_table(header, rows))
    print(
        f"\nfp32 GEMM 2048^3: {gemm / 1e9:.0f} GFLOP/s; R50 raw forward {flops / 1e9:.1f} GFLOP "
        f"({fr / 1e9:.1f} exported), tiny {flops_tiny / 1e9:.2f} GFLOP ({ftr / 1e9:.2f}); "
        f"{threads} threads; load average (1, 5, 15 min) {load_start} at the start, "
        f"{load_end} after the timing"
    )
    for name, errs in errors.items():
        print(f"relative error {name}: " + ", ".join(f"{k} {v:.1e}" for k, v in errs.items()))
    profile = ort_profile(r50_onnx, image, threads)
    torch_ops = torch_top_ops(infer(lambda: pytorch_raw(r50, image)))
    fused = {k: v for k, v in profile["optimised_graph_ops"].items() if k in FUSED_OPS}
    print("onnxruntime R50 top op types: " + _shares(profile["op_types"]))
    print("onnxruntime R50 time by part: " + _shares(profile["components"]))
    print(f"onnxruntime R50 optimised graph: {fused}")
    print("PyTorch R50 top ops: " + _shares(torch_ops))
    path = write_result(
        "bench_export",
        {
            "timing": timing,
            "gemm_flops": gemm,
            "flops_r50": flops,
            "flops_r50_exported": fr,
            "flops_tiny": flops_tiny,
            "flops_tiny_exported": ftr,
            "threads": threads,
            "load_average_start": load_start,
            "load_average_end": load_end,
            "relative_errors": errors,
            "onnxruntime_profile": profile,
            "torch_top_ops": torch_ops,
            "table": markdown_table(header, rows),
        },
    )
    print(f"wrote {path}")
    for f in os.listdir(tmp):
        os.remove(os.path.join(tmp, f))
    os.rmdir(tmp)


FUSED_OPS = ("FusedConv", "Conv", "ReorderInput", "ReorderOutput", "FusedMatMul", "FusedGemm")


def _shares(pairs):
    return ", ".join(f"{name} {share:.0%}" for name, share in pairs)


if __name__ == "__main__":
    main()
