#!/usr/bin/env python
"""
Export a trained DETR to ONNX or TorchScript (inference path: image in; class logits, boxes, mask
logits out; any height and width), and check it against PyTorch.

    python tools/export_model.py --config-file configs/ConcreteDefects/detr_tiny_cpu.yaml \
        --format onnx --output output/export MODEL.WEIGHTS output/tiny/model_final.pth

Writes OUTPUT/model.onnx (or model.ts), OUTPUT/config.yaml (the config used: the exported
model's post-processing reads it) and OUTPUT/export.json (input convention, outputs, check).
The model's input is ``image``: (B, 3, H, W) float32 pixels 0-255 in INPUT.FORMAT channel
order, resized to the test size (INPUT.MIN_SIZE_TEST / MAX_SIZE_TEST) but neither normalised nor
padded: both happen in the graph. What is traced is a copy of the model with its batch norms
folded into the convolutions and DETR's mask head computing the shared part of its first
convolution once per image (``d2_detr.export.prepare_for_export``: same outputs up to float
rounding, fewer ops). The panoptic / instance post-processing stays in Python
(``d2_detr.export.ExportedDETR``, or ``demo/demo.py --onnx OUTPUT/model.onnx``).

After exporting, the file is run (onnxruntime CPU / torch.jit) on the sample image and two crops
of other sizes and compared with PyTorch: max |a - b| / max |b| of every raw output must be at
most --tolerance and the panoptic maps identical, else exit 1 (``--no-check`` skips it).
"""

import d2_detr  # noqa: F401  # isort: skip  (compat patches before detectron2 imports)

# isort: split
import argparse
import os
import sys

import numpy as np
import torch
from detectron2.data import transforms as T
from detectron2.data.detection_utils import read_image
from detectron2.modeling import build_model

from d2_detr.engine.checkpointer import DETRCheckpointer
from d2_detr.engine.setup import check_weights_path, load_config
from d2_detr.export import FORMATS, MODEL_FILES, ExportedDETR, export_onnx, export_torchscript
from d2_detr.export.check import check_exported
from d2_detr.utils.cli import UserError, closest_names, run_cli
from d2_detr.utils.io import atomic_write_json, atomic_write_text


class _Parser(argparse.ArgumentParser):
    def error(self, message):  # argparse's own errors: exit 2 with the usage line, as UserError
        self.print_usage(sys.stderr)
        raise UserError(message, f"see {self.prog} --help")


def get_parser():
    parser = _Parser(description=__doc__.strip().split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--format", required=True, help=f"one of {', '.join(FORMATS)}")
    parser.add_argument("--output", required=True, metavar="DIR", help="folder for the files")
    parser.add_argument(
        "--sample-image", metavar="IMG", help="photo to trace and check with (default: random)"
    )
    parser.add_argument("--opset", type=int, default=17, help="ONNX opset (>= 17)")
    parser.add_argument("--no-check", action="store_true", help="skip the check against PyTorch")
    parser.add_argument(
        "--tolerance", type=float, default=1e-4, help="largest relative error the check accepts"
    )
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def validate_args(args):
    """Everything that can be checked before the model is built, nothing written yet."""
    if args.format not in FORMATS:
        close = closest_names(args.format, FORMATS)
        raise UserError(
            f"--format {args.format!r} is not a known format (choose from {', '.join(FORMATS)})",
            f"did you mean {close[0]}?" if close else "e.g. --format onnx",
        )
    if args.format == "onnx" and args.opset < 17:
        raise UserError(f"--opset {args.opset}: 17 or newer is needed", "e.g. --opset 17")
    if not args.tolerance > 0:
        raise UserError(f"--tolerance {args.tolerance}: must be > 0", "e.g. --tolerance 1e-4")
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(
            f"--output {args.output} is a file, not a folder",
            "give a folder (created if missing); the exported files go inside it",
        )
    if args.sample_image is not None and not os.path.isfile(args.sample_image):
        raise UserError(f"--sample-image {args.sample_image}: no such file", "give a photo")


def setup_cfg(args):
    cfg = load_config(args.config_file, args.opts)
    cfg.MODEL.DEVICE = "cpu"
    if not cfg.MODEL.WEIGHTS:
        raise UserError(
            "MODEL.WEIGHTS is not set: nothing to export",
            "add MODEL.WEIGHTS path/to/model_final.pth after the options",
        )
    check_weights_path(cfg.MODEL.WEIGHTS)
    cfg.freeze()
    return cfg


def load_weights(model, path):
    """Load ``path`` through the project's safe checkpointer; every parameter must come from it
    with the right shape (an export with random parts would be silently wrong)."""
    checkpointer = DETRCheckpointer(model)
    data = checkpointer._load_file(path)  # UserError: missing, unreadable, would run code
    incompatible = checkpointer._load_model(data)
    if incompatible.incorrect_shapes:
        shapes = [f"{k} {tuple(a)} != {tuple(b)}" for k, a, b in incompatible.incorrect_shapes]
        raise UserError(
            f"MODEL.WEIGHTS {path} does not fit this config: {len(shapes)} shape mismatch(es), "
            f"e.g. {'; '.join(shapes[:3])}",
            "use the config the model was trained with (NUM_CLASSES, HIDDEN_DIM, queries, ...)",
        )
    missing = [k for k in incompatible.missing_keys if not k.startswith("dense_class_loss.")]
    if missing:
        raise UserError(
            f"MODEL.WEIGHTS {path} lacks {len(missing)} of the model's weights, e.g. "
            f"{', '.join(missing[:3])}",
            "use the config the model was trained with; official DETR checkpoints are converted "
            "first with tools/convert_detr_checkpoint.py",
        )


def sample_image(cfg, path):
    """(3, H, W) float32 test-size input: the photo resized as at test time, or a seeded random
    image (H, W not multiples of 32, so the padding path is traced and checked)."""
    if path is None:
        h = cfg.INPUT.MIN_SIZE_TEST - 5
        w = min(round(h * 4 / 3) + 3, cfg.INPUT.MAX_SIZE_TEST)
        g = torch.Generator().manual_seed(0)
        return torch.randint(0, 256, (3, h, w), generator=g).float()
    try:
        image = read_image(path, format=cfg.INPUT.FORMAT)
    except Exception as e:  # PIL raises many types for unreadable files
        raise UserError(
            f"--sample-image {path}: not a readable image ({type(e).__name__})",
            "give a JPEG / PNG photo, or leave --sample-image out (a random image is used)",
        ) from None
    aug = T.ResizeShortestEdge([cfg.INPUT.MIN_SIZE_TEST] * 2, cfg.INPUT.MAX_SIZE_TEST)
    image = aug.get_transform(image).apply_image(image)
    return torch.as_tensor(np.ascontiguousarray(image.transpose(2, 0, 1)).astype("float32"))


def check_images(image):
    """The sample and two crops of other sizes (one side odd, both off multiples of 32)."""
    h, w = image.shape[-2:]
    return [image, image[:, : max(33, h * 3 // 4 + 1), : max(33, w - 21)],
            image[:, : max(33, h - 37), : max(33, w * 2 // 3 + 5)]]  # fmt: skip


def main(argv=None):
    args = get_parser().parse_args(argv)
    validate_args(args)
    cfg = setup_cfg(args)
    if args.format == "onnx":
        try:
            import onnx  # noqa: F401
            import onnxruntime  # noqa: F401
        except ImportError:
            raise UserError(
                "--format onnx needs the onnx and onnxruntime packages",
                "pip install -c requirements/constraints.txt onnx onnxruntime "
                "(part of the dev extra: make install)",
            ) from None
    DETRCheckpointer(None).check_file(cfg.MODEL.WEIGHTS)  # unreadable weights: before building
    image = sample_image(cfg, args.sample_image)
    torch.manual_seed(0)
    model = build_model(cfg)
    load_weights(model, cfg.MODEL.WEIGHTS)
    model.eval()
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output {args.output}: cannot create the folder ({e.strerror})")
    path = os.path.join(args.output, MODEL_FILES[args.format])
    if args.format == "onnx":
        info = export_onnx(model, path, image[None], opset=args.opset, cfg=cfg)
    else:
        info = export_torchscript(model, path, image[None], cfg=cfg)
    atomic_write_text(os.path.join(args.output, "config.yaml"), cfg.dump())
    info["weights"] = os.path.abspath(cfg.MODEL.WEIGHTS)
    print(
        f"wrote {path} ({os.path.getsize(path) / 2**20:.1f} MiB) and config.yaml; "
        f"{info['folded_norms']} norms folded into convolutions, "
        f"{info['split_mask_heads']} mask head(s) with the shared first convolution split"
    )
    failed = False
    if not args.no_check:
        rows = check_exported(model, ExportedDETR(cfg, path), check_images(image))
        info["check"] = {"tolerance": args.tolerance, "images": rows}
        for row in rows:
            worst = max(row["relative_error"].values())
            bad = worst > args.tolerance or row["problems"]
            failed |= bool(bad)
            errors = ", ".join(f"{k} {v:.1e}" for k, v in row["relative_error"].items())
            print(
                f"check {row['size'][0]}x{row['size'][1]}: relative error {errors}; "
                f"{row['segments']} segments, "
                + ("; ".join(row["problems"]) or "same segments, panoptic maps identical")
                + (
                    f" except {row['near_tie_pixels']} near-tie pixels (margin < "
                    f"{row['delta']:.1e})"
                    if row["near_tie_pixels"]
                    else ""
                )
                + ("  FAILED" if bad else "")
            )
    atomic_write_json(os.path.join(args.output, "export.json"), info, indent=2)
    if failed:
        print(f"error: the exported model differs from PyTorch by more than {args.tolerance}")
        sys.exit(1)
    return path


if __name__ == "__main__":
    run_cli(main)
