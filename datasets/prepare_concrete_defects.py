#!/usr/bin/env python
"""Convert raw concrete-defect masks to Detectron2's COCO panoptic + instances layout.

    python datasets/prepare_concrete_defects.py --raw RAW --out datasets/concrete_defects

RAW holds ``images/<stem>.<ext>`` (photos as the demo reads them: .jpg .jpeg .jpe .jfif .png
.bmp .tif .tiff .webp .avif .heic .heif, any case) and ``masks/<stem><class>.<jpg|jpeg|png>``.
Photos other than plain JPEGs are written as JPEG quality 95 (EXIF orientation applied). Rules
(masks of any bit depth, thresholding, 8-connected components, min-area, overlap priority,
splits, JPEG re-encoding, atomic output) are documented in ``d2_detr/data/conversion/``. The
output is validated with ``datasets/check_panoptic.py`` before it replaces OUT.

Bad input (a missing or unreadable file, a dangling symlink, a bad setting, an --out that is a
file) ends with exit code 2 and a message naming it; ``--debug`` or ``D2_DETR_DEBUG=1`` shows
the traceback. OUT is never left half-written. With ``--skip-unreadable-images`` a photo that
cannot be decoded is left out (with its masks), named in a warning and in the summary's
``skipped_images``, and the others convert.
"""

import argparse
import json
import sys

import d2_detr  # noqa: F401  (compat before detectron2)
from d2_detr.data.conversion import (
    DEFAULT_CLASS_PRIORITY,
    DEFAULT_MIN_AREA,
    DEFAULT_THRESHOLD,
    convert_concrete_dataset,
)
from d2_detr.utils.cli import UserError, exit_status


def parse_suffixes(text):
    """'crack=crack,spall=spall' -> dict suffix -> class."""
    pairs = [p.split("=", 1) if "=" in p else (p, p) for p in text.split(",") if p.strip()]
    return {s.strip(): c.strip() for s, c in pairs}


def parse_threshold(text):
    """'128' -> 128 (8-bit scale, 1..255); '0.5' -> 0.5 (fraction of the mask's type range)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if value.is_integer() and "." not in text and "e" not in text.lower():
        value = int(value)
    if not (isinstance(value, int) and 1 <= value <= 255) and not (
        isinstance(value, float) and 0 < value <= 1
    ):
        raise argparse.ArgumentTypeError(
            f"{text}: use an integer 1..255 (8-bit scale) or a fraction in (0, 1]"
        )
    return value


def _main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--raw", required=True, help="raw folder with images/ and masks/")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument(
        "--threshold",
        type=parse_threshold,
        default=DEFAULT_THRESHOLD,
        help="mask value >= this is defect: an integer 1..255 on the 8-bit scale (scaled to "
        "16-bit masks: 128 -> 32896) or a fraction such as 0.5 of the type range "
        "(default %(default)s)",
    )
    p.add_argument(
        "--min-area",
        type=int,
        default=DEFAULT_MIN_AREA,
        help=f"drop components smaller than this many pixels (default {DEFAULT_MIN_AREA})",
    )
    p.add_argument("--workers", type=int, default=None, help="processes (default: all cores)")
    p.add_argument("--overwrite", action="store_true", help="replace OUT if it exists")
    p.add_argument(
        "--class-priority",
        default=",".join(DEFAULT_CLASS_PRIORITY),
        help="comma list; the first class keeps pixels claimed by several (default %(default)s)",
    )
    p.add_argument(
        "--class-suffixes",
        default="crack,spall,rebar",
        help="mask-name suffixes, 'suffix' or 'suffix=class', comma separated",
    )
    p.add_argument(
        "--skip-unreadable-images",
        action="store_true",
        help="leave out photos that cannot be decoded (corrupt, truncated, HEIC without "
        "pillow-heif) with their masks, list them in the summary's skipped_images and convert "
        "the others (default: stop with exit 2 naming the photo)",
    )
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    try:
        summary = convert_concrete_dataset(
            args.raw,
            args.out,
            val_fraction=args.val_fraction,
            test_fraction=args.test_fraction,
            seed=args.seed,
            threshold=args.threshold,
            min_area=args.min_area,
            workers=args.workers,
            overwrite=args.overwrite,
            class_priority=[c.strip() for c in args.class_priority.split(",") if c.strip()],
            class_suffixes=parse_suffixes(args.class_suffixes),
            progress=not args.no_progress,
            skip_unreadable_images=args.skip_unreadable_images,
        )
    except FileExistsError as e:
        raise UserError(str(e), "pass --overwrite to replace it, or choose another --out") from e
    print(json.dumps(summary, indent=2, sort_keys=True))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


def main(argv=None):
    """Run the converter; returns the exit status (0, or 2 with a message for a bad input)."""
    return exit_status(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
