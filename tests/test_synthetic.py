"""The synthetic concrete generator: seeded, fast, varied, and defects that differ from concrete."""

import os
import time

import cv2
import numpy as np
import pytest
from PIL import Image

import d2_detr  # noqa: F401
from d2_detr.data.conversion import convert_concrete_dataset
from d2_detr.data.synthetic import draw_synthetic_sample, make_synthetic_concrete


def files(folder):
    out = {}
    for sub in ("images", "masks"):
        for name in sorted(os.listdir(os.path.join(folder, sub))):
            with open(os.path.join(folder, sub, name), "rb") as f:
                out[f"{sub}/{name}"] = f.read()
    return out


def test_seeded_and_in_the_raw_layout(tmp_path, data_synthetic_raw):
    make_synthetic_concrete(tmp_path / "a", 16, seed=0, size=(96, 80))
    make_synthetic_concrete(tmp_path / "b", 16, seed=1, size=(96, 80))
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
        make_synthetic_concrete(tmp_path / "a", 2)


def test_fast_and_varied(tmp_path):
    start = time.perf_counter()
    summary = make_synthetic_concrete(tmp_path / "raw", 120, seed=5, size=(320, 256))
    elapsed = time.perf_counter() - start
    assert elapsed < 15, elapsed  # about 2 s on 2 cores
    assert 10 <= summary["images_without_defects"] <= 45  # ~20 % have no defect
    assert min(summary["masks"].values()) >= 20  # every class is common
    means = [np.asarray(Image.open(p)).mean() for p in sorted((tmp_path / "raw/images").iterdir())]
    assert np.std(means) > 10  # lighting / surface tone vary


def ring(mask, width, exclude):
    grown = cv2.dilate(mask.astype(np.uint8), np.ones((2 * width + 1,) * 2, np.uint8)) > 0
    return grown & ~mask & ~exclude


def test_defects_differ_from_the_surface_in_shape_and_texture():
    """Crack darker and thin, spall darker and rough, rebar rusty: not one constant colour."""
    stats = {"crack": [], "spall": [], "rebar": []}
    thin = []
    for i in range(60):
        img, masks = draw_synthetic_sample(np.random.default_rng([7, i]), (160, 128))
        grey = img.astype(np.float32).mean(-1)
        any_defect = np.zeros(grey.shape, bool)
        for m in masks.values():
            any_defect |= m
        for cls, m in masks.items():
            around = ring(m, 4, any_defect)
            if m.sum() < 30 or around.sum() < 30:
                continue
            if cls == "rebar":
                rust = img[..., 0].astype(float) - img[..., 2]
                stats[cls].append((rust[m].mean() - rust[around].mean(), grey[m].std()))
            else:
                stats[cls].append((grey[around].mean() - grey[m].mean(), grey[m].std()))
            if cls == "crack":
                dist = cv2.distanceTransform(m.astype(np.uint8), cv2.DIST_L2, 3)
                thin.append(dist.max())
    for cls, values in stats.items():
        contrast, texture = np.array(values).T
        assert len(values) >= 10, cls
        assert np.median(contrast) > 25, (cls, np.median(contrast))  # clearly visible
        assert np.std(contrast) > 3, cls  # varied, not a constant colour
        assert np.median(texture) > 4, cls  # textured inside
    assert np.median(thin) <= 3 and max(thin) <= 5  # cracks are a few pixels wide


def test_jpeg_masks_convert_like_png_masks(tmp_path):
    make_synthetic_concrete(tmp_path / "png", 12, seed=2, size=(128, 96))
    make_synthetic_concrete(tmp_path / "jpg", 12, seed=2, size=(128, 96), mask_format="jpg")
    kw = dict(val_fraction=0, workers=1, progress=False)
    a = convert_concrete_dataset(tmp_path / "png", tmp_path / "a", **kw)
    b = convert_concrete_dataset(tmp_path / "jpg", tmp_path / "b", **kw)
    assert a["images_without_defects"] == b["images_without_defects"]
    for cls in ("spall", "rebar"):
        assert abs(a["instances"][cls] - b["instances"][cls]) <= 1
    assert abs(a["instances"]["crack"] - b["instances"]["crack"]) <= 3


def test_each_crack_is_one_instance_inside_the_image():
    """Cracks end at the border: no fragments cut off by the image edge."""
    from d2_detr.data.synthetic import CRACK_MARGIN, _draw_crack

    touching = 0
    for i in range(40):
        rng = np.random.default_rng([11, i])
        img = np.full((96, 128, 3), 180.0, np.float32)
        mask = _draw_crack(rng, img)
        n, _ = cv2.connectedComponents(mask.astype(np.uint8), connectivity=8)
        assert n - 1 == 1, f"crack {i}: {n - 1} pieces"
        ys, xs = np.nonzero(mask)
        # the polyline stays CRACK_MARGIN inside; its thickness reaches at most 2 px further
        assert ys.min() >= 0 and xs.min() >= 0 and ys.max() <= 95 and xs.max() <= 127
        touching += ys.min() <= CRACK_MARGIN + 2 or xs.min() <= CRACK_MARGIN + 2
        touching += ys.max() >= 95 - CRACK_MARGIN - 2 or xs.max() >= 127 - CRACK_MARGIN - 2
    assert touching > 0  # long cracks do reach the border (and end there)
