"""One atomic file writer: readers see the old file or the new one, never half of either."""

import json
import os
import tempfile

__all__ = ["atomic_write", "atomic_write_bytes", "atomic_write_text", "atomic_write_json"]


def atomic_write(path, write, mode="wb", **open_kwargs):
    """
    Call ``write(file_object)`` on a uniquely named temporary file next to ``path``, flush and
    fsync it, then rename it onto ``path`` (``os.replace`` is atomic on one file system). On any
    failure (including KeyboardInterrupt) the temporary file is removed and ``path`` is untouched.
    """
    folder = os.path.dirname(os.path.abspath(path))
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(path)}.", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, mode, **open_kwargs) as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~_umask())
        os.replace(tmp, path)
    except BaseException:
        if os.path.exists(tmp):
            os.remove(tmp)
        raise


def atomic_write_bytes(path, data):
    """Write ``data`` (bytes) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(data))


def atomic_write_text(path, text, newline=None):
    """Write ``text`` (str, UTF-8) to ``path`` atomically."""
    atomic_write(path, lambda f: f.write(text), mode="w", encoding="utf-8", newline=newline)


def atomic_write_json(path, obj, **dump_kwargs):
    """Write ``obj`` as JSON to ``path`` atomically."""
    atomic_write_text(path, json.dumps(obj, **dump_kwargs))


def _umask():
    mask = os.umask(0)
    os.umask(mask)
    return mask
