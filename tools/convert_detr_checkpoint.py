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
"""

import argparse
import os
import pickle
import sys

import torch

import d2_detr  # noqa: F401  (compat first; registers the model)
from d2_detr.checkpoint import (
    class_map_from_metadata,
    compare_with_model,
    convert_detr_state_dict,
    load_checkpoint,
)


def parse_args(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("input", help="official DETR .pth or torchvision ResNet .pth")
    p.add_argument("output", help="converted .pth")
    p.add_argument("--config-file", help="check the result against this config's model")
    p.add_argument("--dataset", help="registered dataset whose metadata maps the classes")
    p.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    args = p.parse_args(argv)
    if any(o.startswith("--") for o in args.opts):
        p.error("options (--config-file, --dataset) must come before INPUT OUTPUT")
    return args


def main(argv=None):
    args = parse_args(argv)
    if not os.path.isfile(args.input):
        sys.exit(f"error: {args.input}: no such file")
    try:
        state_dict = load_checkpoint(args.input)
        class_map = None
        if args.dataset:
            from detectron2.data import MetadataCatalog

            class_map = class_map_from_metadata(MetadataCatalog.get(args.dataset))
        new, ignored = convert_detr_state_dict(state_dict, class_map)
    except (
        ValueError,
        RuntimeError,
        pickle.UnpicklingError,
    ) as e:  # unknown keys, unsafe pickle, bad metadata
        sys.exit(f"error: {args.input}: {e}")
    print(f"converted {len(new)} tensors; ignored {len(ignored)} ({', '.join(ignored[:3])} ...)")

    if args.config_file:
        from detectron2.config import get_cfg
        from detectron2.modeling import build_model

        cfg = get_cfg()
        d2_detr.add_detr_config(cfg)
        cfg.merge_from_file(args.config_file)
        cfg.merge_from_list(args.opts)
        cfg.MODEL.DEVICE = "cpu"
        missing, unexpected, shapes = compare_with_model(new, build_model(cfg))
        if all(k.startswith("backbone.") for k in new):  # ImageNet weights: backbone only
            missing = [k for k in missing if k.startswith("backbone.")]
        elif not any(k.startswith("mask_head.") for k in new):  # detection -> panoptic model
            missing = [k for k in missing if not k.startswith(("mask_head.", "bbox_attention."))]
        if missing or unexpected or shapes:
            sys.exit(
                f"error: {args.input} does not fit {args.config_file}:\n"
                f"  missing {missing[:10]}\n  unexpected {unexpected[:10]}\n  shapes {shapes[:10]}"
            )
        print(f"all keys and shapes match the model of {args.config_file}")

    tmp = args.output + ".tmp"
    torch.save({"model": new, "__author__": "d2_detr", "matching_heuristics": False}, tmp)
    os.replace(tmp, args.output)  # nothing half-written
    print(f"wrote {args.output}")


if __name__ == "__main__":
    main()
