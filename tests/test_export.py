"""Export (issue 17): ONNX on onnxruntime and TorchScript give PyTorch's raw outputs and results
on images of several sizes; the tool end to end; the demo's --onnx path."""

import csv
import json
import os
import sys

import d2_detr  # noqa: F401  (compat first)

# isort: split
import numpy as np
import pytest
import torch
from cli_utils import run_tool
from detectron2.modeling import build_model
from model_utils import tiny_cfg
from PIL import Image

from d2_detr.export import ExportedDETR, RawInference, export_onnx, export_torchscript
from d2_detr.export.check import check_exported, compare_results, relative_error

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# not multiples of 32 (padding in the graph), one that is, landscape and portrait
SIZES = [(75, 117), (64, 96), (100, 61)]
TOL = 1e-4


def images(sizes=SIZES, seed=0):
    g = torch.Generator().manual_seed(seed)
    return [torch.randint(0, 256, (3, h, w), generator=g).float() for h, w in sizes]


def build(*opts):
    """A tiny model with random weights whose panoptic output is not empty: every query kept,
    classes biased away from "no object" (as an untrained model predicts it everywhere)."""
    cfg = tiny_cfg("MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD", "0.0", *opts)
    cfg.freeze()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    with torch.no_grad():
        model.class_embed.bias.copy_(torch.tensor([1.0, 0.5, 1.0, 0.0, -3.0]))
    return model, cfg


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    """Tiny model (dot-product head, MaskFormer merge, component split) exported both ways."""
    model, cfg = build()
    folder = tmp_path_factory.mktemp("export")
    sample = images([(90, 130)], seed=5)[0][None]
    paths = {"onnx": str(folder / "model.onnx"), "torchscript": str(folder / "model.ts")}
    export_onnx(model, paths["onnx"], sample, cfg=cfg)
    export_torchscript(model, paths["torchscript"], sample, cfg=cfg)
    return model, cfg, paths


def assert_equal_to_pytorch(rows, min_segments=1):
    """Raw outputs within TOL; same segments; panoptic maps identical except at arg-max near
    ties (random DETR-head models have exact ones: ReLU-dead regions give several queries the
    same logit), which must stay a small part of the image."""
    for row in rows:
        h, w = row["size"]
        for name, err in row["relative_error"].items():
            assert err <= TOL, (row["size"], name, err)
        assert not row["problems"], row
        assert row["segments"] >= min_segments, row  # a non-empty panoptic map was compared
        assert row["near_tie_pixels"] <= 0.02 * h * w, row


@pytest.mark.parametrize("fmt", ["onnx", "torchscript"])
def test_exported_equals_pytorch_on_three_sizes(tiny, fmt):
    """max |a - b| / max |b| <= 1e-4 for logits, boxes and mask logits; same segments and
    panoptic maps (pixels may differ only at arg-max near ties) at every size."""
    model, cfg, paths = tiny
    exported = ExportedDETR(cfg, paths[fmt])
    rows = check_exported(model, exported, images())
    assert [r["size"] for r in rows] == SIZES
    assert_equal_to_pytorch(rows)
    # the outputs follow the input size (mask logits at a quarter of the padded input)
    raw = exported.raw(images([(75, 117)])[0])
    assert raw["pred_masks"].shape == (1, 10, 96 // 4, 128 // 4)
    assert raw["pred_logits"].shape == (1, 10, 5)


def test_padding_follows_the_input_size(tiny):
    """An image and the same image with extra zero-normalised padding of its own: the model's
    padding mask hides the padding, so results of the unpadded image match PyTorch only if the
    graph rebuilt the mask for the new size (not the traced one)."""
    model, cfg, paths = tiny
    exported = ExportedDETR(cfg, paths["onnx"])
    image = images([(40, 50)], seed=3)[0]
    with torch.no_grad():
        ref = model.forward_raw(*_own_preprocess(model, image))
    got = exported.raw(image)
    for k in ref:
        assert relative_error(got[k], ref[k]) <= TOL, k
    # without the padding mask the outputs are different: the check can tell
    images_t, _ = _own_preprocess(model, image)
    with torch.no_grad():
        unmasked = model.forward_raw(images_t)
    assert relative_error(unmasked["pred_logits"], ref["pred_logits"]) > 1e-3


def _own_preprocess(model, image):
    images_l, mask = model.preprocess_image([{"image": image}])
    return images_l.tensor, mask


def test_detr_mask_head_and_merge_export():
    """DETR's own mask head (per-query attention maps + conv head), res5 tokens, DETR's panoptic
    merge: ONNX equals PyTorch too."""
    model, cfg = build(
        "MODEL.DETR.MASK_HEAD", "detr", "MODEL.DETR.IN_FEATURE", "res5",
        "MODEL.DETR.TEST.PANOPTIC_MERGE", "detr", "MODEL.DETR.TEST.COMPONENTS.ENABLED", "False",
        "MODEL.DETR.TEST.MIN_SEGMENT_AREA", "4",
    )  # fmt: skip
    with torch.no_grad():  # distinct attention maps per query (random ones are near uniform)
        model.query_embed.weight.mul_(10)
        model.bbox_attention.q_linear.weight.mul_(10)
    path = os.path.join(os.environ.get("TMPDIR", "/tmp"), f"d2_detr_export_{os.getpid()}.onnx")
    try:
        export_onnx(model, path, images([(70, 90)], seed=2)[0][None], cfg=cfg)
        rows = check_exported(model, ExportedDETR(cfg, path), images([(75, 117), (64, 96)]))
    finally:
        if os.path.exists(path):
            os.remove(path)
    assert_equal_to_pytorch(rows)


def test_relative_error_and_compare_results_can_fail():
    assert relative_error(torch.tensor([1.0, -3.0]), torch.tensor([1.0, -2.0])) == 0.5
    seg = torch.zeros((4, 5), dtype=torch.int32)
    seg[:2] = 1
    info = [{"id": 1, "category_id": 2, "isthing": True, "score": 0.9}]
    same = {"panoptic_seg": (seg, info)}
    assert compare_results(same, {"panoptic_seg": (seg.clone(), info)}) == ([], 0)
    flipped = seg.clone()
    flipped[3, 4] = 1
    margin = torch.ones((4, 5))
    problems, _ = compare_results(same, {"panoptic_seg": (flipped, info)}, margin=margin, delta=0.1)
    assert problems and "not near ties" in problems[0]
    margin[3, 4] = 0.01  # that pixel was a near tie: excused and counted
    assert compare_results(same, {"panoptic_seg": (flipped, info)}, margin=margin, delta=0.1) == (
        [],
        1,
    )
    other = [{"id": 1, "category_id": 1, "isthing": True, "score": 0.9}]
    assert compare_results(same, {"panoptic_seg": (seg, other)})[0]


def test_wrapper_traces_no_size_constant(tiny):
    """The TorchScript graph holds no constant of the trace-time size (90, 130 or its padded
    128, 160): sizes come from the input's shape."""
    model, _, _ = tiny
    traced = torch.jit.trace(RawInference(model), (images([(90, 130)])[0][None],))
    graph = str(traced.inlined_graph)
    for value in ("130", "160"):
        assert f"value={value}]" not in graph, value


def test_export_tool_writes_model_config_and_check(tmp_path):
    model, cfg = build()
    weights = tmp_path / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = tmp_path / "cfg.yaml"
    config.write_text(cfg.dump())
    out = tmp_path / "exported"
    proc = run_tool(
        "tools/export_model.py", "--config-file", config, "--format", "onnx", "--output", out,
        "MODEL.WEIGHTS", weights, "INPUT.MIN_SIZE_TEST", "64", "INPUT.MAX_SIZE_TEST", "100",
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout + proc.stderr[-3000:]
    assert sorted(os.listdir(out)) == ["config.yaml", "export.json", "model.onnx"]
    info = json.loads((out / "export.json").read_text())
    assert info["size_divisibility"] == 32 and info["outputs"][-1] == "pred_masks"
    assert len(info["check"]["images"]) == 3
    assert len({tuple(r["size"]) for r in info["check"]["images"]}) == 3
    for row in info["check"]["images"]:
        assert max(row["relative_error"].values()) <= TOL and not row["problems"]
    assert proc.stdout.count("check ") == 3
    # the written config reproduces the model's post-processing with the exported file
    from d2_detr.engine.setup import load_config

    exported = ExportedDETR(load_config(str(out / "config.yaml")), str(out / "model.onnx"))
    rows = check_exported(model, exported, images([(64, 85)]))
    assert_equal_to_pytorch(rows)


def test_demo_onnx_same_report_and_overlays(tmp_path):
    """demo/demo.py --onnx: the same defects.csv / images.csv and overlays as the PyTorch run."""
    sys.path.insert(0, os.path.join(ROOT, "demo"))
    from test_demo import SMALL_CLI, TINY, save_tiny_weights, write_photos

    import demo as demo_cli

    weights = save_tiny_weights(tmp_path / "model.pth")
    photos = tmp_path / "photos"
    write_photos(photos, ["a.jpg", "b.png"], size=(70, 100))
    cfg = tiny_cfg()
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(SMALL_CLI + ["MODEL.WEIGHTS", weights])
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    from d2_detr.engine.checkpointer import DETRCheckpointer

    DETRCheckpointer(model).load(weights)
    onnx_path = str(tmp_path / "model.onnx")
    export_onnx(model, onnx_path, images([(64, 91)])[0][None], cfg=cfg)
    common = ["--config-file", TINY, "--input", str(photos), "--no-progress"]
    common += ["--confidence-threshold", "0.0"]
    np.random.seed(0)  # Detectron2's Visualizer jitters colours with numpy's global RNG
    demo_cli.main(common + ["--output", str(tmp_path / "pt"), "MODEL.WEIGHTS", weights] + SMALL_CLI)
    np.random.seed(0)
    demo_cli.main(common + ["--output", str(tmp_path / "ox"), "--onnx", onnx_path] + SMALL_CLI)
    for name in ("defects.csv", "images.csv"):
        with open(tmp_path / "pt" / name) as f:
            expected = list(csv.DictReader(f))
        with open(tmp_path / "ox" / name) as f:
            got = list(csv.DictReader(f))
        assert got == expected, name
    assert len(expected) == 2
    with open(tmp_path / "pt" / "defects.csv") as f:
        assert len(list(csv.DictReader(f))) > 0  # defects were found and compared
    for name in ("a.jpg", "b.png"):
        a = np.asarray(Image.open(tmp_path / "pt" / "overlays" / name)).astype(int)
        b = np.asarray(Image.open(tmp_path / "ox" / "overlays" / name)).astype(int)
        assert np.abs(a - b).max() == 0, name
