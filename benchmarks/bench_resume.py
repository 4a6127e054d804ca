#!/usr/bin/env python
"""
Exact resume under SIGKILL at random moments: ``tools/train_net.py`` on a small synthetic
dataset is run once uninterrupted, then ``--trials`` times killed (SIGKILL) at a random moment
of its training and resumed with ``--resume``; each resumed run's ``model_final.pth`` is
compared tensor by tensor (``torch.equal``) with the uninterrupted run's.

    python -m benchmarks.bench_resume --trials 10

Prints and writes ``output/benchmarks/bench_resume.json``: n/trials bit-identical, the
iteration of the last complete checkpoint at each kill and whether the kill landed inside a
checkpoint write (a temporary checkpoint file present).
"""

import argparse
import glob
import os
import random
import shutil
import signal
import subprocess
import sys
import tempfile
import time

import d2_detr  # noqa: F401  # isort: skip  (compat first)
import torch

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.join(ROOT, "tests"))
from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG, last_checkpoint  # noqa: E402
from test_mapper import write_tiny_panoptic_dataset  # noqa: E402

from benchmarks.common import write_result  # noqa: E402

OPTS = SMALL_IMAGES + SMALL_MODEL + [
    "MODEL.DETR.NUM_OBJECT_QUERIES", "8", "DATALOADER.NUM_WORKERS", "0",
    "SOLVER.IMS_PER_BATCH", "2", "TEST.EVAL_PERIOD", "0", "SEED", "11",
    "MODEL.DETR.DROPOUT", "0.1", "INPUT.MIN_SIZE_TRAIN", "(48, 64, 80)",
]  # fmt: skip


def _cmd(out, max_iter, period, resume=False):
    return (
        [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file",
         TINY_CONFIG] + (["--resume"] if resume else []) + OPTS
        + ["OUTPUT_DIR", out, "SOLVER.MAX_ITER", str(max_iter),
           "SOLVER.CHECKPOINT_PERIOD", str(period)]
    )  # fmt: skip


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--trials", type=int, default=10)
    p.add_argument("--max-iter", type=int, default=30)
    p.add_argument("--period", type=int, default=3, help="SOLVER.CHECKPOINT_PERIOD")
    p.add_argument("--seed", type=int, default=0, help="seed of the kill moments")
    args = p.parse_args(argv)
    rng = random.Random(args.seed)
    work = tempfile.mkdtemp(prefix="bench_resume_")
    data = os.path.join(work, "d2data")
    write_tiny_panoptic_dataset(os.path.join(data, "synthetic_concrete"), "train", 8, seed=1)
    write_tiny_panoptic_dataset(os.path.join(data, "synthetic_concrete"), "val", 2, seed=2)
    env = dict(os.environ, DETECTRON2_DATASETS=data, OMP_NUM_THREADS="1")
    quiet = dict(env=env, cwd=ROOT, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)

    ref = os.path.join(work, "ref")
    subprocess.run(_cmd(ref, args.max_iter, args.period), check=True, **quiet)
    expected = _weights(os.path.join(ref, "model_final.pth"))

    trials = []
    for t in range(args.trials):
        out = os.path.join(work, f"trial{t}")
        proc = subprocess.Popen(_cmd(out, args.max_iter, args.period), **quiet)
        # start the clock at the first complete checkpoint (after the start-up), then kill after
        # a random part of the remaining training (estimated from the first checkpoint's pace)
        while last_checkpoint(out) is None and proc.poll() is None:
            time.sleep(0.01)
        t0 = time.time()
        while (
            last_checkpoint(out) in (None, f"model_{args.period - 1:07d}.pth")
            and proc.poll() is None
        ):
            time.sleep(0.01)
        per_period = time.time() - t0
        remaining = per_period * (args.max_iter / args.period - 2)
        time.sleep(rng.uniform(0, max(remaining, 0.1)))
        killed = proc.poll() is None
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
        during_write = bool(glob.glob(os.path.join(out, ".*.tmp")))
        at = last_checkpoint(out)
        if last_checkpoint(out) != "model_final.pth":
            subprocess.run(_cmd(out, args.max_iter, args.period, resume=True), check=True, **quiet)
        got = _weights(os.path.join(out, "model_final.pth"))
        identical = expected.keys() == got.keys() and all(
            torch.equal(expected[k], got[k]) for k in expected
        )
        trials.append(
            {"killed": killed, "last_checkpoint_at_kill": at, "during_checkpoint_write":
             during_write, "identical": identical}
        )  # fmt: skip
        print(f"trial {t}: killed after {at}, during a write: {during_write}, "
              f"identical: {identical}", flush=True)  # fmt: skip
        shutil.rmtree(out)
    n = sum(t["identical"] for t in trials if t["killed"])
    killed = sum(t["killed"] for t in trials)
    print(f"{n}/{killed} killed-and-resumed runs bit-identical to the uninterrupted run")
    path = write_result(
        "bench_resume",
        {
            "what": "SIGKILL at a random moment, --resume: model_final.pth vs uninterrupted",
            "command": "python -m benchmarks.bench_resume " + " ".join(argv or sys.argv[1:]),
            "max_iter": args.max_iter,
            "checkpoint_period": args.period,
            "identical": n,
            "killed": killed,
            "trials": trials,
        },
    )
    print(f"wrote {path}")
    shutil.rmtree(work)


if __name__ == "__main__":
    main()
