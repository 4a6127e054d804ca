"""
Training and evaluation on several CPU processes (gloo) through d2_detr's launch
(``d2_detr/engine/launch.py``): the same training as one process with the whole batch, the same
evaluation, one writer, resume, both stages of DETR's recipe, two "machines" over loopback,
torchrun, and clear errors for bad launch arguments.

Equal within what tolerance, and why not bit-equal: 2 processes x batch 1 compute the same
per-image losses as 1 process x batch 2 on the same images (images of one size: no padding,
GroupNorm is per image; the box / mask losses divide by the number of targets all-reduced
over the processes, as DETR does), then DDP averages the gradients. Summation order differs
(per-process sums + all-reduce vs one sum), so losses agree to float32 rounding (measured
<= 1e-6 relative) and the weights after 4 AdamW steps to ~3e-6. Two things would make them
differ by design and are switched off here: the class loss is a weighted mean over each
process's own queries (DETR's ``F.cross_entropy(..., empty_weight)``; with NO_OBJECT_WEIGHT
< 1 its normaliser depends on the number of targets per process, so only NO_OBJECT_WEIGHT 1
makes it a mean over the whole batch), and random flips draw from per-rank seeds.
"""

import json
import math
import os
import socket
import subprocess
import sys
import tempfile

import d2_detr  # noqa: F401  (compat first)

# isort: split
import pytest
import torch
from cli_utils import assert_user_error, run_tools
from detectron2.engine import default_argument_parser
from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG
from test_mapper import write_tiny_panoptic_dataset

from d2_detr.engine.launch import add_launch_arguments, check_launch_args
from d2_detr.modeling.detr import MASK_HEAD_PREFIXES
from d2_detr.utils.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
WORKER = os.path.join(ROOT, "tests", "dist_worker.py")
TRAIN_NET = os.path.join(ROOT, "tools", "train_net.py")
FAST = SMALL_IMAGES + SMALL_MODEL + [
    "MODEL.DETR.NUM_OBJECT_QUERIES", "8", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0", "SEED", "3",
]  # fmt: skip
TIMEOUT = 600


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """$DETECTRON2_DATASETS holding synthetic_concrete/{train,val} (8 and 3 images, 64x96)."""
    root = tmp_path_factory.mktemp("d2data")
    write_tiny_panoptic_dataset(str(root / "synthetic_concrete"), "train", 8, seed=1)
    write_tiny_panoptic_dataset(str(root / "synthetic_concrete"), "val", 3, seed=2)
    return str(root)


def _env(data_root):
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    env["PYTHONPATH"] = os.pathsep.join([ROOT, os.environ.get("PYTHONPATH", "")])
    env.pop("D2_DETR_DEBUG", None)
    for key in ("RANK", "LOCAL_RANK", "WORLD_SIZE", "LOCAL_WORLD_SIZE", "MASTER_ADDR"):
        env.pop(key, None)
    return env


def _run(cmd, data_root, **kwargs):
    proc = subprocess.run(
        cmd, env=_env(data_root), cwd=ROOT, capture_output=True, text=True, timeout=TIMEOUT,
        **kwargs,
    )  # fmt: skip
    assert proc.returncode == 0, (proc.stdout + proc.stderr)[-4000:]
    return proc


def _run_side_by_side(cmds, data_root):
    """Several commands at once (one uses a core while another imports or waits): each must
    exit 0 (its output, kept in a temporary file, is shown if not)."""
    procs = []
    for cmd in cmds:
        log = tempfile.TemporaryFile("w+")
        procs.append((subprocess.Popen(
            cmd, env=_env(data_root), cwd=ROOT, stdout=log, stderr=subprocess.STDOUT, text=True,
        ), log))  # fmt: skip
    try:
        for proc, log in procs:
            proc.wait(timeout=TIMEOUT)
            log.seek(0)
            assert proc.returncode == 0, log.read()[-4000:]
    finally:
        for proc, log in procs:
            if proc.poll() is None:
                proc.kill()
                proc.wait()
            log.close()


def _free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _train_net(args, data_root):
    return _run([sys.executable, TRAIN_NET, "--config-file", TINY_CONFIG] + args + FAST, data_root)


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def _same_results(a, b):
    """Equal, NaN == NaN (a metric with nothing to measure is NaN on both sides)."""
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(_same_results(a[k], b[k]) for k in a)
    return (math.isnan(a) and math.isnan(b)) if isinstance(a, float) and math.isnan(a) else a == b


def _assert_written_once(out, max_iter):
    """rank 0 wrote the log, metrics.json and checkpoints; rank 1 only its own log file."""
    files = sorted(os.listdir(out))
    assert "log.txt" in files and "log.txt.rank1" in files, files
    assert not [f for f in files if f.endswith(".tmp") or "rank2" in f], files
    with open(os.path.join(out, "metrics.json")) as f:
        iters = [json.loads(line)["iteration"] for line in f if line.strip()]
    # one line per written iteration (a second writer would repeat them)
    assert max_iter - 1 in iters and len(iters) == len(set(iters)), iters
    with open(os.path.join(out, "log.txt")) as f:
        log = f.read()
    assert log.count("Starting training from iteration") == 1
    assert "World size: 2" in log
    assert _weights(os.path.join(out, "model_final.pth"))


@pytest.fixture(scope="module")
def one_and_two_processes(data_root, tmp_path_factory):
    """The worker on 1 process (batch 2) and on 2 processes (batch 1 each): 4 training steps,
    then the evaluation of the stand-in model. Returns the two JSON results and run folders."""
    opts = FAST + [
        "INPUT.RANDOM_FLIP", "none", "MODEL.DETR.NO_OBJECT_WEIGHT", "1.0",
        "SOLVER.MAX_ITER", "4", "SOLVER.CHECKPOINT_PERIOD", "1000",
    ]  # fmt: skip
    folders, cmds = {}, []
    for procs in (1, 2):  # started side by side
        folders[procs] = str(tmp_path_factory.mktemp(f"procs{procs}"))
        result = os.path.join(folders[procs], "result.json")
        cmd = [sys.executable, WORKER, "--procs", str(procs), "--out", result, "--echo-eval"]
        cmds.append(cmd + ["--config-file", TINY_CONFIG] + opts + ["OUTPUT_DIR", folders[procs]])
    _run_side_by_side(cmds, data_root)
    out = {}
    for procs, folder in folders.items():
        with open(os.path.join(folder, "result.json")) as f:
            out[procs] = (json.load(f), folder)
    return out


def test_two_processes_train_like_one_process_with_the_whole_batch(one_and_two_processes):
    (one, one_dir), (two, two_dir) = one_and_two_processes[1], one_and_two_processes[2]
    assert one["world_size"] == 1 and two["world_size"] == 2
    # rank r sees, at every step, the image at position r of the single process's batch
    single = one["image_ids"][0]
    assert len(single) == 4 and all(len(b) == 2 for b in single)
    assert [[b[r] for b in single] for r in (0, 1)] == [[b[0] for b in s] for s in two["image_ids"]]
    # the same loss at every iteration, every term
    assert one["losses"].keys() == two["losses"].keys()
    assert {"loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice"} <= one["losses"].keys()
    for name, values in one["losses"].items():
        assert len(values) == 4
        assert torch.allclose(
            torch.tensor(values), torch.tensor(two["losses"][name]), rtol=1e-5, atol=1e-6
        ), (name, values, two["losses"][name])
    assert len(set(one["losses"]["total_loss"])) == 4  # the model did change between steps
    # the same weights after 4 steps (AdamW: a step moves each weight by about lr = 3e-4)
    w1 = _weights(os.path.join(one_dir, "model_final.pth"))
    w2 = _weights(os.path.join(two_dir, "model_final.pth"))
    assert w1.keys() == w2.keys()
    worst = max((w1[k].float() - w2[k].float()).abs().max().item() for k in w1)
    assert worst < 5e-5, worst


def test_evaluation_on_two_processes_equals_one_process(one_and_two_processes, data_root):
    one, two = one_and_two_processes[1][0], one_and_two_processes[2][0]
    r1, r2 = one["echo_results"], two["echo_results"]
    # the stand-in model's mistakes make every metric informative (neither 0 nor 100)
    assert 0 < r1["panoptic_seg"]["PQ"] < 100 and 0 < r1["bbox"]["AP"] < 100, r1
    assert _same_results(r1, r2), (r1, r2)
    # each validation image once in the gathered predictions (3 images over 2 ranks: 2 + 1)
    name = "synthetic_concrete_val_panoptic"
    path = os.path.join(one_and_two_processes[2][1], "echo", "inference", name, "predictions.json")
    with open(path) as f:
        ids = sorted(a["image_id"] for a in json.load(f)["annotations"])
    assert len(ids) == 3 and len(set(ids)) == 3


def test_stage1_two_machines_resume_torchrun_stage2(data_root, tmp_path):
    """Stage 1 (MASK_ON False) on two "machines" (two launchers, loopback), resumed under
    torchrun, then stage 2 (FREEZE_DETECTOR) with --num-gpus 2."""
    stage1 = str(tmp_path / "stage1")
    port = _free_port()
    common = ["--config-file", TINY_CONFIG, "--num-gpus", "1", "--num-machines", "2"]
    url = ["--dist-url", f"tcp://127.0.0.1:{port}"]
    stage1_opts = FAST + ["MODEL.DETR.MASK_ON", "False", "MODEL.DETR.TEST.PANOPTIC_ON", "False",
                          "OUTPUT_DIR", stage1]  # fmt: skip
    opts = stage1_opts + ["SOLVER.MAX_ITER", "3", "SOLVER.CHECKPOINT_PERIOD", "2"]
    _run_side_by_side(
        [[sys.executable, TRAIN_NET, *common, "--machine-rank", str(rank), *url, *opts]
         for rank in (0, 1)],
        data_root,
    )  # fmt: skip
    _assert_written_once(stage1, 3)
    assert sorted(f for f in os.listdir(stage1) if f.endswith(".pth")) == [
        "model_0000001.pth",
        "model_final.pth",
    ]
    # resume under torchrun (env:// rendezvous), 2 processes: continues at iteration 3
    torchrun = [sys.executable, "-m", "torch.distributed.run", "--nnodes", "1",
                "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
                "--master_port", str(_free_port())]  # fmt: skip
    resume = stage1_opts + ["SOLVER.MAX_ITER", "5", "SOLVER.CHECKPOINT_PERIOD", "1000"]
    proc = _run(
        torchrun + [TRAIN_NET, "--config-file", TINY_CONFIG, "--resume"] + resume, data_root
    )
    with open(os.path.join(stage1, "log.txt")) as f:
        log = f.read()
    assert "Starting training from iteration 3" in log and "World size: 2" in log, proc.stdout
    final = torch.load(os.path.join(stage1, "model_final.pth"), weights_only=True)
    assert final["iteration"] == 4
    detector = final["model"]
    assert not any(k.startswith(MASK_HEAD_PREFIXES) for k in detector), "stage 1: no mask head"

    # stage 2: the detector frozen, only the mask head trains, on 2 spawned processes
    stage2 = str(tmp_path / "stage2")
    _train_net(
        ["--num-gpus", "2", "--dist-url", "auto", "MODEL.DETR.FREEZE_DETECTOR", "True",
         "MODEL.WEIGHTS", os.path.join(stage1, "model_final.pth"), "SOLVER.MAX_ITER", "3",
         "OUTPUT_DIR", stage2],
        data_root,
    )  # fmt: skip
    _assert_written_once(stage2, 3)
    w2 = _weights(os.path.join(stage2, "model_final.pth"))
    # the detector as stage 1 left it (its training-only dense class head is not in stage 2)
    kept = [k for k in detector if not k.startswith("dense_class_loss.")]
    assert kept and all(torch.equal(detector[k], w2[k]) for k in kept)
    assert any(k.startswith(MASK_HEAD_PREFIXES) for k in w2), "stage 2 trains the mask head"


def _launch_args(*argv):
    return add_launch_arguments(default_argument_parser()).parse_args(
        ["--config-file", TINY_CONFIG, *argv]
    )


@pytest.mark.parametrize(
    "argv, names",
    [
        (["--num-gpus", "0"], ["--num-gpus 0"]),
        (["--num-gpus", "-2"], ["--num-gpus -2"]),
        (["--num-machines", "0"], ["--num-machines 0"]),
        (["--num-machines", "2", "--machine-rank", "2"], ["--machine-rank 2", "--num-machines 2"]),
        (["--num-machines", "2", "--machine-rank", "-1"], ["--machine-rank -1"]),
        (["--num-gpus", "2", "--dist-url", "127.0.0.1:1234"], ["--dist-url", "tcp://HOST:PORT"]),
        (["--num-gpus", "2", "--dist-url", "tcp://127.0.0.1"], ["--dist-url", "tcp://HOST:PORT"]),
        (["--num-machines", "2", "--dist-url", "auto"], ["--dist-url auto"]),
        (["--num-gpus", "2", "--dist-url", "tcp://no-such-host.invalid:29500"], ["no-such-host"]),
    ],
)
def test_bad_launch_arguments_are_named(argv, names):
    with pytest.raises(UserError) as err:
        check_launch_args(_launch_args(*argv))
    message = err.value.format()
    assert all(n in message for n in names), message


def test_good_launch_arguments_pass():
    assert check_launch_args(_launch_args()) == _launch_args().dist_url  # one process
    assert check_launch_args(_launch_args("--num-gpus", "2", "--dist-url", "auto")) == "auto"
    url = f"tcp://127.0.0.1:{_free_port()}"
    assert check_launch_args(_launch_args("--num-gpus", "2", "--dist-url", url)) == url


def test_port_in_use():
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen(1)
        port = busy.getsockname()[1]
        with pytest.raises(UserError) as err:
            check_launch_args(
                _launch_args("--num-gpus", "2", "--dist-url", f"tcp://127.0.0.1:{port}")
            )
    assert f"port {port} is already in use" in err.value.format()


def test_unreachable_dist_url_gives_up_after_the_timeout():
    port = _free_port()  # nobody listens there: machine 0 never started
    url = f"tcp://127.0.0.1:{port}"
    args = _launch_args(
        "--num-machines", "2", "--machine-rank", "1", "--dist-url", url, "--connect-timeout", "1.5"
    )  # fmt: skip
    with pytest.raises(UserError) as err:
        check_launch_args(args)
    message = err.value.format()
    assert f"tcp://127.0.0.1:{port} cannot be reached within 1.5 s" in message, message
    assert "--connect-timeout" in message


@pytest.fixture(scope="module")
def launch_errors(data_root):
    """tools/train_net.py with --num-gpus 0, and as machine 0 of 2 with nobody joining, as real
    processes started side by side -> (CompletedProcess of each, the url machine 0 waited on,
    the OUTPUT_DIR that must not be written)."""
    out = os.path.join(data_root, "never_written")
    url = f"tcp://127.0.0.1:{_free_port()}"
    env = {"DETECTRON2_DATASETS": data_root}
    no_process, machine_0 = run_tools(
        ("tools/train_net.py", ["--config-file", TINY_CONFIG, "--num-gpus", "0",
                                "OUTPUT_DIR", out], env),
        ("tools/train_net.py", ["--config-file", TINY_CONFIG, "--num-machines", "2",
                                "--machine-rank", "0", "--dist-url", url, "--connect-timeout", "2"],
         env),
    )  # fmt: skip
    return no_process, machine_0, url, out


def test_bad_launch_argument_from_the_command_line(launch_errors):
    """The user-error contract end to end: message, exit code 2, no traceback, no output."""
    proc, _, _, out = launch_errors
    assert_user_error(proc, "--num-gpus 0")
    assert not os.path.exists(out)


def test_cpu_threads_split_between_local_processes(monkeypatch):
    from d2_detr.engine import launch as d2_launch

    assert d2_launch.threads_per_process(2, cores=8) == 4
    assert d2_launch.threads_per_process(3, cores=8) == 2
    assert d2_launch.threads_per_process(4, cores=2) == 1
    before = torch.get_num_threads()
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    monkeypatch.setattr(d2_launch, "threads_per_process", lambda n: 7 if n == 2 else 0)
    try:
        monkeypatch.delenv("OMP_NUM_THREADS", raising=False)
        d2_launch._set_threads(2)
        assert torch.get_num_threads() == 7 and os.environ["OMP_NUM_THREADS"] == "7"
        monkeypatch.setenv("OMP_NUM_THREADS", "3")  # the user's choice is kept
        d2_launch._set_threads(2)
        assert torch.get_num_threads() == 3
    finally:
        torch.set_num_threads(before)


def test_machine_0_alone_gives_up_after_the_timeout(launch_errors):
    """--num-machines 2 started on one machine only: exit 2 after --connect-timeout, no hang."""
    _, proc, url, _ = launch_errors
    assert_user_error(proc, url, "not all 2 processes joined within 2 s", "--connect-timeout")
