"""Helpers for the COCO panoptic format (PNG id maps + json), shared by the data tools.

A panoptic PNG stores one segment id per pixel as RGB with ``id = R + 256 * G + 256**2 * B``
(panopticapi's ``rgb2id`` / ``id2rgb``); id 0 means "unlabelled". Its json record lists each
segment as ``{"id", "category_id", "iscrowd", "area", "bbox"}`` with ``bbox = [x, y, w, h]``
in pixels, ``w = x_max - x_min + 1`` (pycocotools' ``toBbox`` convention).

Images are decoded with PIL and EXIF orientation applied, as Detectron2's ``read_image`` does,
so sizes measured here are the sizes a Detectron2 data loader sees.
"""

import json
import os

import cv2
import numpy as np
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image, ImageOps

__all__ = [
    "id2rgb",
    "rgb2id",
    "read_image_rgb",
    "image_size",
    "read_panoptic_png",
    "write_panoptic_png",
    "segments_from_id_map",
    "mask_bbox",
    "write_json",
]

_EXIF_ORIENTATION = 274


def read_image_rgb(path, mode="RGB"):
    """Fully decode an image file (EXIF orientation applied).

    Returns:
        (H, W, 3) uint8 array for ``mode="RGB"``, (H, W) uint8 for ``mode="L"``.
    Raises:
        ValueError: naming ``path`` when the file is not a readable image (corrupt or truncated).
    """
    try:
        with Image.open(path) as img:
            img.load()  # full decode: truncated files raise here
            img = ImageOps.exif_transpose(img)
            return np.asarray(img.convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def image_size(path):
    """(width, height) of an image file as Detectron2 sees it (EXIF rotation applied).

    Only the header is read. Raises ValueError naming ``path`` when it is not an image.
    """
    try:
        with Image.open(path) as img:
            w, h = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def read_panoptic_png(path):
    """Read a panoptic PNG.

    Returns:
        id_map: (H, W) int64 segment ids.
        segments: dict id -> {"area": int, "bbox": [x, y, w, h]} for every non-zero id.
    """
    img = cv2.imread(os.fspath(path), cv2.IMREAD_COLOR)
    if img is None:
        raise ValueError(f"{path}: not a readable PNG")
    id_map = rgb2id(np.ascontiguousarray(img[:, :, ::-1])).astype(np.int64)
    return id_map, segments_from_id_map(id_map)


def write_panoptic_png(path, id_map):
    """Write a (H, W) integer id map as a panoptic PNG (deterministic bytes, fast zlib level)."""
    id_map = np.asarray(id_map)
    if id_map.min() < 0 or id_map.max() >= 256**3:
        raise ValueError(f"{path}: segment ids must lie in [0, 256**3)")
    rgb = id2rgb(id_map.astype(np.int64))
    ok, buf = cv2.imencode(
        ".png", np.ascontiguousarray(rgb[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )
    if not ok:
        raise OSError(f"{path}: PNG encoding failed")
    with open(path, "wb") as f:
        f.write(buf.tobytes())


def mask_bbox(mask):
    """[x, y, w, h] of the True pixels of a (H, W) bool mask (inclusive pixel extent), or None."""
    cols = np.flatnonzero(mask.any(axis=0))
    if cols.size == 0:
        return None
    rows = np.flatnonzero(mask.any(axis=1))
    x0, x1, y0, y1 = int(cols[0]), int(cols[-1]), int(rows[0]), int(rows[-1])
    return [x0, y0, x1 - x0 + 1, y1 - y0 + 1]


def segments_from_id_map(id_map):
    """Area and bbox of every non-zero id of a (H, W) id map.

    Returns:
        dict id -> {"area": int, "bbox": [x, y, w, h]}, ids in increasing order.
    """
    ids, counts = np.unique(id_map, return_counts=True)
    out = {}
    for sid, count in zip(ids.tolist(), counts.tolist()):
        if sid == 0:
            continue
        out[sid] = {"area": int(count), "bbox": mask_bbox(id_map == sid)}
    return out


def write_json(path, obj):
    """Write json deterministically (sorted keys, compact separators, trailing newline)."""
    with open(path, "w", encoding="utf-8") as f:
        json.dump(obj, f, sort_keys=True, separators=(",", ":"))
        f.write("\n")
