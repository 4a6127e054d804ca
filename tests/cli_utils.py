"""Run an entry point as a user would and check the user-error contract (bad-input catalogs)."""

import hashlib
import os
import subprocess
import sys
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def start_tool(script, *args, env=None, cwd=None):
    """Start ``python <script> args...`` (``script`` relative to the repository) -> Popen whose
    stdout and stderr go to temporary files (no pipe to drain while waiting for another process);
    :func:`finish` waits for it and reads them."""
    full_env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONWARNINGS="ignore")
    full_env.pop("D2_DETR_DEBUG", None)
    full_env.update(env or {})
    cmd = [sys.executable, os.path.join(REPO, script), *map(str, args)]
    out, err = tempfile.TemporaryFile("w+"), tempfile.TemporaryFile("w+")
    proc = subprocess.Popen(cmd, stdout=out, stderr=err, text=True, env=full_env, cwd=cwd or REPO)
    proc.output_files = (out, err)
    return proc


def finish(proc, timeout=300):
    """Wait for a :func:`start_tool` process -> CompletedProcess (killed after ``timeout`` s)."""
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()
        raise
    texts = []
    for f in proc.output_files:
        f.seek(0)
        texts.append(f.read())
        f.close()
    return subprocess.CompletedProcess(proc.args, proc.returncode, *texts)


def run_tool(script, *args, env=None, cwd=None, timeout=300):
    """Run ``python <script> args...`` (``script`` relative to the repository) and capture it."""
    return finish(start_tool(script, *args, env=env, cwd=cwd), timeout)


def run_tools(*calls, timeout=300):
    """Several :func:`run_tool` calls at once, each ``(script, args)`` or ``(script, args, env)``
    -> their CompletedProcess in order. Each process runs one thread and most of its time goes
    to importing torch and Detectron2: side by side they use both cores of a 2-core machine."""
    procs = [start_tool(c[0], *c[1], env=c[2] if len(c) > 2 else None) for c in calls]
    try:
        return [finish(p, timeout) for p in procs]
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()


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
