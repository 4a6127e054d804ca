#!/usr/bin/env python
"""Validate a COCO-panoptic dataset: exit status 1 and one line per problem when it is broken.

    python datasets/check_panoptic.py datasets/concrete_defects
    python datasets/check_panoptic.py coco/annotations/panoptic_val2017.json

The checks are listed in ``d2_detr/data/validation.py``.
"""

import argparse
import sys

import d2_detr  # noqa: F401
from d2_detr.data.validation import check_panoptic


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root_or_json", help="dataset root (with annotations/) or a panoptic json")
    p.add_argument("--image-root", default=None, help="image folder (json only)")
    p.add_argument("--panoptic-root", default=None, help="PNG folder (json only)")
    p.add_argument("--workers", type=int, default=1)
    args = p.parse_args(argv)
    problems = check_panoptic(args.root_or_json, args.image_root, args.panoptic_root, args.workers)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {args.root_or_json}", file=sys.stderr)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main())
