"""Panoptic evaluation time: COCOPanopticEvaluator over 297 images (the earlier attempt's val size).

Generates 297 synthetic concrete images at 1008x754, converts them, and feeds the evaluator
predictions made from the ground truth with every thing segment eroded (so matching is real
work and PQ < 100). Reports the seconds for process() over all images and for evaluate().

    python -m benchmarks.bench_eval [--num 297]
"""

import argparse
import os
import tempfile
import time

import cv2
import numpy as np
import torch
from detectron2.data import DatasetCatalog
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.utils import rgb2id
from PIL import Image

from benchmarks.common import load_synthetic, markdown_table, write_result
from d2_detr.data.conversion import convert_concrete_dataset
from d2_detr.data.datasets.register_concrete_defects import register_concrete_defects


def eroded_prediction(record):
    ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"]))).astype(np.int32)
    kernel = np.ones((5, 5), np.uint8)
    segments = []
    for s in record["segments_info"]:
        if s["isthing"]:
            seg = (ids == s["id"]).astype(np.uint8)
            eroded = cv2.erode(seg, kernel)
            ids[(seg == 1) & (eroded == 0)] = 0  # border pixels become unlabelled
            if not eroded.any():
                continue  # a thin segment vanished: the prediction misses it
        segments.append({"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]})
    return torch.from_numpy(ids), segments


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--num", type=int, default=297)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        raw, out = os.path.join(tmp, "raw"), os.path.join(tmp, "converted")
        load_synthetic().make_synthetic_concrete(raw, args.num, seed=3, size=(1008, 754))
        convert_concrete_dataset(raw, out, val_fraction=0.0, progress=False)
        (name,) = register_concrete_defects(out, name_prefix="bench_eval", splits=("train",))
        records = DatasetCatalog.get(name)
        predictions = [eroded_prediction(r) for r in records]
        evaluator = COCOPanopticEvaluator(name, output_dir=os.path.join(tmp, "eval"))
        evaluator.reset()
        start = time.perf_counter()
        for record, pred in zip(records, predictions):
            evaluator.process([record], [{"panoptic_seg": pred}])
        process_s = time.perf_counter() - start
        start = time.perf_counter()
        result = evaluator.evaluate()["panoptic_seg"]
        evaluate_s = time.perf_counter() - start
    rows = [[len(records), f"{process_s:.2f}", f"{evaluate_s:.2f}", f"{result['PQ']:.1f}"]]
    print(markdown_table(["images (1008x754)", "process() s", "evaluate() s", "PQ"], rows))
    payload = {"images": len(records), "process_s": process_s, "evaluate_s": evaluate_s}
    print(f"wrote {write_result('bench_eval', dict(payload, pq=result['PQ']))}")


if __name__ == "__main__":
    main()
