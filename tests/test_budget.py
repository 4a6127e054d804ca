"""train_for_time: evaluation marks by training time, early stop, and the lr drop by time."""

import d2_detr  # noqa: F401  # isort: skip  (compat first)
import time
from types import SimpleNamespace

import torch

from d2_detr.engine.budget import train_for_time


class FakeTrainer:
    """The trainer surface train_for_time uses; each step takes ``step_s`` seconds."""

    def __init__(self, step_s=0.01, pq_per_eval=(10.0, 20.0, 30.0, 40.0, 50.0)):
        self.cfg = SimpleNamespace()
        self.start_iter = 0
        self.step_s = step_s
        self.pq = list(pq_per_eval)
        self.model = torch.nn.Linear(1, 1)
        self.optimizer = torch.optim.SGD(self.model.parameters(), lr=1.0)
        self.scheduler = SimpleNamespace(base_lrs=[1.0])
        self.lrs, self.events = [], []

    def before_train(self):
        self.events.append("before_train")

    def after_train(self):
        self.events.append("after_train")

    def before_step(self):
        pass

    def after_step(self):  # as Detectron2's LRScheduler hook: lr from the base lr every step
        self.optimizer.param_groups[0]["lr"] = self.scheduler.base_lrs[0]

    def run_step(self):
        time.sleep(self.step_s)
        self.lrs.append(self.optimizer.param_groups[0]["lr"])

    def test(self, cfg, model):
        return {"panoptic_seg": {"PQ": self.pq.pop(0), "SQ": 0, "RQ": 0, "PQ_th": 0, "PQ_st": 0}}


def test_evaluates_on_time_marks_and_drops_the_lr_once():
    trainer = FakeTrainer()
    curve = train_for_time(trainer, minutes=0.01, eval_every_minutes=0.004, lr_drop_at=0.5)
    # evaluations at 0.24 s and 0.48 s of training, and at the end (0.6 s)
    assert [p["PQ"] for p in curve] == [10.0, 20.0, 30.0]
    assert [p["minutes"] for p in curve] == sorted(p["minutes"] for p in curve)
    assert curve[-1]["minutes"] >= 0.01
    lrs = trainer.lrs
    first_low = lrs.index(0.1)
    assert set(lrs[:first_low]) == {1.0} and set(lrs[first_low:]) == {0.1}  # dropped once
    assert 0.4 <= first_low / len(lrs) <= 0.6  # half-way through the budget
    assert trainer.events == ["before_train", "after_train"]
    assert trainer.iter == len(lrs) - 1  # the last finished iteration, as Detectron2 leaves it


def test_stops_at_the_target_pq_without_dropping_the_lr():
    trainer = FakeTrainer()
    curve = train_for_time(trainer, minutes=1.0, eval_every_minutes=0.002, stop_at_pq=30.0)
    assert [p["PQ"] for p in curve] == [10.0, 20.0, 30.0]
    assert set(trainer.lrs) == {1.0}
