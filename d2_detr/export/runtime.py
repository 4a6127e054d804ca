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


class OnnxRuntimeBackend:
    """An ``.onnx`` file on onnxruntime's CPU execution provider: (B, 3, H, W) float32 image ->
    dict of output name -> torch tensor."""

    def __init__(self, path, threads=None):
        import onnxruntime as ort

        options = ort.SessionOptions()
        if threads:
            options.intra_op_num_threads = threads
            options.inter_op_num_threads = 1
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
    (``threads`` is ignored: TorchScript runs on torch's thread pool)."""

    def __init__(self, path, threads=None):
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

    def __call__(self, image):
        with torch.inference_mode():
            out = self.module(image.float())
        return dict(zip(self.output_names, out))


def load_backend(path, threads=None):
    """The runtime for an exported model file: ``.onnx`` -> onnxruntime, else TorchScript."""
    path = require_file(
        path,
        "exported model",
        "give the model.onnx / model.ts file that tools/export_model.py wrote",
    )
    if path.lower().endswith(".onnx"):
        return OnnxRuntimeBackend(path, threads)
    return TorchScriptBackend(path, threads)


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
    """

    def __init__(self, cfg, path, threads=None):
        self.path = os.fspath(path)
        self.backend = load_backend(self.path, threads)
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
