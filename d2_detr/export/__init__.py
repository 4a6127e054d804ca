"""Export of DETR's inference path to ONNX / TorchScript, and runtimes for the exported files
that share the PyTorch model's post-processing (see ``tools/export_model.py``)."""

from .exporter import (
    FORMATS,
    MODEL_FILES,
    export_info,
    export_onnx,
    export_torchscript,
    prepare_for_export,
)
from .fold import fold_batch_norms
from .mask_head import split_mask_head_convs
from .runtime import (
    ExportedDETR,
    OnnxRuntimeBackend,
    TorchScriptBackend,
    inference_settings,
    load_backend,
    ort_session_options,
)
from .wrapper import OUTPUT_NAMES, RawInference

__all__ = [
    "FORMATS",
    "MODEL_FILES",
    "OUTPUT_NAMES",
    "ExportedDETR",
    "OnnxRuntimeBackend",
    "RawInference",
    "TorchScriptBackend",
    "export_info",
    "export_onnx",
    "export_torchscript",
    "fold_batch_norms",
    "inference_settings",
    "load_backend",
    "ort_session_options",
    "prepare_for_export",
    "split_mask_head_convs",
]
