"""``DETRCheckpointer``: atomic checkpoint writes and loads that never execute code."""

import os
from contextlib import contextmanager

import torch
from detectron2.checkpoint import DetectionCheckpointer

from ..utils.checkpoint_io import load_checkpoint_file
from ..utils.cli import UserError
from ..utils.io import atomic_write, atomic_write_text

__all__ = ["DETRCheckpointer"]


class DETRCheckpointer(DetectionCheckpointer):
    """
    ``DetectionCheckpointer`` for every file a user gives (``MODEL.WEIGHTS``, ``--resume``,
    ``--eval-only``, the demo):

    - loading goes through :func:`~d2_detr.utils.checkpoint_io.load_checkpoint_file`
      (``weights_only`` torch files, a restricted unpickler for model-zoo ``.pkl``): a file that
      would run code, is truncated or missing is a :class:`UserError` naming it;
    - saving writes through :func:`~d2_detr.utils.io.atomic_write`, and ``last_checkpoint`` is
      updated the same way only after the checkpoint is complete: a kill at any moment leaves
      the previous state or the new one.
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
        atomic_write(save_file, lambda f: torch.save(data, f))
        self.tag_last_checkpoint(basename)

    def tag_last_checkpoint(self, last_filename_basename):
        atomic_write_text(os.path.join(self.save_dir, "last_checkpoint"), last_filename_basename)

    def load(self, path, *args, **kwargs):
        if path and "://" not in path and not os.path.isfile(path):
            load_checkpoint_file(path)  # raises the UserError naming the file
        return super().load(path, *args, **kwargs)

    def resume_or_load(self, path, *, resume=True):
        if resume and self.has_checkpoint():
            with self._resume_errors():
                return self.load(self.get_checkpoint_file())
        return self.load(path, checkpointables=[])

    def check_file(self, path):
        """Read ``path`` as :meth:`load` would (UserError if it cannot be), load nothing."""
        self._load_file(path)

    def check_resume_file(self):
        """:meth:`check_file` of the checkpoint ``last_checkpoint`` names."""
        with self._resume_errors():
            self.check_file(self.get_checkpoint_file())

    @contextmanager
    def _resume_errors(self):
        tag = os.path.join(self.save_dir, "last_checkpoint")
        try:
            yield
        except UserError as e:
            raise UserError(
                f"--resume: {tag} names a checkpoint that cannot be loaded: {e.args[0]}",
                f"point {tag} at an intact model_*.pth in {self.save_dir}, or delete it to "
                "start from MODEL.WEIGHTS",
            ) from None

    def _load_file(self, filename):
        data = load_checkpoint_file(filename)
        if filename.endswith(".pkl"):  # Detectron2's model-zoo / Caffe2 layouts, as its loader
            if "model" in data and "__author__" in data:
                return data
            if "blobs" in data:
                data = data["blobs"]
            data = {k: v for k, v in data.items() if not k.endswith("_momentum")}
            return {"model": data, "__author__": "Caffe2", "matching_heuristics": True}
        if "model" not in data:
            data = {"model": data}
        if not isinstance(data["model"], dict) or not data["model"]:
            raise UserError(
                f"checkpoint {filename} holds no weights (its 'model' entry is "
                f"{type(data['model']).__name__})",
                "use a checkpoint written by tools/train_net.py or "
                "tools/convert_detr_checkpoint.py",
            )
        return data
