"""The synthetic concrete generator (datasets/synthetic_concrete.py): seeded, varied, defects
that differ from the surface, the real dataset's rebar labelling, one instance per crack."""

import os

import cv2
import numpy as np
import pytest
from conftest import load_synthetic
from PIL import Image

import d2_detr  # noqa: F401
from d2_detr.data.conversion import convert_concrete_dataset

synthetic = load_synthetic()


def files(folder):
    out = {}
    for sub in ("images", "masks"):
        for name in sorted(os.listdir(os.path.join(folder, sub))):
            with open(os.path.join(folder, sub, name), "rb") as f:
                out[f"{sub}/{name}"] = f.read()
    return out


def test_seeded_and_in_the_raw_layout(tmp_path, data_synthetic_raw):
    synthetic.make_synthetic_concrete(tmp_path / "a", 16, seed=0, size=(96, 80))
    synthetic.make_synthetic_concrete(tmp_path / "b", 16, seed=1, size=(96, 80))
    same, other = files(tmp_path / "a"), files(tmp_path / "b")
    assert same == files(data_synthetic_raw)
    assert same.keys() != other.keys() or same != other
    names = [n for n in same if n.startswith("images/")]
    assert names == [f"images/{i:05d}.jpg" for i in range(16)]
    for n in same:
        if n.startswith("masks/"):
            stem, cls = n[6:11], n[11:-4]
            assert f"images/{stem}.jpg" in same and cls in ("crack", "spall", "rebar")
            assert Image.open(tmp_path / "a" / n).size == (96, 80)
    with pytest.raises(FileExistsError):
        synthetic.make_synthetic_concrete(tmp_path / "a", 2)
    # any image can be redrawn alone
    img, masks = synthetic.draw_synthetic_sample(np.random.default_rng([0, 5]), (96, 80))
    assert sorted(masks) == sorted(n[11:-4] for n in same if n.startswith("masks/00005"))


def test_varied_and_mostly_one_class_per_image(tmp_path):
    summary = synthetic.make_synthetic_concrete(tmp_path / "raw", 60, seed=5, size=(128, 96))
    assert 4 <= summary["images_without_defects"] <= 24  # ~20 % have no defect
    assert min(summary["masks"].values()) >= 10  # every class is common
    images = sorted((tmp_path / "raw/images").iterdir())
    pixels = [np.asarray(Image.open(p)).reshape(-1, 3).astype(float) for p in images]
    assert np.std([p.mean() for p in pixels]) > 10  # lighting / surface tone vary
    # colour varies too: grey concrete and tinted plaster
    assert np.ptp([p[:, 0].mean() - p[:, 2].mean() for p in pixels]) > 20
    classes = {}
    for name in os.listdir(tmp_path / "raw/masks"):
        classes.setdefault(name[:5], set()).add(name[5:-4])
    single = sum(len(c) == 1 for c in classes.values()) / len(classes)
    assert 0.55 <= single <= 0.9, single  # like the real data, most images hold one class


def grow(mask, r):
    return cv2.dilate(mask.astype(np.uint8), np.ones((2 * r + 1,) * 2, np.uint8)) > 0


def test_defects_differ_from_the_surface():
    """Defects darker than the surface around them; spalls and rebar cavities rougher (exposed
    aggregate, bars): local texture (high-pass) inside vs a ring 6-14 px away."""
    stats = {"crack": [], "spall": [], "rebar": []}
    for i in range(40):
        img, masks = synthetic.draw_synthetic_sample(np.random.default_rng([7, i]), (200, 160))
        grey = img.astype(np.float32).mean(-1)
        texture = grey - cv2.GaussianBlur(grey, (0, 0), 3)
        any_defect = np.zeros(grey.shape, bool)
        for m in masks.values():
            any_defect |= m
        for cls, m in masks.items():
            core = m if cls == "crack" else cv2.erode(m.astype(np.uint8), np.ones((5, 5))) > 0
            around = grow(m, 14) & ~grow(m, 6) & ~grow(any_defect, 6)
            if core.sum() < 30 or around.sum() < 30:
                continue
            darker = grey[around].mean() - grey[m].mean()
            stats[cls].append((darker, texture[core].std() / (texture[around].std() + 0.5)))
    for cls, values in stats.items():
        assert len(values) >= 6, cls
        darker, rougher = np.array(values).T
        assert np.median(darker) > 20, (cls, np.median(darker))  # clearly visible
        assert np.std(darker) > 5, cls  # varied, not one constant colour
        if cls != "crack":
            assert np.median(rougher) > 1.5, (cls, np.median(rougher))


def test_rebar_region_is_the_cavity_with_bars():
    """Same scene, two labellings: "region" (the real dataset's) = the cavity around the bars."""
    checked = 0
    for i in range(40):
        kw = dict(size=(160, 128), empty_fraction=0.0, camera=False)
        img_r, region = synthetic.draw_synthetic_sample(np.random.default_rng([3, i]), **kw)
        img_b, bars = synthetic.draw_synthetic_sample(
            np.random.default_rng([3, i]), rebar_label="bars", **kw
        )
        assert np.array_equal(img_r, img_b)  # the labelling does not change the picture
        if "rebar" not in bars:
            assert "rebar" not in region
            continue
        checked += 1
        empty = np.zeros(img_r.shape[:2], bool)
        cavity_or_bars = bars["rebar"] | bars.get("spall", empty)
        assert not (bars["rebar"] & ~region["rebar"]).any()  # the bars lie in the region
        assert not (region["rebar"] & ~cavity_or_bars).any()  # the region is their cavity
        assert region["rebar"].sum() > 2 * bars["rebar"].sum()  # ... not just the bars
    assert checked >= 8


def test_each_crack_is_one_instance_inside_the_image():
    """Cracks end at the border (no fragments cut off by the edge) and vary in width."""
    touching, ratios = 0, []
    for i in range(40):
        rng = np.random.default_rng([11, i])
        img = np.full((96, 128, 3), 180.0, np.float32)
        margin = synthetic.CRACK_MARGIN

        def inside(p):
            return margin <= p[0] <= 127 - margin and margin <= p[1] <= 95 - margin

        mask = synthetic._draw_crack(rng, img, inside, np.array([0.0, -1.0]))
        n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert n - 1 == 1, f"crack {i}: {n - 1} pieces"
        ys, xs = np.nonzero(mask)
        touching += ys.min() <= margin + 3 or xs.min() <= margin + 3
        touching += ys.max() >= 95 - margin - 3 or xs.max() >= 127 - margin - 3
        assert (img[mask].mean(-1) < 180).mean() > 0.5  # drawn darker (lit rims aside)
    assert touching > 0  # long cracks do reach the border (and end there)
    for i in range(20):  # width along a crack (ridge of the distance map), at 320 x 256
        img = np.full((256, 320, 3), 180.0, np.float32)
        mask = synthetic._draw_crack(
            np.random.default_rng([12, i]), img, lambda p: 2 <= p[0] <= 317 and 2 <= p[1] <= 253,
            np.array([0.0, -1.0]),
        )  # fmt: skip
        dist = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, 5)
        ridge = dist[(dist > 0) & (cv2.dilate(dist, np.ones((3, 3))) <= dist)]
        ratios.append(np.percentile(ridge, 90) / np.percentile(ridge, 25))
    assert np.median(ratios) > 1.4  # wider and narrower parts, tapering ends


def test_converted_cracks_are_whole(tmp_path):
    """After perspective and the converter's components: about one instance per crack mask."""
    raw = tmp_path / "raw"
    synthetic.make_synthetic_concrete(raw, 24, seed=4, size=(160, 128), empty_fraction=0)
    out = convert_concrete_dataset(raw, tmp_path / "conv", val_fraction=0, workers=1, progress=0)
    crack_images = len([n for n in os.listdir(raw / "masks") if "crack" in n])
    assert crack_images >= 6
    # an image holds 1-2 cracks (they may cross); fragments would multiply the count
    assert out["instances"]["crack"] <= 1.6 * crack_images


def test_jpeg_masks_convert_like_png_masks(tmp_path):
    synthetic.make_synthetic_concrete(tmp_path / "png", 12, seed=2, size=(128, 96))
    synthetic.make_synthetic_concrete(
        tmp_path / "jpg", 12, seed=2, size=(128, 96), mask_format="jpg"
    )
    kw = dict(val_fraction=0, workers=1, progress=False)
    a = convert_concrete_dataset(tmp_path / "png", tmp_path / "a", **kw)
    b = convert_concrete_dataset(tmp_path / "jpg", tmp_path / "b", **kw)
    assert a["images_without_defects"] == b["images_without_defects"]
    for cls in ("spall", "rebar"):
        assert abs(a["instances"][cls] - b["instances"][cls]) <= 1
    assert abs(a["instances"]["crack"] - b["instances"]["crack"]) <= 3
