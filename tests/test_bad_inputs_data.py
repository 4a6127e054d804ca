"""Bad-input catalog of the data tools (converter and validator).

Each converter case starts from a good raw folder, breaks one thing, and runs
``datasets/prepare_concrete_defects.py --overwrite`` onto an EXISTING converted dataset: the run
must exit 2 with a message naming the offender and no traceback, and the existing dataset must
be byte-for-byte untouched with no temporary folder left next to it. Each validator case breaks
one thing of a converted dataset: exit 1 with the problem located by file and json path when the
dataset is broken, exit 2 when nothing can be checked; the validator never writes.

Most cases call the script's ``main(argv)`` in this process (its exit status and captured
output, checked by ``cli_utils.assert_user_error`` like a subprocess; an unexpected exception
fails the test): starting Python with torch and Detectron2 costs seconds of CPU per run. A few
cases (``test_as_a_subprocess``) run the real scripts with ``cli_utils.run_tools`` (side by side).
"""

import contextlib
import importlib.util
import io
import json
import os
import shutil
import subprocess

import numpy as np
import pytest
from cli_utils import REPO, assert_user_error, run_tools, tree_digest
from PIL import Image

CONVERT = "datasets/prepare_concrete_defects.py"
CHECK = "datasets/check_panoptic.py"
_MODULES = {}


def run_main(script, *args):
    """``script``'s ``main(argv)`` in this process -> CompletedProcess (exit status, output)."""
    if script not in _MODULES:
        spec = importlib.util.spec_from_file_location(
            "_bad_inputs_" + os.path.basename(script)[:-3], os.path.join(REPO, script)
        )
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        _MODULES[script] = module
    argv = [str(a) for a in args]
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        code = _MODULES[script].main(argv)
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


@pytest.fixture(autouse=True)
def _no_debug(monkeypatch):
    monkeypatch.delenv("D2_DETR_DEBUG", raising=False)


def _mask(boxes):
    m = np.zeros((48, 64), np.uint8)
    for x, y, w, h in boxes:
        m[y : y + h, x : x + w] = 255
    return m


@pytest.fixture(scope="module")
def good_raw(tmp_path_factory):
    """Two 64x48 images with one crack and one spall mask, in the raw layout."""
    raw = tmp_path_factory.mktemp("bad_inputs") / "raw"
    os.makedirs(raw / "images")
    os.makedirs(raw / "masks")
    rng = np.random.default_rng(0)
    for stem in ("a", "b"):
        img = rng.integers(60, 200, (48, 64, 3), dtype=np.uint8)
        Image.fromarray(img).save(raw / "images" / f"{stem}.jpg", quality=95)
    Image.fromarray(_mask([(4, 4, 30, 3)])).save(raw / "masks" / "acrack.png")
    Image.fromarray(_mask([(10, 10, 20, 20)])).save(raw / "masks" / "bspall.png")
    return raw


@pytest.fixture(scope="module")
def converted(good_raw, tmp_path_factory):
    """``good_raw`` converted by the tool itself (the dataset later runs must not touch)."""
    out = tmp_path_factory.mktemp("bad_inputs_converted") / "dataset"
    proc = run_main(CONVERT, "--raw", good_raw, "--out", out, "--workers", "1", "--no-progress")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return out


def _break_raw(raw, case):
    """Apply one fault to a copy of the raw folder; returns (extra args, names to find)."""
    img, masks = raw / "images", raw / "masks"
    if case == "raw_missing":
        return ["--raw", raw / "nope"], ["nope", "folder not found"]
    if case == "raw_is_file":
        (raw / "file.txt").write_text("x")
        return ["--raw", raw / "file.txt"], ["file.txt", "not a folder"]
    if case == "images_missing":
        shutil.rmtree(img)
        return [], [os.path.join("raw", "images"), "folder not found"]
    if case == "no_images":
        shutil.rmtree(masks)
        for name in os.listdir(img):
            os.remove(img / name)
        os.makedirs(masks)
        return [], ["images", "no images found"]
    if case == "dangling_symlink_image":
        os.symlink(raw / "gone.jpg", img / "c.jpg")
        return [], ["c.jpg", "dangling symlink"]
    if case == "symlink_loop_mask":
        os.symlink(masks / "bspall.png.loop", masks / "bspall.png.loop2")
        os.remove(masks / "bspall.png")
        os.symlink(masks / "bspall.png.loop2", masks / "bspall.png")
        os.symlink(masks / "bspall.png", masks / "bspall.png.loop")
        os.remove(masks / "bspall.png.loop2")
        os.symlink(masks / "bspall.png.loop", masks / "bspall.png.loop2")
        return [], ["bspall.png", "symlink loop"]
    if case in ("corrupt_image", "corrupt_image_two_workers"):
        (img / "b.jpg").write_bytes(b"this is not a jpeg")
        return (["--workers", "2"] if "two" in case else []), ["b.jpg", "corrupt or unreadable"]
    if case == "dangling_symlink_mask_two_workers":
        os.symlink(raw / "gone.png", masks / "bcrack.png")
        return ["--workers", "2"], ["bcrack.png", "dangling symlink"]
    if case == "mask_size_differs_two_workers":
        Image.fromarray(np.zeros((40, 64), np.uint8)).save(masks / "bspall.png")
        return ["--workers", "2"], ["bspall.png", "64x40", "re-export"]
    if case == "truncated_mask":
        data = (masks / "acrack.png").read_bytes()
        (masks / "acrack.png").write_bytes(data[: len(data) // 2])
        return [], ["acrack.png", "not a readable image"]
    if case == "empty_mask_file":
        (masks / "acrack.png").write_bytes(b"")
        return [], ["acrack.png", "not a readable image"]
    if case == "mask_size_differs":
        Image.fromarray(np.zeros((40, 64), np.uint8)).save(masks / "acrack.png")
        return [], ["acrack.png", "64x40", "64x48"]
    if case == "unknown_suffix":
        Image.fromarray(_mask([(1, 1, 9, 9)])).save(masks / "adent.png")
        return [], ["adent.png", "unknown class suffix"]
    if case == "mask_without_image":
        Image.fromarray(_mask([(1, 1, 9, 9)])).save(masks / "zcrack.png")
        return [], ["zcrack.png", "mask without image"]
    if case == "unexpected_file_type":
        (img / "notes.txt").write_text("field notes")
        return [], ["notes.txt", "unexpected file type"]
    if case == "bad_threshold":
        return ["--threshold", "300"], ["--threshold", "300"]
    if case == "bad_class_priority":
        return ["--class-priority", "crack,spall"], ["class_priority", "rebar"]
    if case == "bad_fractions":
        return ["--val-fraction", "1.5"], ["val_fraction", "1.5"]
    if case == "bad_workers":
        return ["--workers", "0"], ["workers", "0"]
    if case == "suffix_to_unknown_class":
        return ["--class-suffixes", "crack,spall,rebar,dent=dent"], ["dent", "unknown classes"]
    raise AssertionError(case)


CONVERTER_CASES = [
    "raw_missing",
    "raw_is_file",
    "images_missing",
    "no_images",
    "dangling_symlink_image",
    "symlink_loop_mask",
    "corrupt_image",
    "corrupt_image_two_workers",
    "dangling_symlink_mask_two_workers",
    "mask_size_differs_two_workers",
    "truncated_mask",
    "empty_mask_file",
    "mask_size_differs",
    "unknown_suffix",
    "mask_without_image",
    "unexpected_file_type",
    "bad_threshold",
    "bad_class_priority",
    "bad_fractions",
    "bad_workers",
    "suffix_to_unknown_class",
]


@pytest.mark.parametrize("case", CONVERTER_CASES)
def test_converter_bad_input(case, good_raw, converted, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(good_raw, raw, symlinks=True)
    out = tmp_path / "dataset"
    shutil.copytree(converted, out)
    before = tree_digest(out)
    args, names = _break_raw(raw, case)
    argv = ["--raw", raw, "--out", out, "--overwrite", "--workers", "1", "--no-progress"]
    if args and args[0] == "--raw":
        argv[:2] = args
        args = []
    proc = run_main(CONVERT, *argv, *args)
    assert_user_error(proc, *names)
    assert tree_digest(out) == before, "the existing dataset was modified"
    assert sorted(os.listdir(tmp_path)) == ["dataset", "raw"], "something was left next to OUT"


@pytest.mark.parametrize("case", ["out_is_file", "out_parent_is_file", "out_not_a_dataset"])
def test_converter_refuses_out(case, good_raw, tmp_path):
    if case == "out_is_file":
        target = tmp_path / "report.pdf"
        target.write_bytes(b"%PDF precious")
        out, names = target, ["report.pdf", "not a folder"]
    elif case == "out_parent_is_file":
        target = tmp_path / "notes.txt"
        target.write_text("precious")
        out, names = target / "dataset", ["notes.txt", "not a folder"]
    else:  # someone's folder: --overwrite must not delete it
        target = tmp_path / "home"
        os.makedirs(target / "photos")
        (target / "photos" / "x.jpg").write_bytes(b"precious")
        out, names = target, ["home", "not a converted dataset"]
    before = tree_digest(target)
    proc = run_main(CONVERT, "--raw", good_raw, "--out", out, "--overwrite", "--no-progress")
    assert_user_error(proc, *names)
    assert tree_digest(target) == before
    assert len(os.listdir(tmp_path)) == 1, os.listdir(tmp_path)


def test_converter_existing_out_without_overwrite(good_raw, converted, tmp_path):
    out = tmp_path / "dataset"
    shutil.copytree(converted, out)
    before = tree_digest(out)
    proc = run_main(CONVERT, "--raw", good_raw, "--out", out, "--no-progress")
    assert_user_error(proc, "dataset", "already exists", "--overwrite")
    assert tree_digest(out) == before


# --- validator ------------------------------------------------------------------------------


def _edit(path, fn):
    with open(path) as f:
        data = json.load(f)
    data = fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def _set(keys, value):
    def fn(data):
        node = data
        for k in keys[:-1]:
            node = node[k]
        node[keys[-1]] = value
        return data

    return fn


def _drop(key):
    def fn(data):
        del data[key]
        return data

    return fn


PAN = os.path.join("annotations", "panoptic_train.json")
INS = os.path.join("annotations", "instances_train.json")
VALIDATOR_BROKEN = {
    # case: (file, edit, names located in the output)
    "top_level_list": (PAN, lambda d: [d], ["panoptic_train.json", "top level", "a list"]),
    "segments_info_null": (
        PAN,
        _set(["annotations", 0, "segments_info"], None),
        ["panoptic_train.json", "annotations[0].segments_info", "got null"],
    ),
    "segment_id_string": (
        PAN,
        _set(["annotations", 0, "segments_info", 0, "id"], "1"),
        ["annotations[0].segments_info[0].id", "an integer"],
    ),
    "annotations_missing": (PAN, _drop("annotations"), ["missing key 'annotations'"]),
    "images_not_a_list": (PAN, _set(["images"], {"id": 1}), ["images: expected a list"]),
    "image_entry_not_object": (PAN, _set(["images", 0], 7), ["images[0]", "an object"]),
    "bbox_wrong_length": (
        PAN,
        _set(["annotations", 0, "segments_info", 0, "bbox"], [1, 2, 3]),
        ["annotations[0].segments_info[0].bbox", "4 numbers"],
    ),
    "instances_bbox_string": (
        INS,
        _set(["annotations", 0, "bbox"], "0,0,1,1"),
        ["instances_train.json", "annotations[0].bbox"],
    ),
    "instances_segmentation_null": (
        INS,
        _set(["annotations", 0, "segmentation"], None),
        ["instances_train.json", "annotations[0].segmentation"],
    ),
}


@pytest.mark.parametrize("case", sorted(VALIDATOR_BROKEN) + ["broken_json_text"])
def test_validator_located_problem(case, converted, tmp_path):
    root = tmp_path / "dataset"
    shutil.copytree(converted, root)
    if case == "broken_json_text":
        (root / PAN).write_text('{"images": [')
        names = ["panoptic_train.json", "unreadable json"]
    else:
        rel, fn, names = VALIDATOR_BROKEN[case]
        _edit(root / rel, fn)
    before = tree_digest(root)
    proc = run_main(CHECK, root)
    output = proc.stdout + proc.stderr
    assert proc.returncode == 1, output[-3000:]
    assert "Traceback" not in output, output[-3000:]
    for name in names:
        assert name in proc.stdout, f"{name!r} not in:\n{output[-3000:]}"
    assert tree_digest(root) == before


@pytest.mark.parametrize("case", ["missing", "no_annotations", "image_root_missing", "workers"])
def test_validator_unusable_input(case, converted, tmp_path):
    if case == "missing":
        args, names = [tmp_path / "nope"], ["nope", "does not exist"]
    elif case == "no_annotations":
        os.makedirs(tmp_path / "empty")
        args, names = [tmp_path / "empty"], [os.path.join("empty", "annotations"), "no panoptic"]
    elif case == "image_root_missing":
        args = [converted / PAN, "--image-root", tmp_path / "pics"]
        names = ["--image-root", "pics", "not found"]
    else:
        args, names = [converted, "--workers", "0"], ["--workers", "0"]
    before = tree_digest(converted)
    assert_user_error(run_main(CHECK, *args), *names)
    assert tree_digest(converted) == before


def test_as_a_subprocess(good_raw, converted, tmp_path):
    """The real scripts, three ways (run side by side): converter exit 2, validator exit 1,
    validator exit 2."""
    raw = tmp_path / "raw"
    shutil.copytree(good_raw, raw)
    os.symlink(raw / "gone.png", raw / "masks" / "bcrack.png")
    out = tmp_path / "dataset"
    shutil.copytree(converted, out)
    before = tree_digest(out)
    broken = tmp_path / "broken"
    shutil.copytree(converted, broken)
    _edit(broken / PAN, _set(["annotations", 0, "segments_info"], None))
    converter, located, missing = run_tools(
        (CONVERT, ["--raw", raw, "--out", out, "--overwrite", "--no-progress"]),
        (CHECK, [broken]),
        (CHECK, [tmp_path / "nope"]),
    )
    assert_user_error(converter, "bcrack.png", "dangling symlink")
    assert tree_digest(out) == before
    assert sorted(os.listdir(tmp_path)) == ["broken", "dataset", "raw"]

    assert located.returncode == 1 and "Traceback" not in located.stderr, located.stderr[-3000:]
    assert "panoptic_train.json: annotations[0].segments_info: expected a list" in located.stdout

    assert_user_error(missing, "nope", "does not exist")
