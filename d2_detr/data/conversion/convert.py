"""``convert_concrete_dataset``: scan -> split -> per image (masks -> panoptic) -> json -> publish.

Per image (:func:`convert_image`): the image is copied or re-encoded (``images.py``), each mask
is read by the bit-depth rule of ``masks.py``, the pure :func:`masks_to_panoptic` turns the masks
into segments, and the panoptic PNG is written. The split jsons and ``conversion_summary.json``
follow; the temporary folder is validated with :func:`d2_detr.data.validation.check_panoptic` and
renamed to ``OUT`` only on success. The same input gives byte-identical output, whatever the
number of workers.

A photo that cannot be decoded stops the conversion (exit 2 naming it), unless
``skip_unreadable_images``: then it is left out with its masks, listed in the summary's
``skipped_images`` (file and reason), and the other images convert (keeping the split they have
with it: the split is drawn over every photo found).
"""

import multiprocessing as mp
import os
import shutil
import time

from tqdm import tqdm

from ..categories import BACKGROUND_ID, CONCRETE_DEFECT_CATEGORIES
from ..panoptic_format import write_json, write_panoptic_png
from .coco_json import thing_rles, write_split_jsons
from .images import write_image
from .masks import exif_orientation, read_mask
from .panoptic import masks_to_panoptic
from .publish import SUMMARY_NAME, check_out_dir, make_temp_dir, publish
from .scan import content_groups, scan_raw_dir
from .settings import (
    DEFAULT_CLASS_PRIORITY,
    DEFAULT_CLASS_SUFFIXES,
    DEFAULT_MIN_AREA,
    DEFAULT_THRESHOLD,
    RawDatasetError,
    check_settings,
)
from .split import split_stems

__all__ = ["convert_concrete_dataset", "convert_image"]

THING_IDS = frozenset(c["id"] for c in CONCRETE_DEFECT_CATEGORIES if c["isthing"])


def convert_image(task):
    """Convert one image: write its .jpg and panoptic PNG, return its records and counts."""
    stem, image_path, masks, image_id, split, out, cfg = task
    try:
        size, reencoded = write_image(image_path, os.path.join(out, split, stem + ".jpg"))
    except RawDatasetError as e:
        if not cfg.get("skip_unreadable_images"):
            raise
        return {"stem": stem, "split": split, "skipped": {"image": image_path, "reason": str(e)}}
    width, height = size
    binary = {}
    for cls, path in sorted(masks.items()):
        mask = read_mask(path, cfg["threshold"])
        if mask.shape != (height, width):
            orientation = exif_orientation(image_path)
            if orientation in (5, 6, 7, 8) and mask.shape == (width, height):
                raise RawDatasetError(
                    f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} is the size of "
                    f"{image_path} as stored, before its EXIF orientation {orientation} "
                    f"(displayed {width}x{height}, as Detectron2 reads it)",
                    "re-export the mask in the displayed orientation (the one image viewers "
                    "show), or give the mask the photo's EXIF orientation tag",
                )
            raise RawDatasetError(
                f"{path}: mask size {mask.shape[1]}x{mask.shape[0]} differs from the image size "
                f"{width}x{height} of {image_path} (EXIF orientation applied)",
                "re-export the mask at the size of its image (same orientation)",
            )
        binary[cls] = mask
    id_map, segments, stats = masks_to_panoptic(
        binary, (height, width), cfg["min_area"], cfg["class_priority"]
    )
    stats["reencoded_images"] = int(reencoded)
    write_panoptic_png(os.path.join(out, "panoptic_" + split, stem + ".png"), id_map)
    return {
        "stem": stem,
        "split": split,
        "image_id": image_id,
        "width": width,
        "height": height,
        "segments": segments,
        "rles": thing_rles(id_map, segments, THING_IDS),
        "stats": stats,
    }


def _convert_one(task):
    # Looked up through this module at call time, so a test can patch it.
    return convert_image(task)


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


def convert_concrete_dataset(
    raw_dir,
    out_dir,
    val_fraction=0.2,
    test_fraction=0.0,
    seed=0,
    threshold=DEFAULT_THRESHOLD,
    min_area=DEFAULT_MIN_AREA,
    workers=None,
    overwrite=False,
    class_priority=DEFAULT_CLASS_PRIORITY,
    class_suffixes=None,
    progress=True,
    validate=True,
    skip_unreadable_images=False,
):
    """Convert a raw concrete-defect dataset (see :mod:`d2_detr.data.conversion` for the rules).

    Args:
        raw_dir: folder with ``images/`` and ``masks/``.
        out_dir: dataset root to create; must not exist unless ``overwrite`` (then it must be
            an earlier output of this converter or an empty folder).
        val_fraction, test_fraction, seed: image-level split.
        threshold: mask threshold, 1..255 on the 8-bit scale or a float fraction in (0, 1] of
            the mask's type range (see ``masks.py``).
        min_area: smallest kept component, in pixels (default 16).
        workers: processes (default: all cores); 1 runs in this process.
        class_priority: class names, first wins pixels claimed by several classes; stored in
            the summary's settings, from which dataset registration reads it.
        class_suffixes: dict mask-name suffix -> class name.
        progress: show a tqdm bar.
        validate: run :func:`check_panoptic` on the output before publishing it.
        skip_unreadable_images: leave out (with their masks) the photos that cannot be decoded
            and list them in the summary's ``skipped_images``, instead of stopping; every photo
            unreadable is still an error.
    Returns:
        summary dict: images per split, instances per class (and per split), dropped specks
        (components and pixels), overlap pixels, instances dropped after overlap, empty masks,
        re-encoded images, images without defects, duplicate images (same bytes as an earlier
        stem), skipped images (file and reason, with ``skip_unreadable_images``), warnings (e.g.
        a split without any defect), settings, plus ``out_dir`` and ``seconds``.
    Raises:
        RawDatasetError: bad input, naming the file; FileExistsError: ``out_dir`` exists.
    """
    start = time.perf_counter()
    suffixes = dict(DEFAULT_CLASS_SUFFIXES if class_suffixes is None else class_suffixes)
    class_priority = tuple(class_priority)
    check_settings(val_fraction, test_fraction, threshold, min_area, class_priority, suffixes)
    if workers is not None and workers < 1:
        raise RawDatasetError(f"workers must be >= 1, got {workers}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    check_out_dir(out_dir, overwrite)
    entries = scan_raw_dir(raw_dir, suffixes)
    if not entries:
        raise RawDatasetError(f"{os.path.join(os.fspath(raw_dir), 'images')}: no images found")
    raw_abs = os.path.realpath(os.fspath(raw_dir))
    if os.path.realpath(out_dir) == raw_abs or raw_abs.startswith(
        os.path.realpath(out_dir) + os.sep
    ):
        raise RawDatasetError(f"{out_dir}: --out would replace the raw folder {raw_dir}")
    groups = content_groups(entries)
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
    cfg = {
        "threshold": threshold,
        "min_area": min_area,
        "class_priority": class_priority,
        "skip_unreadable_images": bool(skip_unreadable_images),
    }
    workers = max(1, min(workers or len(os.sched_getaffinity(0)), len(entries)))

    tmp = make_temp_dir(out_dir)
    try:
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
        skipped = [r["skipped"] for r in records if "skipped" in r]
        records = [r for r in records if "skipped" not in r]
        if not records:
            raise RawDatasetError(
                f"{os.path.join(os.fspath(raw_dir), 'images')}: no readable photo "
                f"({len(skipped)} unreadable, the first: {skipped[0]['reason']})"
            )
        for split in sorted(set(split_of.values())):
            write_split_jsons(tmp, split, [r for r in records if r["split"] == split])
        summary = _summarize(records, settings)
        summary["duplicate_images"] = sum(g != s for s, g in groups.items())
        summary["skipped_images"] = skipped
        summary["warnings"] += [f"left out (unreadable): {s['reason']}" for s in skipped]
        write_json(os.path.join(tmp, SUMMARY_NAME), summary)
        if validate:
            from ..validation import check_panoptic

            problems = check_panoptic(tmp, workers=workers)
            if problems:
                shown = "\n  ".join(problems[:20])
                raise RawDatasetError(
                    f"converted output failed validation ({len(problems)} problems):\n  {shown}"
                )
        publish(tmp, out_dir)
    except OSError as e:  # disk full, read-only file system, ...: nothing published
        shutil.rmtree(tmp, ignore_errors=True)
        raise RawDatasetError(
            f"{e.filename or out_dir}: cannot write the output ({e.strerror or e})",
            f"{out_dir} was left as it was; free space or choose another --out",
        ) from e
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    summary["out_dir"] = out_dir
    summary["seconds"] = round(time.perf_counter() - start, 3)
    return summary
