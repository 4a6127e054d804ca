"""Severity grades: default thresholds, no-scale case, worst grade, user YAML validation."""

import pytest

from d2_detr.inspection.severity import (
    NO_RULE,
    NO_SCALE,
    SeverityConfigError,
    grade_defect,
    load_severity,
    worst_grade,
)


@pytest.fixture(scope="module")
def rules():
    return load_severity()


@pytest.mark.parametrize(
    "width_mm,grade",
    [(0.05, "hairline"), (0.0999, "hairline"), (0.1, "fine"), (0.29, "fine"), (0.3, "medium"),
     (0.99, "medium"), (1.0, "wide"), (4.2, "wide")],
)  # fmt: skip
def test_crack_width_classes(rules, width_mm, grade):
    assert grade_defect("crack", {"width_max_mm": width_mm}, rules)[0] == grade


def test_spall_area_rebar_and_unknown(rules):
    assert grade_defect("spall", {"area_mm2": 50 * 100.0}, rules) == ("small", 1)
    assert grade_defect("spall", {"area_mm2": 150 * 100.0}, rules) == ("medium", 2)
    assert grade_defect("spall", {"area_mm2": 1000 * 100.0}, rules) == ("large", 3)
    assert grade_defect("rebar", {}, rules) == ("exposed", 3)  # needs no scale
    assert grade_defect("efflorescence", {"area_mm2": 5.0}, rules) == (NO_RULE, None)
    assert rules["crack"]["source"] and "Eurocode" in rules["crack"]["source"]


def test_without_scale_is_ungraded(rules):
    assert grade_defect("crack", {"width_max_px": 12.0, "width_max_mm": None}, rules) == (
        NO_SCALE,
        None,
    )
    assert grade_defect("spall", {"area_px": 900}, rules) == (NO_SCALE, None)


def test_worst_grade(rules):
    rows = [
        {"class": "crack", "grade": "fine", "grade_level": 1},
        {"class": "spall", "grade": "medium", "grade_level": 2},
        {"class": "crack", "grade": "medium", "grade_level": 2},
    ]
    assert worst_grade(rows) == ("spall: medium", 2)
    assert worst_grade([{"class": "crack", "grade": NO_SCALE, "grade_level": None}]) == (
        NO_SCALE,
        None,
    )
    assert worst_grade([]) == ("none", None)


def test_user_yaml(tmp_path):
    path = tmp_path / "mine.yaml"
    path.write_text(
        "classes:\n  crack:\n    measure: width_mean_mm\n    grades:\n"
        "      - {name: ok, min: 0, level: 0}\n      - {name: repair, min: 0.2, level: 3}\n"
    )
    rules = load_severity(path)
    assert grade_defect("crack", {"width_mean_mm": 0.25}, rules) == ("repair", 3)
    assert grade_defect("crack", {"width_mean_mm": 0.15}, rules) == ("ok", 0)
    assert "spall" not in rules


@pytest.mark.parametrize(
    "text,key",
    [
        ("classes: [1, 2]", "classes"),
        ("clases: {}", "classes"),
        ("classes: {crack: {measure: width_px, grades: []}}", "classes.crack.measure"),
        ("classes: {crack: {measure: width_max_mm, grades: []}}", "classes.crack.grades"),
        (
            "classes: {crack: {measure: width_max_mm, grades: [{name: a, min: x, level: 0}]}}",
            "classes.crack.grades[0].min",
        ),
        (
            "classes: {crack: {measure: width_max_mm, grades: [{name: a, min: 0}]}}",
            "classes.crack.grades[0]",
        ),
        (
            "classes: {crack: {measure: none, grades: "
            "[{name: a, min: 1, level: 0}, {name: b, min: 0.5, level: 1}]}}",
            "classes.crack.grades",
        ),
        ("classes: {crack: {measure: none, grades: [{name: a, min: 0, level: -1}]}}", "level"),
        ("classes: {crack: {measure: none, grade: []}}", "classes.crack.grade"),
        ("classes: {crack: [\n", "not valid YAML"),
        ("!!python/object/apply:os.system ['true']", "not valid YAML"),
    ],
)
def test_bad_yaml_names_file_and_key(tmp_path, text, key):
    path = tmp_path / "bad.yaml"
    path.write_text(text)
    with pytest.raises(SeverityConfigError) as info:
        load_severity(path)
    assert str(path) in str(info.value) and key in str(info.value)


def test_missing_file(tmp_path):
    with pytest.raises(ValueError, match="not found"):
        load_severity(tmp_path / "nope.yaml")
