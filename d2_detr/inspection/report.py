"""
Defect report for inspectors, from panoptic predictions: one row per defect (class, score, area,
bbox, centre-line length, width, orientation, mm values with a scale, severity grade) and one row
per image (status, counts per class, worst grade); written as ``defects.csv``, ``images.csv``,
``defect_report.json`` and ``report.html``.

API (used by ``demo/``)::

    report = DefectReport(class_names, defect_classes=thing_classes, mm_per_pixel=0.2,
                          severity=None)            # None = severity_default.yaml; or a path
    report.add("sub/img1.jpg", panoptic_seg, segments_info, overlay="overlays/sub/img1.jpg")
    report.add_unreadable("sub/broken.jpg", "cannot decode the file")
    paths = report.write(output_folder)  # {"defects_csv", "images_csv", "json", "html"}

``image`` is the row key: the image's path relative to the input root (forward slashes).
``overlay`` is the overlay picture's path relative to ``output_folder`` (used by the HTML page).
Without ``mm_per_pixel`` every measurement is in pixels only, the mm columns are empty and the
report says so; crack/spall grades are then ``"ungraded (no scale)"``.
"""

import csv
import io
import os

import numpy as np
from scipy import ndimage

from d2_detr.utils.io import atomic_write_json, atomic_write_text

from .measure import KINDS, measure_defect
from .severity import grade_defect, load_severity, worst_grade

__all__ = ["DefectReport", "defects_from_panoptic", "DEFECT_FIELDS", "IMAGE_FIELDS"]

DEFECT_FIELDS = [
    "image",
    "defect_id",
    "class",
    "grade",
    "score",
    "area_px",
    "area_pct",
    "length_px",
    "width_max_px",
    "width_mean_px",
    "orientation_deg",
    "area_mm2",
    "length_mm",
    "width_max_mm",
    "width_mean_mm",
    "bbox_x0",
    "bbox_y0",
    "bbox_x1",
    "bbox_y1",
]
IMAGE_FIELDS_HEAD = ["image", "status", "reason", "height", "width", "num_defects"]
IMAGE_FIELDS_TAIL = ["defect_area_pct", "worst_grade"]
IMAGE_FIELDS = IMAGE_FIELDS_HEAD + IMAGE_FIELDS_TAIL  # plus num_<class> in between


# Report precision: 0.01 px (well below the measured accuracy), 0.001 mm, 0.01 mm^2.
_DECIMALS = {"length_mm": 3, "width_max_mm": 3, "width_mean_mm": 3, "area_mm2": 2}


def _kind_of(class_name, kinds):
    if kinds is not None and class_name in kinds:
        return kinds[class_name]
    return class_name if class_name in KINDS else None


def defects_from_panoptic(
    image,
    panoptic_seg,
    segments_info,
    class_names,
    include_stuff=False,
    mm_per_pixel=None,
    severity=None,
    kinds=None,
):
    """
    Args:
        image: the row key (the image's path relative to the input root).
        panoptic_seg: (H, W) int array/tensor of segment ids (0 = void).
        segments_info: list of dicts with "id", "category_id" (contiguous), "isthing" and
            optional "score".
        class_names: contiguous id -> name (Detectron2's ``stuff_classes`` for panoptic data).
        include_stuff: also report stuff segments (by default only things are defects).
        mm_per_pixel: image scale or None (pixels only).
        severity: ``load_severity()`` rules (None = the defaults).
        kinds: class name -> measure kind ("crack", "spall", "rebar"); default: the class name
            when it is a kind; classes of no kind get area and bbox only.
    Returns:
        list of dicts with the keys of ``DEFECT_FIELDS`` (+ ``grade_level``); bbox in pixels,
        x1/y1 exclusive; mm values None without a scale.
    """
    rules = load_severity() if severity is None else severity
    seg = np.asarray(panoptic_seg.cpu() if hasattr(panoptic_seg, "cpu") else panoptic_seg)
    total = seg.shape[0] * seg.shape[1]
    # each segment's bounding box in one pass, so a 12-MP photo is not scanned once per defect
    boxes = ndimage.find_objects(np.maximum(seg, 0)) if 0 < seg.max() < 2**24 else []
    rows = []
    for info in segments_info:
        if not info.get("isthing", True) and not include_stuff:
            continue
        sid = int(info["id"])
        box = boxes[sid - 1] if 0 < sid <= len(boxes) else None
        if box is None:  # absent (or ids out of find_objects' range): scan the whole image
            box = (slice(0, seg.shape[0]), slice(0, seg.shape[1])) if not boxes else None
        if box is None:
            continue
        mask = seg[box] == sid
        ys, xs = np.nonzero(mask)
        if len(ys) == 0:
            continue
        ys, xs = ys + box[0].start, xs + box[1].start
        name = class_names[info["category_id"]]
        score = info.get("score")
        row = {k: None for k in DEFECT_FIELDS}
        row.update(
            {
                "image": image,
                "defect_id": sid,
                "class": name,
                "score": None if score is None else round(float(score), 4),
                "area_px": int(len(ys)),
                "area_pct": round(100.0 * len(ys) / total, 4),
                "bbox_x0": int(xs.min()),
                "bbox_y0": int(ys.min()),
                "bbox_x1": int(xs.max()) + 1,
                "bbox_y1": int(ys.max()) + 1,
            }
        )
        kind = _kind_of(name, kinds)
        if kind is not None:
            y0, y1, x0, x1 = row["bbox_y0"], row["bbox_y1"], row["bbox_x0"], row["bbox_x1"]
            m = measure_defect(seg[y0:y1, x0:x1] == sid, kind, mm_per_pixel)
            for key in DEFECT_FIELDS:
                if key in m and key != "area_px" and m[key] is not None:
                    row[key] = round(m[key], _DECIMALS.get(key, 2))
        elif mm_per_pixel is not None:
            row["area_mm2"] = round(len(ys) * float(mm_per_pixel) ** 2, 2)
        row["grade"], row["grade_level"] = grade_defect(name, row, rules)
        rows.append(row)
    return rows


FORMULA_STARTS = ("=", "+", "-", "@", "\t", "\r")


def spreadsheet_safe(row):
    """A CSV row whose text cells cannot run as spreadsheet formulas: text starting with
    ``= + - @`` (or a tab / carriage return), e.g. a photo named ``=HYPERLINK(...).jpg``, gets a
    leading ``'`` (OWASP's CSV-injection rule); numbers are left as they are."""
    return {
        k: "'" + v if isinstance(v, str) and v.startswith(FORMULA_STARTS) else v
        for k, v in row.items()
    }


class DefectReport:
    """
    Accumulates defects image by image (see the module docstring for the API); ``write(folder)``
    produces the CSV, JSON and HTML files.
    """

    def __init__(
        self,
        class_names,
        defect_classes=None,
        include_stuff=False,
        mm_per_pixel=None,
        severity=None,
        kinds=None,
    ):
        """
        Args:
            class_names: contiguous id -> name.
            defect_classes: names counted per image (default: all ``class_names``).
            mm_per_pixel: image scale (float > 0) or None: pixels only.
            severity: path of a severity YAML, already loaded rules (dict), or None (defaults).
            kinds: class name -> measure kind (see ``defects_from_panoptic``).
        """
        if mm_per_pixel is not None and not (float(mm_per_pixel) > 0):
            raise ValueError(f"mm_per_pixel={mm_per_pixel!r} must be > 0 (or None: pixels only)")
        self.class_names = list(class_names)
        self.defect_classes = list(defect_classes or class_names)
        self.include_stuff = include_stuff
        self.mm_per_pixel = None if mm_per_pixel is None else float(mm_per_pixel)
        self.severity_source = (
            "default" if not isinstance(severity, (str, os.PathLike)) else str(severity)
        )
        self.severity = severity if isinstance(severity, dict) else load_severity(severity)
        self.kinds = kinds
        self.images = []

    def add(self, image, panoptic_seg, segments_info, overlay=None):
        """Add one image's prediction (``overlay``: picture path relative to the report folder);
        returns its defect rows."""
        rows = defects_from_panoptic(
            image,
            panoptic_seg,
            segments_info,
            self.class_names,
            self.include_stuff,
            self.mm_per_pixel,
            self.severity,
            self.kinds,
        )
        h, w = panoptic_seg.shape[-2:]
        counts = {c: 0 for c in self.defect_classes}
        for r in rows:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
        worst, level = worst_grade(rows)
        self.images.append(
            {
                "image": image,
                "status": "ok",
                "reason": "",
                "height": int(h),
                "width": int(w),
                "num_defects": len(rows),
                "counts": counts,
                "defect_area_pct": round(sum(r["area_pct"] for r in rows), 4),
                "worst_grade": worst,
                "worst_level": level,
                "overlay": overlay,
                "defects": rows,
            }
        )
        return rows

    def add_unreadable(self, image, reason, status="unreadable"):
        """Record an image that could not be read (status "unreadable" with the reason), or
        (``status="error"``) one whose processing failed."""
        self.images.append(
            {
                "image": image,
                "status": status,
                "reason": str(reason),
                "height": None,
                "width": None,
                "num_defects": 0,
                "counts": {c: 0 for c in self.defect_classes},
                "defect_area_pct": None,
                "worst_grade": "",
                "worst_level": None,
                "overlay": None,
                "defects": [],
            }
        )

    @property
    def defects(self):
        return [r for im in self.images for r in im["defects"]]

    def totals(self):
        counts = {c: 0 for c in self.defect_classes}
        grades = {}
        for r in self.defects:
            counts[r["class"]] = counts.get(r["class"], 0) + 1
            per_class = grades.setdefault(r["class"], {})
            per_class[r["grade"]] = per_class.get(r["grade"], 0) + 1
        return {
            "images": len(self.images),
            "images_unreadable": sum(1 for im in self.images if im["status"] != "ok"),
            "images_with_defects": sum(1 for im in self.images if im["num_defects"]),
            "defects": len(self.defects),
            "counts": counts,
            "grades": grades,
        }

    def units_note(self):
        if self.mm_per_pixel is None:
            return (
                "No image scale given (mm_per_pixel): measurements are in pixels only; crack and "
                "spall grades need a scale and are 'ungraded (no scale)'."
            )
        return (
            f"Image scale: {self.mm_per_pixel:g} mm per pixel "
            "(lengths and widths in mm, areas in mm^2)."
        )

    def to_json(self):
        images = [{k: v for k, v in im.items() if k != "worst_level"} for im in self.images]
        return {
            "classes": self.defect_classes,
            "mm_per_pixel": self.mm_per_pixel,
            "units": "px and mm" if self.mm_per_pixel else "px only (no mm_per_pixel given)",
            "units_note": self.units_note(),
            "severity": {"source": self.severity_source, "rules": self.severity},
            "totals": self.totals(),
            "images": images,
        }

    def image_rows(self):
        """Rows of images.csv."""
        out = []
        for im in self.images:
            row = {k: im[k] for k in IMAGE_FIELDS_HEAD}
            row.update({f"num_{c}": im["counts"].get(c, 0) for c in self.defect_classes})
            row.update({k: im[k] for k in IMAGE_FIELDS_TAIL})
            out.append(row)
        return out

    def write(self, folder):
        """Write ``defects.csv``, ``images.csv``, ``defect_report.json``, ``report.html`` into
        ``folder``; returns their paths (keys defects_csv, images_csv, json, html)."""
        from .html import write_html_report

        os.makedirs(folder, exist_ok=True)
        paths = {
            "defects_csv": os.path.join(folder, "defects.csv"),
            "images_csv": os.path.join(folder, "images.csv"),
            "json": os.path.join(folder, "defect_report.json"),
            "html": os.path.join(folder, "report.html"),
        }
        out = io.StringIO()
        writer = csv.DictWriter(out, fieldnames=DEFECT_FIELDS, extrasaction="ignore")
        writer.writeheader()
        writer.writerows(map(spreadsheet_safe, self.defects))
        atomic_write_text(paths["defects_csv"], out.getvalue(), newline="")
        out = io.StringIO()
        fields = IMAGE_FIELDS_HEAD + [f"num_{c}" for c in self.defect_classes] + IMAGE_FIELDS_TAIL
        writer = csv.DictWriter(out, fieldnames=fields)
        writer.writeheader()
        writer.writerows(map(spreadsheet_safe, self.image_rows()))
        atomic_write_text(paths["images_csv"], out.getvalue(), newline="")
        atomic_write_json(paths["json"], self.to_json(), indent=2)
        write_html_report(self, paths["html"])
        return paths
