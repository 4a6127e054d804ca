"""Compare an exported model with the PyTorch model it came from: raw outputs and results.

The reference is the PyTorch model's own path (``preprocess_image`` -> ``forward_raw`` for the
raw outputs, ``model(inputs)`` for the results), not the export wrapper, so a mistake in the
wrapper's normalisation or padding shows up as a difference.

Panoptic maps: two float computations that agree to 1e-6 can still send a pixel to different
queries where the merge's arg-max is a near tie (top-1 minus top-2 of the merged quantity below
the raw outputs' difference); untrained models have many. A pixel may differ only there: its
PyTorch decision margin must be below ``delta`` = 4 x (max |mask logit difference| + max |class
probability difference|), measured on the same image; any other difference, or any difference
in the segments (ids, classes, thing flags, scores), is a failure.
"""

import torch

from ..modeling.inference import padded_canvas
from ..modeling.postprocess import class_scores, resize_mask_logits, select_panoptic_queries

__all__ = [
    "relative_error",
    "pytorch_raw",
    "decision_margin",
    "compare_results",
    "check_exported",
]

EPS = 1e-12


def relative_error(actual, expected):
    """``max |actual - expected| / max(max |expected|, eps)`` (one number per tensor pair)."""
    actual = torch.as_tensor(actual).double()
    expected = torch.as_tensor(expected).double()
    if actual.shape != expected.shape:
        raise ValueError(f"shapes differ: {tuple(actual.shape)} vs {tuple(expected.shape)}")
    if expected.numel() == 0:
        return 0.0
    scale = max(expected.abs().max().item(), EPS)
    return (actual - expected).abs().max().item() / scale


@torch.no_grad()
def pytorch_raw(model, image):
    """The PyTorch model's raw outputs for one (3, H, W) image through its own preprocessing."""
    images, mask = model.preprocess_image([{"image": image}])
    return model.forward_raw(images.tensor, mask)


def decision_margin(raw, settings, canvas_size, image_size):
    """
    (H, W) margin of the panoptic merge's per-pixel arg-max for one image's raw outputs
    (results at the input size; ``canvas_size``: the padded input): top-1 minus top-2 over
    the kept queries of score x mask probability (MaskFormer merge with
    ``SCORE_WEIGHTED_MASKS``) or of the mask logit; +inf where fewer than two queries compete.
    """
    logits = raw["pred_logits"][0].float()
    keep = select_panoptic_queries(logits, settings.object_mask_threshold)
    h, w = image_size
    if len(keep) < 2:
        return torch.full((h, w), float("inf"))
    masks = raw["pred_masks"][0][keep].float()
    values = resize_mask_logits(masks, canvas_size, image_size, image_size)
    if settings.panoptic_merge == "maskformer" and settings.score_weighted_masks:
        scores = class_scores(logits)[0][keep]
        values = scores[:, None, None] * values.sigmoid()
    top2 = values.topk(2, dim=0).values
    return top2[0] - top2[1]


def compare_results(expected, actual, score_tol=1e-4, margin=None, delta=0.0):
    """
    Differences between two result dicts of one image (``panoptic_seg``; ``instances`` counts).

    Args:
        margin, delta: (H, W) :func:`decision_margin` of the expected result and the bound
            below which a pixel counts as a near tie (see the module); None: no pixel may differ.
    Returns:
        (problems, near_ties): list of strings, empty when the results agree (panoptic maps
        identical except at near ties, same segment ids, classes, thing flags, scores within
        ``score_tol``), and the number of differing near-tie pixels.
    """
    problems, near_ties = [], 0
    if "panoptic_seg" in expected:
        seg_e, info_e = expected["panoptic_seg"]
        seg_a, info_a = actual["panoptic_seg"]
        if seg_e.shape != seg_a.shape:
            problems.append(f"panoptic map shape {tuple(seg_a.shape)} != {tuple(seg_e.shape)}")
        else:
            differ = seg_e != seg_a
            tie = differ & (margin < delta) if margin is not None else torch.zeros_like(differ)
            near_ties = int(tie.sum())
            other = int((differ & ~tie).sum())
            if other:
                problems.append(f"panoptic maps differ at {other} pixels that are not near ties")
        keys = ("id", "category_id", "isthing")
        info_e = [tuple(s.get(k) for k in keys) for s in info_e]
        info_a = [tuple(s.get(k) for k in keys) for s in info_a]
        if info_e != info_a:
            first = next(
                (i for i, (e, a) in enumerate(zip(info_e, info_a)) if e != a),
                min(len(info_e), len(info_a)),
            )
            problems.append(
                f"segments differ: {len(info_a)} vs {len(info_e)} (PyTorch); first difference at "
                f"segment {first + 1}: {info_a[first:first + 1]} vs {info_e[first:first + 1]}"
            )
        else:
            for s_e, s_a in zip(expected["panoptic_seg"][1], actual["panoptic_seg"][1]):
                if "score" in s_e and not abs(s_e["score"] - s_a.get("score", 0.0)) <= score_tol:
                    problems.append(f"segment {s_e['id']} score {s_a['score']} != {s_e['score']}")
                    break
    if "instances" in expected and len(expected["instances"]) != len(actual["instances"]):
        problems.append(
            f"{len(actual['instances'])} instances != {len(expected['instances'])} (PyTorch)"
        )
    return problems, near_ties


@torch.no_grad()
def check_exported(model, exported, images):
    """
    Run the PyTorch ``model`` and the :class:`~d2_detr.export.runtime.ExportedDETR` on each
    (3, H, W) image of ``images``.

    Returns:
        list of dicts (one per image): "size" (H, W), "relative_error" {output name: value}
        (:func:`relative_error`, exported vs PyTorch), "segments" (PyTorch's count),
        "near_tie_pixels", "delta" and "problems" (:func:`compare_results`).
    """
    model.eval()
    rows = []
    for image in images:
        size = tuple(image.shape[-2:])
        expected_raw = pytorch_raw(model, image)
        actual_raw = exported.raw(image)
        errors = {k: relative_error(actual_raw[k], v) for k, v in expected_raw.items()}
        expected = model([{"image": image}])[0]
        actual = exported([{"image": image}])[0]
        margin, delta = None, 0.0
        if "panoptic_seg" in expected:
            prob_e = expected_raw["pred_logits"].float().softmax(-1)
            prob_a = actual_raw["pred_logits"].float().softmax(-1)
            mask_diff = (expected_raw["pred_masks"] - actual_raw["pred_masks"]).abs().max()
            delta = 4 * float(mask_diff + (prob_e - prob_a).abs().max())
            canvas = padded_canvas(size, model.size_divisibility)
            margin = decision_margin(expected_raw, model.settings, canvas, size)
        problems, ties = compare_results(expected, actual, margin=margin, delta=delta)
        rows.append(
            {
                "size": size,
                "relative_error": errors,
                "segments": len(expected["panoptic_seg"][1]) if "panoptic_seg" in expected else 0,
                "near_tie_pixels": ties,
                "delta": delta,
                "problems": problems,
            }
        )
    return rows
