"""Defect report for inspectors: per defect (image, class, area in px and %, bbox, score) and
per image counts, from panoptic predictions; written as CSV and JSON."""

import csv
import io
import json
import os

import numpy as np

__all__ = ["DefectReport", "defects_from_panoptic"]

DEFECT_FIELDS = [
    "image",
    "defect_id",
    "class",
    "area_px",
    "area_pct",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
    "score",
]


def defects_from_panoptic(image, panoptic_seg, segments_info, class_names, include_stuff=False):
    """
    Args:
        image: name of the image (used as the row key).
        panoptic_seg: (H, W) int array/tensor of segment ids (0 = void).
        segments_info: list of dicts with "id", "category_id" (contiguous), "isthing" and
            optional "score".
        class_names: contiguous id -> name (Detectron2's ``stuff_classes`` for panoptic data).
        include_stuff: also report stuff segments (by default only things are defects).
    Returns:
        list of dicts with the keys of ``DEFECT_FIELDS``; bbox in pixels, x1/y1 exclusive.
    """
    seg = np.asarray(panoptic_seg.cpu() if hasattr(panoptic_seg, "cpu") else panoptic_seg)
    total = seg.shape[0] * seg.shape[1]
    rows = []
    for info in segments_info:
        if not info.get("isthing", True) and not include_stuff:
            continue
        ys, xs = np.nonzero(seg == info["id"])
        if len(ys) == 0:
            continue
        score = info.get("score")
        rows.append(
            {
                "image": image,
                "defect_id": int(info["id"]),
                "class": class_names[info["category_id"]],
                "area_px": int(len(ys)),
                "area_pct": round(100.0 * len(ys) / total, 4),
                "bbox_x0": int(xs.min()),
                "bbox_y0": int(ys.min()),
                "bbox_x1": int(xs.max()) + 1,
                "bbox_y1": int(ys.max()) + 1,
                "score": None if score is None else round(float(score), 4),
            }
        )
    return rows


def _write_atomic(path, text):
    tmp = f"{path}.tmp"
    with open(tmp, "w", newline="") as f:
        f.write(text)
    os.replace(tmp, path)


class DefectReport:
    """
    Accumulates defects image by image; ``write(folder)`` produces ``defects.csv`` (one row per
    defect), ``images.csv`` (one row per image: size, count per class, defect area %) and
    ``defect_report.json`` (both, plus totals).
    """

    def __init__(self, class_names, defect_classes=None, include_stuff=False):
        """
        Args:
            class_names: contiguous id -> name.
            defect_classes: names counted per image (default: all ``class_names``).
        """
        self.class_names = list(class_names)
        self.defect_classes = list(defect_classes or class_names)
        self.include_stuff = include_stuff
        self.images = []

    def add(self, image, panoptic_seg, segments_info):
        """Add one image's prediction; returns its defect rows."""
        rows = defects_from_panoptic(
            image, panoptic_seg, segments_info, self.class_names, self.include_stuff
        )
        h, w = np.asarray(panoptic_seg.shape[-2:])
        counts = {c: 0 for c in self.defect_classes}
        for r in rows:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
        self.images.append(
            {
                "image": image,
                "height": int(h),
                "width": int(w),
                "num_defects": len(rows),
                "counts": counts,
                "defect_area_pct": round(sum(r["area_pct"] for r in rows), 4),
                "defects": rows,
            }
        )
        return rows

    @property
    def defects(self):
        return [r for im in self.images for r in im["defects"]]

    def totals(self):
        counts = {c: 0 for c in self.defect_classes}
        for r in self.defects:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
        return {
            "images": len(self.images),
            "images_with_defects": sum(1 for im in self.images if im["num_defects"]),
            "defects": len(self.defects),
            "counts": counts,
        }

    def to_json(self):
        return {"classes": self.defect_classes, "totals": self.totals(), "images": self.images}

    def write(self, folder):
        """Write the CSV and JSON files into ``folder``; returns their paths."""
        os.makedirs(folder, exist_ok=True)
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=DEFECT_FIELDS)
        writer.writeheader()
        writer.writerows(self.defects)
        paths = {
            "defects_csv": os.path.join(folder, "defects.csv"),
            "images_csv": os.path.join(folder, "images.csv"),
            "json": os.path.join(folder, "defect_report.json"),
        }
        _write_atomic(paths["defects_csv"], out.getvalue())
        out = io.StringIO()
        fields = ["image", "height", "width", "num_defects"] + [
            f"num_{c}" for c in self.defect_classes
        ]
        writer = csv.DictWriter(out, fieldnames=fields + ["defect_area_pct"])
        writer.writeheader()
        for im in self.images:
            row = {k: im[k] for k in ("image", "height", "width", "num_defects")}
            row.update({f"num_{c}": im["counts"].get(c, 0) for c in self.defect_classes})
            row["defect_area_pct"] = im["defect_area_pct"]
            writer.writerow(row)
        _write_atomic(paths["images_csv"], out.getvalue())
        _write_atomic(paths["json"], json.dumps(self.to_json(), indent=2) + "\n")
        return paths
