"""Run a trained DETR panoptic model over folders of photos: overlays + defect report.

Inputs are keyed by their path relative to their input root, so equal file names in different
folders never collide; a photo that cannot be read is skipped and listed as unreadable.
"""

import errno
import fnmatch
import glob
import logging
import os
import warnings

import d2_detr  # noqa: F401  (d2_detr.compat patches before detectron2 imports)

# isort: split
import cv2
import numpy as np
import torch
from detectron2.data import MetadataCatalog
from detectron2.data import transforms as T
from detectron2.data.detection_utils import _apply_exif_orientation
from detectron2.modeling import build_model
from detectron2.utils.visualizer import ColorMode, Visualizer
from PIL import Image

from d2_detr.data.panoptic_format import (
    PHOTO_EXTENSIONS,
    photo_formats_for,
    wide_grey_to_uint8,
)
from d2_detr.inspection import DefectReport
from d2_detr.inspection.tiling import resolve_tiling, tiled_panoptic, upsample_labels
from d2_detr.utils.cli import UserError
from d2_detr.utils.io import atomic_write_bytes

logger = logging.getLogger("d2_detr.demo")

# the photo extensions and decoders, shared with the converter (d2_detr.data.panoptic_format)
IMAGE_EXTENSIONS = PHOTO_EXTENSIONS
# overlays keep the photo's own name when OpenCV writes that extension, else get ".jpg" added
OVERLAY_EXTENSIONS = (".jpg", ".jpeg", ".jpe", ".png", ".bmp", ".tif", ".tiff", ".webp")
# photo formats found in inspectors' folders that this tool does not decode: listed as
# unreadable with what to do, never skipped in silence
UNSUPPORTED_EXTENSIONS = (
    ".dng", ".cr2", ".cr3", ".nef", ".arw", ".orf", ".rw2", ".raf",
    ".raw", ".gif",
)  # fmt: skip
# the non-tiled path computes masks at most this size (longest side) and upsamples the label
# map: finer than the model's mask-logit grid (a quarter of its ~400 px input) by > 10x, and a
# bounded (N, H, W) float array whatever the photo's size
MAX_MASK_SIDE = 2048
# photos above this many pixels are refused (listed as unreadable, the run goes on): PIL's own
# decompression-bomb guard refuses above 179 MP; 150 MP takes 108-MP phone photos and bounds
# memory (BGR photo + full-size int32 label map: 10.5 bytes / px, 1.6 GB at 150 MP)
DEFAULT_MAX_MEGAPIXELS = 150.0


def is_image_name(name):
    return name.lower().endswith(IMAGE_EXTENSIONS)


def is_unsupported_photo(name):
    return name.lower().endswith(UNSUPPORTED_EXTENSIONS)


def _glob_root(pattern):
    """The folder part of a glob pattern before its first wildcard."""
    parts = []
    for part in pattern.split(os.sep):
        if glob.has_magic(part):
            break
        parts.append(part)
    root = os.sep.join(parts)
    if root == pattern:  # no wildcard at all
        root = os.path.dirname(pattern)
    return root or "."


def _walk_images(folder, exclude=()):
    """
    Image files under ``folder`` (recursive, extensions case-insensitive), sorted, plus folders
    named like images and photos in formats this tool does not read (camera raw, GIF):
    those are listed as unreadable with the reason. Hidden entries (``.name``: ``._IMG.JPG``
    resource forks, ``.thumbnails/``) are skipped; linked folders are followed once (a link loop
    or a second link to a folder already walked is skipped); folders whose real path is in
    ``exclude`` (this run's own overlays) are not entered.
    """
    found, odd = [], []
    exclude = {os.path.realpath(e) for e in exclude}
    seen = {os.path.realpath(folder)}
    for root, dirs, files in os.walk(folder, followlinks=True):
        keep = []
        for d in sorted(dirs):
            real = os.path.realpath(os.path.join(root, d))
            if d.startswith(".") or real in seen or real in exclude:
                continue
            seen.add(real)
            if is_image_name(d):  # listed as unreadable, and searched like any folder
                odd.append(os.path.join(root, d))
            keep.append(d)
        dirs[:] = keep
        for f in sorted(files):
            if not f.startswith(".") and is_image_name(f):
                found.append(os.path.join(root, f))
            elif not f.startswith(".") and is_unsupported_photo(f):
                odd.append(os.path.join(root, f))
    return found, odd


def _match_parts(parts, pattern):
    """Path parts against pattern parts (fnmatch per part, case-sensitive; "**" = any number
    of folders)."""
    if not pattern:
        return not parts
    if pattern[0] == "**":
        return any(_match_parts(parts[i:], pattern[1:]) for i in range(len(parts) + 1))
    return (
        bool(parts)
        and fnmatch.fnmatchcase(parts[0], pattern[0])
        and _match_parts(parts[1:], pattern[1:])
    )


def _expand_glob(pattern, exclude=()):
    """
    Sorted matches of a glob pattern. A recursive pattern ("**") is matched against the image
    files of :func:`_walk_images` below its folder part: Python's ``glob(recursive=True)``
    follows linked folders without end (a link to a parent made a search run for minutes).
    """
    if "**" not in pattern:
        return sorted(glob.glob(pattern))
    parts = pattern.split(os.sep)
    k = next(i for i, p in enumerate(parts) if glob.has_magic(p))
    root = os.sep.join(parts[:k]) or (os.sep if k else ".")
    if not os.path.isdir(root):
        return []
    found, odd = _walk_images(root, exclude)
    return sorted(
        f for f in found + odd if _match_parts(os.path.relpath(f, root).split(os.sep), parts[k:])
    )


def _display_key(key):
    """A file name that is not valid UTF-8 (Python holds its bytes as surrogates) -> the same
    name with those bytes as ``\\xNN``: every report file is UTF-8."""
    return key.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def _inside(path, folders):
    real = os.path.realpath(path)
    return any(real == f or real.startswith(f + os.sep) for f in folders)


def collect_inputs(inputs, exclude=()):
    """
    Files, folders (recursive) and glob patterns -> the photos to process.

    Args:
        inputs: list of paths / patterns as given on the command line.
        exclude: folders that folders and globs do not look into (the demo passes its own
            ``OUTPUT/overlays``, so an output folder inside the input is never read back);
            files named one by one are kept.
    Returns:
        list of (path, key), unique, in input order (each folder / glob sorted). ``key`` is the
        path relative to the common parent of the input roots (a folder, a glob's folder part,
        a file's folder), with "/" separators: unique for distinct photos.
    Raises:
        UserError: an input that does not exist, or matches no image.
    """
    exclude = [os.path.realpath(e) for e in exclude]
    entries = []  # (abs path, root)
    for item in inputs:
        if os.path.isdir(item):
            found, odd = _walk_images(item, exclude)
            found += odd
            if not found:
                raise UserError(
                    f"--input {item}: the folder holds no image "
                    f"({', '.join(IMAGE_EXTENSIONS)}, any case, searched recursively)",
                    "give a folder of photos, image files or a glob such as 'photos/*.jpg'",
                )
            root = item
        elif os.path.lexists(item):  # a file (or a dangling link: listed as unreadable)
            found, root = [item], os.path.dirname(item) or "."
        elif glob.has_magic(item):
            found = _expand_glob(os.path.expanduser(item), exclude)
            expanded = []
            for f in found:
                if _inside(f, exclude):
                    continue
                if os.path.isdir(f) and not is_image_name(f):
                    expanded += _walk_images(f, exclude)[0]
                else:
                    expanded.append(f)
            found = expanded
            if not found:
                raise UserError(
                    f"--input {item!r}: the pattern matches no file",
                    "check the pattern (quote it so the shell does not expand it) and the folder",
                )
            root = _glob_root(os.path.expanduser(item))
        else:
            raise UserError(
                f"--input {item}: no such file or folder",
                "give image files, folders of images or glob patterns",
            )
        entries += [(os.path.abspath(f), os.path.abspath(root)) for f in found]
    common = os.path.commonpath([root for _, root in entries])
    out, seen = [], set()
    for path, _ in entries:
        if path not in seen:
            seen.add(path)
            out.append((path, _display_key(os.path.relpath(path, common).replace(os.sep, "/"))))
    return out


def _to_bgr8(image):
    """
    PIL image of any mode -> (H, W, 3) BGR uint8. 16-bit grey (``I;16``, and ``I`` holding
    values above 255) is scaled by 255 / 65535 as the converter does; float (``F``) is read as
    0..1 when it stays in [0, 1], else as 0..255; every other mode (grey, palette, 1-bit, RGBA,
    LA, CMYK, ...) is converted to RGB by PIL, as Detectron2's ``read_image`` does (which turns
    16-bit grey white and float black).
    """
    grey = wide_grey_to_uint8(image)  # the converter's rule
    if grey is not None:
        return np.repeat(grey[:, :, None], 3, axis=2)
    return np.asarray(image.convert("RGB"))[:, :, ::-1]


class UnreadablePhoto(OSError):
    """A photo that cannot be read (the reason is the message); the demo lists it, goes on."""


def read_photo(path, max_megapixels=DEFAULT_MAX_MEGAPIXELS):
    """
    (H, W, 3) BGR uint8 photo with its EXIF orientation applied, as Detectron2's ``read_image``
    reads it (see :func:`_to_bgr8` for 16-bit and float files; a multi-frame file gives its
    first frame).

    Args:
        max_megapixels: larger photos are refused before they are decoded (None: no limit).
    Raises:
        UnreadablePhoto: with a short reason, for anything that is not a readable image.
    """
    if os.path.isdir(path):
        raise UnreadablePhoto("a folder, not an image file")
    if is_unsupported_photo(path):
        ext = os.path.splitext(path)[1].lower()
        raise UnreadablePhoto(
            f"{ext} photos are not read by this tool (camera raw, GIF): export them "
            "as JPEG or PNG"
        )
    try:
        formats = photo_formats_for(path)
    except ValueError as e:  # a HEIC without pillow-heif
        raise UnreadablePhoto(str(e).removeprefix(f"{path}: ")) from None
    try:
        size = os.stat(path).st_size
    except OSError as e:
        if e.errno == errno.ELOOP:
            raise UnreadablePhoto("symlink loop") from None
        if os.path.islink(path):
            raise UnreadablePhoto(f"dangling link (to {os.readlink(path)})") from None
        raise UnreadablePhoto(e.strerror or "cannot access the file") from None
    if size == 0:
        raise UnreadablePhoto("empty file (0 bytes)")
    limit = None if max_megapixels is None else int(max_megapixels * 1e6)
    old_limit = Image.MAX_IMAGE_PIXELS
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", Image.DecompressionBombWarning)
            Image.MAX_IMAGE_PIXELS = None  # checked here, from the header, before decoding
            with Image.open(path, formats=formats) as opened:
                w, h = opened.size
                if limit is not None and w * h > limit:
                    raise _TooLarge(w, h, max_megapixels)
                image = _to_bgr8(_apply_exif_orientation(opened))
    except _TooLarge as e:
        raise UnreadablePhoto(str(e)) from None
    except MemoryError:
        raise UnreadablePhoto("not enough memory to decode it") from None
    except Exception as e:  # PIL raises many types for corrupt data
        reason = (str(e).splitlines() or [type(e).__name__])[0][:200]
        raise UnreadablePhoto(f"not a readable image ({type(e).__name__}: {reason})") from None
    finally:
        Image.MAX_IMAGE_PIXELS = old_limit
    if image.ndim != 3 or image.shape[0] == 0 or image.shape[1] == 0:
        raise UnreadablePhoto(f"unexpected image shape {image.shape}")
    return np.ascontiguousarray(image)


class _TooLarge(Exception):
    def __init__(self, w, h, max_megapixels):
        super().__init__(
            f"{w}x{h} px = {w * h / 1e6:.1f} MP, above the limit of {max_megapixels:g} MP "
            "(--max-megapixels; a header this large may also be a decompression bomb)"
        )


def output_metadata(cfg):
    """Metadata of the first test (else train) dataset: class names and colours."""
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    for name in names:
        meta = MetadataCatalog.get(name)
        if meta.get("stuff_classes") or meta.get("thing_classes"):
            return meta
    raise UserError(
        f"DATASETS.TEST / DATASETS.TRAIN {names}: no registered dataset names the classes",
        "set DATASETS.TEST to the registered dataset the model was trained on (its metadata "
        "holds the class names), e.g. DATASETS.TEST \"('concrete_defects_val_panoptic',)\"",
    )


def _load_file(path):
    try:
        from d2_detr.utils.checkpoint_io import load_checkpoint_file
    except ImportError:  # the safe loader not available: torch files only, tensors only
        if path.endswith(".pkl"):
            raise UserError(f"MODEL.WEIGHTS {path}: .pkl files are not supported here") from None
        if not os.path.isfile(path):
            raise UserError(f"MODEL.WEIGHTS {path}: no such file") from None
        try:
            return torch.load(path, map_location="cpu", weights_only=True)
        except Exception as e:
            raise UserError(f"MODEL.WEIGHTS {path}: not a readable checkpoint ({e})") from None
    return load_checkpoint_file(path)


def load_weights(model, path):
    """
    Load a checkpoint file into ``model`` without executing code from it.

    Raises:
        UserError: unreadable file, or weights that do not fit the model (names the keys).
    """
    data = _load_file(path)
    state = data.get("model", data) if isinstance(data, dict) else data
    if not isinstance(state, dict):
        raise UserError(f"MODEL.WEIGHTS {path}: holds no state dict")
    own = model.state_dict()
    tensors, wrong = {}, []
    for k, v in state.items():
        if k not in own:
            continue
        v = torch.as_tensor(np.asarray(v)) if not torch.is_tensor(v) else v
        if tuple(v.shape) != tuple(own[k].shape):
            wrong.append(f"{k} {tuple(v.shape)} != {tuple(own[k].shape)}")
        tensors[k] = v
    if wrong:
        raise UserError(
            f"MODEL.WEIGHTS {path} does not fit this config: {len(wrong)} shape mismatch(es), "
            f"e.g. {'; '.join(wrong[:3])}",
            "use the config the model was trained with (e.g. MODEL.DETR.NUM_CLASSES, "
            "HIDDEN_DIM, NUM_OBJECT_QUERIES)",
        )
    if not tensors:
        raise UserError(
            f"MODEL.WEIGHTS {path}: none of its {len(state)} keys are parameters of this model",
            "convert official DETR checkpoints first (tools/convert_detr_checkpoint.py)",
        )
    missing = sorted(set(own) - set(tensors))
    if missing:
        logger.warning(f"{len(missing)} model parameters not in {path}, e.g. {missing[:3]}")
    model.load_state_dict(tensors, strict=False)


class ModelPredictor:
    """
    The model with its test-time resize, on one BGR image: ``(image) -> (panoptic_seg,
    segments_info)`` with ``panoptic_seg`` an (H, W) int32 numpy array at the image's size.
    """

    def __init__(self, cfg, weights=None, exported=None):
        """``exported``: an exported model file (``tools/export_model.py``) to run instead of
        the PyTorch model, with the same post-processing (``d2_detr.export.ExportedDETR``)."""
        self.cfg = cfg.clone()
        if exported:
            from d2_detr.export import ExportedDETR

            self.model = ExportedDETR(self.cfg, exported)
        else:
            self.model = build_model(self.cfg)
        self.model.eval()
        if weights and not exported:
            load_weights(self.model, weights)
        self.aug = T.ResizeShortestEdge(
            [cfg.INPUT.MIN_SIZE_TEST, cfg.INPUT.MIN_SIZE_TEST], cfg.INPUT.MAX_SIZE_TEST
        )
        self.input_format = cfg.INPUT.FORMAT
        self.min_area = cfg.MODEL.DETR.TEST.MIN_SEGMENT_AREA

    def __call__(self, image, max_mask_side=MAX_MASK_SIDE):
        """``max_mask_side``: masks are computed at most this size, then upsampled (nearest)."""
        h, w = image.shape[:2]
        scale = min(1.0, max_mask_side / max(h, w))
        out_h, out_w = max(1, round(h * scale)), max(1, round(w * scale))
        if self.input_format == "RGB":
            image = image[:, :, ::-1]
        # the test-time resize, at least 1 px each way (Detectron2's rounds a 4000 x 3 strip
        # to 0 rows)
        newh, neww = T.ResizeShortestEdge.get_output_shape(
            h, w, self.aug.short_edge_length[0], self.aug.max_size
        )
        resize = T.ResizeTransform(h, w, max(1, newh), max(1, neww), self.aug.interp)
        resized = resize.apply_image(image)
        tensor = torch.as_tensor(resized.astype("float32").transpose(2, 0, 1))
        with torch.inference_mode():
            pred = self.model([{"image": tensor, "height": out_h, "width": out_w}])[0]
        seg, info = pred["panoptic_seg"]
        seg = seg.to("cpu").numpy().astype(np.int32, copy=False)
        return upsample_labels(seg, (h, w)), info


def should_tile(shape, cfg, tile, tile_above=None):
    """
    Tiling on by default when the photo's longest side exceeds twice the model's test size
    (``INPUT.MAX_SIZE_TEST``): resized as a whole it would shrink by more than 2x and a 2 px
    crack would become sub-pixel at the model's input. ``tile_above`` overrides the bound.
    """
    if tile <= 0:
        return False
    bound = 2 * cfg.INPUT.MAX_SIZE_TEST if tile_above is None else tile_above
    return max(shape[:2]) > max(bound, tile)


def overlay_path(output, key):
    """Overlay file mirroring ``key`` under ``output/overlays`` (the photo's own name when it has
    an image extension, OpenCV writes them all; else ``<key>.jpg``)."""
    name = key if key.lower().endswith(OVERLAY_EXTENSIONS) else key + ".jpg"
    return os.path.join(output, "overlays", *name.split("/"))


class PanopticDemo:
    """Predict (tiled for large photos), draw the overlay and collect the report, per photo."""

    def __init__(
        self,
        cfg,
        weights=None,
        tile=None,
        tile_overlap=None,
        tile_above=None,
        overlay_max_side=2048,
        progress=True,
        mm_per_pixel=None,
        severity=None,
        exported=None,
        max_megapixels=DEFAULT_MAX_MEGAPIXELS,
    ):
        """``mm_per_pixel``, ``severity`` (YAML path or None: defaults): see
        :class:`d2_detr.inspection.DefectReport`; ``exported``: see :class:`ModelPredictor`;
        ``max_megapixels``: see :func:`read_photo`; ``tile``, ``tile_overlap`` None: tiles of
        the model's test size (:func:`resolve_tiling`; ValueError when they do not fit)."""
        self.cfg = cfg
        self.predictor = ModelPredictor(cfg, weights, exported)
        self.metadata = output_metadata(cfg)
        classes = self.metadata.get("stuff_classes") or self.metadata.thing_classes
        self.report = DefectReport(
            classes,
            self.metadata.get("thing_classes", classes),
            mm_per_pixel=mm_per_pixel,
            severity=severity,
        )
        self.tile, self.tile_overlap = resolve_tiling(cfg.INPUT.MIN_SIZE_TEST, tile, tile_overlap)
        self.tile_above = tile_above
        self.overlay_max_side = overlay_max_side
        self.progress = progress
        self.max_megapixels = max_megapixels
        self._overlays = set()  # overlay files written by this run (never two photos on one)

    def predict(self, image):
        """(H, W, 3) BGR -> (panoptic_seg (H, W) int32 numpy, segments_info), tiled if large."""
        if should_tile(image.shape, self.cfg, self.tile, self.tile_above):
            return tiled_panoptic(
                self.predictor,
                image,
                self.tile,
                self.tile_overlap,
                self.predictor.min_area,
                self.progress,
            )
        return self.predictor(image)

    def draw(self, image, panoptic_seg, segments_info):
        """RGB overlay; photos larger than ``overlay_max_side`` are drawn downscaled."""
        h, w = image.shape[:2]
        scale = min(1.0, self.overlay_max_side / max(h, w))
        if scale < 1.0:
            size = (max(1, round(w * scale)), max(1, round(h * scale)))
            image = cv2.resize(image, size, interpolation=cv2.INTER_AREA)
            panoptic_seg = upsample_labels(panoptic_seg, (size[1], size[0]))
        visualizer = Visualizer(image[:, :, ::-1], self.metadata, instance_mode=ColorMode.IMAGE)
        seg = torch.as_tensor(np.ascontiguousarray(panoptic_seg))
        return visualizer.draw_panoptic_seg(seg, segments_info).get_image()

    def run_on_image(self, path, key=None, output=None):
        """
        Predict one photo, add it to the report (keyed by ``key``), write its overlay under
        ``output`` if given.

        Returns:
            (panoptic_seg, segments_info) and the overlay as an (H, W, 3) RGB uint8 array.
        Raises:
            UnreadablePhoto: the photo cannot be read (nothing is added to the report).
        """
        key = key or os.path.basename(path)
        image = read_photo(path, self.max_megapixels)
        panoptic_seg, segments_info = self.predict(image)
        overlay = self.draw(image, panoptic_seg, segments_info)
        del image
        relative = None
        if output is not None:
            target = overlay_path(output, key)
            stem, ext = os.path.splitext(target)
            n = 1
            while target in self._overlays:  # "x" and "x.jpg" both given: "x.jpg" is taken
                n += 1
                target = f"{stem}.{n}{ext}"
            self._overlays.add(target)
            os.makedirs(os.path.dirname(target), exist_ok=True)
            ok, data = cv2.imencode(os.path.splitext(target)[1].lower(), overlay[:, :, ::-1])
            if not ok:
                raise RuntimeError(f"cannot encode the overlay of {key}")
            atomic_write_bytes(target, data.tobytes())
            relative = os.path.relpath(target, output).replace(os.sep, "/")
        self.report.add(key, panoptic_seg, segments_info, overlay=relative)
        return (panoptic_seg, segments_info), overlay
