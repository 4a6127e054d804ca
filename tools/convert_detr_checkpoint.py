#!/usr/bin/env python
"""
Convert an official DETR checkpoint (detection or panoptic) or torchvision ResNet ImageNet weights
to d2_detr's parameter names, as a .pth file for MODEL.WEIGHTS.

  python tools/convert_detr_checkpoint.py \\
      --config-file configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml \\
      --dataset coco_2017_val_panoptic detr-r50-panoptic-00ce5173.pth out.pth [KEY VALUE ...]

--dataset remaps the classifier rows from the official class index (the dataset's category id)
to the dataset's contiguous ids; --config-file checks every key and shape against the model.
Backbone weights from torchvision need MODEL.RESNETS.STRIDE_IN_1X1 False (as Base-DETR.yaml).
The input is loaded without executing code (weights_only); the output is written atomically.
Bad input: a message naming the file / option and exit code 2 (--debug: the traceback).
"""

import argparse
import os
import sys

import d2_detr  # noqa: F401  # isort: skip  (compat first; registers the model)
import torch

from d2_detr.checkpoint_conversion import (
    class_map_from_metadata,
    compare_with_model,
    convert_detr_state_dict,
    load_checkpoint,
)
from d2_detr.engine.setup import load_config, validate_dataset_names
from d2_detr.utils.cli import UserError, run_cli
from d2_detr.utils.io import atomic_write


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="official DETR .pth or torchvision ResNet .pth")
    p.add_argument("output", help="converted .pth")
    p.add_argument("--config-file", help="check the result against this config's model")
    p.add_argument("--dataset", help="registered dataset whose metadata maps the classes")
    p.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if any(o.startswith("--") for o in args.opts):
        p.error("options (--config-file, --dataset) must come before INPUT OUTPUT")
    return args


def _check_output(path):
    folder = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        raise UserError(f"output {path} is a folder", "give a file name, e.g. converted.pth")
    if not os.path.isdir(folder):
        raise UserError(f"output {path}: folder {folder} does not exist", "create it first")
    if not os.access(folder, os.W_OK):
        raise UserError(f"output {path}: folder {folder} is not writable", "choose another path")


def main(argv=None):
    args = parse_args(argv)
    _check_output(args.output)
    cfg = None
    if args.config_file:  # config problems are found before the (large) checkpoint is read
        cfg = load_config(args.config_file, args.opts)
        cfg.defrost()
        cfg.MODEL.DEVICE = "cpu"
    elif args.opts:
        raise UserError(f"config overrides {args.opts[:2]} given without --config-file")
    class_map = None
    if args.dataset:
        from detectron2.data import MetadataCatalog

        validate_dataset_names([args.dataset], "--dataset")
        try:
            class_map = class_map_from_metadata(MetadataCatalog.get(args.dataset))
        except ValueError as e:
            raise UserError(f"--dataset {args.dataset}: {e}") from None
    state_dict = load_checkpoint(args.input)
    try:
        new, ignored = convert_detr_state_dict(state_dict, class_map)
    except ValueError as e:
        raise UserError(
            f"{args.input}: {e}",
            "the converter reads official DETR (detection / panoptic) and torchvision ResNet "
            "checkpoints",
        ) from None
    print(f"converted {len(new)} tensors; ignored {len(ignored)} ({', '.join(ignored[:3])} ...)")

    if cfg is not None:
        from detectron2.modeling import build_model

        missing, unexpected, shapes = compare_with_model(new, build_model(cfg))
        if all(k.startswith("backbone.") for k in new):  # ImageNet weights: backbone only
            missing = [k for k in missing if k.startswith("backbone.")]
        elif not any(k.startswith("mask_head.") for k in new):  # detection -> panoptic model
            missing = [k for k in missing if not k.startswith(("mask_head.", "bbox_attention."))]
        if missing or unexpected or shapes:
            raise UserError(
                f"{args.input} does not fit {args.config_file}:\n"
                f"  missing {missing[:10]}\n  unexpected {unexpected[:10]}\n  shapes {shapes[:10]}",
                "check MODEL.DETR.NUM_CLASSES / NUM_OBJECT_QUERIES / the backbone against the "
                "checkpoint, or give --dataset to remap the classes",
            )
        print(f"all keys and shapes match the model of {args.config_file}")

    data = {"model": new, "__author__": "d2_detr", "matching_heuristics": False}
    try:
        atomic_write(args.output, lambda f: torch.save(data, f))
    except OSError as e:
        raise UserError(f"output {args.output}: {e.strerror or e}") from None
    print(f"wrote {args.output}")


if __name__ == "__main__":
    run_cli(main, sys.argv[1:])
