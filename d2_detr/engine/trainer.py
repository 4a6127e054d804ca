"""``DETRTrainer``: Detectron2's DefaultTrainer with DETR's data, optimizer and evaluators, a
non-finite-loss guard, safe and atomic checkpoints and exact resume."""

import logging
import os
import weakref

import torch
from detectron2.data import (
    MetadataCatalog,
    build_detection_test_loader,
    get_detection_dataset_dicts,
)
from detectron2.data.common import DatasetFromList
from detectron2.engine import AMPTrainer, DefaultTrainer, HookBase, SimpleTrainer, TrainerBase
from detectron2.evaluation import (
    COCOEvaluator,
    DatasetEvaluators,
    SemSegEvaluator,
)
from detectron2.utils import comm
from detectron2.utils.logger import setup_logger

from ..data.dataset_mappers import DetrPanopticDatasetMapper
from .checkpointer import DETRCheckpointer
from .ema import insert_ema_hook
from .hooks import StopTraining
from .launch import create_ddp_model
from .optimizer import build_detr_optimizer
from .panoptic_evaluation import DETRPanopticEvaluator
from .train_loader import (
    ResumableTrainLoader,
    aspect_groups,
    derive_seed,
    seed_all,
    train_repeat_factors,
)

__all__ = [
    "DETRTrainer",
    "GuardedAMPTrainer",
    "GuardedTrainer",
    "IterationSeed",
    "build_detr_evaluator",
]


class _LastBatch:
    """Iterator wrapper that remembers the last batch (for the guard's image ids)."""

    def __init__(self, iterator):
        self.iterator, self.batch = iterator, None

    def __iter__(self):
        return self

    def __next__(self):
        self.batch = next(self.iterator)
        return self.batch


class _NonFiniteLossGuard:
    """
    Extends Detectron2's metric check (``_write_metrics``, called after ``backward`` and before
    ``optimizer.step()``): a non-finite loss term raises ``FloatingPointError`` naming the
    iteration, the term(s) and the batch's image ids before the weights change (the last
    checkpoint stays good). Every process checks its own terms; with several processes all
    raise together (no process is left waiting in a collective).
    """

    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self._data_loader_iter = _LastBatch(self._data_loader_iter)

    def _write_metrics(self, loss_dict, data_time, prefix=""):
        bad = {k: float(v.detach().float()) for k, v in loss_dict.items()
               if not torch.isfinite(v.detach()).all()}  # fmt: skip
        batch = getattr(self._data_loader_iter, "batch", None) or []
        ids = [d.get("image_id", d.get("file_name")) for d in batch]
        reports = comm.all_gather((bad, ids)) if comm.get_world_size() > 1 else [(bad, ids)]
        reports = [(r, b, i) for r, (b, i) in enumerate(reports) if b]
        if reports:
            where = "; ".join(
                ", ".join(f"{k}={v}" for k, v in b.items())
                + f"; batch image ids: {i}"
                + (f" (process {r})" if len(reports) > 1 else "")
                for r, b, i in reports
            )
            raise FloatingPointError(
                f"Non-finite loss at iteration {self.iter}: {where}. The weights were not "
                "updated; resume from the last checkpoint with a lower SOLVER.BASE_LR or check "
                "these images."
            )
        super()._write_metrics(loss_dict, data_time, prefix)


class GuardedTrainer(_NonFiniteLossGuard, SimpleTrainer):
    """``SimpleTrainer`` with the non-finite-loss guard."""


class GuardedAMPTrainer(_NonFiniteLossGuard, AMPTrainer):
    """``AMPTrainer`` (CUDA mixed precision) with the non-finite-loss guard."""


class IterationSeed(HookBase):
    """
    Seeds Python's, numpy's and torch's RNGs before every iteration from ``(seed, iteration,
    rank)``: dropout and any other randomness in the step depend on the iteration only, not on
    what ran before (an evaluation, a resume), which exact resume needs.
    """

    def before_step(self):
        trainer = self.trainer
        seed_all(derive_seed(trainer.seed, 4, trainer.iter, comm.get_rank()))


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
    full-model clipping, evaluators from metadata, a non-finite-loss guard
    (:class:`GuardedTrainer` / :class:`GuardedAMPTrainer`) and :class:`DETRCheckpointer`.

    Exact resume: ``--resume`` after a kill at any moment continues from the last complete
    checkpoint and ends with the weights of the uninterrupted run, bit for bit (same machine
    and thread count). The checkpoint holds the model, the optimizer (AdamW moments), the
    scheduler, the iteration and the seed; the data stream (:class:`ResumableTrainLoader`) and
    the per-iteration RNG seeds (:class:`IterationSeed`) are functions of (seed, iteration).
    ``SEED`` < 0 draws a seed, which the checkpoint keeps.
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
        self.seed = data_loader.seed if isinstance(data_loader, ResumableTrainLoader) else 0
        model = create_ddp_model(model, broadcast_buffers=False)
        inner = GuardedAMPTrainer if cfg.SOLVER.AMP.ENABLED else GuardedTrainer
        self._trainer = inner(model, data_loader, optimizer)
        self.scheduler = self.build_lr_scheduler(cfg, optimizer)
        self.checkpointer = DETRCheckpointer(model, cfg.OUTPUT_DIR, trainer=weakref.proxy(self))
        self.start_iter = 0
        self.max_iter = cfg.SOLVER.MAX_ITER
        self.cfg = cfg
        self.register_hooks(self.build_hooks())

    def build_hooks(self):
        # EMA of the weights (MODEL.EMA) goes before the checkpointer and evaluation hooks
        return insert_ema_hook(self, [IterationSeed()] + super().build_hooks())

    def resume_or_load(self, resume=True):
        super().resume_or_load(resume=resume)
        loader = self._trainer.data_loader
        if isinstance(loader, ResumableTrainLoader):  # nothing was read from it yet
            loader.restart_at(self.start_iter, self.seed)

    def train(self):
        """Train (a hook may end it early with :class:`StopTraining`); returns the results of
        the last evaluation (None if none ran)."""
        try:
            super().train()
        except StopTraining:
            pass
        return getattr(self, "_last_eval_results", None)

    def state_dict(self):
        # Detectron2 v0.6's DefaultTrainer saves only the iteration and hook states: add the
        # inner trainer's (the optimizer's AdamW moments, AMP's grad scaler) and the seed.
        ret = super().state_dict()
        ret["_trainer"] = self._trainer.state_dict()
        ret["seed"] = self.seed
        return ret

    def load_state_dict(self, state_dict):
        super().load_state_dict(state_dict)
        if "_trainer" in state_dict:
            self._trainer.load_state_dict(state_dict["_trainer"])
        if "seed" in state_dict:
            self.seed = int(state_dict["seed"])

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
        dicts = get_detection_dataset_dicts(
            cfg.DATASETS.TRAIN, filter_empty=cfg.DATALOADER.FILTER_EMPTY_ANNOTATIONS
        )
        # DATALOADER.SAMPLER_TRAIN: TrainingSampler or RepeatFactorTrainingSampler, else an error
        sampler = cfg.DATALOADER.SAMPLER_TRAIN
        logging.getLogger(__name__).info(f"Using training sampler {sampler}")
        repeat_factors = train_repeat_factors(sampler, dicts, cfg.DATALOADER.REPEAT_THRESHOLD)
        seed = cfg.SEED if cfg.SEED >= 0 else comm.shared_random_seed()
        return ResumableTrainLoader(
            DatasetFromList(dicts, copy=False),
            DetrPanopticDatasetMapper(cfg, True),
            cfg.SOLVER.IMS_PER_BATCH,
            cfg.DATALOADER.NUM_WORKERS,
            seed,
            rank=comm.get_rank(),
            world_size=comm.get_world_size(),
            groups=aspect_groups(dicts) if cfg.DATALOADER.ASPECT_RATIO_GROUPING else None,
            repeat_factors=repeat_factors,
        )

    @classmethod
    def build_test_loader(cls, cfg, dataset_name):
        mapper = DetrPanopticDatasetMapper(cfg, False)
        return build_detection_test_loader(cfg, dataset_name, mapper=mapper)

    @classmethod
    def build_evaluator(cls, cfg, dataset_name, output_folder=None):
        return build_detr_evaluator(cfg, dataset_name, output_folder)
