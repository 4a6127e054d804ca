"""Copy-paste augmentation of thing instances (Ghiasi et al. 2021, "Simple Copy-Paste is a
Strong Data Augmentation Method for Instance Segmentation") on panoptic targets.

Objects of a source image (scaled, maybe flipped) are pasted on top of the training image at a
random place. Targets stay consistent because the operation works on the panoptic id map: the
pasted pixels get new segment ids, so every segment they cover loses those pixels (a segment
covered completely disappears), and boxes are recomputed from the masks afterwards.
"""

import cv2
import numpy as np

__all__ = ["draw_paste", "paste_segments", "transform_source"]


def transform_source(image, pan_ids, scale, flip):
    """Scale (bilinear image, nearest ids) and optionally flip a source image and its id map.

    Args:
        image: (H, W, C) uint8; pan_ids: (H, W) int.
    Returns:
        image (h, w, C), pan_ids (h, w) with h, w = round(H * scale), round(W * scale) (>= 1).
    """
    h = max(1, int(round(image.shape[0] * scale)))
    w = max(1, int(round(image.shape[1] * scale)))
    image = cv2.resize(image, (w, h), interpolation=cv2.INTER_LINEAR)
    if image.ndim == 2:
        image = image[..., None]
    ids = cv2.resize(pan_ids.astype(np.int32), (w, h), interpolation=cv2.INTER_NEAREST)
    if flip:
        image, ids = image[:, ::-1], ids[:, ::-1]
    return np.ascontiguousarray(image), np.ascontiguousarray(ids)


def paste_segments(image, pan_ids, segments, src_image, src_ids, src_segments, offset):
    """
    Paste the pixels of ``src_segments`` of the source onto the image.

    Args:
        image: (H, W, C) uint8; pan_ids: (H, W) int segment ids; segments: list of dicts with
            "id" (the image's segments_info).
        src_image: (h, w, C) uint8; src_ids: (h, w) int; src_segments: the source segments to
            paste (dicts with "id", "category_id", ...).
        offset: (dx, dy) position of the source's top-left pixel in the image (may be negative
            or put the source partly outside: what falls outside is dropped).
    Returns:
        image, pan_ids, segments: new arrays / list; pasted segments get fresh ids (larger than
        any existing one) and only those with pixels left inside the image are listed.
    """
    image, pan_ids = image.copy(), pan_ids.copy()
    segments = [dict(s) for s in segments]
    H, W = pan_ids.shape
    h, w = src_ids.shape
    dx, dy = int(offset[0]), int(offset[1])
    # overlap of the source rectangle with the image, in image and source coordinates
    x0, y0, x1, y1 = max(dx, 0), max(dy, 0), min(dx + w, W), min(dy + h, H)
    if x0 >= x1 or y0 >= y1:
        return image, pan_ids, segments
    src_view = src_ids[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    img_view = src_image[y0 - dy : y1 - dy, x0 - dx : x1 - dx]
    next_id = int(max([int(pan_ids.max())] + [int(s["id"]) for s in segments])) + 1
    for seg in src_segments:
        m = src_view == seg["id"]
        if not m.any():
            continue
        image[y0:y1, x0:x1][m] = img_view[m]
        pan_ids[y0:y1, x0:x1][m] = next_id
        segments.append({**seg, "id": next_id, "iscrowd": 0})
        next_id += 1
    return image, pan_ids, segments


def draw_paste(src_segments, src_ids, dst_shape, scale_range, max_objects):
    """
    Random choices of one paste, from numpy's global RNG (seeded per sample by the loader).

    Args:
        src_segments: thing segments of the source (non-empty list).
        src_ids: (H, W) int id map of the source; dst_shape: (H, W) of the training image.
        scale_range: (lo, hi): the source is resized to ``u * dst_short / src_short`` with ``u``
            uniform in it (objects about as large as in their own image, times ``u``).
        max_objects: most segments pasted.
    Returns:
        dict: segments (chosen, each with probability 0.5, at least one), scale, flip, offset
        (dx, dy) of the scaled source in the image, drawn so that the chosen objects' box lands
        at a uniform position inside the image (or covers it, when larger).
    """
    keep = [s for s in src_segments if np.random.rand() < 0.5]
    if not keep:
        keep = [src_segments[np.random.randint(len(src_segments))]]
    if len(keep) > max_objects:
        order = np.random.permutation(len(keep))[:max_objects]
        keep = [keep[i] for i in sorted(order)]
    scale = np.random.uniform(*scale_range) * min(dst_shape) / min(src_ids.shape)
    flip = bool(np.random.rand() < 0.5)
    ys, xs = np.nonzero(np.isin(src_ids, [s["id"] for s in keep]))
    if len(xs) == 0:  # the chosen segments are not in the id map: nothing to place
        ys, xs = np.array([0, src_ids.shape[0] - 1]), np.array([0, src_ids.shape[1] - 1])
    w_src = src_ids.shape[1]
    bx0, bx1 = (w_src - 1 - xs.max(), w_src - 1 - xs.min()) if flip else (xs.min(), xs.max())
    box = np.array([bx0, ys.min(), bx1 + 1, ys.max() + 1], np.float64) * scale
    offset = []
    for lo, hi, size in ((box[0], box[2], dst_shape[1]), (box[1], box[3], dst_shape[0])):
        extent = hi - lo
        start = (
            np.random.uniform(0, size - extent)
            if extent <= size
            else np.random.uniform(size - extent, 0)
        )
        offset.append(int(round(start - lo)))
    return {"segments": keep, "scale": scale, "flip": flip, "offset": tuple(offset)}
