"""Field inputs and unseen bad inputs: what inspectors' folders really hold (phone EXIF rotation,
16-bit / palette / CMYK / 1-bit files, upper-case extensions, duplicate names in sub-folders,
non-ASCII and non-UTF-8 names, links, decompression bombs, broken files, an output folder inside
the input, Ctrl-C) for ``demo/demo.py``; config files that would run code or loop for every tool;
nested raw layouts for the converter.

Small images only; the demo runs in-process (``run_in_process``) except one subprocess that
checks the command line's exit codes."""

import csv
import json
import os
import shutil
import sys

import d2_detr  # noqa: F401  (compat first)

# isort: split
import numpy as np
import pytest
from cli_utils import assert_user_error, run_tool
from PIL import Image
from test_demo import SMALL_CLI, TINY, run_in_process, save_tiny_weights

from d2_detr.data import panoptic_format
from d2_detr.data.conversion import convert_concrete_dataset
from d2_detr.data.panoptic_format import enable_heif, image_size, read_image_rgb
from d2_detr.engine.setup import check_weights_fit, load_config, weights_fit
from d2_detr.utils.cli import UserError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "demo"))
import predictor  # noqa: E402
from predictor import UnreadablePhoto, collect_inputs, read_photo  # noqa: E402

H, W = 48, 72
# EXIF orientation -> what a camera stores so that the displayed picture is the reference
STORED = {
    2: Image.Transpose.FLIP_LEFT_RIGHT,
    3: Image.Transpose.ROTATE_180,
    4: Image.Transpose.FLIP_TOP_BOTTOM,
    5: Image.Transpose.TRANSPOSE,
    6: Image.Transpose.ROTATE_90,
    7: Image.Transpose.TRANSVERSE,
    8: Image.Transpose.ROTATE_270,
}


def reference(seed=0):
    """(H, W, 3) RGB: smooth noise with a red block in the displayed top-left corner."""
    rng = np.random.default_rng(seed)
    image = np.repeat(np.repeat(rng.integers(40, 200, (H // 8, W // 8, 3)), 8, 0), 8, 1)
    image[:16, :24] = (255, 0, 0)
    return image.astype(np.uint8)


def save_rotated(path, orientation, seed=0):
    """The reference as a camera stores it with EXIF ``orientation``; a .heic name: a HEIC file
    as a phone writes it (pillow-heif writes the orientation as the container's irot / imir)."""
    image = Image.fromarray(reference(seed))
    if orientation in STORED:
        image = image.transpose(STORED[orientation])
    exif = Image.Exif()
    exif[0x0112] = orientation
    if str(path).lower().endswith(".heic"):
        assert enable_heif()
        image.save(path, format="HEIF", exif=exif.tobytes(), quality=95)  # 4:2:0, as phones
    else:
        image.save(path, exif=exif.tobytes(), quality=95, subsampling=0)


def _is_red_top_left(bgr):
    b, g, r = bgr[2:14, 2:22].reshape(-1, 3).mean(0)
    return r > 200 and g < 60 and b < 60


# --- reading one photo -----------------------------------------------------------------------


@pytest.mark.parametrize("orientation", range(1, 9))
def test_heic_photo_is_read_as_displayed(orientation, tmp_path):
    """iPhone photos (HEIC): the demo and the converter's reader decode them through pillow-heif,
    in their displayed orientation, once (not turned again by the EXIF tag), at the right size,
    with the source's pixels up to compression noise."""
    path = tmp_path / "IMG_0001.HEIC"
    save_rotated(path, orientation)
    assert path.read_bytes()[4:12] == b"ftypheic"  # a real HEIC file
    bgr = read_photo(str(path))
    assert bgr.shape == (H, W, 3) and bgr.dtype == np.uint8
    assert _is_red_top_left(bgr)
    diff = np.abs(bgr[:, :, ::-1].astype(int) - reference()).mean()
    assert diff < 3, diff  # HEVC noise (0.34); turned or mirrored: > 40
    rgb = read_image_rgb(str(path))
    assert rgb.shape == (H, W, 3) and np.abs(rgb.astype(int) - reference()).mean() < 3
    assert image_size(str(path)) == (W, H)
    # the demo lists .heic/.heif files as photos
    assert [os.path.basename(p) for p, _ in collect_inputs([str(tmp_path)])] == ["IMG_0001.HEIC"]


def test_heic_without_pillow_heif_says_what_to_install(tmp_path, monkeypatch):
    save_rotated(tmp_path / "IMG_0001.heif", 1)
    monkeypatch.setattr(panoptic_format, "enable_heif", lambda: False)
    with pytest.raises(UnreadablePhoto, match="pillow-heif"):
        read_photo(str(tmp_path / "IMG_0001.heif"))
    save_rotated(tmp_path / "p.jpg", 1)  # other photos are still read
    assert read_photo(str(tmp_path / "p.jpg")).shape == (H, W, 3)


@pytest.mark.parametrize("orientation", range(1, 9))
def test_exif_orientation_is_applied(orientation, tmp_path):
    """Phones store the sensor's pixels and an orientation tag: the photo is read as displayed
    (Detectron2's read_image does the same), so overlays and masks match what the user sees."""
    save_rotated(tmp_path / "p.jpg", orientation)
    bgr = read_photo(str(tmp_path / "p.jpg"))
    assert bgr.shape == (H, W, 3) and bgr.dtype == np.uint8
    assert _is_red_top_left(bgr)
    assert np.abs(bgr[:, :, ::-1].astype(int) - reference()).mean() < 6  # JPEG noise; turned: > 40


def _modes(folder):
    """name -> (file, expected RGB or None for 'only the shape')."""
    rgb = reference()
    grey = np.asarray(Image.fromarray(rgb).convert("L"))
    grey3 = np.repeat(grey[:, :, None], 3, 2)
    im = Image.fromarray(rgb)
    files = {}

    def put(name, save, expected):
        save(os.path.join(folder, name))
        files[name] = expected

    put("grey.png", lambda p: im.convert("L").save(p), grey3)
    put("palette.png", lambda p: im.convert("P").save(p), None)
    put("palette_alpha.png", lambda p: im.convert("P").save(p, transparency=0), None)
    put("rgba.png", lambda p: im.convert("RGBA").save(p), rgb)
    put("grey_alpha.png", lambda p: im.convert("LA").save(p), grey3)
    put("cmyk.jpg", lambda p: im.convert("CMYK").save(p, quality=98, subsampling=0), rgb)
    put("bilevel.png", lambda p: im.convert("1").save(p), None)
    put("progressive.jpg", lambda p: im.save(p, progressive=True, quality=98, subsampling=0), rgb)
    put("grey16.png", lambda p: Image.fromarray(grey.astype(np.uint16) * 257).save(p), grey3)
    put(
        "float.tif",
        lambda p: Image.fromarray(grey.astype(np.float32) / 255.0, mode="F").save(p),
        grey3,
    )
    put("pic.bmp", lambda p: im.save(p), rgb)
    put("pic.webp", lambda p: im.save(p, lossless=True), rgb)
    put("pic.tiff", lambda p: im.save(p), rgb)
    put("png_named.jpg", lambda p: im.save(p, format="PNG"), rgb)  # wrong extension
    return files


def test_every_colour_type_reads_as_8_bit_bgr(tmp_path):
    """Grey, palette (with transparency), RGBA, grey + alpha, CMYK JPEG, 1-bit, progressive JPEG,
    16-bit grey PNG (Detectron2's read_image turns it white), float TIFF (black there), BMP,
    WebP, TIFF, a PNG named .jpg."""
    for name, expected in _modes(str(tmp_path)).items():
        bgr = read_photo(str(tmp_path / name))
        assert bgr.shape == (H, W, 3) and bgr.dtype == np.uint8, name
        if expected is not None:
            diff = np.abs(bgr[:, :, ::-1].astype(int) - expected)
            assert diff.mean() < 4, (name, diff.mean())
        else:
            assert 20 < bgr.mean() < 235, name  # neither blank white nor black


def test_broken_files_are_unreadable_with_a_reason(tmp_path):
    buf = tmp_path / "good.jpg"
    Image.fromarray(reference()).save(buf)
    data = buf.read_bytes()
    png = tmp_path / "good.png"
    Image.fromarray(reference()).save(png)
    cases = {
        "truncated.jpg": (data[: len(data) // 2], "(?i)truncated"),
        "truncated.png": (png.read_bytes()[: len(png.read_bytes()) // 2], "(?i)truncated"),
        "header_only.png": (png.read_bytes()[:60], "not a readable image"),
        "zero.jpg": (b"", "empty file"),
        "text.jpg": (b"these are notes, not a photo\n", "not a readable image"),
    }
    for name, (content, reason) in cases.items():
        (tmp_path / name).write_bytes(content)
        with pytest.raises(UnreadablePhoto, match=reason):
            read_photo(str(tmp_path / name))
    os.symlink(tmp_path / "loop.jpg", tmp_path / "loop.jpg")
    with pytest.raises(UnreadablePhoto, match="symlink loop"):
        read_photo(str(tmp_path / "loop.jpg"))
    os.symlink(tmp_path / "gone.jpg", tmp_path / "dangling.jpg")
    with pytest.raises(UnreadablePhoto, match="dangling link"):
        read_photo(str(tmp_path / "dangling.jpg"))


def test_decompression_bomb_is_refused_before_decoding(tmp_path):
    """A 48 kB PNG whose header says 20000 x 20000 (400 MP, 1.2 GB decoded) is refused from its
    header; the limit is --max-megapixels; PIL's own warning is not printed."""
    Image.new("1", (20000, 20000)).save(tmp_path / "bomb.png")
    assert os.path.getsize(tmp_path / "bomb.png") < 100_000
    with pytest.raises(UnreadablePhoto, match=r"20000x20000 px = 400\.0 MP.*150 MP"):
        read_photo(str(tmp_path / "bomb.png"))
    Image.fromarray(reference()).save(tmp_path / "small.png")
    with pytest.raises(UnreadablePhoto, match="--max-megapixels"):
        read_photo(str(tmp_path / "small.png"), max_megapixels=0.001)
    assert read_photo(str(tmp_path / "small.png"), max_megapixels=0.01).shape == (H, W, 3)
    assert Image.MAX_IMAGE_PIXELS is not None  # PIL's global guard restored


# --- finding the photos ------------------------------------------------------------------------


def test_collect_inputs_field_layouts(tmp_path):
    """Upper-case extensions, hidden files (macOS ._ forks, .thumbnails/), linked folders (once,
    loops end), a link to a folder already walked, the demo's own overlays excluded, a name that
    is not UTF-8."""
    src = tmp_path / "in"
    names = ["a.JPG", "b.JPEG", "c.PNG", "d.TIF", "e.tiff", "f.BMP", "g.WEBP", "h.jpeg"]
    for name in names + ["sub/a.JPG", "._a.JPG", ".thumbnails/t.jpg", "skip.gif", "notes.txt"]:
        os.makedirs(os.path.dirname(src / name), exist_ok=True)
        (src / name).write_bytes(b"x")
    os.makedirs(tmp_path / "elsewhere")
    (tmp_path / "elsewhere" / "z.jpg").write_bytes(b"x")
    os.symlink(tmp_path / "elsewhere", src / "linked")
    os.symlink(src / "sub", src / "sub_again")  # the same folder twice
    os.symlink(src, src / "sub" / "up")  # a loop
    os.makedirs(src / "out" / "overlays" / "sub")
    (src / "out" / "overlays" / "sub" / "a.JPG").write_bytes(b"x")  # an earlier run's overlay
    bad = os.fsdecode(b"caf\xe9.jpg")  # Latin-1 bytes: not UTF-8
    with open(os.path.join(os.fsencode(str(src)), b"caf\xe9.jpg"), "wb") as f:
        f.write(b"x")
    keys = [k for _, k in collect_inputs([str(src)], exclude=[str(src / "out" / "overlays")])]
    # a .gif is listed (to be reported as a format not read), not skipped in silence
    assert sorted(keys) == sorted(names + ["sub/a.JPG", "linked/z.jpg", "caf\\xe9.jpg", "skip.gif"])
    for key in keys:
        key.encode("utf-8")  # every key can be written to the UTF-8 report
    assert bad not in keys
    # without the exclusion, the earlier run's overlay would be read as a photo
    assert "out/overlays/sub/a.JPG" in [k for _, k in collect_inputs([str(src)])]
    # a recursive glob skips it too
    pattern = str(src / "**" / "*.JPG")
    keys = [k for _, k in collect_inputs([pattern], exclude=[str(src / "out" / "overlays")])]
    assert "out/overlays/sub/a.JPG" not in keys and "sub/a.JPG" in keys


# --- the demo end to end -----------------------------------------------------------------------


@pytest.fixture(scope="module")
def weights(tmp_path_factory):
    return save_tiny_weights(tmp_path_factory.mktemp("field_weights") / "model.pth")


def _rows(path):
    with open(path, encoding="utf-8", newline="") as f:
        return {r["image"]: r for r in csv.DictReader(f)}


def _demo(src, out, weights, *extra):
    return run_in_process(
        ["--config-file", TINY, "--input", str(src), "--output", str(out), "--no-progress",
         "--confidence-threshold", "0", *extra, "MODEL.WEIGHTS", weights, *SMALL_CLI]
    )  # fmt: skip


def test_demo_on_a_field_folder(weights, tmp_path):
    """One folder with everything at once: rotated phone photos, odd colour types, duplicate
    names in sub-folders, odd names, a 4000 x 3 strip, a 1 x 1 image, broken files, a bomb,
    and the output folder inside it, run twice. Every good photo is processed in its displayed
    orientation, every bad one listed with its reason, the second run does not read the first
    run's overlays, exit 0."""
    src = tmp_path / "site"
    os.makedirs(src / "day1")
    os.makedirs(src / "day2")
    save_rotated(src / "day1" / "IMG_0001.JPG", 6)
    save_rotated(src / "day2" / "IMG_0001.JPG", 8, seed=1)  # same name, other photo
    Image.fromarray((reference()[:, :, 0].astype(np.uint16) * 257)).save(src / "grey16.png")
    Image.fromarray(reference()).convert("CMYK").save(src / "cmyk.jpg")
    Image.fromarray(reference()).save(src / "x.webp")
    Image.fromarray(reference(2)).save(src / "x.webp.jpg")  # overlays must not collide
    Image.fromarray(reference()).save(src / "façade 3 &<b>.jpg")
    with open(os.path.join(os.fsencode(str(src)), b"caf\xe9.png"), "wb") as f:
        Image.fromarray(reference()).save(f, format="PNG")
    Image.fromarray(np.full((3, 4000, 3), 128, np.uint8)).save(src / "strip.png")
    Image.fromarray(np.full((1, 1, 3), 90, np.uint8)).save(src / "dot.png")
    (src / "empty.jpg").write_bytes(b"")
    (src / "notes.jpg").write_text("not a photo")
    (src / "IMG_0002.HEIC").write_bytes(b"\x00\x00\x00\x18ftypheic")  # a truncated HEIC
    save_rotated(src / "day1" / "IMG_0003.HEIC", 6, seed=2)  # an iPhone photo
    Image.new("1", (20000, 20000)).save(src / "bomb.png")
    out = src / "report"
    good = ["day1/IMG_0001.JPG", "day2/IMG_0001.JPG", "day1/IMG_0003.HEIC", "grey16.png",
            "cmyk.jpg", "x.webp", "x.webp.jpg", "façade 3 &<b>.jpg", "caf\\xe9.png", "strip.png",
            "dot.png"]  # fmt: skip
    bad = {"empty.jpg": "empty", "notes.jpg": "not a readable image", "bomb.png": "MP",
           "IMG_0002.HEIC": "not a readable image"}  # fmt: skip
    for run in range(2):
        proc = _demo(src, out, weights, "--tile", "1024", "--tile-overlap", "128")
        assert proc.returncode == 0, proc.stderr[-3000:]
        rows = _rows(out / "images.csv")
        assert sorted(rows) == sorted(good + list(bad)), run  # no overlay read back as a photo
    for key in good:
        assert rows[key]["status"] == "ok", (key, rows[key])
    for key, reason in bad.items():
        assert rows[key]["status"] == "unreadable" and reason in rows[key]["reason"], rows[key]
    # the rotated photos: displayed orientation in the report and in the overlay
    for key in ("day1/IMG_0001.JPG", "day2/IMG_0001.JPG", "day1/IMG_0003.HEIC"):
        assert (rows[key]["height"], rows[key]["width"]) == (str(H), str(W))
        name = key + (".jpg" if key.endswith(".HEIC") else "")  # overlays: a format OpenCV writes
        overlay = np.asarray(Image.open(out / "overlays" / name))
        assert overlay.shape == (H, W, 3)
    a, b = (np.asarray(Image.open(out / "overlays" / f"day{d}" / "IMG_0001.JPG")) for d in (1, 2))
    assert np.abs(a.astype(int) - b).mean() > 5  # two photos, two overlays
    assert (rows["strip.png"]["height"], rows["strip.png"]["width"]) == ("3", "4000")
    assert (rows["dot.png"]["height"], rows["dot.png"]["width"]) == ("1", "1")
    overlays = {
        os.path.relpath(os.path.join(d, f), out / "overlays")
        for d, _, files in os.walk(out / "overlays")
        for f in files
    }
    assert len(overlays) == len(good) and not any(f.endswith(".tmp") for f in overlays)
    report = json.load(open(out / "defect_report.json", encoding="utf-8"))
    assert report["totals"]["images"] == len(good) + len(bad)
    html = (out / "report.html").read_text(encoding="utf-8")
    assert "façade 3 &amp;&lt;b&gt;.jpg" in html and "<b>.jpg" not in html


def test_one_failing_photo_does_not_stop_the_folder(weights, tmp_path, monkeypatch):
    """An internal error on one photo: the others are processed, the photo is listed with
    status 'error', the report is written, exit status 1."""
    src = tmp_path / "in"
    os.makedirs(src)
    for i in range(3):
        Image.fromarray(reference(i)).save(src / f"p{i}.jpg")
    real = predictor.PanopticDemo.predict

    def predict(self, image):
        if image.mean() == self._poison:
            raise RuntimeError("model failed on this photo")
        return real(self, image)

    monkeypatch.setattr(predictor.PanopticDemo, "predict", predict)
    poison = read_photo(str(src / "p1.jpg")).mean()
    monkeypatch.setattr(predictor.PanopticDemo, "_poison", poison, raising=False)
    proc = _demo(src, tmp_path / "out", weights)
    assert proc.returncode == 1, proc.stderr[-3000:]
    assert "p1.jpg" in proc.stderr and "Traceback" not in proc.stderr.split("error:")[-1]
    rows = _rows(tmp_path / "out" / "images.csv")
    assert rows["p1.jpg"]["status"] == "error" and "model failed" in rows["p1.jpg"]["reason"]
    assert rows["p0.jpg"]["status"] == rows["p2.jpg"]["status"] == "ok"


def test_ctrl_c_leaves_no_half_written_file(weights, tmp_path, monkeypatch):
    """Ctrl-C on the second photo: exit 130 with one line, no traceback; the first overlay is
    complete, no report and no temporary file is left."""
    src = tmp_path / "in"
    os.makedirs(src)
    for i in range(3):
        Image.fromarray(reference(i)).save(src / f"p{i}.jpg")
    real = predictor.PanopticDemo.run_on_image
    calls = []

    def run_on_image(self, path, key=None, output=None):
        calls.append(key)
        if len(calls) == 2:
            raise KeyboardInterrupt
        return real(self, path, key, output)

    monkeypatch.setattr(predictor.PanopticDemo, "run_on_image", run_on_image)
    out = tmp_path / "out"
    proc = _demo(src, out, weights)
    assert proc.returncode == 130 and "interrupted" in proc.stderr
    assert "Traceback" not in proc.stderr
    files = sorted(
        os.path.relpath(os.path.join(d, f), out) for d, _, fs in os.walk(out) for f in fs
    )
    assert files == [os.path.join("overlays", "p0.jpg")]
    Image.open(out / "overlays" / "p0.jpg").load()  # complete


def test_max_megapixels_argument(weights, tmp_path):
    src = tmp_path / "in"
    os.makedirs(src)
    Image.fromarray(reference()).save(src / "p.jpg")
    for value in ("0", "-3", "nan"):
        proc = _demo(src, tmp_path / "out", weights, "--max-megapixels", value)
        assert_user_error(proc, "--max-megapixels")
    proc = _demo(src, tmp_path / "out", weights, "--max-megapixels", "0.001")
    assert_user_error(proc, "p.jpg", "MP")  # the only photo refused: nothing written
    assert not (tmp_path / "out").exists()


# --- config files never run code ---------------------------------------------------------------


def _configs(folder):
    marker = os.path.join(folder, "pwned")
    files = {
        "evil.yaml": f'MODEL: !!python/object/apply:os.system ["touch {marker}"]\n',
        "evil_base.yaml": "_BASE_: evil.yaml\n",
        "loop_a.yaml": "_BASE_: loop_b.yaml\n",
        "loop_b.yaml": "_BASE_: loop_a.yaml\n",
        "self.yaml": "_BASE_: self.yaml\n",
        "missing_base.yaml": "_BASE_: nowhere/base.yaml\n",
        "empty.yaml": "",
        "list.yaml": "- MODEL\n- WEIGHTS\n",
        "binary.yaml": "\x00\x01\x02",
    }
    for name, text in files.items():
        with open(os.path.join(folder, name), "w") as f:
            f.write(text)
    return marker


@pytest.mark.parametrize(
    "name,words",
    [
        ("evil.yaml", ["evil.yaml", "refused", "python/object"]),
        ("evil_base.yaml", ["evil.yaml", "refused"]),
        ("loop_a.yaml", ["_BASE_ loop", "loop_a.yaml", "loop_b.yaml"]),
        ("self.yaml", ["_BASE_ loop", "self.yaml"]),
        ("missing_base.yaml", ["nowhere/base.yaml", "missing_base.yaml"]),
        ("empty.yaml", ["empty.yaml", "empty"]),
        ("list.yaml", ["list.yaml", "not a mapping"]),
        ("binary.yaml", ["binary.yaml"]),
    ],
)
def test_config_file_checks(name, words, tmp_path):
    """load_config (train_net, export_model, convert_detr_checkpoint) refuses each with a
    message; the Python tag is never executed (Detectron2's own merge_from_file falls back to
    yaml.unsafe_load)."""
    marker = _configs(str(tmp_path))
    with pytest.raises(UserError) as e:
        load_config(str(tmp_path / name))
    for word in words:
        assert word in e.value.format(), e.value.format()
    assert not os.path.exists(marker)


def test_config_that_would_run_code_cli(weights, tmp_path):
    """The command lines: exit 2, no traceback, no code run (train_net in a subprocess, the demo
    in-process)."""
    marker = _configs(str(tmp_path))
    proc = run_tool(
        "tools/train_net.py", "--config-file", tmp_path / "evil_base.yaml",
        "OUTPUT_DIR", tmp_path / "run",
    )  # fmt: skip
    assert_user_error(proc, "evil.yaml", "refused")
    src = tmp_path / "in"
    os.makedirs(src)
    Image.fromarray(reference()).save(src / "p.jpg")
    for name in ("evil.yaml", "loop_a.yaml"):
        proc = run_in_process(
            ["--config-file", str(tmp_path / name), "--input", str(src), "--output",
             str(tmp_path / "out"), "MODEL.WEIGHTS", weights]
        )  # fmt: skip
        assert_user_error(proc, name)
    assert not os.path.exists(marker)
    assert not (tmp_path / "run").exists() and not (tmp_path / "out").exists()


# --- the converter on nested, mixed-case layouts ------------------------------------------------


def _raw(root, images, masks):
    for rel in images:
        os.makedirs(os.path.dirname(os.path.join(root, "images", rel)), exist_ok=True)
        Image.fromarray(reference(len(rel))).save(os.path.join(root, "images", rel))
    for rel, box in masks.items():
        os.makedirs(os.path.dirname(os.path.join(root, "masks", rel)), exist_ok=True)
        mask = np.zeros((H, W), np.uint8)
        y0, y1, x0, x1 = box
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(mask).save(os.path.join(root, "masks", rel))


def test_converter_sub_folders_and_case(tmp_path):
    """images/site1/a.jpg and images/site2/a.jpg are two images (site1__a, site2__a), each with
    the mask of its own sub-folder; a mask named in another case than its image
    (IMG_7.JPG / img_7Crack.png) still pairs with it."""
    raw = tmp_path / "raw"
    _raw(
        raw,
        ["site1/a.jpg", "site2/a.jpg", "IMG_7.JPG"],
        {"site1/acrack.png": (5, 15, 5, 40), "site2/aspall.png": (20, 40, 10, 50),
         "img_7Crack.png": (30, 34, 5, 60)},
    )  # fmt: skip
    os.symlink(raw / "images", raw / "images" / "site1" / "up")  # a loop: searched once
    summary = convert_concrete_dataset(raw, tmp_path / "out", val_fraction=0, workers=1,
                                       progress=False)  # fmt: skip
    assert summary["images"] == {"train": 3}
    assert summary["instances"] == {"rebar": 0, "spall": 1, "crack": 2}
    assert sorted(os.listdir(tmp_path / "out" / "train")) == [
        "IMG_7.jpg", "site1__a.jpg", "site2__a.jpg",
    ]  # fmt: skip
    records = json.load(open(tmp_path / "out" / "annotations" / "panoptic_train.json"))
    cats = {
        r["file_name"]: sorted(s["category_id"] for s in r["segments_info"])
        for r in records["annotations"]
    }
    assert cats == {"site1__a.png": [3, 4], "site2__a.png": [2, 4], "IMG_7.png": [3, 4]}


def test_converter_exif_rotated_photo_with_unrotated_mask(tmp_path):
    """Detectron2 reads photos with their EXIF rotation applied; a mask drawn on the stored
    pixels (the sizes swapped) is refused with a message that says so."""
    raw = tmp_path / "raw"
    os.makedirs(raw / "images")
    os.makedirs(raw / "masks")
    save_rotated(raw / "images" / "p.jpg", 6)  # stored 48 wide x 72 high, displayed 72 x 48
    stored = Image.open(raw / "images" / "p.jpg").size
    Image.fromarray(np.zeros(stored[::-1], np.uint8)).save(raw / "masks" / "pcrack.png")
    with pytest.raises(UserError) as e:
        convert_concrete_dataset(raw, tmp_path / "out", workers=1, progress=False)
    assert "EXIF orientation 6" in str(e.value) and "pcrack.png" in str(e.value)
    assert not (tmp_path / "out").exists()
    # the mask in the displayed orientation converts
    Image.fromarray(np.zeros((H, W), np.uint8)).save(raw / "masks" / "pcrack.png")
    convert_concrete_dataset(raw, tmp_path / "out", val_fraction=0, workers=1, progress=False)
    assert Image.open(tmp_path / "out" / "train" / "p.jpg").size == (W, H)
    shutil.rmtree(tmp_path / "out")


def _field_raw(raw):
    """RAW/images: a phone HEIC (EXIF orientation 6: stored turned), a 16-bit grey TIFF and a
    lossless WEBP; RAW/masks: JPG masks, one named in another case than its photo. Returns
    (expected RGB per output stem, expected mask pixels per (stem, category id))."""
    os.makedirs(raw / "images")
    os.makedirs(raw / "masks")
    save_rotated(raw / "images" / "IMG_0001.HEIC", 6)
    ramp = (np.arange(H)[:, None] * 1000 + np.arange(W)[None, :] * 200).astype(np.uint16)
    Image.fromarray(ramp).save(raw / "images" / "scan.TIF")  # I;16
    wall = reference(5)
    Image.fromarray(wall).save(raw / "images" / "wall.webp", lossless=True)
    boxes = {  # mask file -> (y0, y1, x0, x1) on 8-pixel blocks: JPEG-exact at threshold 128
        "IMG_0001crack.jpg": (8, 16, 8, 48),  # 8 x 40 = 320 px, in the displayed orientation
        "SCANspall.JPG": (16, 40, 24, 56),  # 24 x 32 = 768 px; case differs from scan.TIF
        "wallrebar.jpg": (0, 24, 48, 64),  # 24 x 16 = 384 px
    }
    for name, (y0, y1, x0, x1) in boxes.items():
        mask = np.zeros((H, W), np.uint8)
        mask[y0:y1, x0:x1] = 255
        Image.fromarray(mask).save(raw / "masks" / name, quality=95)
    grey = np.rint(ramp / 257.0).astype(np.uint8)
    expected_rgb = {
        "IMG_0001": reference(),
        "scan": np.repeat(grey[:, :, None], 3, 2),
        "wall": wall,
    }
    pixels = {("IMG_0001", 3): 320, ("scan", 2): 768, ("wall", 1): 384}
    return expected_rgb, pixels


def test_converter_reads_heic_tiff_and_webp_photos(tmp_path):
    """Field folders hold phone HEIC photos and 16-bit TIFFs: the converter reads every photo
    format the demo reads, through the same reader (HEIC turned as displayed, 16-bit grey scaled,
    not clipped) and writes plain JPEGs that Detectron2's own read_image loads at the size and
    orientation of the json; the panoptic targets hold the masks' pixels exactly."""
    from detectron2.data.detection_utils import read_image

    from d2_detr.data.panoptic_format import PHOTO_EXTENSIONS

    assert predictor.IMAGE_EXTENSIONS is PHOTO_EXTENSIONS  # one list, demo and converter
    raw, out = tmp_path / "raw", tmp_path / "out"
    expected_rgb, pixels = _field_raw(raw)
    summary = convert_concrete_dataset(raw, out, val_fraction=0, workers=1, progress=False)
    assert summary["images"] == {"train": 3} and summary["reencoded_images"] == 3
    assert summary["instances"] == {"rebar": 1, "spall": 1, "crack": 1}
    assert sorted(os.listdir(out / "train")) == ["IMG_0001.jpg", "scan.jpg", "wall.jpg"]
    pan = json.load(open(out / "annotations" / "panoptic_train.json"))
    sizes = {i["id"]: (i["height"], i["width"], i["file_name"]) for i in pan["images"]}
    for ann in pan["annotations"]:
        height, width, file_name = sizes[ann["image_id"]]
        stem = file_name[: -len(".jpg")]
        assert (height, width) == (H, W)  # the HEIC as displayed, not as stored (72 x 48)
        assert Image.open(out / "train" / file_name).format == "JPEG"
        rgb = read_image(str(out / "train" / file_name), format="RGB")  # Detectron2's loader
        assert rgb.shape == (H, W, 3), file_name
        diff = np.abs(rgb.astype(int) - expected_rgb[stem]).mean()
        assert diff < 3, (file_name, diff)  # turned, mirrored or clipped: > 40
        if stem == "IMG_0001":
            assert _is_red_top_left(rgb[:, :, ::-1])
        ids = np.asarray(Image.open(out / "panoptic_train" / ann["file_name"]).convert("RGB"))
        ids = ids.astype(np.int64) @ np.array([1, 256, 65536])
        by_cat = {}
        for seg in ann["segments_info"]:
            assert seg["area"] == int((ids == seg["id"]).sum())
            by_cat[seg["category_id"]] = by_cat.get(seg["category_id"], 0) + seg["area"]
        thing = {c: n for c, n in by_cat.items() if c != 4}
        assert thing == {c: n for (s, c), n in pixels.items() if s == stem}, (stem, by_cat)
        assert by_cat[4] == H * W - sum(thing.values())  # background: every other pixel


def test_converter_heic_without_pillow_heif_says_what_to_install(tmp_path, monkeypatch):
    _field_raw(tmp_path / "raw")
    monkeypatch.setattr(panoptic_format, "enable_heif", lambda: False)
    with pytest.raises(UserError, match=r"IMG_0001\.HEIC: HEIC photos need the pillow-heif") as e:
        convert_concrete_dataset(tmp_path / "raw", tmp_path / "out", workers=1, progress=False)
    assert "pip install pillow-heif" in e.value.hint
    assert not (tmp_path / "out").exists()


def test_converter_broken_heic_is_named(tmp_path, capsys):
    """A truncated .heic among good photos: the converter's bad-photo rule (as for a corrupt
    JPEG): exit 2 with a message naming the file and what to do, no traceback, nothing written.
    With --skip-unreadable-images it is named in a warning and the summary, and the others
    convert, as they do without it."""
    import importlib.util

    raw, out = tmp_path / "raw", tmp_path / "out"
    _field_raw(raw)
    save_rotated(raw / "images" / "IMG_0002.heic", 1)
    data = (raw / "images" / "IMG_0002.heic").read_bytes()
    (raw / "images" / "IMG_0002.heic").write_bytes(data[: len(data) // 2])
    with pytest.raises(UserError, match=r"IMG_0002\.heic: corrupt or unreadable image"):
        convert_concrete_dataset(raw, out, val_fraction=0, workers=1, progress=False)
    assert sorted(os.listdir(tmp_path)) == ["raw"]  # nothing half-written
    spec = importlib.util.spec_from_file_location(
        "_field_prepare", "datasets/prepare_concrete_defects.py"
    )
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    argv = ["--raw", str(raw), "--out", str(out), "--workers", "1", "--no-progress"]
    assert tool.main(argv) == 2
    err = capsys.readouterr().err
    assert "IMG_0002.heic: corrupt or unreadable image" in err and "Traceback" not in err
    assert sorted(os.listdir(tmp_path)) == ["raw"]
    assert tool.main(argv + ["--val-fraction", "0", "--skip-unreadable-images"]) == 0
    captured = capsys.readouterr()
    assert "IMG_0002.heic: corrupt or unreadable image" in captured.err
    summary = json.loads(captured.out)
    assert summary["images"] == {"train": 3}
    assert summary["instances"] == {"rebar": 1, "spall": 1, "crack": 1}
    assert [os.path.basename(s["image"]) for s in summary["skipped_images"]] == ["IMG_0002.heic"]
    assert sorted(os.listdir(out / "train")) == ["IMG_0001.jpg", "scan.jpg", "wall.jpg"]
    skipped_run = {p.name: p.read_bytes() for p in (out / "train").iterdir()}
    shutil.rmtree(out)
    os.remove(raw / "images" / "IMG_0002.heic")  # the same images as without the broken photo
    assert tool.main(argv + ["--val-fraction", "0"]) == 0
    assert {p.name: p.read_bytes() for p in (out / "train").iterdir()} == skipped_run
    assert json.loads(capsys.readouterr().out)["skipped_images"] == []


# --- weights of another model ------------------------------------------------------------------


def test_weights_fit_counts_names_and_shapes():
    model = {"a": (2, 3), "b": (4,), "c": (1,)}
    fit = weights_fit(model, {"module.a": np.zeros((2, 3)), "module.b": np.zeros(5),
                              "module.z": np.zeros(1)})  # fmt: skip
    assert fit["loaded"] == ["a"] and fit["missing"] == ["c"] and fit["unused"] == ["z"]
    assert fit["shape"] == ["b (5,) != (4,)"]


def _tiny_cfg(*opts):
    cfg = load_config(TINY, list(SMALL_CLI) + list(opts))
    cfg.freeze()
    return cfg


def test_check_weights_fit(weights, tmp_path):
    """The same model: silent. Another query count: training gets one summary line, evaluation
    an error. An unrelated checkpoint (a classifier's names): an error either way."""
    from d2_detr.engine import DETRCheckpointer

    data = DETRCheckpointer(None)._load_file(weights)
    assert check_weights_fit(_tiny_cfg(), data, weights) is None
    assert check_weights_fit(_tiny_cfg(), data, weights, eval_only=True) is None
    other = _tiny_cfg("MODEL.DETR.NUM_OBJECT_QUERIES", "7")
    line = check_weights_fit(other, data, weights)
    assert "query_embed.weight (20, 64) != (7, 64)" in line and "1 of another shape" in line
    with pytest.raises(UserError, match="does not fit the model of this config"):
        check_weights_fit(other, data, weights, eval_only=True)
    resnet = {"model": {"conv1.weight": np.zeros((64, 3, 7, 7)), "fc.weight": np.zeros((9, 2))}}
    with pytest.raises(UserError, match="none of its 2 tensors fits"):
        check_weights_fit(_tiny_cfg(), resnet, "resnet.pth")


def test_train_net_eval_only_with_another_models_weights(weights, tmp_path):
    """tools/train_net.py --eval-only with weights of another config: exit 2 and a message
    naming the file and a mismatched tensor, before anything is written (it used to evaluate a
    half-random model after a warning per tensor)."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_field_train_net", "tools/train_net.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    out = tmp_path / "eval"
    args = tool.parse_args(
        ["--config-file", TINY, "--eval-only", "OUTPUT_DIR", str(out), "MODEL.WEIGHTS", weights,
         "DATASETS.TEST", "()", *SMALL_CLI, "MODEL.DETR.HIDDEN_DIM", "96"]
    )  # fmt: skip
    with pytest.raises(UserError) as e:
        tool.setup(args)
    assert "model.pth" in str(e.value) and "input_proj.weight" in str(e.value)
    assert not out.exists()


def test_names_that_are_not_utf8(tmp_path):
    """The converter refuses a file name that is not UTF-8 (its json files name every image),
    naming it; the validator reads such a dataset (made elsewhere) without crashing: OpenCV's
    imread used to end the process with SIGSEGV on such a path."""
    from d2_detr.data.validation import check_panoptic

    raw = tmp_path / "raw"
    _raw(raw, ["a.jpg"], {"acrack.png": (5, 15, 5, 40)})
    os.rename(raw / "images" / "a.jpg", os.path.join(os.fsencode(str(raw / "images")), b"\xe9.jpg"))
    with pytest.raises(UserError, match=r"\\xe9\.jpg: the file name is not valid UTF-8"):
        convert_concrete_dataset(raw, tmp_path / "bad", workers=1, progress=False)
    raw2 = tmp_path / "raw2"
    _raw(raw2, ["a.jpg"], {"acrack.png": (5, 15, 5, 40)})
    out = tmp_path / "out"
    convert_concrete_dataset(raw2, out, val_fraction=0, workers=1, progress=False)
    odd = os.fsdecode(b"\xe9")
    os.rename(out / "train" / "a.jpg", out / "train" / f"{odd}.jpg")
    os.rename(out / "panoptic_train" / "a.png", out / "panoptic_train" / f"{odd}.png")
    for name in ("panoptic_train.json", "instances_train.json"):
        path = out / "annotations" / name
        data = json.load(open(path))
        for rec in data["images"] + data.get("annotations", []):
            if "file_name" in rec:
                rec["file_name"] = rec["file_name"].replace("a.", f"{odd}.")
        json.dump(data, open(path, "w"))
    assert check_panoptic(str(out)) == []


def test_overlay_write_errors(weights, tmp_path, monkeypatch):
    """An overlay name the file system refuses (255 bytes + '.jpg'): that photo is an error, the
    others are processed (exit 1). A full disk: exit 2 naming --output, no report written."""
    import errno

    src = tmp_path / "in"
    os.makedirs(src)
    Image.fromarray(reference()).save(src / "ok.jpg")
    long_name = "x" * 250 + ".avif"  # a valid name; its overlay, name + ".jpg", is not
    Image.fromarray(reference(1)).save(src / long_name)
    proc = _demo(src, tmp_path / "out", weights)
    assert proc.returncode == 1, proc.stderr[-2000:]
    rows = _rows(tmp_path / "out" / "images.csv")
    assert rows["ok.jpg"]["status"] == "ok"
    assert rows[long_name]["status"] == "error" and "overlay" in rows[long_name]["reason"]

    def full(path, data):
        raise OSError(errno.ENOSPC, "No space left on device", path)

    monkeypatch.setattr(predictor, "atomic_write_bytes", full)
    proc = _demo(src, tmp_path / "out2", weights)
    assert_user_error(proc, "--output", "No space left on device")
    assert not (tmp_path / "out2" / "images.csv").exists()


def test_validator_given_a_photo(tmp_path, capsys):
    """datasets/check_panoptic.py on a JPEG: exit 2 (nothing to check), not exit 1 with an
    'unreadable json' problem."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_field_check", "datasets/check_panoptic.py")
    tool = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(tool)
    Image.fromarray(reference()).save(tmp_path / "photo.jpg")
    assert tool.main([str(tmp_path / "photo.jpg")]) == 2
    assert "not a dataset folder or a .json file" in capsys.readouterr().err


def test_postscript_named_jpg_is_never_decoded(tmp_path):
    """Pillow identifies files by content: an EPS file named .jpg would be rendered by
    Ghostscript (a program run on the file) where it is installed. The demo and the converter
    decode photo formats only. A multi-picture JPEG (MPO, some cameras) still reads."""
    eps = b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\nshowpage\n"
    (tmp_path / "eps.jpg").write_bytes(eps)
    assert Image.open(tmp_path / "eps.jpg").format == "EPS"  # what plain Image.open does
    with pytest.raises(UnreadablePhoto, match="cannot identify"):
        read_photo(str(tmp_path / "eps.jpg"))
    raw = tmp_path / "raw"
    os.makedirs(raw / "images")
    os.makedirs(raw / "masks")
    (raw / "images" / "a.jpg").write_bytes(eps)
    with pytest.raises(UserError, match="a.jpg: corrupt or unreadable image"):
        convert_concrete_dataset(raw, tmp_path / "out", workers=1, progress=False)
    first = Image.fromarray(reference())
    first.save(tmp_path / "mpo.jpg", format="MPO", save_all=True, append_images=[first])
    assert read_photo(str(tmp_path / "mpo.jpg")).shape == (H, W, 3)
