"""Bad-input catalog of the training tools (tools/train_net.py, tools/convert_detr_checkpoint.py,
tools/plot_metrics.py): every case exits 2 with a message naming the offender, prints no
traceback, writes nothing (the whole case folder hashes the same before and after) and runs no
code from a checkpoint (a payload's marker file is never created).

Most cases run in-process through ``run_cli`` (the command line's path without the interpreter
start-up); the cases marked ``cli`` run instead as real processes (started side by side).
Every case fails before a model is built."""

import contextlib
import importlib.util
import io
import os
import pickle
import types

import pytest
import torch
from cli_utils import CodePayload, assert_user_error, run_tools, tree_digest
from model_utils import TINY_CONFIG
from test_mapper import write_tiny_panoptic_dataset

from d2_detr.data.datasets import register_concrete_defects
from d2_detr.utils.cli import UserError, run_cli

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOLS = {
    "train": "tools/train_net.py",
    "convert": "tools/convert_detr_checkpoint.py",
    "plot": "tools/plot_metrics.py",
}


def _load_tool(name):
    spec = importlib.util.spec_from_file_location(f"_bad_input_{name}", TOOLS[name])
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def env(tmp_path_factory):
    root = tmp_path_factory.mktemp("bad_train")
    data = root / "d2data"
    write_tiny_panoptic_dataset(str(data / "synthetic_concrete"), "train", 2, seed=1)
    write_tiny_panoptic_dataset(str(data / "synthetic_concrete"), "val", 2, seed=2)
    register_concrete_defects(str(data / "synthetic_concrete"), "synthetic_concrete")
    os.makedirs(root / "empty_datasets")
    # a previous run's outputs, which no failing case may touch
    os.makedirs(root / "out")
    good = {"model": {"w": torch.ones(3)}, "iteration": 9}
    torch.save(good, root / "out" / "model_final.pth")
    (root / "out" / "metrics.json").write_text('{"iteration": 19, "total_loss": 3.0}\n')
    data_bytes = (root / "out" / "model_final.pth").read_bytes()
    (root / "truncated.pth").write_bytes(data_bytes[: len(data_bytes) // 2])
    (root / "text.pth").write_text("these are not weights\n")
    torch.save({"model": CodePayload(str(root / "pwned"))}, root / "evil.pth")
    (root / "evil.pkl").write_bytes(
        pickle.dumps({"model": {"w": CodePayload(str(root / "pwned"))}, "__author__": "x"})
    )
    torch.save({"foo.weight": torch.ones(2)}, root / "not_detr.pth")
    torch.save([1, 2, 3], root / "a_list.pth")
    (root / "a_file.txt").write_text("I am a file")
    (root / "broken.yaml").write_text("MODEL: [unclosed\n")
    (root / "typo.yaml").write_text(f"_BASE_: {TINY_CONFIG}\nMODEL:\n  DETR:\n    NUM_CLASES: 4\n")
    for run, name, content in (
        ("run_missing", "model_0000099.pth", None),
        ("run_truncated", "model_0000009.pth", data_bytes[:100]),
    ):
        os.makedirs(root / run)
        (root / run / "last_checkpoint").write_text(name)
        if content is not None:
            (root / run / name).write_bytes(content)
    os.makedirs(root / "no_metrics")
    os.makedirs(root / "bad_metrics")
    (root / "bad_metrics" / "metrics.json").write_text(
        '{"iteration": 19, "total_loss": 3.0}\n{"iteration": 39, "total_lo\n'
        '{"iteration": 59, "total_loss": 2.0}\n'
    )
    os.makedirs(root / "list_metrics")
    (root / "list_metrics" / "metrics.json").write_text("[1, 2]\n")
    yield types.SimpleNamespace(root=root, data=str(data))
    register_concrete_defects(
        os.path.join(os.getenv("DETECTRON2_DATASETS", "datasets"), "synthetic_concrete"),
        "synthetic_concrete",
    )


def C(tool, args, names, cli=False, env=None, absent=()):
    """A case: the tool, its arguments and the names its message must contain ("{root}" and
    "{tiny}" are filled in); ``absent``: text that must NOT be in the message."""
    return dict(tool=tool, args=args, names=names, cli=cli, env=env or {}, absent=absent)


T = ["--config-file", "{tiny}", "OUTPUT_DIR", "{root}/out"]
CASES = {
    # tools/train_net.py: config file and keys
    "train_missing_config": C("train", ["--config-file", "{root}/nope.yaml"], ["nope.yaml"]),
    "train_invalid_yaml": C("train", ["--config-file", "{root}/broken.yaml"], ["broken.yaml"]),
    "train_mistyped_key_in_file": C(
        "train", ["--config-file", "{root}/typo.yaml"],
        ["typo.yaml", "MODEL.DETR.NUM_CLASES", "MODEL.DETR.NUM_CLASSES"],
    ),
    "train_mistyped_key_in_opts": C(
        "train", T + ["MODEL.DETR.NUM_CLASES", "4"],
        ["MODEL.DETR.NUM_CLASES", "MODEL.DETR.NUM_CLASSES"],
    ),
    "train_key_under_mistyped_node": C(
        "train", T + ["SOLVR.MAX_ITER", "5"], ["SOLVR.MAX_ITER", "SOLVER.MAX_ITER"]
    ),
    "train_value_of_wrong_type": C("train", T + ["SOLVER.MAX_ITER", "many"], ["SOLVER.MAX_ITER"]),
    "train_override_without_value": C("train", T + ["SOLVER.MAX_ITER"], ["SOLVER.MAX_ITER"]),
    # datasets
    "train_unregistered_dataset": C(
        "train", T + ["DATASETS.TRAIN", "('synthetic_concret_train_panoptic',)"],
        ["DATASETS.TRAIN", "synthetic_concret_train_panoptic", "synthetic_concrete_train_panoptic"],
        absent=["cityscapes", "lvis_", "voc_"],  # the closest names, not all 400
    ),
    "train_unregistered_test_dataset": C(
        "train", T + ["DATASETS.TEST", "('synthetic_concrete_vall_panoptic',)"],
        ["DATASETS.TEST", "synthetic_concrete_val_panoptic"],
    ),
    "train_dataset_files_missing": C(
        "train", T, ["synthetic_concrete", "prepare_concrete_defects.py", "DETECTRON2_DATASETS"],
        cli=True, env={"DETECTRON2_DATASETS": "{root}/empty_datasets"},
    ),
    "train_num_classes_disagrees": C(
        "train", T + ["MODEL.DETR.NUM_CLASSES", "6"],
        ["MODEL.DETR.NUM_CLASSES", "synthetic_concrete_train_panoptic", "4 classes"],
    ),
    # data loader
    "train_unknown_sampler": C(
        "train", T + ["DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler"],
        ["DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler", "RepeatFactorTrainingSampler"],
    ),
    "train_negative_repeat_threshold": C(
        "train", T + ["DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                      "DATALOADER.REPEAT_THRESHOLD", "-0.5"],
        ["DATALOADER.REPEAT_THRESHOLD", "-0.5"],
    ),
    # weights and checkpoints
    "train_weights_missing": C("train", T + ["MODEL.WEIGHTS", "{root}/none.pth"], ["none.pth"]),
    "train_weights_folder": C("train", T + ["MODEL.WEIGHTS", "{root}/out"], ["MODEL.WEIGHTS"]),
    "train_weights_truncated": C(
        "train", T + ["MODEL.WEIGHTS", "{root}/truncated.pth"], ["truncated.pth", "truncated"]
    ),
    "train_weights_not_a_checkpoint": C(
        "train", T + ["MODEL.WEIGHTS", "{root}/text.pth"], ["text.pth"]
    ),
    "train_weights_not_a_dict": C(
        "train", T + ["MODEL.WEIGHTS", "{root}/a_list.pth"], ["a_list.pth", "list"]
    ),
    "train_weights_pkl_runs_code": C(
        "train", T + ["MODEL.WEIGHTS", "{root}/evil.pkl"], ["evil.pkl", "open"], cli=True
    ),
    "train_weights_pth_runs_code": C(
        "train", T + ["MODEL.WEIGHTS", "{root}/evil.pth"], ["evil.pth", "open"]
    ),
    "train_resume_checkpoint_missing": C(
        "train", ["--resume", "--config-file", "{tiny}", "OUTPUT_DIR", "{root}/run_missing"],
        ["last_checkpoint", "model_0000099.pth"],
    ),
    "train_resume_checkpoint_truncated": C(
        "train", ["--resume", "--config-file", "{tiny}", "OUTPUT_DIR", "{root}/run_truncated"],
        ["last_checkpoint", "model_0000009.pth"],
    ),
    "train_output_dir_is_a_file": C(
        "train", ["--config-file", "{tiny}", "OUTPUT_DIR", "{root}/a_file.txt"],
        ["OUTPUT_DIR", "a_file.txt"],
    ),
    "train_output_dir_under_a_file": C(
        "train", ["--config-file", "{tiny}", "OUTPUT_DIR", "{root}/a_file.txt/run"],
        ["OUTPUT_DIR", "a_file.txt"],
    ),
    "train_eval_only_without_weights": C(
        "train", ["--eval-only"] + T, ["--eval-only", "MODEL.WEIGHTS"]
    ),
    "train_eval_only_weights_run_code": C(
        "train", ["--eval-only"] + T + ["MODEL.WEIGHTS", "{root}/evil.pth"], ["evil.pth"]
    ),
    # tools/convert_detr_checkpoint.py
    "convert_input_missing": C("convert", ["{root}/none.pth", "{root}/c.pth"], ["none.pth"]),
    "convert_input_runs_code": C(
        "convert", ["{root}/evil.pkl", "{root}/c.pth"], ["evil.pkl", "open"]
    ),
    "convert_input_truncated": C(
        "convert", ["{root}/truncated.pth", "{root}/c.pth"], ["truncated.pth"]
    ),
    "convert_input_not_detr": C(
        "convert", ["{root}/not_detr.pth", "{root}/c.pth"], ["not_detr.pth", "foo.weight"]
    ),
    "convert_unregistered_dataset": C(
        "convert", ["--dataset", "coco_2017_vall_panoptic", "{root}/not_detr.pth", "{root}/c.pth"],
        ["coco_2017_vall_panoptic", "coco_2017_val_panoptic"],
    ),
    "convert_output_folder_missing": C(
        "convert", ["{root}/not_detr.pth", "{root}/no/such/folder/c.pth"], ["no/such/folder"]
    ),
    "convert_output_is_a_folder": C("convert", ["{root}/not_detr.pth", "{root}/out"], ["out"]),
    "convert_config_key_mistyped": C(
        "convert", ["--config-file", "{tiny}", "{root}/not_detr.pth", "{root}/c.pth",
                    "MODEL.DETR.HIDEN_DIM", "64"],
        ["MODEL.DETR.HIDEN_DIM", "MODEL.DETR.HIDDEN_DIM"],
    ),
    # tools/plot_metrics.py
    "plot_output_dir_missing": C("plot", ["{root}/no_run"], ["no_run"]),
    "plot_no_metrics_json": C("plot", ["{root}/no_metrics"], ["no_metrics", "metrics.json"]),
    "plot_malformed_line": C(
        "plot", ["{root}/bad_metrics"], ["metrics.json:2", "not a JSON line"], cli=True
    ),
    "plot_not_records": C("plot", ["{root}/list_metrics"], ["metrics.json:1"]),
    "plot_out_is_a_file": C("plot", ["{root}/out", "--out", "{root}/a_file.txt"], ["a_file.txt"]),
}  # fmt: skip


def _fill(value, env):
    return value.replace("{root}", str(env.root)).replace("{tiny}", TINY_CONFIG)


def _in_process(tool, args, extra_env):
    """Run the tool's main through run_cli here; a proc-like result for assert_user_error."""
    module = _load_tool(tool)
    out, err = io.StringIO(), io.StringIO()
    code = 0
    old_env = {k: os.environ.get(k) for k in extra_env}
    os.environ.update(extra_env)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            try:
                if tool == "train":
                    run_cli(module.main, module.parse_args(args))
                else:
                    run_cli(module.main, args)
            except SystemExit as e:
                code = e.code
    finally:
        for k, v in old_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
    return types.SimpleNamespace(returncode=code, stdout=out.getvalue(), stderr=err.getvalue())


def _filled(case, env):
    """(arguments, environment, names) of a case with "{root}" and "{tiny}" filled in."""
    args = [_fill(a, env) for a in case["args"]]
    extra_env = {k: _fill(v, env) for k, v in case["env"].items()}
    return args, extra_env, [_fill(n, env) for n in case["names"]]


@pytest.fixture(scope="module")
def cli_runs(env):
    """The cases marked ``cli`` as real processes started side by side -> ({name:
    CompletedProcess}, the digest of the case folder before they ran)."""
    names = sorted(n for n, c in CASES.items() if c["cli"])
    calls = []
    for name in names:
        args, extra_env, _ = _filled(CASES[name], env)
        extra_env.setdefault("DETECTRON2_DATASETS", env.data)
        calls.append((TOOLS[CASES[name]["tool"]], args, extra_env))
    before = tree_digest(str(env.root))
    return dict(zip(names, run_tools(*calls))), before


@pytest.mark.parametrize("name", sorted(CASES))
def test_bad_input(env, name, request):
    case = CASES[name]
    args, extra_env, names = _filled(case, env)
    if case["cli"]:
        procs, before = request.getfixturevalue("cli_runs")
        proc = procs[name]
    else:
        before = tree_digest(str(env.root))
        proc = _in_process(case["tool"], args, extra_env)
    assert_user_error(proc, *names)
    output = proc.stdout + proc.stderr
    for text in case["absent"]:
        assert text not in output, f"{text!r} should not be listed:\n{output[-2000:]}"
    assert len(output.strip().splitlines()) < 40, output  # a few lines, not a dump
    assert not os.path.exists(env.root / "pwned"), "a checkpoint executed code"
    assert tree_digest(str(env.root)) == before, "a failing run changed files"


def test_unwritable_output_dir(env, tmp_path):
    if os.geteuid() == 0:
        pytest.skip("root ignores file permissions")
    locked = tmp_path / "locked"
    os.makedirs(locked)
    os.chmod(locked, 0o555)
    try:
        proc = _in_process("train", [a.replace("{root}/out", str(locked / "run"))
                                     for a in [_fill(a, env) for a in T]], {})  # fmt: skip
    finally:
        os.chmod(locked, 0o755)
    assert_user_error(proc, "OUTPUT_DIR", "not writable")


def test_debug_reraises_the_user_error(env, monkeypatch):
    """D2_DETR_DEBUG=1 (as --debug): the user error propagates with its traceback."""
    monkeypatch.setenv("D2_DETR_DEBUG", "1")
    module = _load_tool("plot")
    with pytest.raises(UserError, match="metrics.json"):
        run_cli(module.main, [str(env.root / "no_metrics")])
