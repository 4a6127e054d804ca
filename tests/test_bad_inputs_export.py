"""Bad inputs of tools/export_model.py and of running an exported model (demo --onnx): exit 2,
a message naming the offending argument / file / key, no traceback, nothing written."""

import contextlib
import importlib.util
import io
import os
import pickle
import sys
import types

import d2_detr  # noqa: F401  (compat first)

# isort: split
import pytest
import torch
from cli_utils import CodePayload, assert_user_error, run_tool, tree_digest
from detectron2.modeling import build_model
from model_utils import tiny_cfg

from d2_detr.export import ExportedDETR, export_onnx
from d2_detr.utils.cli import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = "tools/export_model.py"


def _tool_main():
    spec = importlib.util.spec_from_file_location("export_model", os.path.join(ROOT, TOOL))
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module.main


def run_in_process(main, argv):
    """``run_cli(main, argv)`` with its exit code and output, like a subprocess result."""
    out, err = io.StringIO(), io.StringIO()
    code = 0
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        try:
            run_cli(main, argv)
        except SystemExit as e:
            code = e.code
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


@pytest.fixture(scope="module")
def setup(tmp_path_factory):
    folder = tmp_path_factory.mktemp("bad_export")
    cfg = tiny_cfg()
    torch.manual_seed(0)
    model = build_model(cfg).eval()
    weights = folder / "model.pth"
    torch.save({"model": model.state_dict()}, weights)
    config = folder / "cfg.yaml"
    config.write_text(cfg.dump())
    wide = tiny_cfg("MODEL.DETR.HIDDEN_DIM", "32")
    wrong = folder / "wide.pth"
    torch.save({"model": build_model(wide).state_dict()}, wrong)
    garbage = folder / "garbage.pth"
    garbage.write_bytes(b"this is not a checkpoint" * 10)
    evil = folder / "evil.pth"
    with open(evil, "wb") as f:
        pickle.dump({"model": CodePayload(str(folder / "pwned"))}, f)
    not_image = folder / "photo.jpg"
    not_image.write_text("not an image")
    onnx_path = folder / "model.onnx"
    g = torch.Generator().manual_seed(0)
    export_onnx(model, str(onnx_path), torch.randint(0, 256, (1, 3, 50, 70), generator=g).float(),
                cfg=cfg)  # fmt: skip
    return types.SimpleNamespace(
        folder=folder, cfg=cfg, config=str(config), weights=str(weights), wrong=str(wrong),
        garbage=str(garbage), evil=str(evil), not_image=str(not_image), onnx=str(onnx_path),
    )  # fmt: skip


def _argv(s, out, *extra, fmt="onnx", weights=None, config=None):
    argv = ["--config-file", config or s.config, "--format", fmt, "--output", str(out)]
    return argv + list(extra) + ["MODEL.WEIGHTS", weights or s.weights]


CASES = {
    # name: (argv builder, names expected in the message)
    "unknown format": (lambda s, o: _argv(s, o, fmt="tflite"), ["--format", "tflite", "onnx"]),
    "config missing": (lambda s, o: _argv(s, o, config="nope/cfg.yaml"), ["nope/cfg.yaml"]),
    "weights missing": (lambda s, o: _argv(s, o, weights="gone.pth"), ["gone.pth"]),
    "weights folder": (lambda s, o: _argv(s, o, weights=str(s.folder)), [None]),
    "weights not a checkpoint": (lambda s, o: _argv(s, o, weights=s.garbage), ["garbage.pth"]),
    "weights would run code": (lambda s, o: _argv(s, o, weights=s.evil), ["evil.pth"]),
    "weights of another config": (lambda s, o: _argv(s, o, weights=s.wrong), ["wide.pth"]),
    "no weights": (
        lambda s, o: ["--config-file", s.config, "--format", "onnx", "--output", str(o)],
        ["MODEL.WEIGHTS"],
    ),
    "unknown config key": (
        lambda s, o: _argv(s, o) + ["MODEL.DETR.NUM_QUERIES", "5"],
        ["MODEL.DETR.NUM_QUERIES"],
    ),
    "override without value": (lambda s, o: _argv(s, o) + ["INPUT.FORMAT"], ["INPUT.FORMAT"]),
    "old opset": (lambda s, o: _argv(s, o, "--opset", "11"), ["--opset", "11"]),
    "sample image missing": (lambda s, o: _argv(s, o, "--sample-image", "no.jpg"), ["no.jpg"]),
    "sample image unreadable": (
        lambda s, o: _argv(s, o, "--sample-image", s.not_image),
        ["photo.jpg"],
    ),
    "no format": (
        lambda s, o: ["--config-file", s.config, "--output", str(o), "MODEL.WEIGHTS", s.weights],
        ["--format"],
    ),
}


@pytest.mark.parametrize("name", sorted(CASES))
def test_export_tool_bad_input(setup, tmp_path, name):
    build_argv, names = CASES[name]
    out = tmp_path / "out"
    proc = run_in_process(_tool_main(), [str(a) for a in build_argv(setup, out)])
    if names == [None]:
        names = [str(setup.folder)]
    assert_user_error(proc, *names)
    assert not out.exists(), "nothing may be written on a user error"
    assert not (setup.folder / "pwned").exists()


def test_output_is_a_file_subprocess(setup, tmp_path):
    """The command line as a user runs it: --output names a file, which stays untouched."""
    target = tmp_path / "out.onnx"
    target.write_text("keep me")
    before = tree_digest(str(tmp_path))
    proc = run_tool(TOOL, *_argv(setup, target))
    assert_user_error(proc, "--output", str(target), "is a file")
    assert tree_digest(str(tmp_path)) == before


def test_exported_model_bad_files(setup, tmp_path):
    with pytest.raises(UserError, match="does not exist"):
        ExportedDETR(setup.cfg, str(tmp_path / "missing.onnx"))
    garbage = tmp_path / "x.onnx"
    garbage.write_bytes(b"\x00garbage" * 20)
    with pytest.raises(UserError, match="x.onnx.*onnxruntime"):
        ExportedDETR(setup.cfg, str(garbage))
    with pytest.raises(UserError, match="not a TorchScript file"):
        ExportedDETR(setup.cfg, setup.weights)
    other = setup.cfg.clone()
    other.MODEL.DETR.NUM_OBJECT_QUERIES = 7
    with pytest.raises(UserError, match="NUM_OBJECT_QUERIES 10.*7"):
        ExportedDETR(other, setup.onnx)


def test_demo_onnx_bad_file(setup, tmp_path):
    sys.path.insert(0, os.path.join(ROOT, "demo"))
    from test_demo import write_photos

    import demo as demo_cli

    photos = write_photos(tmp_path / "photos", ["a.jpg"])
    garbage = tmp_path / "bad.onnx"
    garbage.write_text("not a model")
    tiny = "configs/ConcreteDefects/detr_tiny_cpu.yaml"
    for path, names in ((tmp_path / "none.onnx", ["--onnx", "none.onnx"]), (garbage, ["bad.onnx"])):
        out = tmp_path / "out"
        proc = run_in_process(
            demo_cli.main,
            ["--config-file", tiny, "--input", photos[0], "--output", str(out), "--onnx", str(path),
             "--no-progress"],
        )  # fmt: skip
        assert_user_error(proc, *names)
        assert not out.exists()
