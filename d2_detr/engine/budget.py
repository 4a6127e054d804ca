"""Train for a wall-clock budget and evaluate at fixed training-time marks (for convergence
curves: PQ against minutes of training, evaluation time excluded)."""

import logging
import time

from detectron2.utils.events import EventStorage

__all__ = ["train_for_time"]

logger = logging.getLogger(__name__)


def _pq(results):
    pan = results.get("panoptic_seg") if results else None
    if pan is None and results:  # several test datasets: the first one
        first = next(iter(results.values()))
        pan = first.get("panoptic_seg") if isinstance(first, dict) else None
    return pan


def train_for_time(
    trainer, minutes, eval_every_minutes, stop_at_pq=None, max_iter=None, lr_drop_at=None,
    lr_drop_factor=0.1,
):  # fmt: skip
    """
    Run ``trainer`` (a :class:`DETRTrainer` after ``resume_or_load``) until ``minutes`` of
    training time (evaluation excluded) or ``max_iter`` iterations, evaluating on
    ``cfg.DATASETS.TEST`` every ``eval_every_minutes`` and at the end.

    Args:
        stop_at_pq: stop early once the panoptic PQ reaches this value.
        lr_drop_at: fraction of ``minutes`` after which every learning rate is multiplied by
            ``lr_drop_factor`` (a step schedule by time, as DETR's drop by iteration); None: no
            drop beyond the trainer's own schedule.
    Returns:
        list of dicts: minutes, iteration, PQ, SQ, RQ, PQ_th, PQ_st (and the full results).
    """
    budget = 60.0 * minutes
    next_eval = 60.0 * eval_every_minutes
    train_time, curve = 0.0, []
    drop_at = None if lr_drop_at is None else budget * lr_drop_at
    cfg = trainer.cfg

    def evaluate():
        results = trainer.test(cfg, trainer.model)
        trainer.model.train()
        pan = _pq(results) or {}
        point = {"minutes": round(train_time / 60.0, 3), "iteration": trainer.iter}
        point.update({k: pan.get(k) for k in ("PQ", "SQ", "RQ", "PQ_th", "PQ_st")})
        point["results"] = results
        curve.append(point)
        logger.info(
            f"[train_for_time] {point['minutes']:.2f} min, iter {trainer.iter}: "
            f"PQ {point['PQ']}"
        )
        return point

    trainer.iter = trainer.start_iter
    with EventStorage(trainer.start_iter) as trainer.storage:
        trainer.before_train()
        try:
            while train_time < budget and (max_iter is None or trainer.iter < max_iter):
                start = time.perf_counter()
                trainer.before_step()
                trainer.run_step()
                trainer.after_step()
                train_time += time.perf_counter() - start
                trainer.iter += 1
                if drop_at is not None and train_time >= drop_at:
                    drop_at = None
                    _scale_learning_rates(trainer, lr_drop_factor)
                if train_time >= next_eval:
                    next_eval += 60.0 * eval_every_minutes
                    point = evaluate()
                    if stop_at_pq is not None and (point["PQ"] or 0) >= stop_at_pq:
                        break
            else:
                if not curve or curve[-1]["iteration"] != trainer.iter:
                    evaluate()
        finally:
            trainer.iter -= 1  # the last finished iteration, as Detectron2's loop leaves it
            trainer.after_train()
    return curve


def _scale_learning_rates(trainer, factor):
    """Multiply the scheduler's base learning rates (it sets every lr from them each step)."""
    scheduler = trainer.scheduler
    scheduler.base_lrs = [lr * factor for lr in scheduler.base_lrs]
    for group in trainer.optimizer.param_groups:
        group["lr"] *= factor
    logger.info(f"[train_for_time] iteration {trainer.iter}: learning rates x {factor}")
