"""Bad-input catalog of demo/demo.py: every case exits 2 with a message naming the offender, no
traceback, and leaves existing outputs untouched.

Most cases run in-process through ``run_cli`` (the same path as the command line, without the
interpreter start-up); the cases marked ``cli`` also run as a real subprocess."""

import contextlib
import io
import os
import pickle
import sys
import types

import pytest
from cli_utils import assert_user_error, run_tool, tree_digest
from test_demo import SMALL_CLI, TINY, save_tiny_weights, write_photos

from d2_detr.utils.cli import run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "demo"))
import demo as demo_cli  # noqa: E402


class Payload:
    """Unpickling calls ``open(marker, "w")``: proof that code ran."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_demo")
    photos = root / "photos"
    write_photos(photos, ["a.jpg", "b.png"])
    weights = save_tiny_weights(root / "model.pth")
    data = open(weights, "rb").read()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "evil.pkl").write_bytes(pickle.dumps({"model": Payload(str(root / "pwned"))}))
    (root / "evil.pth").write_bytes(pickle.dumps({"model": Payload(str(root / "pwned"))}))
    os.makedirs(root / "empty_folder")
    bad = root / "bad_photos"
    os.makedirs(bad)
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not a photo")
    (root / "a_file.txt").write_text("I am a file")
    (root / "bad_severity.yaml").write_text("crack: [unclosed\n")
    return types.SimpleNamespace(root=root, photos=str(photos), weights=weights)


def base(e, *extra, weights=True, inputs=None):
    args = ["--config-file", TINY, "--input", inputs or e.photos, "--no-progress", *extra]
    opts = list(SMALL_CLI) + (["MODEL.WEIGHTS", e.weights] if weights else [])
    return args, opts


# name: (build(e) -> (args, opts, output or None: default), offenders named, subprocess too)
CASES = {
    "no_weights": (lambda e: base(e, weights=False), ["MODEL.WEIGHTS", "--random-weights"], True),
    "threshold_above_1": (lambda e: base(e, "--confidence-threshold", "5"), ["--confidence-threshold", "[0, 1]"], False),
    "threshold_negative": (lambda e: base(e, "--confidence-threshold", "-0.1"), ["--confidence-threshold"], False),
    "threshold_not_a_number": (lambda e: base(e, "--confidence-threshold", "high"), ["--confidence-threshold"], False),
    "mm_per_pixel_zero": (lambda e: base(e, "--mm-per-pixel", "0"), ["--mm-per-pixel"], False),
    "mm_per_pixel_negative": (lambda e: base(e, "--mm-per-pixel", "-0.2"), ["--mm-per-pixel"], False),
    "mm_per_pixel_nan": (lambda e: base(e, "--mm-per-pixel", "nan"), ["--mm-per-pixel"], False),
    "tile_equal_overlap": (lambda e: base(e, "--tile", "128", "--tile-overlap", "128"), ["--tile-overlap", "--tile"], False),
    "tile_smaller_than_overlap": (lambda e: base(e, "--tile", "64", "--tile-overlap", "128"), ["--tile-overlap"], False),
    "tile_negative": (lambda e: base(e, "--tile", "-1"), ["--tile"], False),
    "overlap_negative": (lambda e: base(e, "--tile-overlap", "-8"), ["--tile-overlap"], False),
    "glob_matches_nothing": (lambda e: base(e, inputs=str(e.root / "photos" / "*.tiff")), ["*.tiff"], False),
    "input_missing": (lambda e: base(e, inputs=str(e.root / "nowhere")), ["nowhere"], False),
    "input_folder_without_images": (lambda e: base(e, inputs=str(e.root / "empty_folder")), ["empty_folder"], False),
    "all_photos_unreadable": (lambda e: base(e, inputs=str(e.root / "bad_photos")), ["zero.jpg", "text.jpg"], False),
    "weights_missing_file": (lambda e: (base(e, weights=False)[0], SMALL_CLI + ["MODEL.WEIGHTS", str(e.root / "no.pth")]), ["no.pth"], False),
    "weights_truncated": (lambda e: (base(e, weights=False)[0], SMALL_CLI + ["MODEL.WEIGHTS", str(e.root / "truncated.pth")]), ["truncated.pth"], False),
    "weights_pickle_payload_pkl": (lambda e: (base(e, weights=False)[0], SMALL_CLI + ["MODEL.WEIGHTS", str(e.root / "evil.pkl")]), ["evil.pkl"], True),
    "weights_pickle_payload_pth": (lambda e: (base(e, weights=False)[0], SMALL_CLI + ["MODEL.WEIGHTS", str(e.root / "evil.pth")]), ["evil.pth"], False),
    "weights_other_config": (lambda e: (base(e)[0], base(e)[1] + ["MODEL.DETR.NUM_OBJECT_QUERIES", "7"]), ["MODEL.WEIGHTS", "query_embed"], False),
    "config_missing": (lambda e: (["--config-file", str(e.root / "nope.yaml")] + base(e)[0][2:], base(e)[1]), ["nope.yaml"], False),
    "config_key_typo": (lambda e: (base(e)[0], base(e)[1] + ["MODEL.DETR.NUM_QUERIES", "5"]), ["MODEL.DETR.NUM_QUERIES", "NUM_OBJECT_QUERIES"], False),
    "config_overlap_threshold": (lambda e: (base(e)[0], base(e)[1] + ["MODEL.DETR.TEST.OVERLAP_THRESHOLD", "2"]), ["MODEL.DETR.TEST.OVERLAP_THRESHOLD"], False),
    "config_odd_overrides": (lambda e: (base(e)[0], base(e)[1] + ["MODEL.DEVICE"]), ["MODEL.DEVICE"], False),
    "severity_missing": (lambda e: base(e, "--severity", str(e.root / "sev.yaml")), ["--severity", "sev.yaml"], False),
    "severity_not_yaml": (lambda e: base(e, "--severity", str(e.root / "bad_severity.yaml")), ["bad_severity.yaml"], False),
    "unknown_option": (lambda e: base(e, "--tiles", "3"), ["--tiles"], False),
}  # fmt: skip


def run_in_process(argv):
    """``run_cli(demo.main, argv)`` with its exit code and output, like a subprocess result."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(demo_cli.main, argv)
        except SystemExit as e:
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, env, tmp_path, monkeypatch):
    monkeypatch.delenv("D2_DETR_DEBUG", raising=False)
    build, names, _ = CASES[name]
    args, opts = build(env)
    out = tmp_path / "out"
    os.makedirs(out / "overlays")
    (out / "defects.csv").write_text("image,class\nold.jpg,crack\n")  # a previous run's output
    before = tree_digest(out)
    proc = run_in_process([*args, "--output", str(out), *opts])
    assert_user_error(proc, *names)
    assert tree_digest(out) == before
    assert not (env.root / "pwned").exists()


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c[2]))
def test_bad_input_cli(name, env, tmp_path):
    build, names, _ = CASES[name]
    args, opts = build(env)
    out = tmp_path / "out"
    os.makedirs(out)
    (out / "images.csv").write_text("image\nold.jpg\n")
    before = tree_digest(out)
    assert_user_error(run_tool("demo/demo.py", *args, "--output", out, *opts), *names)
    assert tree_digest(out) == before
    assert not (env.root / "pwned").exists()


def test_output_is_a_file(env):
    target = env.root / "a_file.txt"
    before = tree_digest(target)
    args, opts = base(env)
    proc = run_tool("demo/demo.py", *args, "--output", target, *opts)
    assert_user_error(proc, "--output", "a_file.txt")
    assert tree_digest(target) == before


def test_random_weights_flag_runs(env, tmp_path):
    """The explicit flag is the one way to run without MODEL.WEIGHTS."""
    args, opts = base(env, "--random-weights", weights=False)
    proc = run_in_process([*args, "--output", str(tmp_path / "out"), *opts])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "images.csv").is_file()
