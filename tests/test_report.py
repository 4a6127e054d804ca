"""Defect report: rows, measurements, grades, per-image counts, CSV and JSON agree with
hand-made segments."""

import csv
import json

import numpy as np
import pytest
import torch

from d2_detr.inspection import DefectReport, defects_from_panoptic

CLASSES = ["rebar", "spall", "crack", "background"]


def _image_a():
    pan = np.zeros((10, 20), dtype=np.int32)
    pan[:] = 3  # background stuff
    pan[2:4, 5:15] = 1  # rebar: 2 x 10 = 20 px
    pan[6:9, 0:3] = 2  # crack: 3 x 3 = 9 px
    pan[9, 19] = 0  # void
    infos = [
        {"id": 1, "category_id": 0, "isthing": True, "score": 0.95},
        {"id": 2, "category_id": 2, "isthing": True, "score": 0.9},
        {"id": 3, "category_id": 3, "isthing": False, "score": 0.99},
    ]
    return pan, infos


def test_rows_have_area_percent_bbox_score():
    pan, infos = _image_a()
    rows = defects_from_panoptic("a.jpg", torch.from_numpy(pan), infos, CLASSES)
    assert [r["class"] for r in rows] == ["rebar", "crack"]  # stuff left out
    rebar, crack = rows
    assert rebar["area_px"] == 20 and rebar["area_pct"] == pytest.approx(10.0)
    assert (rebar["bbox_x0"], rebar["bbox_y0"], rebar["bbox_x1"], rebar["bbox_y1"]) == (5, 2, 15, 4)
    assert crack["area_px"] == 9 and crack["area_pct"] == pytest.approx(4.5)
    assert (crack["bbox_x0"], crack["bbox_y0"], crack["bbox_x1"], crack["bbox_y1"]) == (0, 6, 3, 9)
    assert rebar["score"] == 0.95 and rebar["image"] == "a.jpg"
    with_stuff = defects_from_panoptic("a.jpg", pan, infos, CLASSES, include_stuff=True)
    assert with_stuff[-1]["class"] == "background" and with_stuff[-1]["area_px"] == 200 - 29 - 1


def _two_images_written(folder, first="a.jpg", second="b.jpg"):
    """Report of image A (2 defects) and a defect-free image, written to ``folder``."""
    report = DefectReport(CLASSES, defect_classes=CLASSES[:3])
    pan, infos = _image_a()
    report.add(first, pan, infos)
    report.add(second, np.full((4, 4), 7), [{"id": 7, "category_id": 3, "isthing": False}])
    return report, report.write(str(folder))


def test_report_files(tmp_path):
    report, paths = _two_images_written(tmp_path)

    with open(paths["defects_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert [(r["image"], r["class"], r["area_px"]) for r in rows] == [
        ("a.jpg", "rebar", "20"),
        ("a.jpg", "crack", "9"),
    ]
    with open(paths["images_csv"]) as f:
        images = list(csv.DictReader(f))
    assert images[0]["num_rebar"] == "1" and images[0]["num_crack"] == "1"
    assert images[0]["num_spall"] == "0" and float(images[0]["defect_area_pct"]) == 14.5
    assert images[1]["num_defects"] == "0" and images[1]["height"] == "4"

    data = json.load(open(paths["json"]))
    assert data["totals"] == {
        "images": 2,
        "images_with_defects": 1,
        "defects": 2,
        "images_unreadable": 0,
        "counts": {"rebar": 1, "spall": 0, "crack": 1},
        "grades": {"rebar": {"exposed": 1}, "crack": {"ungraded (no scale)": 1}},
    }
    assert data["images"][0]["defects"][0]["bbox_x1"] == 15
    assert not list(tmp_path.glob("*.tmp"))


def _crack_image():
    pan = np.zeros((60, 120), dtype=np.int32)
    pan[20:24, 10:110] = 5  # a horizontal crack, 4 px wide, 100 px long
    pan[40:50, 30:60] = 6  # a 10 x 30 px spall
    infos = [
        {"id": 5, "category_id": 2, "isthing": True, "score": 0.8},
        {"id": 6, "category_id": 1, "isthing": True, "score": 0.7},
    ]
    return pan, infos


def test_measurements_mm_and_grades(tmp_path):
    pan, infos = _crack_image()
    report = DefectReport(CLASSES, defect_classes=CLASSES[:3], mm_per_pixel=0.1)
    crack, spall = report.add("sub/c.jpg", pan, infos, overlay="overlays/sub/c.jpg")
    assert crack["width_mean_px"] == pytest.approx(4, abs=0.05)
    assert crack["length_px"] == pytest.approx(100, abs=0.5)
    assert crack["width_max_mm"] == pytest.approx(0.4, abs=0.01)
    assert crack["grade"] == "medium" and crack["grade_level"] == 2  # 0.3 <= 0.4 < 1.0 mm
    assert spall["area_mm2"] == pytest.approx(300 * 0.01) and spall["grade"] == "small"
    assert report.images[0]["worst_grade"] == "crack: medium"
    report.add_unreadable("sub/broken.jpg", "cannot decode the file")
    paths = report.write(str(tmp_path))
    rows = list(csv.DictReader(open(paths["defects_csv"])))
    assert [r["grade"] for r in rows] == ["medium", "small"]
    assert float(rows[0]["width_max_mm"]) == pytest.approx(0.4, abs=0.01)
    images = list(csv.DictReader(open(paths["images_csv"])))
    assert [(i["image"], i["status"]) for i in images] == [
        ("sub/c.jpg", "ok"),
        ("sub/broken.jpg", "unreadable"),
    ]
    assert images[1]["reason"] == "cannot decode the file"
    assert images[0]["worst_grade"] == "crack: medium"
    data = json.load(open(paths["json"]))
    assert data["mm_per_pixel"] == 0.1 and data["totals"]["images_unreadable"] == 1
    assert data["totals"]["grades"] == {"crack": {"medium": 1}, "spall": {"small": 1}}
    assert data["severity"]["rules"]["crack"]["grades"][1]["min"] == 0.1


def test_without_scale_pixels_only(tmp_path):
    pan, infos = _crack_image()
    report = DefectReport(CLASSES, defect_classes=CLASSES[:3])
    crack, spall = report.add("c.jpg", pan, infos)
    assert crack["length_mm"] is None and crack["area_mm2"] is None
    assert crack["grade"] == "ungraded (no scale)" and spall["grade"] == "ungraded (no scale)"
    paths = report.write(str(tmp_path))
    data = json.load(open(paths["json"]))
    assert data["mm_per_pixel"] is None and "pixels only" in data["units_note"]
    assert "pixels only" in open(paths["html"]).read()
    rows = list(csv.DictReader(open(paths["defects_csv"])))
    assert rows[0]["length_mm"] == "" and float(rows[0]["length_px"]) == pytest.approx(100, abs=1)


def test_bad_scale_and_old_import_path():
    with pytest.raises(ValueError, match="mm_per_pixel"):
        DefectReport(CLASSES, mm_per_pixel=0)
    from d2_detr.report import DefectReport as Old

    assert Old is DefectReport


def test_large_and_missing_segment_ids():
    pan = np.zeros((30, 40), dtype=np.int64)
    pan[5:8, 2:30] = 2**30  # an id too large for a bounding-box table: the whole image is scanned
    infos = [
        {"id": 2**30, "category_id": 2, "isthing": True},
        {"id": 7, "category_id": 1, "isthing": True},  # listed but absent from the map
    ]
    rows = defects_from_panoptic("x.png", pan, infos, CLASSES)
    assert len(rows) == 1 and rows[0]["area_px"] == 84 and rows[0]["bbox_x1"] == 30
    pan[20:25, 10:20] = 3
    infos.append({"id": 3, "category_id": 0, "isthing": True})
    pan[pan == 2**30] = 9
    infos[0]["id"] = 9
    rows = defects_from_panoptic("x.png", pan, infos, CLASSES)
    assert [(r["defect_id"], r["area_px"]) for r in rows] == [(9, 84), (3, 50)]
    assert rows[1]["bbox_y0"] == 20 and rows[1]["length_px"] == pytest.approx(10, abs=0.5)


def test_csv_cells_cannot_run_as_spreadsheet_formulas(tmp_path):
    _, paths = _two_images_written(tmp_path, '=HYPERLINK("http://x","y").jpg', "@sum.jpg")
    with open(paths["defects_csv"]) as f:
        rows = list(csv.DictReader(f))
    assert {r["image"] for r in rows} == {'\'=HYPERLINK("http://x","y").jpg'}
    assert [r["area_px"] for r in rows] == ["20", "9"]  # numbers untouched
    with open(paths["images_csv"]) as f:
        images = [r["image"] for r in csv.DictReader(f)]
    assert images == ['\'=HYPERLINK("http://x","y").jpg', "'@sum.jpg"]
    # the JSON keeps the real names
    with open(paths["json"]) as f:
        names = [im["image"] for im in json.load(f)["images"]]
    assert names == ['=HYPERLINK("http://x","y").jpg', "@sum.jpg"]
