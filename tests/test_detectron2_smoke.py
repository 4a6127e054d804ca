"""Detectron2's trainer and panoptic evaluator run on this stack (foundation smoke tests).

The test writes a tiny COCO-panoptic dataset itself (no project data tools involved), registers it
through Detectron2's catalog, trains a minimal registered meta-architecture for 3 iterations and
checks that COCOPanopticEvaluator scores the ground truth as PQ 100.
"""

import json
import os

import numpy as np
import pytest
import torch
from detectron2.config import get_cfg  # noqa: E402
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.datasets import register_coco_panoptic  # noqa: E402
from detectron2.engine import DefaultTrainer  # noqa: E402
from detectron2.evaluation import COCOPanopticEvaluator  # noqa: E402
from detectron2.modeling import META_ARCH_REGISTRY  # noqa: E402
from panopticapi.utils import id2rgb  # noqa: E402
from PIL import Image
from torch import nn

import d2_detr  # noqa: F401

CATEGORIES = [
    {"id": 1, "name": "crack", "isthing": 1, "color": [220, 20, 60]},
    {"id": 7, "name": "background", "isthing": 0, "color": [128, 128, 128]},
]


def write_tiny_panoptic(root, num_images=4, size=32):
    """Images with one rectangle 'crack' (thing) on a 'background' (stuff) each."""
    os.makedirs(os.path.join(root, "images"))
    os.makedirs(os.path.join(root, "panoptic"))
    rng = np.random.default_rng(0)
    images, annotations = [], []
    for i in range(num_images):
        img = rng.integers(0, 255, (size, size, 3), dtype=np.uint8)
        Image.fromarray(img).save(os.path.join(root, "images", f"{i:04d}.jpg"))
        ids = np.full((size, size), 1000 + i, dtype=np.uint32)
        y0, x0 = 4 + i, 6 + 2 * i
        ids[y0 : y0 + 10, x0 : x0 + 8] = 2000 + i
        Image.fromarray(id2rgb(ids)).save(os.path.join(root, "panoptic", f"{i:04d}.png"))
        segments = [
            {"id": 2000 + i, "category_id": 1, "iscrowd": 0, "area": 80, "bbox": [x0, y0, 8, 10]},
            {
                "id": 1000 + i,
                "category_id": 7,
                "iscrowd": 0,
                "area": size * size - 80,
                "bbox": [0, 0, size, size],
            },
        ]
        images.append({"id": i, "file_name": f"{i:04d}.jpg", "width": size, "height": size})
        annotations.append({"image_id": i, "file_name": f"{i:04d}.png", "segments_info": segments})
    path = os.path.join(root, "panoptic.json")
    with open(path, "w") as f:
        json.dump({"images": images, "annotations": annotations, "categories": CATEGORIES}, f)
    return path


@pytest.fixture
def tiny_panoptic(tmp_path):
    name = "d2_smoke_tiny_panoptic"
    json_path = write_tiny_panoptic(str(tmp_path))
    metadata = {
        "thing_classes": ["crack"],
        "stuff_classes": ["crack", "background"],
        "thing_dataset_id_to_contiguous_id": {1: 0},
        "stuff_dataset_id_to_contiguous_id": {7: 1},
    }
    register_coco_panoptic(
        name,
        metadata,
        str(tmp_path / "images"),
        str(tmp_path / "panoptic"),
        json_path,
        instances_json=None,
    )
    yield name, tmp_path
    DatasetCatalog.remove(name)
    MetadataCatalog.remove(name)


@META_ARCH_REGISTRY.register()
class SmokeTestArch(nn.Module):
    """Smallest meta-architecture: a conv whose mean output is pushed towards 1."""

    def __init__(self, cfg):
        super().__init__()
        self.conv = nn.Conv2d(3, 1, 3)

    def forward(self, batched_inputs):
        images = torch.stack([x["image"].float()[:, :24, :24] / 255 for x in batched_inputs])
        return {"loss_smoke": (self.conv(images).mean() - 1) ** 2}


def test_default_trainer_runs_three_iterations(tiny_panoptic):
    name, tmp_path = tiny_panoptic
    cfg = get_cfg()
    cfg.MODEL.META_ARCHITECTURE = "SmokeTestArch"
    cfg.MODEL.DEVICE = "cpu"
    cfg.DATASETS.TRAIN = (name,)
    cfg.DATASETS.TEST = ()
    cfg.DATALOADER.NUM_WORKERS = 0
    cfg.INPUT.MIN_SIZE_TRAIN = (32,)
    cfg.INPUT.MAX_SIZE_TRAIN = 64
    cfg.SOLVER.IMS_PER_BATCH = 2
    cfg.SOLVER.BASE_LR = 0.1
    cfg.SOLVER.MAX_ITER = 3
    cfg.SOLVER.CHECKPOINT_PERIOD = 100
    cfg.OUTPUT_DIR = str(tmp_path / "out")
    trainer = DefaultTrainer(cfg)
    before = trainer.model.conv.weight.detach().clone()
    trainer.train()
    assert trainer.iter == 3  # iterations 0, 1, 2 ran (the counter ends one past the last)
    assert not torch.equal(before, trainer.model.conv.weight.detach())
    history = trainer.storage.history("total_loss").values()
    assert len(history) == 3 and all(np.isfinite(v) for v, _ in history)
    assert os.path.isfile(os.path.join(cfg.OUTPUT_DIR, "model_final.pth"))


def test_panoptic_evaluator_scores_ground_truth_as_pq_100(tiny_panoptic):
    name, tmp_path = tiny_panoptic
    meta = MetadataCatalog.get(name)
    evaluator = COCOPanopticEvaluator(name, output_dir=str(tmp_path / "eval"))
    evaluator.reset()
    from panopticapi.utils import rgb2id

    for record in DatasetCatalog.get(name):
        ids = rgb2id(np.asarray(Image.open(record["pan_seg_file_name"])))
        segments = [
            {"id": s["id"], "category_id": s["category_id"], "isthing": s["isthing"]}
            for s in record["segments_info"]
        ]
        evaluator.process(
            [record], [{"panoptic_seg": (torch.from_numpy(ids.astype(np.int32)), segments)}]
        )
    result = evaluator.evaluate()["panoptic_seg"]
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert result["PQ"] == pytest.approx(100.0)
    assert result["PQ_th"] == pytest.approx(100.0) and result["PQ_st"] == pytest.approx(100.0)
