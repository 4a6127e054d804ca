"""Images of the converted dataset: JPEGs copied byte for byte, any other photo re-encoded.

A JPEG input (any extension) without EXIF rotation is copied as is; any other photo (.png, .tif,
.webp, .avif, .heic, a rotated or CMYK JPEG, ...) is decoded by the project's one reader,
:func:`~d2_detr.data.panoptic_format.read_image_rgb` (EXIF orientation applied as Detectron2's
``read_image`` does, 16-bit grey scaled, HEIC through pillow-heif), and re-encoded as JPEG
quality 95 (4:4:4): Detectron2 v0.6's ``load_coco_panoptic_json`` looks for ``<png stem>.jpg``,
and its ``read_image`` (plain PIL) cannot open HEIC. So every output image is a plain JPEG.
"""

from PIL import Image

from ...utils.io import atomic_write, atomic_write_bytes
from ..panoptic_format import photo_formats_for, read_image_rgb
from .scan import read_bytes
from .settings import RawDatasetError

__all__ = ["JPEG_QUALITY", "write_image"]

JPEG_QUALITY = 95


def _unreadable(src, reason):
    return RawDatasetError(
        f"{src}: corrupt or unreadable image ({reason})",
        "replace or remove the photo (and its masks), or re-export it as JPEG",
    )


def write_image(src, dst):
    """Copy a JPEG as is, re-encode any other photo; returns ((width, height), re-encoded)."""
    try:
        formats = photo_formats_for(src)  # photo decoders only: never EPS & co.
    except ValueError as e:  # a HEIC without pillow-heif
        raise RawDatasetError(
            str(e), "pip install pillow-heif, or export the photo as JPEG"
        ) from None
    try:
        with Image.open(src, formats=formats) as img:
            fmt, mode, size = img.format, img.mode, img.size
            orientation = img.getexif().get(274, 1)
            copy = fmt == "JPEG" and mode in ("RGB", "L") and orientation == 1
            if copy:  # check the whole stream decodes; DCT-scaled: still all read, 2x faster
                img.draft(img.mode, (size[0] // 8, size[1] // 8))
                img.load()  # corrupt and truncated files raise here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise _unreadable(src, e) from e
    if copy:
        atomic_write_bytes(dst, read_bytes(src))
        return size, False
    try:
        rgb = read_image_rgb(src)  # EXIF orientation, wide grey, HEIC: as the demo reads it
    except ValueError as e:
        raise _unreadable(src, str(e).removeprefix(f"{src}: ")) from e
    atomic_write(
        dst,
        lambda f: Image.fromarray(rgb).save(f, format="JPEG", quality=JPEG_QUALITY, subsampling=0),
    )
    return (rgb.shape[1], rgb.shape[0]), True
