"""
Load a checkpoint file without ever executing code from it.

A pickle can name any importable callable and have it called while loading (``__reduce__``):
a ``.pkl`` or ``.pth`` file from the internet can run whatever it carries. Here:

- ``.pkl`` (Detectron2 / Caffe2 model-zoo format): a restricted ``pickle.Unpickler`` whose
  ``find_class`` allows only what numpy arrays and plain containers need
  (:data:`PKL_ALLOWED_GLOBALS`); anything else is refused.
- every other file (``.pth``, ``.pt``, ...): ``torch.load(weights_only=True)`` (tensors, numbers,
  strings, lists, dicts; ``argparse.Namespace`` as official DETR checkpoints store their args).

Every failure is a :class:`~d2_detr.utils.cli.UserError` naming the file (missing, truncated,
not a checkpoint, refused global).
"""

import argparse
import pickle

import torch

from .cli import UserError, require_file

__all__ = ["PKL_ALLOWED_GLOBALS", "RestrictedUnpickler", "load_checkpoint_file"]

# (module, name) pairs a Detectron2 model-zoo .pkl may reference: numpy array and scalar
# reconstruction (numpy 1.x and 2.x module paths) and plain containers.
PKL_ALLOWED_GLOBALS = frozenset(
    [(m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray")
     for n in ("_reconstruct", "scalar")]
    + [("numpy", "ndarray"), ("numpy", "dtype"), ("_codecs", "encode")]
    + [("collections", "OrderedDict")]
    + [("builtins", n) for n in ("dict", "list", "tuple", "set", "frozenset", "bytes", "bytearray",
                                 "str", "int", "float", "complex", "bool")]
)  # fmt: skip


class RestrictedUnpickler(pickle.Unpickler):
    """``pickle.Unpickler`` that resolves only :data:`PKL_ALLOWED_GLOBALS`."""

    def find_class(self, module, name):
        if (module, name) in PKL_ALLOWED_GLOBALS:
            return super().find_class(module, name)
        raise pickle.UnpicklingError(f"refused global '{module}.{name}'")


def _hint():
    return (
        "only weights are loaded from checkpoint files (tensors / numpy arrays in dicts and "
        "lists); re-save the file as a state dict, e.g. torch.save({'model': model.state_dict()}, "
        "path), or use a checkpoint written by tools/train_net.py"
    )


def _load_pkl(path):
    with open(path, "rb") as f:
        return RestrictedUnpickler(f, encoding="latin1").load()


def _load_torch(path):
    with torch.serialization.safe_globals([argparse.Namespace]):  # DETR stores its args
        return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint_file(path):
    """
    The dict stored in checkpoint file ``path``, loaded without executing code.

    Returns:
        dict (a state dict, or a dict holding one under ``"model"``).
    Raises:
        UserError: missing file, a file that is not a checkpoint (truncated, another format),
            one that would need code to load (names the refused global), or not a dict.
    """
    path = require_file(
        path,
        "checkpoint",
        "give the path of a .pth / .pkl weights file (e.g. OUTPUT_DIR/model_final.pth)",
    )
    try:
        data = _load_pkl(path) if path.endswith(".pkl") else _load_torch(path)
    except pickle.UnpicklingError as e:
        msg = str(e)
        refused = _refused_global(msg)
        if refused:
            raise UserError(
                f"checkpoint {path} refused: it needs '{refused}' to load, which could run code",
                _hint(),
            ) from None
        raise UserError(
            f"checkpoint {path} is not a readable checkpoint ({msg.splitlines()[0][:200]})",
            "the file may be truncated or in another format; use a complete .pth / .pkl file",
        ) from None
    except Exception as e:  # noqa: BLE001  (only the parsing is in the try: any failure of it
        # on a damaged file, EOFError, zip errors, IndexError or KeyError from the unpickler,
        # means "not a readable checkpoint")
        first = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UserError(
            f"checkpoint {path} is not a readable checkpoint ({type(e).__name__}: {first})",
            "the file may be truncated (an interrupted download or copy) or in another format",
        ) from None
    if not isinstance(data, dict):
        raise UserError(
            f"checkpoint {path} holds a {type(data).__name__}, not a dict of weights",
            "save the model as torch.save({'model': model.state_dict()}, path)",
        )
    return data


def _refused_global(message):
    """The global named in an unpickling refusal (ours or torch's weights_only), else None."""
    for marker in ("refused global '", "Unsupported global: GLOBAL ", "GLOBAL "):
        if marker in message:
            rest = message.split(marker, 1)[1]
            return rest.split("'")[0].split()[0].rstrip(".,") if rest else None
    if "Unsupported operand" in message or "weights_only" in message.lower():
        return message.splitlines()[0][:120]
    return None
