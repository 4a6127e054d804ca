"""
Severity grades per defect and the worst grade per image, from thresholds in a YAML file.

The defaults (``severity_default.yaml`` next to this module) are a starting point for the
inspector's own code: crack width hairline < 0.1 mm, fine 0.1-0.3, medium 0.3-1.0, wide > 1.0;
spall area small < 100 cm^2, medium 100-900, large > 900 (project default); exposed rebar is
always level 3. Thresholds in mm need the image scale: without ``mm_per_pixel`` those defects are
graded ``"ungraded (no scale)"``.
"""

import math
import os

import yaml

__all__ = [
    "DEFAULT_SEVERITY_YAML",
    "NO_SCALE",
    "NO_RULE",
    "load_severity",
    "grade_defect",
    "worst_grade",
]

DEFAULT_SEVERITY_YAML = os.path.join(os.path.dirname(__file__), "severity_default.yaml")
NO_SCALE = "ungraded (no scale)"
NO_RULE = "ungraded (no rule)"
MEASURES = ("width_max_mm", "width_mean_mm", "length_mm", "area_mm2", "area_cm2", "none")


class SeverityConfigError(ValueError):
    """A severity YAML that cannot be used; the message names the file and the key."""


def _fail(path, key, problem):
    raise SeverityConfigError(f"severity file {path}: {key}: {problem}")


def _number(path, key, value):
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
        _fail(path, key, f"must be a number, got {value!r}")
    return float(value)


def load_severity(path=None):
    """
    Read and validate a severity YAML (``yaml.safe_load``); ``None`` = the defaults.

    Returns:
        dict class name -> {"measure": str, "source": str, "grades": [{"name", "min", "level"}]}
        with grades sorted by ``min``.
    Raises:
        SeverityConfigError (a ValueError) naming the file and the key, for a missing file,
        bad YAML or a bad key/value.
    """
    path = DEFAULT_SEVERITY_YAML if path is None else os.fspath(path)
    try:
        with open(path, encoding="utf-8") as f:
            data = yaml.safe_load(f)
    except FileNotFoundError:
        raise SeverityConfigError(f"severity file {path}: not found") from None
    except (OSError, UnicodeDecodeError) as e:
        raise SeverityConfigError(f"severity file {path}: cannot be read ({e})") from None
    except yaml.YAMLError as e:
        raise SeverityConfigError(f"severity file {path}: not valid YAML ({e})") from None
    if not isinstance(data, dict) or not isinstance(data.get("classes"), dict):
        _fail(path, "classes", "missing: the file must hold a mapping `classes: {name: {...}}`")
    unknown = set(data) - {"version", "classes"}
    if unknown:
        _fail(path, sorted(unknown)[0], "unknown top-level key (expected `version`, `classes`)")
    rules = {}
    for name, rule in data["classes"].items():
        key = f"classes.{name}"
        if not isinstance(rule, dict):
            _fail(path, key, "must be a mapping with `measure` and `grades`")
        extra = set(rule) - {"measure", "grades", "source"}
        if extra:
            _fail(path, f"{key}.{sorted(extra)[0]}", "unknown key (use measure, grades, source)")
        measure = rule.get("measure")
        if measure not in MEASURES:
            _fail(path, f"{key}.measure", f"{measure!r} is not one of {', '.join(MEASURES)}")
        grades = rule.get("grades")
        if not isinstance(grades, list) or not grades:
            _fail(path, f"{key}.grades", "must be a non-empty list of {name, min, level}")
        checked = []
        for i, g in enumerate(grades):
            gkey = f"{key}.grades[{i}]"
            if not isinstance(g, dict) or set(g) != {"name", "min", "level"}:
                _fail(path, gkey, f"must have exactly the keys name, min, level; got {g!r}")
            if not isinstance(g["name"], str) or not g["name"].strip():
                _fail(path, f"{gkey}.name", "must be a non-empty string")
            level = g["level"]
            if isinstance(level, bool) or not isinstance(level, int) or level < 0:
                _fail(path, f"{gkey}.level", f"must be an integer >= 0, got {level!r}")
            checked.append(
                {"name": g["name"], "min": _number(path, f"{gkey}.min", g["min"]), "level": level}
            )
        mins = [g["min"] for g in checked]
        if mins != sorted(mins) or len(set(mins)) != len(mins):
            _fail(path, f"{key}.grades", f"`min` values must increase strictly, got {mins}")
        rules[str(name)] = {
            "measure": measure,
            "source": str(rule.get("source", "")),
            "grades": checked,
        }
    return rules


def _value(measure, row):
    if measure == "area_cm2":
        v = row.get("area_mm2")
        return None if v is None else v / 100.0
    return row.get(measure)


def grade_defect(class_name, row, rules):
    """
    Args:
        class_name: the defect's class.
        row: its measurements (``measure_defect`` output or a report row).
        rules: ``load_severity()`` output.
    Returns:
        (grade name, level): level is None for ``NO_SCALE`` / ``NO_RULE``.
    """
    rule = rules.get(class_name)
    if rule is None:
        return NO_RULE, None
    grades = rule["grades"]
    if rule["measure"] == "none":
        return grades[0]["name"], grades[0]["level"]
    value = _value(rule["measure"], row)
    if value is None:
        return NO_SCALE, None
    chosen = grades[0]
    for g in grades:
        if value >= g["min"]:
            chosen = g
    return chosen["name"], chosen["level"]


def worst_grade(defects):
    """
    Worst grade of an image from its defect rows (keys ``class``, ``grade``, ``grade_level``):
    ``"<class>: <grade>"`` of the highest level (first such defect on a tie); ``NO_SCALE`` when
    there are defects but none could be graded; ``"none"`` without defects.
    """
    graded = [d for d in defects if d.get("grade_level") is not None]
    if graded:
        top = max(graded, key=lambda d: d["grade_level"])
        return f"{top['class']}: {top['grade']}", top["grade_level"]
    if any(d.get("grade") == NO_SCALE for d in defects):
        return NO_SCALE, None
    if defects:
        return NO_RULE, None
    return "none", None
