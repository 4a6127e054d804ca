"""Dataset policy for the concrete-defect datasets: a thing instance is a connected component of
its class's mask (``datasets/prepare_concrete_defects.py`` converts that way). Splits the thing
segments of a panoptic result accordingly (``MODEL.DETR.TEST.COMPONENTS``)."""

import cv2
import numpy as np
import torch

__all__ = ["split_into_components"]


def split_into_components(
    panoptic_seg, segments_info, class_priority=(), min_area=4, min_part_fraction=0.0
):
    """
    Split thing segments into 8-connected components: the instance definition of datasets whose
    instances are connected components of a per-class mask (``datasets/prepare_concrete_defects.py``
    converts that way), e.g. the parallel bars of one rebar prediction become one instance each.

    The converter takes components of each class's own mask, then gives pixels claimed by several
    classes to the first class of its priority. Mirrored here: the pixels of segments whose class
    comes earlier in ``class_priority`` connect the parts of a segment (a spall crossed by a bar
    stays one spall); classes not listed are split by their own pixels only. A part smaller than
    ``min_part_fraction`` of the segment's largest part is not split off (it stays with the
    largest: a gap in a thin mask does not make a new instance); instances of at most ``min_area``
    pixels become void. Stuff segments are kept as they are.

    Args:
        panoptic_seg: (H, W) int32 segment ids (0 = void); segments_info: their dicts.
        class_priority: contiguous thing class ids, first wins (the converter's --class-priority,
            read from the dataset's metadata ``class_priority``: see ``dataset_meta``).
    Returns:
        (panoptic_seg, segments_info) renumbered 1..S, each thing component with its own id.
    """
    ids = panoptic_seg.cpu().numpy()
    out = np.zeros_like(ids)
    # priority rank of every pixel's segment (unlisted classes, stuff and void: never connect)
    unranked = len(class_priority)
    rank = {c: i for i, c in enumerate(class_priority)}
    top_id = max([int(ids.max())] + [seg["id"] for seg in segments_info])
    rank_of_segment = np.full(top_id + 1, unranked)
    for seg in segments_info:
        if seg["isthing"]:
            rank_of_segment[seg["id"]] = rank.get(seg["category_id"], unranked)
    pixel_rank = rank_of_segment[ids]
    result = []

    def add(seg, pixels, area):
        result.append({**seg, "id": len(result) + 1, "area": int(area)})
        out[pixels] = len(result)

    for seg in segments_info:
        own = ids == seg["id"]
        if not seg["isthing"]:
            add(seg, own, seg["area"])
            continue
        connect = own | (pixel_rank < rank.get(seg["category_id"], 0))
        n, labels = cv2.connectedComponents(connect.astype(np.uint8), connectivity=8)
        labels[~own] = 0
        areas = np.bincount(labels.ravel(), minlength=n)
        if n > 2 and min_part_fraction > 0:
            # small parts (gaps in a thin mask) stay with the largest
            largest = int(np.argmax(areas[1:])) + 1
            small = areas < min_part_fraction * areas[largest]
            small[0] = False
            labels[small[labels]] = largest
            areas = np.bincount(labels.ravel(), minlength=n)
        for k in range(1, n):
            if areas[k] > min_area:
                add(seg, labels == k, areas[k])
    return torch.as_tensor(out, device=panoptic_seg.device), result
