"""Builders for the benchmarked models: ours from a config, inputs of the right shapes."""

import os

import torch  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.modeling import build_model  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402

import d2_detr  # noqa: F401
from d2_detr import add_detr_config  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
R50_CONFIG = os.path.join(ROOT, "configs", "ConcreteDefects", "detr_R_50_panoptic.yaml")
TINY_CONFIG = os.path.join(ROOT, "configs", "ConcreteDefects", "detr_tiny_cpu.yaml")


def build_ours(config_file=R50_CONFIG, opts=()):
    """Our DETR from a config with random weights (no dataset needed), on CPU."""
    cfg = get_cfg()
    add_detr_config(cfg)
    cfg.merge_from_file(config_file)
    cfg.merge_from_list(["MODEL.WEIGHTS", "", "MODEL.DEVICE", "cpu", "DATASETS.TEST", "()"])
    cfg.merge_from_list(["DATASETS.TRAIN", "()"] + list(opts))
    return build_model(cfg), cfg


def random_targets(height, width, num_objects, num_classes, generator):
    """Instances with boxes, classes and rectangle masks on an (height, width) image."""
    masks = torch.zeros((num_objects, height, width), dtype=torch.bool)
    boxes = []
    for k in range(num_objects):
        x0 = int(torch.randint(0, width // 2, (1,), generator=generator))
        y0 = int(torch.randint(0, height // 2, (1,), generator=generator))
        x1 = x0 + int(torch.randint(8, width // 2, (1,), generator=generator))
        y1 = y0 + int(torch.randint(8, height // 2, (1,), generator=generator))
        masks[k, y0:y1, x0:x1] = True
        boxes.append([x0, y0, x1, y1])
    inst = Instances((height, width))
    inst.gt_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    inst.gt_classes = torch.randint(0, num_classes, (num_objects,), generator=generator)
    inst.gt_masks = BitMasks(masks)
    return inst
