"""Hungarian matching between predictions and targets (class, box and optional mask costs)."""

import torch
import torch.nn.functional as F
from detectron2.projects.point_rend.point_features import point_sample
from scipy.optimize import linear_sum_assignment
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou


def batch_focal_cost(logits, targets, alpha=0.25, gamma=2.0):
    """
    Pairwise mean sigmoid focal loss. logits: (Q, P), targets: (N, P) in {0, 1} -> (Q, N).
    """
    prob = logits.sigmoid()
    pos = (
        alpha
        * (1 - prob) ** gamma
        * F.binary_cross_entropy_with_logits(logits, torch.ones_like(logits), reduction="none")
    )
    neg = (
        (1 - alpha)
        * prob**gamma
        * F.binary_cross_entropy_with_logits(logits, torch.zeros_like(logits), reduction="none")
    )
    return (pos @ targets.T + neg @ (1 - targets).T) / logits.shape[1]


def batch_dice_cost(logits, targets):
    """Pairwise dice loss. logits: (Q, P), targets: (N, P) -> (Q, N)."""
    prob = logits.sigmoid()
    numerator = 2 * prob @ targets.T
    denominator = prob.sum(-1)[:, None] + targets.sum(-1)[None, :]
    return 1 - (numerator + 1) / (denominator + 1)


class HungarianMatcher(nn.Module):
    """
    One-to-one assignment of queries to targets minimising
    ``w_class * (-p(class)) + w_bbox * L1 + w_giou * (-GIoU) [+ w_mask * focal + w_dice * dice]``.

    Costs are computed for the whole batch at once; ``linear_sum_assignment`` runs per image.
    """

    def __init__(
        self, cost_class=1.0, cost_bbox=5.0, cost_giou=2.0, cost_mask=0.0, cost_dice=0.0,
        num_points=12544,
    ):  # fmt: skip
        super().__init__()
        self.cost_class = cost_class
        self.cost_bbox = cost_bbox
        self.cost_giou = cost_giou
        self.cost_mask = cost_mask
        self.cost_dice = cost_dice
        self.num_points = num_points
        if cost_class == 0 and cost_bbox == 0 and cost_giou == 0 and cost_mask == 0 == cost_dice:
            raise ValueError("HungarianMatcher: all matching costs are 0")

    @property
    def uses_masks(self):
        return bool(self.cost_mask or self.cost_dice)

    @torch.no_grad()
    def forward(self, outputs, targets):
        """
        Args:
            outputs: dict with "pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4) normalised
                cxcywh and, for the mask cost, "pred_masks" (B, Q, h, w) logits.
            targets: list of B dicts with "labels" (N_i,), "boxes" (N_i, 4) normalised cxcywh
                and, for the mask cost, "masks" (N_i, H, W).
        Returns:
            list of B pairs (query indices, target indices), int64 tensors of length min(Q, N_i).
        """
        bs, num_queries = outputs["pred_logits"].shape[:2]
        sizes = [len(t["labels"]) for t in targets]
        empty = torch.empty(0, dtype=torch.int64)
        if sum(sizes) == 0:
            return [(empty, empty) for _ in targets]

        prob = outputs["pred_logits"].flatten(0, 1).float().softmax(-1)  # (B*Q, K+1)
        out_boxes = outputs["pred_boxes"].flatten(0, 1).float()
        tgt_ids = torch.cat([t["labels"] for t in targets])
        tgt_boxes = torch.cat([t["boxes"] for t in targets]).float()

        cost = -self.cost_class * prob[:, tgt_ids]
        if self.cost_bbox:
            cost = cost + self.cost_bbox * torch.cdist(out_boxes, tgt_boxes, p=1)
        if self.cost_giou:
            giou = generalized_box_iou(
                box_convert(out_boxes, "cxcywh", "xyxy"), box_convert(tgt_boxes, "cxcywh", "xyxy")
            )
            cost = cost - self.cost_giou * giou
        cost = cost.view(bs, num_queries, -1).cpu().split(sizes, -1)

        indices = []
        for b, t in enumerate(targets):
            c = cost[b][b]  # (Q, N_b)
            # earlier decoder layers carry no masks: they are matched on class and box costs
            if self.uses_masks and sizes[b] and "pred_masks" in outputs:
                c = c + self._mask_cost(outputs["pred_masks"][b], t["masks"]).cpu()
            c = torch.nan_to_num(c, nan=1e8, posinf=1e8, neginf=-1e8)
            rows, cols = linear_sum_assignment(c.numpy())
            indices.append(
                (torch.as_tensor(rows, dtype=torch.int64), torch.as_tensor(cols, dtype=torch.int64))
            )
        return indices

    def _mask_cost(self, pred_masks, tgt_masks):
        """Focal + dice costs on the same random points of predictions and targets: (Q, N)."""
        points = torch.rand(1, self.num_points, 2, device=pred_masks.device)  # (x, y) in [0, 1]

        def sample(masks):  # (N, H, W) -> (N, P), bilinear
            return point_sample(
                masks[:, None], points.expand(len(masks), -1, -1), align_corners=False
            )[:, 0]

        pred = sample(pred_masks.float())
        tgt = sample(tgt_masks.to(pred.dtype))
        return self.cost_mask * batch_focal_cost(pred, tgt) + self.cost_dice * batch_dice_cost(
            pred, tgt
        )
