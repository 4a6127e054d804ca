"""Export DETR's tensor path (:class:`~d2_detr.export.wrapper.RawInference`) to ONNX or
TorchScript, with the facts a runtime needs stored in the file and in ``export.json``.

Both formats are produced by tracing ``RawInference`` once (``torch.onnx.export`` with
``dynamo=False`` and ``dynamic_axes``; ``torch.jit.trace``): the path has no data-dependent Python
control flow, and the image size reaches every size-dependent op (padding, padding mask, sine
positions, resizes) as a traced shape, so one trace serves every height and width.
Detectron2's ``TracingAdapter`` flattens list-of-dict inputs and ``Instances`` outputs; here the
input is one tensor and the outputs are tensors, so it would add nothing. The dynamo exporter
(``torch.export``) needs ``onnxscript`` and symbolic-shape constraints for the rounding of H and W
to multiples of 32; the tracing exporter needs neither and gives the same graph.
"""

import contextlib
import copy
import io
import json
import warnings

import torch

from ..utils.io import atomic_write_bytes
from .fold import fold_batch_norms
from .mask_head import split_mask_head_convs
from .wrapper import RawInference

__all__ = [
    "FORMATS",
    "MODEL_FILES",
    "export_onnx",
    "export_torchscript",
    "export_info",
    "prepare_for_export",
]

FORMATS = ("onnx", "torchscript")
MODEL_FILES = {"onnx": "model.onnx", "torchscript": "model.ts"}
METADATA_KEY = "d2_detr"  # ONNX metadata_props key / TorchScript extra file name


def export_info(wrapper, fmt, cfg=None, opset=None):
    """What a runtime needs besides the graph: input convention, padding, output names."""
    info = {
        "format": fmt,
        "input": "image",
        "input_layout": "(B, 3, H, W) float32 pixels 0-255, channel order input_format, "
        "resized to the test size; normalisation and padding happen in the graph",
        "input_format": cfg.INPUT.FORMAT if cfg is not None else None,
        "size_divisibility": wrapper.size_divisibility,
        "mask_stride": 4,
        "outputs": list(wrapper.output_names),
        "num_queries": int(wrapper.model.num_queries),
        "num_classes": int(wrapper.model.num_classes),
        "torch": torch.__version__,
    }
    if opset is not None:
        info["opset"] = opset
    return info


@contextlib.contextmanager
def _quiet():
    """Silence the warnings tracing this model always gives (legacy exporter chosen on purpose,
    Detectron2's empty-input check in Conv2d: a Python bool, constant in eval)."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=torch.jit.TracerWarning)
        warnings.filterwarnings("ignore", category=DeprecationWarning)
        warnings.filterwarnings("ignore", category=FutureWarning)
        yield


def prepare_for_export(model, fold_bn=True, split_mask_head=True):
    """
    The module to trace: a copy of ``model`` (eval mode; ``model`` itself is not changed) with
    the batch norms folded into the convolutions (:func:`~d2_detr.export.fold.fold_batch_norms`)
    and DETR's mask head computing its first convolution's shared part once per image
    (:func:`~d2_detr.export.mask_head.split_mask_head_convs`). Both change the result only by
    float rounding. Returns (copy, {"folded_norms": n, "split_mask_heads": k}).
    """
    model.eval()
    if fold_bn:
        model, folded = fold_batch_norms(model)
    else:
        model, folded = copy.deepcopy(model), []
    split = split_mask_head_convs(model) if split_mask_head else 0
    return model.eval(), {"folded_norms": len(folded), "split_mask_heads": split}


def _wrap(model, fold_bn, split_mask_head):
    """``RawInference`` of :func:`prepare_for_export`'s copy of ``model``, parameters frozen.
    Returns (wrapper, what was rewritten)."""
    model, rewrites = prepare_for_export(model, fold_bn, split_mask_head)
    wrapper = RawInference(model).eval()
    for p in wrapper.parameters():
        p.requires_grad_(False)
    return wrapper, rewrites


def export_onnx(model, path, sample_image, opset=17, cfg=None, fold_bn=True, split_mask_head=True):
    """
    Write ``model``'s raw inference path as an ONNX file (dynamic batch, height and width).

    Args:
        model: a :class:`~d2_detr.modeling.DETR` (eval mode is set here).
        path: output ``.onnx`` file (written atomically).
        sample_image: (1, 3, H, W) float32 input to trace with (any size).
        opset: ONNX opset (>= 17: LayerNormalization is one op).
        fold_bn, split_mask_head: rewrites of the traced copy, see :func:`prepare_for_export`
            (torch.onnx folds BatchNormalization into Conv itself in eval mode; the explicit fold
            makes the TorchScript graph lose its batch_norm ops too).
    Returns:
        the export info dict, also stored in the file's ``metadata_props["d2_detr"]``.
    """
    import onnx

    if opset < 17:
        raise ValueError(f"ONNX opset {opset}: use 17 or newer")
    wrapper, rewrites = _wrap(model, fold_bn, split_mask_head)
    names = list(wrapper.output_names)
    dynamic = {"image": {0: "batch", 2: "height", 3: "width"}}
    dynamic.update({n: {0: "batch"} for n in names})
    if "pred_masks" in names:
        dynamic["pred_masks"] = {0: "batch", 2: "mask_height", 3: "mask_width"}
    buffer = io.BytesIO()
    with _quiet(), torch.no_grad():
        torch.onnx.export(
            wrapper,
            (sample_image,),
            buffer,
            input_names=["image"],
            output_names=names,
            dynamic_axes=dynamic,
            opset_version=opset,
            do_constant_folding=True,
            dynamo=False,
        )
    proto = onnx.load_from_string(buffer.getvalue())
    onnx.checker.check_model(proto)
    info = export_info(wrapper, "onnx", cfg, opset)
    info.update(rewrites)
    entry = proto.metadata_props.add()
    entry.key, entry.value = METADATA_KEY, json.dumps(info)
    atomic_write_bytes(path, proto.SerializeToString())
    return info


def export_torchscript(model, path, sample_image, cfg=None, fold_bn=True, split_mask_head=True):
    """
    Write ``model``'s raw inference path as a traced TorchScript module (``torch.jit.load``);
    the export info is stored as its extra file ``"d2_detr"``. Arguments as :func:`export_onnx`.
    """
    wrapper, rewrites = _wrap(model, fold_bn, split_mask_head)
    with _quiet(), torch.no_grad():
        traced = torch.jit.trace(wrapper, (sample_image,), check_trace=False)
    info = export_info(wrapper, "torchscript", cfg)
    info.update(rewrites)
    buffer = io.BytesIO()
    torch.jit.save(traced, buffer, _extra_files={METADATA_KEY: json.dumps(info)})
    atomic_write_bytes(path, buffer.getvalue())
    return info
