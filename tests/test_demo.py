"""demo/demo.py (overlays + defect report for folders of photos) and demo/run_demo.py
(make demo) end to end."""

import contextlib
import csv
import io
import json
import logging
import os
import subprocess
import sys
import types

import d2_detr  # noqa: F401  (compat first)

# isort: split
import numpy as np
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.modeling import build_model
from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG
from PIL import Image
from test_mapper import write_tiny_panoptic_dataset

from d2_detr.data.datasets import register_concrete_defects
from d2_detr.utils.cli import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "demo"))
from predictor import collect_inputs, read_photo  # noqa: E402

import demo as demo_cli  # noqa: E402

TINY = TINY_CONFIG
SMALL = SMALL_IMAGES[4:] + SMALL_MODEL + [
    "DATASETS.TEST", "('demotest_val_panoptic',)", "MODEL.DETR.TEST.OVERLAP_THRESHOLD", "0.0",
]  # fmt: skip
# the same model for subprocess runs (the tiny config's default dataset names the classes)
SMALL_CLI = SMALL_IMAGES[4:] + SMALL_MODEL + ["MODEL.DETR.TEST.OVERLAP_THRESHOLD", "0.0"]


def save_tiny_weights(path, opts=SMALL_CLI):
    """An untrained tiny model biased towards defect classes and covering masks (so segments
    appear), saved through Detectron2's checkpointer as ``path`` (.pth)."""
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(list(opts))
    torch.manual_seed(0)
    model = build_model(cfg)
    with torch.no_grad():
        model.class_embed.weight.mul_(0.1)
        model.class_embed.bias.copy_(torch.tensor([3.0, 1.0, 3.0, -2.0, -5.0]))
        # masks cover pixels (logit > 0): constant parts of pixel and query embeddings
        for name, p in model.named_parameters():
            if name.endswith("mask_features.bias") or name.endswith("mask_embed.layers.2.bias"):
                p.fill_(1.0)
    folder, name = os.path.split(str(path))
    DetectionCheckpointer(model, save_dir=folder).save(os.path.splitext(name)[0])
    return str(path)


def write_photos(folder, names, size=(64, 96), seed=0):
    """Noise photos (JPEG / PNG by extension) at ``folder/name``; returns their paths."""
    rng = np.random.default_rng(seed)
    paths = []
    for name in names:
        path = os.path.join(folder, name)
        os.makedirs(os.path.dirname(path), exist_ok=True)
        Image.fromarray(rng.integers(0, 256, (*size, 3), dtype=np.uint8)).save(path)
        paths.append(path)
    return paths


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_weights(tmp_path_factory.mktemp("demo_weights") / "model.pth")


@pytest.fixture(scope="module")
def images(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo_data")
    write_tiny_panoptic_dataset(str(root), "val", 3, seed=3)
    register_concrete_defects(str(root), name_prefix="demotest", splits=("val",))
    return str(root / "val")


def test_collect_inputs(images, tmp_path):
    files = sorted(os.listdir(images))
    one = os.path.join(images, files[0])
    by_folder = collect_inputs([images])
    assert by_folder == [(os.path.join(images, f), f) for f in files]
    assert collect_inputs([one, os.path.join(images, "*.jpg")]) == by_folder
    # recursive, extensions in any case, keys relative to the common root of the inputs
    write_photos(tmp_path, ["a/x.JPG", "a/deep/y.png", "b/x.jpg"])
    (tmp_path / "b" / "notes.txt").write_text("not a photo")
    got = collect_inputs([str(tmp_path / "a"), str(tmp_path / "b")])
    assert [k for _, k in got] == ["a/x.JPG", "a/deep/y.png", "b/x.jpg"]
    assert [k for _, k in collect_inputs([str(tmp_path / "a")])] == ["x.JPG", "deep/y.png"]
    assert [k for _, k in collect_inputs([str(tmp_path / "*" / "x.*")])] == ["a/x.JPG", "b/x.jpg"]
    with pytest.raises(UserError, match="nothing_here"):
        collect_inputs([str(tmp_path / "nothing_here*.jpg")])
    with pytest.raises(UserError, match="no such file"):
        collect_inputs([str(tmp_path / "missing.jpg")])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(UserError, match="holds no image"):
        collect_inputs([str(tmp_path / "empty")])


def test_read_photo_applies_exif_orientation(tmp_path):
    image = Image.new("RGB", (40, 20), (255, 0, 0))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise to display
    image.save(tmp_path / "rot.jpg", exif=exif.tobytes())
    assert read_photo(str(tmp_path / "rot.jpg")).shape == (40, 20, 3)
    (tmp_path / "cut.jpg").write_bytes((tmp_path / "rot.jpg").read_bytes()[:200])
    with pytest.raises(OSError, match="not a readable image"):
        read_photo(str(tmp_path / "cut.jpg"))


def test_demo_writes_overlays_and_consistent_report(images, tmp_path):
    weights = save_tiny_weights(tmp_path / "model.pth", SMALL)
    out = tmp_path / "out"
    report = demo_cli.main(
        ["--config-file", TINY, "--input", images, "--output", str(out),
         "--confidence-threshold", "0.0", "--no-progress", "MODEL.WEIGHTS", weights]
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
    assert all(r["status"] == "ok" for r in per_image)
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


def run_in_process(argv):
    """``run_cli(demo.main, argv)`` with its exit code and output, like a subprocess result
    (the command-line path without the interpreter start-up)."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(demo_cli.main, argv)
        except SystemExit as e:
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@contextlib.contextmanager
def captured_log(name):
    """The records of logger ``name`` as text (Detectron2's ``setup_logger`` binds its handlers
    to the streams of the first call and stops propagation: redirecting stdout misses them)."""
    stream = io.StringIO()
    handler = logging.StreamHandler(stream)
    handler.setLevel(logging.WARNING)
    logger = logging.getLogger(name)
    logger.addHandler(handler)
    try:
        yield stream
    finally:
        logger.removeHandler(handler)


def _read_csv(path):
    with open(path) as f:
        return list(csv.DictReader(f))


def test_corrupt_photos_skipped_and_listed(weights, tmp_path):
    """One folder: good photos among a truncated JPEG, a 0-byte file, a text file named .png,
    a folder named .jpg and a dangling link: the good ones are reported, the bad ones listed
    as unreadable, exit 0."""
    photos = tmp_path / "photos"
    good = write_photos(photos, ["good1.jpg", "sub/good2.png"])
    data = open(good[0], "rb").read()
    (photos / "truncated.jpg").write_bytes(data[: len(data) // 3])
    (photos / "empty.jpg").write_bytes(b"")
    (photos / "text.png").write_text("not an image")
    os.makedirs(photos / "folder.jpg")
    os.symlink(tmp_path / "gone.jpg", photos / "dangling.jpg")
    out = tmp_path / "out"
    with captured_log("d2_detr") as log:
        proc = run_in_process(
            ["--config-file", TINY, "--input", str(photos), "--output", str(out),
             "--no-progress", "MODEL.WEIGHTS", weights, *SMALL_CLI]
        )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["image"]: r for r in _read_csv(out / "images.csv")}
    bad = ["dangling.jpg", "empty.jpg", "folder.jpg", "text.png", "truncated.jpg"]
    assert sorted(rows) == sorted(bad + ["good1.jpg", "sub/good2.png"])
    for name in bad:
        assert rows[name]["status"] == "unreadable" and rows[name]["reason"], name
        assert f"skipped {name}" in log.getvalue()  # warned
    for name in ("good1.jpg", "sub/good2.png"):
        assert rows[name]["status"] == "ok" and rows[name]["height"] == "64"
        assert (out / "overlays" / name).is_file()
    report = json.load(open(out / "defect_report.json"))
    assert report["totals"]["images_unreadable"] == len(bad)
    assert "empty" in rows["empty.jpg"]["reason"]


def test_all_unreadable_writes_nothing(weights, tmp_path):
    photos = tmp_path / "photos"
    os.makedirs(photos)
    (photos / "a.jpg").write_bytes(b"")
    (photos / "b.jpg").write_text("no")
    proc = run_in_process(
        ["--config-file", TINY, "--input", str(photos), "--output", str(tmp_path / "out"),
         "--no-progress", "MODEL.WEIGHTS", weights, *SMALL_CLI]
    )  # fmt: skip
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "a.jpg" in proc.stderr and "b.jpg" in proc.stderr
    assert not (tmp_path / "out").exists()


def test_same_names_in_two_folders_stay_apart(weights, tmp_path):
    """a/00044.jpg and b/00044.jpg (different photos): two rows, two overlays."""
    write_photos(tmp_path / "in" / "a", ["00044.jpg"], seed=1)
    write_photos(tmp_path / "in" / "b", ["00044.jpg"], size=(80, 72), seed=2)
    out = tmp_path / "out"
    proc = run_in_process(
        ["--config-file", TINY, "--input", str(tmp_path / "in" / "a"), str(tmp_path / "in" / "b"),
         "--output", str(out), "--no-progress", "--confidence-threshold", "0",
         "MODEL.WEIGHTS", weights, *SMALL_CLI]
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-3000:]
    rows = {r["image"]: r for r in _read_csv(out / "images.csv")}
    assert sorted(rows) == ["a/00044.jpg", "b/00044.jpg"]
    assert (rows["a/00044.jpg"]["height"], rows["b/00044.jpg"]["height"]) == ("64", "80")
    a = np.asarray(Image.open(out / "overlays" / "a" / "00044.jpg"))
    b = np.asarray(Image.open(out / "overlays" / "b" / "00044.jpg"))
    assert a.shape == (64, 96, 3) and b.shape == (80, 72, 3)
    for r in _read_csv(out / "defects.csv"):  # every defect row names its own photo
        assert r["image"] in rows
        assert int(r["bbox_y1"]) <= int(rows[r["image"]]["height"])


def test_large_photo_is_tiled_at_full_resolution(weights, tmp_path):
    """A photo larger than 2x the test size runs on tiles; the label map and the report are at
    the photo's full size, and --tile 0 gives the same size without tiles."""
    write_photos(tmp_path / "in", ["big.png"], size=(300, 420))
    for tile in ("160", "0"):
        out = tmp_path / f"out{tile}"
        proc = run_in_process(
            ["--config-file", TINY, "--input", str(tmp_path / "in"), "--output", str(out),
             "--tile", tile, "--tile-overlap", "32", "--confidence-threshold", "0",
             "MODEL.WEIGHTS", weights, *SMALL_CLI]
        )  # fmt: skip
        assert proc.returncode == 0, proc.stderr[-3000:]
        assert ("tiles" in proc.stdout + proc.stderr) == (tile != "0")  # the tile progress bar
        (row,) = _read_csv(out / "images.csv")
        assert (row["height"], row["width"]) == ("300", "420")
        for r in _read_csv(out / "defects.csv"):
            assert int(r["bbox_x1"]) <= 420 and int(r["bbox_y1"]) <= 300


def test_run_demo_smoke(tmp_path):
    """``make demo`` end to end, at toy sizes: every stage runs and writes what it announces
    (2 iterations: a checkpoint, an evaluation during training, the lr drop and the final one)."""
    out = tmp_path / "demo"
    env = dict(os.environ, OMP_NUM_THREADS="2")
    proc = subprocess.run(
        [sys.executable, "demo/run_demo.py", "--output", str(out), "--num-images", "8",
         "--max-iter", "2"],
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
    overlays = [
        os.path.relpath(os.path.join(d, f), out / "predictions" / "overlays")
        for d, _, files in os.walk(out / "predictions" / "overlays")
        for f in files
    ]
    # the bundled real photos, apart from the synthetic images of the same names
    real = [p for p in overlays if p.endswith(("00044.jpg", "01015.jpg")) and "images" in p]
    assert len(real) == 2, overlays


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
    with pytest.raises((FileNotFoundError, UserError), match="metrics.json"):
        plot_metrics(str(tmp_path / "nothing"))
