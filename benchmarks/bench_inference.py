"""Inference speed: our DETR-R50 panoptic vs HF transformers' DetrForSegmentation (the peer).

Same classes (4) and queries (20), random weights, one 800x1066 image, batch 1, no grad, in ONE
process with interleaved runs (warm-up excluded). Also the tiny CPU config, and a roofline:
model FLOPs (fvcore's FlopCountAnalysis on the tensor forward, multiply-adds x 2) / median time,
divided by the fp32 GEMM FLOP/s measured in the same run.

    python benchmarks/bench_inference.py [--runs 5] [--threads N]
"""

import torch

from benchmarks.common import (
    build_peer,
    image_timing_parser,
    interleaved_timing,
    markdown_table,
    measure_gemm_flops,
    set_threads,
    write_result,
)
from benchmarks.models import TINY_CONFIG, build_ours


class _CoreForward(torch.nn.Module):
    """Tensor-in/tensor-out view of our model (backbone, transformer, heads, all masks)."""

    def __init__(self, model):
        super().__init__()
        self.model = model

    def forward(self, image):
        images, mask = self.model.preprocess_image([{"image": image}])
        out = self.model.forward_raw(images.tensor, mask)
        return out["pred_logits"], out["pred_boxes"], out["pred_masks"]


def count_flops(model, image):
    """Forward FLOPs (2 x multiply-adds) of one inference, by fvcore's jit-based counter."""
    from fvcore.nn import FlopCountAnalysis

    counter = FlopCountAnalysis(_CoreForward(model), (image,))
    counter.unsupported_ops_warnings(False).uncalled_modules_warnings(False)
    return 2 * counter.total()


def main():
    args = image_timing_parser(__doc__.splitlines()[0], 5).parse_args()
    set_threads(args)
    torch.manual_seed(0)

    h, w = args.height, args.width
    image = torch.randint(0, 256, (3, h, w), dtype=torch.uint8)
    ours, _ = build_ours()
    # "all masks": the mask head runs for every query, the same work as the peer does.
    ours_all, _ = build_ours(opts=["MODEL.DETR.TEST.SEMANTIC_ON", "True"])
    ours_all.load_state_dict(ours.state_dict())
    tiny, tiny_cfg = build_ours(TINY_CONFIG)
    peer = build_peer(num_labels=4, num_queries=20)
    for m in (ours, ours_all, tiny, peer):
        m.eval()
    pixel_values = image.float().div(255).unsqueeze(0)
    pixel_mask = torch.ones((1, h, w), dtype=torch.long)
    th, tw = tiny_cfg.INPUT.MIN_SIZE_TEST, int(tiny_cfg.INPUT.MIN_SIZE_TEST * w / h)
    tiny_image = torch.randint(0, 256, (3, th, tw), dtype=torch.uint8)

    def run_ours():
        with torch.inference_mode():
            ours([{"image": image}])

    def run_ours_all():
        with torch.inference_mode():
            ours_all([{"image": image}])

    def run_peer():
        with torch.inference_mode():
            peer(pixel_values=pixel_values, pixel_mask=pixel_mask)

    def run_tiny():
        with torch.inference_mode():
            tiny([{"image": tiny_image}])

    gemm_before = measure_gemm_flops()
    timing = interleaved_timing(
        {"peer": run_peer, "ours_all_masks": run_ours_all, "ours": run_ours, "tiny": run_tiny},
        runs=args.runs,
    )
    gemm = (gemm_before + measure_gemm_flops()) / 2
    with torch.inference_mode():
        flops = count_flops(ours_all, image)
        flops_tiny = count_flops(tiny, tiny_image)

    def row(name, label, flop=None):
        t = timing[name]
        ratio = t["median_s"] / timing["peer"]["median_s"]
        achieved = flop / t["median_s"] if flop else None
        return [
            label,
            f"{t['median_s']:.3f}",
            f"{t['min_s']:.3f}-{t['max_s']:.3f}",
            f"{ratio:.2f}",
            f"{achieved / 1e9:.0f}" if achieved else "",
            f"{achieved / gemm:.2f}" if achieved else "",
        ]

    rows = [
        row("peer", f"HF DetrForSegmentation R50 {h}x{w}"),
        row("ours_all_masks", f"d2-detr R50 {h}x{w}, masks of all queries", flops),
        row("ours", f"d2-detr R50 {h}x{w}, default outputs", flops),
        row("tiny", f"d2-detr tiny {th}x{tw}", flops_tiny),
    ]
    header = ["model", "median s", "range s", "x peer", "GFLOP/s", "x GEMM"]
    print(markdown_table(header, rows))
    print(f"\nfp32 GEMM 2048^3: {gemm / 1e9:.0f} GFLOP/s; R50 forward {flops / 1e9:.1f} GFLOP")
    path = write_result(
        "bench_inference",
        {"timing": timing, "gemm_flops": gemm, "flops_r50": flops, "flops_tiny": flops_tiny},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
