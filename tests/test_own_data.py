"""The README's "train on your own data" steps, followed on a small generated set:
images + masks -> convert -> register -> train a few iterations -> evaluate."""

import json
import os
import subprocess
import sys

import d2_detr  # noqa: F401  (compat first)

# isort: split
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG

from d2_detr.data.datasets import register_panoptic_dataset
from d2_detr.engine import DETRTrainer

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_CONFIG
FAST = SMALL_IMAGES + SMALL_MODEL


def run(args, **kwargs):
    proc = subprocess.run(
        [sys.executable] + args, cwd=ROOT, capture_output=True, text=True, timeout=300, **kwargs
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    return proc.stdout


def script(data_cli, name, *args):
    """``datasets/<name>.py args`` through its ``main(argv)`` in this process (the command line
    without the interpreter start-up; the scripts run as processes in the bad-input tests)."""
    assert data_cli(name).main([str(a) for a in args]) == 0


def test_own_images_with_masks_then_coco_panoptic(tmp_path, data_cli):
    # 1. your images and one grey mask per defect class: RAW/images/<stem>.jpg,
    #    RAW/masks/<stem><class>.png (here drawn by the synthetic generator)
    raw = tmp_path / "raw"
    script(data_cli, "make_synthetic_concrete", "--out", raw, "--num", "6", "--width", "96",
           "--height", "64", "--seed", "5")  # fmt: skip
    # 2. convert into $DETECTRON2_DATASETS/concrete_defects (registered by name on import)
    d2_root = tmp_path / "d2datasets"
    dataset = d2_root / "concrete_defects"
    script(data_cli, "prepare_concrete_defects", "--raw", raw, "--out", dataset,
           "--val-fraction", "0.34", "--no-progress")  # fmt: skip
    assert (dataset / "annotations" / "panoptic_val.json").is_file()

    # 3. train and evaluate with tools/train_net.py on the registered names
    env = dict(os.environ, DETECTRON2_DATASETS=str(d2_root), OMP_NUM_THREADS="2")
    out = tmp_path / "train"
    log = run(
        ["tools/train_net.py", "--config-file", TINY, "OUTPUT_DIR", str(out),
         "DATASETS.TRAIN", "('concrete_defects_train_panoptic',)",
         "DATASETS.TEST", "('concrete_defects_val_panoptic',)", "SOLVER.MAX_ITER", "3"] + FAST,
        env=env,
    )  # fmt: skip
    assert "Panoptic quality:\nconcrete_defects_val_panoptic: PQ " in log
    assert (out / "model_final.pth").is_file()

    # 4. any COCO-panoptic dataset (yours, or COCO itself): register it under your own name
    #    with the Python API, then train / evaluate as usual
    ann = dataset / "annotations"
    categories = json.load(open(ann / "panoptic_val.json"))["categories"]
    register_panoptic_dataset(
        "my_defects_val",
        categories,
        image_root=str(dataset / "val"),
        panoptic_root=str(dataset / "panoptic_val"),
        panoptic_json=str(ann / "panoptic_val.json"),
        instances_json=str(ann / "instances_val.json"),
    )
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(
        FAST
        + ["DATASETS.TEST", "('my_defects_val',)", "DATASETS.TRAIN", "('my_defects_val',)",
           "MODEL.WEIGHTS", str(out / "model_final.pth"), "OUTPUT_DIR", str(tmp_path / "eval")]
    )  # fmt: skip
    model = DETRTrainer.build_model(cfg)
    DetectionCheckpointer(model).load(cfg.MODEL.WEIGHTS)
    results = DETRTrainer.test(cfg, model)
    assert set(results) >= {"panoptic_seg", "bbox", "segm"}
    assert 0.0 <= results["panoptic_seg"]["PQ"] <= 100.0
