"""Images of the converted dataset: JPEGs copied byte for byte, anything else re-encoded.

A JPEG input (any extension) without EXIF rotation is copied as is; anything else (.png, rotated
or CMYK JPEG) is decoded (EXIF rotation applied, as Detectron2's ``read_image`` does) and
re-encoded as JPEG quality 95 (4:4:4), because Detectron2 v0.6's ``load_coco_panoptic_json``
looks for ``<png stem>.jpg``.
"""

from PIL import Image

from ...utils.io import atomic_write, atomic_write_bytes
from ..panoptic_format import read_image_rgb
from .scan import read_bytes
from .settings import RawDatasetError

__all__ = ["JPEG_QUALITY", "write_image"]

JPEG_QUALITY = 95


def write_image(src, dst):
    """Copy a JPEG as is, re-encode anything else; returns ((width, height), re-encoded)."""
    try:
        with Image.open(src, formats=("JPEG", "PNG")) as img:  # never EPS & co.
            fmt, mode, size = img.format, img.mode, img.size
            orientation = img.getexif().get(274, 1)
            if fmt == "JPEG":  # DCT-scaled decode: still reads the whole stream, 2x faster
                img.draft(img.mode, (size[0] // 8, size[1] // 8))
            img.load()  # decode: corrupt and truncated files raise here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RawDatasetError(f"{src}: corrupt or unreadable image ({e})") from e
    if fmt == "JPEG" and mode in ("RGB", "L") and orientation == 1:
        atomic_write_bytes(dst, read_bytes(src))
        return size, False
    try:
        rgb = read_image_rgb(src)  # applies EXIF rotation as Detectron2 does
    except ValueError as e:
        raise RawDatasetError(f"{src}: corrupt or unreadable image ({e})") from e
    atomic_write(
        dst,
        lambda f: Image.fromarray(rgb).save(f, format="JPEG", quality=JPEG_QUALITY, subsampling=0),
    )
    return (rgb.shape[1], rgb.shape[0]), True
