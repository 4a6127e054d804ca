"""Config defaults and the shipped configs."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import glob
import os

import pytest
import torch
import yaml
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from model_utils import make_input
from torch.utils.flop_counter import FlopCounterMode

from d2_detr.data.conversion import DEFAULT_CLASS_PRIORITY

CONFIGS = sorted(glob.glob("configs/**/*.yaml", recursive=True))


def _cfg(path=None, *opts):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    if path:
        cfg.merge_from_file(path)
    cfg.merge_from_list(list(opts))
    return cfg


def _yaml_chain(path):
    """The raw keys a config file sets, its _BASE_ first (later files override)."""
    with open(path) as f:
        raw = yaml.safe_load(f)
    base = raw.pop("_BASE_", None)
    chain = _yaml_chain(os.path.join(os.path.dirname(path), base)) if base else []
    return chain + [raw]


def _sets(path, *keys):
    """Whether the config file (or a base) sets MODEL.DETR.<keys...>."""
    for raw in _yaml_chain(path):
        node = raw.get("MODEL", {}).get("DETR", {})
        for k in keys:
            node = node.get(k) if isinstance(node, dict) else None
        if node is not None:
            return True
    return False


@pytest.mark.parametrize("path", CONFIGS)
def test_shipped_configs_carry_no_dead_values(path):
    """A key a config sets must take effect: head-specific keys with that head, the maskformer
    merge's keys with that merge, component settings with the split on."""
    d = _cfg(path).MODEL.DETR
    if d.MASK_HEAD != "detr":
        assert not _sets(path, "TRAINING_AIDS", "ATTENTION_RESCALE")
    if d.MASK_HEAD != "dot_product":
        assert not _sets(path, "DOT_PRODUCT", "MASK_DIM")
    if d.TEST.PANOPTIC_MERGE != "maskformer":
        assert not _sets(path, "TEST", "OVERLAP_THRESHOLD")
        assert not _sets(path, "TEST", "SCORE_WEIGHTED_MASKS")
    if not d.TEST.COMPONENTS.ENABLED:
        assert not _sets(path, "TEST", "COMPONENTS", "MIN_FRACTION")
    if d.COST_MASK == 0 and d.COST_DICE == 0:
        assert not _sets(path, "MATCHER_NUM_POINTS")


def test_a_dead_value_is_detected():
    """The check above can fail: the tiny config with DETR's head would carry MASK_DIM."""
    tiny = "configs/ConcreteDefects/detr_tiny_cpu.yaml"
    assert _sets(tiny, "DOT_PRODUCT", "MASK_DIM") and _cfg(tiny).MODEL.DETR.MASK_HEAD != "detr"
    assert not _sets(tiny, "TEST", "NO_SUCH_KEY")


def test_recipes():
    coco = _cfg("configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml")
    assert coco.MODEL.DETR.NUM_CLASSES == 133 and coco.MODEL.DETR.NUM_OBJECT_QUERIES == 100
    assert coco.MODEL.RESNETS.DEPTH == 50 and coco.MODEL.BACKBONE.FREEZE_AT == 2
    assert coco.MODEL.RESNETS.NORM == "FrozenBN" and not coco.MODEL.RESNETS.STRIDE_IN_1X1
    concrete = _cfg("configs/ConcreteDefects/detr_R_50_panoptic.yaml")
    assert concrete.MODEL.DETR.NUM_CLASSES == 4 and concrete.MODEL.DETR.NUM_OBJECT_QUERIES == 20
    assert concrete.MODEL.DETR.THING_CLASSES == [0, 1, 2]


@pytest.mark.parametrize("path", [p for p in CONFIGS if "ConcreteDefects" in p])
def test_concrete_configs_split_components_in_the_datasets_class_priority(path):
    """One source of truth: the priority the dataset was converted with (its metadata's
    ``class_priority``), else the converter's default by class name."""
    assert _cfg(path).MODEL.DETR.TEST.COMPONENTS.ENABLED
    coco = _cfg("configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml", "MODEL.DEVICE", "cpu")
    assert not coco.MODEL.DETR.TEST.COMPONENTS.ENABLED  # COCO instances are not components
    name = "_test_config_priority_" + os.path.basename(path)
    meta = MetadataCatalog.get(name)
    meta.set(
        thing_classes=["rebar", "spall", "crack"],
        stuff_classes=["rebar", "spall", "crack", "background"],
        thing_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2},
        stuff_dataset_id_to_contiguous_id={1: 0, 2: 1, 3: 2, 4: 3},
    )
    small = ("MODEL.DEVICE", "cpu", "MODEL.DETR.ENC_LAYERS", "1", "MODEL.DETR.DEC_LAYERS", "1")
    opts = ("DATASETS.TRAIN", "()", "DATASETS.TEST", f"('{name}',)") + small
    default = build_model(_cfg(path, *opts)).settings.class_priority
    assert [["rebar", "spall", "crack"][i] for i in default] == list(DEFAULT_CLASS_PRIORITY)
    meta.set(class_priority=[1, 2, 0])  # converted with --class-priority spall crack rebar
    assert build_model(_cfg(path, *opts)).settings.class_priority == (1, 2, 0)


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
