"""Raw concrete-defect masks -> COCO instances + COCO panoptic (Detectron2's COCO layout).

Raw layout (input)::

    RAW/images/<stem>.<ext>   a photo: .jpg .jpeg .jpe .jfif .png .bmp .tif .tiff .webp .avif
                              .heic .heif, any case (the demo's photos: PHOTO_EXTENSIONS)
    RAW/masks/<stem><suffix>.<jpg|jpeg|png>   one mask per defect class present in the image

Sub-folders are allowed, mirrored between images/ and masks/ (``images/site1/a.jpg`` pairs with
``masks/site1/acrack.png``; output name ``site1__a``); extensions and suffixes in any case (see
``scan.py``).

Output layout::

    OUT/{split}/<stem>.jpg                         images (always .jpg, see images.py)
    OUT/panoptic_{split}/<stem>.png                one panoptic PNG per image
    OUT/annotations/panoptic_{split}.json          one record per image, every segment + background
    OUT/annotations/instances_{split}.json         things only; RLE masks, bbox xywh, area in pixels
    OUT/conversion_summary.json                    counts and settings (incl. class_priority)

Modules, one step each: ``scan`` (pair images and masks; dangling/looping symlinks and unreadable
files are errors naming the file), ``split`` (seeded, leak-free split: byte-identical images share
a split), ``masks`` (any bit depth / colour type -> bool mask, the documented rule), ``panoptic``
(the pure algorithm: masks -> id map + segments + stats), ``images`` (copy or re-encode),
``coco_json`` (json writers), ``publish`` (temporary folder + rename: a failed run leaves ``OUT``
as it was) and ``convert`` (the pipeline). Every file is written with
:mod:`d2_detr.utils.io`'s atomic writer.

Masks (``masks.py``): 8/16-bit grey, 0/1 PNG, palette, RGB(A) are all accepted; colour -> the
brightest channel, alpha scales it, a PNG of only 0 and 1 is binary, otherwise
``value >= threshold`` relative to the type range (default 128 of 255 = 32896 of 65535).
Per image (``panoptic.py``): 8-connected components -> specks under ``min_area`` dropped ->
contested pixels to the first class of ``class_priority`` (default crack, rebar, spall) ->
instances left under ``min_area`` dropped -> the rest is background.
"""

from . import settings
from .convert import convert_concrete_dataset, convert_image
from .masks import read_mask
from .panoptic import masks_to_panoptic
from .scan import scan_raw_dir
from .settings import *  # noqa: F401,F403  (defaults, RawDatasetError, threshold_fraction)
from .split import split_stems

__all__ = settings.__all__ + [
    "scan_raw_dir",
    "split_stems",
    "read_mask",
    "masks_to_panoptic",
    "convert_image",
    "convert_concrete_dataset",
]
