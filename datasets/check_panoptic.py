#!/usr/bin/env python
"""Validate a COCO-panoptic dataset: one line per problem found.

    python datasets/check_panoptic.py datasets/concrete_defects
    python datasets/check_panoptic.py coco/annotations/panoptic_val2017.json

Exit status: 0 the dataset is valid; 1 it has problems (each printed on stdout as
``<file>: <where>: <what>``, e.g. ``panoptic_val.json: annotations[3].segments_info: expected a
list, got null``); 2 nothing could be checked (the path does not exist, no
``annotations/panoptic_*.json``, a bad argument), with a message and no traceback
(``--debug`` or ``D2_DETR_DEBUG=1`` shows it). The checks are listed in
``d2_detr/data/validation.py``.
"""

import argparse
import os
import sys

import d2_detr  # noqa: F401
from d2_detr.data.validation import check_panoptic, panoptic_splits
from d2_detr.utils.cli import UserError, exit_status


def _check_input(args):
    path = args.root_or_json
    if not os.path.exists(path):
        raise UserError(
            f"{path}: does not exist", "give a dataset root (with annotations/) or a panoptic json"
        )
    if not os.path.isdir(path) and not path.lower().endswith(".json"):
        raise UserError(
            f"{path}: not a dataset folder or a .json file",
            "give a dataset root (with annotations/) or a panoptic json",
        )
    if os.path.isdir(path) and not panoptic_splits(path):
        raise UserError(
            f"{os.path.join(path, 'annotations')}: no panoptic_*.json found",
            "give a dataset root written by datasets/prepare_concrete_defects.py, or a json",
        )
    if os.path.isdir(path) and (args.image_root or args.panoptic_root):
        raise UserError("--image-root / --panoptic-root apply to a json file, not a dataset root")
    for flag, folder in (
        ("--image-root", args.image_root),
        ("--panoptic-root", args.panoptic_root),
    ):
        if folder is not None and not os.path.isdir(folder):
            raise UserError(f"{flag} {folder}: folder not found")
    if args.workers < 1:
        raise UserError(f"--workers {args.workers}: must be >= 1")


def _main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("root_or_json", help="dataset root (with annotations/) or a panoptic json")
    p.add_argument("--image-root", default=None, help="image folder (json only)")
    p.add_argument("--panoptic-root", default=None, help="PNG folder (json only)")
    p.add_argument("--workers", type=int, default=1)
    p.add_argument("--debug", action="store_true", help="show the traceback of an error")
    args = p.parse_args(argv)
    _check_input(args)
    problems = check_panoptic(args.root_or_json, args.image_root, args.panoptic_root, args.workers)
    for problem in problems:
        print(problem)
    print(f"{len(problems)} problem(s) in {args.root_or_json}", file=sys.stderr)
    return 1 if problems else 0


def main(argv=None):
    """Run the validator; returns the exit status (0 valid, 1 problems, 2 unusable input)."""
    return exit_status(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
