"""Training step speed: forward + backward + AdamW step, ours vs the HF peer; the matcher share.

Batch 2 at 512x512 (default), R50 panoptic with masks, 4 classes, 20 queries, random weights and
targets, interleaved runs in ONE process (warm-up excluded). Ours steps with the optimizer of
tools/train_net.py (fused AdamW, full-model clipping); the peer with HF Trainer's defaults
(fused AdamW, gradient-norm clipping).

    python -m benchmarks.bench_train_step [--runs 5] [--size 512]
"""

import argparse
import time

import torch
from torchvision.ops import box_convert

from benchmarks.common import build_peer, interleaved_timing, markdown_table, write_result
from benchmarks.models import build_ours, random_targets
from d2_detr.engine.optimizer import build_detr_optimizer


class MatcherClock:
    """Accumulates the wall time spent inside a matcher's forward."""

    def __init__(self, matcher):
        self.total = 0.0
        self._forward = matcher.forward

        def timed(*args, **kwargs):
            start = time.perf_counter()
            out = self._forward(*args, **kwargs)
            self.total += time.perf_counter() - start
            return out

        matcher.forward = timed


def peer_labels(instances):
    h, w = instances.image_size
    scale = torch.tensor([w, h, w, h], dtype=torch.float32)
    boxes = box_convert(instances.gt_boxes.tensor / scale, "xyxy", "cxcywh")
    return {
        "class_labels": instances.gt_classes,
        "boxes": boxes,
        "masks": instances.gt_masks.tensor.float(),
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--size", type=int, default=512)
    parser.add_argument("--objects", type=int, default=4)
    args = parser.parse_args()
    gen = torch.Generator().manual_seed(0)
    s = args.size
    images = [torch.randint(0, 256, (3, s, s), dtype=torch.uint8, generator=gen) for _ in range(2)]
    targets = [random_targets(s, s, args.objects, 4, gen) for _ in range(2)]

    ours, cfg = build_ours()
    ours.train()
    ours_opt = build_detr_optimizer(cfg, ours)  # what tools/train_net.py uses
    clock = MatcherClock(ours.criterion.matcher)
    batch = [{"image": im, "instances": t} for im, t in zip(images, targets)]

    peer = build_peer(num_labels=4, num_queries=20)
    peer.train()
    peer_params = [p for p in peer.parameters() if p.requires_grad]
    # HF Trainer's defaults on torch >= 2.8: fused AdamW, gradient-norm clipping
    peer_opt = torch.optim.AdamW(peer_params, lr=1e-4, weight_decay=1e-4, fused=True)
    pixel_values = torch.stack(images).float().div(255)
    pixel_mask = torch.ones((2, s, s), dtype=torch.long)
    labels = [peer_labels(t) for t in targets]

    def step_ours():
        losses = ours(batch)
        loss = sum(losses.values())
        ours_opt.zero_grad()
        loss.backward()
        ours_opt.step()

    def step_peer():
        out = peer(pixel_values=pixel_values, pixel_mask=pixel_mask, labels=labels)
        peer_opt.zero_grad()
        out.loss.backward()
        torch.nn.utils.clip_grad_norm_(peer_params, 0.1)
        peer_opt.step()

    step_peer(), step_ours()  # warm-up, not timed
    clock.total = 0.0
    timing = interleaved_timing({"peer": step_peer, "ours": step_ours}, runs=args.runs, warmup=0)
    matcher_share = clock.total / sum(timing["ours"]["runs_s"])
    ratio = timing["ours"]["median_s"] / timing["peer"]["median_s"]
    rows = [
        [
            name,
            f"{t['median_s']:.2f}",
            f"{t['min_s']:.2f}-{t['max_s']:.2f}",
            f"{t['median_s'] / timing['peer']['median_s']:.2f}",
        ]
        for name, t in (("HF DetrForSegmentation", timing["peer"]), ("d2-detr", timing["ours"]))
    ]
    print(
        markdown_table(["model (batch 2, %dx%d)" % (s, s), "median s", "range s", "x peer"], rows)
    )
    print(f"\nmatcher share of our step: {100 * matcher_share:.2f} %")
    path = write_result(
        "bench_train_step",
        {"timing": timing, "ratio": ratio, "matcher_share": matcher_share, "size": s},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
