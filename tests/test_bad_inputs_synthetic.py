"""datasets/make_synthetic_concrete.py: bad arguments -> exit 2, a message naming the argument,
no traceback, nothing written. One case runs the script as a user would (a process: exit
status and output end to end); the others call its ``main`` in this process, through the same
``run_cli`` (starting Python with torch and Detectron2 costs seconds per process)."""

import os
import subprocess
import traceback

import pytest
from cli_utils import assert_user_error, run_tool, tree_digest

from d2_detr.utils.cli import run_cli

SCRIPT = "datasets/make_synthetic_concrete.py"


def run_in_process(data_cli, capsys, *args):
    """``main(args)`` through ``run_cli`` as the script runs it -> a CompletedProcess."""
    module = data_cli("make_synthetic_concrete")
    code = 0
    try:
        code = run_cli(module.main, [str(a) for a in args])
    except SystemExit as e:
        code = e.code
    except Exception:  # a traceback: assert_user_error reports it
        print(traceback.format_exc())
        code = 1
    out = capsys.readouterr()
    return subprocess.CompletedProcess(args, code, out.out, out.err)


@pytest.mark.parametrize(
    "args,names",
    [
        (["--num", "-3"], ["--num", "-3"]),
        (["--num", "4", "--empty-fraction", "1.5"], ["--empty-fraction", "1.5"]),
        (["--num", "4", "--width", "0"], ["--width", "0"]),
        (["--num", "4", "--height", "100000"], ["--height", "100000"]),
        (["--num", "4", "--seed", "-1"], ["--seed", "-1"]),
        (["--num", "four"], ["--num", "four"]),  # argparse's own error: exit 2 too
        (["--num", "4", "--rebar-label", "pipes"], ["--rebar-label", "pipes"]),
    ],
)
def test_bad_values_name_the_argument(tmp_path, data_cli, capsys, args, names):
    out = tmp_path / "raw"
    assert_user_error(run_in_process(data_cli, capsys, "--out", out, *args), *names)
    assert not out.exists()
    assert os.listdir(tmp_path) == []  # no temporary folder left behind


def test_existing_output_is_kept_without_overwrite(tmp_path):
    out = tmp_path / "raw"
    (out / "images").mkdir(parents=True)
    (out / "images" / "mine.jpg").write_bytes(b"precious")
    before = tree_digest(str(tmp_path))
    proc = run_tool(SCRIPT, "--out", out, "--num", "2")
    assert_user_error(proc, "--out", "already exists", "--overwrite")
    assert os.listdir(tmp_path) == ["raw"]
    assert tree_digest(str(tmp_path)) == before


def test_output_under_a_file(tmp_path, data_cli, capsys):
    blocker = tmp_path / "file.txt"
    blocker.write_text("not a folder")
    proc = run_in_process(data_cli, capsys, "--out", blocker / "raw", "--num", "2")
    assert_user_error(proc, "--out", "file.txt", "not a folder")
    proc = run_in_process(data_cli, capsys, "--out", blocker, "--num", "2", "--overwrite")
    assert_user_error(proc, "--out", "not a folder")
    assert blocker.read_text() == "not a folder"


def test_good_arguments_still_work(tmp_path, data_cli, capsys):
    out = tmp_path / "raw"
    args = ("--out", out, "--num", "3", "--width", "64", "--height", "48")
    proc = run_in_process(data_cli, capsys, *args)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert len(os.listdir(out / "images")) == 3
