"""Export of DETR's inference path to ONNX / TorchScript, and runtimes for the exported files
that share the PyTorch model's post-processing (see ``tools/export_model.py``)."""

from .exporter import FORMATS, MODEL_FILES, export_info, export_onnx, export_torchscript
from .runtime import (
    ExportedDETR,
    OnnxRuntimeBackend,
    TorchScriptBackend,
    inference_settings,
    load_backend,
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
    "inference_settings",
    "load_backend",
]
