"""Helpers for the COCO panoptic format (PNG id maps + json), shared by the data tools.

A panoptic PNG stores one segment id per pixel as RGB with ``id = R + 256 * G + 256**2 * B``
(panopticapi's ``rgb2id`` / ``id2rgb``); id 0 means "unlabelled". Its json record lists each
segment as ``{"id", "category_id", "iscrowd", "area", "bbox"}`` with ``bbox = [x, y, w, h]``
in pixels, ``w = x_max - x_min + 1`` (pycocotools' ``toBbox`` convention).

Images are decoded with PIL and EXIF orientation applied, as Detectron2's ``read_image`` does,
so sizes measured here are the sizes a Detectron2 data loader sees. HEIC / HEIF photos (phones)
are decoded by pillow-heif (:func:`enable_heif`), which applies the file's own rotation and
mirroring (``irot`` / ``imir``, what a phone's gallery shows) and resets the EXIF orientation
tag to 1, so the photo is turned once, as a JPEG with that EXIF tag would be.

The photo formats read by the project (the demo and the converter) are defined here once:
:data:`PHOTO_EXTENSIONS` (file names) and :func:`photo_formats` (the Pillow decoders allowed,
whatever a file is named).
"""

import json
import os
import struct
import zlib

import cv2
import numpy as np
from panopticapi.utils import id2rgb, rgb2id
from PIL import Image, ImageOps

from ..utils.io import atomic_write_bytes, atomic_write_text

__all__ = [
    "HEIF_EXTENSIONS",
    "PHOTO_EXTENSIONS",
    "PHOTO_FORMATS",
    "enable_heif",
    "photo_formats",
    "photo_formats_for",
    "id2rgb",
    "rgb2id",
    "read_image_rgb",
    "wide_grey_to_uint8",
    "image_size",
    "ids_from_bgr",
    "read_panoptic_png",
    "encode_panoptic_png",
    "write_panoptic_png",
    "segments_from_id_map",
    "mask_bbox",
    "write_json",
]

_EXIF_ORIENTATION = 274

#: file extensions of HEIC / HEIF photos (read once :func:`enable_heif` succeeds)
HEIF_EXTENSIONS = (".heic", ".heif")
#: file extensions of photos (compared in lower case): what the demo lists as photos and the
#: converter accepts in RAW/images; the one definition, imported by both
PHOTO_EXTENSIONS = (
    ".jpg", ".jpeg", ".jpe", ".jfif", ".png", ".bmp", ".tif", ".tiff", ".webp", ".avif",
) + HEIF_EXTENSIONS  # fmt: skip
#: Pillow decoders a photo may use, whatever the file is named: never EPS / PDF-like formats,
#: whose plugins start Ghostscript (a program run on the file's content) where it is installed
#: ("HEIF" is added by :func:`photo_formats` when pillow-heif is installed). JPEG includes MPO.
PHOTO_FORMATS = ("JPEG", "PNG", "BMP", "TIFF", "WEBP", "AVIF")
_heif_ready = None


def enable_heif():
    """Let Pillow open HEIC / HEIF files (format ``"HEIF"``) by registering pillow-heif's opener:
    once, on the first image read, so that only processes that read images import it.

    Returns:
        True when registered; False when the pillow-heif package is not installed (HEIC files
        then fail to open as unknown formats).
    """
    global _heif_ready
    if _heif_ready is None:
        try:
            import pillow_heif
        except ImportError:
            _heif_ready = False
        else:
            pillow_heif.register_heif_opener()
            _heif_ready = True
    return _heif_ready


def photo_formats():
    """:data:`PHOTO_FORMATS`, plus "HEIF" when pillow-heif is installed (registered here)."""
    return PHOTO_FORMATS + (("HEIF",) if enable_heif() else ())


def photo_formats_for(path):
    """:func:`photo_formats`, checked for ``path``: ValueError naming it and saying what to install
    when it is named as a HEIC / HEIF photo and pillow-heif is not installed."""
    formats = photo_formats()
    if "HEIF" not in formats and os.fspath(path).lower().endswith(HEIF_EXTENSIONS):
        raise ValueError(
            f"{path}: HEIC photos need the pillow-heif package (pip install pillow-heif, part of "
            "d2_detr's requirements), or export them as JPEG"
        )
    return formats


def wide_grey_to_uint8(img):
    """
    (H, W) uint8 of a grey PIL image wider than 8 bits, or None for any other mode. 16-bit grey
    (``I;16*``, and ``I`` holding values above 255) is scaled by 255 / 65535 (Pillow's
    ``convert`` would clip it: white); float (``F``) is read as 0..1 when it stays in [0, 1],
    else as 0..255 (``convert`` makes it black); ``I`` within 0..255 is taken as it is.
    """
    if not (img.mode.startswith("I;16") or img.mode in ("I", "F")):
        return None
    grey = np.asarray(img)
    if img.mode == "F":
        grey = np.nan_to_num(grey.astype(np.float64), nan=0.0, posinf=0.0, neginf=0.0)
        scale = 255.0 if grey.size and grey.min() >= 0 and grey.max() <= 1 else 1.0
        grey = np.clip(np.rint(grey * scale), 0, 255)
    elif img.mode.startswith("I;16") or grey.max(initial=0) > 255:
        grey = np.rint(np.clip(grey, 0, 65535) / 257.0)
    return np.clip(grey, 0, 255).astype(np.uint8)


def read_image_rgb(path, mode="RGB"):
    """Fully decode a photo (EXIF orientation applied) of any of :func:`photo_formats`.

    Grey images wider than 8 bits are scaled as :func:`wide_grey_to_uint8` says, not clipped as
    Pillow's ``convert`` would.

    Returns:
        (H, W, 3) uint8 array for ``mode="RGB"``, (H, W) uint8 for ``mode="L"``.
    Raises:
        ValueError: naming ``path`` when the file is not a readable image (corrupt, truncated,
            or not of a photo format).
    """
    formats = photo_formats_for(path)
    try:
        with Image.open(path, formats=formats) as img:
            img.load()  # full decode: truncated files raise here
            img = ImageOps.exif_transpose(img)
            grey = wide_grey_to_uint8(img)
            if grey is not None:
                img = Image.fromarray(grey, mode="L")
            return np.asarray(img.convert(mode))
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e


def image_size(path):
    """(width, height) of an image file as Detectron2 sees it (EXIF rotation applied).

    Only the header is read. Raises ValueError naming ``path`` when it is not an image.
    """
    try:
        with Image.open(path, formats=photo_formats()) as img:
            w, h = img.size
            orientation = img.getexif().get(_EXIF_ORIENTATION, 1)
    except (OSError, SyntaxError, ValueError) as e:
        raise ValueError(f"{path}: not a readable image ({type(e).__name__}: {e})") from e
    return (h, w) if orientation in (5, 6, 7, 8) else (w, h)


def ids_from_bgr(bgr):
    """(H, W, 3) uint8 BGR (OpenCV order) -> (H, W) int32 ids (panopticapi's ``rgb2id``)."""
    return rgb2id(bgr[:, :, ::-1])


def read_panoptic_png(path):
    """Read a panoptic PNG.

    Returns:
        id_map: (H, W) int32 segment ids.
        segments: dict id -> {"area": int, "bbox": [x, y, w, h]} for every non-zero id.
    """
    try:  # bytes read by Python: cv2.imread crashes (SIGSEGV) on a name that is not UTF-8
        with open(path, "rb") as f:
            data = np.frombuffer(f.read(), np.uint8)
    except OSError as e:
        raise ValueError(f"{path}: not a readable PNG ({e.strerror or e})") from None
    img = cv2.imdecode(data, cv2.IMREAD_COLOR) if data.size else None
    if img is None:
        raise ValueError(f"{path}: not a readable PNG")
    id_map = ids_from_bgr(img)
    return id_map, segments_from_id_map(id_map)


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))


def encode_panoptic_png(id_map, level=1):
    """Encode a (H, W) id map as panoptic PNG bytes (8-bit RGB, ``id = R + 256 G + 256**2 B``).

    A minimal PNG writer (filter type 0 on every row, one zlib stream): about 4x faster than
    libpng's adaptive filtering on segment maps, and the bytes depend only on the ids.
    """
    id_map = np.asarray(id_map)
    if id_map.ndim != 2:
        raise ValueError(f"id map must be (H, W), got shape {id_map.shape}")
    if id_map.size and (id_map.min() < 0 or id_map.max() >= 256**3):
        raise ValueError("segment ids must lie in [0, 256**3)")
    h, w = id_map.shape
    ids = id_map.astype(np.int32, copy=False)
    rows = np.zeros((h, 3 * w + 1), np.uint8)  # leading 0 per row: PNG filter "None"
    rows[:, 1:] = id2rgb(ids).reshape(h, 3 * w)
    header = struct.pack(">IIBBBBB", w, h, 8, 2, 0, 0, 0)
    return (
        b"\x89PNG\r\n\x1a\n"
        + _png_chunk(b"IHDR", header)
        + _png_chunk(b"IDAT", zlib.compress(rows.tobytes(), level))
        + _png_chunk(b"IEND", b"")
    )


def write_panoptic_png(path, id_map):
    """Write a (H, W) integer id map as a panoptic PNG (see :func:`encode_panoptic_png`)."""
    atomic_write_bytes(path, encode_panoptic_png(id_map))


def mask_bbox(mask):
    """[x, y, w, h] of the True pixels of a (H, W) bool mask (inclusive pixel extent), or None."""
    x, y, w, h = cv2.boundingRect(np.ascontiguousarray(mask).view(np.uint8))
    return [x, y, w, h] if w > 0 else None


def segments_from_id_map(id_map):
    """Area and bbox of every non-zero id of a (H, W) id map.

    Returns:
        dict id -> {"area": int, "bbox": [x, y, w, h]}, ids in increasing order.
    """
    flat = id_map.ravel()
    if flat.size and 0 <= flat.min() and flat.max() < 1 << 20:
        counts = np.bincount(flat)
        ids = np.flatnonzero(counts)
        counts = counts[ids]
    else:
        ids, counts = np.unique(flat, return_counts=True)
    out = {}
    for sid, count in zip(ids.tolist(), counts.tolist()):
        if sid == 0:
            continue
        out[sid] = {"area": int(count), "bbox": mask_bbox(id_map == sid)}
    return out


def write_json(path, obj):
    """Write json deterministically and atomically (sorted keys, compact, trailing newline)."""
    atomic_write_text(path, json.dumps(obj, sort_keys=True, separators=(",", ":")) + "\n")
