"""Training: DETR's optimizer, safe atomic checkpoints, the resumable data stream, the trainer,
its evaluators and hooks."""

from .checkpointer import DETRCheckpointer
from .hooks import StopTraining, TimeBudget
from .optimizer import build_detr_optimizer, detr_param_groups
from .panoptic_evaluation import DETRPanopticEvaluator
from .train_loader import ResumableTrainLoader
from .trainer import (
    DETRTrainer,
    GuardedAMPTrainer,
    GuardedTrainer,
    IterationSeed,
    build_detr_evaluator,
)

__all__ = [
    "DETRCheckpointer",
    "DETRPanopticEvaluator",
    "DETRTrainer",
    "GuardedAMPTrainer",
    "GuardedTrainer",
    "IterationSeed",
    "ResumableTrainLoader",
    "StopTraining",
    "TimeBudget",
    "build_detr_evaluator",
    "build_detr_optimizer",
    "detr_param_groups",
]
