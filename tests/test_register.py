"""Catalog registration: names, metadata contract, lazy file check, evaluators and Visualizer."""

import numpy as np
import pytest
import torch
from detectron2.data import DatasetCatalog, MetadataCatalog  # noqa: E402
from detectron2.data.detection_utils import read_image  # noqa: E402
from detectron2.structures import BitMasks, Boxes, Instances  # noqa: E402
from panopticapi.utils import rgb2id  # noqa: E402

import d2_detr  # noqa: F401
from d2_detr.data.datasets import (
    panoptic_metadata,
    register_all_concrete_defects,
    register_concrete_defects,
    register_panoptic_dataset,
)

NAMES = [
    f"{p}_{s}_panoptic"
    for p in ("concrete_defects", "synthetic_concrete")
    for s in ("train", "val", "test")
]


@pytest.fixture
def data_registered_synthetic(data_synthetic_root):
    """Point synthetic_concrete_* at the session's converted set; restore the defaults after."""
    register_concrete_defects(data_synthetic_root, name_prefix="synthetic_concrete")
    yield data_synthetic_root
    register_all_concrete_defects()


def test_names_registered_on_import_and_builtins_kept():
    registered = DatasetCatalog.list()
    for name in NAMES:
        assert name in registered
    for name in ("coco_2017_train_panoptic", "coco_2017_val_panoptic"):
        assert name in registered and len(MetadataCatalog.get(name).stuff_classes) == 133


def test_metadata_contract():
    meta = MetadataCatalog.get("concrete_defects_train_panoptic")
    assert meta.thing_classes == ["rebar", "spall", "crack"]
    assert meta.stuff_classes == ["rebar", "spall", "crack", "background"]
    assert meta.thing_dataset_id_to_contiguous_id == {1: 0, 2: 1, 3: 2}
    assert meta.stuff_dataset_id_to_contiguous_id == {4: 3}
    assert len(meta.thing_colors) == 3 and len(meta.stuff_colors) == 4
    assert meta.evaluator_type == "coco_panoptic_seg"
    assert meta.json_file.endswith("concrete_defects/annotations/instances_train.json")
    assert meta.panoptic_json.endswith("concrete_defects/annotations/panoptic_train.json")


def test_missing_dataset_names_the_commands(tmp_path):
    try:
        register_concrete_defects(tmp_path / "nothing", name_prefix="synthetic_concrete")
        with pytest.raises(FileNotFoundError) as e:
            DatasetCatalog.get("synthetic_concrete_val_panoptic")
        msg = str(e.value)
        assert "synthetic_concrete_val_panoptic" in msg and "panoptic_val.json" in msg
        assert "make_synthetic_concrete.py" in msg and "prepare_concrete_defects.py" in msg
        register_concrete_defects(tmp_path / "nothing")
        with pytest.raises(FileNotFoundError, match="prepare_concrete_defects.py --raw RAW"):
            DatasetCatalog.get("concrete_defects_test_panoptic")
    finally:
        register_all_concrete_defects()


def test_records_decode_to_their_segments(data_registered_synthetic):
    records = DatasetCatalog.get("synthetic_concrete_train_panoptic")
    assert len(records) == 10
    n_things = 0
    for r in records:
        assert set(r) == {"file_name", "image_id", "pan_seg_file_name", "segments_info"}
        ids = rgb2id(read_image(r["pan_seg_file_name"], "RGB"))
        assert read_image(r["file_name"], "BGR").shape[:2] == ids.shape
        listed = {s["id"]: s for s in r["segments_info"]}
        assert set(np.unique(ids).tolist()) == set(listed)
        for sid, s in listed.items():
            assert s["area"] == int((ids == sid).sum()) and s["iscrowd"] == 0
            assert s["isthing"] == (s["category_id"] < 3) and 0 <= s["category_id"] <= 3
            n_things += s["isthing"]
    assert n_things > 0


def test_reregistration_replaces_the_paths(data_registered_synthetic, tmp_path):
    register_concrete_defects(tmp_path, name_prefix="synthetic_concrete")
    assert MetadataCatalog.get("synthetic_concrete_val_panoptic").image_root == str(
        tmp_path / "val"
    )
    register_concrete_defects(data_registered_synthetic, name_prefix="synthetic_concrete")
    assert len(DatasetCatalog.get("synthetic_concrete_val_panoptic")) == 4


def test_register_your_own_dataset(data_synthetic_root):
    cats = [  # stuff first in id order: contiguous ids still put things first
        {"id": 1, "name": "sky", "isthing": 0, "color": [0, 0, 255]},
        {"id": 7, "name": "car", "isthing": 1, "color": [255, 0, 0]},
    ]
    meta = panoptic_metadata(cats)
    assert meta["thing_classes"] == ["car"] and meta["stuff_classes"] == ["car", "sky"]
    assert meta["thing_dataset_id_to_contiguous_id"] == {7: 0}
    assert meta["stuff_dataset_id_to_contiguous_id"] == {1: 1}
    root = data_synthetic_root
    name = register_panoptic_dataset(
        "my_concrete_val",
        MetadataCatalog.get("concrete_defects_val_panoptic").as_dict()
        | {"thing_classes": ["rebar", "spall", "crack"]},
        image_root=f"{root}/val",
        panoptic_root=f"{root}/panoptic_val",
        panoptic_json=f"{root}/annotations/panoptic_val.json",
    )
    try:
        assert len(DatasetCatalog.get(name)) == 4
    finally:
        DatasetCatalog.remove(name)
        MetadataCatalog.remove(name)


def test_panoptic_and_instance_evaluators_score_ground_truth_100(
    data_registered_synthetic, tmp_path
):
    from detectron2.evaluation import COCOEvaluator, COCOPanopticEvaluator

    name = "synthetic_concrete_val_panoptic"
    records = DatasetCatalog.get(name)
    pan = COCOPanopticEvaluator(name)
    ins = COCOEvaluator(
        name,
        tasks=("bbox", "segm"),
        distributed=False,
        use_fast_impl=False,
        output_dir=str(tmp_path),
    )
    pan.reset()
    ins.reset()
    for r in records:
        ids = rgb2id(read_image(r["pan_seg_file_name"], "RGB"))
        segs = [
            dict(id=s["id"], category_id=s["category_id"], isthing=s["isthing"])
            for s in r["segments_info"]
        ]
        pan.process([r], [{"panoptic_seg": (torch.as_tensor(ids), segs)}])
        things = [s for s in r["segments_info"] if s["isthing"]]
        inst = Instances(ids.shape)
        masks = (
            torch.as_tensor(np.stack([ids == s["id"] for s in things]))
            if things
            else torch.zeros((0,) + ids.shape, dtype=torch.bool)
        )
        inst.pred_masks = masks
        inst.pred_boxes = (
            BitMasks(masks).get_bounding_boxes() if things else Boxes(torch.zeros(0, 4))
        )
        inst.scores = torch.ones(len(things))
        inst.pred_classes = torch.as_tensor([s["category_id"] for s in things], dtype=torch.long)
        ins.process([r], [{"instances": inst}])
    pq = pan.evaluate()["panoptic_seg"]
    assert pq["PQ"] == pytest.approx(100.0) and pq["PQ_st"] == pytest.approx(100.0)
    res = ins.evaluate()
    assert res["segm"]["AP"] == pytest.approx(100.0, abs=1e-6)
    assert res["bbox"]["AP"] == pytest.approx(100.0, abs=1e-6)


def test_visualizer_labels_things_and_stuff(data_registered_synthetic):
    from detectron2.utils.visualizer import Visualizer

    r = next(
        r
        for r in DatasetCatalog.get("synthetic_concrete_train_panoptic")
        if len(r["segments_info"]) > 1
    )
    ids = rgb2id(read_image(r["pan_seg_file_name"], "RGB"))
    image = read_image(r["file_name"], "RGB")
    vis = Visualizer(image, MetadataCatalog.get("synthetic_concrete_train_panoptic"))
    out = vis.draw_panoptic_seg(torch.as_tensor(ids), r["segments_info"], alpha=0.5).get_image()
    assert out.shape == image.shape and np.abs(out.astype(int) - image).mean() > 1
    labels = [t.get_text() for t in vis.output.ax.texts]
    names = {"rebar", "spall", "crack", "background"}
    assert any(t.split()[0] in names for t in labels if t)


def test_class_priority_comes_from_the_converted_dataset(data_synthetic_raw, tmp_path):
    """The converter's --class-priority is the one source: registration turns the names stored
    in conversion_summary.json into contiguous thing ids (rebar 0, spall 1, crack 2)."""
    from d2_detr.data.conversion import convert_concrete_dataset

    root = tmp_path / "cd"
    try:
        # no dataset yet: the converter's default, crack > rebar > spall
        register_concrete_defects(root, name_prefix="prio_test")
        assert MetadataCatalog.get("prio_test_train_panoptic").class_priority == [2, 0, 1]
        convert_concrete_dataset(
            data_synthetic_raw,
            root,
            workers=1,
            progress=False,
            class_priority=("spall", "crack", "rebar"),
        )
        register_concrete_defects(root, name_prefix="prio_test")
        for split in ("train", "val", "test"):
            meta = MetadataCatalog.get(f"prio_test_{split}_panoptic")
            assert meta.class_priority == [1, 2, 0]
            assert [meta.thing_classes[i] for i in meta.class_priority] == [
                "spall",
                "crack",
                "rebar",
            ]
        # a generic dataset: names given at registration, [] when none
        meta = panoptic_metadata(d2_detr.data.categories.CONCRETE_DEFECT_CATEGORIES)
        register_panoptic_dataset(
            "prio_generic", meta, "i", "p", "j.json", class_priority=["rebar"]
        )
        assert MetadataCatalog.get("prio_generic").class_priority == [0]
        register_panoptic_dataset("prio_generic", meta, "i", "p", "j.json")
        assert MetadataCatalog.get("prio_generic").class_priority == []
        with pytest.raises(ValueError, match="dent"):
            register_panoptic_dataset(
                "prio_generic", meta, "i", "p", "j.json", class_priority=["dent"]
            )
    finally:
        for name in [n for n in DatasetCatalog.list() if n.startswith("prio_")]:
            DatasetCatalog.remove(name)
            MetadataCatalog.remove(name)
