"""tools/train_net.py and d2_detr.engine: exact resume after kill -9, the non-finite-loss guard
(both trainers), eval-only, atomic checkpoints, DETR's optimizer, the two-stage recipe."""

import os
import pickle
import signal
import subprocess
import sys
import tempfile
import time
from unittest import mock

import d2_detr  # noqa: F401  (compat first)

# isort: split
import pytest
import torch
from cli_utils import CodePayload  # noqa: E402
from detectron2.config import get_cfg
from detectron2.modeling import META_ARCH_REGISTRY, build_model
from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG, last_checkpoint
from test_mapper import write_tiny_panoptic_dataset
from torch import nn

from d2_detr.data.datasets import register_concrete_defects
from d2_detr.engine import (
    DETRCheckpointer,
    DETRTrainer,
    GuardedAMPTrainer,
    GuardedTrainer,
    build_detr_optimizer,
)
from d2_detr.engine.optimizer import detr_param_groups
from d2_detr.modeling.detr import MASK_HEAD_PREFIXES

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = TINY_CONFIG
# small images, small model: a few iterations per second on one core
FAST = SMALL_IMAGES + SMALL_MODEL + [
    "MODEL.DETR.NUM_OBJECT_QUERIES", "8",
    "DATALOADER.NUM_WORKERS", "0", "SOLVER.IMS_PER_BATCH", "2",
]  # fmt: skip


@pytest.fixture(scope="module")
def data_root(tmp_path_factory):
    """$DETECTRON2_DATASETS with synthetic_concrete/{train,val}; also registered as tinytest_*."""
    root = tmp_path_factory.mktemp("d2data")
    dataset = root / "synthetic_concrete"
    write_tiny_panoptic_dataset(str(dataset), "train", 8, seed=1)
    write_tiny_panoptic_dataset(str(dataset), "val", 3, seed=2)
    register_concrete_defects(str(dataset), name_prefix="tinytest", splits=("train", "val"))
    return str(root)


def make_cfg(output_dir, *opts):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY)
    cfg.merge_from_list(
        FAST
        + [
            "DATASETS.TRAIN", "('tinytest_train_panoptic',)",
            "DATASETS.TEST", "('tinytest_val_panoptic',)",
            "OUTPUT_DIR", str(output_dir), "TEST.EVAL_PERIOD", "0",
        ]  # fmt: skip
        + list(opts)
    )
    return cfg


def train_net(args, data_root, **kwargs):
    env = dict(os.environ, DETECTRON2_DATASETS=data_root, OMP_NUM_THREADS="1")
    cmd = [sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--config-file", TINY]
    return subprocess.Popen(cmd + args + FAST, env=env, cwd=ROOT, text=True, **kwargs)


def _iteration(name):
    return int(name[len("model_") : -len(".pth")])


def _run_until_killed(args, data_root, at_least, extra_wait):
    """Start train_net, SIGKILL it ``extra_wait`` s after a checkpoint of iteration >=
    ``at_least`` appears (anywhere: inside a step or a checkpoint write)."""
    out = args[args.index("OUTPUT_DIR") + 1]
    proc = train_net(args, data_root, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    deadline = time.time() + 600  # a hang guard, not a speed requirement
    try:
        while time.time() < deadline:
            name = last_checkpoint(out)
            if name and name != "model_final.pth" and _iteration(name) >= at_least:
                break
            assert proc.poll() is None, "training stopped before it was killed"
            time.sleep(0.02)
        else:
            pytest.fail(f"no checkpoint of iteration >= {at_least} (hang?)")
        time.sleep(extra_wait)
    finally:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait()
    assert last_checkpoint(out) != "model_final.pth", "killed too late: the run had finished"


def _weights(path):
    return torch.load(path, map_location="cpu", weights_only=True)["model"]


def test_resume_after_two_kills_is_bit_identical_then_eval_only(data_root, tmp_path):
    """Killed twice (SIGKILL) and resumed: the final weights equal the uninterrupted run's."""
    common = ["SEED", "7", "SOLVER.MAX_ITER", "14", "SOLVER.CHECKPOINT_PERIOD", "2",
              "MODEL.DETR.DROPOUT", "0.1", "INPUT.MIN_SIZE_TRAIN", "(48, 64, 80)"]  # fmt: skip
    ref, out = str(tmp_path / "ref"), str(tmp_path / "run")
    # the uninterrupted run, side by side with the interrupted ones (one thread each)
    ref_log = tempfile.TemporaryFile("w+")
    done = train_net(["OUTPUT_DIR", ref] + common, data_root, stdout=ref_log,
                     stderr=subprocess.STDOUT)  # fmt: skip
    try:
        _run_until_killed(["OUTPUT_DIR", out] + common, data_root, at_least=3, extra_wait=0.0)
        first = _iteration(last_checkpoint(out))
        ckpt = torch.load(os.path.join(out, last_checkpoint(out)), map_location="cpu",
                          weights_only=True)  # fmt: skip
        assert ckpt["iteration"] == first and ckpt["trainer"]["seed"] == 7
        assert ckpt["trainer"]["_trainer"]["optimizer"]["state"]  # AdamW moments saved
        assert ckpt["trainer"]["hooks"]["LRScheduler"]["last_epoch"] == first + 1
        _run_until_killed(
            ["--resume", "OUTPUT_DIR", out] + common, data_root, at_least=first + 4, extra_wait=0.15
        )
        done.wait(timeout=900)
    finally:
        if done.poll() is None:
            done.kill()
            done.wait()
    ref_log.seek(0)
    assert done.returncode == 0, ref_log.read()[-3000:]
    ref_log.close()
    second = _iteration(last_checkpoint(out))
    assert second > first
    # eval-only on the uninterrupted run's weights (bit-identical to the resumed run's, checked
    # below), side by side with the resumed run
    eval_log = tempfile.TemporaryFile("w+")
    evaluated = train_net(
        ["--eval-only", "MODEL.WEIGHTS", os.path.join(ref, "model_final.pth"),
         "OUTPUT_DIR", str(tmp_path / "eval"), "DATASETS.TEST",
         "('synthetic_concrete_val_panoptic',)"],
        data_root, stdout=eval_log, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        resumed = train_net(["--resume", "OUTPUT_DIR", out] + common, data_root,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT)  # fmt: skip
        log, _ = resumed.communicate(timeout=900)
        evaluated.wait(timeout=300)
    finally:
        if evaluated.poll() is None:
            evaluated.kill()
            evaluated.wait()
    assert resumed.returncode == 0, log[-3000:]
    assert f"Starting training from iteration {second + 1}" in log
    assert last_checkpoint(out) == "model_final.pth"
    expected, got = _weights(os.path.join(ref, "model_final.pth")), _weights(
        os.path.join(out, "model_final.pth")
    )
    assert expected.keys() == got.keys()
    different = [k for k in expected if not torch.equal(expected[k], got[k])]
    assert different == [], f"{len(different)} tensors differ, e.g. {different[:3]}"
    # the runs did train (the comparison is not between two untouched initialisations)
    first_ckpt = _weights(os.path.join(ref, "model_0000001.pth"))
    assert any(not torch.equal(first_ckpt[k], got[k]) for k in got)

    eval_log.seek(0)
    log = eval_log.read()
    eval_log.close()
    assert evaluated.returncode == 0, log[-3000:]
    assert "Panoptic quality:" in log
    assert "synthetic_concrete_val_panoptic: PQ " in log
    # COCOEvaluator ran both tasks ("Evaluation results for ..." is only logged when the briefly
    # trained model predicts at least one thing; the copypaste summary is logged either way)
    assert "copypaste: Task: bbox" in log and "copypaste: Task: segm" in log


def test_data_stream_is_a_function_of_seed_and_iteration(data_root, tmp_path):
    """Batch i is the same whether the stream starts at 0 or at i, and the seed matters."""
    cfg = make_cfg(tmp_path, "SEED", "3", "INPUT.MIN_SIZE_TRAIN", "(48, 64, 80)")
    loader = DETRTrainer.build_train_loader(cfg)
    stream = iter(loader)
    from_start = [next(stream) for _ in range(6)]
    loader.restart_at(4)
    restarted = next(iter(loader))
    for a, b in zip(from_start[4], restarted):
        assert a["image_id"] == b["image_id"] and torch.equal(a["image"], b["image"])
    assert [d["image_id"] for d in from_start[5]] == [d["image_id"] for d in loader.batch(5)]
    ids = [d["image_id"] for batch in from_start[:4] for d in batch]
    assert len(set(ids)) == 8  # the first epoch (8 images) is a permutation
    loader.restart_at(0, seed=4)
    other = [(d["image_id"], tuple(d["image"].shape)) for d in next(iter(loader))]
    assert other != [(d["image_id"], tuple(d["image"].shape)) for d in from_start[0]]


_CALLS = {"n": 0, "ids": [], "w": []}


@META_ARCH_REGISTRY.register()
class _NaNOnThirdBatch(nn.Module):
    """Returns finite losses, then NaN in ``loss_bad`` on the third call."""

    def __init__(self, cfg):
        super().__init__()
        self.w = nn.Parameter(torch.ones(3))

    def forward(self, batched_inputs):
        _CALLS["n"] += 1
        _CALLS["ids"].append([x["image_id"] for x in batched_inputs])
        _CALLS["w"].append(self.w.detach().clone())
        loss = self.w.sum()
        bad = loss * float("nan") if _CALLS["n"] == 3 else loss * 0.5
        return {"loss_ok": loss, "loss_bad": bad}


def _check_guard_message(err, trainer, tmp_path):
    msg = str(err.value)
    assert "iteration 2" in msg and "loss_bad=nan" in msg and "loss_ok" not in msg
    assert str(_CALLS["ids"][2]) in msg
    # the NaN step never reached the weights
    assert torch.equal(trainer.model.w.detach(), _CALLS["w"][2])
    assert not os.path.exists(os.path.join(tmp_path, "model_final.pth"))


def test_non_finite_loss_names_iteration_term_and_images(data_root, tmp_path):
    _CALLS.update(n=0, ids=[], w=[])
    cfg = make_cfg(tmp_path, "MODEL.META_ARCHITECTURE", "_NaNOnThirdBatch", "SOLVER.MAX_ITER", "10")
    trainer = DETRTrainer(cfg)
    assert type(trainer._trainer) is GuardedTrainer
    with pytest.raises(FloatingPointError) as err:
        trainer.train()
    _check_guard_message(err, trainer, tmp_path)


def test_non_finite_loss_guard_in_the_amp_trainer(data_root, tmp_path):
    """SOLVER.AMP.ENABLED: Detectron2's AMPTrainer (its own run_step) with the same guard.
    v0.6's AMPTrainer asserts CUDA; on a CPU-only machine the assertion is passed with a patched
    ``torch.cuda.is_available`` and CUDA autocast / GradScaler disable themselves (warnings),
    so the step runs in float32 through AMPTrainer.run_step and the guard's code path."""
    _CALLS.update(n=0, ids=[], w=[])
    cfg = make_cfg(
        tmp_path, "MODEL.META_ARCHITECTURE", "_NaNOnThirdBatch", "SOLVER.MAX_ITER", "10",
        "SOLVER.AMP.ENABLED", "True",
    )  # fmt: skip
    trainer = DETRTrainer(cfg)
    assert type(trainer._trainer) is GuardedAMPTrainer
    patch = (
        mock.patch("torch.cuda.is_available", return_value=True)
        if not torch.cuda.is_available()
        else mock.patch.object(torch, "__name__", "torch")
    )
    with patch, pytest.raises(FloatingPointError) as err:
        trainer.train()
    _check_guard_message(err, trainer, tmp_path)


def test_atomic_checkpoint_survives_a_failed_write(tmp_path, monkeypatch):
    model = nn.Linear(2, 2)
    ckpt = DETRCheckpointer(model, str(tmp_path))
    ckpt.save("model_0000001")
    good = (tmp_path / "model_0000001.pth").read_bytes()

    def dying_save(obj, f):
        f.write(b"half a checkpoint")
        raise KeyboardInterrupt("killed while writing")

    monkeypatch.setattr("d2_detr.engine.checkpointer.torch.save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000002")
    with pytest.raises(KeyboardInterrupt):
        ckpt.save("model_0000001")  # overwriting an existing file
    assert sorted(p.name for p in tmp_path.iterdir()) == ["last_checkpoint", "model_0000001.pth"]
    assert (tmp_path / "last_checkpoint").read_text() == "model_0000001.pth"
    assert (tmp_path / "model_0000001.pth").read_bytes() == good
    monkeypatch.undo()
    fresh = nn.Linear(2, 2)
    DETRCheckpointer(fresh, str(tmp_path)).resume_or_load("", resume=True)
    assert torch.equal(fresh.weight, model.weight)


def test_optimizer_groups_and_full_model_clipping(data_root, tmp_path):
    cfg = make_cfg(
        tmp_path,
        "SOLVER.BASE_LR", "0.001", "SOLVER.BACKBONE_MULTIPLIER", "0.1",
        "SOLVER.WEIGHT_DECAY", "0.01", "SOLVER.WEIGHT_DECAY_EMBED", "0.0",
        "SOLVER.CLIP_GRADIENTS.CLIP_VALUE", "0.1",
    )  # fmt: skip
    model = build_model(cfg)
    opt = build_detr_optimizer(cfg, model)
    assert type(opt).__name__ == "FullModelClippedAdamW"
    named = detr_param_groups(model, 0.001, 0.01, 0.1, 0.0, 0.0)
    groups = {g["name"]: g for g in named}
    assert len(groups) == sum(1 for p in model.parameters() if p.requires_grad)
    for name, g in groups.items():
        assert g["lr"] == pytest.approx(1e-4 if "backbone" in name else 1e-3), name
    assert groups["query_embed.weight"]["weight_decay"] == 0.0
    norm_names = [n for n in groups if ".norm" in n or "norm1" in n or "norm2" in n]
    assert norm_names and all(groups[n]["weight_decay"] == 0.0 for n in norm_names)
    assert groups["class_embed.weight"]["weight_decay"] == 0.01
    assert groups["class_embed.bias"]["weight_decay"] == 0.01
    # the optimizer holds the same settings, merged into one group per distinct (lr, decay)
    settings = {(g["lr"], g["weight_decay"]) for g in named}
    assert len(opt.param_groups) == len(settings) <= 4
    by_param = {id(p): (g["lr"], g["weight_decay"]) for g in opt.param_groups for p in g["params"]}
    assert by_param == {id(g["params"][0]): (g["lr"], g["weight_decay"]) for g in named}

    for p in model.parameters():
        p.grad = torch.full_like(p, 3.0)
    opt.step()
    total = torch.norm(torch.stack([p.grad.norm() for p in model.parameters()]))
    assert total.item() == pytest.approx(0.1, rel=1e-3)  # clipped as one vector

    frozen = build_model(make_cfg(tmp_path, "MODEL.DETR.FREEZE_DETECTOR", "True"))
    trained = {id(p) for g in build_detr_optimizer(cfg, frozen).param_groups for p in g["params"]}
    heads = {id(p) for n, p in frozen.named_parameters() if n.startswith(MASK_HEAD_PREFIXES)}
    assert trained == heads


def test_two_stage_recipe(data_root, tmp_path):
    """Boxes first (no mask head), then the mask head alone with the detector frozen."""
    stage1 = make_cfg(
        tmp_path / "boxes", "MODEL.DETR.MASK_ON", "False", "MODEL.DETR.TEST.PANOPTIC_ON", "False",
        "SOLVER.MAX_ITER", "3",
    )  # fmt: skip
    trainer = DETRTrainer(stage1)
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert "bbox" in results and "segm" not in results and "panoptic_seg" not in results
    boxes = torch.load(
        tmp_path / "boxes" / "model_final.pth", map_location="cpu", weights_only=True
    )["model"]
    assert not any(k.startswith(MASK_HEAD_PREFIXES) for k in boxes)

    stage2 = make_cfg(
        tmp_path / "masks", "MODEL.DETR.FREEZE_DETECTOR", "True", "SOLVER.MAX_ITER", "3",
        "MODEL.WEIGHTS", str(tmp_path / "boxes" / "model_final.pth"),
    )  # fmt: skip
    trainer = DETRTrainer(stage2)
    trainer.resume_or_load(resume=False)
    mask_head_before = {
        k: v.clone()
        for k, v in trainer.model.state_dict().items()
        if k.startswith(MASK_HEAD_PREFIXES)
    }
    results = trainer.train()
    assert "panoptic_seg" in results and "segm" in results
    after = trainer.model.state_dict()
    for k, v in boxes.items():
        if k.startswith("dense_class_loss."):  # stage 1's training-only head: not in stage 2
            assert k not in after
            continue
        assert torch.equal(after[k], v), f"{k} changed although the detector is frozen"
    assert any(not torch.equal(after[k], v) for k, v in mask_head_before.items())


def test_checkpointer_loads_model_zoo_pkl_weights_and_refuses_code(tmp_path):
    """A Detectron2 model-zoo .pkl (numpy arrays, protocol 2, latin1) loads into the model;
    a .pkl or .pth that would call a function while loading is refused before it runs."""
    import numpy as np

    from d2_detr.utils.cli import UserError

    model = nn.Linear(3, 2)
    weights = {"weight": np.arange(6, dtype=np.float32).reshape(2, 3), "bias": np.float32([1, 2])}
    zoo = tmp_path / "zoo.pkl"
    zoo.write_bytes(pickle.dumps({"model": weights, "__author__": "zoo"}, protocol=2))
    DETRCheckpointer(model).load(str(zoo))
    assert torch.equal(model.weight.detach(), torch.arange(6.0).reshape(2, 3))
    assert torch.equal(model.bias.detach(), torch.tensor([1.0, 2.0]))
    marker = tmp_path / "pwned"
    evil_pkl, evil_pth = tmp_path / "evil.pkl", tmp_path / "evil.pth"
    evil_pkl.write_bytes(pickle.dumps({"model": weights, "__author__": "x", "x": CodePayload(
        str(marker))}))  # fmt: skip
    torch.save({"model": {"weight": torch.zeros(2, 3)}, "x": CodePayload(str(marker))}, evil_pth)
    for path in (evil_pkl, evil_pth):
        with pytest.raises(UserError, match=f"{path.name}.*open"):
            DETRCheckpointer(model).load(str(path))
    assert not marker.exists()
    assert torch.equal(model.bias.detach(), torch.tensor([1.0, 2.0]))  # nothing loaded
