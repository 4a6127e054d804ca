"""Raw concrete-defect masks -> COCO instances + COCO panoptic (Detectron2's COCO layout).

Raw layout (input)::

    RAW/images/<stem>.<jpg|jpeg|png>
    RAW/masks/<stem><suffix>.<jpg|jpeg|png>   one grey mask per defect class present in the image

Output layout::

    OUT/{split}/<stem>.jpg                         images (always .jpg, see below)
    OUT/panoptic_{split}/<stem>.png                one panoptic PNG per image
    OUT/annotations/panoptic_{split}.json          one record per image, every segment + background
    OUT/annotations/instances_{split}.json         things only; RLE masks, bbox xywh, area in pixels
    OUT/conversion_summary.json                    counts and settings (deterministic)

Per image: threshold each mask (``value >= threshold`` is defect; JPEG noise near 0/255 goes
away) -> 8-connected components -> components with fewer than ``min_area`` pixels are dropped
("specks", their pixels become background) -> pixels claimed by two classes go to the class that
comes first in ``class_priority`` (default crack, then rebar, then spall: the smaller, thinner
class wins); an instance keeps its remaining pixels (still one instance when a crack cuts it in
two) and is dropped when fewer than ``min_area`` remain -> the remaining pixels form the
``background`` segment. Area and bbox are measured on the final segment. Segment ids are
1..N in (category id, raster order of the component) order, background last.

Images: a JPEG input (any extension) without EXIF rotation is copied byte for byte; anything
else (.png, rotated or CMYK JPEG) is decoded and re-encoded as JPEG quality 95 (4:4:4), because
Detectron2 v0.6's ``load_coco_panoptic_json`` looks for ``<png stem>.jpg``.

Splits are drawn by image with a seeded permutation of the sorted stems; byte-identical images
(duplicates under two names) are kept in one split, so they cannot leak; empty splits are not
written. Image ids are the 1-based positions of the sorted stems, so they are unique across
splits. Everything is written into a temporary sibling folder that is validated with
:func:`d2_detr.data.validation.check_panoptic` and renamed to ``OUT`` only on success: a failed
or interrupted run leaves ``OUT`` as it was (a run killed with SIGKILL may leave a hidden
``.OUT.tmp-*`` folder next to it, which is safe to delete). The same input gives byte-identical
output, whatever the number of workers.
"""

import hashlib
import multiprocessing as mp
import os
import shutil
import tempfile
import time

import cv2
import numpy as np
from PIL import Image
from pycocotools import mask as mask_utils
from tqdm import tqdm

from .categories import BACKGROUND_ID, CONCRETE_DEFECT_CATEGORIES
from .panoptic_format import mask_bbox, read_image_rgb, write_json, write_panoptic_png

__all__ = [
    "RawDatasetError",
    "DEFAULT_MIN_AREA",
    "DEFAULT_CLASS_PRIORITY",
    "DEFAULT_CLASS_SUFFIXES",
    "scan_raw_dir",
    "split_stems",
    "convert_concrete_dataset",
]

#: Components smaller than this many pixels are specks (JPEG noise, stray brush strokes).
DEFAULT_MIN_AREA = 16
#: Overlap resolution order: the first class listed keeps contested pixels.
DEFAULT_CLASS_PRIORITY = ("crack", "rebar", "spall")
#: Mask file-name suffix -> class name.
DEFAULT_CLASS_SUFFIXES = {"crack": "crack", "spall": "spall", "rebar": "rebar"}
IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png")
MASK_EXTENSIONS = (".jpg", ".jpeg", ".png")
JPEG_QUALITY = 95


class RawDatasetError(ValueError):
    """The raw dataset or the conversion settings are invalid; the message names the file."""


def _list_files(folder, extensions):
    if not os.path.isdir(folder):
        raise RawDatasetError(f"{folder}: folder not found (raw layout: images/ and masks/)")
    out = []
    for name in sorted(os.listdir(folder)):
        path = os.path.join(folder, name)
        if name.startswith(".") or not os.path.isfile(path):
            continue
        base, ext = os.path.splitext(name)
        if ext.lower() not in extensions:
            raise RawDatasetError(
                f"{path}: unexpected file type {ext!r} (expected one of {', '.join(extensions)})"
            )
        out.append((base, path))
    return out


def scan_raw_dir(raw_dir, class_suffixes=None):
    """Pair every image of ``RAW/images`` with its masks in ``RAW/masks``.

    Args:
        class_suffixes: dict mask-name suffix -> class name (default: crack, spall, rebar).
    Returns:
        list of (stem, image_path, {class_name: mask_path}) sorted by stem.
    Raises:
        RawDatasetError: two images with one stem, a mask with an unknown suffix or without an
            image, two masks of one class for one image; the message names the files.
    """
    suffixes = dict(DEFAULT_CLASS_SUFFIXES if class_suffixes is None else class_suffixes)
    images = {}
    for stem, path in _list_files(os.path.join(raw_dir, "images"), IMAGE_EXTENSIONS):
        if stem in images:
            raise RawDatasetError(
                f"{path}: two images share the stem {stem!r} (also {images[stem]}); "
                "keep one of them"
            )
        images[stem] = path
    masks = {stem: {} for stem in images}
    by_length = sorted(suffixes, key=lambda s: (-len(s), s))
    for base, path in _list_files(os.path.join(raw_dir, "masks"), MASK_EXTENSIONS):
        suffix = next((s for s in by_length if base.endswith(s) and len(base) > len(s)), None)
        if suffix is None:
            raise RawDatasetError(
                f"{path}: unknown class suffix (mask names are <image stem><suffix>, "
                f"suffixes: {', '.join(sorted(suffixes))})"
            )
        stem, cls = base[: -len(suffix)], suffixes[suffix]
        if stem not in images:
            raise RawDatasetError(f"{path}: mask without image (no images/{stem}.jpg|jpeg|png)")
        if cls in masks[stem]:
            raise RawDatasetError(
                f"{path}: second {cls!r} mask for image {stem!r} (also {masks[stem][cls]})"
            )
        masks[stem][cls] = path
    return [(stem, images[stem], masks[stem]) for stem in sorted(images)]


def _split_count(fraction, n):
    k = int(np.floor(fraction * n + 0.5))
    return 1 if fraction > 0 and k == 0 and n >= 2 else k


def split_stems(stems, val_fraction=0.2, test_fraction=0.0, seed=0, groups=None):
    """Assign each stem to ``train``/``val``/``test`` with a seeded permutation.

    Args:
        groups: optional dict stem -> group key; stems of one group (e.g. byte-identical
            images) always share a split. The fractions then count groups.
    A non-zero fraction gets at least one group when there are two or more; train keeps at
    least one. Returns dict stem -> split.
    """
    stems = sorted(stems)
    groups = groups or {}
    keys = sorted({groups.get(s, s) for s in stems})
    n = len(keys)
    n_test, n_val = _split_count(test_fraction, n), _split_count(val_fraction, n)
    while n_test + n_val > max(n - 1, 0):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.RandomState(seed).permutation(n)
    split_of_key = {}
    for rank, i in enumerate(order.tolist()):
        split_of_key[keys[i]] = (
            "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        )
    return {s: split_of_key[groups.get(s, s)] for s in stems}


def _content_groups(entries):
    """stem -> stem of the first image with the same bytes (duplicates must share a split)."""
    first, groups = {}, {}
    for stem, path, _ in entries:
        with open(path, "rb") as f:
            digest = hashlib.sha1(f.read()).hexdigest()
        groups[stem] = first.setdefault(digest, stem)
    return groups


def _write_image(src, dst):
    """Copy a JPEG as is, re-encode anything else; returns ((width, height), re-encoded)."""
    try:
        with Image.open(src) as img:
            fmt, mode, size = img.format, img.mode, img.size
            orientation = img.getexif().get(274, 1)
            if fmt == "JPEG":  # DCT-scaled decode: still reads the whole stream, 2x faster
                img.draft(img.mode, (size[0] // 8, size[1] // 8))
            img.load()  # decode: corrupt and truncated files raise here
    except (OSError, SyntaxError, ValueError, Image.DecompressionBombError) as e:
        raise RawDatasetError(f"{src}: corrupt or unreadable image ({e})") from e
    if fmt == "JPEG" and mode in ("RGB", "L") and orientation == 1:
        shutil.copyfile(src, dst)
        return size, False
    rgb = read_image_rgb(src)  # applies EXIF rotation as Detectron2 does
    Image.fromarray(rgb).save(dst, format="JPEG", quality=JPEG_QUALITY, subsampling=0)
    return (rgb.shape[1], rgb.shape[0]), True


def _components(binary, min_area):
    """8-connected components of a (H, W) bool mask.

    Returns:
        labels: (H, W) int32, specks zeroed; kept: {label: (x, y, w, h, area)} of the kept
        components; specks: pixel counts of the dropped components.
    """
    n, labels, stats, _ = cv2.connectedComponentsWithStats(
        binary.view(np.uint8), connectivity=8, ltype=cv2.CV_32S
    )
    areas = stats[1:, cv2.CC_STAT_AREA]
    kept = {int(k) + 1: tuple(stats[k + 1].tolist()) for k in np.flatnonzero(areas >= min_area)}
    specks = areas[areas < min_area].tolist()
    if specks:
        lut = np.zeros(n, np.int32)
        lut[list(kept)] = list(kept)
        labels = lut[labels]
    return labels, kept, specks


def _convert_one(task):
    """Convert one image: write its .jpg and panoptic PNG, return its records and counts."""
    stem, image_path, masks, image_id, split, out, cfg = task
    (width, height), reencoded = _write_image(image_path, os.path.join(out, split, stem + ".jpg"))
    stats = {"dropped_specks": 0, "dropped_speck_pixels": 0, "overlap_pixels": 0}
    stats.update(dropped_after_overlap=0, empty_masks=0, reencoded_images=int(reencoded))

    labels = {}  # class -> (label map with specks zeroed, {label: component box})
    for cls, path in sorted(masks.items()):
        try:
            mask = read_image_rgb(path, mode="L")
        except ValueError as e:
            raise RawDatasetError(f"{e} (mask of {image_path})") from e
        if mask.shape != (height, width):
            raise RawDatasetError(
                f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                f"{width}x{height} of {image_path}"
            )
        binary = mask >= cfg["threshold"]
        if not binary.any():
            stats["empty_masks"] += 1
            continue
        lab, kept, specks = _components(binary, cfg["min_area"])
        stats["dropped_specks"] += len(specks)
        stats["dropped_speck_pixels"] += int(sum(specks))
        if kept:
            labels[cls] = (lab, kept)

    remaining = {}  # class -> {label: pixels left}
    for cls, (lab, kept) in labels.items():
        remaining[cls] = {k: box[4] for k, box in kept.items()}
    if len(labels) > 1:  # resolve pixels claimed by several classes
        claimed = np.zeros((height, width), bool)
        for cls in cfg["class_priority"]:
            if cls not in labels:
                continue
            lab, kept = labels[cls]
            fg = lab > 0
            lost = fg & claimed
            n_lost = int(np.count_nonzero(lost))
            if n_lost:
                stats["overlap_pixels"] += n_lost
                lab = np.where(lost, 0, lab)
                left = np.bincount(lab.ravel(), minlength=max(kept) + 1)
                remaining[cls] = {k: int(left[k]) for k in kept}
                labels[cls] = (lab, kept)
            claimed |= fg

    id_map = np.zeros((height, width), np.int32)
    segments, boxes, next_id = [], {}, 1
    for cat in CONCRETE_DEFECT_CATEGORIES:
        if cat["name"] not in labels:
            continue
        lab, kept = labels[cat["name"]]
        lut = np.zeros(max(kept) + 1, np.int32)
        for k in sorted(kept):
            if remaining[cat["name"]][k] < cfg["min_area"]:
                stats["dropped_after_overlap"] += 1
                continue
            lut[k] = next_id
            boxes[next_id] = kept[k][:4]
            segments.append({"id": next_id, "category_id": cat["id"], "iscrowd": 0})
            segments[-1]["area"] = remaining[cat["name"]][k]
            next_id += 1
        if len(kept) == 1 and lut.any():  # one component: a masked write beats a gather
            id_map[lab > 0] = lut.max()
        elif lut.any():
            id_map += np.take(lut, lab)
    background = id_map == 0
    n_background = height * width - sum(seg["area"] for seg in segments)
    if n_background:
        id_map[background] = next_id
        segments.append({"id": next_id, "category_id": BACKGROUND_ID, "iscrowd": 0})
        segments[-1].update(area=n_background, bbox=mask_bbox(background))

    fortran = np.asfortranarray(id_map)
    rles = {}
    for seg in segments:
        sid = seg["id"]
        if sid in boxes:  # a thing lies inside its component's box: measure there
            x, y, w, h = boxes[sid]
            bx, by, bw, bh = mask_bbox(id_map[y : y + h, x : x + w] == sid)
            seg["bbox"] = [x + bx, y + by, bw, bh]
            rle = mask_utils.encode((fortran == sid).view(np.uint8))
            rles[sid] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    write_panoptic_png(os.path.join(out, "panoptic_" + split, stem + ".png"), id_map)
    return {
        "stem": stem,
        "split": split,
        "image_id": image_id,
        "width": width,
        "height": height,
        "segments": segments,
        "rles": rles,
        "stats": stats,
    }


def _check_settings(val_fraction, test_fraction, threshold, min_area, class_priority, suffixes):
    names = {c["name"] for c in CONCRETE_DEFECT_CATEGORIES if c["isthing"]}
    if not (0 <= val_fraction < 1 and 0 <= test_fraction < 1 and val_fraction + test_fraction < 1):
        raise RawDatasetError("val_fraction and test_fraction must be in [0, 1) with sum < 1")
    if not 1 <= threshold <= 255:
        raise RawDatasetError(f"threshold must be in [1, 255], got {threshold}")
    if min_area < 1:
        raise RawDatasetError(f"min_area must be >= 1, got {min_area}")
    if sorted(class_priority) != sorted(names):
        raise RawDatasetError(
            f"class_priority must list each of {sorted(names)} once, got {list(class_priority)}"
        )
    unknown = set(suffixes.values()) - names
    if unknown:
        raise RawDatasetError(f"class_suffixes map to unknown classes {sorted(unknown)}")


def _coco_images(records):
    return [
        {
            "id": r["image_id"],
            "file_name": r["stem"] + ".jpg",
            "width": r["width"],
            "height": r["height"],
        }
        for r in records
    ]


def _write_split(out, split, records):
    ann_dir = os.path.join(out, "annotations")
    images = _coco_images(records)
    panoptic = {
        "info": {"description": "concrete defects, converted by d2_detr.data.conversion"},
        "licenses": [],
        "categories": CONCRETE_DEFECT_CATEGORIES,
        "images": images,
        "annotations": [
            {
                "image_id": r["image_id"],
                "file_name": r["stem"] + ".png",
                "segments_info": r["segments"],
            }
            for r in records
        ],
    }
    write_json(os.path.join(ann_dir, f"panoptic_{split}.json"), panoptic)
    instances, next_ann = [], 1
    for r in records:
        for seg in r["segments"]:
            if seg["id"] not in r["rles"]:
                continue
            instances.append(
                {
                    "id": next_ann,
                    "image_id": r["image_id"],
                    "category_id": seg["category_id"],
                    "segmentation": r["rles"][seg["id"]],
                    "area": seg["area"],
                    "bbox": seg["bbox"],
                    "iscrowd": 0,
                }
            )
            next_ann += 1
    things = [c for c in CONCRETE_DEFECT_CATEGORIES if c["isthing"]]
    coco = {"info": panoptic["info"], "licenses": [], "categories": things, "images": images}
    coco["annotations"] = instances
    write_json(os.path.join(ann_dir, f"instances_{split}.json"), coco)


def _summarize(records, settings):
    id_to_name = {c["id"]: c["name"] for c in CONCRETE_DEFECT_CATEGORIES}
    splits = sorted({r["split"] for r in records})
    summary = {
        "images": {s: sum(r["split"] == s for r in records) for s in splits},
        "instances": {c["name"]: 0 for c in CONCRETE_DEFECT_CATEGORIES if c["isthing"]},
        "instances_per_split": {},
        "images_without_defects": 0,
        "settings": settings,
    }
    for key in records[0]["stats"] if records else ():
        summary[key] = sum(r["stats"][key] for r in records)
    for s in splits:
        summary["instances_per_split"][s] = dict.fromkeys(summary["instances"], 0)
    for r in records:
        things = [seg for seg in r["segments"] if seg["category_id"] != BACKGROUND_ID]
        summary["images_without_defects"] += not things
        for seg in things:
            summary["instances"][id_to_name[seg["category_id"]]] += 1
            summary["instances_per_split"][r["split"]][id_to_name[seg["category_id"]]] += 1
    summary["warnings"] = [
        f"split {s!r} holds no defect instance: panoptic evaluation (pq_compute) on it divides "
        "by zero; use more images or another seed"
        for s in splits
        if not any(summary["instances_per_split"][s].values())
    ]
    return summary


def _publish(tmp, out_dir):
    """Replace ``out_dir`` with ``tmp`` (two renames on one file system)."""
    old = None
    if os.path.lexists(out_dir):
        old = tempfile.mkdtemp(
            prefix=f".{os.path.basename(out_dir)}.old-", dir=os.path.dirname(tmp)
        )
        os.rename(out_dir, os.path.join(old, "previous"))
    os.rename(tmp, out_dir)
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)


def convert_concrete_dataset(
    raw_dir,
    out_dir,
    val_fraction=0.2,
    test_fraction=0.0,
    seed=0,
    threshold=128,
    min_area=DEFAULT_MIN_AREA,
    workers=None,
    overwrite=False,
    class_priority=DEFAULT_CLASS_PRIORITY,
    class_suffixes=None,
    progress=True,
    validate=True,
):
    """Convert a raw concrete-defect dataset (see the module docstring for every rule).

    Args:
        raw_dir: folder with ``images/`` and ``masks/``.
        out_dir: dataset root to create; must not exist unless ``overwrite``.
        val_fraction, test_fraction, seed: image-level split.
        threshold: mask grey value at or above which a pixel is defect.
        min_area: smallest kept component, in pixels (default 16).
        workers: processes (default: all cores); 1 runs in this process.
        class_priority: class names, first wins pixels claimed by several classes.
        class_suffixes: dict mask-name suffix -> class name.
        progress: show a tqdm bar.
        validate: run :func:`check_panoptic` on the output before publishing it.
    Returns:
        summary dict: images per split, instances per class (and per split), dropped specks
        (components and pixels), overlap pixels, instances dropped after overlap, empty masks,
        re-encoded images, images without defects, duplicate images (same bytes as an earlier
        stem), warnings (e.g. a split without any defect), settings, plus ``out_dir`` and
        ``seconds``.
    Raises:
        RawDatasetError: bad input, naming the file; FileExistsError: ``out_dir`` exists.
    """
    start = time.perf_counter()
    suffixes = dict(DEFAULT_CLASS_SUFFIXES if class_suffixes is None else class_suffixes)
    class_priority = tuple(class_priority)
    _check_settings(val_fraction, test_fraction, threshold, min_area, class_priority, suffixes)
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True / --overwrite)")
    entries = scan_raw_dir(raw_dir, suffixes)
    if not entries:
        raise RawDatasetError(f"{os.path.join(raw_dir, 'images')}: no images found")
    groups = _content_groups(entries)
    split_of = split_stems([e[0] for e in entries], val_fraction, test_fraction, seed, groups)
    settings = {
        "val_fraction": val_fraction,
        "test_fraction": test_fraction,
        "seed": seed,
        "threshold": threshold,
        "min_area": min_area,
        "class_priority": list(class_priority),
        "class_suffixes": suffixes,
    }
    cfg = {"threshold": threshold, "min_area": min_area, "class_priority": class_priority}
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(entries)))

    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.makedirs(os.path.join(tmp, "annotations"))
        for split in sorted(set(split_of.values())):
            os.makedirs(os.path.join(tmp, split))
            os.makedirs(os.path.join(tmp, "panoptic_" + split))
        tasks = [
            (stem, image, masks, image_id, split_of[stem], tmp, cfg)
            for image_id, (stem, image, masks) in enumerate(entries, start=1)
        ]
        bar = dict(total=len(tasks), desc="convert", unit="img", disable=not progress)
        if workers == 1:
            records = list(tqdm(map(_convert_one, tasks), **bar))
        else:
            chunk = max(1, min(16, len(tasks) // (workers * 8)))
            with mp.Pool(workers) as pool:
                records = list(tqdm(pool.imap(_convert_one, tasks, chunksize=chunk), **bar))
        for split in sorted(set(split_of.values())):
            _write_split(tmp, split, [r for r in records if r["split"] == split])
        summary = _summarize(records, settings)
        summary["duplicate_images"] = sum(g != s for s, g in groups.items())
        write_json(os.path.join(tmp, "conversion_summary.json"), summary)
        if validate:
            from .validation import check_panoptic

            problems = check_panoptic(tmp, workers=workers)
            if problems:
                shown = "\n  ".join(problems[:20])
                raise RawDatasetError(
                    f"converted output failed validation ({len(problems)} problems):\n  {shown}"
                )
        _publish(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out_dir"] = out_dir
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
