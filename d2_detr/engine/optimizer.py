"""DETR's optimizer: AdamW, a smaller backbone lr, no weight decay on norms and embeddings,
gradient clipping of the whole model's norm."""

import itertools

import torch
from detectron2.layers import FrozenBatchNorm2d
from detectron2.solver.build import maybe_add_gradient_clipping, reduce_param_groups
from torch import nn

__all__ = ["build_detr_optimizer", "detr_param_groups"]

NORM_TYPES = (
    nn.BatchNorm1d,
    nn.BatchNorm2d,
    nn.SyncBatchNorm,
    nn.GroupNorm,
    nn.LayerNorm,
    nn.LocalResponseNorm,
    FrozenBatchNorm2d,
)


def detr_param_groups(
    model, base_lr, weight_decay, backbone_multiplier, weight_decay_norm, weight_decay_embed
):
    """
    One param group per trainable parameter, named (each may differ in lr / weight decay);
    :func:`build_detr_optimizer` merges groups of equal settings.

    Parameters whose name contains "backbone" get ``base_lr * backbone_multiplier``; parameters
    of normalisation layers get ``weight_decay_norm``, of ``nn.Embedding`` ``weight_decay_embed``.
    Frozen parameters (requires_grad False) are left out.
    """
    groups, seen = [], set()
    for module_name, module in model.named_modules():
        for name, param in module.named_parameters(recurse=False):
            if not param.requires_grad or param in seen:
                continue
            seen.add(param)
            full_name = f"{module_name}.{name}" if module_name else name
            lr = base_lr * (backbone_multiplier if "backbone" in full_name else 1.0)
            wd = weight_decay
            if isinstance(module, NORM_TYPES):
                wd = weight_decay_norm
            elif isinstance(module, nn.Embedding):
                wd = weight_decay_embed
            groups.append({"params": [param], "lr": lr, "weight_decay": wd, "name": full_name})
    return groups


def _full_model_clipping(optimizer_cls, max_norm, norm_type):
    """Subclass of ``optimizer_cls`` clipping the norm of all gradients together before a step."""

    class FullModelClippedOptimizer(optimizer_cls):
        def step(self, closure=None):
            params = itertools.chain(*[g["params"] for g in self.param_groups])
            torch.nn.utils.clip_grad_norm_(params, max_norm, norm_type)
            return super().step(closure=closure)

    FullModelClippedOptimizer.__name__ = f"FullModelClipped{optimizer_cls.__name__}"
    return FullModelClippedOptimizer


def build_detr_optimizer(cfg, model):
    """
    Optimizer from ``cfg.SOLVER``: OPTIMIZER ("ADAMW" or "SGD"), BASE_LR, WEIGHT_DECAY,
    BACKBONE_MULTIPLIER, WEIGHT_DECAY_NORM, WEIGHT_DECAY_EMBED, MOMENTUM (SGD) and
    CLIP_GRADIENTS (CLIP_TYPE "full_model" clips the total norm, as DETR does; "value"/"norm"
    are Detectron2's per-parameter clipping).
    """
    s = cfg.SOLVER
    groups = detr_param_groups(
        model,
        s.BASE_LR,
        s.WEIGHT_DECAY,
        s.BACKBONE_MULTIPLIER,
        s.WEIGHT_DECAY_NORM,
        s.WEIGHT_DECAY_EMBED,
    )
    if not groups:
        raise ValueError("the model has no trainable parameter")
    # one group per distinct (lr, weight decay): the multi-tensor / fused kernels work per group
    groups = reduce_param_groups([{k: v for k, v in g.items() if k != "name"} for g in groups])
    name = s.OPTIMIZER.upper()
    if name == "ADAMW":
        # the fused kernel (CPU and CUDA) is several times faster than the per-tensor loop
        cls, kwargs = torch.optim.AdamW, {"fused": True}
    elif name == "SGD":
        cls, kwargs = torch.optim.SGD, {"momentum": s.MOMENTUM}
    else:
        raise ValueError(f"SOLVER.OPTIMIZER must be ADAMW or SGD, got {s.OPTIMIZER!r}")
    clip = s.CLIP_GRADIENTS
    if clip.ENABLED and clip.CLIP_TYPE == "full_model":
        cls = _full_model_clipping(cls, clip.CLIP_VALUE, clip.NORM_TYPE)
    elif clip.ENABLED:
        cls = maybe_add_gradient_clipping(cfg, cls)
    return cls(groups, lr=s.BASE_LR, **kwargs)
