"""DETR's set criterion: Hungarian matching, then classification, box and mask losses, the same
for every decoder layer (deep supervision). Metrics are returned apart from the losses."""

import torch
import torch.nn.functional as F
from detectron2.utils import comm
from torch import nn
from torchvision.ops import box_convert, generalized_box_iou, sigmoid_focal_loss

BASE_LOSSES = ("loss_ce", "loss_bbox", "loss_giou", "loss_mask", "loss_dice")


def dice_loss(logits, targets, num_boxes):
    """Dice loss summed over masks / num_boxes. logits, targets: (M, P)."""
    prob = logits.sigmoid()
    numerator = 2 * (prob * targets).sum(1)
    denominator = prob.sum(1) + targets.sum(1)
    return (1 - (numerator + 1) / (denominator + 1)).sum() / num_boxes


def focal_loss(logits, targets, num_boxes, alpha=0.25, gamma=2.0):
    """Sigmoid focal loss, mean over pixels, summed over masks / num_boxes. (M, P) inputs."""
    loss = sigmoid_focal_loss(logits, targets, alpha=alpha, gamma=gamma, reduction="none")
    return loss.mean(1).sum() / num_boxes


class SetCriterion(nn.Module):
    """
    Losses of DETR for one batch.

    ``losses`` picks the groups: "labels" (loss_ce, weighted CE with ``eos_coef`` on the no-object
    class), "boxes" (loss_bbox L1, loss_giou; normalised cxcywh), "masks" (loss_mask sigmoid focal,
    loss_dice; last decoder layer, and earlier layers whose outputs carry "pred_masks"). Box and
    mask losses are divided by the number of target boxes of the batch, averaged over processes.
    Returned losses are already multiplied by ``weight_dict``; auxiliary (earlier decoder layers)
    losses get the suffix ``_<layer>``.
    """

    def __init__(self, num_classes, matcher, weight_dict, eos_coef=0.1, losses=("labels", "boxes")):
        super().__init__()
        self.num_classes = num_classes
        self.matcher = matcher
        self.weight_dict = dict(weight_dict)
        self.losses = tuple(losses)
        empty_weight = torch.ones(num_classes + 1)
        empty_weight[-1] = eos_coef
        self.register_buffer("empty_weight", empty_weight, persistent=False)

    # -- individual losses; each takes matched (batch, query) and target indices ------------------
    def loss_labels(self, outputs, targets, indices, num_boxes):
        logits = outputs["pred_logits"]  # (B, Q, K+1)
        target_classes = torch.full(
            logits.shape[:2], self.num_classes, dtype=torch.int64, device=logits.device
        )
        batch_idx, src_idx = self._src_permutation(indices)
        target_classes[batch_idx, src_idx] = self._matched(targets, indices, "labels")
        loss = F.cross_entropy(logits.transpose(1, 2), target_classes, self.empty_weight)
        return {"loss_ce": loss}

    def loss_boxes(self, outputs, targets, indices, num_boxes):
        batch_idx, src_idx = self._src_permutation(indices)
        src = outputs["pred_boxes"][batch_idx, src_idx]  # (M, 4) cxcywh
        tgt = self._matched(targets, indices, "boxes").to(src.dtype)
        if src.numel() == 0:
            zero = outputs["pred_boxes"].sum() * 0.0
            return {"loss_bbox": zero, "loss_giou": zero}
        loss_bbox = F.l1_loss(src, tgt, reduction="none").sum() / num_boxes
        giou = torch.diag(
            generalized_box_iou(
                box_convert(src, "cxcywh", "xyxy"), box_convert(tgt, "cxcywh", "xyxy")
            )
        )
        return {"loss_bbox": loss_bbox, "loss_giou": (1 - giou).sum() / num_boxes}

    def loss_masks(self, outputs, targets, indices, num_boxes):
        """Needs "pred_masks" (B, Q, h, w), or "mask_predictor": a function (batch indices,
        query indices) -> (M, h, w) mask logits, so only matched queries' masks are computed."""
        batch_idx, src_idx = self._src_permutation(indices)
        if "pred_masks" in outputs:
            predict = lambda b, q: outputs["pred_masks"][b, q]
        else:
            predict = outputs["mask_predictor"]
        if batch_idx.numel() == 0:
            # keep the mask head in the graph (distributed training expects every parameter used)
            zero = predict(batch_idx.new_zeros(1), src_idx.new_zeros(1)).sum() * 0.0
            return {"loss_mask": zero, "loss_dice": zero}
        tgt = self._matched(targets, indices, "masks")  # (M, H, W)
        src = F.interpolate(
            predict(batch_idx, src_idx)[:, None],
            size=tgt.shape[-2:],
            mode="bilinear",
            align_corners=False,
        )
        src = src.flatten(1)
        tgt = tgt.flatten(1).to(src.dtype)
        return {
            "loss_mask": focal_loss(src, tgt, num_boxes),
            "loss_dice": dice_loss(src, tgt, num_boxes),
        }

    # -- metrics, never part of the loss ------------------------------------------------------
    @torch.no_grad()
    def metrics(self, outputs, targets, indices):
        """``class_error`` (% of matched queries whose argmax class is wrong; only when some
        target exists) and ``cardinality_error`` (|#non-empty predictions - #targets|, mean)."""
        logits = outputs["pred_logits"]
        out = {}
        batch_idx, src_idx = self._src_permutation(indices)
        if batch_idx.numel():
            pred = logits[batch_idx, src_idx].argmax(-1)
            labels = self._matched(targets, indices, "labels")
            out["class_error"] = 100.0 - 100.0 * (pred == labels).float().mean().item()
        num_pred = (logits.argmax(-1) != self.num_classes).sum(1).float()
        num_tgt = torch.as_tensor([float(len(t["labels"])) for t in targets], device=logits.device)
        out["cardinality_error"] = F.l1_loss(num_pred, num_tgt).item()
        return out

    # -- driver -------------------------------------------------------------------------------
    def forward(self, outputs, targets):
        """
        Args:
            outputs: dict of "pred_logits" (B, Q, K+1), "pred_boxes" (B, Q, 4), optionally
                "pred_masks" (B, Q, h, w) or "mask_predictor" (see ``loss_masks``) and
                "aux_outputs" (list of dicts of the first two).
            targets: list of B dicts with "labels" (N_i,), "boxes" (N_i, 4) normalised cxcywh,
                "masks" (N_i, H, W) when mask losses are on.
        Returns:
            (losses, metrics): weighted losses, and a dict of float metrics.
        """
        num_boxes = sum(len(t["labels"]) for t in targets)
        num_boxes = torch.as_tensor([num_boxes], dtype=torch.float, device=self.empty_weight.device)
        if comm.get_world_size() > 1:
            torch.distributed.all_reduce(num_boxes)
        num_boxes = torch.clamp(num_boxes / comm.get_world_size(), min=1).item()

        indices = self.matcher(outputs, targets)
        losses = self._layer_losses(outputs, targets, indices, num_boxes, self.losses, "")
        metrics = self.metrics(outputs, targets, indices)
        for i, aux in enumerate(outputs.get("aux_outputs", [])):
            # earlier layers get mask losses only when they carry their own masks
            groups = tuple(g for g in self.losses if g != "masks" or "pred_masks" in aux)
            if not groups:
                continue
            aux_indices = self.matcher(aux, targets)
            losses.update(self._layer_losses(aux, targets, aux_indices, num_boxes, groups, f"_{i}"))
        return losses, metrics

    def _layer_losses(self, outputs, targets, indices, num_boxes, groups, suffix):
        fns = {"labels": self.loss_labels, "boxes": self.loss_boxes, "masks": self.loss_masks}
        out = {}
        for group in groups:
            for name, value in fns[group](outputs, targets, indices, num_boxes).items():
                out[name + suffix] = value * self.weight_dict.get(name, 1.0)
        return out

    @staticmethod
    def _src_permutation(indices):
        batch_idx = torch.cat([torch.full_like(src, i) for i, (src, _) in enumerate(indices)])
        src_idx = torch.cat([src for src, _ in indices])
        return batch_idx, src_idx

    @staticmethod
    def _matched(targets, indices, key):
        return torch.cat([t[key][j] for t, (_, j) in zip(targets, indices)])
