"""measure_defect on shapes of known geometry (the bench_measure drawings) and on bad inputs."""

import math

import cv2
import numpy as np
import pytest

from benchmarks.bench_measure import _resample, jpeg_mask, render_coverage
from d2_detr.inspection import measure_defect


def _band(width, angle_deg, length=150.0, shape=(200, 200), centre=(100.3, 99.8)):
    a = math.radians(angle_deg)
    d = np.array([math.cos(a), -math.sin(a)]) * length / 2  # x right, y down: ccw on screen
    c = np.array(centre)
    return render_coverage([np.stack([c - d, c + d])], width, shape)


@pytest.mark.parametrize("width,angle", [(2, 0), (3, 30), (5, 67.5), (8, 22.5), (12, 100)])
def test_straight_band_width_length_orientation(width, angle):
    m = measure_defect(_band(width, angle) >= 0.5, "crack")
    assert m["width_mean_px"] == pytest.approx(width, abs=0.5)
    assert m["width_max_px"] == pytest.approx(width, abs=0.8)
    assert m["length_px"] == pytest.approx(150 + width, rel=0.02)  # round ends: + w/2 each
    assert abs((m["orientation_deg"] - angle + 90) % 180 - 90) < 1.5
    assert m["area_px"] == int((_band(width, angle) >= 0.5).sum())


def test_even_band_width_has_no_half_pixel_bias():
    """A band of exactly w pixel rows is w wide (the EDT at its centre is (w+1)/2)."""
    for w in range(1, 9):
        mask = np.zeros((40, 120), bool)
        mask[10 : 10 + w, 10:110] = True
        m = measure_defect(mask, "crack")
        assert m["width_mean_px"] == pytest.approx(w, abs=0.05), w
        assert m["width_max_px"] == pytest.approx(w, abs=0.05), w
        assert m["length_px"] == pytest.approx(100, abs=0.5), w


def test_diagonal_steps_counted_not_staircase():
    """1-px line at 22.5 deg: 8-neighbour step counting gives ~ +8 %; ours within 1 %."""
    mask = np.zeros((200, 200), bool)
    xs = np.arange(150)
    mask[np.round(180 - xs * math.tan(math.radians(22.5))).astype(int), 20 + xs] = True
    true = 150 / math.cos(math.radians(22.5))
    m = measure_defect(mask, "crack")
    assert m["length_px"] == pytest.approx(true, rel=0.01)
    assert m["orientation_deg"] == pytest.approx(22.5, abs=0.5)


def test_arc_and_jpeg_edges():
    rng = np.random.default_rng(3)
    t = np.linspace(0.3, 2.3, 400)
    pts = np.stack([100 + 70 * np.cos(t), 100 + 70 * np.sin(t)], 1)
    cov = render_coverage([pts], 4, (200, 200))
    for mask in (cov >= 0.5, jpeg_mask(cov, rng)):
        m = measure_defect(mask, "crack")
        assert m["width_mean_px"] == pytest.approx(4, abs=0.5)
        assert m["length_px"] == pytest.approx(70 * 2.0 + 4, rel=0.02)


def test_branch_is_pruned_from_the_length():
    main = np.array([[20.0, 60.0], [100.0, 100.0], [180.0, 60.0]])
    branch = np.array([[100.0, 100.0], [110.0, 170.0]])
    cov = render_coverage([main, branch], 3, (200, 200))
    m = measure_defect(cov >= 0.5, "crack")
    true = _resample(main)[1] + 3
    assert m["length_px"] == pytest.approx(true, rel=0.02)  # the 71 px branch is not added
    assert m["width_mean_px"] == pytest.approx(3, abs=0.5)
    assert abs((m["orientation_deg"] + 90) % 180 - 90) < 2  # horizontal: near 0 or near 180


def test_spall_ellipse_extent_and_orientation():
    mask = np.zeros((200, 200), np.uint8)
    cv2.ellipse(mask, (100, 100), (40, 15), 30, 0, 360, 1, -1)  # cv2: 30 deg clockwise
    m = measure_defect(mask.astype(bool), "spall")
    assert m["length_px"] == pytest.approx(81, rel=0.03)
    assert m["width_max_px"] == pytest.approx(31, abs=3)
    assert m["orientation_deg"] == pytest.approx(150, abs=3)


def test_orientation_convention_and_single_pixel():
    up = np.eye(50, dtype=bool)[::-1]  # from bottom-left to top-right on screen
    assert measure_defect(up, "crack")["orientation_deg"] == pytest.approx(45, abs=0.5)
    assert measure_defect(np.eye(50, dtype=bool), "rebar")["orientation_deg"] == pytest.approx(
        135, abs=0.5
    )
    vertical = np.zeros((60, 20), bool)
    vertical[5:55, 8:11] = True
    assert measure_defect(vertical, "crack")["orientation_deg"] == pytest.approx(90, abs=0.5)
    dot = np.zeros((5, 5), bool)
    dot[2, 2] = True
    m = measure_defect(dot, "crack")
    assert (m["area_px"], m["length_px"], m["width_max_px"]) == (1, 1.0, 1.0)
    assert m["bbox"] == [2, 2, 3, 3]


def test_mm_units():
    mask = _band(6, 40) >= 0.5
    px = measure_defect(mask, "crack")
    mm = measure_defect(mask.astype(np.uint8), "crack", mm_per_pixel=0.25)
    assert measure_defect(mask.astype(np.uint8) * 255, "crack") == px  # OpenCV-style 0/255
    assert "length_mm" not in px and px["mm_per_pixel"] is None
    assert mm["length_mm"] == pytest.approx(0.25 * px["length_px"], abs=1e-3)
    assert mm["width_max_mm"] == pytest.approx(0.25 * px["width_max_px"], abs=1e-3)
    assert mm["width_mean_mm"] == pytest.approx(0.25 * px["width_mean_px"], abs=1e-3)
    assert mm["area_mm2"] == pytest.approx(0.0625 * px["area_px"], abs=1e-3)


@pytest.mark.parametrize(
    "mask,kind,scale,message",
    [
        (np.zeros((5, 5), bool), "crack", None, "empty"),
        (np.ones((2, 5, 5), bool), "crack", None, "2-D"),
        (np.full((5, 5), 0.5), "crack", None, "only 0 and 1"),
        (np.full((5, 5), 2, np.uint8), "crack", None, "only 0 and 1"),
        (np.full((5, 5), 255, np.int32), "crack", None, "only 0 and 1"),
        (np.array([["a"]]), "crack", None, "dtype"),
        ([[True]], "crack", None, "numpy array"),
        (np.ones((5, 5), bool), "pothole", None, "kind='pothole'"),
        (np.ones((5, 5), bool), "crack", 0, "mm_per_pixel=0"),
        (np.ones((5, 5), bool), "crack", -0.1, "mm_per_pixel=-0.1"),
        (np.ones((5, 5), bool), "crack", float("nan"), "mm_per_pixel=nan"),
        (np.ones((5, 5), bool), "crack", "0.2", "must be a number"),
    ],
)
def test_bad_inputs(mask, kind, scale, message):
    with pytest.raises(ValueError, match="measure_defect") as info:
        measure_defect(mask, kind, mm_per_pixel=scale)
    assert message in str(info.value)


def test_spall_with_holes_is_measured_by_its_extent():
    """A spall with bars showing through (holes in its mask): the outline's extent, not a path
    winding around the holes."""
    mask = np.zeros((120, 120), np.uint8)
    cv2.circle(mask, (60, 60), 40, 1, -1)
    mask[45:50, 15:105] = 0  # two bars cut across (the rebar segments take these pixels)
    mask[70:75, 15:105] = 0
    mask = mask.astype(bool)
    m = measure_defect(mask, "spall", mm_per_pixel=2.0)
    assert m["length_px"] == pytest.approx(81, abs=2)
    assert m["width_max_px"] == pytest.approx(81, abs=2)
    assert m["area_px"] == int(mask.sum()) and m["area_mm2"] == pytest.approx(4 * mask.sum())
    assert m["length_mm"] == pytest.approx(2 * m["length_px"], abs=1e-3)
