"""Publish a dataset folder atomically: build it in a hidden sibling, then rename it into place.

A failed or interrupted run leaves ``OUT`` as it was (a run killed with SIGKILL may leave a
hidden ``.OUT.tmp-*`` folder next to it, which is safe to delete). An existing ``OUT`` is
replaced only when asked (``overwrite``) and only when it is an earlier converter output or an
empty folder, so a mistyped ``--out`` cannot delete someone's folder.
"""

import os
import shutil
import tempfile

from .settings import RawDatasetError

__all__ = ["SUMMARY_NAME", "check_out_dir", "make_temp_dir", "publish"]

SUMMARY_NAME = "conversion_summary.json"


def check_out_dir(out_dir, overwrite):
    """Raise naming ``out_dir`` when it cannot (or must not) become the output folder.

    Raises:
        FileExistsError: it exists and ``overwrite`` is false.
        RawDatasetError: it is a file, or a non-empty folder that is no converter output, or its
            parent is not a writable folder.
    """
    if os.path.lexists(out_dir):
        if not os.path.isdir(out_dir) or os.path.islink(out_dir):
            what = "a symlink" if os.path.islink(out_dir) else "not a folder"
            raise RawDatasetError(
                f"{out_dir}: exists and is {what} (--out is the dataset folder to create)",
                "choose another --out (for a symlink: its target folder)",
            )
        if not overwrite:
            raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True / --overwrite)")
        if os.listdir(out_dir) and not os.path.isfile(os.path.join(out_dir, SUMMARY_NAME)):
            raise RawDatasetError(
                f"{out_dir}: not a converted dataset (no {SUMMARY_NAME}); --overwrite only "
                "replaces an earlier converter output or an empty folder",
                "choose another --out, or empty the folder first",
            )
    parent = os.path.dirname(out_dir)
    probe = parent
    while not os.path.lexists(probe):
        probe = os.path.dirname(probe)
    if not os.path.isdir(probe):
        raise RawDatasetError(f"{out_dir}: {probe} is not a folder", "choose another --out")
    if not os.access(probe, os.W_OK | os.X_OK):
        raise RawDatasetError(f"{out_dir}: cannot write in {probe} (permission denied)")


def make_temp_dir(out_dir):
    """Create the hidden sibling ``.OUT.tmp-*`` (mode as a new folder would have)."""
    parent = os.path.dirname(out_dir)
    try:
        os.makedirs(parent, exist_ok=True)
        tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    except OSError as e:
        raise RawDatasetError(f"{out_dir}: cannot create the output ({e.strerror or e})") from e
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o777 & ~umask)
    return tmp


def publish(tmp, out_dir):
    """Replace ``out_dir`` with ``tmp`` (two renames on one file system)."""
    old = None
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(tmp)
        )
        os.rename(out_dir, os.path.join(old, "previous"))
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)
