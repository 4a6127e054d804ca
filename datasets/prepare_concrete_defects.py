#!/usr/bin/env python
"""Convert raw concrete-defect masks to Detectron2's COCO panoptic + instances layout.

    python datasets/prepare_concrete_defects.py --raw RAW --out datasets/concrete_defects

RAW holds ``images/<stem>.<jpg|jpeg|png>`` and ``masks/<stem><class>.<jpg|jpeg|png>``. Rules
(thresholding, 8-connected components, min-area, overlap priority, splits, JPEG re-encoding,
atomic output) are documented in ``d2_detr/data/conversion.py``. The output is validated with
``datasets/check_panoptic.py`` before it replaces OUT.
"""

import argparse
import json
import sys

import d2_detr  # noqa: F401  (compat before detectron2)
from d2_detr.data.conversion import (
    DEFAULT_CLASS_PRIORITY,
    DEFAULT_MIN_AREA,
    RawDatasetError,
    convert_concrete_dataset,
)


def parse_suffixes(text):
    """'crack=crack,spall=spall' -> dict suffix -> class."""
    pairs = [p.split("=", 1) if "=" in p else (p, p) for p in text.split(",") if p]
    return {s.strip(): c.strip() for s, c in pairs}


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--raw", required=True, help="raw folder with images/ and masks/")
    p.add_argument("--out", required=True, help="dataset root to create")
    p.add_argument("--val-fraction", type=float, default=0.2)
    p.add_argument("--test-fraction", type=float, default=0.0)
    p.add_argument("--seed", type=int, default=0, help="split seed")
    p.add_argument("--threshold", type=int, default=128, help="mask value >= this is defect")
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
    p.add_argument("--no-progress", action="store_true")
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
        )
    except (RawDatasetError, FileExistsError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    print(json.dumps(summary, indent=2, sort_keys=True))
    for warning in summary["warnings"]:
        print(f"warning: {warning}", file=sys.stderr)
    return 0


if __name__ == "__main__":
    sys.exit(main())
