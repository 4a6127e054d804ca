"""The COCO-panoptic validator: passes on converted data, names the fault on each broken case."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image

import d2_detr  # noqa: F401
from d2_detr.data.conversion import convert_concrete_dataset
from d2_detr.data.panoptic_format import read_panoptic_png, write_panoptic_png
from d2_detr.data.validation import check_panoptic


@pytest.fixture
def root(data_sample_raw, tmp_path):
    """The real sample converted: train = 00044 (5 rebar + 1 spall), val = 01015 (1 crack)."""
    out = tmp_path / "cd"
    convert_concrete_dataset(data_sample_raw, out, val_fraction=0.5, workers=1, progress=False)
    with open(out / "annotations" / "panoptic_train.json") as f:
        assert json.load(f)["annotations"][0]["file_name"] == "00044.png"
    return out


def edit_json(path, fn):
    with open(path) as f:
        data = json.load(f)
    fn(data)
    with open(path, "w") as f:
        json.dump(data, f)


def train_json(root):
    return root / "annotations" / "panoptic_train.json"


def segs(data):
    return data["annotations"][0]["segments_info"]


def one_problem_like(problems, *parts):
    hits = [p for p in problems if all(part in p for part in parts)]
    assert hits, f"no problem containing {parts} in {problems}"
    return hits


def test_passes_on_converted_real_and_synthetic_data(root, data_synthetic_root):
    assert check_panoptic(str(root)) == []
    assert check_panoptic(str(train_json(root))) == []
    assert check_panoptic(data_synthetic_root, workers=2) == []


def test_per_mask_records_overwriting_the_png(root):
    """The earlier attempt: one record per mask FILE, each writing the image's PNG."""
    png = root / "panoptic_train" / "00044.png"
    ids, _ = read_panoptic_png(png)
    with open(train_json(root)) as f:
        data = json.load(f)
    rec = data["annotations"][0]
    rebar = [s for s in rec["segments_info"] if s["category_id"] == 1]
    spall = [s for s in rec["segments_info"] if s["category_id"] == 2]
    # record of the rebar mask, then record of the spall mask, whose PNG overwrote the first
    spall_only = np.where(np.isin(ids, [s["id"] for s in spall]), ids, 0)
    write_panoptic_png(png, spall_only)
    data["annotations"] = [dict(rec, segments_info=rebar), dict(rec, segments_info=spall)]
    with open(train_json(root), "w") as f:
        json.dump(data, f)
    problems = check_panoptic(str(root))
    one_problem_like(problems, "2 records for PNG 00044.png")
    for s in rebar:
        one_problem_like(problems, "00044.png", f"segment {s['id']}:", "absent from the PNG")


def test_ids_listed_but_missing_from_png(root):
    edit_json(train_json(root), lambda d: segs(d).append(dict(segs(d)[0], id=77)))
    problems = check_panoptic(str(root))
    assert len(problems) == 2
    one_problem_like(problems, "00044.png", "segment 77", "absent from the PNG")
    one_problem_like(problems, "instances_train.json", "image 1", "differ from the panoptic")


def test_png_id_missing_from_json(root):
    removed = {}

    def drop(d):
        removed.update(segs(d).pop(1))

    edit_json(train_json(root), drop)
    problems = check_panoptic(str(root))
    one_problem_like(problems, "00044.png", f"segment {removed['id']}", "no segment in")
    # the instances json still lists it: reported as a mismatch with the panoptic things
    one_problem_like(problems, "instances_train.json", "differ from the panoptic thing segments")


def test_area_from_xywh_as_if_xyxy(root):
    """The earlier attempt computed area = (x2 - x1) * (y2 - y1) on an xywh box."""

    def wrong_area(d):
        for s in segs(d):
            x, y, w, h = s["bbox"]
            s["area"] = (w - x) * (h - y)

    edit_json(train_json(root), wrong_area)
    problems = check_panoptic(str(root))
    one_problem_like(problems, "00044.png", "segment 1:", "area", "pixels in the PNG")


def test_bbox_unknown_category_isthing_and_id_zero(root):
    def corrupt(d):
        segs(d)[0]["bbox"] = [0, 0, 5, 5]
        segs(d)[1]["category_id"] = 42
        segs(d)[2]["isthing"] = 0  # a rebar segment claiming to be stuff
        segs(d)[3]["id"] = 0

    edit_json(train_json(root), corrupt)
    problems = check_panoptic(str(root))
    one_problem_like(problems, "segment 1:", "bbox [0, 0, 5, 5]")
    one_problem_like(problems, "segment 2:", "unknown category_id 42")
    one_problem_like(problems, "segment 3:", "isthing=0 but category 1 has isthing=1")
    one_problem_like(problems, "segment 0:", "reserved")


def test_empty_segment(root):
    edit_json(train_json(root), lambda d: segs(d).append({"id": 9, "category_id": 3, "area": 0}))
    one_problem_like(check_panoptic(str(root)), "segment 9", "empty segment")


def test_missing_image_and_size_mismatch(root):
    os.remove(root / "val" / "01015.jpg")
    img = Image.open(root / "train" / "00044.jpg")
    img.resize((img.width // 2, img.height // 2)).save(root / "train" / "00044.jpg")
    problems = check_panoptic(str(root))
    one_problem_like(problems, "01015.jpg", "image file missing")
    one_problem_like(problems, "00044.jpg", "image size 310x174 != PNG size 620x348")


def test_missing_png(root):
    os.remove(root / "panoptic_val" / "01015.png")
    one_problem_like(check_panoptic(str(root)), "01015.png", "PNG missing")


def test_image_in_two_splits(root):
    """Leakage: val == test in the earlier attempt; here 00044 copied into val (renamed)."""
    shutil.copyfile(root / "train" / "00044.jpg", root / "val" / "leak.jpg")
    shutil.copyfile(root / "panoptic_train" / "00044.png", root / "panoptic_val" / "leak.png")
    with open(train_json(root)) as f:
        train = json.load(f)

    def add(d):
        d["images"].append(dict(train["images"][0], id=99, file_name="leak.jpg"))
        d["annotations"].append(dict(train["annotations"][0], image_id=99, file_name="leak.png"))

    edit_json(root / "annotations" / "panoptic_val.json", add)
    os.remove(root / "annotations" / "instances_val.json")
    problems = check_panoptic(str(root))
    assert problems == [
        f"{root / 'val' / 'leak.jpg'}: image in two splits (train: 00044.jpg, val: leak.jpg)"
    ]
    # same split given twice (val == test)
    shutil.copytree(root / "val", root / "test")
    shutil.copytree(root / "panoptic_val", root / "panoptic_test")
    shutil.copyfile(
        root / "annotations" / "panoptic_val.json", root / "annotations" / "panoptic_test.json"
    )
    one_problem_like(
        check_panoptic(str(root)), "01015.jpg", "two splits (test: 01015.jpg, val: 01015.jpg)"
    )


def test_instances_json_faults(root):
    path = root / "annotations" / "instances_train.json"

    def corrupt(d):
        d["annotations"][0]["area"] += 1
        d["annotations"][1]["bbox"] = [10, 10, -3, 4]
        d["annotations"][2]["category_id"] = 4

    edit_json(path, corrupt)
    problems = check_panoptic(str(root))
    one_problem_like(problems, "annotation 1 ", "area")
    one_problem_like(problems, "annotation 2 ", "degenerate bbox")
    one_problem_like(problems, "annotation 3 ", "not a thing category")


def test_missing_dataset_and_bad_json(tmp_path):
    assert "does not exist" in check_panoptic(str(tmp_path / "nope"))[0]
    (tmp_path / "annotations").mkdir()
    assert "no panoptic_*.json" in check_panoptic(str(tmp_path))[0]
    (tmp_path / "annotations" / "panoptic_train.json").write_text("{broken")
    one_problem_like(check_panoptic(str(tmp_path)), "panoptic_train.json", "unreadable json")


def test_cli_exit_status(root, data_cli, capsys):
    main = data_cli("check_panoptic").main
    assert main([str(root)]) == 0
    assert capsys.readouterr().out == ""
    edit_json(train_json(root), lambda d: segs(d).append(dict(segs(d)[0], id=77)))
    assert main([str(root), "--workers", "2"]) == 1
    out, err = capsys.readouterr()
    assert "segment 77" in out and "2 problem(s)" in err


def test_malformed_structure_is_located_and_the_rest_still_checked(data_synthetic_root, tmp_path):
    root = tmp_path / "syn"
    shutil.copytree(data_synthetic_root, root)

    def corrupt(d):
        d["annotations"][0]["segments_info"] = None
        d["annotations"][1]["segments_info"][0]["id"] = "1"
        d["annotations"][2]["segments_info"][0]["area"] += 5  # a content fault, well-formed
        d["annotations"][3]["image_id"] = [3]
        d["images"][4] = "00004.jpg"
        d["categories"].append({"id": "9", "name": "dent"})

    edit_json(train_json(root), corrupt)
    problems = check_panoptic(str(root))
    name = "panoptic_train.json: "
    one_problem_like(problems, name + "annotations[0].segments_info: expected a list, got null")
    one_problem_like(problems, name + "annotations[1].segments_info[0].id: expected an integer")
    one_problem_like(problems, name + "annotations[3].image_id: expected an integer, got a list")
    one_problem_like(problems, name + "images[4]: expected an object, got a string")
    one_problem_like(problems, name + "categories[4].id: expected an integer")
    with open(train_json(root)) as f:
        third = json.load(f)["annotations"][2]
    one_problem_like(problems, third["file_name"], "area", "in json !=")  # still checked


@pytest.mark.parametrize("top", [[], "text", 3, None])
def test_top_level_not_an_object(root, top):
    with open(train_json(root), "w") as f:
        json.dump(top, f)
    problems = check_panoptic(str(root))
    one_problem_like(problems, "panoptic_train.json: top level: expected an object")


def test_cli_unusable_input_exits_2(root, data_cli, capsys, tmp_path):
    main = data_cli("check_panoptic").main
    assert main([str(tmp_path / "nope")]) == 2
    assert "nope: does not exist" in capsys.readouterr().err
    (tmp_path / "empty").mkdir()
    assert main([str(tmp_path / "empty")]) == 2
    assert "no panoptic_*.json" in capsys.readouterr().err
    assert main([str(root), "--workers", "0"]) == 2
