"""From one image's raw DETR outputs to Detectron2's panoptic / instance / semantic results: the
generic algorithms (dataset policy lives in ``component_split``; the per-image plumbing that
calls these in ``inference``)."""

import numpy as np
import torch
import torch.nn.functional as F
from detectron2.modeling.postprocessing import sem_seg_postprocess
from detectron2.structures import Boxes, Instances
from PIL import Image
from torchvision.ops import box_convert, masks_to_boxes


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
        (N, height, width) float logits: bilinear to ``padded_size``, cropped to ``image_size``,
        bilinear to ``output_size`` (Detectron2's ``sem_seg_postprocess``).
    """
    if mask_logits.shape[0] == 0:
        return mask_logits.new_zeros((0, *output_size))
    x = F.interpolate(mask_logits[None], size=padded_size, mode="bilinear", align_corners=False)
    return sem_seg_postprocess(x[0], image_size, *output_size)


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


def instance_inference(scores, labels, boxes, mask_logits, output_size, boxes_from_masks=False):
    """
    Args:
        scores, labels: (N,) of the thing queries; boxes: (N, 4) normalised cxcywh;
        mask_logits: (N, H, W) at ``output_size``, or None (detection only).
        boxes_from_masks: boxes are the tight boxes of the predicted masks (logit > 0; pixel
            (x, y) covers [x, x + 1) x [y, y + 1)), the regressed box where a mask is empty.
    Returns:
        Instances with pred_boxes (absolute xyxy at the output size), scores, pred_classes,
        pred_masks (bool), sorted by decreasing score.
    """
    order = scores.argsort(descending=True)
    h, w = output_size
    result = Instances(output_size)
    pred_boxes = Boxes(box_convert(boxes[order].float(), "cxcywh", "xyxy"))
    pred_boxes.scale(w, h)
    pred_boxes.clip(output_size)
    result.scores = scores[order]
    result.pred_classes = labels[order]
    if mask_logits is not None:
        result.pred_masks = mask_logits[order] > 0
        if boxes_from_masks:
            pred_boxes = Boxes(mask_boxes(result.pred_masks, pred_boxes.tensor))
    result.pred_boxes = pred_boxes
    return result


def mask_boxes(masks, fallback):
    """(N, H, W) bool masks -> (N, 4) absolute xyxy boxes covering their pixels (x1 = last
    column + 1); rows of ``fallback`` (N, 4) where a mask is empty."""
    out = fallback.clone()
    nonempty = masks.flatten(1).any(1)
    if nonempty.any():
        tight = masks_to_boxes(masks[nonempty]).to(out.dtype)
        tight[:, 2:] += 1
        out[nonempty] = tight
    return out


def semantic_inference(prob, mask_logits):
    """(Q, K+1) class probabilities, (Q, H, W) mask logits -> (K, H, W) class scores."""
    return torch.einsum("qc,qhw->chw", prob[:, :-1], mask_logits.sigmoid())


def detr_panoptic_inference(scores, labels, mask_logits, thing_ids, output_size, min_area=4):
    """
    DETR's own merging (``PostProcessPanoptic`` of facebookresearch/detr, its rules restated):

    1. each pixel goes to the kept query with the largest mask logit, at the network input's
       resolution (``mask_logits``);
    2. first pass only: pixels of every stuff query go to the first (lowest index) kept query of
       the same stuff class;
    3. the id map is resized to ``output_size`` (PIL's NEAREST, as DETR) and the area of every
       query counted there;
    4. while some query has area <= ``min_area``: drop those queries and redo 1 and 3 (without 2)
       among the others, so their pixels go to the next best query (the duplicates of a stuff
       class, which have area 0 after 2, are dropped this way).
    No kept query (or none left): every pixel is void (DETR writes id 0 with no segment).

    Args:
        scores, labels: (N,) score and contiguous class of each kept query (DETR keeps queries
            whose best class is not "no object" and has probability > 0.85).
        mask_logits: (N, h, w) logits at the network input's (unpadded) size.
        thing_ids: set of contiguous class ids that are things.
        output_size: (height, width) of the result.
    Returns:
        panoptic_seg: (height, width) int32, segment k + 1 = k-th remaining query (0 = void);
        segments_info: list of dicts with id, category_id, isthing, score, area (at
        ``output_size``), in query order.
    """
    device = mask_logits.device
    h, w = mask_logits.shape[-2:]
    labels_l = labels.tolist()
    first_of_class = {}
    dedup = torch.arange(len(labels_l), device=device)
    for q, c in enumerate(labels_l):
        if c not in thing_ids:
            dedup[q] = first_of_class.setdefault(c, q)
    alive = torch.arange(len(labels_l), device=device)
    first = True
    while True:
        if len(alive):
            winner = alive[mask_logits[alive].argmax(0)]  # (h, w) query index
            if first:
                winner = dedup[winner]
            ids = winner + 1  # 0 is void
        else:
            ids = torch.zeros((h, w), dtype=torch.long, device=device)
        ids = pil_nearest_resize(ids, output_size)
        areas = torch.bincount(ids.flatten(), minlength=len(labels_l) + 1)[1:]
        small = areas[alive] <= min_area
        first = False
        if not small.any():
            break
        alive = alive[~small]
    lut = torch.zeros(len(labels_l) + 1, dtype=torch.int32, device=device)
    segments_info = []
    for q in alive.tolist():
        seg_id = len(segments_info) + 1
        lut[q + 1] = seg_id
        c = labels_l[q]
        segments_info.append(
            {"id": seg_id, "category_id": c, "isthing": c in thing_ids,
             "score": float(scores[q]), "area": int(areas[q])}
        )  # fmt: skip
    return lut[ids], segments_info


def pil_nearest_resize(ids, output_size):
    """(h, w) integer map -> (height, width) by PIL's NEAREST resize (the pixel PIL picks for each
    output row and column, which float rounding decides at exact half-way points)."""
    picks = []
    for n_in, n_out in zip(ids.shape, output_size):
        ramp = Image.fromarray(np.arange(n_in, dtype=np.int32)[None], mode="I")
        pick = np.asarray(ramp.resize((n_out, 1), resample=Image.NEAREST))[0]
        picks.append(torch.as_tensor(pick.astype(np.int64), device=ids.device))
    return ids[picks[0]][:, picks[1]]
