"""COCO json writers: one panoptic json and one instances json (RLE masks) per split."""

import os

import numpy as np
from pycocotools import mask as mask_utils

from ..categories import CONCRETE_DEFECT_CATEGORIES
from ..panoptic_format import write_json

__all__ = ["thing_rles", "write_split_jsons"]

INFO = {"description": "concrete defects, converted by d2_detr.data.conversion"}


def thing_rles(id_map, segments, thing_ids):
    """Compressed RLE (json-ready) of every segment whose category is in ``thing_ids``.

    Returns:
        dict segment id -> {"size": [H, W], "counts": str}.
    """
    fortran = np.asfortranarray(id_map)
    rles = {}
    for seg in segments:
        if seg["category_id"] in thing_ids:
            rle = mask_utils.encode((fortran == seg["id"]).view(np.uint8))
            rles[seg["id"]] = {"size": list(rle["size"]), "counts": rle["counts"].decode("ascii")}
    return rles


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


def write_split_jsons(out, split, records, categories=CONCRETE_DEFECT_CATEGORIES):
    """Write ``annotations/panoptic_{split}.json`` and ``instances_{split}.json`` under ``out``.

    Args:
        records: per-image dicts with stem, image_id, width, height, segments, rles.
    """
    ann_dir = os.path.join(out, "annotations")
    images = _coco_images(records)
    panoptic = {
        "info": INFO,
        "licenses": [],
        "categories": categories,
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
    instances = []
    for r in records:
        for seg in r["segments"]:
            if seg["id"] not in r["rles"]:
                continue
            instances.append(
                {
                    "id": len(instances) + 1,
                    "image_id": r["image_id"],
                    "category_id": seg["category_id"],
                    "segmentation": r["rles"][seg["id"]],
                    "area": seg["area"],
                    "bbox": seg["bbox"],
                    "iscrowd": 0,
                }
            )
    things = [c for c in categories if c["isthing"]]
    coco = {"info": INFO, "licenses": [], "categories": things, "images": images}
    coco["annotations"] = instances
    write_json(os.path.join(ann_dir, f"instances_{split}.json"), coco)
