"""From one image's raw DETR outputs to Detectron2's panoptic / instance / semantic results."""

import cv2
import numpy as np
import torch
import torch.nn.functional as F
from detectron2.structures import Boxes, Instances
from torchvision.ops import box_convert


def resize_mask_logits(mask_logits, padded_size, image_size, output_size):
    """
    Mask logits predicted on the padded canvas -> logits at the original image size.

    Args:
        mask_logits: (N, h, w) logits covering the top-left ``padded_size`` region of the
            padded input (h, w = padded size / stride), possibly cropped to the valid region.
        padded_size: (H, W) input size the logits' grid spans (``h * stride``, ``w * stride``).
        image_size: (h_img, w_img) valid (unpadded) size of the network input.
        output_size: (height, width) original image size.
    Returns:
        (N, height, width) float logits.
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *output_size))
    x = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    x = x[:, :, : image_size[0], : image_size[1]]
    if tuple(image_size) != tuple(output_size):
        x = F.interpolate(x, size=output_size, mode="bilinear", align_corners=False)
    return x[0]


def class_scores(logits):
    """(Q, K+1) logits -> best non-background (scores, labels) and the full probabilities."""
    prob = logits.softmax(-1)
    scores, labels = prob[:, :-1].max(-1)
    return scores, labels, prob


def select_panoptic_queries(logits, threshold):
    """Indices of queries whose best class is not "no object" and whose score > threshold."""
    prob = logits.softmax(-1)
    scores, labels = prob.max(-1)
    keep = (labels != logits.shape[-1] - 1) & (scores > threshold)
    return keep.nonzero().flatten()


def panoptic_inference(
    scores, labels, mask_logits, thing_ids, overlap_threshold=0.8, min_area=4, score_weighted=False
):  # fmt: skip
    """
    Pixel-wise argmax over the kept queries' masks, then segments.

    Args:
        scores, labels: (N,) score and contiguous class of each kept query.
        mask_logits: (N, H, W) logits of the kept queries at the output size.
        thing_ids: set of contiguous class ids that are things.
        overlap_threshold: a query is dropped when it wins fewer than this fraction of the pixels
            its own mask covers (prob >= 0.5), i.e. when it is mostly overlapped by others.
        min_area: segments of at most this many pixels are dropped.
        score_weighted: each pixel goes to the query with the largest score * mask probability
            (as MaskFormer) instead of the largest mask logit (as DETR).
    Returns:
        panoptic_seg: (H, W) int32 segment ids (0 = void), segments_info: list of dicts with
        id, category_id, isthing, score, area. Queries of the same stuff class form one segment.
    """
    h, w = mask_logits.shape[-2:]
    panoptic_seg = torch.zeros((h, w), dtype=torch.int32, device=mask_logits.device)
    if mask_logits.shape[0] == 0:
        return panoptic_seg, []
    n = mask_logits.shape[0]
    if score_weighted:
        winner = (scores[:, None, None] * mask_logits.sigmoid()).argmax(0)  # (H, W)
    else:
        winner = mask_logits.argmax(0)
    won = torch.bincount(winner.flatten(), minlength=n)
    own = (mask_logits >= 0).flatten(1).sum(1)  # sigmoid >= 0.5
    ok = (won > 0) & (own > 0) & (won >= overlap_threshold * own.clamp(min=1))

    # segment id per query: things get their own id, stuff queries of one class share one id
    labels_l, scores_l, ok_l = labels.tolist(), scores.tolist(), ok.tolist()
    seg_of_query = [0] * n
    segments, stuff_seg = [], {}
    for q in range(n):
        if not ok_l[q]:
            continue
        c = labels_l[q]
        isthing = c in thing_ids
        if not isthing and c in stuff_seg:
            seg = stuff_seg[c]
            seg["score"] = max(seg["score"], scores_l[q])
        else:
            seg = {"id": len(segments) + 1, "category_id": c, "isthing": isthing}
            seg["score"] = scores_l[q]
            segments.append(seg)
            if not isthing:
                stuff_seg[c] = seg
        seg_of_query[q] = seg["id"]
    lut = torch.as_tensor(seg_of_query, dtype=torch.int32, device=mask_logits.device)
    panoptic_seg = lut[winner]

    # drop tiny segments (after merging), then renumber 1..S
    areas = torch.bincount(panoptic_seg.flatten().long(), minlength=len(segments) + 1).tolist()
    remap = [0] * (len(segments) + 1)
    segments_info = []
    for seg in segments:
        area = areas[seg["id"]]
        if area <= min_area:
            continue
        remap[seg["id"]] = len(segments_info) + 1
        segments_info.append({**seg, "id": len(segments_info) + 1, "area": int(area)})
    panoptic_seg = torch.as_tensor(remap, dtype=torch.int32, device=panoptic_seg.device)[
        panoptic_seg.long()
    ]
    return panoptic_seg, segments_info


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
        class_priority: contiguous thing class ids, first wins (the converter's --class-priority).
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


def instance_inference(scores, labels, boxes, mask_logits, output_size):
    """
    Args:
        scores, labels: (N,) of the thing queries; boxes: (N, 4) normalised cxcywh;
        mask_logits: (N, H, W) at ``output_size``, or None (detection only).
    Returns:
        Instances with pred_boxes (absolute xyxy at the output size), scores, pred_classes,
        pred_masks (bool), sorted by decreasing score.
    """
    order = scores.argsort(descending=True)
    h, w = output_size
    result = Instances(output_size)
    xyxy = box_convert(boxes[order].float(), "cxcywh", "xyxy")
    xyxy = xyxy * torch.as_tensor([w, h, w, h], dtype=xyxy.dtype, device=xyxy.device)
    result.pred_boxes = Boxes(xyxy)
    result.pred_boxes.clip(output_size)
    result.scores = scores[order]
    result.pred_classes = labels[order]
    if mask_logits is not None:
        result.pred_masks = mask_logits[order] > 0
    return result


def semantic_inference(prob, mask_logits):
    """(Q, K+1) class probabilities, (Q, H, W) mask logits -> (K, H, W) class scores."""
    return torch.einsum("qc,qhw->chw", prob[:, :-1], mask_logits.sigmoid())
