"""
Full-resolution panoptic inference on overlapping tiles.

A 24 MP photo resized to the model's test size (a few hundred pixels) loses every 1-3 px crack.
Instead the photo is cut into overlapping tiles at native resolution; each tile goes through
the model as an ordinary image (its own test-time resize), and the tiles' panoptic outputs are
stitched into one full-resolution label map:

1. :func:`tile_grid` places tiles of ``tile`` px with at least ``overlap`` px in common;
2. :func:`owned_regions`: in an overlap, each pixel keeps the prediction of the tile whose centre
   is nearer (each tile contributes its central region, away from its borders where context is
   missing);
3. :func:`merge_across_seams`: thing segments of the same class that touch across a seam
   (8-connected) are one instance (union-find over the seam contacts); stuff segments of one
   class are one segment, as in the model's own panoptic output.

Memory: the stitched map is one (H, W) int32 array; a tile's output is freed once copied, so
peak memory is the photo, the label map and one tile's inference, whatever the photo's size.
:func:`tiled_panoptic` is the runner; the model is any ``predict(image) -> (panoptic_seg,
segments_info)`` callable, so everything here runs with a fake model in tests.
"""

import math

import numpy as np
import tqdm

__all__ = [
    "resolve_tiling",
    "tile_grid",
    "owned_regions",
    "merge_across_seams",
    "stitch_tiles",
    "tiled_panoptic",
    "upsample_labels",
    "validate_tiling",
]


def validate_tiling(tile, overlap):
    """Raise ``ValueError`` naming the argument unless ``tile > overlap >= 0`` (tile 0: off)."""
    if tile < 0:
        raise ValueError(f"--tile {tile}: must be >= 0 (0 turns tiling off)")
    if overlap < 0:
        raise ValueError(f"--tile-overlap {overlap}: must be >= 0")
    if tile > 0 and overlap >= tile:
        raise ValueError(f"--tile-overlap {overlap} must be smaller than --tile {tile}")


def resolve_tiling(test_size, tile=None, overlap=None):
    """
    (tile, overlap) in px, defaults filled in and checked (:func:`validate_tiling`).

    ``tile`` None: square tiles of the model's own test size ``test_size`` (INPUT.MIN_SIZE_TEST),
    which the test-time resize leaves unscaled, so a 1-3 px crack reaches the model 1-3 px wide
    (a larger tile is shrunk first: ``benchmarks/bench_tiles.py`` measured crack recall 0.30
    with 1024 px tiles and 0.78 with 400 px tiles for a 320 px model). ``overlap`` None: an
    eighth of the tile.
    """
    if tile is None:
        tile = int(test_size) if test_size and test_size > 0 else 1024
    if overlap is None:
        overlap = tile // 8
    validate_tiling(tile, overlap)
    return tile, overlap


def _axis_starts(length, tile, overlap):
    """Start offsets of tiles of size ``tile`` covering [0, length) with >= ``overlap`` shared."""
    if length <= tile:
        return [0]
    n = math.ceil((length - overlap) / (tile - overlap))
    # spread evenly: the first tile starts at 0, the last ends at ``length``
    return [round(i * (length - tile) / (n - 1)) for i in range(n)]


def tile_grid(height, width, tile, overlap):
    """
    Args:
        height, width: image size in px; tile: tile side in px; overlap: minimum overlap in px.
    Returns:
        list of (y0, x0, y1, x1) tiles (end exclusive), row by row. Tiles are ``tile`` px
        (or the image side when smaller), cover the image, and neighbours share >= ``overlap``
        px.
    """
    validate_tiling(tile, overlap)
    if tile == 0:
        return [(0, 0, height, width)]
    ys = _axis_starts(height, tile, overlap)
    xs = _axis_starts(width, tile, overlap)
    th, tw = min(tile, height), min(tile, width)
    return [(y, x, y + th, x + tw) for y in ys for x in xs]


def _axis_cuts(starts, size, length):
    """Ownership bounds along one axis: midpoints of consecutive tiles' overlaps."""
    cuts = [0]
    for a, b in zip(starts[:-1], starts[1:]):
        cuts.append((b + a + size) // 2)  # midpoint of [b, a + size): equidistant from centres
    cuts.append(length)
    return cuts


def owned_regions(tiles):
    """
    Args:
        tiles: the output of :func:`tile_grid`.
    Returns:
        list of (y0, x0, y1, x1) per tile: the pixels nearer to its centre than to any other
        tile's centre (along each axis). The regions partition the image.
    """
    ys = sorted({t[0] for t in tiles})
    xs = sorted({t[1] for t in tiles})
    height = max(t[2] for t in tiles)
    width = max(t[3] for t in tiles)
    th, tw = tiles[0][2] - tiles[0][0], tiles[0][3] - tiles[0][1]
    ycuts, xcuts = _axis_cuts(ys, th, height), _axis_cuts(xs, tw, width)
    out = []
    for y0, x0, _, _ in tiles:
        i, j = ys.index(y0), xs.index(x0)
        out.append((ycuts[i], xcuts[j], ycuts[i + 1], xcuts[j + 1]))
    return out


class _UnionFind:
    def __init__(self, n):
        self.parent = np.arange(n)

    def find(self, a):
        root = a
        while self.parent[root] != root:
            root = self.parent[root]
        while self.parent[a] != root:
            self.parent[a], a = root, self.parent[a]
        return root

    def union(self, a, b):
        ra, rb = self.find(a), self.find(b)
        if ra != rb:
            self.parent[max(ra, rb)] = min(ra, rb)


def _seam_pairs(labels, seams_y, seams_x):
    """(M, 2) pairs of labels on either side of horizontal/vertical seams, 8-connected."""
    pairs = []
    for y in seams_y:  # rows y-1 | y
        a, b = labels[y - 1], labels[y]
        pairs += [np.stack([a, b], 1), np.stack([a[:-1], b[1:]], 1), np.stack([a[1:], b[:-1]], 1)]
    for x in seams_x:  # columns x-1 | x
        a, b = labels[:, x - 1], labels[:, x]
        pairs += [np.stack([a, b], 1), np.stack([a[:-1], b[1:]], 1), np.stack([a[1:], b[:-1]], 1)]
    if not pairs:
        return np.zeros((0, 2), dtype=labels.dtype)
    pairs = np.concatenate(pairs)
    pairs = pairs[(pairs[:, 0] > 0) & (pairs[:, 1] > 0) & (pairs[:, 0] != pairs[:, 1])]
    return np.unique(pairs, axis=0)


def merge_across_seams(labels, segments, seams_y=(), seams_x=(), min_area=0):
    """
    Merge the segments of a stitched label map that continue across tile seams.

    Args:
        labels: (H, W) int32 map of segment ids (0 = void), modified in place and returned.
        segments: list of dicts with "id", "category_id", "isthing" and optional "score", one
            per id in ``labels`` (ids need not be contiguous).
        seams_y, seams_x: rows / columns where one tile's region ends and the next begins
            (a seam at ``y`` lies between rows ``y - 1`` and ``y``).
        min_area: merged segments of at most this many pixels become void.
    Returns:
        (labels, segments_info): ids renumbered 1..S; thing segments of one class touching
        across a seam (8-connected) are one segment; all stuff segments of one class are one
        segment; "score" is the area-weighted mean of the merged parts; "area" in px.
    """
    top = max([int(labels.max()) if labels.size else 0] + [s["id"] for s in segments])
    info = {s["id"]: s for s in segments}
    uf = _UnionFind(top + 1)
    stuff_root = {}
    for s in segments:
        if not s["isthing"]:
            c = s["category_id"]
            if c in stuff_root:
                uf.union(stuff_root[c], s["id"])
            else:
                stuff_root[c] = s["id"]
    for a, b in _seam_pairs(labels, seams_y, seams_x).tolist():
        sa, sb = info.get(a), info.get(b)
        if sa and sb and sa["isthing"] and sb["isthing"] and sa["category_id"] == sb["category_id"]:
            uf.union(a, b)

    area = np.bincount(labels.ravel(), minlength=top + 1)
    roots = np.array([uf.find(i) for i in range(top + 1)])
    root_area = np.bincount(roots, weights=area, minlength=top + 1)
    score_sum = np.zeros(top + 1)
    for s in segments:
        score_sum[roots[s["id"]]] += area[s["id"]] * float(s.get("score") or 0.0)

    has_score = any("score" in s for s in segments)
    new_id = np.zeros(top + 1, dtype=np.int32)
    out = []
    for s in sorted(segments, key=lambda s: s["id"]):
        r = roots[s["id"]]
        if r != s["id"] or root_area[r] <= min_area:
            continue  # not the representative, or too small
        merged = {k: v for k, v in info[r].items() if k not in ("id", "area", "score")}
        merged["id"] = len(out) + 1
        merged["area"] = int(root_area[r])
        if has_score:
            merged["score"] = float(score_sum[r] / root_area[r])
        new_id[r] = merged["id"]
        out.append(merged)
    lut = new_id[roots]
    lut[0] = 0
    np.take(lut, labels, out=labels)
    return labels, out


def stitch_tiles(shape, tiles, predictions):
    """
    Args:
        shape: (H, W) of the photo; tiles: :func:`tile_grid`'s list.
        predictions: iterable of (panoptic_seg, segments_info) per tile, in ``tiles`` order;
            panoptic_seg an (h, w) integer array (or tensor) of the tile's size.
    Returns:
        labels: (H, W) int32, each tile's segment ids offset to be unique (0 = void);
        segments: their dicts (ids offset alike); seams_y, seams_x: the seam rows / columns
        (the arguments of :func:`merge_across_seams`).
    """
    regions = owned_regions(tiles)
    labels = np.zeros(shape, dtype=np.int32)
    segments, offset = [], 0
    for (ty0, tx0, _, _), (y0, x0, y1, x1), (seg, info) in zip(tiles, regions, predictions):
        seg = np.asarray(seg.cpu() if hasattr(seg, "cpu") else seg)
        crop = seg[y0 - ty0 : y1 - ty0, x0 - tx0 : x1 - tx0].astype(np.int32)
        ids = {s["id"] for s in info}
        crop[~np.isin(crop, list(ids))] = 0  # pixels of dropped segments: void
        labels[y0:y1, x0:x1] = np.where(crop > 0, crop + offset, 0)
        for s in info:
            segments.append({**s, "id": s["id"] + offset})
        offset += max(ids, default=0)
    seams_y = sorted({r[0] for r in regions} - {0})
    seams_x = sorted({r[1] for r in regions} - {0})
    return labels, segments, seams_y, seams_x


def tiled_panoptic(predict, image, tile, overlap, min_area=0, progress=True):
    """
    Panoptic segmentation of a photo of any size, tile by tile.

    Args:
        predict: callable (h, w, C) uint8 array -> (panoptic_seg (h, w), segments_info) as the
            model's "panoptic_seg" output (ids 1..S, 0 void; dicts with id, category_id, isthing,
            score).
        image: (H, W, C) uint8 array.
        tile, overlap: tile side and minimum overlap in px (``tile > overlap >= 0``).
        min_area: merged segments of at most this many pixels become void.
        progress: tqdm bar over the tiles.
    Returns:
        (labels, segments_info): (H, W) int32 ids 1..S at full resolution and their dicts
        (id, category_id, isthing, score, area).
    """
    h, w = image.shape[:2]
    tiles = tile_grid(h, w, tile, overlap)

    def run():
        for y0, x0, y1, x1 in tqdm.tqdm(
            tiles, desc="tiles", unit="tile", disable=not progress or len(tiles) == 1, leave=False
        ):
            yield predict(np.ascontiguousarray(image[y0:y1, x0:x1]))

    labels, segments, seams_y, seams_x = stitch_tiles((h, w), tiles, run())
    return merge_across_seams(labels, segments, seams_y, seams_x, min_area)


def upsample_labels(labels, size):
    """(h, w) integer label map -> (H, W) by nearest neighbour (pixel centres), same dtype."""
    labels = np.asarray(labels)
    h, w = labels.shape
    H, W = size
    if (h, w) == (H, W):
        return labels
    rows = np.minimum(((np.arange(H) + 0.5) * h / H).astype(np.int64), h - 1)
    cols = np.minimum(((np.arange(W) + 0.5) * w / W).astype(np.int64), w - 1)
    return labels[rows[:, None], cols[None, :]]
