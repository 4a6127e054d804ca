"""Exponential moving average (EMA) of the model's weights, as a Detectron2 hook.

After every optimizer step the hook updates a shadow copy of the model's floating-point
parameters and buffers: ``shadow = d * shadow + (1 - d) * weights`` with ``d = DECAY``, or with
``WARMUP`` ``d = min(DECAY, (1 + n) / (10 + n))`` after ``n`` earlier updates (early weights are
forgotten quickly). Integer buffers are copied.

- Evaluation uses the averaged weights: ``trainer.test`` (called by Detectron2's ``EvalHook`` and
  by ``TimeBudget``) swaps them into the trainer's model and the training weights back after.
- Checkpoints: the hook's ``state_dict`` (shadow + update count) is part of the trainer's
  checkpointable state, so ``--resume`` continues the average exactly.
- The inference model: when training ends the averaged weights stay in the model, and
  ``model_final.pth`` is written again with them under ``"model"`` (what ``--eval-only``, the
  demo and the converter read). The training weights travel in the hook's state
  (``"training_model"``): resuming from ``model_final.pth`` restores them.
"""

import contextlib
import logging

import torch
from detectron2.engine import HookBase, hooks
from detectron2.utils import comm
from torch.nn.parallel import DistributedDataParallel

__all__ = ["EMAHook", "ModelEMA", "build_ema_hook", "insert_ema_hook"]

logger = logging.getLogger(__name__)


def _unwrap(model):
    return model.module if isinstance(model, DistributedDataParallel) else model


class ModelEMA:
    """
    Shadow weights of ``model`` (an ``nn.Module``, not DDP-wrapped).

    Args:
        decay: d in [0, 1).
        warmup: use ``min(decay, (1 + n) / (10 + n))`` after ``n`` updates.
    """

    def __init__(self, model, decay=0.999, warmup=True):
        if not 0.0 <= decay < 1.0:
            raise ValueError(f"EMA decay must be in [0, 1), got {decay}")
        self.model = model
        self.decay = float(decay)
        self.warmup = bool(warmup)
        self.num_updates = 0
        self.shadow = {k: v.detach().clone() for k, v in self._weights().items()}

    def _weights(self):
        """name -> tensor of the model (the live tensors, not copies)."""
        return self.model.state_dict(keep_vars=True)

    def decay_at(self, n):
        """The decay used for the update after ``n`` earlier updates."""
        return min(self.decay, (1.0 + n) / (10.0 + n)) if self.warmup else self.decay

    @torch.no_grad()
    def update(self):
        """One EMA step from the model's current weights."""
        d = self.decay_at(self.num_updates)
        shadow_f, live_f = [], []
        for name, live in self._weights().items():
            shadow = self.shadow[name]
            if shadow.is_floating_point():
                shadow_f.append(shadow)
                live_f.append(live.detach())
            else:
                shadow.copy_(live)
        if shadow_f:
            torch._foreach_lerp_(shadow_f, live_f, 1.0 - d)  # s + (1 - d) * (w - s)
        self.num_updates += 1

    @torch.no_grad()
    def copy_to_model(self):
        """Write the shadow weights into the model; returns the model's previous weights."""
        previous = {}
        for name, live in self._weights().items():
            previous[name] = live.detach().clone()
            live.data.copy_(self.shadow[name])
        return previous

    @torch.no_grad()
    def load_weights(self, weights):
        """Write ``weights`` (name -> tensor) into the model."""
        for name, live in self._weights().items():
            live.data.copy_(weights[name])

    @contextlib.contextmanager
    def applied(self):
        """Run the body with the shadow weights in the model; the training weights after."""
        previous = self.copy_to_model()
        try:
            yield
        finally:
            self.load_weights(previous)

    def state_dict(self):
        return {
            "shadow": {k: v.clone() for k, v in self.shadow.items()},
            "num_updates": self.num_updates,
        }

    @torch.no_grad()
    def load_state_dict(self, state):
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise KeyError(f"EMA state lacks weights of the model: {sorted(missing)[:5]}")
        for k, v in self.shadow.items():
            v.copy_(state["shadow"][k])
        self.num_updates = int(state["num_updates"])


class EMAHook(HookBase):
    """
    Updates a :class:`ModelEMA` of the trainer's model after every step, evaluates with it and
    leaves it in the model (and in ``model_final.pth``) when training ends. Register it before
    Detectron2's ``PeriodicCheckpointer`` (so checkpoints hold the average after the step they
    are taken at) and ``EvalHook``: :func:`insert_ema_hook` does.
    """

    def __init__(self, decay=0.999, warmup=True):
        self.decay, self.warmup = decay, warmup
        self.ema = None
        self._training_weights = None  # set while the model holds the averaged weights
        self._pending_state = None

    def _ensure(self):
        if self.ema is None:
            self.ema = ModelEMA(_unwrap(self.trainer.model), self.decay, self.warmup)
            if self._pending_state is not None:
                self._load(self._pending_state)
                self._pending_state = None
        return self.ema

    # the trainer's evaluation runs with the averaged weights
    def _wrap_test(self):
        trainer = self.trainer
        original = trainer.__class__.test  # (the hook holds a weakref proxy of the trainer)
        hook = self

        def test(cfg, model, evaluators=None):
            if _unwrap(model) is not _unwrap(trainer.model) or hook._training_weights is not None:
                return original(cfg, model, evaluators)
            with hook._ensure().applied():
                return original(cfg, model, evaluators)

        trainer.test = test

    def before_train(self):
        self._ensure()
        self._wrap_test()
        logger.info(
            f"[EMAHook] decay {self.decay}, warm-up {self.warmup}, {self.ema.num_updates} "
            "updates so far"
        )

    def after_step(self):
        self._ensure().update()

    def after_train(self):
        trainer = self.trainer
        if self.ema is None or self._training_weights is not None:
            return
        # the averaged weights become the model; the training weights stay in our state
        self._training_weights = self.ema.copy_to_model()
        finished = trainer.iter + 1 >= trainer.max_iter
        has_checkpointer = any(isinstance(h, hooks.PeriodicCheckpointer) for h in trainer._hooks)
        if finished and has_checkpointer and comm.is_main_process():
            logger.info("[EMAHook] model_final holds the averaged weights")
            trainer.checkpointer.save("model_final")

    def state_dict(self):
        if self.ema is None:
            return self._pending_state or {}
        state = self.ema.state_dict()
        if self._training_weights is not None:
            state["training_model"] = {k: v.clone() for k, v in self._training_weights.items()}
        return state

    def load_state_dict(self, state):
        if self.ema is None:
            self._pending_state = state
        else:
            self._load(state)

    def _load(self, state):
        self.ema.load_state_dict(state)
        if "training_model" in state:  # saved after training: the model held the average
            self.ema.load_weights(state["training_model"])
        self._training_weights = None


def build_ema_hook(cfg):
    """:class:`EMAHook` from ``cfg.MODEL.EMA`` (None when disabled)."""
    if not cfg.MODEL.EMA.ENABLED:
        return None
    return EMAHook(cfg.MODEL.EMA.DECAY, cfg.MODEL.EMA.WARMUP)


def insert_ema_hook(trainer, hook_list):
    """``hook_list`` with the EMA hook of ``trainer.cfg`` (if enabled) before the first
    checkpointer / evaluation hook (at the end if there is none)."""
    hook = build_ema_hook(trainer.cfg)
    if hook is None:
        return hook_list
    hook_list = list(hook_list)
    later = (hooks.PeriodicCheckpointer, hooks.EvalHook, hooks.PeriodicWriter)
    index = next((i for i, h in enumerate(hook_list) if isinstance(h, later)), len(hook_list))
    hook_list.insert(index, hook)
    return hook_list
