"""Read a mask file of any bit depth or colour type as a (H, W) bool defect mask.

The rule, applied in this order:

1. Decode keeping the stored depth (OpenCV ``IMREAD_UNCHANGED``: 8- or 16-bit; a palette PNG is
   expanded to its palette colours, a 1-bit PNG to 0/255). EXIF orientation, if the file has
   one, is applied as for the images.
2. One value per pixel: grey as is; colour (RGB, or the colours of a palette) -> the BRIGHTEST
   channel, so a pure red or green stroke on black is defect (its luminance would be 76 or 150
   of 255); an alpha channel scales the value (a transparent pixel is background, whatever
   colour it stores).
3. A lossless (PNG) mask whose values are all 0 or 1 is a 0/1 mask: 1 is defect.
4. Otherwise ``value >= fraction * type maximum`` is defect, the type maximum being 255 for
   8-bit and 65535 for 16-bit files: the default ``--threshold 128`` (8-bit scale, = 128/255)
   is 128 for an 8-bit mask and 32896 (= 128 * 257) for a 16-bit one. JPEG noise near 0 and
   255 stays on its side.
"""

import os

import cv2
import numpy as np
from PIL import Image

from ..panoptic_format import photo_formats
from .scan import read_bytes
from .settings import RawDatasetError, threshold_fraction

__all__ = ["read_mask", "mask_values", "exif_orientation"]

_EXIF_ORIENTATION = 274
#: EXIF orientation -> PIL transpose (what ``ImageOps.exif_transpose`` applies).
_TRANSPOSE = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_270,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_90,
}


def mask_values(decoded):
    """(H, W[, C]) uint8/uint16 array as OpenCV decodes it -> (H, W) float32 values, type max.

    Colour -> brightest channel; alpha (4th channel, or 2nd of grey + alpha) scales the value.
    """
    if decoded.dtype == np.uint8:
        top = 255.0
    elif decoded.dtype == np.uint16:
        top = 65535.0
    else:
        raise ValueError(f"unsupported mask sample type {decoded.dtype} (8- or 16-bit expected)")
    if decoded.ndim == 2:
        return decoded.astype(np.float32), top
    channels = decoded.shape[2]
    if channels == 1:
        return decoded[:, :, 0].astype(np.float32), top
    colour = decoded[:, :, :3] if channels >= 3 else decoded[:, :, :1]
    value = colour.max(axis=2).astype(np.float32)
    if channels in (2, 4):
        value *= decoded[:, :, -1].astype(np.float32) / top
    return value, top


def exif_orientation(path):
    """The EXIF orientation tag (1-8) of an image file (a photo format, header only); 1 when it has
    none or it is unreadable (a HEIC's own rotation is applied by pillow-heif: tag reset to 1)."""
    try:
        with Image.open(path, formats=photo_formats()) as img:
            return img.getexif().get(_EXIF_ORIENTATION, 1)
    except Exception:  # noqa: BLE001  (no EXIF readable: as stored)
        return 1


def read_mask(path, threshold=128):
    """Read one mask file as a (H, W) bool array by the rule of the module docstring.

    Args:
        threshold: 1..255 on the 8-bit scale, or a float fraction in (0, 1] of the type range.
    Raises:
        RawDatasetError: naming ``path`` when it cannot be read or decoded.
    """
    fraction = threshold_fraction(threshold)
    data = np.frombuffer(read_bytes(path), np.uint8)
    decoded = cv2.imdecode(data, cv2.IMREAD_UNCHANGED) if data.size else None
    if decoded is None:
        raise RawDatasetError(
            f"{path}: not a readable image (corrupt, truncated or not a PNG/JPEG)",
            "re-export the mask as an 8- or 16-bit PNG",
        )
    try:
        value, top = mask_values(decoded)
    except ValueError as e:
        raise RawDatasetError(f"{path}: {e}") from e
    orientation = exif_orientation(path)
    if orientation in _TRANSPOSE:
        value = np.asarray(Image.fromarray(value, mode="F").transpose(_TRANSPOSE[orientation]))
    lossless = os.path.splitext(path)[1].lower() == ".png"
    if lossless and value.max() <= 1 and np.all((value == 0) | (value == 1)):
        return value == 1
    if isinstance(threshold, float) and threshold <= 1:
        limit = np.float32(fraction * top)
    else:  # 8-bit scale, exact: 128 -> 128 (8-bit) or 128 * 257 = 32896 (16-bit)
        limit = np.float32(threshold * top / 255.0)
    return value >= limit
