#!/usr/bin/env python
"""
Is a missed defect a segmentation miss or a classification miss? For every ground-truth thing
of a split: the best mask IoU reached by ANY query (no score threshold, no merging) and that
query's class probabilities (softmax over the classes and "no object").

    python -m benchmarks.query_diagnosis --weights output/demo/train/model_final.pth \
        --data output/demo/data/synthetic_concrete --split val

Per class it prints: how many ground-truth segments some query outlines at IoU > 0.5, how often
the best-outlining query's best class is the right one, its mean probability of the right class
and of "no object", and how many segments are outlined by SOME query (IoU > 0.5) whose
probability of the right class exceeds 0.5. A query that outlines a defect but puts most of its
probability on "no object" is dropped by the panoptic merge (``OBJECT_MASK_THRESHOLD``) and costs
PQ although its mask is right. Writes ``output/benchmarks/<name>.json``.
"""

import os
import sys
from collections import defaultdict

import d2_detr  # noqa: F401  (compat before detectron2)

# isort: split
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.modeling import build_model

from d2_detr.data.dataset_mappers import DetrPanopticDatasetMapper
from d2_detr.engine import DETRCheckpointer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks import common  # noqa: E402
from benchmarks.box_quality import ground_truth_instances  # noqa: E402


def query_masks_and_probs(model, image):
    """(3, h, w) uint8 test-resized image -> (Q, h, w) mask probabilities, (Q, K+1) class probs."""
    images, padding = model.preprocess_image([{"image": image}])  # normalised, padded
    h, w = images.image_sizes[0]
    out = model.forward_raw(images.tensor, padding)
    masks = F.interpolate(out["pred_masks"], size=images.tensor.shape[-2:], mode="bilinear")
    return masks[0, :, :h, :w].sigmoid(), out["pred_logits"][0].softmax(-1)


def best_query_per_segment(model, mapper, record, thing_ids):
    """
    [(class, best mask IoU over queries, that query's class probabilities, highest probability of
    the right class among the queries outlining the segment at IoU > 0.5 (0 if none))] for one
    image.
    """
    inputs = mapper(record)
    with torch.no_grad():
        masks, probs = query_masks_and_probs(model, inputs["image"])
    rows = []
    for cls, gt in ground_truth_instances(record, thing_ids):
        full = F.interpolate(masks[None], size=gt.shape, mode="bilinear")[0] > 0.5
        gt = torch.from_numpy(gt).to(full.device)
        inter = (full & gt).flatten(1).sum(1).float()
        union = (full | gt).flatten(1).sum(1).float().clamp(min=1)
        iou = inter / union
        best = int(iou.argmax())
        outlining = probs[iou > 0.5, cls]
        top = float(outlining.max()) if len(outlining) else 0.0
        rows.append((cls, float(iou[best]), probs[best].cpu().numpy(), top))
    return rows


def summarise(rows, classes):
    """Per class: count, outlined share (IoU > 0.5), right-class share, mean p(class), p(none)."""
    by_class = defaultdict(list)
    for cls, iou, prob, top in rows:
        by_class[cls].append((iou, prob, top))
    summary = {}
    for cls, items in sorted(by_class.items()):
        ious = np.array([iou for iou, _, _ in items])
        probs = np.stack([p for _, p, _ in items])
        tops = np.array([top for _, _, top in items])
        summary[classes[cls]] = {
            "segments": len(items),
            "median_best_iou": round(float(np.median(ious)), 3),
            "outlined": round(float((ious > 0.5).mean()), 3),
            "best_class_right": round(float((probs[:, :-1].argmax(1) == cls).mean()), 3),
            "p_class": round(float(probs[:, cls].mean()), 3),
            "p_no_object": round(float(probs[:, -1].mean()), 3),
            "dropped_as_no_object": round(float((probs.argmax(1) == probs.shape[1] - 1).mean()), 3),
            "outlined_with_p_over_half": round(float((tops > 0.5).mean()), 3),
        }
    return summary


def main(argv=None):
    args = common.trained_model_parser(__doc__.split("\n\n")[0], "query_diagnosis").parse_args(argv)
    name, cfg = common.split_and_config(args, "qdiag")
    cfg.merge_from_list(args.opts)
    model = build_model(cfg).eval()
    DETRCheckpointer(model).load(args.weights)
    mapper = DetrPanopticDatasetMapper(cfg, is_train=False)
    meta = MetadataCatalog.get(name)
    thing_ids = set(meta.thing_dataset_id_to_contiguous_id.values())
    rows = []
    for record in DatasetCatalog.get(name):
        rows += best_query_per_segment(model, mapper, record, thing_ids)
    summary = summarise(rows, meta.thing_classes)
    header = ["class", "segments", "median best IoU", "outlined (IoU>0.5)", "best class right"]
    header += ["p(class)", "p(no object)", "argmax no object", "outlined by a query with p > 0.5"]
    keys = ["segments", "median_best_iou", "outlined", "best_class_right", "p_class"]
    keys += ["p_no_object", "dropped_as_no_object", "outlined_with_p_over_half"]
    print(common.markdown_table(header, [[c] + [v[k] for k in keys] for c, v in summary.items()]))
    path = common.write_result(
        args.name,
        {"weights": args.weights, "data": args.data, "split": args.split, "classes": summary},
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
