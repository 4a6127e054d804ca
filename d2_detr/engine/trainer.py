"""``DETRTrainer``: Detectron2's DefaultTrainer with DETR's data, optimizer and evaluators, a
NaN guard and atomic checkpoints."""

import logging
import os
import time
import weakref

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    build_detection_train_loader,
)
from detectron2.engine import AMPTrainer, DefaultTrainer, SimpleTrainer, TrainerBase
from detectron2.engine.defaults import create_ddp_model
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.dataset_mappers import DetrPanopticDatasetMapper
from .checkpoint import AtomicCheckpointer
from .optimizer import build_detr_optimizer
from .panoptic_evaluation import DETRPanopticEvaluator

__all__ = ["DETRTrainer", "GuardedTrainer", "build_detr_evaluator"]


class GuardedTrainer(SimpleTrainer):
    """
    ``SimpleTrainer`` that checks every loss term before the backward pass: a non-finite term
    raises ``FloatingPointError`` naming the iteration, the term(s) and the batch's image ids,
    before the weights are touched (the last checkpoint stays good).
    """

    def run_step(self):
        assert self.model.training, "[GuardedTrainer] model was changed to eval mode!"
        start = time.perf_counter()
        data = next(self._data_loader_iter)
        data_time = time.perf_counter() - start
        loss_dict = self.model(data)
        if isinstance(loss_dict, torch.Tensor):
            loss_dict = {"total_loss": loss_dict}
        bad = {k: float(v) for k, v in loss_dict.items() if not torch.isfinite(v).all()}
        if bad:
            ids = [d.get("image_id", d.get("file_name")) for d in data]
            raise FloatingPointError(
                f"Non-finite loss at iteration {self.iter}: "
                + ", ".join(f"{k}={v}" for k, v in bad.items())
                + f"; batch image ids: {ids}"
            )
        losses = sum(loss_dict.values())
        self.optimizer.zero_grad()
        losses.backward()
        self._write_metrics(loss_dict, data_time)
        self.optimizer.step()


def build_detr_evaluator(cfg, dataset_name, output_folder=None):
    """
    Evaluators chosen from the dataset's metadata and the model's outputs:
    ``COCOPanopticEvaluator`` (as :class:`DETRPanopticEvaluator`: NaN instead of a crash for a
    split without things or stuff; with panoptic metadata and MODEL.DETR.TEST.PANOPTIC_ON),
    ``COCOEvaluator`` bbox (+ segm with masks) when the metadata has an instances ``json_file``
    and INSTANCE_ON, ``SemSegEvaluator`` when it has a ``sem_seg_root`` and SEMANTIC_ON.
    """
    if output_folder is None:
        output_folder = os.path.join(cfg.OUTPUT_DIR, "inference", dataset_name)
    os.makedirs(output_folder, exist_ok=True)
    meta = MetadataCatalog.get(dataset_name)
    test = cfg.MODEL.DETR.TEST
    mask_on = cfg.MODEL.DETR.MASK_ON
    evaluators = []
    if meta.get("panoptic_json") and test.PANOPTIC_ON and mask_on:
        evaluators.append(DETRPanopticEvaluator(dataset_name, output_folder))
    if meta.get("json_file") and os.path.exists(meta.json_file) and test.INSTANCE_ON:
        tasks = ("bbox", "segm") if mask_on else ("bbox",)
        evaluators.append(
            COCOEvaluator(dataset_name, tasks, True, output_folder, use_fast_impl=False)
        )
    if meta.get("sem_seg_root") and test.SEMANTIC_ON and mask_on:
        evaluators.append(SemSegEvaluator(dataset_name, True, output_folder))
    if not evaluators:
        raise NotImplementedError(
            f"no evaluator applies to dataset {dataset_name!r} (evaluator_type "
            f"{meta.get('evaluator_type')!r}) with the outputs switched on in MODEL.DETR.TEST"
        )
    return evaluators[0] if len(evaluators) == 1 else DatasetEvaluators(evaluators)


class DETRTrainer(DefaultTrainer):
    """
    DefaultTrainer for DETR: the DETR panoptic mapper, AdamW with backbone multiplier and
    full-model clipping, evaluators from metadata, a loss guard (:class:`GuardedTrainer`) and
    :class:`AtomicCheckpointer` (``--resume`` after ``kill -9`` continues from the last complete
    checkpoint with its iteration).
    """

    def __init__(self, cfg):
        # Same construction as DefaultTrainer.__init__, with our inner trainer and checkpointer.
        TrainerBase.__init__(self)
        if not logging.getLogger("detectron2").isEnabledFor(logging.INFO):
            setup_logger()
        cfg = DefaultTrainer.auto_scale_workers(cfg, comm.get_world_size())
        model = self.build_model(cfg)
        optimizer = self.build_optimizer(cfg, model)
        data_loader = self.build_train_loader(cfg)
        model = create_ddp_model(model, broadcast_buffers=False)
        inner = AMPTrainer if cfg.SOLVER.AMP.ENABLED else GuardedTrainer
        self._trainer = inner(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = AtomicCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def train(self):
        """Train; returns the results of the last evaluation (None if none ran)."""
        super().train()
        return getattr(self, "_last_eval_results", None)

    def state_dict(self):
        # Detectron2 v0.6's DefaultTrainer saves only the iteration and hook states: add the
        # inner trainer's (the optimizer's AdamW moments) so that --resume continues exactly.
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])

    @classmethod
    def build_optimizer(cls, cfg, model):
        return build_detr_optimizer(cfg, model)

    @classmethod
    def build_train_loader(cls, cfg):
        if cfg.INPUT.DATASET_MAPPER_NAME != "detr_panoptic":
            raise ValueError(
                f"INPUT.DATASET_MAPPER_NAME {cfg.INPUT.DATASET_MAPPER_NAME!r}: only "
                "'detr_panoptic' is provided"
            )
        return build_detection_train_loader(cfg, mapper=DetrPanopticDatasetMapper(cfg, True))

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = DetrPanopticDatasetMapper(cfg, False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_detr_evaluator(cfg, dataset_name, output_folder)
