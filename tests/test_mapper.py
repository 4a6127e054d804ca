"""DetrPanopticDatasetMapper: targets from panoptic PNGs, consistent with the augmented image."""

import json
import os

import d2_detr  # noqa: F401  (compat first)

# isort: split
import numpy as np
import pycocotools.mask as mask_util
import pytest
import torch
from detectron2.config import get_cfg
from detectron2.data import transforms as T
from panopticapi.utils import id2rgb
from PIL import Image

from d2_detr.data.dataset_mappers import DetrPanopticDatasetMapper

# dataset ids: 1 rebar, 2 spall, 3 crack (things), 4 background (stuff); contiguous = id - 1
CATEGORIES = [
    {"id": 1, "name": "rebar", "isthing": 1, "color": [220, 20, 60]},
    {"id": 2, "name": "spall", "isthing": 1, "color": [0, 0, 142]},
    {"id": 3, "name": "crack", "isthing": 1, "color": [250, 170, 30]},
    {"id": 4, "name": "background", "isthing": 0, "color": [128, 128, 128]},
]
# image colour of each class: the tiny dataset is easy to learn
CLASS_COLOR = {1: (200, 90, 40), 2: (60, 60, 70), 3: (20, 20, 20), 4: (170, 170, 160)}


def draw_segments(rng, h, w):
    """Random layout: (H, W) int32 id map with 1-3 things and background; list of segments."""
    pan = np.full((h, w), 1000, dtype=np.int32)
    segments = [{"id": 1000, "category_id": 4}]
    for k in range(int(rng.integers(1, 4))):
        cat = int(rng.integers(1, 4))
        seg_id = 10 + k
        y0, x0 = int(rng.integers(0, h - 24)), int(rng.integers(0, w - 24))
        if cat == 1:  # bar
            pan[y0 : y0 + 8, x0 : x0 + int(rng.integers(16, 24))] = seg_id
        elif cat == 2:  # blob
            yy, xx = np.mgrid[:h, :w]
            pan[((yy - y0 - 10) ** 2 + (xx - x0 - 10) ** 2) < 80] = seg_id
        else:  # crack: thick diagonal line
            for t in range(20):
                pan[y0 + t : y0 + t + 3, x0 + t : x0 + t + 3] = seg_id
        segments.append({"id": seg_id, "category_id": cat})
    present = set(np.unique(pan).tolist())
    return pan, [s for s in segments if s["id"] in present]


def write_tiny_panoptic_dataset(root, split, num_images, size=(64, 96), seed=0):
    """
    Write ``root/{split}/*.jpg``, ``root/panoptic_{split}/*.png``,
    ``root/annotations/panoptic_{split}.json`` and ``instances_{split}.json`` (the layout of
    ``datasets/prepare_concrete_defects.py``). Returns the panoptic json dict.
    """
    rng = np.random.default_rng(seed)
    h, w = size
    for d in (split, f"panoptic_{split}", "annotations"):
        os.makedirs(os.path.join(root, d), exist_ok=True)
    images, annotations, instances = [], [], []
    for i in range(num_images):
        stem = f"{split}{i:04d}"
        pan, segments = draw_segments(rng, h, w)
        image = np.zeros((h, w, 3), dtype=np.uint8)
        for s in segments:
            image[pan == s["id"]] = CLASS_COLOR[s["category_id"]]
        noise = rng.integers(-12, 13, size=image.shape)
        image = np.clip(image.astype(int) + noise, 0, 255).astype(np.uint8)
        Image.fromarray(image).save(os.path.join(root, split, f"{stem}.jpg"), quality=95)
        Image.fromarray(id2rgb(pan)).save(os.path.join(root, f"panoptic_{split}", f"{stem}.png"))
        infos = []
        for s in segments:
            m = pan == s["id"]
            ys, xs = np.nonzero(m)
            bbox = [int(xs.min()), int(ys.min()), int(xs.ptp() + 1), int(ys.ptp() + 1)]
            info = {**s, "area": int(m.sum()), "bbox": bbox, "iscrowd": 0}
            infos.append(info)
            if s["category_id"] != 4:
                rle = mask_util.encode(np.asfortranarray(m.astype(np.uint8)))
                rle["counts"] = rle["counts"].decode()
                instances.append(
                    {
                        "id": len(instances) + 1,
                        "image_id": i,
                        "category_id": s["category_id"],
                        "segmentation": rle,
                        "area": info["area"],
                        "bbox": bbox,
                        "iscrowd": 0,
                    }
                )
        images.append({"id": i, "file_name": f"{stem}.jpg", "height": h, "width": w})
        annotations.append({"image_id": i, "file_name": f"{stem}.png", "segments_info": infos})
    pan_json = {"images": images, "annotations": annotations, "categories": CATEGORIES}
    ann = os.path.join(root, "annotations")
    with open(os.path.join(ann, f"panoptic_{split}.json"), "w") as f:
        json.dump(pan_json, f)
    things = [c for c in CATEGORIES if c["isthing"]]
    with open(os.path.join(ann, f"instances_{split}.json"), "w") as f:
        json.dump({"images": images, "annotations": instances, "categories": things}, f)
    return pan_json


def records(root, split):
    """Dataset dicts as Detectron2's COCO-panoptic loader makes them (contiguous ids)."""
    pan_json = json.load(open(os.path.join(root, "annotations", f"panoptic_{split}.json")))
    out = []
    for im, ann in zip(pan_json["images"], pan_json["annotations"]):
        segs = [
            {**s, "category_id": s["category_id"] - 1, "isthing": s["category_id"] != 4}
            for s in ann["segments_info"]
        ]
        out.append(
            {
                "file_name": os.path.join(root, split, im["file_name"]),
                "image_id": im["id"],
                "pan_seg_file_name": os.path.join(root, f"panoptic_{split}", ann["file_name"]),
                "segments_info": segs,
            }
        )
    return out


class FixedCrop(T.Augmentation):
    def __init__(self, box):
        super().__init__()
        self.box = box  # x0, y0, w, h

    def get_transform(self, image):
        return T.CropTransform(*self.box)


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("tiny"))
    write_tiny_panoptic_dataset(root, "train", 6)
    return root


def _expected_masks(record, transform):
    pan = np.asarray(Image.open(record["pan_seg_file_name"]).convert("RGB")).astype(np.int64)
    pan = pan[..., 0] + 256 * pan[..., 1] + 256 * 256 * pan[..., 2]
    pan = transform(pan)
    return {s["id"]: (pan == s["id"]) for s in record["segments_info"]}


@pytest.mark.parametrize(
    "augs,transform",
    [
        ([], lambda a: a),
        ([T.RandomFlip(prob=1.0)], lambda a: a[:, ::-1]),
        ([FixedCrop((10, 5, 50, 40))], lambda a: a[5:45, 10:60]),
    ],
)
def test_targets_equal_the_transformed_png(tiny, augs, transform):
    mapper = DetrPanopticDatasetMapper(True, augmentations=augs, image_format="RGB")
    for record in records(tiny, "train"):
        out = mapper(record)
        expected = _expected_masks(record, transform)
        kept = [s for s in record["segments_info"] if expected[s["id"]].any()]
        inst = out["instances"]
        assert out["image"].shape[1:] == inst.image_size == expected[kept[0]["id"]].shape
        assert out["image"].dtype == torch.uint8
        assert inst.gt_classes.tolist() == [s["category_id"] for s in kept]
        for k, s in enumerate(kept):
            m = expected[s["id"]]
            assert torch.equal(inst.gt_masks.tensor[k], torch.from_numpy(m.copy()))
            ys, xs = np.nonzero(m)
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert inst.gt_boxes.tensor[k].tolist() == pytest.approx(box)
        assert (out["height"], out["width"]) == (64, 96)  # original size, for evaluation


def test_segments_cropped_away_are_dropped(tiny):
    record = records(tiny, "train")[0]
    pan = _expected_masks(record, lambda a: a)
    thing = next(s for s in record["segments_info"] if s["category_id"] != 3)
    ys, xs = np.nonzero(pan[thing["id"]])
    # crop a 6-px strip at the top-left corner region that avoids this thing
    y0 = 0 if ys.min() > 8 else 58
    mapper = DetrPanopticDatasetMapper(
        True, augmentations=[FixedCrop((0, y0, 96, 6))], image_format="RGB"
    )
    out = mapper(record)
    ids_in_crop = {sid for sid, m in pan.items() if m[y0 : y0 + 6].any()}
    assert thing["id"] not in ids_in_crop
    assert len(out["instances"]) == len(ids_in_crop)
    assert out["instances"].gt_masks.tensor.flatten(1).any(1).all()


def test_resize_scales_image_masks_and_boxes(tiny):
    mapper = DetrPanopticDatasetMapper(
        True, augmentations=[T.ResizeShortestEdge(128, 1000)], image_format="RGB"
    )
    record = records(tiny, "train")[1]
    out = mapper(record)
    inst = out["instances"]
    assert tuple(out["image"].shape) == (3, 128, 192)
    assert inst.gt_masks.tensor.shape[1:] == (128, 192)
    # boxes are those of the resized masks; about twice the original ones
    for k, s in enumerate(record["segments_info"]):
        x0, y0, w, h = s["bbox"]
        assert inst.gt_boxes.tensor[k].tolist() == pytest.approx(
            [2 * x0, 2 * y0, 2 * (x0 + w), 2 * (y0 + h)], abs=2
        )


def _cfg(**overrides):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.INPUT.MIN_SIZE_TRAIN = (32, 48)
    cfg.INPUT.MAX_SIZE_TRAIN = 200
    cfg.INPUT.MIN_SIZE_TEST = 40
    cfg.INPUT.MAX_SIZE_TEST = 200
    cfg.INPUT.CROP.SIZE = (20, 30)
    cfg.INPUT.FORMAT = "RGB"
    for k, v in overrides.items():
        node = cfg
        *path, last = k.split(".")
        for p in path:
            node = node[p]
        node[last] = v
    return cfg


def test_from_config_builds_detr_recipe(tiny):
    with_crop = DetrPanopticDatasetMapper(_cfg(), True)
    names = [type(a).__name__ for a in with_crop.crop_augmentations.augs]
    assert names == ["RandomFlip", "ResizeShortestEdge", "RandomCrop", "ResizeShortestEdge"]
    assert [type(a).__name__ for a in with_crop.augmentations.augs] == [
        "RandomFlip",
        "ResizeShortestEdge",
    ]
    no_crop = DetrPanopticDatasetMapper(_cfg(**{"INPUT.CROP.ENABLED": False}), True)
    assert no_crop.crop_augmentations is None
    np.random.seed(0)
    sizes = set()
    for record in records(tiny, "train") * 3:
        out = with_crop(record)
        sizes.add(min(out["image"].shape[1:]))
        assert out["instances"].gt_masks.tensor.shape[1:] == out["image"].shape[1:]
        assert len(out["instances"]) > 0
    assert sizes <= {32, 48} and len(sizes) == 2  # multi-scale, final resize after the crop


def test_inference_mode_has_no_targets(tiny):
    mapper = DetrPanopticDatasetMapper(_cfg(), False)
    out = mapper(records(tiny, "train")[0])
    assert "instances" not in out
    assert tuple(out["image"].shape) == (3, 40, 60)
    assert (out["height"], out["width"]) == (64, 96)


def test_bad_records_name_the_file(tiny, tmp_path):
    mapper = DetrPanopticDatasetMapper(True, augmentations=[], image_format="RGB")
    record = records(tiny, "train")[0]
    no_png = {k: v for k, v in record.items() if k != "pan_seg_file_name"}
    with pytest.raises(ValueError, match="train0000.jpg.*pan_seg_file_name"):
        mapper(no_png)
    small = tmp_path / "small.png"
    Image.fromarray(np.zeros((10, 10, 3), np.uint8)).save(small)
    with pytest.raises(ValueError, match="train0000.jpg"):
        mapper({**record, "pan_seg_file_name": str(small)})


# ---------------------------------------------------------------------------------------------
# copy-paste and photometric augmentation


def _square_ids(h, w, boxes):
    """(H, W) id map: background 1000, segment 10 + k over box k (x0, y0, x1, y1), later on top."""
    ids = np.full((h, w), 1000, np.int32)
    for k, (x0, y0, x1, y1) in enumerate(boxes):
        ids[y0:y1, x0:x1] = 10 + k
    return ids


def test_paste_segments_occludes_and_adds_targets():
    from d2_detr.data.dataset_mappers.copy_paste import paste_segments

    image = np.full((40, 60, 3), 100, np.uint8)
    ids = _square_ids(40, 60, [(5, 5, 25, 25), (40, 10, 50, 20)])
    segments = [
        {"id": 1000, "category_id": 3, "isthing": False},
        {"id": 10, "category_id": 1, "isthing": True},
        {"id": 11, "category_id": 0, "isthing": True},
    ]
    src_image = np.zeros((20, 20, 3), np.uint8)
    src_image[..., 0] = np.arange(20)[None] * 10  # a gradient: pasted pixels are recognisable
    src_ids = _square_ids(20, 20, [(0, 0, 10, 10), (12, 12, 18, 18)])
    src_segments = [{"id": 10, "category_id": 2, "isthing": True}]  # only the first is pasted
    out_img, out_ids, out_segs = paste_segments(
        image, ids, segments, src_image, src_ids, src_segments, offset=(20, 15)
    )
    assert image[0, 0, 0] == 100 and ids[20, 20] == 10  # inputs untouched
    new = out_segs[-1]
    assert new["category_id"] == 2 and new["id"] > 1000 and len(out_segs) == 4
    pasted = out_ids == new["id"]
    assert pasted.sum() == 100 and pasted[15:25, 20:30].all()
    assert np.array_equal(out_img[15:25, 20:30], src_image[0:10, 0:10])
    assert (out_img[~pasted] == 100).all()
    # the occluded corner of segment 10 left its mask; boxes follow the remaining pixels
    inst = DetrPanopticDatasetMapper.panoptic_instances(out_ids, out_segs, (40, 60))
    assert inst.gt_classes.tolist() == [3, 1, 0, 2]
    masks = inst.gt_masks.tensor.numpy()
    expected_10 = (ids == 10) & ~pasted
    assert np.array_equal(masks[1], expected_10) and expected_10.sum() == 400 - 5 * 10
    assert masks.sum(0).max() == 1  # no pixel in two targets
    assert inst.gt_boxes.tensor[3].tolist() == [20, 15, 30, 25]
    assert inst.gt_boxes.tensor[1].tolist() == [5, 5, 25, 25]  # still spans its L shape
    # a segment covered completely disappears from the targets
    cover = np.zeros((12, 12), np.int32) + 7
    _, ids2, segs2 = paste_segments(
        image, ids, segments, np.zeros((12, 12, 3), np.uint8), cover,
        [{"id": 7, "category_id": 2, "isthing": True}], offset=(39, 9),
    )  # fmt: skip
    inst2 = DetrPanopticDatasetMapper.panoptic_instances(ids2, segs2, (40, 60))
    assert inst2.gt_classes.tolist() == [3, 1, 2]


def test_paste_segments_empty_cases():
    from d2_detr.data.dataset_mappers.copy_paste import paste_segments

    image = np.full((30, 30, 3), 50, np.uint8)
    ids = _square_ids(30, 30, [(2, 2, 8, 8)])
    segments = [{"id": 1000, "category_id": 3}, {"id": 10, "category_id": 1}]
    src_img, src_ids = np.zeros((10, 10, 3), np.uint8), _square_ids(10, 10, [(0, 0, 5, 5)])
    seg = [{"id": 10, "category_id": 2}]
    for offset, src_segments in [
        ((40, 0), seg),  # outside the image
        ((-10, -10), seg),  # outside on the other side
        ((0, 0), []),  # nothing chosen
        ((0, 0), [{"id": 99, "category_id": 2}]),  # a segment with no pixels
    ]:
        out_img, out_ids, out_segs = paste_segments(
            image, ids, segments, src_img, src_ids, src_segments, offset
        )
        assert np.array_equal(out_img, image) and np.array_equal(out_ids, ids)
        assert out_segs == segments
    # partly outside: only the part inside is pasted
    _, out_ids, out_segs = paste_segments(image, ids, segments, src_img, src_ids, seg, (27, 27))
    assert (out_ids == out_segs[-1]["id"]).sum() == 9


def test_target_without_things_gets_pasted_things():
    from d2_detr.data.dataset_mappers.copy_paste import draw_paste, paste_segments

    np.random.seed(0)
    image = np.full((32, 48, 3), 80, np.uint8)
    ids = np.full((32, 48), 1000, np.int32)
    segments = [{"id": 1000, "category_id": 3}]
    src_ids = _square_ids(64, 96, [(10, 10, 30, 20), (50, 40, 70, 60)])
    src_segments = [{"id": 10, "category_id": 0}, {"id": 11, "category_id": 1}]
    placed = 0
    for _ in range(20):
        choice = draw_paste(src_segments, src_ids, (32, 48), (0.8, 1.2), max_objects=1)
        assert len(choice["segments"]) == 1 and 0.4 <= choice["scale"] <= 0.6
        from d2_detr.data.dataset_mappers.copy_paste import transform_source

        src_img, sids = transform_source(
            np.zeros((64, 96, 3), np.uint8), src_ids, choice["scale"], choice["flip"]
        )
        _, out_ids, out_segs = paste_segments(
            image, ids, segments, src_img, sids, choice["segments"], choice["offset"]
        )
        pasted = out_ids == out_segs[-1]["id"]
        # the chosen object's box lands inside the image: the whole object is pasted
        expected_area = (sids == choice["segments"][0]["id"]).sum()
        assert len(out_segs) == 2 and pasted.sum() == expected_area > 0
        placed += 1
    assert placed == 20


def _mapper(**kw):
    return DetrPanopticDatasetMapper(True, augmentations=[], image_format="RGB", **kw)


def test_mapper_copy_paste_is_consistent_and_seeded(tiny):
    recs = records(tiny, "train")
    mapper = _mapper(copy_paste_pool=recs, copy_paste_prob=1.0, copy_paste_scale=(0.7, 1.3))
    plain = _mapper()
    seen = {}
    paste = mapper.copy_paste

    def spy(image, pan_ids, segments):  # remember which segments were pasted
        out = paste(image, pan_ids, segments)
        seen["ids"], seen["new"] = out[1], [s["id"] for s in out[2][len(segments) :]]
        return out

    mapper.copy_paste = spy
    pasted_any = 0
    for seed in range(12):
        rec = recs[seed % len(recs)]
        np.random.seed(seed)
        out = mapper(rec)
        new_union = torch.from_numpy(np.isin(seen["ids"], seen["new"]))
        np.random.seed(seed)
        again = mapper(rec)
        assert torch.equal(out["image"], again["image"])  # seeded: same sample, same result
        assert torch.equal(out["instances"].gt_masks.tensor, again["instances"].gt_masks.tensor)
        inst, base = out["instances"], plain(rec)
        masks = inst.gt_masks.tensor
        assert masks.sum(0).max() <= 1 and masks.flatten(1).any(1).all()
        for k in range(len(inst)):  # boxes are the tight boxes of the (occluded) masks
            ys, xs = np.nonzero(masks[k].numpy())
            box = [xs.min(), ys.min(), xs.max() + 1, ys.max() + 1]
            assert inst.gt_boxes.tensor[k].tolist() == pytest.approx(box)
        # pasted segments are targets; the originals lost exactly the pixels pasted over
        n_new = len(seen["new"])
        assert len(inst) >= n_new and torch.equal(masks[len(inst) - n_new :].any(0), new_union)
        for k in range(len(inst) - n_new):
            assert not (masks[k] & new_union).any()
        # the image changed only where things were pasted, and shows them
        changed = (out["image"] != base["image"]).any(0)
        assert not (changed & ~new_union).any()
        assert (changed & new_union).sum() >= 0.5 * new_union.sum()
        pasted_any += n_new > 0
    assert pasted_any >= 10  # probability 1: nearly every image got pasted things


def test_mapper_photometric_changes_only_the_image(tiny):
    cfg = _cfg(**{"INPUT.PHOTOMETRIC.ENABLED": True, "INPUT.PHOTOMETRIC.NOISE": 8.0})
    augs = DetrPanopticDatasetMapper.from_config(cfg, True)["photometric"]
    assert [type(a).__name__ for a in augs] == ["RandomPhotometricOrder"]
    assert [type(a).__name__ for a in augs[0].augs] == [
        "RandomBrightness",
        "RandomContrast",
        "RandomSaturation",
        "RandomWhiteBalance",
        "RandomGaussianBlur",
        "RandomGaussianNoise",
    ]
    assert DetrPanopticDatasetMapper.from_config(_cfg(), True)["photometric"] == []
    assert "photometric" not in DetrPanopticDatasetMapper.from_config(cfg, False)
    mapper, plain = _mapper(photometric=augs), _mapper()
    rec = records(tiny, "train")[2]
    np.random.seed(1)
    out = mapper(rec)
    base = plain(rec)
    assert out["image"].dtype == torch.uint8 and out["image"].shape == base["image"].shape
    assert (out["image"].float() - base["image"].float()).abs().mean() > 2
    assert torch.equal(out["instances"].gt_masks.tensor, base["instances"].gt_masks.tensor)
    assert torch.equal(out["instances"].gt_boxes.tensor, base["instances"].gt_boxes.tensor)
    np.random.seed(1)
    assert torch.equal(mapper(rec)["image"], out["image"])


@pytest.mark.parametrize(
    "key,value",
    [
        ("INPUT.PHOTOMETRIC.BRIGHTNESS", 1.5),
        ("INPUT.PHOTOMETRIC.BLUR_SIGMA", (2.0, 1.0)),
        ("INPUT.COPY_PASTE.SCALE", (0.0, 1.0)),
        ("INPUT.COPY_PASTE.PROB", 2.0),
    ],
)
def test_bad_augmentation_config_names_the_key(key, value):
    group = key.rsplit(".", 1)[0]
    cfg = _cfg(**{key: value, group + ".ENABLED": True, "DATASETS.TRAIN": ()})
    with pytest.raises(ValueError, match=group.replace(".", r"\.")):
        DetrPanopticDatasetMapper.from_config(cfg, True)
