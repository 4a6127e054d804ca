"""Validator for any COCO-panoptic dataset (and its COCO instances json, when present).

Layout understood (Detectron2 / COCO): ``ROOT/annotations/panoptic_{split}.json`` with images in
``ROOT/{split}/`` and PNGs in ``ROOT/panoptic_{split}/`` (COCO's ``panoptic_train2017.json`` /
``train2017/`` / ``panoptic_train2017/`` follows the same rule). ``instances_{split}.json`` next
to it is checked too when it exists.

Checks: one record per image and per PNG (several records sharing a PNG are the earlier
attempt's "one record per mask file" fault); every json segment id present in its PNG and
every PNG id in the json; areas and bboxes equal to the pixels; no id 0 and no duplicate ids;
category ids known and ``isthing`` consistent; image files exist and have the PNG's size
(Detectron2 v0.6 also needs ``<png stem>.jpg``); no image (by name or content) in two splits;
instances json: areas/bboxes equal to the RLE masks, thing categories only, and the same
(category, area, bbox) set per image as the panoptic things.
Each problem is one string naming the file and, where it applies, the segment id. A malformed
json structure (a list instead of an object, ``segments_info: null``, a missing key, an id that
is not an integer, ...) is a problem located by its json path, e.g.
``panoptic_val.json: annotations[3].segments_info: expected a list, got null``
(:mod:`d2_detr.data.schema`); the content checks then run on the well-formed rest.
"""

import hashlib
import json
import multiprocessing as mp
import os
from collections import Counter

import numpy as np
from pycocotools import mask as mask_utils

from .panoptic_format import image_size, read_panoptic_png
from .schema import instances_structure, panoptic_structure

__all__ = ["check_panoptic", "panoptic_splits"]


def panoptic_splits(root_or_json, image_root=None, panoptic_root=None):
    """List the (split, panoptic json, image dir, PNG dir) a dataset root or json file holds."""
    path = os.fspath(root_or_json)
    if os.path.isfile(path):
        name = os.path.splitext(os.path.basename(path))[0]
        split = name[len("panoptic_") :] if name.startswith("panoptic_") else name
        root = os.path.dirname(os.path.dirname(os.path.abspath(path)))
        return [
            (
                split,
                path,
                image_root or os.path.join(root, split),
                panoptic_root or os.path.join(root, "panoptic_" + split),
            )
        ]
    ann_dir = os.path.join(path, "annotations")
    names = sorted(os.listdir(ann_dir)) if os.path.isdir(ann_dir) else []
    jsons = [n for n in names if n.startswith("panoptic_") and n.endswith(".json")]
    out = []
    for n in jsons:
        split = n[len("panoptic_") : -len(".json")]
        out.append(
            (split, os.path.join(ann_dir, n), os.path.join(path, split), os.path.join(path, n[:-5]))
        )
    return out


def _bbox_equal(a, b):
    return a is not None and b is not None and len(a) == 4 and np.allclose(a, b, atol=1e-6)


def _check_record(job):
    """Check one panoptic record against its PNG and image. Returns (problems, image sha1)."""
    ann, image, categories, json_path, image_root, pan_root = job
    problems = []
    png = os.path.join(pan_root, str(ann.get("file_name")))
    where = f"{png}"
    seg_ids = [s.get("id") for s in ann.get("segments_info", [])]
    for sid, n in Counter(seg_ids).items():
        if n > 1:
            problems.append(f"{json_path}: {where}: segment {sid}: id listed {n} times")
    for seg in ann.get("segments_info", []):
        sid, cid = seg.get("id"), seg.get("category_id")
        if sid == 0:
            problems.append(f"{where}: segment 0: id 0 is reserved for unlabelled pixels")
        if cid not in categories:
            problems.append(f"{where}: segment {sid}: unknown category_id {cid}")
        elif "isthing" in seg and int(bool(seg["isthing"])) != categories[cid].get("isthing"):
            problems.append(
                f"{where}: segment {sid}: isthing={seg['isthing']} but category {cid} has "
                f"isthing={categories[cid].get('isthing')}"
            )
        if seg.get("iscrowd", 0) not in (0, 1):
            problems.append(f"{where}: segment {sid}: iscrowd must be 0 or 1")
    if not os.path.isfile(png):
        return problems + [f"{where}: PNG missing (listed in {json_path})"], None
    try:
        id_map, pixels = read_panoptic_png(png)
    except ValueError as e:
        return problems + [str(e)], None
    for seg in ann.get("segments_info", []):
        sid = seg.get("id")
        if sid not in pixels:
            if sid != 0:
                problems.append(
                    f"{where}: segment {sid}: listed in {os.path.basename(json_path)} but absent "
                    "from the PNG (empty segment)"
                )
            continue
        if seg.get("area") != pixels[sid]["area"]:
            problems.append(
                f"{where}: segment {sid}: area {seg.get('area')} in json != "
                f"{pixels[sid]['area']} pixels in the PNG"
            )
        if not _bbox_equal(seg.get("bbox"), pixels[sid]["bbox"]):
            problems.append(
                f"{where}: segment {sid}: bbox {seg.get('bbox')} in json != "
                f"{pixels[sid]['bbox']} (xywh) from the PNG"
            )
    listed = set(seg_ids)
    for sid, info in pixels.items():
        if sid not in listed:
            problems.append(
                f"{where}: segment {sid}: {info['area']} pixels in the PNG but no segment in "
                f"{os.path.basename(json_path)}"
            )
    digest = None
    if image is not None:
        h, w = id_map.shape
        if (image.get("width"), image.get("height")) != (w, h):
            problems.append(
                f"{json_path}: image {image.get('id')}: size {image.get('width')}x"
                f"{image.get('height')} in json != PNG size {w}x{h} of {png}"
            )
        img_path = os.path.join(image_root, str(image.get("file_name")))
        d2_path = os.path.join(image_root, os.path.splitext(str(ann.get("file_name")))[0] + ".jpg")
        if not os.path.isfile(img_path):
            problems.append(f"{img_path}: image file missing (image {image.get('id')})")
        else:
            try:
                size = image_size(img_path)
                if size != (w, h):
                    problems.append(
                        f"{img_path}: image size {size[0]}x{size[1]} != PNG size {w}x{h} of {png}"
                    )
            except ValueError as e:
                problems.append(str(e))
            with open(img_path, "rb") as f:
                digest = hashlib.sha1(f.read()).hexdigest()
            if not os.path.isfile(d2_path):
                problems.append(
                    f"{d2_path}: missing; Detectron2's load_coco_panoptic_json looks for the image "
                    "as <png stem>.jpg"
                )
    return problems, digest


def _check_instances(path, pan_things, categories):
    """Check an instances json against its RLE masks and the panoptic thing segments."""
    try:
        with open(path, encoding="utf-8") as f:
            coco = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        return [f"{path}: unreadable json ({e})"]
    problems, coco = instances_structure(coco, path)
    if coco is None:
        return problems
    image_ids = {im.get("id") for im in coco.get("images", [])}
    seen, per_image = Counter(), {}
    for ann in coco.get("annotations", []):
        aid, cid = ann.get("id"), ann.get("category_id")
        seen[aid] += 1
        where = f"{path}: annotation {aid} (image {ann.get('image_id')})"
        if ann.get("image_id") not in image_ids:
            problems.append(f"{where}: image_id not in images")
        if cid not in categories or not categories[cid].get("isthing"):
            problems.append(f"{where}: category_id {cid} is not a thing category")
        seg = ann.get("segmentation")
        if isinstance(seg, dict) and "counts" in seg:
            rle = dict(seg)
            try:
                if isinstance(rle["counts"], list):
                    rle = mask_utils.frPyObjects(rle, *rle["size"])
                else:
                    rle["counts"] = rle["counts"].encode("ascii")
                area, bbox = int(mask_utils.area(rle)), mask_utils.toBbox(rle).tolist()
            except (ValueError, TypeError, UnicodeError) as e:
                problems.append(f"{where}: segmentation: not a decodable RLE ({e})")
                continue
            if area == 0:
                problems.append(f"{where}: empty mask")
            if ann.get("area") != area:
                problems.append(f"{where}: area {ann.get('area')} != {area} pixels of its mask")
            if not _bbox_equal(ann.get("bbox"), bbox):
                problems.append(f"{where}: bbox {ann.get('bbox')} != {bbox} (xywh) of its mask")
        bbox = ann.get("bbox") or [0, 0, 0, 0]
        if len(bbox) != 4 or bbox[2] <= 0 or bbox[3] <= 0:
            problems.append(f"{where}: degenerate bbox {bbox} (xywh)")
        key = (cid, ann.get("area"), tuple(np.round(bbox, 3).tolist()))
        per_image.setdefault(ann.get("image_id"), Counter())[key] += 1
    for aid, n in seen.items():
        if n > 1:
            problems.append(f"{path}: annotation id {aid} used {n} times")
    for image_id in sorted(set(per_image) | set(pan_things), key=str):
        if per_image.get(image_id, Counter()) != pan_things.get(image_id, Counter()):
            problems.append(
                f"{path}: image {image_id}: instances differ from the panoptic thing segments "
                "(category, area, bbox)"
            )
    return problems


def _check_split(split, json_path, image_root, pan_root, pool):
    try:
        with open(json_path, encoding="utf-8") as f:
            data = json.load(f)
    except (OSError, ValueError, RecursionError) as e:
        return [f"{json_path}: unreadable json ({e})"], {}
    problems, data = panoptic_structure(data, json_path)
    if data is None:
        return problems, {}
    categories = {}
    for cat in data.get("categories", []):
        if cat.get("id") in categories:
            problems.append(f"{json_path}: category id {cat.get('id')} defined twice")
        if cat.get("isthing") not in (0, 1):
            problems.append(f"{json_path}: category {cat.get('id')}: isthing must be 0 or 1")
        categories[cat.get("id")] = cat
    images = {}
    for im in data.get("images", []):
        if im.get("id") in images:
            problems.append(f"{json_path}: image id {im.get('id')} listed twice")
        images[im.get("id")] = im
    anns = data.get("annotations", [])
    for key, what in (("image_id", "image"), ("file_name", "PNG")):
        for value, n in Counter(a.get(key) for a in anns).items():
            if n > 1:
                problems.append(
                    f"{json_path}: {n} records for {what} {value} (one record per image "
                    "expected; records per mask file overwrite each other's PNG)"
                )
    annotated = {a.get("image_id") for a in anns}
    for image_id in images:
        if image_id not in annotated:
            problems.append(f"{json_path}: image {image_id} has no panoptic record")
    jobs = []
    for ann in anns:
        if ann.get("image_id") not in images:
            problems.append(f"{json_path}: record {ann.get('file_name')}: unknown image_id")
        jobs.append(
            (ann, images.get(ann.get("image_id")), categories, json_path, image_root, pan_root)
        )
    results = pool.imap(_check_record, jobs, chunksize=8) if pool else map(_check_record, jobs)
    files = {}
    for ann, (found, digest) in zip(anns, results):
        problems.extend(found)
        image = images.get(ann.get("image_id"))
        if image is not None:
            files[image.get("file_name")] = digest
    instances = os.path.join(os.path.dirname(json_path), f"instances_{split}.json")
    if os.path.isfile(instances):
        pan_things = {}
        for ann in anns:
            counter = pan_things.setdefault(ann.get("image_id"), Counter())
            for seg in ann.get("segments_info", []):
                if categories.get(seg.get("category_id"), {}).get("isthing"):
                    bbox = tuple(np.round(seg.get("bbox") or [], 3).tolist())
                    counter[(seg.get("category_id"), seg.get("area"), bbox)] += 1
        problems.extend(_check_instances(instances, pan_things, categories))
    return problems, files


def check_panoptic(root_or_json, image_root=None, panoptic_root=None, workers=1):
    """Validate a COCO-panoptic dataset root (every ``annotations/panoptic_*.json``) or one json.

    Args:
        root_or_json: dataset root or a ``panoptic_{split}.json``.
        image_root, panoptic_root: override the folders derived from the layout (json only).
        workers: processes used to read the PNGs.
    Returns:
        list of problem strings (empty when the dataset is valid), each naming the file and,
        where it applies, the segment id.
    """
    path = os.fspath(root_or_json)
    if not os.path.exists(path):
        return [f"{path}: does not exist"]
    splits = panoptic_splits(path, image_root, panoptic_root)
    if not splits:
        return [f"{os.path.join(path, 'annotations')}: no panoptic_*.json found"]
    problems, owner_of_name, owner_of_digest = [], {}, {}
    pool = mp.Pool(workers) if workers > 1 else None
    try:
        for split, json_path, img_root, pan_root in splits:
            found, files = _check_split(split, json_path, img_root, pan_root, pool)
            problems.extend(found)
            for name, digest in sorted(files.items(), key=lambda kv: str(kv[0])):
                for key, owners in ((name, owner_of_name), (digest, owner_of_digest)):
                    if key is not None and key in owners and owners[key][0] != split:
                        other_split, other_name = owners[key]
                        problems.append(
                            f"{os.path.join(img_root, str(name))}: image in two splits "
                            f"({other_split}: {other_name}, {split}: {name})"
                        )
                        break
                owner_of_name.setdefault(name, (split, name))
                if digest is not None:
                    owner_of_digest.setdefault(digest, (split, name))
    finally:
        if pool is not None:
            pool.close()
            pool.join()
    return problems
