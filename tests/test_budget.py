"""TimeBudget hook: evaluation marks by training time, a clean stop at the budget or a target PQ,
and the lr drop by time, inside Detectron2's own training loop (a fake clock: no timing)."""

import d2_detr  # noqa: F401  # isort: skip  (compat first)
import torch
from detectron2.engine import SimpleTrainer, hooks

from d2_detr.engine import StopTraining, TimeBudget


class FakeClock:
    """Advances ``step_s`` seconds each time a training step runs (``tick``)."""

    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


class _Trainer(SimpleTrainer):
    """SimpleTrainer on a 1-parameter model; every step takes ``step_s`` fake seconds; catches
    StopTraining as DETRTrainer.train does; ``test`` returns the next PQ of ``pq``."""

    def __init__(self, clock, step_s=1.0, pq=(10.0, 20.0, 30.0, 40.0, 50.0), max_iter=1000):
        model = torch.nn.Linear(1, 1)
        data = iter(lambda: torch.ones(2, 1), None)
        super().__init__(model, data, torch.optim.SGD(model.parameters(), lr=1.0))
        self.model = _Loss(model)
        self.clock, self.step_s, self.pq = clock, step_s, list(pq)
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(self.optimizer, lambda it: 1.0)
        self.cfg, self.max_iter, self.lrs, self.evaluated_at = None, max_iter, [], []

    def run_step(self):
        self.lrs.append(self.optimizer.param_groups[0]["lr"])
        super().run_step()
        self.clock.now += self.step_s

    def test(self, cfg, model):
        self.evaluated_at.append(self.iter)
        self.clock.now += 1000.0  # evaluation time is not training time
        pq = self.pq.pop(0)
        return {"panoptic_seg": {"PQ": pq, "SQ": 0, "RQ": 0, "PQ_th": 0, "PQ_st": 0}}

    def train_all(self):
        try:
            self.train(0, self.max_iter)
        except StopTraining:
            pass


class _Loss(torch.nn.Module):
    def __init__(self, linear):
        super().__init__()
        self.linear = linear

    def forward(self, x):
        return {"loss": self.linear(x).pow(2).mean()}


def _run(budget, **kwargs):
    clock = FakeClock()
    trainer = _Trainer(clock, **kwargs)
    budget.clock = clock
    trainer.register_hooks([hooks.LRScheduler(), budget])
    trainer.train_all()
    return trainer, budget


def test_evaluates_on_time_marks_drops_the_lr_once_and_stops_at_the_budget():
    # 1 s per step; budget 60 s; evaluations every 24 s of training; lr x 0.1 after 30 s
    trainer, budget = _run(TimeBudget(minutes=1.0, eval_every_minutes=0.4, lr_drop_at=0.5))
    assert len(trainer.lrs) == 60  # stopped after 60 steps, not max_iter (1000)
    assert trainer.evaluated_at == [23, 47, 59]  # after 24 and 48 s, and at the end
    assert [p["PQ"] for p in budget.curve] == [10.0, 20.0, 30.0]
    assert [p["minutes"] for p in budget.curve] == [0.4, 0.8, 1.0]  # evaluation time excluded
    assert [p["iteration"] for p in budget.curve] == [24, 48, 60]
    # the lr drops once, after 30 s of training, and stays dropped
    first_low = trainer.lrs.index(0.1)
    assert first_low == 30
    assert set(trainer.lrs[:30]) == {1.0}
    assert all(abs(lr - 0.1) < 1e-12 for lr in trainer.lrs[30:])


def test_stops_at_the_target_pq_without_dropping_the_lr():
    trainer, budget = _run(TimeBudget(minutes=10.0, eval_every_iters=5, stop_at_pq=30.0))
    assert [p["PQ"] for p in budget.curve] == [10.0, 20.0, 30.0]
    assert trainer.evaluated_at == [4, 9, 14]
    assert len(trainer.lrs) == 15 and set(trainer.lrs) == {1.0}


def test_without_a_time_limit_max_iter_ends_training_with_a_final_evaluation():
    trainer, budget = _run(TimeBudget(eval_every_iters=4), max_iter=10)
    assert trainer.evaluated_at == [3, 7, 9]
    assert len(trainer.lrs) == 10
