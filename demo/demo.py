#!/usr/bin/env python
"""
Panoptic overlays and a defect report for images, with a trained DETR model.

    python demo/demo.py --config-file configs/ConcreteDefects/detr_tiny_cpu.yaml \
        --input path/to/images/ --output output/demo_run MODEL.WEIGHTS model_final.pth

Writes ``OUTPUT/overlays/<stem>.jpg`` and the report ``OUTPUT/defects.csv`` (one row per
defect: image, class, area px and %, bbox, score), ``OUTPUT/images.csv`` (counts per image)
and ``OUTPUT/defect_report.json``.
"""

import argparse
import os
import sys

import d2_detr  # noqa: F401  (d2_detr.compat patches before detectron2 imports)

# isort: split
import cv2
import tqdm
from detectron2.config import get_cfg
from detectron2.utils.logger import setup_logger

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from predictor import PanopticDemo, expand_inputs  # noqa: E402


def get_parser():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    parser.add_argument("--output", required=True, help="folder for overlays and the report")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum class score of a segment (MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD)",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def setup_cfg(args):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    if args.confidence_threshold is not None:
        cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    cfg.MODEL.DETR.TEST.PANOPTIC_ON = True
    cfg.freeze()
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    setup_logger(name="d2_detr")
    cfg = setup_cfg(args)
    paths = expand_inputs(args.input)
    demo = PanopticDemo(cfg)
    overlay_dir = os.path.join(args.output, "overlays")
    os.makedirs(overlay_dir, exist_ok=True)
    for path in tqdm.tqdm(paths, desc="images", unit="img", disable=args.no_progress):
        _, overlay = demo.run_on_image(path)
        stem = os.path.splitext(os.path.basename(path))[0]
        cv2.imwrite(os.path.join(overlay_dir, f"{stem}.jpg"), overlay[:, :, ::-1])
    files = demo.report.write(args.output)
    totals = demo.report.totals()
    print(
        f"{totals['images']} images, {totals['defects']} defects {totals['counts']}\n"
        f"overlays: {overlay_dir}\nreport: {files['defects_csv']}, {files['images_csv']}, "
        f"{files['json']}"
    )
    return demo.report


if __name__ == "__main__":
    main()
