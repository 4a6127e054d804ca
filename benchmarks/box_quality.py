#!/usr/bin/env python
"""
Why do the instance boxes lag the masks? For a trained model: COCO bbox AP of the box head's
boxes and of the masks' tight boxes next to segm AP, and, for every ground-truth instance whose
best same-class prediction has mask IoU >= 0.5, the box IoU of the box head and of the mask's
tight box with the ground-truth box.

    python -m benchmarks.box_quality --weights output/demo/train/model_final.pth \
        --data output/demo/data/synthetic_concrete --split val

One inference pass with ``MODEL.DETR.TEST.BOXES_FROM_MASKS False`` and
``COMPONENTS.ENABLED False``, so every instance is one query with the head's box; the tight
boxes are computed from the same predicted masks. Writes
``output/benchmarks/box_quality.json``.
"""

import os
import sys
from collections import defaultdict

import d2_detr  # noqa: F401  (compat before detectron2)

# isort: split
import numpy as np
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.evaluation import COCOEvaluator
from detectron2.structures import Boxes, pairwise_iou
from panopticapi.utils import rgb2id
from PIL import Image

from d2_detr.engine import DETRCheckpointer, DETRTrainer
from d2_detr.modeling.postprocess import mask_boxes

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
from benchmarks.common import (  # noqa: E402
    markdown_table,
    split_and_config,
    trained_model_parser,
    write_result,
)


class _MaskBoxes:
    """Evaluator wrapper: the same outputs with every box replaced by its mask's tight box."""

    def __init__(self, evaluator):
        self.evaluator = evaluator

    def reset(self):
        self.evaluator.reset()

    def process(self, inputs, outputs):
        swapped = []
        for out in outputs:
            inst = out["instances"]
            tight = inst[:]  # a copy whose fields can be replaced
            tight.pred_boxes = Boxes(mask_boxes(inst.pred_masks, inst.pred_boxes.tensor))
            swapped.append({**out, "instances": tight})
        self.evaluator.process(inputs, swapped)

    def evaluate(self):
        return self.evaluator.evaluate()


class _Collect:
    """Evaluator that keeps the instances of every image (on CPU) by image id."""

    def __init__(self):
        self.by_image = {}

    def reset(self):
        self.by_image = {}

    def process(self, inputs, outputs):
        for inp, out in zip(inputs, outputs):
            self.by_image[inp["image_id"]] = out["instances"].to("cpu")

    def evaluate(self):
        return {}


def ground_truth_instances(record, thing_ids):
    """[(contiguous class, (H, W) bool mask)] of the thing segments of one dataset record."""
    ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")))
    return [
        (seg["category_id"], ids == seg["id"])
        for seg in record["segments_info"]
        if seg["category_id"] in thing_ids
    ]


def box_iou_of_matches(records, predictions, thing_ids, score_threshold):
    """Per class: lists of (mask IoU, head-box IoU, tight-box IoU) over matched ground truth."""
    found = defaultdict(list)
    missed = defaultdict(int)
    for record in records:
        inst = predictions[record["image_id"]]
        keep = inst.scores >= score_threshold
        inst = inst[keep]
        masks = inst.pred_masks.numpy()
        tight = mask_boxes(inst.pred_masks, inst.pred_boxes.tensor)
        for cls, gt in ground_truth_instances(record, thing_ids):
            same = np.flatnonzero(inst.pred_classes.numpy() == cls)
            ious = [(gt & masks[i]).sum() / max((gt | masks[i]).sum(), 1) for i in same]
            if not ious or max(ious) < 0.5:
                missed[cls] += 1
                continue
            best = same[int(np.argmax(ious))]
            gt_box = Boxes(mask_boxes(torch.from_numpy(gt)[None], torch.zeros(1, 4)))
            head_iou = pairwise_iou(gt_box, inst.pred_boxes[int(best)]).item()
            tight_iou = pairwise_iou(gt_box, Boxes(tight[int(best)][None])).item()
            found[cls].append((float(max(ious)), head_iou, tight_iou))
    return found, missed


def main(argv=None):
    parser = trained_model_parser(__doc__.split("\n\n")[0], "box_quality")
    parser.add_argument("--score-threshold", type=float, default=0.5)
    args = parser.parse_args(argv)
    name, cfg = split_and_config(args, "boxq")
    cfg.merge_from_list(
        [
            "MODEL.WEIGHTS",
            args.weights,
            "MODEL.DETR.TEST.BOXES_FROM_MASKS",
            "False",
            "MODEL.DETR.TEST.COMPONENTS.ENABLED",
            "False",
        ]
        + args.opts
    )
    model = DETRTrainer.build_model(cfg)
    DETRCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    model.eval()

    records = DatasetCatalog.get(name)
    thing_ids = set(MetadataCatalog.get(name).thing_dataset_id_to_contiguous_id.values())
    head = COCOEvaluator(name, tasks=("bbox", "segm"), distributed=False, use_fast_impl=False)
    tight = _MaskBoxes(COCOEvaluator(name, tasks=("bbox",), distributed=False, use_fast_impl=False))
    collect = _Collect()
    with torch.no_grad():
        for evaluator in (head, tight, collect):
            evaluator.reset()
        loader = DETRTrainer.build_test_loader(cfg, name)
        for inputs in loader:
            outputs = model(inputs)
            for evaluator in (head, tight, collect):
                evaluator.process(inputs, outputs)
    ap_head, ap_tight = head.evaluate(), tight.evaluate()

    found, missed = box_iou_of_matches(records, collect.by_image, thing_ids, args.score_threshold)
    names = MetadataCatalog.get(name).thing_classes
    rows, per_class = [], {}
    for cls in sorted(thing_ids):
        pairs = np.array(found.get(cls, []), dtype=np.float64).reshape(-1, 3)
        n = len(pairs)
        stats = {
            "matched": n,
            "missed": missed.get(cls, 0),
            "mask_iou_mean": float(pairs[:, 0].mean()) if n else None,
            "head_box_iou_mean": float(pairs[:, 1].mean()) if n else None,
            "tight_box_iou_mean": float(pairs[:, 2].mean()) if n else None,
            "head_box_iou_ge_0.75": float((pairs[:, 1] >= 0.75).mean()) if n else None,
            "tight_box_iou_ge_0.75": float((pairs[:, 2] >= 0.75).mean()) if n else None,
        }
        per_class[names[cls]] = stats
        fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
        rows.append(
            [names[cls], n, stats["missed"], fmt(stats["mask_iou_mean"]),
             fmt(stats["head_box_iou_mean"]), fmt(stats["tight_box_iou_mean"]),
             fmt(stats["head_box_iou_ge_0.75"]), fmt(stats["tight_box_iou_ge_0.75"])]
        )  # fmt: skip
    summary = {
        "segm_AP": ap_head["segm"]["AP"],
        "bbox_AP_head": ap_head["bbox"]["AP"],
        "bbox_AP_mask_boxes": ap_tight["bbox"]["AP"],
    }
    print(markdown_table(["AP", "value"], [[k, f"{v:.1f}"] for k, v in summary.items()]))
    print()
    print(
        markdown_table(
            ["class", "matched", "missed", "mask IoU", "head box IoU", "tight box IoU",
             "head >= 0.75", "tight >= 0.75"],
            rows,
        )  # fmt: skip
    )
    path = write_result(
        args.name,
        {
            "what": "box head vs masks' tight boxes on one trained model",
            "weights": args.weights,
            "dataset": args.data,
            "split": args.split,
            "score_threshold": args.score_threshold,
            "opts": args.opts,
            **summary,
            "per_class": per_class,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
