"""Per-image inference plumbing: which queries need masks, and from one image's raw outputs
(class logits, boxes, mask logits) to Detectron2's result dict at the original size. Pure
functions: the model and an exported model's outputs (``DETR.forward_raw``) use the same ones."""

import math
from dataclasses import dataclass, field

import torch

from .component_split import instance_components, split_into_components
from .dataset_meta import class_priority, dataset_classes
from .postprocess import (
    class_scores,
    detr_panoptic_inference,
    instance_inference,
    panoptic_inference,
    resize_mask_logits,
    select_panoptic_queries,
    semantic_inference,
)

__all__ = [
    "InferenceSettings",
    "queries_needing_masks",
    "image_outputs",
    "padded_canvas",
]

PANOPTIC_MERGES = ("detr", "maskformer")


@dataclass(frozen=True)
class InferenceSettings:
    """What to output and how to merge (``MODEL.DETR.TEST``)."""

    thing_ids: frozenset
    num_classes: int
    panoptic_on: bool = True
    instance_on: bool = True
    semantic_on: bool = False
    panoptic_merge: str = "detr"
    object_mask_threshold: float = 0.85
    overlap_threshold: float = 0.8
    min_segment_area: int = 4
    score_weighted_masks: bool = False
    boxes_from_masks: bool = False
    split_components: bool = False
    class_priority: tuple = field(default=())
    component_min_fraction: float = 0.0

    def __post_init__(self):
        if self.panoptic_merge not in PANOPTIC_MERGES:
            raise ValueError(
                f"MODEL.DETR.TEST.PANOPTIC_MERGE {self.panoptic_merge!r}: choose from "
                f"{list(PANOPTIC_MERGES)}"
            )

    @classmethod
    def from_config(cls, cfg):
        """``MODEL.DETR.TEST`` and the datasets' metadata (thing classes, class priority)."""
        d, t = cfg.MODEL.DETR, cfg.MODEL.DETR.TEST
        thing_ids = dataset_classes(cfg)
        split = t.COMPONENTS.ENABLED and t.PANOPTIC_ON
        return cls(
            thing_ids=frozenset(thing_ids),
            num_classes=d.NUM_CLASSES,
            panoptic_on=t.PANOPTIC_ON,
            instance_on=t.INSTANCE_ON,
            semantic_on=t.SEMANTIC_ON,
            panoptic_merge=t.PANOPTIC_MERGE,
            object_mask_threshold=t.OBJECT_MASK_THRESHOLD,
            overlap_threshold=t.OVERLAP_THRESHOLD,
            min_segment_area=t.MIN_SEGMENT_AREA,
            score_weighted_masks=t.SCORE_WEIGHTED_MASKS,
            boxes_from_masks=t.BOXES_FROM_MASKS,
            split_components=split,
            class_priority=class_priority(cfg, thing_ids) if split else (),
            component_min_fraction=t.COMPONENTS.MIN_FRACTION,
        )

    @property
    def masks_needed(self):
        return self.panoptic_on or self.semantic_on


def padded_canvas(image_size, size_divisibility):
    """(H, W) of an image of ``image_size`` padded alone to a multiple of ``size_divisibility``."""
    return tuple(math.ceil(s / size_divisibility) * size_divisibility for s in image_size)


def queries_needing_masks(logits, settings, with_masks=True):
    """
    Args:
        logits: (Q, K+1) class logits of one image.
    Returns:
        (Q',) sorted indices of the queries whose masks an output uses: the kept panoptic
        queries, the thing queries for instances, every query for sem_seg.
    """
    q = logits.shape[0]
    if not with_masks:
        return torch.zeros(0, dtype=torch.long, device=logits.device)
    if settings.semantic_on:
        return torch.arange(q, device=logits.device)
    parts = [torch.zeros(0, dtype=torch.long, device=logits.device)]
    if settings.panoptic_on:
        parts.append(select_panoptic_queries(logits, settings.object_mask_threshold))
    if settings.instance_on:
        parts.append(_thing_queries(logits, settings))
    return torch.unique(torch.cat(parts))


def _thing_queries(logits, settings):
    _, labels, _ = class_scores(logits.float())
    is_thing = torch.zeros(settings.num_classes, dtype=torch.bool, device=logits.device)
    is_thing[sorted(settings.thing_ids)] = True
    return is_thing[labels].nonzero().flatten()


def image_outputs(
    logits, boxes, mask_logits, settings, canvas_size, image_size, output_size, query_index=None
):  # fmt: skip
    """
    One image's results.

    Args:
        logits: (Q, K+1) class logits; boxes: (Q, 4) normalised cxcywh (of the unpadded image).
        mask_logits: (N, h, w) mask logits of the queries ``query_index`` (default: all Q), on
            a grid spanning the top-left ``canvas_size`` of the input (h = canvas_h / stride),
            or None (detection only model).
        canvas_size: (H, W) the mask grid spans; image_size: valid (h, w) of the input;
        output_size: (height, width) of the results (the original image).
    Returns:
        dict with "panoptic_seg" ((height, width) int32, segments_info), "instances" (things
        only), "sem_seg" ((K, height, width)), as switched on in ``settings``.
    """
    logits = logits.float()
    q = logits.shape[0]
    scores, labels, prob = class_scores(logits)
    thing_idx = _thing_queries(logits, settings)
    result = {}
    if mask_logits is None:
        if settings.instance_on:
            result["instances"] = instance_inference(
                scores[thing_idx], labels[thing_idx], boxes[thing_idx], None, output_size
            )
        return result
    if query_index is None:
        query_index = torch.arange(q, device=logits.device)
    position = torch.full((q,), -1, dtype=torch.long, device=logits.device)
    position[query_index] = torch.arange(len(query_index), device=logits.device)
    mask_logits = mask_logits.float()
    detr_merge = settings.panoptic_on and settings.panoptic_merge == "detr"
    if detr_merge and tuple(image_size) != tuple(output_size):
        # DETR's merging works at the input resolution; the other outputs at the output size
        at_input = resize_mask_logits(mask_logits, canvas_size, image_size, image_size)
        masks = resize_mask_logits(at_input, image_size, image_size, output_size)
    else:
        masks = at_input = resize_mask_logits(mask_logits, canvas_size, image_size, output_size)

    def of(idx):
        if (position[idx] < 0).any():
            raise ValueError("image_outputs: masks missing for queries an output needs")
        return position[idx]

    if settings.panoptic_on:
        pan_idx = select_panoptic_queries(logits, settings.object_mask_threshold)
        if settings.panoptic_merge == "detr":
            panoptic = detr_panoptic_inference(
                scores[pan_idx],
                labels[pan_idx],
                at_input[of(pan_idx)],
                settings.thing_ids,
                output_size,
                settings.min_segment_area,
            )
        else:
            panoptic = panoptic_inference(
                scores[pan_idx],
                labels[pan_idx],
                masks[of(pan_idx)],
                settings.thing_ids,
                settings.overlap_threshold,
                settings.min_segment_area,
                settings.score_weighted_masks,
            )
        if settings.split_components:
            panoptic = split_into_components(
                *panoptic,
                settings.class_priority,
                settings.min_segment_area,
                settings.component_min_fraction,
            )
        result["panoptic_seg"] = panoptic
    if settings.instance_on:
        instances = instance_inference(
            scores[thing_idx],
            labels[thing_idx],
            boxes[thing_idx],
            masks[of(thing_idx)],
            output_size,
            settings.boxes_from_masks,
        )
        if settings.split_components:
            instances = instance_components(
                instances, settings.min_segment_area, settings.component_min_fraction
            )
        result["instances"] = instances
    if settings.semantic_on:
        result["sem_seg"] = semantic_inference(prob, masks[of(torch.arange(q))])
    return result
