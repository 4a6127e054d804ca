"""Run an exported model (ONNX with onnxruntime, or TorchScript) behind the same interface and
the same post-processing as the PyTorch model.

:class:`ExportedDETR` takes Detectron2's list of input dicts and returns the model's result
dicts: the exported graph gives the raw outputs (class logits, boxes, mask logits of all queries)
and :func:`d2_detr.modeling.inference.image_outputs` (the PyTorch model's own function) turns
them into ``panoptic_seg`` / ``instances`` / ``sem_seg``.
"""

import json
import os

import torch

from ..modeling.inference import image_outputs, padded_canvas
from ..utils.cli import UserError, require_file
from .exporter import METADATA_KEY

__all__ = [
    "ort_session_options",
    "OnnxRuntimeBackend",
    "TorchScriptBackend",
    "load_backend",
    "inference_settings",
    "ExportedDETR",
]


def _read_info(path, text):
    if text is None:
        raise UserError(
            f"exported model {path} carries no '{METADATA_KEY}' export information",
            "export the model with tools/export_model.py",
        )
    return json.loads(text)


def ort_session_options(threads=None, optimized_model_path=None, profile_prefix=None):
    """
    onnxruntime session options for CPU inference: every graph optimisation (ORT_ENABLE_ALL:
    Conv + Add + Relu fusions, NCHWc conv layouts, attention / GELU / LayerNorm fusions),
    sequential execution, ``threads`` intra-op threads (None: onnxruntime's default, one per
    physical core). ``optimized_model_path``: also write the optimised graph there (to see
    which fusions applied); ``profile_prefix``: per-node profiling into ``<prefix>*.json``.
    """
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    options.execution_mode = ort.ExecutionMode.ORT_SEQUENTIAL
    if threads:
        options.intra_op_num_threads = int(threads)
        options.inter_op_num_threads = 1
    if optimized_model_path:
        options.optimized_model_filepath = os.fspath(optimized_model_path)
    if profile_prefix:
        options.enable_profiling = True
        options.profile_file_prefix = os.fspath(profile_prefix)
    return options


class OnnxRuntimeBackend:
    """An ``.onnx`` file on onnxruntime's CPU execution provider: (B, 3, H, W) float32 image ->
    dict of output name -> torch tensor. ``threads``, ``optimized_model_path``,
    ``profile_prefix``: see :func:`ort_session_options`."""

    def __init__(self, path, threads=None, optimized_model_path=None, profile_prefix=None):
        import onnxruntime as ort

        options = ort_session_options(threads, optimized_model_path, profile_prefix)
        try:
            self.session = ort.InferenceSession(path, options, providers=["CPUExecutionProvider"])
        except Exception as e:  # onnxruntime raises its own types for unreadable models
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"exported model {path} cannot be loaded by onnxruntime ({first})",
                "give a .onnx file written by tools/export_model.py --format onnx",
            ) from None
        meta = self.session.get_modelmeta().custom_metadata_map
        self.info = _read_info(path, meta.get(METADATA_KEY))
        self.output_names = [o.name for o in self.session.get_outputs()]

    def __call__(self, image):
        arrays = self.session.run(None, {"image": image.detach().float().contiguous().numpy()})
        return {n: torch.from_numpy(a) for n, a in zip(self.output_names, arrays)}


class TorchScriptBackend:
    """A traced TorchScript file (``model.ts``): same call as :class:`OnnxRuntimeBackend`
    (``threads`` is ignored: TorchScript runs on torch's thread pool).

    ``optimize`` (default): ``torch.jit.freeze`` (weights become constants, so conv + bias +
    ReLU / add patterns are visible) then ``torch.jit.optimize_for_inference`` (oneDNN
    convolutions with fused ReLU / add, weights pre-packed), done once here, at load.
    """

    def __init__(self, path, threads=None, optimize=True):
        extra = {METADATA_KEY: ""}
        try:
            self.module = torch.jit.load(path, map_location="cpu", _extra_files=extra)
        except Exception as e:  # torch raises RuntimeError / ValueError for non-TorchScript files
            first = (str(e).splitlines() or [type(e).__name__])[0][:200]
            raise UserError(
                f"exported model {path} is not a TorchScript file ({first})",
                "give a .ts file written by tools/export_model.py --format torchscript",
            ) from None
        self.module.eval()
        self.info = _read_info(path, extra[METADATA_KEY] or None)
        self.output_names = self.info["outputs"]
        if optimize:
            self.module = torch.jit.optimize_for_inference(torch.jit.freeze(self.module))

    def __call__(self, image):
        with torch.inference_mode():
            out = self.module(image.float())
        return dict(zip(self.output_names, out))


def load_backend(path, threads=None, **options):
    """The runtime for an exported model file: ``.onnx`` -> onnxruntime, else TorchScript;
    ``options``: keyword arguments of that backend's class."""
    path = require_file(
        path,
        "exported model",
        "give the model.onnx / model.ts file that tools/export_model.py wrote",
    )
    if path.lower().endswith(".onnx"):
        return OnnxRuntimeBackend(path, threads, **options)
    return TorchScriptBackend(path, threads, **options)


def inference_settings(cfg):
    """The :class:`~d2_detr.modeling.inference.InferenceSettings` the PyTorch model built from
    ``cfg`` uses (taken from ``DETR.from_config``, so the two can never differ)."""
    from ..modeling.detr import DETR

    return DETR.from_config(cfg)["inference_settings"]


class ExportedDETR:
    """
    An exported model with the PyTorch model's inference interface:
    ``model([{"image": (3, H, W), "height": h, "width": w}, ...])`` -> list of result dicts, as
    ``DETR`` in eval mode (image by image, each padded alone).

    Args:
        cfg: the config the model was exported with (post-processing: ``MODEL.DETR.TEST``,
            classes; its ``config.yaml`` is written next to the exported file).
        path: ``model.onnx`` or ``model.ts``.
        threads: intra-op threads of onnxruntime (None: its default).
        backend_options: keyword arguments of the backend (:class:`OnnxRuntimeBackend`,
            :class:`TorchScriptBackend`), e.g. ``optimize=False`` for TorchScript as loaded.
    """

    def __init__(self, cfg, path, threads=None, **backend_options):
        self.path = os.fspath(path)
        self.backend = load_backend(self.path, threads, **backend_options)
        info = self.backend.info
        self.settings = inference_settings(cfg)
        self.size_divisibility = int(info["size_divisibility"])
        self.mask_on = "pred_masks" in info["outputs"]
        checks = [
            ("MODEL.DETR.NUM_CLASSES", cfg.MODEL.DETR.NUM_CLASSES, info.get("num_classes")),
            ("MODEL.DETR.NUM_OBJECT_QUERIES", cfg.MODEL.DETR.NUM_OBJECT_QUERIES,
             info.get("num_queries")),
            ("INPUT.FORMAT", cfg.INPUT.FORMAT, info.get("input_format")),
        ]  # fmt: skip
        for key, ours, theirs in checks:
            if theirs is not None and ours != theirs:
                raise UserError(
                    f"exported model {self.path} was exported with {key} {theirs!r}, "
                    f"the config says {ours!r}",
                    "use the config.yaml written next to the exported model",
                )
        if self.settings.masks_needed and not self.mask_on:
            raise UserError(
                f"exported model {self.path} has no mask output, the config asks for "
                "panoptic / semantic outputs",
                "export a model with MODEL.DETR.MASK_ON, or turn MODEL.DETR.TEST.PANOPTIC_ON off",
            )

    def eval(self):
        return self

    def raw(self, image):
        """(3, H, W) or (B, 3, H, W) image (float pixels, ``INPUT.FORMAT``) -> dict of the raw
        outputs (see :class:`~d2_detr.export.wrapper.RawInference`)."""
        if image.dim() == 3:
            image = image[None]
        return self.backend(image.float())

    def __call__(self, batched_inputs):
        results = []
        for x in batched_inputs:
            image = x["image"]
            image_size = tuple(image.shape[-2:])
            out = self.raw(image)
            masks = out["pred_masks"][0] if self.mask_on else None
            results.append(
                image_outputs(
                    out["pred_logits"][0],
                    out["pred_boxes"][0],
                    masks,
                    self.settings,
                    padded_canvas(image_size, self.size_divisibility),
                    image_size,
                    (x.get("height", image_size[0]), x.get("width", image_size[1])),
                )
            )
        return results
