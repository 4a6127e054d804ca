"""Dense class supervision of the encoder memory: targets and loss by hand, wiring in the model."""

import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import math

import pytest
import torch
from detectron2.modeling import build_model
from detectron2.utils.events import EventStorage
from model_utils import make_input, tiny_cfg

from d2_detr.modeling.dense_class_loss import DenseClassLoss, class_fractions


def _target():
    """8x8 image: class 2 fills the left half, class 0 the top-right quarter; rest unlabelled."""
    masks = torch.zeros(2, 8, 8, dtype=torch.bool)
    masks[0, :, :4] = True
    masks[1, :4, 4:] = True
    return {"labels": torch.tensor([2, 0]), "masks": masks}


def test_class_fractions_by_hand():
    t = _target()
    t["masks"][1, 0, 4] = False  # one pixel of the top-right 4x4 cell left unlabelled
    frac = class_fractions([t], num_classes=3, size=(2, 2))
    assert frac.shape == (1, 3, 2, 2)
    assert torch.equal(frac[0, 2], torch.tensor([[1.0, 0.0], [1.0, 0.0]]))
    assert torch.allclose(frac[0, 0], torch.tensor([[0.0, 15 / 16], [0.0, 0.0]]))
    assert frac[0, 1].abs().sum() == 0


def test_loss_by_hand_ignores_unlabelled_cells():
    loss_fn = DenseClassLoss(4, num_classes=3)
    with torch.no_grad():
        loss_fn.classifier.weight.zero_()
        loss_fn.classifier.bias.copy_(torch.tensor([0.0, 0.0, math.log(2.0)]))
    memory = torch.randn(1, 4, 2, 2)
    # logits (0, 0, log 2) everywhere: p = (1/4, 1/4, 1/2); three labelled cells:
    # two of class 2 (-log 1/2) and one of class 0 (-log 1/4); the bottom-right cell is ignored
    expected = (2 * math.log(2.0) + math.log(4.0)) / 3
    assert loss_fn(memory, [_target()]).item() == pytest.approx(expected, rel=1e-6)
    empty = {"labels": torch.zeros(0, dtype=torch.long), "masks": torch.zeros(0, 8, 8).bool()}
    memory.requires_grad_()
    zero = loss_fn(memory, [empty])
    assert zero.item() == 0.0
    zero.backward()  # still in the graph


def test_model_adds_the_weighted_loss_and_it_trains_the_encoder():
    cfg_opts = ("MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT", "2.0")
    torch.manual_seed(0)
    model = build_model(tiny_cfg(*cfg_opts)).train()
    batch = [make_input(96, 128, [[10, 10, 60, 50], [70, 20, 120, 90]], [0, 3], seed=1)]
    with EventStorage():
        losses = model(batch)
    assert "loss_dense_class" in losses and torch.isfinite(losses["loss_dense_class"])
    model.zero_grad()
    losses["loss_dense_class"].backward()
    enc = model.transformer.encoder.layers[0].linear1.weight.grad
    assert enc is not None and enc.abs().sum() > 0
    assert model.dense_class_loss.classifier.weight.grad.abs().sum() > 0
    # off (the default of add_detr_config): no head, no loss, same parameters as DETR
    plain = build_model(tiny_cfg("MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT", "0.0")).train()
    assert not hasattr(plain, "dense_class_loss")
    with EventStorage():
        assert "loss_dense_class" not in plain(batch)


def test_detection_only_stage_uses_masks_for_it_and_freeze_detector_drops_it():
    torch.manual_seed(0)
    batch = [make_input(96, 128, [[10, 10, 60, 50]], [1], seed=2)]
    stage1 = build_model(
        tiny_cfg(
            "MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT", "1.0", "MODEL.DETR.MASK_ON", "False",
            "MODEL.DETR.TEST.PANOPTIC_ON", "False",
        )  # fmt: skip
    )
    with EventStorage():
        losses = stage1.train()(batch)
    assert "loss_dense_class" in losses and "loss_mask" not in losses
    stage2 = build_model(
        tiny_cfg(
            "MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT",
            "1.0",
            "MODEL.DETR.FREEZE_DETECTOR",
            "True",
        )
    )
    assert stage2.dense_class_weight == 0 and not hasattr(stage2, "dense_class_loss")
    with EventStorage():
        losses = set(stage2.train()(batch))
    assert {"loss_mask", "loss_dice"} <= losses and not any("dense" in k for k in losses)
