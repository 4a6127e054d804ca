#!/usr/bin/env python
"""Draw a synthetic concrete-defect dataset in the raw layout (images/, masks/).

    python datasets/make_synthetic_concrete.py --out output/synthetic_concrete_raw --num 400
    python datasets/prepare_concrete_defects.py --raw output/synthetic_concrete_raw \\
        --out datasets/synthetic_concrete

What is drawn is described in ``d2_detr/data/synthetic.py``.
"""

import argparse
import json
import sys
import time

import d2_detr  # noqa: F401
from d2_detr.data.synthetic import make_synthetic_concrete


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--out", required=True, help="raw folder to create")
    p.add_argument("--num", type=int, required=True, help="number of images")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--width", type=int, default=320)
    p.add_argument("--height", type=int, default=256)
    p.add_argument("--empty-fraction", type=float, default=0.2, help="images without defects")
    p.add_argument("--mask-format", choices=("png", "jpg"), default="png")
    p.add_argument("--overwrite", action="store_true")
    args = p.parse_args(argv)
    start = time.perf_counter()
    try:
        summary = make_synthetic_concrete(
            args.out,
            args.num,
            seed=args.seed,
            size=(args.width, args.height),
            empty_fraction=args.empty_fraction,
            mask_format=args.mask_format,
            overwrite=args.overwrite,
        )
    except (FileExistsError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    summary["seconds"] = round(time.perf_counter() - start, 2)
    print(json.dumps(summary, indent=2, sort_keys=True))
    return 0


if __name__ == "__main__":
    sys.exit(main())
