"""EMA of the weights (d2_detr/engine/ema.py): exact math, checkpoint / resume, evaluation with
the averaged weights, the inference model in model_final.pth."""

import os

import d2_detr  # noqa: F401  (compat first)

# isort: split
import pytest
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.engine import HookBase, SimpleTrainer, hooks
from torch import nn

from d2_detr.engine.ema import EMAHook, ModelEMA, insert_ema_hook


class Toy(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(3, 2)
        self.register_buffer("count", torch.zeros((), dtype=torch.long))

    def forward(self, batch):
        x, y = batch
        self.count += 1
        return {"loss": ((self.lin(x) - y) ** 2).mean()}


def batches(start=0):
    g = torch.Generator().manual_seed(1)
    data = [(torch.randn(4, 3, generator=g), torch.randn(4, 2, generator=g)) for _ in range(50)]
    return iter(data[start:])


class ToyTrainer(SimpleTrainer):
    """What ``trainer.test`` saw, as DETRTrainer.test is called by EvalHook and TimeBudget."""

    @classmethod
    def test(cls, cfg, model, evaluators=None):
        return {"weight": model.lin.weight.detach().clone()}


def make_trainer(out, start=0, decay=0.9, period=3):
    os.makedirs(out, exist_ok=True)
    model = Toy()
    opt = torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)
    trainer = ToyTrainer(model, batches(start), opt)
    trainer.cfg = None
    trainer.checkpointer = DetectionCheckpointer(model, str(out), trainer=trainer)
    ema = EMAHook(decay, warmup=True)
    trainer.register_hooks([ema, hooks.PeriodicCheckpointer(trainer.checkpointer, period)])
    return trainer, ema


def weights(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_equal(a, b):
    assert a.keys() == b.keys()
    for k in a:
        assert torch.equal(a[k], b[k]), k


def test_ema_math_is_exact():
    model = Toy()
    ema = ModelEMA(model, decay=0.8, warmup=True)
    expected = model.lin.weight.detach().double().clone()
    for n in range(6):
        with torch.no_grad():
            model.lin.weight.fill_(float(n + 1))
            model.count.fill_(n * 10)
        d = min(0.8, (1 + n) / (10 + n))  # warm-up: 0.1, 0.18, 0.25, ..., then 0.8
        expected = d * expected + (1 - d) * (n + 1)
        ema.update()
        assert torch.allclose(ema.shadow["lin.weight"].double(), expected, atol=1e-6)
        assert ema.shadow["count"].item() == n * 10  # integer buffers are copied
    assert ema.num_updates == 6
    plain = ModelEMA(model, decay=0.5, warmup=False)
    start = model.lin.bias.detach().clone()
    with torch.no_grad():
        model.lin.bias.fill_(4.0)
    plain.update()
    assert torch.allclose(plain.shadow["lin.bias"], 0.5 * start + 2.0)
    with pytest.raises(ValueError, match="decay"):
        ModelEMA(model, decay=1.0)


def test_evaluation_uses_ema_weights_and_restores_training_weights(tmp_path):
    trainer, ema = make_trainer(tmp_path, period=100)
    seen = []

    class Before(HookBase):  # runs after the EMA update, before the evaluation
        def after_step(self):
            shadow = {k: v.clone() for k, v in ema.ema.shadow.items()}
            seen.append({"train": weights(self.trainer.model), "shadow": shadow})

    def evaluate():
        seen[-1]["eval"] = trainer.test(None, trainer.model)["weight"]
        seen[-1]["eval_other_model"] = trainer.test(None, Toy())["weight"]
        return {}

    class After(HookBase):
        def after_step(self):
            seen[-1]["after"] = weights(self.trainer.model)

    trainer.register_hooks([Before(), hooks.EvalHook(2, evaluate), After()])
    trainer.train(0, 5)
    evaluated = [s for s in seen if "eval" in s]
    assert len(evaluated) == 3  # after iterations 1 and 3, and after training
    # after training the model holds the average (the inference model)
    assert torch.equal(evaluated[-1]["eval"], ema.ema.shadow["lin.weight"])
    for s in evaluated[:-1]:
        shadow = s["shadow"]["lin.weight"]
        assert torch.equal(s["eval"], shadow)
        assert not torch.equal(shadow, s["train"]["lin.weight"])  # the test can fail
        assert_equal(s["after"], s["train"])  # training weights back after the evaluation
        assert torch.equal(s["eval_other_model"], Toy().lin.weight)  # other models untouched


def test_resume_continues_the_average_exactly(tmp_path):
    full, full_ema = make_trainer(tmp_path / "full")
    full.train(0, 6)
    # interrupted after 3 iterations (the checkpoint of iteration 2), resumed in a new process
    part, _ = make_trainer(tmp_path / "part")
    part.train(0, 4)
    resumed, resumed_ema = make_trainer(tmp_path / "part", start=3)
    resumed.checkpointer.load(str(tmp_path / "part" / "model_0000002.pth"))
    assert resumed.iter == 2 and resumed_ema.ema is None  # loaded state waits for before_train
    resumed.train(3, 6)
    assert resumed_ema.ema.num_updates == full_ema.ema.num_updates == 6
    assert_equal(resumed_ema.ema.shadow, full_ema.ema.shadow)
    assert_equal(resumed_ema._training_weights, full_ema._training_weights)


def test_model_final_holds_ema_weights_and_resume_restores_training_weights(tmp_path):
    trainer, ema = make_trainer(tmp_path)
    trainer.train(0, 5)
    shadow = {k: v.clone() for k, v in ema.ema.shadow.items()}
    training = ema._training_weights
    assert_equal(weights(trainer.model), shadow)  # the inference model after training
    final = torch.load(os.path.join(tmp_path, "model_final.pth"), weights_only=True)
    assert_equal(final["model"], shadow)
    state = final["trainer"]["hooks"]["EMAHook"]
    assert_equal(state["training_model"], training)
    assert_equal(state["shadow"], shadow)
    assert not torch.equal(training["lin.weight"], shadow["lin.weight"])
    # resuming from model_final continues from the training weights, not the average
    again, again_ema = make_trainer(tmp_path, start=5)
    again.checkpointer.load(os.path.join(tmp_path, "model_final.pth"))
    again_ema.before_train()
    assert_equal(weights(again.model), training)
    assert_equal(again_ema.ema.shadow, shadow)


def test_insert_ema_hook_goes_before_checkpointer_and_eval(tmp_path):
    from detectron2.config import get_cfg

    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    trainer, _ = make_trainer(tmp_path)
    trainer.cfg = cfg
    base = [hooks.IterationTimer(), hooks.PeriodicCheckpointer(trainer.checkpointer, 5)]
    base.append(hooks.EvalHook(0, lambda: {}))
    assert insert_ema_hook(trainer, base) == base  # off by default
    cfg.MODEL.EMA.ENABLED = True
    cfg.MODEL.EMA.DECAY = 0.99
    out = insert_ema_hook(trainer, base)
    assert [type(h).__name__ for h in out] == [
        "IterationTimer",
        "EMAHook",
        "PeriodicCheckpointer",
        "EvalHook",
    ]
    assert out[1].decay == 0.99 and out[1].warmup


def test_detr_trainer_with_ema(tmp_path):
    """DETRTrainer with MODEL.EMA.ENABLED: the hook runs, model_final holds the average."""
    from detectron2.config import get_cfg
    from model_utils import SMALL_IMAGES, SMALL_MODEL, TINY_CONFIG
    from test_mapper import write_tiny_panoptic_dataset

    from d2_detr.data.datasets import register_concrete_defects
    from d2_detr.engine import DETRTrainer

    dataset = tmp_path / "data"
    write_tiny_panoptic_dataset(str(dataset), "train", 4, seed=1)
    write_tiny_panoptic_dataset(str(dataset), "val", 2, seed=2)
    register_concrete_defects(str(dataset), name_prefix="ematest", splits=("train", "val"))
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(TINY_CONFIG)
    cfg.merge_from_list(
        SMALL_IMAGES + SMALL_MODEL + [
            "MODEL.DETR.NUM_OBJECT_QUERIES", "8", "SOLVER.IMS_PER_BATCH", "2",
            "DATASETS.TRAIN", "('ematest_train_panoptic',)",
            "DATASETS.TEST", "('ematest_val_panoptic',)", "OUTPUT_DIR", str(tmp_path / "out"),
            "TEST.EVAL_PERIOD", "0", "SOLVER.MAX_ITER", "3", "MODEL.EMA.ENABLED", "True",
        ]
    )  # fmt: skip
    trainer = DETRTrainer(cfg)
    names = [type(h).__name__ for h in trainer._hooks]
    assert names.index("EMAHook") < names.index("PeriodicCheckpointer") < names.index("EvalHook")
    trainer.resume_or_load(resume=False)
    results = trainer.train()
    assert "panoptic_seg" in results
    ema = next(h for h in trainer._hooks if isinstance(h, EMAHook))
    assert ema.ema.num_updates == 3
    final = torch.load(tmp_path / "out" / "model_final.pth", weights_only=True)
    assert_equal(final["model"], {k: v for k, v in ema.ema.shadow.items()})
    assert any(
        not torch.equal(final["model"][k], v) for k, v in ema._training_weights.items()
    )  # the average differs from the training weights
