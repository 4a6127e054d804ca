"""Run an entry point as a user would and check the user-error contract (bad-input catalogs)."""

import hashlib
import os
import subprocess
import sys

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run_tool(script, *args, env=None, cwd=None, timeout=300):
    """Run ``python <script> args...`` (``script`` relative to the repository) and capture it."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    full_env.pop("D2_DETR_DEBUG", None)
    full_env.update(env or {})
    cmd = [sys.executable, os.path.join(REPO, script), *map(str, args)]
    return subprocess.run(
        cmd, capture_output=True, text=True, env=full_env, cwd=cwd or REPO, timeout=timeout
    )


def assert_user_error(proc, *names):
    """Exit code 2, no traceback, and every one of ``names`` in the message."""
    output = proc.stdout + proc.stderr
    assert proc.returncode == 2, f"exit {proc.returncode}, expected 2:\n{output[-3000:]}"
    assert "Traceback" not in output, output[-3000:]
    for name in names:
        assert str(name) in output, f"{name!r} not named in:\n{output[-3000:]}"


def tree_digest(path):
    """Hash of every file name and content under ``path`` (to show outputs are untouched)."""
    h = hashlib.sha256()
    if os.path.isfile(path):
        with open(path, "rb") as f:
            h.update(f.read())
        return h.hexdigest()
    for root, dirs, files in sorted(os.walk(path)):
        dirs.sort()
        for name in sorted(files):
            p = os.path.join(root, name)
            h.update(os.path.relpath(p, path).encode())
            with open(p, "rb") as f:
                h.update(f.read())
    return h.hexdigest()


class CodePayload:
    """Unpickling it calls ``open(marker, "w")``: the marker file existing is proof that a loader
    ran code from a file (it must never exist)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (open, (self.marker, "w"))
