"""measure_defect against an independent reference computed here: shapes rasterised from their
exact geometry (a pixel is set when its centre lies within w / 2 of the centre line), so the
true length and width are known in closed form; plus degenerate masks and bad inputs."""

import math

import numpy as np
import pytest

from d2_detr.inspection import measure_defect


def _distance_to_polyline(points, shape):
    """(H, W) distance from every pixel centre to the polyline ``points`` ((n, 2) x, y)."""
    yy, xx = np.mgrid[: shape[0], : shape[1]].astype(float)
    best = np.full(shape, np.inf)
    for (x0, y0), (x1, y1) in zip(points[:-1], points[1:]):
        dx, dy = x1 - x0, y1 - y0
        t = np.clip(((xx - x0) * dx + (yy - y0) * dy) / (dx * dx + dy * dy), 0.0, 1.0)
        best = np.minimum(best, np.hypot(xx - (x0 + t * dx), yy - (y0 + t * dy)))
    return best


def _polyline_band(points, width, shape):
    """Pixels within width / 2 of the polyline: a band with round caps; its centre-line length
    is the polyline's, tip to tip (cap included) the polyline's + width."""
    return _distance_to_polyline(np.asarray(points, float), shape) <= width / 2.0


def _arc(cx, cy, r, a0, a1, n=400):
    t = np.linspace(a0, a1, n)
    return np.stack([cx + r * np.cos(t), cy + r * np.sin(t)], 1)


@pytest.mark.parametrize("width", [3, 6, 11])
def test_polyline_length_and_width(width):
    """A three-segment polyline with 50 and 70 degree bends: the length is the sum of the
    segments plus the two round caps, the width the band's."""
    pts = np.array([[20.0, 30.0], [120.0, 40.0], [150.0, 130.0], [60.0, 170.0]])
    true = np.sum(np.hypot(*np.diff(pts, axis=0).T))
    mask = _polyline_band(pts, width, (200, 180))
    m = measure_defect(mask, "crack")
    assert m["length_px"] == pytest.approx(true + width, rel=0.02)
    assert m["width_mean_px"] == pytest.approx(width, abs=0.6)
    assert m["components"] == 1 and m["area_px"] == int(mask.sum())


@pytest.mark.parametrize("radius,width", [(40, 3), (70, 6)])
def test_arc_length_and_width(radius, width):
    """A 200-degree arc: length r * angle (+ caps)."""
    angle = math.radians(200)
    pts = _arc(100, 100, radius, 0.4, 0.4 + angle)
    m = measure_defect(_polyline_band(pts, width, (200, 200)), "crack")
    assert m["length_px"] == pytest.approx(radius * angle + width, rel=0.02)
    assert m["width_mean_px"] == pytest.approx(width, abs=0.6)


@pytest.mark.parametrize("radius,width", [(30, 2), (60, 5), (60, 11)])
def test_ring_counts_the_whole_circumference(radius, width):
    """A closed ring-shaped crack: its centre line is the full circle 2 pi r (the longest open
    path through it would be half of that)."""
    yy, xx = np.mgrid[:160, :160]
    d = np.hypot(yy - 80.2, xx - 79.7)
    mask = np.abs(d - radius) <= width / 2.0
    m = measure_defect(mask, "crack")
    assert m["length_px"] == pytest.approx(2 * math.pi * radius, rel=0.02)
    assert m["width_mean_px"] == pytest.approx(width, abs=0.6)


def test_ring_with_a_tail_adds_the_tail_only():
    yy, xx = np.mgrid[:200, :200]
    ring = np.abs(np.hypot(yy - 100, xx - 100) - 50) <= 2.5
    tail = _polyline_band([[150.0, 100.0], [190.0, 100.0]], 5, (200, 200))
    m = measure_defect(ring | tail, "crack")
    # the tail runs from the ring's centre line (x = 150) to its cap at x = 192.5
    assert m["length_px"] == pytest.approx(2 * math.pi * 50 + 42.5, rel=0.02)


def test_hole_inside_a_wide_crack_is_not_a_loop():
    """A speck of background inside a wide band: the centre line goes around it, the length is
    still the band's."""
    mask = _polyline_band([[20.0, 50.5], [180.0, 50.5]], 14, (100, 200))  # rows 44..57
    mask[49:52, 99:102] = False
    m = measure_defect(mask, "crack")
    assert m["length_px"] == pytest.approx(160 + 14, rel=0.02)
    assert m["width_max_px"] == pytest.approx(14, abs=1.0)


def test_degenerate_masks():
    one = np.zeros((9, 9), bool)
    one[4, 4] = True
    m = measure_defect(one, "crack")
    assert (m["length_px"], m["width_max_px"], m["area_px"]) == (1.0, 1.0, 1)
    row = np.zeros((10, 50), bool)
    row[0, :] = True  # a single row touching three borders
    m = measure_defect(row, "crack")
    assert m["length_px"] == pytest.approx(50, abs=0.5) and m["width_mean_px"] == 1.0
    assert m["orientation_deg"] == 0.0
    col = np.zeros((40, 7), bool)
    col[:, 6] = True
    m = measure_defect(col, "rebar")
    assert m["length_px"] == pytest.approx(40, abs=0.5) and m["orientation_deg"] == 90.0
    full = np.ones((30, 40), bool)  # the whole image
    m = measure_defect(full, "spall")
    assert m["length_px"] == pytest.approx(50.0) and m["area_px"] == 1200
    m = measure_defect(full, "crack")
    assert m["width_max_px"] == pytest.approx(30, abs=3) and m["length_px"] > 30


def test_dtypes_give_the_same_result():
    mask = _polyline_band([[10.0, 10.0], [60.0, 40.0]], 4, (50, 70))
    ref = measure_defect(mask, "crack")
    for arr in (mask.astype(np.uint8), mask.astype(np.uint8) * 255, mask.astype(np.float32),
                mask.astype(np.int64)):  # fmt: skip
        assert measure_defect(arr, "crack") == ref, arr.dtype


@pytest.mark.parametrize(
    "mask,message",
    [
        (np.zeros((5, 5), bool), "empty"),
        (np.zeros((0, 5), bool), "empty"),
        (np.ones((2, 5, 5), bool), "2-D"),
        (np.ones((5, 5, 1), bool), "2-D"),
        (np.ones(5, bool), "2-D"),
        (np.full((4, 4), 0.5), "0 and 1"),
        (np.full((4, 4), np.nan), "0 and 1"),
        (np.array([[2, 0], [0, 1]]), "0 and 1"),
        ([[1, 0], [0, 1]], "numpy array"),
        (np.array([["a"]]), "dtype"),
    ],
)
def test_bad_masks_raise_clear_value_errors(mask, message):
    with pytest.raises(ValueError, match=message):
        measure_defect(mask, "crack")
