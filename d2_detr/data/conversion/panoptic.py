"""The conversion algorithm as one pure function: binary masks per class -> panoptic segments.

Rules: 8-connected components of each class mask -> components with fewer than ``min_area``
pixels are dropped ("specks", their pixels become background) -> pixels claimed by several
classes go to the class that comes first in ``class_priority`` -> an instance keeps its remaining
pixels (still one instance when a crack cuts it in two) and is dropped when fewer than
``min_area`` remain -> every pixel no instance holds forms the background segment. Area and
bbox are measured on the final segment. Segment ids are 1..N in (category id, raster order of
the component) order, background last.
"""

import cv2
import numpy as np

from ..categories import BACKGROUND_ID, CONCRETE_DEFECT_CATEGORIES
from ..panoptic_format import mask_bbox

__all__ = ["masks_to_panoptic", "connected_components"]

STAT_KEYS = (
    "dropped_specks",
    "dropped_speck_pixels",
    "overlap_pixels",
    "dropped_after_overlap",
    "empty_masks",
)


def connected_components(binary, min_area):
    """8-connected components of a (H, W) bool mask.

    Returns:
        labels: (H, W) int32, specks zeroed; kept: {label: (x, y, w, h, area)} of the kept
        components; specks: pixel counts of the dropped components.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        np.ascontiguousarray(binary, dtype=bool).view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = {int(k) + 1: tuple(stats[k + 1].tolist()) for k in np.flatnonzero(areas >= min_area)}
    specks = areas[areas < min_area].tolist()
    if specks:
        lut = np.zeros(n, np.int32)
        lut[list(kept)] = list(kept)
        labels = lut[labels]
    return labels, kept, specks


def masks_to_panoptic(
    masks,
    shape,
    min_area,
    class_priority,
    categories=CONCRETE_DEFECT_CATEGORIES,
    background_id=BACKGROUND_ID,
):
    """Binary masks of one image -> panoptic id map and segments (see the module docstring).

    Args:
        masks: dict class name -> (H, W) bool mask (classes without a mask: absent).
        shape: (H, W) of the image.
        min_area: smallest kept instance, in pixels.
        class_priority: class names; the first keeps pixels claimed by several classes.
        categories: COCO-panoptic categories (``id``, ``name``, ``isthing``).
        background_id: category id of the stuff segment that takes the remaining pixels.
    Returns:
        id_map: (H, W) int32 segment ids (every pixel > 0).
        segments: list of {"id", "category_id", "iscrowd", "area", "bbox" [x, y, w, h]}.
        stats: dict of counts: dropped_specks, dropped_speck_pixels, overlap_pixels,
            dropped_after_overlap, empty_masks.
    """
    height, width = shape
    stats = dict.fromkeys(STAT_KEYS, 0)
    labels = {}  # class -> (label map with specks zeroed, {label: component box})
    for cls, binary in sorted(masks.items()):
        if binary.shape != (height, width):
            raise ValueError(f"mask of {cls!r} has shape {binary.shape}, image {(height, width)}")
        if not binary.any():
            stats["empty_masks"] += 1
            continue
        lab, kept, specks = connected_components(binary, min_area)
        stats["dropped_specks"] += len(specks)
        stats["dropped_speck_pixels"] += int(sum(specks))
        if kept:
            labels[cls] = (lab, kept)

    remaining = {cls: {k: box[4] for k, box in kept.items()} for cls, (_, kept) in labels.items()}
    if len(labels) > 1:  # resolve pixels claimed by several classes
        claimed = np.zeros((height, width), bool)
        for cls in class_priority:
            if cls not in labels:
                continue
            lab, kept = labels[cls]
            fg = lab > 0
            lost = fg & claimed
            n_lost = int(np.count_nonzero(lost))
            if n_lost:
                stats["overlap_pixels"] += n_lost
                lab = np.where(lost, 0, lab)
                left = np.bincount(lab.ravel(), minlength=max(kept) + 1)
                remaining[cls] = {k: int(left[k]) for k in kept}
                labels[cls] = (lab, kept)
            claimed |= fg

    id_map = np.zeros((height, width), np.int32)
    segments, boxes, next_id = [], {}, 1
    for cat in sorted(categories, key=lambda c: c["id"]):
        if cat["name"] not in labels:
            continue
        lab, kept = labels[cat["name"]]
        lut = np.zeros(max(kept) + 1, np.int32)
        for k in sorted(kept):
            if remaining[cat["name"]][k] < min_area:
                stats["dropped_after_overlap"] += 1
                continue
            lut[k] = next_id
            boxes[next_id] = kept[k][:4]
            area = remaining[cat["name"]][k]
            segments.append({"id": next_id, "category_id": cat["id"], "iscrowd": 0, "area": area})
            next_id += 1
        if len(kept) == 1 and lut.any():  # one component: a masked write beats a gather
            id_map[lab > 0] = lut.max()
        elif lut.any():
            id_map += np.take(lut, lab)
    for seg in segments:  # a thing lies inside its component's box: measure there
        x, y, w, h = boxes[seg["id"]]
        bx, by, bw, bh = mask_bbox(id_map[y : y + h, x : x + w] == seg["id"])
        seg["bbox"] = [x + bx, y + by, bw, bh]
    n_background = height * width - sum(seg["area"] for seg in segments)
    if n_background:
        background = id_map == 0
        id_map[background] = next_id
        segments.append(
            {
                "id": next_id,
                "category_id": background_id,
                "iscrowd": 0,
                "area": n_background,
                "bbox": mask_bbox(background),
            }
        )
    return id_map, segments, stats
