"""A checkpointer that never leaves a corrupt checkpoint or a dangling ``last_checkpoint``."""

import os
import tempfile

import torch
from detectron2.checkpoint import DetectionCheckpointer

__all__ = ["AtomicCheckpointer", "atomic_write_bytes"]


def _atomic_replace(path, write):
    """Call ``write(file_object)`` on a temporary file next to ``path``, fsync, then rename."""
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path``: readers see the old or the new file, never half."""
    _atomic_replace(path, lambda f: f.write(data))


class AtomicCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` whose files are written to a temporary file and renamed into place
    (``os.replace`` is atomic), and whose ``last_checkpoint`` tag is updated the same way, only
    after the checkpoint is complete. A kill at any moment leaves either the previous state or
    the new one. Loading native ``.pth`` files uses ``weights_only=True`` (what Trainer
    checkpoints hold: tensors, numbers, strings, lists and dicts).
    """

    def save(self, name, **kwargs):
        if not self.save_dir or not self.save_to_disk:
            return
        data = {"model": self.model.state_dict()}
        for key, obj in self.checkpointables.items():
            data[key] = obj.state_dict()
        data.update(kwargs)
        basename = f"{name}.pth"
        save_file = os.path.join(self.save_dir, basename)
        self.logger.info(f"Saving checkpoint to {save_file}")
        os.makedirs(self.save_dir, exist_ok=True)
        _atomic_replace(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        path = os.path.join(self.save_dir, "last_checkpoint")
        atomic_write_bytes(path, last_filename_basename.encode())
