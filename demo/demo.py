#!/usr/bin/env python
"""
Panoptic overlays and a defect report for folders of photos, with a trained DETR model.

    python demo/demo.py --config-file configs/ConcreteDefects/detr_tiny_cpu.yaml \
        --input photos/ more/*.jpg --output output/inspection MODEL.WEIGHTS model_final.pth

Inputs: image files, folders (searched recursively, linked folders followed once, hidden
``.name`` entries skipped; .jpg .jpeg .jpe .jfif .png .bmp .tif .tiff .webp .avif in any case)
and glob patterns. Each photo is keyed by its path relative to the common folder of the inputs
(``a/00044.jpg`` and ``b/00044.jpg`` stay apart). Writes ``OUTPUT/overlays/<key>``, the report
``OUTPUT/defects.csv`` (one row per defect), ``OUTPUT/images.csv`` (one row per photo),
``OUTPUT/defect_report.json`` and ``OUTPUT/report.html``; ``OUTPUT/overlays`` is never read as
input (an --output inside an --input folder). Photos are read as displayed (EXIF orientation
applied; HEIC / HEIF phone photos through pillow-heif); grey, palette, 1-bit, 16-bit, float,
RGBA and CMYK files as 8-bit colour.

A photo that cannot be read (corrupt, truncated, empty, not an image, a dangling link or link
loop, camera raw / GIF, above ``--max-megapixels``) is skipped with a warning and listed
in the report (images.csv / json: status "unreadable" and the reason). Exit status: 0 when every
photo was processed or listed as unreadable; 1 when the report was written but processing failed
on some photo (status "error", the others are processed); 2 for bad arguments, or when no photo
can be read (nothing is written); 130 on Ctrl-C (every file written so far is complete: all are
written atomically; the report is not written).

Large photos run on overlapping tiles at native resolution when their longest side exceeds both
one tile and twice INPUT.MAX_SIZE_TEST (``--tile-above``; 800 px for the tiny config): resized
whole, they would shrink by more than 2x and 1-3 px cracks would fall below a pixel at the
model's input. Tiles are squares of the model's test size (INPUT.MIN_SIZE_TEST: 320 px for the
tiny config), overlapping by an eighth, unless ``--tile`` / ``--tile-overlap`` say otherwise.
``--tile 0``: never tiled (masks are computed at most 2048 px on the longest side, then the label
map is upsampled to the photo's size).
"""

import argparse
import errno
import math
import os
import sys

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import d2_detr  # noqa: E402,F401  (d2_detr.compat patches before detectron2 imports)

# isort: split
import tqdm  # noqa: E402
from detectron2.config import get_cfg  # noqa: E402
from detectron2.utils.logger import setup_logger  # noqa: E402
from predictor import (  # noqa: E402
    DEFAULT_MAX_MEGAPIXELS,
    PanopticDemo,
    UnreadablePhoto,
    collect_inputs,
    output_metadata,
)

from d2_detr.engine.setup import check_config_file  # noqa: E402
from d2_detr.inspection import load_severity  # noqa: E402
from d2_detr.inspection.tiling import resolve_tiling, validate_tiling  # noqa: E402
from d2_detr.utils.cli import UserError, closest_names, debug_enabled, run_cli  # noqa: E402


class _Parser(argparse.ArgumentParser):
    def parse_args(self, args=None, namespace=None):
        # an unknown --option would otherwise start the KEY VALUE overrides and swallow the rest
        known = self._option_string_actions
        for token in sys.argv[1:] if args is None else args:
            token = str(token)
            if token.startswith("--") and token.split("=")[0] not in known:
                close = closest_names(token, [o for o in known if o.startswith("--")])
                raise UserError(
                    f"unknown option {token}",
                    f"did you mean {', '.join(close)}?" if close else f"see {self.prog} --help",
                )
        return super().parse_args(args, namespace)

    def error(self, message):  # argparse's own errors: exit 2 as well, with the usage line
        self.print_usage(sys.stderr)
        raise UserError(message, f"see {self.prog} --help")


# writing errors of the output folder itself (full, read-only, no permission): the run stops
_OUTPUT_ERRNOS = {errno.ENOSPC, errno.EROFS, errno.EDQUOT, errno.EACCES, errno.EPERM}


def get_parser():
    parser = _Parser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--config-file", required=True, metavar="FILE")
    parser.add_argument("--input", nargs="+", required=True, help="images, folders or globs")
    parser.add_argument("--output", required=True, help="folder for overlays and the report")
    parser.add_argument(
        "--confidence-threshold",
        type=float,
        default=None,
        help="minimum class score in [0, 1] of a segment (MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD)",
    )
    parser.add_argument(
        "--random-weights",
        action="store_true",
        help="run without MODEL.WEIGHTS, i.e. with an untrained model (for testing only)",
    )
    parser.add_argument("--mm-per-pixel", type=float, default=None, help="scale of the photos")
    parser.add_argument("--severity", metavar="FILE.yaml", help="severity thresholds")
    parser.add_argument(
        "--tile",
        type=int,
        default=None,
        help="tile side in px for large photos (default: INPUT.MIN_SIZE_TEST; 0: no tiling)",
    )
    parser.add_argument(
        "--tile-overlap", type=int, default=None, help="tile overlap in px (default: tile / 8)"
    )
    parser.add_argument(
        "--tile-above",
        type=int,
        default=None,
        metavar="PX",
        help="tile photos whose longest side exceeds PX (default: 2x INPUT.MAX_SIZE_TEST)",
    )
    parser.add_argument(
        "--overlay-max-side", type=int, default=2048, help="larger overlays are drawn downscaled"
    )
    parser.add_argument(
        "--max-megapixels",
        type=float,
        default=DEFAULT_MAX_MEGAPIXELS,
        metavar="MP",
        help="larger photos are listed as unreadable, not decoded (default %(default)g)",
    )
    parser.add_argument(
        "--onnx",
        metavar="MODEL.onnx",
        help="run an exported model (tools/export_model.py; .onnx or .ts) instead of "
        "MODEL.WEIGHTS; --config-file: the config.yaml written next to it",
    )
    parser.add_argument("--no-progress", action="store_true")
    parser.add_argument("--debug", action="store_true", help="tracebacks for user errors")
    parser.add_argument("opts", nargs=argparse.REMAINDER, help="config overrides KEY VALUE ...")
    return parser


def _unit_interval(name, value):
    if value is not None and not (0.0 <= value <= 1.0):
        raise UserError(f"{name} {value}: must be in [0, 1]", "a score threshold, e.g. 0.5")


def validate_args(args):
    """Check every argument before anything is loaded or written."""
    _unit_interval("--confidence-threshold", args.confidence_threshold)
    if args.mm_per_pixel is not None and not (
        math.isfinite(args.mm_per_pixel) and args.mm_per_pixel > 0
    ):
        raise UserError(
            f"--mm-per-pixel {args.mm_per_pixel}: must be a positive number",
            "the photo's scale in millimetres per pixel, e.g. 0.1; leave it out for pixels",
        )
    try:
        # the default tile depends on the config: the rest is checked when the demo is built
        validate_tiling(
            0 if args.tile is None else args.tile,
            0 if args.tile_overlap is None else args.tile_overlap,
        )
    except ValueError as e:
        raise UserError(str(e), "e.g. --tile 1024 --tile-overlap 128, or --tile 0") from None
    if args.tile_above is not None and args.tile_above < 0:
        raise UserError(f"--tile-above {args.tile_above}: must be >= 0")
    if args.overlay_max_side < 64:
        raise UserError(f"--overlay-max-side {args.overlay_max_side}: must be >= 64")
    if not (math.isfinite(args.max_megapixels) and args.max_megapixels > 0):
        raise UserError(
            f"--max-megapixels {args.max_megapixels}: must be a positive number",
            f"the largest photo to read, in megapixels (default {DEFAULT_MAX_MEGAPIXELS:g})",
        )
    if args.severity is not None and not os.path.isfile(args.severity):
        raise UserError(f"--severity {args.severity}: no such file", "give a severity YAML file")
    if not os.path.isfile(args.config_file):
        raise UserError(
            f"--config-file {args.config_file}: no such file",
            "e.g. --config-file configs/ConcreteDefects/detr_tiny_cpu.yaml",
        )
    if os.path.exists(args.output) and not os.path.isdir(args.output):
        raise UserError(
            f"--output {args.output} is a file, not a folder",
            "give a folder (it is created if missing)",
        )
    if args.onnx is not None and not os.path.isfile(args.onnx):
        raise UserError(
            f"--onnx {args.onnx}: no such file",
            "give the model.onnx (or model.ts) that tools/export_model.py wrote",
        )
    if len(args.opts) % 2:
        raise UserError(
            f"config overrides {args.opts}: an odd number of items",
            "give KEY VALUE pairs, e.g. MODEL.WEIGHTS output/run/model_final.pth",
        )


def _all_keys(node, prefix=""):
    for k, v in node.items():
        if hasattr(v, "items"):
            yield from _all_keys(v, f"{prefix}{k}.")
        else:
            yield f"{prefix}{k}"


def setup_cfg(args):
    check_config_file(args.config_file)  # safe_load only, _BASE_ chain, no Python tags
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    try:
        cfg.merge_from_file(args.config_file, allow_unsafe=False)
    except Exception as e:
        raise UserError(
            f"--config-file {args.config_file}: cannot be read ({type(e).__name__}: {e})",
            "give a Detectron2 YAML config of this project, e.g. "
            "configs/ConcreteDefects/detr_tiny_cpu.yaml",
        ) from None
    keys = list(_all_keys(cfg))
    for key in args.opts[0::2]:
        if key not in keys:
            close = closest_names(key, keys)
            raise UserError(
                f"config key {key!r} does not exist",
                f"did you mean {', '.join(close)}?" if close else "see d2_detr/config.py",
            )
    try:
        cfg.merge_from_list(args.opts)
    except Exception as e:
        raise UserError(f"config overrides: {type(e).__name__}: {e}") from None
    if args.confidence_threshold is not None:
        cfg.MODEL.DETR.TEST.OBJECT_MASK_THRESHOLD = args.confidence_threshold
    for key in ("OBJECT_MASK_THRESHOLD", "OVERLAP_THRESHOLD"):
        _unit_interval(f"MODEL.DETR.TEST.{key}", cfg.MODEL.DETR.TEST[key])
    cfg.MODEL.DETR.TEST.PANOPTIC_ON = True
    if not cfg.MODEL.WEIGHTS and not args.random_weights and not args.onnx:
        raise UserError(
            "MODEL.WEIGHTS is not set: the demo needs a trained model",
            "add MODEL.WEIGHTS path/to/model_final.pth after the options (or --random-weights "
            "to see what an untrained model draws)",
        )
    if args.random_weights and cfg.MODEL.WEIGHTS:
        raise UserError(
            f"--random-weights and MODEL.WEIGHTS {cfg.MODEL.WEIGHTS} both given",
            "drop one: MODEL.WEIGHTS for a trained model, --random-weights for an untrained one",
        )
    cfg.freeze()
    return cfg


def main(argv=None):
    args = get_parser().parse_args(argv)
    validate_args(args)
    logger = setup_logger(name="d2_detr")
    cfg = setup_cfg(args)
    if args.severity is not None:  # checked now, loaded again by the report (names its source)
        try:
            load_severity(args.severity)
        except ValueError as e:
            raise UserError(f"--severity: {e}", "see d2_detr/inspection/severity_default.yaml")
    # this run's overlays are never inputs (an --output inside an --input folder, run twice)
    photos = collect_inputs(args.input, exclude=[os.path.join(args.output, "overlays")])
    output_metadata(cfg)  # the class names must be known before the model is built
    try:
        tile, tile_overlap = resolve_tiling(cfg.INPUT.MIN_SIZE_TEST, args.tile, args.tile_overlap)
    except ValueError as e:
        raise UserError(f"{e} (the default tile is INPUT.MIN_SIZE_TEST)", "e.g. --tile 0") from None
    demo = PanopticDemo(
        cfg,
        weights=cfg.MODEL.WEIGHTS or None,
        tile=tile,
        tile_overlap=tile_overlap,
        tile_above=args.tile_above,
        overlay_max_side=args.overlay_max_side,
        progress=not args.no_progress,
        mm_per_pixel=args.mm_per_pixel,
        severity=args.severity,
        exported=args.onnx,
        max_megapixels=args.max_megapixels,
    )
    created = not os.path.exists(args.output)
    try:
        os.makedirs(args.output, exist_ok=True)
    except OSError as e:
        raise UserError(f"--output {args.output}: cannot create the folder ({e.strerror})")
    if not os.access(args.output, os.W_OK):
        raise UserError(f"--output {args.output}: the folder is not writable")
    for path, key in tqdm.tqdm(photos, desc="images", unit="img", disable=args.no_progress):
        try:
            demo.run_on_image(path, key, args.output)
        except UnreadablePhoto as e:
            logger.warning(f"skipped {key}: {e}")
            demo.report.add_unreadable(key, str(e))
        except OSError as e:  # writing the overlay
            if e.errno not in _OUTPUT_ERRNOS:  # this photo's overlay only (e.g. name too long)
                logger.warning(f"failed on {key}: cannot write its overlay ({e})")
                demo.report.add_unreadable(key, f"cannot write the overlay: {e}", status="error")
                continue
            # the output, not the photo, is the problem: every next photo would fail too
            raise UserError(
                f"--output {args.output}: cannot write the overlay of {key} "
                f"({e.strerror or e}); the report was not written",
                "free disk space or choose another --output, then run again",
            ) from None
        except Exception as e:  # noqa: BLE001  (one photo never stops the folder)
            if debug_enabled():
                raise
            logger.exception(f"failed on {key}: {type(e).__name__}: {e}")
            demo.report.add_unreadable(key, f"{type(e).__name__}: {e}", status="error")
    report = demo.report
    unreadable = [im for im in report.images if im["status"] != "ok"]
    failed = [im["image"] for im in report.images if im["status"] == "error"]
    if len(unreadable) == len(report.images) and not failed:
        if created and not os.listdir(args.output):
            os.rmdir(args.output)
        listed = "; ".join(f"{r['image']} ({r['reason']})" for r in unreadable[:5])
        raise UserError(
            f"none of the {len(unreadable)} input photos could be read: {listed}",
            "nothing was written; check the files (corrupt, truncated, empty or not images)",
        )
    files = report.write(args.output)
    totals = report.totals()
    print(
        f"{totals['images'] - len(unreadable)} images, {totals['defects']} defects "
        f"{totals['counts']}, {len(unreadable) - len(failed)} unreadable, {len(failed)} failed "
        f"(listed in images.csv)\n"
        f"overlays: {os.path.join(args.output, 'overlays')}\nreport: {files['defects_csv']}, "
        f"{files['images_csv']}, {files['json']}, {files['html']}"
    )
    if failed:  # the report is complete, but a photo met an internal error: exit status 1
        print(
            f"error: processing failed on {len(failed)} photo(s): {', '.join(failed[:5])} "
            "(status 'error' in images.csv; run with --debug for the traceback)",
            file=sys.stderr,
        )
        raise SystemExit(1)
    return report


if __name__ == "__main__":
    run_cli(main)
