import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import math

import pytest
import torch

from d2_detr.modeling.criterion import SetCriterion, dice_loss, focal_loss
from d2_detr.modeling.matcher import HungarianMatcher

WEIGHTS = {"loss_ce": 1, "loss_bbox": 5, "loss_giou": 2, "loss_mask": 1, "loss_dice": 1}


def _criterion(losses=("labels", "boxes"), weights=None):
    return SetCriterion(2, HungarianMatcher(), weights or {}, eos_coef=0.1, losses=losses)


def test_weighted_cross_entropy_by_hand():
    logits = torch.tensor([[[2.0, 0.5, -1.0], [0.0, 1.0, 3.0]]])  # 1 image, 2 queries, K=2
    outputs = {"pred_logits": logits}
    targets = [{"labels": torch.tensor([1])}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    loss = _criterion().loss_labels(outputs, targets, indices, 1)["loss_ce"].item()
    ce0 = -math.log(math.exp(0.5) / (math.exp(2.0) + math.exp(0.5) + math.exp(-1.0)))
    ce1 = -math.log(math.exp(3.0) / (1 + math.exp(1.0) + math.exp(3.0)))  # no-object, weight 0.1
    assert math.isclose(loss, (ce0 + 0.1 * ce1) / 1.1, rel_tol=1e-5)


def test_box_losses_by_hand():
    outputs = {"pred_boxes": torch.tensor([[[0.5, 0.5, 0.2, 0.2], [0.1, 0.1, 0.1, 0.1]]])}
    targets = [{"boxes": torch.tensor([[0.6, 0.5, 0.2, 0.2]])}]
    indices = [(torch.tensor([0]), torch.tensor([0]))]
    out = _criterion().loss_boxes(outputs, targets, indices, num_boxes=2)
    assert math.isclose(out["loss_bbox"].item(), 0.1 / 2, rel_tol=1e-5)
    # IoU = 0.02 / 0.06, enclosing box = union -> GIoU 1/3
    assert math.isclose(out["loss_giou"].item(), (1 - 1 / 3) / 2, rel_tol=1e-5)


def test_mask_losses_by_hand():
    assert math.isclose(
        focal_loss(torch.zeros(1, 4), torch.ones(1, 4), 1).item(),
        0.25 * 0.5**2 * math.log(2),
        rel_tol=1e-5,
    )
    logits = torch.tensor([[30.0, 30.0, -30.0, -30.0]])
    assert math.isclose(dice_loss(logits, torch.ones(1, 4), 1).item(), 1 - 5 / 7, rel_tol=1e-5)
    # through the criterion: predictions at 1/4 resolution upsampled to the target size
    outputs = {"pred_masks": torch.full((1, 2, 2, 2), 30.0)}
    targets = [{"masks": torch.ones(1, 8, 8, dtype=torch.bool)}]
    indices = [(torch.tensor([1]), torch.tensor([0]))]
    out = _criterion(("masks",)).loss_masks(outputs, targets, indices, 1)
    assert out["loss_dice"].item() < 1e-6 and out["loss_mask"].item() < 1e-6


def test_mask_predictor_gives_the_same_losses_as_all_masks():
    g = torch.Generator().manual_seed(0)
    pred = torch.randn(2, 3, 4, 4, generator=g)
    targets = [{"masks": torch.rand(2, 16, 16, generator=g) > 0.5} for _ in range(2)]
    indices = [(torch.tensor([2, 0]), torch.tensor([1, 0])), (torch.tensor([1]), torch.tensor([1]))]
    crit = _criterion(("masks",))
    full = crit.loss_masks({"pred_masks": pred}, targets, indices, 3)
    calls = []

    def predictor(b, q):
        calls.append(len(b))
        return pred[b, q]

    lazy = crit.loss_masks({"mask_predictor": predictor}, targets, indices, 3)
    assert calls == [3]
    for k in full:
        torch.testing.assert_close(full[k], lazy[k])


def _outputs(g, bs=2, q=4, k=2, aux=1):
    def layer():
        return {
            "pred_logits": torch.randn(bs, q, k + 1, generator=g, requires_grad=True),
            "pred_boxes": torch.rand(bs, q, 4, generator=g).requires_grad_(),
        }

    out = layer()
    out["pred_masks"] = torch.randn(bs, q, 4, 4, generator=g, requires_grad=True)
    out["aux_outputs"] = [layer() for _ in range(aux)]
    return out


def test_forward_weights_aux_and_metrics_apart():
    g = torch.Generator().manual_seed(1)
    outputs = _outputs(g)
    targets = [
        {
            "labels": torch.tensor([0, 1]),
            "boxes": torch.tensor([[0.3, 0.3, 0.2, 0.2], [0.6, 0.6, 0.3, 0.3]]),
            "masks": torch.rand(2, 16, 16, generator=g) > 0.5,
        },
        {"labels": torch.tensor([1]), "boxes": torch.tensor([[0.5, 0.5, 0.4, 0.4]]),
         "masks": torch.rand(1, 16, 16, generator=g) > 0.5},
    ]  # fmt: skip
    unweighted, _ = _criterion(("labels", "boxes", "masks"))(outputs, targets)
    losses, metrics = _criterion(("labels", "boxes", "masks"), WEIGHTS)(outputs, targets)
    assert set(losses) == {
        "loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice",
        "loss_ce_0", "loss_bbox_0", "loss_giou_0",
    }  # fmt: skip
    for k, v in losses.items():
        base = k[:-2] if k.endswith("_0") else k
        torch.testing.assert_close(v, unweighted[k] * WEIGHTS[base])
    assert set(metrics) == {"class_error", "cardinality_error"}
    # cardinality: every query predicting a class counts as a detection
    num_pred = (outputs["pred_logits"].argmax(-1) != 2).sum(1).float()
    expected = ((num_pred - torch.tensor([2.0, 1.0])).abs().mean()).item()
    assert math.isclose(metrics["cardinality_error"], expected, rel_tol=1e-6)
    # class error: % of matched queries whose arg-max class is not their target's
    criterion = _criterion(("labels", "boxes", "masks"), WEIGHTS)
    wrong = total = 0
    for b, (qi, ti) in enumerate(criterion.matcher(outputs, targets)):
        pred = outputs["pred_logits"][b, qi].argmax(-1)
        wrong += int((pred != targets[b]["labels"][ti]).sum())
        total += len(qi)
    assert total == 3
    assert metrics["class_error"] == pytest.approx(100.0 * wrong / total)


def test_class_error_counts_wrong_matched_classes():
    logits = torch.tensor([[[5.0, 0.0, 0.0], [0.0, 5.0, 0.0], [0.0, 0.0, 5.0]]])
    crit = _criterion()
    targets = [{"labels": torch.tensor([0, 0])}]
    indices = [(torch.tensor([0, 1]), torch.tensor([0, 1]))]
    metrics = crit.metrics({"pred_logits": logits}, targets, indices)
    assert metrics["class_error"] == pytest.approx(50.0)
    assert metrics["cardinality_error"] == pytest.approx(0.0)


def test_empty_targets_give_finite_losses_and_gradients():
    g = torch.Generator().manual_seed(2)
    outputs = _outputs(g)
    targets = [
        {"labels": torch.zeros(0, dtype=torch.int64), "boxes": torch.zeros(0, 4),
         "masks": torch.zeros(0, 16, 16, dtype=torch.bool)}
        for _ in range(2)
    ]  # fmt: skip
    losses, metrics = _criterion(("labels", "boxes", "masks"), WEIGHTS)(outputs, targets)
    assert all(torch.isfinite(v) for v in losses.values())
    assert losses["loss_bbox"].item() == 0 and losses["loss_dice"].item() == 0
    assert losses["loss_ce"].item() > 0  # every query is pushed towards no-object
    sum(losses.values()).backward()
    assert outputs["pred_masks"].grad is not None  # still in the graph (DDP needs it)
    assert "class_error" not in metrics
