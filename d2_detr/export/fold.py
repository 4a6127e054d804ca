"""Fold batch normalisation into the convolution before it, for the exported copy of a model.

An inference-mode batch norm after a convolution is a per-channel affine map
``y = (x - mean) / sqrt(var + eps) * gamma + beta``; with ``s = gamma / sqrt(var + eps)`` the
pair conv -> BN equals one convolution with weight ``W * s`` (per output channel) and bias
``(b - mean) * s + beta``. Folded, the exported graph has a plain Conv (+ Relu, + Add of the
residual) that runtimes fuse into one kernel, and no per-channel pass over the feature map.

Pairs found (the module tree, no tracing):

- Detectron2's :class:`~detectron2.layers.Conv2d` with ``norm`` a
  :class:`~detectron2.layers.FrozenBatchNorm2d` or an eval-mode ``nn.BatchNorm*d`` (every conv of
  Detectron2's ResNet): the norm is folded and set to ``None``;
- an ``nn.Sequential`` holding a convolution directly followed by such a norm (torchvision
  style): the norm is replaced by ``nn.Identity``.

Norms that use batch statistics (``nn.BatchNorm*d`` in training mode or without running
statistics) and GroupNorm / LayerNorm (they depend on the input) are left alone.
"""

import copy

import torch
from detectron2.layers import FrozenBatchNorm2d
from torch import nn

__all__ = ["fold_batch_norms", "fold_conv_bn", "foldable_norm"]


def foldable_norm(norm):
    """True for a norm that is a fixed per-channel affine map at inference (FrozenBN, or BN in
    eval mode with running statistics)."""
    if isinstance(norm, FrozenBatchNorm2d):
        return True
    if isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return not norm.training and norm.running_mean is not None
    return False


def _affine(norm):
    """(scale, shift) float64 (C,) of an inference-mode norm: ``norm(x) = x * scale + shift``."""
    var = norm.running_var.double()
    mean = norm.running_mean.double()
    weight = norm.weight.double() if norm.weight is not None else torch.ones_like(var)
    bias = norm.bias.double() if norm.bias is not None else torch.zeros_like(var)
    scale = weight * torch.rsqrt(var + norm.eps)
    return scale, bias - mean * scale


@torch.no_grad()
def fold_conv_bn(conv, norm):
    """
    Fold ``norm`` into ``conv`` in place: afterwards ``conv(x)`` (without the norm) equals the
    former ``norm(conv(x))``. ``conv``: a non-transposed ``nn.Conv1d/2d/3d`` whose output
    channels (weight dim 0) are the norm's channels. Computed in float64, stored in the conv's
    dtype.
    """
    if getattr(conv, "transposed", False):
        raise ValueError("transposed convolutions are not folded")
    if not foldable_norm(norm):
        raise ValueError(f"{type(norm).__name__} does not have fixed statistics: not foldable")
    out_channels = conv.weight.shape[0]
    if norm.running_var.numel() != out_channels:
        raise ValueError(f"norm of {norm.running_var.numel()} channels after {out_channels}")
    scale, shift = _affine(norm)
    dtype = conv.weight.dtype
    weight = conv.weight.double() * scale.reshape(-1, *([1] * (conv.weight.dim() - 1)))
    bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(scale)
    conv.weight = nn.Parameter(weight.to(dtype), requires_grad=False)
    conv.bias = nn.Parameter((bias * scale + shift).to(dtype), requires_grad=False)


def _is_conv(module):
    return isinstance(module, nn.modules.conv._ConvNd) and not module.transposed


def fold_batch_norms(model, inplace=False):
    """
    Fold every foldable norm of ``model`` into the convolution it follows (see the module).

    Args:
        model: an ``nn.Module`` (in eval mode for ``nn.BatchNorm*d`` to be folded).
        inplace: change ``model`` itself; by default a deep copy is folded and ``model`` is left
            as it was.
    Returns:
        (folded model, list of the folded norms' qualified names).
    """
    if not inplace:
        model = copy.deepcopy(model)
    folded = []
    for name, module in list(model.named_modules()):
        norm = getattr(module, "norm", None)
        if _is_conv(module) and isinstance(norm, nn.Module) and foldable_norm(norm):
            fold_conv_bn(module, norm)
            module.norm = None
            folded.append(f"{name}.norm" if name else "norm")
        if isinstance(module, nn.Sequential):
            keys = list(module._modules)
            for prev, key in zip(keys, keys[1:]):
                conv, norm = module._modules[prev], module._modules[key]
                if _is_conv(conv) and getattr(conv, "norm", None) is None and foldable_norm(norm):
                    fold_conv_bn(conv, norm)
                    module._modules[key] = nn.Identity()
                    folded.append(f"{name}.{key}" if name else key)
    return model, folded
