"""Training targets of DETR from Detectron2 ``Instances``: pure functions, no model state."""

import torch
from detectron2.structures import BitMasks, PolygonMasks
from torchvision.ops import box_convert

__all__ = ["instances_to_targets", "bitmasks"]


def bitmasks(instances, height, width):
    """(N, height, width) bool masks of ``instances.gt_masks`` (BitMasks, PolygonMasks or a
    tensor), on the device of ``gt_classes``."""
    if not instances.has("gt_masks"):
        raise ValueError(
            "MODEL.DETR.MASK_ON and MODEL.DETR.TRAINING_AIDS.DENSE_CLASS_WEIGHT > 0 need "
            "'gt_masks' in the training instances"
        )
    gt = instances.gt_masks
    if isinstance(gt, PolygonMasks):
        gt = BitMasks.from_polygon_masks(gt, height, width)
    if isinstance(gt, BitMasks):
        gt = gt.tensor
    return gt.bool().to(instances.gt_classes.device)


def instances_to_targets(instances, image_sizes, padded_size, num_classes, with_masks):
    """
    Args:
        instances: list of B ``Instances`` with gt_boxes (absolute xyxy), gt_classes
            (contiguous ids) and, ``with_masks``, gt_masks.
        image_sizes: B (h, w) valid sizes of the images in the padded batch.
        padded_size: (H_pad, W_pad) of the batch.
        num_classes: K; classes must be in [0, K).
        with_masks: add "masks".
    Returns:
        targets: list of B dicts with "labels" (N_i,) int64, "boxes" (N_i, 4) cxcywh normalised by
            the image's own size and, ``with_masks``, "masks" (N_i, H_pad, W_pad) bool;
        dropped: number of targets left out because their box (clipped to the image) has zero
            width or height or non-finite coordinates, or (with masks) their mask is empty: they
            would give NaN/inf or meaningless GIoU.
    """
    pad_h, pad_w = padded_size
    targets, dropped = [], 0
    for inst, (h, w) in zip(instances, image_sizes):
        labels = inst.gt_classes.long()
        if labels.numel() and (labels.min() < 0 or labels.max() >= num_classes):
            raise ValueError(
                f"gt_classes {labels.tolist()} outside [0, {num_classes}): "
                "check MODEL.DETR.NUM_CLASSES and the dataset's contiguous ids"
            )
        boxes = inst.gt_boxes.tensor.float().clone()
        finite = torch.isfinite(boxes).all(1)
        boxes = torch.nan_to_num(boxes)
        boxes[:, 0::2] = boxes[:, 0::2].clamp(0, w)
        boxes[:, 1::2] = boxes[:, 1::2].clamp(0, h)
        keep = finite & (boxes[:, 2] > boxes[:, 0]) & (boxes[:, 3] > boxes[:, 1])
        target = {}
        if with_masks:
            masks = bitmasks(inst, h, w)
            keep &= masks.flatten(1).any(1)
            padded = masks.new_zeros((len(masks), pad_h, pad_w))
            padded[:, : masks.shape[1], : masks.shape[2]] = masks[:, :pad_h, :pad_w]
            target["masks"] = padded[keep]
        dropped += int((~keep).sum())
        scale = torch.as_tensor([w, h, w, h], dtype=boxes.dtype, device=boxes.device)
        target["labels"] = labels[keep]
        target["boxes"] = box_convert(boxes[keep], "xyxy", "cxcywh") / scale
        targets.append(target)
    return targets, dropped
