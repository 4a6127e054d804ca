#!/usr/bin/env python
"""Draw a synthetic concrete-defect dataset in the raw layout (images/, masks/).

    python datasets/make_synthetic_concrete.py --out output/synthetic_concrete_raw --num 400
    python datasets/prepare_concrete_defects.py --raw output/synthetic_concrete_raw \\
        --out datasets/synthetic_concrete

What is drawn is described in ``datasets/synthetic_concrete.py`` (the generator; the demo, the
benchmarks and the tests import it by path).
"""

import argparse
import importlib.util
import io
import json
import os
import sys
import time

import d2_detr  # noqa: F401
from d2_detr.utils.cli import UserError, run_cli

HERE = os.path.dirname(os.path.abspath(__file__))
MAX_SIDE = 8192  # pixels: larger images take minutes each and gigabytes


def load_generator():
    """``datasets/synthetic_concrete.py`` as the module ``synthetic_concrete``."""
    if "synthetic_concrete" not in sys.modules:
        path = os.path.join(HERE, "synthetic_concrete.py")
        spec = importlib.util.spec_from_file_location("synthetic_concrete", path)
        module = importlib.util.module_from_spec(spec)
        sys.modules["synthetic_concrete"] = module
        spec.loader.exec_module(module)
    return sys.modules["synthetic_concrete"]


def check_args(args):
    """Raise :class:`UserError` naming the first bad argument."""
    if args.num < 1:
        raise UserError(f"--num {args.num}: the number of images must be at least 1")
    for name in ("width", "height"):
        value = getattr(args, name)
        if not 32 <= value <= MAX_SIDE:
            raise UserError(
                f"--{name} {value}: must be between 32 and {MAX_SIDE} pixels",
                "the demo uses 320 x 256; the real photographs are about 1008 x 754",
            )
    if not 0.0 <= args.empty_fraction <= 1.0:
        raise UserError(
            f"--empty-fraction {args.empty_fraction}: must be in [0, 1] (the share of images "
            "without defects)"
        )
    if not 0 <= args.seed < 2**63:
        raise UserError(f"--seed {args.seed}: must be a non-negative integer")
    out = os.path.abspath(args.out)
    if os.path.lexists(out) and not args.overwrite:
        raise UserError(f"--out {args.out}: already exists", "pass --overwrite to replace it")
    if os.path.lexists(out) and not os.path.isdir(out):
        raise UserError(f"--out {args.out}: is a file, not a folder", "choose another --out")
    parent = os.path.dirname(out)
    while parent and not os.path.exists(parent):
        parent = os.path.dirname(parent)
    if not os.path.isdir(parent):
        raise UserError(f"--out {args.out}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK):
        raise UserError(f"--out {args.out}: cannot write in {parent}", "choose another --out")
    if args.preview and not os.path.isdir(os.path.dirname(os.path.abspath(args.preview))):
        raise UserError(f"--preview {args.preview}: its folder does not exist")


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="raw folder to create")
    p.add_argument("--num", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--empty-fraction", type=float, default=0.2, help="images without defects")
    p.add_argument("--mask-format", choices=("png", "jpg"), default="png")
    p.add_argument(
        "--rebar-label",
        choices=("region", "bars"),
        default="region",
        help="'region': a cavity with exposed bars is rebar (as the real dataset labels it); "
        "'bars': the bars are rebar, their cavity spall",
    )
    p.add_argument(
        "--no-camera",
        action="store_true",
        help="no perspective, blur, exposure, white balance, noise (clean images)",
    )
    p.add_argument(
        "--preview",
        metavar="FILE",
        help="also write a contact sheet (.png or .jpg) of the first 12 images, each above a "
        "copy with its masks outlined (crack yellow, spall blue, rebar red)",
    )
    p.add_argument("--overwrite", action="store_true")
    p.add_argument("--debug", action="store_true", help="tracebacks for input errors")
    args = p.parse_args(argv)
    check_args(args)
    start = time.perf_counter()
    summary = load_generator().make_synthetic_concrete(
        args.out,
        args.num,
        seed=args.seed,
        size=(args.width, args.height),
        empty_fraction=args.empty_fraction,
        mask_format=args.mask_format,
        overwrite=args.overwrite,
        rebar_label=args.rebar_label,
        camera=not args.no_camera,
    )
    summary["seconds"] = round(time.perf_counter() - start, 2)
    if args.preview:
        from PIL import Image

        from d2_detr.utils.io import atomic_write_bytes

        sheet = load_generator().contact_sheet(args.out)
        buffer = io.BytesIO()
        jpeg = args.preview.lower().endswith((".jpg", ".jpeg"))
        Image.fromarray(sheet).save(buffer, format="JPEG" if jpeg else "PNG", quality=85)
        atomic_write_bytes(args.preview, buffer.getvalue())
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
