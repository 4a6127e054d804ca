"""Fallbacks for what today's Python stack lacks under Detectron2 v0.6. Import this module first.

Every patch checks that the thing it provides is really missing and changes nothing otherwise.
Which patches apply depends on the installed packages, not on the device: with a matching
torch/torchvision pair (e.g. CUDA builds of both) the operator kernels are not defined, but the
numpy / Pillow aliases and the ``detectron2._C`` placeholder still apply wherever ``make install``
put numpy >= 1.24, Pillow >= 10 and the pure-Python Detectron2 sdist. Each applied patch is logged
at debug level and listed in :data:`APPLIED`.

Patches and why they exist (remove each once its reason is gone):

* ``torchvision::nms`` / ``torchvision::roi_align`` operators. The registry's torchvision 0.28
  wheel is a CUDA build; beside the CPU build of torch 2.13 its ``_C`` library does not load and
  ``import torchvision`` fails with "operator torchvision::nms does not exist". We try to load
  the native library first; only when that fails do we define the two operators with CPU
  kernels written in plain torch (differentiable, with the compiled kernels' semantics, tested
  against brute-force references in ``tests/test_compat.py``). Remove when
  a CPU torchvision wheel matching the installed torch is available.
* ``detectron2._C``: the ``pb1-detectron2`` sdist ships no C++ sources, yet
  ``detectron2.layers`` imports ``_C`` at import time (deformable conv, rotated boxes). A
  placeholder module is installed whose functions raise a clear error when called; nothing
  DETR needs uses them (COCOEvaluator must run with ``use_fast_impl=False``). Remove when a
  compiled Detectron2 is installed.
* ``np.int`` / ``np.float`` / ``np.bool`` / ``np.object`` / ``np.str``: removed in numpy 1.24,
  still used by Detectron2 v0.6 and pycocotools-era code. Remove when Detectron2 is upgraded.
* ``PIL.Image.LINEAR`` (and ``CUBIC``/``ANTIALIAS``): removed in Pillow 10, used by Detectron2's
  ``ResizeTransform``. Remove when Detectron2 is upgraded.
"""

import importlib.util
import logging
import os
import sys
import types

import numpy as np
import torch

__all__ = ["APPLIED", "nms_reference_cpu", "roi_align_reference_cpu"]

logger = logging.getLogger(__name__)

#: Names of the patches this process applied (empty on a complete stack).
APPLIED = []


def _note(name):
    APPLIED.append(name)
    logger.debug("d2_detr.compat: patched %s", name)


def _torchvision_native_ops_load():
    """Try to load torchvision's compiled operators without importing torchvision."""
    spec = importlib.util.find_spec("torchvision")
    if spec is None or not spec.submodule_search_locations:
        return True  # torchvision absent: nothing to patch here
    if hasattr(torch.ops, "torchvision") and hasattr(torch.ops.torchvision, "nms"):
        return True
    folder = list(spec.submodule_search_locations)[0]
    for name in sorted(os.listdir(folder)):
        if name.startswith("_C") and name.endswith((".so", ".pyd")):
            try:
                torch.ops.load_library(os.path.join(folder, name))
                return True
            except (OSError, RuntimeError):
                return False
    return False


def nms_reference_cpu(boxes, scores, iou_threshold):
    """Greedy NMS with torchvision's semantics.

    Args:
        boxes: (N, 4) float tensor in (x1, y1, x2, y2).
        scores: (N,) float tensor.
        iou_threshold: boxes with IoU > threshold to a kept, higher-scored box are discarded.
    Returns:
        (K,) int64 indices of kept boxes, sorted by decreasing score (stable on ties).
    """
    if boxes.numel() == 0:
        return torch.empty((0,), dtype=torch.long, device=boxes.device)
    order = torch.sort(scores, descending=True, stable=True).indices
    x1, y1, x2, y2 = boxes.unbind(1)
    areas = (x2 - x1) * (y2 - y1)
    suppressed = torch.zeros(boxes.shape[0], dtype=torch.bool, device=boxes.device)
    keep = []
    order_list = order.tolist()
    for pos, i in enumerate(order_list):
        if suppressed[i]:
            continue
        keep.append(i)
        rest = order[pos + 1 :]
        if rest.numel() == 0:
            break
        w = (torch.minimum(x2[i], x2[rest]) - torch.maximum(x1[i], x1[rest])).clamp(min=0)
        h = (torch.minimum(y2[i], y2[rest]) - torch.maximum(y1[i], y1[rest])).clamp(min=0)
        inter = w * h
        iou = inter / (areas[i] + areas[rest] - inter)
        suppressed[rest[iou > iou_threshold]] = True
    return torch.tensor(keep, dtype=torch.long, device=boxes.device)


def roi_align_reference_cpu(
    input, rois, spatial_scale, pooled_height, pooled_width, sampling_ratio, aligned
):
    """RoIAlign with the semantics of torchvision's C++ kernel, in differentiable plain torch.

    (torchvision's own pure-torch ``_roi_align`` does not zero samples that fall outside
    ``[-1, H] x [-1, W]`` as the compiled kernel does, so it is not reused here.)

    Args:
        input: (N, C, H, W) features.
        rois: (K, 5) rows of (batch index, x1, y1, x2, y2) in input-image coordinates.
        spatial_scale: factor from image to feature coordinates.
        pooled_height, pooled_width: output size (PH, PW).
        sampling_ratio: samples per bin side; <= 0 means ceil(roi size / output size) per roi.
        aligned: shift the box by -0.5 pixel (pixel-centre model).
    Returns:
        (K, C, PH, PW) pooled features.
    """
    n, c, h, w = input.shape
    k = rois.shape[0]
    if k == 0:
        return input.new_zeros((0, c, pooled_height, pooled_width))
    rois = rois.to(input.dtype)
    offset = 0.5 if aligned else 0.0
    x1, y1, x2, y2 = (rois[:, 1:] * spatial_scale - offset).unbind(1)
    roi_w, roi_h = x2 - x1, y2 - y1
    if not aligned:
        roi_w, roi_h = roi_w.clamp(min=1.0), roi_h.clamp(min=1.0)
    bin_h, bin_w = roi_h / pooled_height, roi_w / pooled_width
    if sampling_ratio > 0:
        grid_h = torch.full((k,), sampling_ratio, dtype=torch.long, device=input.device)
        grid_w = grid_h
    else:
        grid_h = torch.ceil(roi_h / pooled_height).long()
        grid_w = torch.ceil(roi_w / pooled_width).long()
    max_gh, max_gw = max(int(grid_h.max()), 1), max(int(grid_w.max()), 1)
    count = (grid_h * grid_w).clamp(min=1).to(input.dtype)

    def sample_coords(start, bin_size, grid, max_grid, pooled):
        """(K, P, G) sample positions, (K, 1, G) mask of the samples that exist."""
        p = torch.arange(pooled, device=input.device, dtype=input.dtype)[None, :, None]
        i = torch.arange(max_grid, device=input.device, dtype=input.dtype)[None, None, :]
        g = grid.clamp(min=1).to(input.dtype)[:, None, None]
        pos = start[:, None, None] + p * bin_size[:, None, None]
        pos = pos + (i + 0.5) * bin_size[:, None, None] / g
        return pos, i < grid[:, None, None]

    def corners(pos, size):
        """Clamped low/high indices and fractional weights of bilinear interpolation."""
        valid = (pos >= -1.0) & (pos <= size)
        pos = pos.clamp(min=0)
        low = pos.floor().long()
        at_edge = low >= size - 1
        low = torch.where(at_edge, size - 1, low)
        high = torch.where(at_edge, size - 1, low + 1)
        pos = torch.where(at_edge, low.to(pos.dtype), pos)
        frac = pos - low.to(pos.dtype)
        return low, high, frac, valid

    ys, ymask = sample_coords(y1, bin_h, grid_h, max_gh, pooled_height)  # (K, PH, GH)
    xs, xmask = sample_coords(x1, bin_w, grid_w, max_gw, pooled_width)  # (K, PW, GW)
    y_lo, y_hi, ly, yvalid = corners(ys, h)
    x_lo, x_hi, lx, xvalid = corners(xs, w)
    ywt = (yvalid & ymask).to(input.dtype)  # (K, PH, GH)
    xwt = (xvalid & xmask).to(input.dtype)  # (K, PW, GW)

    feats = input.reshape(n, c, h * w)[rois[:, 0].long()]  # (K, C, H*W)

    def gather(yi, xi):
        idx = yi[:, :, :, None, None] * w + xi[:, None, None, :, :]  # (K, PH, GH, PW, GW)
        flat = idx.reshape(k, 1, -1).expand(k, c, -1)
        return feats.gather(2, flat).reshape(k, c, *idx.shape[1:])

    wy_lo = ((1 - ly) * ywt)[:, None, :, :, None, None]
    wy_hi = (ly * ywt)[:, None, :, :, None, None]
    wx_lo = ((1 - lx) * xwt)[:, None, None, None, :, :]
    wx_hi = (lx * xwt)[:, None, None, None, :, :]
    val = (
        wy_lo * wx_lo * gather(y_lo, x_lo)
        + wy_lo * wx_hi * gather(y_lo, x_hi)
        + wy_hi * wx_lo * gather(y_hi, x_lo)
        + wy_hi * wx_hi * gather(y_hi, x_hi)
    )  # (K, C, PH, GH, PW, GW)
    return val.sum(dim=(3, 5)) / count[:, None, None, None]


_LIBRARY = None  # keeps the torch.library.Library alive


def _patch_torchvision_ops():
    global _LIBRARY
    if _torchvision_native_ops_load():
        return
    _LIBRARY = torch.library.Library("torchvision", "DEF")
    _LIBRARY.define("nms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("nms", nms_reference_cpu, "CPU")
    # torchvision registers a fake kernel for qnms at import: the schema must exist (the kernel
    # runs on the integer representation of quantized boxes).
    _LIBRARY.define("qnms(Tensor dets, Tensor scores, float iou_threshold) -> Tensor")
    _LIBRARY.impl("qnms", lambda d, s, t: nms_reference_cpu(d.float(), s.float(), t), "CPU")
    _LIBRARY.define(
        "roi_align(Tensor input, Tensor rois, float spatial_scale, SymInt pooled_height, "
        "SymInt pooled_width, int sampling_ratio, bool aligned) -> Tensor"
    )
    _LIBRARY.impl("roi_align", roi_align_reference_cpu, "CompositeImplicitAutograd")
    import torchvision.extension

    # torchvision.ops.nms asserts that native ops exist; now they do (as CPU kernels).
    torchvision.extension._has_ops = lambda: True
    # ops/roi_align.py imported the old _has_ops by name and would take torchvision's pure-torch
    # path (different border semantics): route it through the operator defined above.
    sys.modules["torchvision.ops.roi_align"]._has_ops = lambda: True
    _note("torchvision::nms, torchvision::qnms, torchvision::roi_align (CPU fallbacks)")


def _patch_numpy_aliases():
    for name, value in {
        "int": int,
        "float": float,
        "bool": bool,
        "object": object,
        "str": str,
    }.items():
        if name not in np.__dict__:
            setattr(np, name, value)
            _note(f"numpy.{name}")


def _patch_pillow_constants():
    from PIL import Image

    for name, member in {"LINEAR": "BILINEAR", "CUBIC": "BICUBIC", "ANTIALIAS": "LANCZOS"}.items():
        if not hasattr(Image, name):
            setattr(Image, name, getattr(Image.Resampling, member))
            _note(f"PIL.Image.{name}")


class _MissingDetectron2Extension(types.ModuleType):
    """Stands in for ``detectron2._C``: importable, but every operator raises when called."""

    def __getattr__(self, name):
        if name.startswith("__"):
            raise AttributeError(name)

        def missing(*args, **kwargs):
            raise RuntimeError(
                f"detectron2._C.{name} is not available: Detectron2 was installed without its "
                "C++ extension (pure-Python pb1-detectron2 sdist). Use an operator that has a "
                "pure-Python path (e.g. COCOEvaluator(use_fast_impl=False))."
            )

        return missing

    @staticmethod
    def get_compiler_version():
        return "none (C++ extension not built)"

    @staticmethod
    def get_cuda_version():
        return "none (C++ extension not built)"

    @staticmethod
    def has_cuda():
        return False


def _patch_detectron2_extension():
    if importlib.util.find_spec("detectron2") is None or "detectron2._C" in sys.modules:
        return
    if importlib.util.find_spec("detectron2._C") is not None:
        return
    sys.modules["detectron2._C"] = _MissingDetectron2Extension("detectron2._C")
    _note("detectron2._C (placeholder, operators raise)")


_patch_numpy_aliases()
_patch_pillow_constants()
_patch_torchvision_ops()
_patch_detectron2_extension()
