"""Bad-input catalog of demo/demo.py: every case exits 2 with a message naming the offender, no
traceback, and leaves existing outputs untouched.

Most cases run in-process through ``run_cli`` (the same path as the command line, without the
interpreter start-up); the cases marked ``cli`` also run as real processes, started side by
side."""

import os
import pickle
import types

import pytest
from cli_utils import CodePayload, assert_user_error, run_tools, tree_digest
from test_demo import SMALL_CLI, TINY, run_in_process, save_tiny_weights, write_photos


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_demo")
    photos = root / "photos"
    write_photos(photos, ["a.jpg", "b.png"])
    weights = save_tiny_weights(root / "model.pth")
    data = open(weights, "rb").read()
    (root / "truncated.pth").write_bytes(data[: len(data) // 2])
    (root / "evil.pkl").write_bytes(pickle.dumps({"model": CodePayload(str(root / "pwned"))}))
    (root / "evil.pth").write_bytes(pickle.dumps({"model": CodePayload(str(root / "pwned"))}))
    os.makedirs(root / "empty_folder")
    bad = root / "bad_photos"
    os.makedirs(bad)
    (bad / "zero.jpg").write_bytes(b"")
    (bad / "text.jpg").write_text("not a photo")
    (root / "a_file.txt").write_text("I am a file")
    (root / "bad_severity.yaml").write_text("crack: [unclosed\n")
    return types.SimpleNamespace(root=root, photos=str(photos), weights=weights)


def C(args=(), opts=(), names=(), weights="{weights}", inputs="{photos}", cli=False):
    """A case: extra arguments, extra config overrides (``weights`` None: no MODEL.WEIGHTS),
    and the names the message must contain; "{root}", "{photos}", "{weights}" are filled in."""
    return dict(args=args, opts=opts, names=names, weights=weights, inputs=inputs, cli=cli)


CASES = {
    "no_weights": C(weights=None, names=["MODEL.WEIGHTS", "--random-weights"], cli=True),
    "threshold_above_1": C(["--confidence-threshold", "5"], names=["--confidence-threshold"]),
    "threshold_negative": C(["--confidence-threshold", "-0.1"], names=["--confidence-threshold"]),
    "threshold_not_a_number": C(["--confidence-threshold", "hi"], names=["--confidence-threshold"]),
    "mm_per_pixel_zero": C(["--mm-per-pixel", "0"], names=["--mm-per-pixel"]),
    "mm_per_pixel_negative": C(["--mm-per-pixel", "-0.2"], names=["--mm-per-pixel"]),
    "mm_per_pixel_nan": C(["--mm-per-pixel", "nan"], names=["--mm-per-pixel"]),
    "tile_equal_overlap": C(["--tile", "128", "--tile-overlap", "128"], names=["--tile-overlap"]),
    "tile_below_overlap": C(["--tile", "64", "--tile-overlap", "128"], names=["--tile-overlap"]),
    "tile_negative": C(["--tile", "-1"], names=["--tile"]),
    "overlap_negative": C(["--tile-overlap", "-8"], names=["--tile-overlap"]),
    "overlap_above_default_tile": C(
        ["--tile-overlap", "5000"], names=["--tile-overlap", "MIN_SIZE_TEST"]
    ),
    "glob_matches_nothing": C(inputs="{root}/photos/*.tiff", names=["*.tiff"]),
    "input_missing": C(inputs="{root}/nowhere", names=["nowhere"]),
    "input_folder_without_images": C(inputs="{root}/empty_folder", names=["empty_folder"]),
    "all_photos_unreadable": C(inputs="{root}/bad_photos", names=["zero.jpg", "text.jpg"]),
    "weights_missing_file": C(weights="{root}/no.pth", names=["no.pth"]),
    "weights_truncated": C(weights="{root}/truncated.pth", names=["truncated.pth"]),
    "weights_pickle_payload_pkl": C(weights="{root}/evil.pkl", names=["evil.pkl"], cli=True),
    "weights_pickle_payload_pth": C(weights="{root}/evil.pth", names=["evil.pth"]),
    "weights_other_config": C(
        opts=["MODEL.DETR.NUM_OBJECT_QUERIES", "7"], names=["MODEL.WEIGHTS", "query_embed"]
    ),
    "config_missing": C(["--config-file", "{root}/nope.yaml"], names=["nope.yaml"]),
    "config_key_typo": C(
        opts=["MODEL.DETR.NUM_QUERIES", "5"], names=["MODEL.DETR.NUM_QUERIES", "NUM_OBJECT"]
    ),
    "config_overlap_threshold": C(
        opts=["MODEL.DETR.TEST.OVERLAP_THRESHOLD", "2"], names=["TEST.OVERLAP_THRESHOLD"]
    ),
    "config_odd_overrides": C(opts=["MODEL.DEVICE"], names=["MODEL.DEVICE"]),
    "severity_missing": C(["--severity", "{root}/sev.yaml"], names=["--severity", "sev.yaml"]),
    "severity_not_yaml": C(["--severity", "{root}/bad_severity.yaml"], names=["bad_severity"]),
    "unknown_option": C(["--tiles", "3"], names=["--tiles"]),
    "random_and_trained_weights": C(["--random-weights"], names=["--random-weights", "model.pth"]),
}


def build(case, e):
    """(arguments before --output, config overrides) of a case."""
    fill = lambda x: x.format(root=e.root, photos=e.photos, weights=e.weights)  # noqa: E731
    args = ["--config-file", TINY, "--input", fill(case["inputs"]), "--no-progress"]
    args += [fill(a) for a in case["args"]]  # a later --config-file wins
    opts = list(SMALL_CLI) + [fill(o) for o in case["opts"]]
    if case["weights"]:
        opts += ["MODEL.WEIGHTS", fill(case["weights"])]
    return args, opts


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(name, env, tmp_path, monkeypatch):
    monkeypatch.delenv("D2_DETR_DEBUG", raising=False)
    args, opts = build(CASES[name], env)
    names = CASES[name]["names"]
    out = tmp_path / "out"
    os.makedirs(out / "overlays")
    (out / "defects.csv").write_text("image,class\nold.jpg,crack\n")  # a previous run's output
    before = tree_digest(out)
    proc = run_in_process([*args, "--output", str(out), *opts])
    assert_user_error(proc, *names)
    assert tree_digest(out) == before
    assert not (env.root / "pwned").exists()


@pytest.fixture(scope="module")
def cli_runs(env, tmp_path_factory):
    """The cases marked ``cli``, and an --output that is a file, as real processes started side
    by side -> {name: (CompletedProcess, the output, its digest before the run)}."""
    calls, outputs = {}, {}
    for name in sorted(n for n, c in CASES.items() if c["cli"]):
        args, opts = build(CASES[name], env)
        out = tmp_path_factory.mktemp(f"cli_{name}") / "out"
        os.makedirs(out)
        (out / "images.csv").write_text("image\nold.jpg\n")
        outputs[name] = out
        calls[name] = ("demo/demo.py", [*args, "--output", out, *opts])
    args, opts = build(C(), env)
    outputs["output_is_a_file"] = env.root / "a_file.txt"
    calls["output_is_a_file"] = (
        "demo/demo.py",
        [*args, "--output", env.root / "a_file.txt", *opts],
    )
    before = {name: tree_digest(out) for name, out in outputs.items()}
    procs = run_tools(*calls.values())
    return {name: (proc, outputs[name], before[name]) for name, proc in zip(calls, procs)}


@pytest.mark.parametrize("name", sorted(n for n, c in CASES.items() if c["cli"]))
def test_bad_input_cli(name, env, cli_runs):
    proc, out, before = cli_runs[name]
    assert_user_error(proc, *CASES[name]["names"])
    assert tree_digest(out) == before
    assert not (env.root / "pwned").exists()


def test_output_is_a_file(cli_runs):
    proc, target, before = cli_runs["output_is_a_file"]
    assert_user_error(proc, "--output", "a_file.txt")
    assert tree_digest(target) == before


def test_random_weights_flag_runs(env, tmp_path):
    """The explicit flag is the one way to run without MODEL.WEIGHTS."""
    args, opts = build(C(["--random-weights"], weights=None), env)
    proc = run_in_process([*args, "--output", str(tmp_path / "out"), *opts])
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "out" / "images.csv").is_file()
