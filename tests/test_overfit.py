"""It learns: the tiny config trained on the 2 bundled real images reaches PQ >= 70 on them
within 10 CPU-minutes (training time; evaluation excluded)."""

import os
import subprocess
import sys
import time

import d2_detr  # noqa: F401  (compat first)

# isort: split
from detectron2.config import get_cfg

from d2_detr.data.datasets import register_concrete_defects
from d2_detr.engine import DETRTrainer
from d2_detr.engine.budget import train_for_time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(ROOT, "configs", "ConcreteDefects", "detr_tiny_cpu.yaml")


def test_overfit_two_real_images(tmp_path):
    data = tmp_path / "real"
    subprocess.run(
        [sys.executable, "datasets/prepare_concrete_defects.py", "--raw",
         "datasets/concrete_defects_sample", "--out", str(data), "--val-fraction", "0",
         "--no-progress"],
        cwd=ROOT, check=True, stdout=subprocess.DEVNULL,
    )  # fmt: skip
    register_concrete_defects(str(data), name_prefix="overfit_real", splits=("train",))
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(
        [
            "DATASETS.TRAIN", "('overfit_real_train_panoptic',)",
            "DATASETS.TEST", "('overfit_real_train_panoptic',)",
            "OUTPUT_DIR", str(tmp_path / "out"), "SOLVER.MAX_ITER", "100000",
            "SOLVER.STEPS", "(99999,)", "SOLVER.CHECKPOINT_PERIOD", "100000",
            "TEST.EVAL_PERIOD", "0",
        ]  # fmt: skip
    )
    trainer = DETRTrainer(cfg)
    trainer.resume_or_load(resume=False)
    start = time.time()
    curve = train_for_time(trainer, minutes=10, eval_every_minutes=0.5, stop_at_pq=70)
    summary = [(p["minutes"], p["iteration"], round(p["PQ"], 1)) for p in curve]
    print(f"overfit curve (minutes, iteration, PQ): {summary}; wall {time.time() - start:.0f} s")
    best = max(p["PQ"] for p in curve)
    assert best >= 70, f"PQ {best:.1f} < 70 after {curve[-1]['minutes']:.1f} min: {summary}"
