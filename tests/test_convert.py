"""The raw-mask converter against expectations computed independently (PIL + scipy.ndimage)."""

import json
import os
import shutil

import numpy as np
import pytest
from PIL import Image
from pycocotools import mask as mask_utils
from scipy import ndimage

import d2_detr  # noqa: F401
from d2_detr.data.conversion import RawDatasetError
from d2_detr.data.conversion import convert as conversion_pipeline
from d2_detr.data.conversion import convert_concrete_dataset, split_stems
from d2_detr.data.validation import check_panoptic

CAT_ID = {"rebar": 1, "spall": 2, "crack": 3}
EIGHT = np.ones((3, 3), bool)


def convert(raw, out, **kw):
    kw.setdefault("workers", 1)
    kw.setdefault("progress", False)
    return convert_concrete_dataset(str(raw), str(out), **kw)


def expected_instances(raw, stem, threshold=128, min_area=16, priority=("crack", "rebar", "spall")):
    """Independent reference: list of (category_id, bool mask) for one raw image."""
    image = next(n for n in os.listdir(os.path.join(raw, "images")) if n.rsplit(".", 1)[0] == stem)
    width, height = Image.open(os.path.join(raw, "images", image)).size
    comps = {}
    for name in sorted(os.listdir(os.path.join(raw, "masks"))):
        base = os.path.splitext(name)[0]
        cls = next((c for c in CAT_ID if base == stem + c), None)
        if cls is None:
            continue
        grey = np.asarray(Image.open(os.path.join(raw, "masks", name)).convert("L"))
        lab, n = ndimage.label(grey >= threshold, structure=EIGHT)
        comps[cls] = [lab == k for k in range(1, n + 1) if (lab == k).sum() >= min_area]
    claimed, out = np.zeros((height, width), bool), []
    for cls in priority:
        kept = [m & ~claimed for m in comps.get(cls, [])]
        for m in comps.get(cls, []):
            claimed |= m
        out += [(CAT_ID[cls], m) for m in kept if m.sum() >= min_area]
    return out


def load_split(root, split):
    with open(os.path.join(root, "annotations", f"panoptic_{split}.json")) as f:
        pan = json.load(f)
    with open(os.path.join(root, "annotations", f"instances_{split}.json")) as f:
        ins = json.load(f)
    return pan, ins


def png_ids(root, split, file_name):
    rgb = np.asarray(Image.open(os.path.join(root, f"panoptic_{split}", file_name)).convert("RGB"))
    rgb = rgb.astype(np.int64)
    return rgb[..., 0] + 256 * rgb[..., 1] + 65536 * rgb[..., 2]


def bbox_of(mask):
    ys, xs = np.nonzero(mask)
    return [
        int(xs.min()),
        int(ys.min()),
        int(xs.max() - xs.min() + 1),
        int(ys.max() - ys.min() + 1),
    ]


def assert_matches_reference(raw, root, **ref_kw):
    """Every image's instances (RLE and PNG) equal the independent reference; returns counts."""
    counts = {1: 0, 2: 0, 3: 0}
    splits = [f[9:-5] for f in os.listdir(os.path.join(root, "annotations")) if "panoptic_" in f]
    for split in splits:
        pan, ins = load_split(root, split)
        anns_by_image = {}
        for a in ins["annotations"]:
            anns_by_image.setdefault(a["image_id"], []).append(a)
        for rec in pan["annotations"]:
            stem = rec["file_name"][:-4]
            ids = png_ids(root, split, rec["file_name"])
            expected = expected_instances(raw, stem, **ref_kw)
            got = anns_by_image.get(rec["image_id"], [])
            assert len(got) == len(expected), stem
            for cat, mask in expected:
                counts[cat] += 1
                match = [
                    a
                    for a in got
                    if (mask_utils.decode(a["segmentation"]).astype(bool) == mask).all()
                ]
                assert len(match) == 1 and match[0]["category_id"] == cat, stem
                assert match[0]["area"] == int(mask.sum())
                assert match[0]["bbox"] == bbox_of(mask)
                seg = [s for s in rec["segments_info"] if s["area"] == int(mask.sum())]
                assert any(
                    (ids == s["id"]).sum() == mask.sum() and (ids[mask] == s["id"]).all()
                    for s in seg
                )
            things = np.zeros(ids.shape, bool)
            for _, m in expected:
                things |= m
            bg = [s for s in rec["segments_info"] if s["category_id"] == 4]
            if things.all():
                assert not bg
            else:
                assert len(bg) == 1 and (ids[~things] == bg[0]["id"]).all()
                assert bg[0]["area"] == int((~things).sum()) and bg[0]["bbox"] == bbox_of(~things)
            assert len({s["id"] for s in rec["segments_info"]}) == len(rec["segments_info"])
    return counts


def test_real_sample_matches_independent_reference(data_sample_raw, tmp_path):
    out = tmp_path / "cd"
    summary = convert(data_sample_raw, out, val_fraction=0.5)
    counts = assert_matches_reference(data_sample_raw, str(out))
    assert counts == {1: 5, 2: 1, 3: 1}  # rebar, spall, crack of the 2 bundled images
    assert summary["instances"] == {"rebar": 5, "spall": 1, "crack": 1}
    assert summary["images"] == {"train": 1, "val": 1}
    assert check_panoptic(str(out)) == []
    # Images are the original JPEGs, copied byte for byte.
    for split in ("train", "val"):
        for name in os.listdir(out / split):
            with open(out / split / name, "rb") as a, open(
                os.path.join(data_sample_raw, "images", name), "rb"
            ) as b:
                assert a.read() == b.read()


def test_synthetic_set_matches_independent_reference(data_synthetic_raw, data_synthetic_root):
    counts = assert_matches_reference(data_synthetic_raw, data_synthetic_root)
    with open(os.path.join(data_synthetic_root, "conversion_summary.json")) as f:
        summary = json.load(f)
    assert summary["instances"] == {"rebar": counts[1], "spall": counts[2], "crack": counts[3]}
    assert min(counts.values()) > 0
    assert summary["images"] == {"test": 2, "train": 10, "val": 4}
    assert check_panoptic(data_synthetic_root) == []


def test_output_byte_identical_for_any_worker_count(data_synthetic_raw, tmp_path):
    convert(data_synthetic_raw, tmp_path / "a", workers=1)
    convert(data_synthetic_raw, tmp_path / "b", workers=2)
    files_a = sorted(str(p.relative_to(tmp_path / "a")) for p in (tmp_path / "a").rglob("*"))
    files_b = sorted(str(p.relative_to(tmp_path / "b")) for p in (tmp_path / "b").rglob("*"))
    assert files_a == files_b and len(files_a) > 40
    for rel in files_a:
        if (tmp_path / "a" / rel).is_file():
            assert (tmp_path / "a" / rel).read_bytes() == (tmp_path / "b" / rel).read_bytes(), rel


def test_split_is_seeded_disjoint_and_keeps_groups_together():
    stems = [f"{i:04d}" for i in range(100)]
    a = split_stems(stems, 0.2, 0.1, seed=3)
    assert a == split_stems(list(reversed(stems)), 0.2, 0.1, seed=3)
    assert a != split_stems(stems, 0.2, 0.1, seed=4)
    sizes = {s: sum(v == s for v in a.values()) for s in ("train", "val", "test")}
    assert sizes == {"train": 70, "val": 20, "test": 10} and set(a) == set(stems)
    groups = {s: stems[int(s) // 10 * 10] for s in stems}  # 10 groups of 10
    g = split_stems(stems, 0.2, 0.1, seed=0, groups=groups)
    for s in stems:
        assert g[s] == g[groups[s]]
    assert sorted(split_stems(["x", "y"], 0.2).values()) == ["train", "val"]
    assert set(split_stems(["only"], 0.5, 0.3).values()) == {"train"}


# --- bad input: one test each -------------------------------------------------------------


def make_raw(root, images, masks):
    """images: {file name: (H, W, 3) uint8 or bytes}; masks: {file name: (H, W) uint8}."""
    os.makedirs(os.path.join(root, "images"), exist_ok=True)
    os.makedirs(os.path.join(root, "masks"), exist_ok=True)
    for name, img in images.items():
        path = os.path.join(root, "images", name)
        if isinstance(img, bytes):
            with open(path, "wb") as f:
                f.write(img)
        else:
            Image.fromarray(img).save(path, quality=95)
    for name, m in masks.items():
        Image.fromarray(m).save(os.path.join(root, "masks", name), quality=95)
    return str(root)


def surface(h=48, w=64, seed=0):
    return np.random.default_rng(seed).integers(60, 200, (h, w, 3), dtype=np.uint8)


def blob_mask(h=48, w=64, boxes=((5, 5, 20, 15),)):
    m = np.zeros((h, w), np.uint8)
    for x, y, bw, bh in boxes:
        m[y : y + bh, x : x + bw] = 255
    return m


def test_jpeg_noisy_masks_are_thresholded(tmp_path):
    clean = blob_mask(boxes=((4, 4, 20, 14), (36, 24, 22, 18)))
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {})
    Image.fromarray(clean).save(os.path.join(raw, "masks", "aspall.jpg"), quality=20)
    noisy = np.asarray(Image.open(os.path.join(raw, "masks", "aspall.jpg")))
    assert ((noisy > 0) & (noisy < 255)).sum() > 50  # the file really is noisy
    convert(raw, tmp_path / "out", val_fraction=0)
    assert_matches_reference(raw, str(tmp_path / "out"))
    _, ins = load_split(str(tmp_path / "out"), "train")
    assert len(ins["annotations"]) == 2
    for a in ins["annotations"]:
        m = mask_utils.decode(a["segmentation"]).astype(bool)
        inter = (m & (clean > 0)).sum()
        assert inter / m.sum() > 0.9 and inter > 0.9 * min(14 * 20, 18 * 22)


def test_mask_size_differs_from_image(tmp_path):
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {"acrack.png": blob_mask(h=40)})
    with pytest.raises(RawDatasetError, match=r"acrack\.png: mask size 64x40 differs .* 64x48"):
        convert(raw, tmp_path / "out")
    assert not (tmp_path / "out").exists()


def test_unknown_class_suffix(tmp_path):
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {"adent.png": blob_mask()})
    with pytest.raises(RawDatasetError, match=r"adent\.png: unknown class suffix"):
        convert(raw, tmp_path / "out")
    # ... unless the suffix is configured.
    s = convert(raw, tmp_path / "out", val_fraction=0, class_suffixes={"dent": "spall"})
    assert s["instances"]["spall"] == 1


def test_mask_without_image(tmp_path):
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {"bcrack.png": blob_mask()})
    with pytest.raises(RawDatasetError, match=r"bcrack\.png: mask without image"):
        convert(raw, tmp_path / "out")


def test_image_without_masks_is_all_background(tmp_path):
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface(), "b.jpg": surface(seed=1)}, {})
    s = convert(raw, tmp_path / "out", val_fraction=0)
    pan, ins = load_split(str(tmp_path / "out"), "train")
    assert s["images_without_defects"] == 2 and ins["annotations"] == []
    assert len(s["warnings"]) == 1 and "'train' holds no defect" in s["warnings"][0]
    for rec in pan["annotations"]:
        assert rec["segments_info"] == [
            {"area": 48 * 64, "bbox": [0, 0, 64, 48], "category_id": 4, "id": 1, "iscrowd": 0}
        ]
        assert (png_ids(str(tmp_path / "out"), "train", rec["file_name"]) == 1).all()


def test_empty_mask(tmp_path):
    raw = make_raw(
        tmp_path / "raw", {"a.jpg": surface()}, {"aspall.png": np.zeros((48, 64), np.uint8)}
    )
    s = convert(raw, tmp_path / "out", val_fraction=0)
    assert s["empty_masks"] == 1 and sum(s["instances"].values()) == 0
    pan, _ = load_split(str(tmp_path / "out"), "train")
    assert [seg["category_id"] for seg in pan["annotations"][0]["segments_info"]] == [4]


def test_mask_of_specks_only(tmp_path):
    m = blob_mask(boxes=((2, 2, 3, 3), (20, 20, 2, 5), (50, 40, 4, 3)))  # 9, 10, 12 px
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {"acrack.png": m})
    s = convert(raw, tmp_path / "out", val_fraction=0, min_area=16)
    assert s["dropped_specks"] == 3 and s["dropped_speck_pixels"] == 31
    assert sum(s["instances"].values()) == 0
    s = convert(raw, tmp_path / "out", val_fraction=0, min_area=10, overwrite=True)
    assert s["dropped_specks"] == 1 and s["instances"]["crack"] == 2


@pytest.mark.parametrize("kind", ["garbage", "truncated"])
def test_corrupt_image(tmp_path, kind):
    good = surface()
    raw = make_raw(tmp_path / "raw", {"a.jpg": good, "b.jpg": good[::-1].copy()}, {})
    path = os.path.join(raw, "images", "b.jpg")
    data = open(path, "rb").read()
    with open(path, "wb") as f:
        f.write(b"not an image at all" if kind == "garbage" else data[: len(data) // 2])
    with pytest.raises(RawDatasetError, match=r"b\.jpg: corrupt or unreadable image"):
        convert(raw, tmp_path / "out")
    assert os.listdir(tmp_path) == ["raw"]  # nothing half-written next to OUT either


def test_skip_unreadable_images(tmp_path):
    """skip_unreadable_images: corrupt photos are left out with their masks (listed with the
    reason), the others convert with 2 workers too; a split left without images stays valid;
    every photo unreadable is still an error, nothing written."""
    images = {f"p{i}.jpg": surface(seed=i) for i in range(4)}
    images["bad.png"] = b"\x89PNG broken"
    masks = {f"p{i}crack.png": blob_mask() for i in range(4)}
    masks["badcrack.png"] = blob_mask()
    raw = make_raw(tmp_path / "raw", images, masks)
    with pytest.raises(RawDatasetError, match=r"bad\.png: corrupt or unreadable image"):
        convert(raw, tmp_path / "out", workers=2)
    s = convert(raw, tmp_path / "out", workers=2, skip_unreadable_images=True)
    assert sum(s["images"].values()) == 4 and s["instances"]["crack"] == 4
    assert [os.path.basename(x["image"]) for x in s["skipped_images"]] == ["bad.png"]
    assert "corrupt or unreadable image" in s["skipped_images"][0]["reason"]
    assert any("bad.png" in w for w in s["warnings"])
    assert check_panoptic(str(tmp_path / "out")) == []
    assert_matches_reference(raw, str(tmp_path / "out"))
    # the only image of its split unreadable: that split is empty, still a valid dataset
    raw2 = make_raw(tmp_path / "raw2", {"a.jpg": surface(), "b.jpg": b"nope"}, {})
    seed = next(i for i in range(20) if split_stems(["a", "b"], 0.5, 0, i)["b"] == "val")
    s = convert(raw2, tmp_path / "out2", val_fraction=0.5, seed=seed, skip_unreadable_images=True)
    assert s["images"] == {"train": 1}
    assert json.load(open(tmp_path / "out2" / "annotations" / "panoptic_val.json"))["images"] == []
    assert check_panoptic(str(tmp_path / "out2")) == []
    raw3 = make_raw(tmp_path / "raw3", {"a.jpg": b"nope", "b.heic": b"nope"}, {})
    with pytest.raises(RawDatasetError, match=r"no readable photo \(2 unreadable"):
        convert(raw3, tmp_path / "out3", skip_unreadable_images=True)
    assert not os.path.exists(tmp_path / "out3")


def test_corrupt_mask(tmp_path):
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {})
    (tmp_path / "raw" / "masks" / "acrack.png").write_bytes(b"\x89PNG broken")
    with pytest.raises(RawDatasetError, match=r"acrack\.png: not a readable image"):
        convert(raw, tmp_path / "out")
    assert os.listdir(tmp_path) == ["raw"]


def test_png_and_jpeg_images_become_jpg(tmp_path):
    yy, xx = np.mgrid[0:48, 0:64]
    img = np.stack([xx * 3, yy * 4, (xx + yy) * 2], -1).astype(np.uint8)  # smooth photo-like
    raw = make_raw(tmp_path / "raw", {"a.png": img, "b.jpeg": img}, {"acrack.png": blob_mask()})
    s = convert(raw, tmp_path / "out", val_fraction=0)
    assert s["reencoded_images"] == 1  # the PNG; the .jpeg is JPEG data, copied as is
    assert sorted(os.listdir(tmp_path / "out" / "train")) == ["a.jpg", "b.jpg"]
    a = Image.open(tmp_path / "out" / "train" / "a.jpg")
    assert a.format == "JPEG" and a.size == (64, 48)
    assert np.abs(np.asarray(a).astype(int) - img).mean() < 2  # quality 95
    assert (tmp_path / "out/train/b.jpg").read_bytes() == open(
        os.path.join(raw, "images", "b.jpeg"), "rb"
    ).read()
    assert check_panoptic(str(tmp_path / "out")) == []


def test_two_images_with_one_stem(tmp_path):
    raw = make_raw(tmp_path / "raw", {"a.jpg": surface(), "a.png": surface()}, {})
    with pytest.raises(RawDatasetError, match=r"a\.(png|jpg): two images share the stem 'a'"):
        convert(raw, tmp_path / "out")


@pytest.mark.parametrize(
    "priority,winner", [(("crack", "rebar", "spall"), 3), (("spall", "crack", "rebar"), 2)]
)
def test_two_classes_on_the_same_pixels(tmp_path, priority, winner):
    spall = blob_mask(boxes=((5, 5, 40, 30),))
    crack = blob_mask(boxes=((0, 18, 64, 3),))  # crosses the spall: 40 x 3 px shared
    raw = make_raw(
        tmp_path / "raw", {"a.jpg": surface()}, {"aspall.png": spall, "acrack.png": crack}
    )
    s = convert(raw, tmp_path / "out", val_fraction=0, class_priority=priority)
    assert s["overlap_pixels"] == 120
    pan, ins = load_split(str(tmp_path / "out"), "train")
    ids = png_ids(str(tmp_path / "out"), "train", "a.png")
    cat_of = {seg["id"]: seg["category_id"] for seg in pan["annotations"][0]["segments_info"]}
    assert cat_of[int(ids[19, 20])] == winner  # a contested pixel
    areas = {a["category_id"]: a["area"] for a in ins["annotations"]}
    if winner == 3:
        assert areas == {2: 40 * 30 - 120, 3: 64 * 3}  # the spall stays ONE instance, cut in two
    else:
        assert areas == {2: 40 * 30, 3: 64 * 3 - 120} and s["instances"]["crack"] == 1
    assert_matches_reference(raw, str(tmp_path / "out"), priority=priority)


def test_out_exists_without_overwrite(tmp_path, data_sample_raw):
    out = tmp_path / "out"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    with pytest.raises(FileExistsError, match="already exists.*overwrite"):
        convert(data_sample_raw, out)
    assert os.listdir(out) == ["keep.txt"]
    # --overwrite never replaces a folder that is not an earlier converter output ...
    with pytest.raises(RawDatasetError, match="out: not a converted dataset"):
        convert(data_sample_raw, out, overwrite=True)
    assert os.listdir(out) == ["keep.txt"]
    # ... but does replace an empty folder and an earlier output.
    (out / "keep.txt").unlink()
    first = convert(data_sample_raw, out, overwrite=True, seed=1, val_fraction=0.5)
    (out / "annotations" / "stale.json").write_text("{}")
    second = convert(data_sample_raw, out, overwrite=True, seed=2, val_fraction=0.5)
    assert first["settings"]["seed"] == 1 and second["settings"]["seed"] == 2
    assert not (out / "annotations" / "stale.json").exists() and (out / "annotations").is_dir()
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_interrupted_run_leaves_nothing_half_written(tmp_path, data_synthetic_raw, monkeypatch):
    out = tmp_path / "out"
    convert(data_synthetic_raw, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}
    real, calls = conversion_pipeline._convert_one, []

    def interrupted(task):
        calls.append(task[0])
        if len(calls) == 5:
            raise KeyboardInterrupt
        return real(task)

    monkeypatch.setattr(conversion_pipeline, "_convert_one", interrupted)
    with pytest.raises(KeyboardInterrupt):
        convert(data_synthetic_raw, out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out"]  # temporary folder removed
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before
    with pytest.raises(KeyboardInterrupt):
        calls.clear()
        convert(data_synthetic_raw, tmp_path / "fresh")
    assert sorted(os.listdir(tmp_path)) == ["out"]


def test_duplicate_images_share_a_split(tmp_path):
    imgs = {f"{i}.jpg": surface(seed=i) for i in range(10)}
    raw = make_raw(tmp_path / "raw", imgs, {})
    for i in range(10, 20):  # byte-identical copies under new names
        shutil.copyfile(
            os.path.join(raw, "images", f"{i - 10}.jpg"), os.path.join(raw, "images", f"{i}.jpg")
        )
    s = convert(raw, tmp_path / "out", val_fraction=0.3)
    assert s["duplicate_images"] == 10 and s["images"] == {"train": 14, "val": 6}
    assert check_panoptic(str(tmp_path / "out")) == []


def test_cli_converts_and_refuses_existing_out(tmp_path, data_sample_raw, data_cli, capsys):
    main = data_cli("prepare_concrete_defects").main
    argv = ["--raw", data_sample_raw, "--out", str(tmp_path / "out"), "--workers", "1"]
    assert main(argv + ["--no-progress", "--class-priority", "spall,crack,rebar"]) == 0
    summary = json.loads(capsys.readouterr().out)
    assert summary["instances"] == {"crack": 1, "rebar": 5, "spall": 1}
    assert summary["settings"]["class_priority"] == ["spall", "crack", "rebar"]
    assert main(argv) == 2
    assert "already exists" in capsys.readouterr().err
    assert main(argv + ["--overwrite", "--class-suffixes", "crack,spall"]) == 2
    assert "00044rebar.jpg: unknown class suffix" in capsys.readouterr().err


# --- masks of any bit depth / colour type (the rule of d2_detr/data/conversion/masks.py) ----


def two_boxes(strong, weak, dtype=np.uint8, channels=None):
    """(48, 64[, C]) mask: box A (20x15 = 300 px) holds ``strong``, box B (22x18) ``weak``."""
    shape = (48, 64) if channels is None else (48, 64, channels)
    m = np.zeros(shape, dtype)
    m[5:20, 5:25] = strong
    m[26:44, 36:58] = weak
    return m


def write_palette(path, indices, colours):
    img = Image.fromarray(indices.astype(np.uint8), mode="P")
    img.putpalette([c for colour in colours for c in colour] + [0] * (768 - 3 * len(colours)))
    img.save(path)


@pytest.mark.parametrize(
    "case,expected_areas",
    [
        # 16-bit: 40000 >= 32896 (= 128 * 257) is defect, 20000 is not (was: clamped, both).
        ("uint16", [300]),
        # the same 16-bit mask with --threshold 0.25 (16384 of 65535): both boxes
        ("uint16_fraction", [300, 396]),
        # 8-bit 0/1 PNG: binary, both boxes (was: read as empty)
        ("binary01", [300, 396]),
        ("binary01_uint16", [300, 396]),
        # 8-bit grey: 200 >= 128 defect, 100 not
        ("uint8", [300]),
        # palette PNG -> its colours -> brightest channel: red (255, 0, 0) is defect although its
        # luminance is 76; dark grey (60, 60, 60) is not
        ("palette", [300]),
        # RGB: pure green (0, 255, 0) defect, dark blue (0, 0, 90) not
        ("rgb", [300]),
        # RGBA: opaque white defect, transparent white background
        ("rgba", [300]),
        # grey + alpha: the same through the 2-channel path
        ("grey_alpha", [300]),
    ],
)
def test_mask_bit_depths_and_colour_types(tmp_path, case, expected_areas):
    import cv2

    raw = make_raw(tmp_path / "raw", {"a.jpg": surface()}, {})
    path = os.path.join(raw, "masks", "aspall.png")
    kw = {}
    if case in ("uint16", "uint16_fraction"):
        cv2.imwrite(path, two_boxes(40000, 20000, np.uint16))
        kw = {"threshold": 0.25} if case == "uint16_fraction" else {}
    elif case == "binary01":
        Image.fromarray(two_boxes(1, 1)).save(path)
    elif case == "binary01_uint16":
        cv2.imwrite(path, two_boxes(1, 1, np.uint16))
    elif case == "uint8":
        Image.fromarray(two_boxes(200, 100)).save(path)
    elif case == "palette":
        write_palette(path, two_boxes(1, 2), [(0, 0, 0), (255, 0, 0), (60, 60, 60)])
    elif case == "rgb":
        Image.fromarray(two_boxes((0, 255, 0), (0, 0, 90), channels=3)).save(path)
    elif case == "rgba":
        m = two_boxes((255, 255, 255, 255), (255, 255, 255, 0), channels=4)
        Image.fromarray(m, mode="RGBA").save(path)
    elif case == "grey_alpha":
        m = two_boxes((255, 255), (255, 0), channels=2)
        Image.fromarray(m, mode="LA").save(path)
    decoded = cv2.imread(path, cv2.IMREAD_UNCHANGED)  # the file really has that type
    assert decoded.dtype == (np.uint16 if "uint16" in case else np.uint8), case
    s = convert(raw, tmp_path / "out", val_fraction=0, **kw)
    assert s["instances"]["spall"] == len(expected_areas)
    _, ins = load_split(str(tmp_path / "out"), "train")
    assert sorted(a["area"] for a in ins["annotations"]) == expected_areas
    boxes = sorted(a["bbox"] for a in ins["annotations"])
    assert boxes[0] == [5, 5, 20, 15]
    if len(boxes) == 2:
        assert boxes[1] == [36, 26, 22, 18]


@pytest.mark.parametrize("threshold,limit", [(128, 128), (1, 1), (255, 255), (0.5, 127.5)])
def test_threshold_scale_is_exact_at_the_limit(tmp_path, threshold, limit):
    """8-bit values just below / at the limit; 16-bit values = 8-bit * 257 behave the same."""
    from d2_detr.data.conversion import read_mask

    values = np.arange(256, dtype=np.uint8)[None].repeat(4, 0)
    Image.fromarray(values).save(tmp_path / "m8.png")
    import cv2

    cv2.imwrite(str(tmp_path / "m16.png"), values.astype(np.uint16) * 257)
    for name in ("m8.png", "m16.png"):
        got = read_mask(str(tmp_path / name), threshold)[0]
        assert (got == (np.arange(256) >= limit)).all(), (name, threshold)


def test_mask_exif_orientation_is_applied_like_the_image(tmp_path):
    """A JPEG mask stored rotated with EXIF orientation 6 lines up with the rotated image."""
    from d2_detr.data.conversion import read_mask

    upright = blob_mask(boxes=((4, 30, 12, 10),))  # (48, 64), box near the bottom left
    stored = np.rot90(upright, 1).copy()  # what a camera stores for orientation 6: (64, 48)
    exif = Image.Exif()
    exif[274] = 6
    Image.fromarray(stored).save(tmp_path / "m.jpg", quality=95, exif=exif)
    got = read_mask(str(tmp_path / "m.jpg"))
    assert got.shape == upright.shape and (got == (upright > 0)).mean() > 0.99


def test_16_bit_grey_image_is_scaled_not_clipped(tmp_path):
    import cv2

    yy, xx = np.mgrid[0:48, 0:64]
    grey16 = (xx * 1000 + yy * 10).astype(np.uint16)  # up to 63470: mostly > 255
    raw = make_raw(tmp_path / "raw", {}, {})
    cv2.imwrite(os.path.join(raw, "images", "a.png"), grey16)
    convert(raw, tmp_path / "out", val_fraction=0)
    got = np.asarray(Image.open(tmp_path / "out" / "train" / "a.jpg").convert("L")).astype(int)
    assert np.abs(got - grey16 / 257.0).mean() < 2  # clipping would make most pixels 255


def test_masks_to_panoptic_is_a_pure_function_with_exact_output():
    """Hand-made masks in, exact id map / segments / stats out (no files involved)."""
    from d2_detr.data.conversion import masks_to_panoptic

    h, w = 20, 30
    spall = np.zeros((h, w), bool)
    spall[2:12, 2:22] = True  # 200 px
    crack = np.zeros((h, w), bool)
    crack[6:8, 0:30] = True  # 60 px, 40 of them on the spall, cuts it in two
    crack[15:17, 25:27] = True  # a 4 px speck
    rebar = np.zeros((h, w), bool)
    masks = {"spall": spall, "crack": crack, "rebar": rebar}
    before = {k: v.copy() for k, v in masks.items()}
    id_map, segments, stats = masks_to_panoptic(masks, (h, w), 16, ("crack", "rebar", "spall"))
    assert all((masks[k] == before[k]).all() for k in masks)  # inputs untouched
    assert stats == {
        "dropped_specks": 1,
        "dropped_speck_pixels": 4,
        "overlap_pixels": 40,
        "dropped_after_overlap": 0,
        "empty_masks": 1,
    }
    # spall (category 2) first, then crack (3), background (4) last
    assert segments == [
        {"id": 1, "category_id": 2, "iscrowd": 0, "area": 160, "bbox": [2, 2, 20, 10]},
        {"id": 2, "category_id": 3, "iscrowd": 0, "area": 60, "bbox": [0, 6, 30, 2]},
        {"id": 3, "category_id": 4, "iscrowd": 0, "area": 600 - 220, "bbox": [0, 0, 30, 20]},
    ]
    assert (id_map[6:8] == 2).all() and id_map[3, 3] == 1 and id_map[10, 20] == 1
    assert id_map[16, 26] == 3 and id_map.dtype == np.int32 and id_map.min() == 1
    # the other priority: spall keeps the contested pixels, the crack is left 20 px in 2 parts
    id_map, segments, stats = masks_to_panoptic(masks, (h, w), 16, ("spall", "crack", "rebar"))
    assert [s["area"] for s in segments] == [200, 20, 380] and stats["overlap_pixels"] == 40
    # ... and with min_area 21 that crack is dropped after the overlap
    _, segments, stats = masks_to_panoptic(masks, (h, w), 21, ("spall", "crack", "rebar"))
    assert [s["category_id"] for s in segments] == [2, 4] and stats["dropped_after_overlap"] == 1


def test_write_failure_is_a_clear_error_and_out_is_kept(tmp_path, data_sample_raw, monkeypatch):
    import errno

    from d2_detr.data.conversion import convert as pipeline

    out = tmp_path / "out"
    convert(data_sample_raw, out)
    before = {p: p.read_bytes() for p in out.rglob("*") if p.is_file()}

    def disk_full(path, id_map):
        raise OSError(errno.ENOSPC, "No space left on device", str(path))

    monkeypatch.setattr(pipeline, "write_panoptic_png", disk_full)
    with pytest.raises(RawDatasetError, match=r"\.png: cannot write the output \(No space left"):
        convert(data_sample_raw, out, overwrite=True)
    assert sorted(os.listdir(tmp_path)) == ["out"]
    assert {p: p.read_bytes() for p in out.rglob("*") if p.is_file()} == before


def test_read_image_rgb_scales_wide_grey_like_the_demo(tmp_path):
    from PIL import Image

    from d2_detr.data.panoptic_format import read_image_rgb

    ramp = np.linspace(0, 1, 64, dtype=np.float32).reshape(8, 8)
    Image.fromarray(ramp, mode="F").save(tmp_path / "f01.tif")  # float 0..1: was black
    Image.fromarray((ramp * 65535).astype(np.int32), mode="I").save(tmp_path / "i16.tif")
    Image.fromarray((ramp * 255).astype(np.int32), mode="I").save(tmp_path / "i8.tif")
    expected = np.rint(ramp * 255).astype(np.uint8)
    for name in ("f01.tif", "i16.tif", "i8.tif"):
        rgb = read_image_rgb(tmp_path / name)
        assert rgb.shape == (8, 8, 3)
        assert np.abs(rgb[..., 0].astype(int) - expected).max() <= 1, name
