"""Tiled full-resolution inference: grid, ownership, stitching, seam merging, with fake models."""

import numpy as np
import pytest
from scipy import ndimage

from d2_detr.inspection.tiling import (
    merge_across_seams,
    owned_regions,
    resolve_tiling,
    tile_grid,
    tiled_panoptic,
    upsample_labels,
    validate_tiling,
)


@pytest.mark.parametrize(
    "h, w, tile, overlap",
    [(4000, 6000, 1024, 128), (1000, 1000, 1024, 128), (1025, 300, 1024, 128), (517, 911, 100, 33)],
)
def test_grid_covers_with_overlap(h, w, tile, overlap):
    tiles = tile_grid(h, w, tile, overlap)
    count = np.zeros((h, w), dtype=np.int32)
    for y0, x0, y1, x1 in tiles:
        assert 0 <= y0 < y1 <= h and 0 <= x0 < x1 <= w
        assert (y1 - y0, x1 - x0) == (min(tile, h), min(tile, w))
        count[y0:y1, x0:x1] += 1
    assert count.min() >= 1  # covered
    for axis, length in ((0, h), (1, w)):
        starts = sorted({t[axis] for t in tiles})
        size = min(tile, length)
        for a, b in zip(starts, starts[1:]):
            assert a + size - b >= overlap  # neighbours share at least the overlap
            assert b > a
        assert starts[0] == 0 and starts[-1] + size == length
    # owned regions partition the image
    owned = np.zeros((h, w), dtype=np.int32)
    for (ty0, tx0, ty1, tx1), (y0, x0, y1, x1) in zip(tiles, owned_regions(tiles)):
        assert ty0 <= y0 < y1 <= ty1 and tx0 <= x0 < x1 <= tx1
        owned[y0:y1, x0:x1] += 1
    assert (owned == 1).all()


def test_grid_6000x4000_count():
    tiles = tile_grid(4000, 6000, 1024, 128)
    # ceil((6000-128)/896) = 7 columns, ceil((4000-128)/896) = 5 rows
    assert len(tiles) == 35


def test_owned_region_is_nearest_centre():
    tiles = tile_grid(300, 500, 200, 60)
    regions = owned_regions(tiles)
    centres = np.array([((y0 + y1) / 2, (x0 + x1) / 2) for y0, x0, y1, x1 in tiles])
    rng = np.random.default_rng(0)
    for y, x in zip(rng.integers(0, 300, 200), rng.integers(0, 500, 200)):
        (owner,) = [
            i for i, (y0, x0, y1, x1) in enumerate(regions) if y0 <= y < y1 and x0 <= x < x1
        ]
        # along each axis the owner's centre is (one of) the nearest
        dy = np.abs(centres[:, 0] - (y + 0.5))
        dx = np.abs(centres[:, 1] - (x + 0.5))
        assert dy[owner] <= dy.min() + 0.5 and dx[owner] <= dx.min() + 0.5


def test_resolve_tiling_defaults_to_the_model_test_size():
    assert resolve_tiling(320) == (320, 40)  # tiles the test resize leaves unscaled
    assert resolve_tiling(800, overlap=64) == (800, 64)
    assert resolve_tiling(320, tile=1024) == (1024, 128)
    assert resolve_tiling(320, tile=0) == (0, 0)  # off
    assert resolve_tiling(0) == (1024, 128)  # a config without a test resize
    with pytest.raises(ValueError, match="--tile-overlap 400"):
        resolve_tiling(320, overlap=400)


@pytest.mark.parametrize("tile, overlap", [(-1, 0), (100, 100), (100, 150), (100, -5)])
def test_validate_tiling_rejects(tile, overlap):
    with pytest.raises(ValueError, match="tile"):
        validate_tiling(tile, overlap)


def coordinate_image(h, w):
    """(h, w, 3) uint8 image whose pixels encode their own position (up to 4096 x 4096)."""
    y, x = np.mgrid[:h, :w]
    return np.stack([y % 256, x % 256, (y // 256) * 16 + x // 256], -1).astype(np.uint8)


class FakeModel:
    """Predicts the ground truth of the tile it is given (recognised from the coordinate image):
    each connected component of a class is a segment, as a model's output would be; optionally
    a wrong class within ``border`` px of the tile's edges (where a real model lacks context)."""

    def __init__(self, gt_classes, border=0, border_class=None):
        self.gt = gt_classes  # (H, W) int class map: -1 void, else class id (9: stuff)
        self.calls = []
        self.border, self.border_class = border, border_class

    def __call__(self, crop):
        c0, c1, c2 = (int(v) for v in crop[0, 0])
        y0, x0 = (c2 // 16) * 256 + c0, (c2 % 16) * 256 + c1
        h, w = crop.shape[:2]
        self.calls.append((y0, x0, h, w))
        gt = self.gt[y0 : y0 + h, x0 : x0 + w].copy()
        if self.border:
            b = self.border
            ring = np.ones_like(gt, dtype=bool)
            ring[b:-b, b:-b] = False
            gt[ring & (gt >= 0)] = self.border_class
        seg = np.zeros((h, w), dtype=np.int32)
        info = []
        for c in sorted(set(np.unique(gt).tolist()) - {-1}):
            lab, n = ndimage.label(gt == c, structure=np.ones((3, 3)))
            for k in range(1, n + 1):
                info.append(
                    {"id": len(info) + 1, "category_id": c, "isthing": c != 9, "score": 0.9}
                )
                seg[lab == k] = info[-1]["id"]
        return seg, info


def _run(gt, tile, overlap, **kw):
    h, w = gt.shape
    fake = FakeModel(gt, **kw)
    labels, info = tiled_panoptic(fake, coordinate_image(h, w), tile, overlap, progress=False)
    assert sorted(fake.calls) == sorted(
        (y0, x0, y1 - y0, x1 - x0) for y0, x0, y1, x1 in tile_grid(h, w, tile, overlap)
    )
    assert labels.shape == (h, w) and labels.dtype == np.int32
    return labels, info


def test_crack_crossing_seams_is_one_instance():
    gt = np.full((300, 500), -1)
    gt[140:143, 10:490] = 2  # a 3 px crack across every vertical seam
    gt[20:280, 250:252] = 2  # and a 2 px one across the horizontal seam, touching it
    labels, info = _run(gt, 200, 60)
    things = [s for s in info if s["isthing"]]
    assert len(things) == 1
    assert things[0]["area"] == int((gt == 2).sum()) == int((labels == things[0]["id"]).sum())
    assert things[0]["score"] == pytest.approx(0.9)
    np.testing.assert_array_equal(labels > 0, gt == 2)  # full resolution, pixel exact


def test_separate_instances_stay_separate():
    gt = np.full((300, 500), -1)
    gt[100:103, 10:490] = 2  # crosses seams
    gt[110:113, 10:490] = 2  # parallel, 7 px apart: another instance
    gt[200:260, 120:200] = 1  # a different class touching nothing
    gt[200:260, 200:230] = 0  # a third class touching class 1 across x = 200: not merged
    labels, info = _run(gt, 200, 60)
    classes = sorted(s["category_id"] for s in info)
    assert classes == [0, 1, 2, 2]
    for s in info:
        ys, xs = np.nonzero(labels == s["id"])
        assert len(ys) == s["area"]
    crack_rows = sorted(
        np.nonzero(labels == s["id"])[0].min() for s in info if s["category_id"] == 2
    )
    assert crack_rows == [100, 110]


def test_stitching_keeps_tile_centres():
    """A model that is wrong within 20 px of every tile border: with an overlap of 60 px the
    stitched map takes each pixel from the tile whose centre is nearer, so the errors vanish
    everywhere except at the photo's own border."""
    gt = np.full((300, 500), -1)
    gt[50:250, 50:450] = 1
    labels, info = _run(gt, 200, 60, border=20, border_class=0)
    (spall,) = [s for s in info if s["category_id"] == 1]
    assert not any(s["category_id"] == 0 for s in info)  # no border artefact survived
    np.testing.assert_array_equal(labels == spall["id"], gt == 1)
    # without overlap the border errors show up at the seams
    labels0, info0 = _run(gt, 100, 0, border=20, border_class=0)  # tiles meet edge to edge
    assert any(s["category_id"] == 0 for s in info0)


def test_merge_only_across_seams_same_class():
    labels = np.array(
        [[1, 1, 3, 3],
         [2, 0, 0, 4],
         [2, 0, 7, 4],
         [5, 5, 6, 6]], dtype=np.int32)  # fmt: skip
    segments = [
        {"id": 1, "category_id": 9, "isthing": False, "score": 0.5},
        {"id": 3, "category_id": 9, "isthing": False, "score": 1.0},
        {"id": 2, "category_id": 0, "isthing": True, "score": 0.8},
        {"id": 4, "category_id": 0, "isthing": True, "score": 0.8},
        {"id": 5, "category_id": 0, "isthing": True, "score": 0.6},
        {"id": 6, "category_id": 0, "isthing": True, "score": 0.8},
        {"id": 7, "category_id": 1, "isthing": True, "score": 0.9},
    ]
    out, info = merge_across_seams(labels.copy(), segments, seams_x=[2], min_area=1)
    # stuff 1 + 3: one segment; 5 | 6 touch across the seam: one; 2 and 5 touch but not across
    # a seam (the model separated them): two; 7 touches 5 diagonally across the seam but is
    # another class, and is dropped by min_area
    assert sorted((s["category_id"], s["area"]) for s in info) == [(0, 2), (0, 2), (0, 4), (9, 4)]
    assert [s["id"] for s in info] == list(range(1, 5))
    stuff = [s for s in info if s["category_id"] == 9][0]
    assert stuff["score"] == pytest.approx(0.75)
    merged = [s for s in info if s["area"] == 4 and s["isthing"]][0]
    assert merged["score"] == pytest.approx(0.7)
    assert (out[3] == merged["id"]).all() and out[2, 2] == 0 and (out == 0).sum() == 4
    assert out[1, 0] != out[3, 0]


def test_upsample_labels():
    lab = np.array([[1, 2], [3, 4]], dtype=np.int32)
    up = upsample_labels(lab, (4, 6))
    assert up.dtype == np.int32 and up.shape == (4, 6)
    np.testing.assert_array_equal(up[:2, :3], 1)
    np.testing.assert_array_equal(up[2:, 3:], 4)
