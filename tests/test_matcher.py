import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import itertools

import torch
from torchvision.ops import box_convert, generalized_box_iou

from d2_detr.modeling.criterion import dice_loss, focal_loss
from d2_detr.modeling.matcher import HungarianMatcher, batch_dice_cost, batch_focal_cost


def _random_case(g, bs, q, k, sizes):
    outputs = {
        "pred_logits": torch.randn(bs, q, k + 1, generator=g),
        "pred_boxes": torch.rand(bs, q, 4, generator=g) * 0.5 + 0.1,
    }
    targets = [
        {
            "labels": torch.randint(0, k, (n,), generator=g),
            "boxes": torch.rand(n, 4, generator=g) * 0.5 + 0.1,
        }
        for n in sizes
    ]
    return outputs, targets


def _pair_cost(outputs, t, b, i, j):
    """Cost of query i of image b against target j, written out for one pair."""
    prob = outputs["pred_logits"][b, i].softmax(-1)[t["labels"][j]]
    pb, tb = outputs["pred_boxes"][b, i], t["boxes"][j]
    l1 = (pb - tb).abs().sum()
    giou = generalized_box_iou(
        box_convert(pb[None], "cxcywh", "xyxy"), box_convert(tb[None], "cxcywh", "xyxy")
    )[0, 0]
    return (-1.0 * prob + 5.0 * l1 - 2.0 * giou).item()


def _brute_force(outputs, t, b, q):
    n = len(t["labels"])
    best = float("inf")
    for queries in itertools.permutations(range(q), n):
        best = min(best, sum(_pair_cost(outputs, t, b, i, j) for j, i in enumerate(queries)))
    return best


def test_matches_brute_force_on_random_cases():
    g = torch.Generator().manual_seed(0)
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2)
    for _ in range(10):
        q = 5
        sizes = torch.randint(0, 4, (3,), generator=g).tolist()
        outputs, targets = _random_case(g, 3, q, 3, sizes)
        indices = matcher(outputs, targets)
        for b, ((qi, ti), t) in enumerate(zip(indices, targets)):
            assert len(qi) == len(ti) == sizes[b]
            assert len(set(qi.tolist())) == len(qi)  # one-to-one
            assert sorted(ti.tolist()) == list(range(sizes[b]))
            got = sum(_pair_cost(outputs, t, b, i, j) for i, j in zip(qi.tolist(), ti.tolist()))
            assert abs(got - _brute_force(outputs, t, b, q)) < 1e-4


def test_zero_targets():
    g = torch.Generator().manual_seed(1)
    matcher = HungarianMatcher()
    outputs, targets = _random_case(g, 2, 4, 3, [0, 0])
    for qi, ti in matcher(outputs, targets):
        assert qi.numel() == 0 and ti.numel() == 0 and qi.dtype == torch.int64
    outputs, targets = _random_case(g, 2, 4, 3, [0, 2])
    indices = matcher(outputs, targets)
    assert indices[0][0].numel() == 0 and len(indices[1][0]) == 2


def test_more_targets_than_queries_matches_every_query():
    g = torch.Generator().manual_seed(2)
    outputs, targets = _random_case(g, 1, 3, 2, [5])
    qi, ti = HungarianMatcher()(outputs, targets)[0]
    assert sorted(qi.tolist()) == [0, 1, 2] and len(set(ti.tolist())) == 3


def test_nan_predictions_do_not_crash():
    g = torch.Generator().manual_seed(3)
    outputs, targets = _random_case(g, 1, 4, 2, [2])
    outputs["pred_boxes"][0, 0] = float("nan")
    qi, _ = HungarianMatcher()(outputs, targets)[0]
    assert len(qi) == 2


def test_pairwise_mask_costs_equal_the_losses():
    g = torch.Generator().manual_seed(4)
    logits = torch.randn(3, 50, generator=g) * 3
    tgt = (torch.rand(2, 50, generator=g) > 0.5).float()
    focal = batch_focal_cost(logits, tgt)
    dice = batch_dice_cost(logits, tgt)
    for i in range(3):
        for j in range(2):
            torch.testing.assert_close(
                focal[i, j], focal_loss(logits[i : i + 1], tgt[j : j + 1], 1)
            )
            torch.testing.assert_close(dice[i, j], dice_loss(logits[i : i + 1], tgt[j : j + 1], 1))


def test_mask_cost_decides_when_boxes_tie():
    """Same boxes and classes everywhere: only the mask cost can pick the right query."""
    h = w = 16
    masks = torch.zeros(2, h, w)
    masks[0, :8], masks[1, 8:] = 1, 1
    pred = torch.full((1, 3, h // 4, w // 4), -10.0)
    pred[0, 2, 2:], pred[0, 0, :2] = 10.0, 10.0  # query 2 ~ bottom half, query 0 ~ top half
    outputs = {
        "pred_logits": torch.zeros(1, 3, 3),
        "pred_boxes": torch.full((1, 3, 4), 0.5),
        "pred_masks": pred,
    }
    targets = [{"labels": torch.tensor([0, 1]), "boxes": torch.full((2, 4), 0.5), "masks": masks}]
    matcher = HungarianMatcher(cost_class=1, cost_bbox=5, cost_giou=2, cost_mask=5, cost_dice=5,
                               num_points=256)  # fmt: skip
    qi, ti = matcher(outputs, targets)[0]
    assert dict(zip(ti.tolist(), qi.tolist())) == {0: 0, 1: 2}
