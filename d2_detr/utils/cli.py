"""
The command-line user-error path shared by every entry point (``tools/``, ``demo/``,
``datasets/``).

An error caused by the user's input (a missing file, a bad value, an unknown name) is raised as
:class:`UserError`; :func:`run_cli` prints it as a few lines naming the offender and what to do,
and exits with code 2, without a traceback. ``--debug`` on the command line or the environment
variable ``D2_DETR_DEBUG=1`` re-raises it with the traceback. Ctrl-C (KeyboardInterrupt) ends
with one line and exit code 130 (the shell's 128 + SIGINT); every output file is written
atomically (``d2_detr/utils/io.py``), so none is left half-written. Any other exception is a
programming error and propagates unchanged.
"""

import difflib
import os
import sys

__all__ = [
    "UserError",
    "run_cli",
    "exit_status",
    "require_file",
    "closest_names",
    "debug_enabled",
]

EXIT_USER_ERROR = 2
EXIT_INTERRUPTED = 130


class UserError(Exception):
    """A problem with the user's input. ``str(e)`` is the message; ``hint`` says what to do."""

    def __init__(self, message, hint=None):
        super().__init__(message)
        self.hint = hint

    def format(self):
        text = f"error: {self.args[0]}"
        if self.hint:
            text += f"\n  {self.hint}"
        return text


def debug_enabled(argv=None):
    """True when ``--debug`` is in ``argv`` (default ``sys.argv``) or ``D2_DETR_DEBUG`` is set."""
    argv = sys.argv if argv is None else argv
    return "--debug" in argv or os.environ.get("D2_DETR_DEBUG", "") not in ("", "0")


def run_cli(main, *args, **kwargs):
    """Run ``main(*args, **kwargs)``; a :class:`UserError` becomes a message and exit code 2."""
    try:
        return main(*args, **kwargs)
    except UserError as e:
        if debug_enabled():
            raise
        print(e.format(), file=sys.stderr, flush=True)
        sys.exit(EXIT_USER_ERROR)
    except KeyboardInterrupt:
        if debug_enabled():
            raise
        print("\ninterrupted (Ctrl-C): files already written are complete", file=sys.stderr)
        sys.exit(EXIT_INTERRUPTED)


def exit_status(main, *args, **kwargs):
    """Like :func:`run_cli`, but return the exit status (argparse's and user errors' too) instead
    of leaving the process: for scripts whose ``main(argv)`` is also called in-process."""
    try:
        return run_cli(main, *args, **kwargs)
    except SystemExit as e:
        return e.code


def require_file(path, what, hint):
    """``path`` as a string; a :class:`UserError` naming ``what`` when it is not a file."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        state = "is a folder, not a file" if os.path.isdir(path) else "does not exist"
        raise UserError(f"{what} {path} {state}", hint)
    return path


def closest_names(name, choices, n=5):
    """Up to ``n`` of ``choices`` closest to ``name`` (for "did you mean" messages)."""
    choices = list(choices)
    close = difflib.get_close_matches(name, choices, n=n, cutoff=0.5)
    if not close:
        close = [c for c in choices if name.lower() in c.lower() or c.lower() in name.lower()][:n]
    return close
