"""Structure of COCO panoptic / instances json files: every malformed part as a located problem.

:func:`panoptic_structure` and :func:`instances_structure` check types and required keys
(a list where a list belongs, integer ids, a 4-number bbox, ...) and return the problems, each
naming the file and the json path (``annotations[3].segments_info``), plus a copy of the data
with the malformed parts left out, so the content checks of ``validation.py`` run on what is
well-formed and never crash on the rest.
"""

import numbers

__all__ = ["panoptic_structure", "instances_structure", "json_type"]


def json_type(value):
    """The json name of a Python value's type (for messages)."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "a boolean"
    if isinstance(value, dict):
        return "an object"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str):
        return "a string"
    if isinstance(value, numbers.Number):
        return f"the number {value}"
    return type(value).__name__


def _is_int(v):
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v):
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and v == v


def _is_bbox(v):
    return isinstance(v, list) and len(v) == 4 and all(_is_number(x) for x in v)


_CHECKS = {
    "int": (_is_int, "an integer"),
    "number": (_is_number, "a number"),
    "str": (lambda v: isinstance(v, str), "a string"),
    "bbox": (_is_bbox, "a list of 4 numbers [x, y, w, h]"),
    "list": (lambda v: isinstance(v, list), "a list"),
    "0/1": (lambda v: _is_int(v) and v in (0, 1), "0 or 1"),
}


class _Checker:
    def __init__(self, json_path):
        self.json_path = json_path
        self.problems = []

    def add(self, where, message):
        self.problems.append(f"{self.json_path}: {where}: {message}")

    def fields(self, obj, where, fatal, soft=(), optional=()):
        """Check a dict's fields; returns the dict without its bad soft fields, or None.

        A bad or missing ``fatal`` field drops the whole entry (None); a bad or missing
        ``soft`` field (or a bad ``optional`` one) is reported and left out of the copy, so the
        content checks report its value as absent instead of crashing on it.
        """
        if not isinstance(obj, dict):
            self.add(where, f"expected an object, got {json_type(obj)}")
            return None
        ok, bad = True, set()
        for group, is_fatal, must in (
            (fatal, True, True),
            (soft, False, True),
            (optional, False, False),
        ):
            for key, kind in group:
                if key not in obj:
                    if must:
                        self.add(where, f"missing key {key!r}")
                        ok = ok and not is_fatal
                    continue
                check, expected = _CHECKS[kind]
                if not check(obj[key]):
                    self.add(f"{where}.{key}", f"expected {expected}, got {json_type(obj[key])}")
                    ok = ok and not is_fatal
                    bad.add(key)
        return {k: v for k, v in obj.items() if k not in bad} if ok else None

    def top_list(self, data, key):
        """data[key] when it is a list, else [] (with a problem)."""
        if key not in data:
            self.add("top level", f"missing key {key!r}")
            return []
        if not isinstance(data[key], list):
            self.add(key, f"expected a list, got {json_type(data[key])}")
            return []
        return data[key]


def _top(checker, data):
    if not isinstance(data, dict):
        checker.add(
            "top level",
            f"expected an object with images/annotations/categories, got " f"{json_type(data)}",
        )
        return False
    return True


def _categories(checker, data):
    out = []
    for i, cat in enumerate(checker.top_list(data, "categories")):
        cat = checker.fields(cat, f"categories[{i}]", [("id", "int")], [("name", "str")])
        if cat is not None:
            out.append(cat)
    return out


def _images(checker, data):
    out = []
    for i, im in enumerate(checker.top_list(data, "images")):
        fatal = [("id", "int"), ("file_name", "str")]
        im = checker.fields(im, f"images[{i}]", fatal, [("width", "int"), ("height", "int")])
        if im is not None:
            out.append(im)
    return out


def _structure(data, json_path, check_annotation):
    """Top level, categories and images; ``check_annotation(checker, ann, where)`` returns the
    clean annotation or None. Returns (problems, clean or None)."""
    checker = _Checker(json_path)
    if not _top(checker, data):
        return checker.problems, None
    clean = {"categories": _categories(checker, data), "images": _images(checker, data)}
    annotations = checker.top_list(data, "annotations")
    checked = (check_annotation(checker, a, f"annotations[{i}]") for i, a in enumerate(annotations))
    clean["annotations"] = [a for a in checked if a is not None]
    return checker.problems, clean


def _panoptic_record(checker, ann, where):
    fatal = [("image_id", "int"), ("file_name", "str"), ("segments_info", "list")]
    ann = checker.fields(ann, where, fatal)
    if ann is None:
        return None
    segments = []
    for j, seg in enumerate(ann["segments_info"]):
        fatal = [("id", "int"), ("category_id", "int")]
        soft = [("area", "number"), ("bbox", "bbox")]
        optional = [("iscrowd", "0/1"), ("isthing", "0/1")]
        seg = checker.fields(seg, f"{where}.segments_info[{j}]", fatal, soft, optional)
        if seg is not None:
            segments.append(seg)
    return dict(ann, segments_info=segments)


def panoptic_structure(data, json_path):
    """Check a loaded panoptic json.

    Returns:
        problems: list of strings ``"<json_path>: <json path>: <what is wrong>"``.
        clean: dict with ``categories``, ``images``, ``annotations`` holding only well-formed
            entries (a record keeps its well-formed segments), or None if the top level is
            not an object.
    """
    return _structure(data, json_path, _panoptic_record)


def _segmentation_ok(seg):
    if isinstance(seg, list):
        return all(isinstance(p, list) and all(_is_number(x) for x in p) for p in seg)
    if isinstance(seg, dict):
        size, counts = seg.get("size"), seg.get("counts")
        size_ok = isinstance(size, list) and len(size) == 2 and all(_is_int(x) for x in size)
        counts_ok = isinstance(counts, str) or (
            isinstance(counts, list) and all(_is_int(x) for x in counts)
        )
        return size_ok and counts_ok
    return False


def _instance(checker, ann, where):
    fatal = [("id", "int"), ("image_id", "int"), ("category_id", "int")]
    soft = [("bbox", "bbox"), ("area", "number")]
    ann = checker.fields(ann, where, fatal, soft, [("iscrowd", "0/1")])
    if ann is not None and "segmentation" in ann and not _segmentation_ok(ann["segmentation"]):
        checker.add(
            f"{where}.segmentation",
            "expected polygons (list of lists of numbers) or an RLE "
            f"{{'size': [h, w], 'counts': ...}}, got {json_type(ann['segmentation'])}",
        )
        return None
    return ann


def instances_structure(data, json_path):
    """Check a loaded COCO instances json; returns (problems, clean) like
    :func:`panoptic_structure` (``annotations`` with id, image_id, category_id, bbox, area and
    a polygon list or an RLE ``{"size": [h, w], "counts": str | list}``)."""
    return _structure(data, json_path, _instance)
