"""demo/demo.py (overlays + defect report) and demo/run_demo.py (make demo) end to end."""

import csv
import json
import os
import subprocess
import sys

import d2_detr  # noqa: F401  (compat first)

# isort: split
import numpy as np
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG
from PIL import Image
from test_mapper import write_tiny_panoptic_dataset

from d2_detr.data.datasets import register_concrete_defects

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "demo"))
from predictor import expand_inputs  # noqa: E402

import demo as demo_cli  # noqa: E402

TINY = TINY_CONFIG
SMALL = SMALL_IMAGES[4:] + SMALL_MODEL + [
    "DATASETS.TEST", "('demotest_val_panoptic',)", "MODEL.DETR.TEST.OVERLAP_THRESHOLD", "0.0",
]  # fmt: skip


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    write_tiny_panoptic_dataset(str(root), "val", 3, seed=3)
    register_concrete_defects(str(root), name_prefix="demotest", splits=("val",))
    return str(root / "val")


def test_expand_inputs(images, tmp_path):
    files = sorted(os.listdir(images))
    assert expand_inputs([images]) == [os.path.join(images, f) for f in files]
    one = os.path.join(images, files[0])
    assert expand_inputs([one, os.path.join(images, "*.jpg")]) == expand_inputs([images])
    with pytest.raises(FileNotFoundError, match="nothing_here"):
        expand_inputs([str(tmp_path / "nothing_here*.jpg")])


def test_demo_writes_overlays_and_consistent_report(images, tmp_path):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(SMALL)
    torch.manual_seed(0)
    weights = tmp_path / "model.pth"
    model = build_model(cfg)
    with torch.no_grad():  # untrained, but biased towards defect classes: segments appear
        model.class_embed.weight.mul_(0.1)
        model.class_embed.bias.copy_(torch.tensor([3.0, 1.0, 3.0, -2.0, -5.0]))
        # masks cover pixels (logit > 0): constant parts of pixel and query embeddings
        model.pixel_decoder.mask_features.bias.fill_(1.0)
        model.mask_embed.layers[-1].bias.fill_(1.0)
    torch.save({"model": model.state_dict()}, weights)

    out = tmp_path / "out"
    report = demo_cli.main(
        ["--config-file", TINY, "--input", images, "--output", str(out),
         "--confidence-threshold", "0.0", "--no-progress", "MODEL.WEIGHTS", str(weights)]
        + SMALL
    )  # fmt: skip
    names = sorted(os.listdir(images))
    overlays = sorted(os.listdir(out / "overlays"))
    assert overlays == names
    for name in names:
        overlay = np.asarray(Image.open(out / "overlays" / name))
        assert overlay.shape == (64, 96, 3)
        original = np.asarray(Image.open(os.path.join(images, name)))
        assert np.abs(overlay.astype(int) - original).mean() > 1  # something was drawn

    with open(out / "defects.csv") as f:
        defects = list(csv.DictReader(f))
    with open(out / "images.csv") as f:
        per_image = list(csv.DictReader(f))
    data = json.load(open(out / "defect_report.json"))
    assert [r["image"] for r in per_image] == names
    assert len(defects) == data["totals"]["defects"] == len(report.defects) > 0
    assert sum(int(r["num_defects"]) for r in per_image) == len(defects)
    for r in defects:
        assert r["class"] in ("rebar", "spall", "crack")
        area = int(r["area_px"])
        assert 0 < area <= 64 * 96
        assert float(r["area_pct"]) == pytest.approx(100 * area / (64 * 96), abs=1e-3)
        w = int(r["bbox_x1"]) - int(r["bbox_x0"])
        h = int(r["bbox_y1"]) - int(r["bbox_y0"])
        assert 0 < w * h and area <= w * h and 0.0 <= float(r["score"]) <= 1.0


def test_run_demo_smoke(tmp_path):
    """``make demo`` end to end, at toy sizes: every stage runs and writes what it announces."""
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "demo/run_demo.py", "--output", str(out), "--num-images", "8",
         "--max-iter", "4"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert "PQ" in proc.stdout and "What was done and where to look" in proc.stdout
    for path in [
        "train/model_final.pth", "train/metrics.json", "losses.png", "eval.log",
        "predictions/defects.csv", "predictions/images.csv", "predictions/defect_report.json",
        "data/synthetic_concrete/annotations/panoptic_val.json",
        "data/concrete_defects/annotations/panoptic_train.json",
    ]:  # fmt: skip
        assert (out / path).is_file(), path
    overlays = os.listdir(out / "predictions" / "overlays")
    assert "00044.jpg" in overlays and "01015.jpg" in overlays  # the bundled real photos


def test_plot_metrics(tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "tools"))
    from plot_metrics import plot_metrics, read_metrics

    lines = [
        {"iteration": 19, "total_loss": 9.0, "loss_ce": 1.0, "loss_ce_0": 1.1, "lr": 1e-4},
        {"iteration": 39, "total_loss": 5.0, "loss_ce": 0.5, "loss_ce_0": 0.6, "lr": 1e-4},
        {"iteration": 39, "panoptic_seg/PQ": 12.5, "bbox/AP": 3.0},
    ]
    text = "\n".join(json.dumps(x) for x in lines) + '\n{"iteration": 59, "total_lo'
    (tmp_path / "metrics.json").write_text(text)  # last line cut by a kill: ignored
    records = read_metrics(str(tmp_path / "metrics.json"))
    assert sorted(records) == [19, 39] and records[39]["panoptic_seg/PQ"] == 12.5
    paths = plot_metrics(str(tmp_path), str(tmp_path / "plots"))
    assert [os.path.basename(p) for p in paths] == ["losses.png", "eval.png"]
    for p in paths:
        assert Image.open(p).size[0] > 300
    with pytest.raises(FileNotFoundError, match="metrics.json"):
        plot_metrics(str(tmp_path / "nothing"))
