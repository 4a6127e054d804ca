"""Panoptic evaluation of a split without thing segments: NaN for things, not a crash."""

import d2_detr  # noqa: F401  # isort: skip  (compat first)
import json
import math
import os

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets import register_coco_panoptic
from detectron2.evaluation import COCOPanopticEvaluator
from panopticapi.utils import id2rgb
from PIL import Image

from d2_detr.engine import DETRPanopticEvaluator


@pytest.fixture
def stuff_only_split(tmp_path):
    """Two 16x16 images that are all 'background' (stuff): no defect anywhere."""
    os.makedirs(tmp_path / "images")
    os.makedirs(tmp_path / "panoptic")
    images, annotations = [], []
    for i in range(2):
        Image.fromarray(np.full((16, 16, 3), 100 + i, np.uint8)).save(
            tmp_path / "images" / f"{i}.jpg"
        )
        Image.fromarray(id2rgb(np.full((16, 16), 7, np.uint32))).save(
            tmp_path / "panoptic" / f"{i}.png"
        )
        seg = {"id": 7, "category_id": 4, "iscrowd": 0, "area": 256, "bbox": [0, 0, 16, 16]}
        images.append({"id": i, "file_name": f"{i}.jpg", "width": 16, "height": 16})
        annotations.append({"image_id": i, "file_name": f"{i}.png", "segments_info": [seg]})
    categories = [
        {"id": 1, "name": "crack", "isthing": 1, "color": [220, 20, 60]},
        {"id": 4, "name": "background", "isthing": 0, "color": [140, 140, 140]},
    ]
    with open(tmp_path / "panoptic.json", "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": categories}, f)
    name = "test_stuff_only_split"
    meta = {
        "thing_classes": ["crack"],
        "stuff_classes": ["crack", "background"],
        "thing_dataset_id_to_contiguous_id": {1: 0},
        "stuff_dataset_id_to_contiguous_id": {4: 1},
    }
    register_coco_panoptic(
        name, meta, str(tmp_path / "images"), str(tmp_path / "panoptic"),
        str(tmp_path / "panoptic.json"), instances_json=None,
    )  # fmt: skip
    yield name, tmp_path
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


def _run(evaluator, name):
    evaluator.reset()
    for record in DatasetCatalog.get(name):
        seg = torch.ones((16, 16), dtype=torch.int32)  # the ground truth itself: all background
        info = [{"id": 1, "category_id": 1, "isthing": False}]
        evaluator.process([record], [{"panoptic_seg": (seg, info)}])
    return evaluator.evaluate()


def test_no_thing_segments_give_nan_things_and_exact_stuff(stuff_only_split):
    name, tmp_path = stuff_only_split
    with pytest.raises(ZeroDivisionError):  # what Detectron2 + panopticapi do on their own
        _run(COCOPanopticEvaluator(name, str(tmp_path / "plain")), name)
    result = _run(DETRPanopticEvaluator(name, str(tmp_path / "ours")), name)["panoptic_seg"]
    assert result["PQ_st"] == pytest.approx(100.0) and result["PQ"] == pytest.approx(100.0)
    assert math.isnan(result["PQ_th"]) and math.isnan(result["SQ_th"])
    # per class: the background exact, the crack never occurs (panopticapi alone says 0)
    assert result["PQ_background"] == pytest.approx(100.0) and math.isnan(result["PQ_crack"])
    # the patch is undone: panopticapi behaves as before outside the evaluator
    with pytest.raises(ZeroDivisionError):
        _run(COCOPanopticEvaluator(name, str(tmp_path / "plain2")), name)


def test_pq_per_class_by_hand(stuff_only_split, tmp_path):
    """Image 0 holds a 4x4 crack that the prediction finds exactly; image 1 holds one that it
    misses (all background): crack RQ 1 / (1 + 0.5), background SQ (1 + 240 / 256) / 2."""
    name, root = stuff_only_split
    json_path = root / "panoptic.json"
    data = json.loads(json_path.read_text())
    for i, ann in enumerate(data["annotations"]):
        ids = np.full((16, 16), 7, np.uint32)
        ids[:4, :4] = 3
        Image.fromarray(id2rgb(ids)).save(root / "panoptic" / f"{i}.png")
        ann["segments_info"] = [
            {"id": 3, "category_id": 1, "iscrowd": 0, "area": 16, "bbox": [0, 0, 4, 4]},
            {"id": 7, "category_id": 4, "iscrowd": 0, "area": 240, "bbox": [0, 0, 16, 16]},
        ]
    json_path.write_text(json.dumps(data))
    evaluator = DETRPanopticEvaluator(name, str(tmp_path / "out"))
    evaluator.reset()
    for k, record in enumerate(DatasetCatalog.get(name)):
        seg = torch.ones((16, 16), dtype=torch.int32)
        info = [{"id": 1, "category_id": 1, "isthing": False}]
        if k == 0:
            seg[:4, :4] = 2
            info.append({"id": 2, "category_id": 0, "isthing": True})
        evaluator.process([record], [{"panoptic_seg": (seg, info)}])
    result = evaluator.evaluate()["panoptic_seg"]
    assert result["PQ_crack"] == pytest.approx(100 * 1 / 1.5)
    assert result["PQ_background"] == pytest.approx(100 * (1 + 240 / 256) / 2)
    assert result["PQ_th"] == pytest.approx(result["PQ_crack"])
