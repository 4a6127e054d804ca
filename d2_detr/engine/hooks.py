"""``TimeBudget``: a Detectron2 hook that trains for a wall-clock budget, evaluates at fixed
training-time (or iteration) marks, drops the learning rate once, and stops training cleanly
(for convergence curves: PQ against minutes of training, evaluation time excluded)."""

import logging
import time

from detectron2.engine import HookBase

__all__ = ["StopTraining", "TimeBudget", "panoptic_quality"]

logger = logging.getLogger(__name__)


class StopTraining(BaseException):
    """Raised by a hook to end ``trainer.train()`` early (caught by ``DETRTrainer.train``).

    A ``BaseException`` so that Detectron2's loop does not log it as a training failure; its
    ``finally`` still runs every hook's ``after_train``."""


def panoptic_quality(results):
    """The ``panoptic_seg`` dict of evaluation results (the first dataset's if several)."""
    pan = results.get("panoptic_seg") if results else None
    if pan is None and results:
        first = next(iter(results.values()))
        pan = first.get("panoptic_seg") if isinstance(first, dict) else None
    return pan or {}


class TimeBudget(HookBase):
    """
    Train until ``minutes`` of training time (the time between this hook's ``before_step`` and
    ``after_step``: register it last so that other hooks' work counts; its own evaluations do
    not) or the trainer's ``max_iter``, whichever comes first.

    Args:
        minutes: training-time budget; None: no time limit.
        lr_drop_at: fraction of ``minutes`` after which every learning rate is multiplied by
            ``lr_drop_factor`` once (DETR's step schedule, by time); None: no drop.
        eval_every_minutes / eval_every_iters: evaluate at these training-time / iteration
            marks (and always at the end); None: only at the end.
        stop_at_pq: stop once an evaluation's PQ reaches this value.
        evaluate: callable trainer -> results; default ``trainer.test(trainer.cfg,
            trainer.model)`` (the model is put back in training mode after).
        clock: seconds counter (``time.perf_counter``; tests pass a fake clock).
    After training, ``self.curve`` lists dicts: minutes, iteration, PQ, SQ, RQ, PQ_th, PQ_st,
    results.
    """

    def __init__(
        self, minutes=None, lr_drop_at=None, lr_drop_factor=0.1, eval_every_minutes=None,
        eval_every_iters=None, stop_at_pq=None, evaluate=None, clock=time.perf_counter,
    ):  # fmt: skip
        self.budget = None if minutes is None else 60.0 * minutes
        self.drop_at = None if lr_drop_at is None or minutes is None else self.budget * lr_drop_at
        self.lr_drop_factor = lr_drop_factor
        self.eval_every = None if eval_every_minutes is None else 60.0 * eval_every_minutes
        self.eval_every_iters = eval_every_iters
        self.stop_at_pq = stop_at_pq
        self._evaluate = evaluate
        self.clock = clock
        self.train_time, self.curve = 0.0, []
        self._next_eval = self.eval_every
        self._start = None

    def before_step(self):
        self._start = self.clock()

    def after_step(self):
        trainer = self.trainer
        self.train_time += self.clock() - self._start
        if self.drop_at is not None and self.train_time >= self.drop_at:
            self.drop_at = None
            self._scale_learning_rates(self.lr_drop_factor)
        out_of_time = self.budget is not None and self.train_time >= self.budget
        last = trainer.iter >= trainer.max_iter - 1
        due = (self._next_eval is not None and self.train_time >= self._next_eval) or (
            self.eval_every_iters and (trainer.iter + 1) % self.eval_every_iters == 0
        )
        if due or out_of_time or last:
            while self._next_eval is not None and self._next_eval <= self.train_time:
                self._next_eval += self.eval_every
            point = self._evaluate_now()
            if self.stop_at_pq is not None and (point["PQ"] or 0) >= self.stop_at_pq:
                logger.info(f"[TimeBudget] PQ {point['PQ']:.1f} >= {self.stop_at_pq}: stop")
                raise StopTraining()
        if out_of_time and not last:
            logger.info(f"[TimeBudget] {self.train_time / 60:.2f} min of training: stop")
            raise StopTraining()

    def _evaluate_now(self):
        trainer = self.trainer
        if self._evaluate is not None:
            results = self._evaluate(trainer)
        else:
            results = trainer.test(trainer.cfg, trainer.model)
        trainer.model.train()
        pan = panoptic_quality(results)
        point = {"minutes": round(self.train_time / 60.0, 3), "iteration": trainer.iter + 1}
        point.update({k: pan.get(k) for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")})
        point["results"] = results
        self.curve.append(point)
        logger.info(
            f"[TimeBudget] {point['minutes']:.2f} min, {point['iteration']} iterations: "
            f"PQ {point['PQ']}"
        )
        return point

    def _scale_learning_rates(self, factor):
        """Multiply the scheduler's base learning rates (it sets every lr from them each step)
        and the optimizer's current ones."""
        trainer = self.trainer
        trainer.scheduler.base_lrs = [lr * factor for lr in trainer.scheduler.base_lrs]
        for group in trainer.optimizer.param_groups:
            group["lr"] *= factor
        logger.info(f"[TimeBudget] iteration {trainer.iter}: learning rates x {factor}")
