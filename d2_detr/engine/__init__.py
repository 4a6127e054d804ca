"""Training: DETR's optimizer, atomic checkpoints, the trainer and its evaluators."""

from .checkpoint import AtomicCheckpointer, atomic_write_bytes
from .optimizer import build_detr_optimizer, detr_param_groups
from .panoptic_evaluation import DETRPanopticEvaluator
from .trainer import DETRTrainer, GuardedTrainer, build_detr_evaluator

__all__ = [
    "AtomicCheckpointer",
    "DETRPanopticEvaluator",
    "DETRTrainer",
    "GuardedTrainer",
    "atomic_write_bytes",
    "build_detr_evaluator",
    "build_detr_optimizer",
    "detr_param_groups",
]
