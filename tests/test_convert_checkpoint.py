"""Official DETR / torchvision key layouts -> this model, on state dicts built by the test."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import argparse
import importlib.util

import pytest
import torch
import torchvision
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data import MetadataCatalog
from detectron2.modeling import build_model
from model_utils import official_detr_state_dict, official_parameter_count

from d2_detr.checkpoint_conversion import (
    class_map_from_metadata,
    compare_with_model,
    convert_detr_state_dict,
    load_checkpoint,
)
from d2_detr.utils.cli import UserError

R50_CONCRETE = "configs/ConcreteDefects/detr_R_50_panoptic.yaml"
# DetrForSegmentation (HF transformers, same architecture), 4 labels, 20 queries
HF_DETR_PANOPTIC_PARAMS = 42_815_586


def _r50_model(*opts):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(R50_CONCRETE)
    cfg.merge_from_list(["MODEL.DEVICE", "cpu", "DATASETS.TRAIN", "()", "DATASETS.TEST", "()"])
    cfg.merge_from_list(list(opts))
    return build_model(cfg)


@pytest.fixture(scope="module")
def r50_panoptic():
    return _r50_model()


def test_panoptic_checkpoint_maps_every_key(r50_panoptic):
    official = official_detr_state_dict(num_classes=4, num_queries=20)
    new, ignored = convert_detr_state_dict(official)
    assert ignored == [] and len(new) == len(official)
    missing, unexpected, shapes = compare_with_model(new, r50_panoptic)
    assert (missing, unexpected, shapes) == ([], [], [])
    r50_panoptic.load_state_dict(new, strict=True)
    torch.testing.assert_close(
        r50_panoptic.transformer.decoder.layers[2].cross_attn.in_proj_weight,
        official["detr.transformer.decoder.layers.2.multihead_attn.in_proj_weight"],
    )
    torch.testing.assert_close(
        r50_panoptic.backbone.res4[0].shortcut.norm.running_var,
        official["detr.backbone.0.body.layer3.0.downsample.1.running_var"],
    )
    ours = sum(p.numel() for p in r50_panoptic.parameters())
    assert ours == official_parameter_count(official) == HF_DETR_PANOPTIC_PARAMS


def test_detection_checkpoint_maps_every_key():
    model = _r50_model("MODEL.DETR.MASK_ON", "False", "MODEL.DETR.TEST.PANOPTIC_ON", "False")
    official = official_detr_state_dict(num_classes=4, num_queries=20, panoptic=False)
    new, _ = convert_detr_state_dict(official)
    assert compare_with_model(new, model) == ([], [], [])
    assert sum(p.numel() for p in model.parameters()) == official_parameter_count(official)


def test_torchvision_resnet50_fills_the_backbone(r50_panoptic):
    tv = torchvision.models.resnet50(weights=None).state_dict()
    new, ignored = convert_detr_state_dict(tv)
    assert sorted(ignored) == sorted(
        [k for k in tv if k.endswith("num_batches_tracked")] + ["fc.weight", "fc.bias"]
    )
    missing, unexpected, shapes = compare_with_model(new, r50_panoptic)
    assert unexpected == [] and shapes == []
    assert [k for k in missing if k.startswith("backbone.")] == []
    torch.testing.assert_close(new["backbone.stem.conv1.weight"], tv["conv1.weight"])
    torch.testing.assert_close(new["backbone.res5.2.conv3.norm.weight"], tv["layer4.2.bn3.weight"])


def test_class_rows_remapped_by_dataset_ids():
    official = official_detr_state_dict(num_classes=250, num_queries=20)
    meta = MetadataCatalog.get("coco_2017_val_panoptic")  # Detectron2's builtin metadata
    class_map = class_map_from_metadata(meta)
    assert len(class_map) == 133 and class_map[:3] == [1, 2, 3] and class_map[-1] == 200
    new, _ = convert_detr_state_dict(official, class_map)
    w = official["detr.class_embed.weight"]
    assert new["class_embed.weight"].shape == (134, 256)
    torch.testing.assert_close(new["class_embed.weight"][80], w[class_map[80]])
    torch.testing.assert_close(new["class_embed.weight"][-1], w[-1])  # no-object stays last
    torch.testing.assert_close(new["class_embed.bias"][5], official["detr.class_embed.bias"][6])


def test_unknown_keys_rejected():
    with pytest.raises(ValueError, match="unknown keys"):
        convert_detr_state_dict({"detr.something_else.weight": torch.zeros(1)})


def _tool():
    spec = importlib.util.spec_from_file_location(
        "convert_tool", "tools/convert_detr_checkpoint.py"
    )
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_cli_writes_a_checkpoint_detectron2_loads(tmp_path, r50_panoptic, capsys):
    official = official_detr_state_dict(num_classes=4, num_queries=20)
    src, out = tmp_path / "detr-r50-panoptic.pth", tmp_path / "converted.pth"
    torch.save({"model": official, "args": argparse.Namespace(lr=1e-4)}, src)  # as DETR saves
    assert load_checkpoint(str(src)).keys() == official.keys()
    args = ["--config-file", R50_CONCRETE, str(src), str(out), "DATASETS.TEST", "()",
            "DATASETS.TRAIN", "()"]  # fmt: skip
    tool = _tool()
    tool.main(args)
    assert "all keys and shapes match" in capsys.readouterr().out
    DetectionCheckpointer(r50_panoptic).load(str(out))  # torch.load, weights_only
    torch.testing.assert_close(r50_panoptic.query_embed.weight, official["detr.query_embed.weight"])
    # a file that does not fit the config is refused, and nothing is written
    torch.save(dict(official, **{"detr.query_embed.weight": torch.zeros(100, 256)}), src)
    out.unlink()
    with pytest.raises(UserError, match="query_embed.weight"):
        tool.main(args)
    assert not out.exists()
    # a detection checkpoint initialises a panoptic model (mask head trained next)
    torch.save(official_detr_state_dict(num_classes=4, num_queries=20, panoptic=False), src)
    tool.main(args)
    assert out.exists()
