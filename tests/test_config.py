"""Config defaults and the shipped configs."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import glob

import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from model_utils import make_input
from torch.utils.flop_counter import FlopCounterMode

from d2_detr.data.categories import THING_NAMES
from d2_detr.data.conversion import DEFAULT_CLASS_PRIORITY

CONFIGS = sorted(glob.glob("configs/**/*.yaml", recursive=True))


def _cfg(path=None, *opts):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    if path:
        cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def test_defaults_follow_the_detr_recipe():
    d = _cfg().MODEL.DETR
    assert (d.HIDDEN_DIM, d.NHEADS, d.DIM_FEEDFORWARD, d.ENC_LAYERS, d.DEC_LAYERS) == (
        256, 8, 2048, 6, 6,
    )  # fmt: skip
    assert (d.COST_CLASS, d.COST_BBOX, d.COST_GIOU) == (1.0, 5.0, 2.0)
    assert (d.CLASS_WEIGHT, d.L1_WEIGHT, d.GIOU_WEIGHT, d.MASK_WEIGHT, d.DICE_WEIGHT) == (
        1.0, 5.0, 2.0, 1.0, 1.0,
    )  # fmt: skip
    assert d.NO_OBJECT_WEIGHT == 0.1 and d.DROPOUT == 0.1 and d.TEST.OBJECT_MASK_THRESHOLD == 0.85
    assert d.THING_CLASSES == [] and d.SIZE_DIVISIBILITY == 32


@pytest.mark.parametrize("path", CONFIGS)
def test_every_config_merges(path):
    cfg = _cfg(path)
    assert cfg.MODEL.META_ARCHITECTURE == "DETR"
    # DETR's lr; the tiny config trains from scratch with a larger one
    expected_lr = 3e-4 if "tiny" in path else 1e-4
    assert cfg.SOLVER.OPTIMIZER == "ADAMW" and cfg.SOLVER.BASE_LR == expected_lr
    # attention-map rescaling departs from official DETR: only where training from scratch
    assert cfg.MODEL.DETR.MASK_ATTENTION_RESCALE == ("tiny" in path)


def test_recipes():
    coco = _cfg("configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml")
    assert coco.MODEL.DETR.NUM_CLASSES == 133 and coco.MODEL.DETR.NUM_OBJECT_QUERIES == 100
    assert coco.MODEL.RESNETS.DEPTH == 50 and coco.MODEL.BACKBONE.FREEZE_AT == 2
    assert coco.MODEL.RESNETS.NORM == "FrozenBN" and not coco.MODEL.RESNETS.STRIDE_IN_1X1
    concrete = _cfg("configs/ConcreteDefects/detr_R_50_panoptic.yaml")
    assert concrete.MODEL.DETR.NUM_CLASSES == 4 and concrete.MODEL.DETR.NUM_OBJECT_QUERIES == 20
    assert concrete.MODEL.DETR.THING_CLASSES == [0, 1, 2]


@pytest.mark.parametrize("path", [p for p in CONFIGS if "ConcreteDefects" in p])
def test_concrete_configs_split_components_in_the_converters_class_priority(path):
    test = _cfg(path).MODEL.DETR.TEST
    assert test.SPLIT_COMPONENTS
    assert [THING_NAMES[i] for i in test.COMPONENT_PRIORITY] == list(DEFAULT_CLASS_PRIORITY)
    coco = _cfg("configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml")
    assert not coco.MODEL.DETR.TEST.SPLIT_COMPONENTS  # COCO instances are not components


def test_coco_model_checks_num_classes_against_builtin_metadata():
    cfg = _cfg("configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml", "MODEL.DEVICE", "cpu")
    model = build_model(cfg)
    assert len(model.thing_ids) == 80 and max(model.thing_ids) == 79  # COCO: things first
    cfg.MODEL.DETR.NUM_CLASSES = 250  # the official checkpoint's size: refused, clearly
    with pytest.raises(ValueError, match="set MODEL.DETR.NUM_CLASSES to 133"):
        build_model(cfg)


def test_tiny_cpu_config_is_small():
    cfg = _cfg("configs/ConcreteDefects/detr_tiny_cpu.yaml")
    assert cfg.MODEL.WEIGHTS == "" and cfg.MODEL.BACKBONE.FREEZE_AT == 0
    assert cfg.MODEL.DETR.NUM_CLASSES == 4 and cfg.MODEL.DETR.NUM_OBJECT_QUERIES == 20
    assert cfg.DATASETS.TRAIN == ("synthetic_concrete_train_panoptic",)
    torch.manual_seed(0)
    model = build_model(cfg).train()
    assert sum(p.numel() for p in model.parameters()) < 5e6
    batch = [
        make_input(320, 400, [[10, 10, 120, 90], [200, 150, 380, 300]], [0, 3], seed=1),
        make_input(288, 384, [[50, 40, 100, 260]], [2], seed=2),
    ]
    with EventStorage(), FlopCounterMode(display=False) as flops:
        sum(model(batch).values()).backward()
    # 16.8 GFLOP forward + backward at batch 2 (about 0.2 s on 2 idle cores)
    assert flops.get_total_flops() < 20e9
    # speed is measured by benchmarks/, never asserted here: check training steps stay finite
    opt = torch.optim.AdamW([p for p in model.parameters() if p.requires_grad], lr=1e-4)
    with EventStorage():
        for _ in range(3):
            loss = sum(model(batch).values())
            opt.zero_grad()
            loss.backward()
            opt.step()
    assert torch.isfinite(loss)


def test_dc5_dilates_res5():
    from d2_detr.modeling import build_detr_backbone

    base = ("configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml",)
    plain = build_detr_backbone(_cfg(*base)).output_shape()
    dc5 = build_detr_backbone(_cfg(*base, "MODEL.DETR.DC5", "True")).output_shape()
    assert plain["res5"].stride == 32 and dc5["res5"].stride == 16
    assert [dc5[f].channels for f in ("res2", "res3", "res4", "res5")] == [256, 512, 1024, 2048]
    tiny = "configs/ConcreteDefects/detr_tiny_cpu.yaml"
    with pytest.raises(ValueError, match="DC5 needs a bottleneck"):
        build_detr_backbone(_cfg(tiny, "MODEL.DETR.DC5", "True", "MODEL.DETR.IN_FEATURE", "res5"))
    with pytest.raises(ValueError, match="DC5 dilates res5"):
        build_detr_backbone(_cfg(*base, "MODEL.DETR.DC5", "True", "MODEL.DETR.IN_FEATURE", "res4"))
