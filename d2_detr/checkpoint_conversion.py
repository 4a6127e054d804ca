"""Official DETR checkpoints (detection, panoptic) and torchvision ResNet ImageNet weights ->
parameter names of :class:`d2_detr.modeling.DETR` (used by ``tools/convert_detr_checkpoint.py``)."""

import logging
import re

import torch

from .utils.checkpoint_io import load_checkpoint_file
from .utils.cli import UserError

logger = logging.getLogger(__name__)

# (pattern, replacement) applied in order to backbone keys after "backbone."
_RESNET_RULES = [
    (r"^conv1\.", "stem.conv1."),
    (r"^bn1\.", "stem.conv1.norm."),
    (r"^layer(\d)\.(\d+)\.conv(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}."),
    (r"^layer(\d)\.(\d+)\.bn(\d)\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.conv{m[3]}.norm."),
    (r"^layer(\d)\.(\d+)\.downsample\.0\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut."),
    (r"^layer(\d)\.(\d+)\.downsample\.1\.", lambda m: f"res{int(m[1]) + 1}.{m[2]}.shortcut.norm."),
]
# official top-level modules whose names are kept as they are
_SAME_NAME = (
    "input_proj.",
    "query_embed.",
    "class_embed.",
    "bbox_embed.",
    "transformer.",
    "bbox_attention.",
    "mask_head.",
)


def _rename_resnet(key):
    for pattern, repl in _RESNET_RULES:
        new, n = re.subn(pattern, repl, key)
        if n:
            return new
    return None


def load_checkpoint(path):
    """State dict of a DETR / torchvision checkpoint file, loaded without executing code
    (:func:`~d2_detr.utils.checkpoint_io.load_checkpoint_file`); UserError if it holds none."""
    ckpt = load_checkpoint_file(path)
    if isinstance(ckpt.get("model"), dict):
        ckpt = ckpt["model"]
    if not ckpt or not all(torch.is_tensor(v) for v in ckpt.values()):
        raise UserError(
            f"{path}: not a state dict of tensors (nor a dict with 'model')",
            "give an official DETR checkpoint (detr-r50-*.pth) or torchvision ResNet weights",
        )
    return ckpt


def convert_detr_state_dict(state_dict, class_map=None):
    """
    Rename an official DETR (``backbone.0.body.*``, ``transformer.*``, ..., with a ``detr.``
    prefix for panoptic models) or torchvision ResNet (``conv1.*``, ``layer1.*``) state dict.

    Args:
        state_dict: official tensors.
        class_map: optional list, ``class_map[c]`` = the official class index of our contiguous
            class ``c`` (e.g. the COCO category id); rows of ``class_embed`` are gathered
            accordingly and the last (no-object) row is kept last. Indices beyond the official
            classifier give zero rows (logged).
    Returns:
        (new_state_dict, ignored): converted tensors; official keys deliberately left out
        (``num_batches_tracked``, torchvision's ``fc``). Raises ValueError on any unknown key.
    """
    torchvision_format = any(k.startswith("layer1.") for k in state_dict)
    new, ignored, unknown = {}, [], []
    for key, value in state_dict.items():
        if key.endswith("num_batches_tracked") or (torchvision_format and key.startswith("fc.")):
            ignored.append(key)
            continue
        k = key[len("detr.") :] if key.startswith("detr.") else key
        if torchvision_format:
            name = _rename_resnet(k)
            name = None if name is None else "backbone." + name
        elif k.startswith("backbone.0.body."):
            name = _rename_resnet(k[len("backbone.0.body.") :])
            name = None if name is None else "backbone." + name
        elif k.startswith(_SAME_NAME):
            name = k.replace(".multihead_attn.", ".cross_attn.")
        else:
            name = None
        if name is None:
            unknown.append(key)
        else:
            new[name] = value
    if unknown:
        raise ValueError(f"unknown keys in the DETR checkpoint: {unknown[:10]} ({len(unknown)})")
    if class_map is not None and "class_embed.weight" in new:
        for suffix in ("weight", "bias"):
            new[f"class_embed.{suffix}"] = _gather_classes(new[f"class_embed.{suffix}"], class_map)
    return new, ignored


def _gather_classes(rows, class_map):
    """(K_official + 1, ...) rows -> (len(class_map) + 1, ...), no-object row last."""
    num_official = rows.shape[0] - 1
    out = rows.new_zeros((len(class_map) + 1, *rows.shape[1:]))
    missing = [i for i in class_map if not 0 <= i < num_official]
    if missing:
        logger.warning(f"classes {missing} not in the checkpoint's classifier: zero-initialised")
    for c, i in enumerate(class_map):
        if 0 <= i < num_official:
            out[c] = rows[i]
    out[-1] = rows[-1]
    return out


def class_map_from_metadata(metadata):
    """Official class index (dataset category id) of every contiguous id, from Detectron2
    metadata (``stuff_dataset_id_to_contiguous_id`` for panoptic, else the thing map)."""
    id_map = dict(metadata.get("thing_dataset_id_to_contiguous_id", {}))
    id_map.update(metadata.get("stuff_dataset_id_to_contiguous_id", {}) or {})
    if not id_map:
        raise ValueError(f"metadata of '{metadata.name}' has no dataset-id -> contiguous-id map")
    inverse = {c: d for d, c in id_map.items()}
    if sorted(inverse) != list(range(len(inverse))):
        raise ValueError(f"metadata of '{metadata.name}': contiguous ids are not 0..N-1")
    return [inverse[c] for c in range(len(inverse))]


def compare_with_model(state_dict, model):
    """Keys missing from / unexpected in ``state_dict`` and shape mismatches w.r.t. ``model``."""
    expected = model.state_dict()
    missing = sorted(set(expected) - set(state_dict))
    unexpected = sorted(set(state_dict) - set(expected))
    shapes = sorted(
        f"{k}: {tuple(state_dict[k].shape)} vs model {tuple(expected[k].shape)}"
        for k in set(expected) & set(state_dict)
        if state_dict[k].shape != expected[k].shape
    )
    return missing, unexpected, shapes
