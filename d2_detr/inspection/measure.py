"""
Geometry of one defect mask: centre-line length, width, orientation, area (pixels, optionally mm).

Method (FACTS.md section 6, accuracy measured by ``python -m benchmarks.bench_measure``):

* centre line: ``skimage.morphology.skeletonize``; the main path is the longest geodesic path of
  the skeleton's 8-neighbour pixel graph (edge weights 1 and sqrt(2), two Dijkstra sweeps with
  ``scipy.sparse.csgraph``), so spurs and side branches are dropped;
* the path is smoothed (Gaussian on its coordinates, ends held fixed by odd reflection) before the
  segment lengths are summed, which removes the pixel staircase (up to ~8 % too long at 22.5 deg);
* the skeleton stops short of the tips: the distance from each end to the mask boundary along the
  path's end tangent is added;
* a closed loop of the skeleton around a hole much wider than the crack (a ring-shaped crack) is
  measured as a closed centre line, its whole circumference (the longest open path would be half
  of it); branches leaving the loop add their length when longer than the loop is wide;
* width is measured across the crack at right angles to the smoothed path: both ways along the
  normal to the first zero of the signed distance to the mask edge (the exact Euclidean distance
  transform, ``cv2.distanceTransform``, minus the half pixel between a pixel centre and the
  pixel edge: for a band of ``w`` pixels the EDT at the centre is (w + 1) / 2, so the raw
  2 * EDT would read w + 1), bilinearly interpolated, so even widths are not rounded down to
  the odd width below.

Spalls are areas: their length is the maximum Feret diameter of the mask with holes filled, the
width the extent at right angles to it (see ``measure_defect``).

Units: pixels (one pixel = one unit of image width/height); with ``mm_per_pixel`` also mm and mm^2.
Orientation: degrees in [0, 180) of the main path's principal direction, 0 = horizontal (along the
image rows, left to right), counter-clockwise as seen on screen (90 = vertical).
"""

import math

import cv2
import numpy as np
from scipy import ndimage
from scipy.sparse import coo_matrix
from scipy.sparse.csgraph import connected_components, dijkstra
from scipy.spatial import ConvexHull
from skimage.morphology import skeletonize

__all__ = ["measure_defect", "KINDS", "MEASURE_FIELDS"]

KINDS = ("crack", "spall", "rebar")

# Keys of the dict returned by measure_defect (mm keys only with mm_per_pixel).
MEASURE_FIELDS = [
    "area_px",
    "length_px",
    "width_max_px",
    "width_mean_px",
    "orientation_deg",
    "perimeter_px",
    "components",
    "bbox",
]
MM_FIELDS = ["length_mm", "width_max_mm", "width_mean_mm", "area_mm2"]

_SMOOTH_SIGMA = 2.0  # px, Gaussian smoothing of the path coordinates
_RAY_STEP = 0.25  # px, sampling step of the across-width rays


def _check_mask(mask, kind, mm_per_pixel):
    if kind not in KINDS:
        raise ValueError(f"measure_defect: kind={kind!r} is not one of {', '.join(KINDS)}")
    if mm_per_pixel is not None:
        if isinstance(mm_per_pixel, bool) or not isinstance(mm_per_pixel, (int, float, np.number)):
            raise ValueError(
                f"measure_defect: mm_per_pixel={mm_per_pixel!r} must be a number > 0 or None"
            )
        if not math.isfinite(mm_per_pixel) or mm_per_pixel <= 0:
            raise ValueError(f"measure_defect: mm_per_pixel={mm_per_pixel!r} must be > 0 or None")
    if not isinstance(mask, np.ndarray):
        if hasattr(mask, "cpu") and hasattr(mask, "numpy"):  # a torch tensor
            mask = mask.cpu().numpy()
        else:
            raise ValueError(
                f"measure_defect: mask must be an HxW bool numpy array, got {type(mask).__name__}"
            )
    if mask.ndim != 2:
        raise ValueError(f"measure_defect: mask must be 2-D (HxW), got shape {mask.shape}")
    if mask.dtype != bool:
        if not (np.issubdtype(mask.dtype, np.integer) or np.issubdtype(mask.dtype, np.floating)):
            raise ValueError(f"measure_defect: mask must be bool (or 0/1), got dtype {mask.dtype}")
        allowed = (0, 255) if mask.dtype == np.uint8 and mask.max() == 255 else (0, 1)
        if not np.isin(mask, allowed).all():
            raise ValueError(
                "measure_defect: mask must be bool or hold only 0 and 1 (or 0 and 255 as uint8); "
                f"got dtype {mask.dtype} with other values: threshold it first"
            )
        mask = mask.astype(bool)
    if not mask.any():
        raise ValueError("measure_defect: the mask is empty (no pixel set): nothing to measure")
    return mask


def _signed_distance(mask):
    """
    (H, W) bool -> float: distance from each pixel centre to the mask edge, > 0 inside (EDT - 1/2;
    OpenCV's exact Euclidean transform, same values as scipy's, several times faster). Outside,
    only the ring of 8-neighbours matters (a ray stops at its first sample <= 0): 1/2 - 1 next to
    an edge, 1/2 - sqrt(2) at a corner, -1 further out.
    """
    inside = cv2.distanceTransform(mask.astype(np.uint8), cv2.DIST_L2, cv2.DIST_MASK_PRECISE)
    sdf = np.where(mask, inside - 0.5, -1.0).astype(np.float64)
    edge = ndimage.binary_dilation(mask, structure=ndimage.generate_binary_structure(2, 1))
    corner = ndimage.binary_dilation(mask, structure=np.ones((3, 3), bool))
    sdf[corner & ~edge] = 0.5 - math.sqrt(2.0)
    sdf[edge & ~mask] = -0.5
    return sdf


def _skeleton_paths(skel):
    """Main path (longest geodesic) of each 8-connected skeleton piece: list of (n, 2) (y, x)."""
    ys, xs = np.nonzero(skel)
    index = -np.ones(skel.shape, dtype=np.int64)
    index[ys, xs] = np.arange(len(ys))
    rows, cols, weights = [], [], []
    h, w = skel.shape
    for dy, dx, weight in ((0, 1, 1.0), (1, 0, 1.0), (1, 1, math.sqrt(2)), (1, -1, math.sqrt(2))):
        y2, x2 = ys + dy, xs + dx
        ok = (y2 >= 0) & (y2 < h) & (x2 >= 0) & (x2 < w)
        j = np.full(len(ys), -1)
        j[ok] = index[y2[ok], x2[ok]]
        ok = j >= 0
        rows.append(np.nonzero(ok)[0])
        cols.append(j[ok])
        weights.append(np.full(int(ok.sum()), weight))
    n = len(ys)
    graph = coo_matrix(
        (np.concatenate(weights), (np.concatenate(rows), np.concatenate(cols))), shape=(n, n)
    ).tocsr()
    n_comp, labels = connected_components(graph, directed=False)
    paths = []
    for c in range(n_comp):
        start = int(np.nonzero(labels == c)[0][0])
        dist = dijkstra(graph, directed=False, indices=start)
        dist[~np.isfinite(dist)] = -1
        a = int(np.argmax(dist))
        dist, pred = dijkstra(graph, directed=False, indices=a, return_predecessors=True)
        dist[~np.isfinite(dist)] = -1
        b = int(np.argmax(dist))
        order = [b]
        while order[-1] != a:
            order.append(int(pred[order[-1]]))
        paths.append(np.stack([ys[order], xs[order]], axis=1).astype(float))
    paths.sort(key=len, reverse=True)
    return paths


def _smooth(path, sigma=_SMOOTH_SIGMA):
    """Gaussian-smooth (n, 2) path coordinates; the ends stay fixed (odd reflection)."""
    n = len(path)
    if n < 3:
        return path.copy()
    pad = min(n - 1, int(math.ceil(4 * sigma)))
    head = 2 * path[0] - path[1 : pad + 1][::-1]
    tail = 2 * path[-1] - path[-pad - 1 : -1][::-1]
    ext = np.concatenate([head, path, tail])
    ext = ndimage.gaussian_filter1d(ext, sigma, axis=0, mode="nearest")
    return ext[pad : pad + n]


def _ray_to_edge(sdf, points, directions, max_len):
    """
    Distance from each point (n, 2) along its unit direction (n, 2) to the first zero of the
    signed distance ``sdf`` (bilinear); NaN where the point itself is outside the mask.
    """
    step = max(_RAY_STEP, max_len / 400.0)
    t = np.arange(0.0, max_len + step, step)
    coords = points[:, None, :] + t[None, :, None] * directions[:, None, :]  # (n, m, 2)
    vals = ndimage.map_coordinates(
        sdf, [coords[..., 0].ravel(), coords[..., 1].ravel()], order=1, mode="constant", cval=-1.0
    ).reshape(coords.shape[:2])
    out = vals <= 0
    first = np.where(out.any(axis=1), out.argmax(axis=1), len(t) - 1)
    dist = np.full(len(points), np.nan)
    ok = first > 0
    i = first[ok]
    v0, v1 = vals[ok, i - 1], vals[ok, i]
    frac = v0 / np.maximum(v0 - v1, 1e-9)
    dist[ok] = t[i - 1] + np.clip(frac, 0, 1) * step
    return dist


def _tangents(path):
    if len(path) < 2:
        return np.tile([0.0, 1.0], (len(path), 1))
    tan = np.gradient(path, axis=0)
    norm = np.linalg.norm(tan, axis=1, keepdims=True)
    return tan / np.maximum(norm, 1e-9)


def _end_direction(path, end, reach):
    """Outward unit direction at ``path[0]`` (end=0) or ``path[-1]`` (end=-1)."""
    k = min(len(path) - 1, max(1, int(round(reach))))
    d = path[0] - path[k] if end == 0 else path[-1] - path[-1 - k]
    return d / max(np.linalg.norm(d), 1e-9)


def _median_filter_1d(values, size):
    size = max(1, min(size, len(values)))
    if size % 2 == 0:
        size -= 1
    return ndimage.median_filter(values, size=size, mode="nearest")


def _body(path, across):
    """The width samples away from the ends: within about half a width of a tip the line across
    runs through the rounded, tapered or forked end, not across the crack."""
    if len(path) < 3:
        return across
    s = np.concatenate([[0.0], np.cumsum(np.linalg.norm(np.diff(path, axis=0), axis=1))])
    zone = 0.5 * float(np.median(across)) + 1.0
    keep = (s >= zone) & (s <= s[-1] - zone)
    return across[keep] if keep.sum() >= 3 else across


def _orientation(points):
    """Principal direction of (n, 2) (y, x) points -> degrees in [0, 180), 0 = horizontal."""
    centred = points - points.mean(axis=0)
    if len(points) < 2 or not np.any(centred):
        return 0.0
    _, _, vt = np.linalg.svd(centred, full_matrices=False)
    dy, dx = vt[0]
    return float(math.degrees(math.atan2(-dy, dx)) % 180.0) % 180.0


def _extent(mask):
    """
    Area-type defect (spall): the filled mask's maximum Feret diameter (over the pixel squares'
    corners), its direction, and the extent across it. Returns (length, width_across, angle_deg).
    """
    ys, xs = np.nonzero(mask & ~ndimage.binary_erosion(mask))  # the hull needs the rim only
    corners = np.concatenate(
        [np.stack([ys + dy, xs + dx], 1) for dy in (-0.5, 0.5) for dx in (-0.5, 0.5)]
    ).astype(float)
    hull = corners[ConvexHull(corners).vertices]
    diff = hull[:, None, :] - hull[None, :, :]
    dist = np.hypot(diff[..., 0], diff[..., 1])
    i, j = np.unravel_index(np.argmax(dist), dist.shape)
    dy, dx = (hull[j] - hull[i]) / max(dist[i, j], 1e-9)
    across = hull @ np.array([dx, -dy])  # projection on the normal (y, x) = (dx, -dy)
    angle = math.degrees(math.atan2(-dy, dx)) % 180.0
    return float(dist[i, j]), float(np.ptp(across)), angle % 180.0


def measure_defect(mask, kind, mm_per_pixel=None):
    """
    Measure one defect.

    Args:
        mask: (H, W) bool numpy array (0/1 numbers or a 0/255 uint8 mask accepted), the pixels
            of ONE defect.
            Several connected pieces are measured piece by piece (lengths add up;
            ``components`` counts them).
        kind: "crack", "spall" or "rebar". All kinds get the same keys. Crack and rebar: the
            centre line as above. Spall (an area, often with holes where bars show): the mask
            with its holes filled; ``length_px`` = its maximum Feret diameter (major extent),
            ``width_max_px`` = its extent at right angles to that, ``width_mean_px`` = filled
            area / length, ``orientation_deg`` = the Feret direction.
        mm_per_pixel: image scale (float > 0) or None (pixels only).
    Returns:
        dict: ``area_px`` (int), ``length_px``, ``width_max_px`` (max of the width profile
        after a running median, so one odd sample at a junction does not count),
        ``width_mean_px`` (mean of that profile), ``orientation_deg`` ([0, 180), 0 = horizontal,
        counter-clockwise on screen), ``perimeter_px`` (skimage's perimeter), ``components``,
        ``bbox`` ([x0, y0, x1, y1], x1/y1 exclusive), ``kind``, ``mm_per_pixel``; with
        ``mm_per_pixel`` also ``length_mm``, ``width_max_mm``, ``width_mean_mm``, ``area_mm2``.
    Raises:
        ValueError: empty, non-2-D or non-boolean mask, unknown kind, bad mm_per_pixel.
    """
    from skimage.measure import perimeter

    mask = _check_mask(mask, kind, mm_per_pixel)
    ys, xs = np.nonzero(mask)
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    crop = np.pad(mask[y0:y1, x0:x1], 2)  # a background margin: the edge is always found

    out = {
        "kind": kind,
        "area_px": int(len(ys)),
        "perimeter_px": round(float(perimeter(crop)), 3),
        "components": int(ndimage.label(crop, structure=np.ones((3, 3)))[1]),
        "bbox": [int(x0), int(y0), int(x1), int(y1)],
        "mm_per_pixel": None if mm_per_pixel is None else float(mm_per_pixel),
    }
    if kind == "spall":
        filled = ndimage.binary_fill_holes(crop)
        length, across, orientation = _extent(filled)
        out.update(
            length_px=round(length, 3),
            width_max_px=round(across, 3),
            width_mean_px=round(float(filled.sum()) / length, 3),
            orientation_deg=round(orientation, 2),
        )
    else:
        out.update(_centre_line_measures(crop))
    if mm_per_pixel is not None:
        s = float(mm_per_pixel)
        out["length_mm"] = round(out["length_px"] * s, 4)
        out["width_max_mm"] = round(out["width_max_px"] * s, 4)
        out["width_mean_mm"] = round(out["width_mean_px"] * s, 4)
        out["area_mm2"] = round(out["area_px"] * s * s, 4)
    return {k: out[k] for k in ["kind"] + MEASURE_FIELDS + ["mm_per_pixel"] + MM_FIELDS if k in out}


def _loops(skel, sdf):
    """
    Closed centre lines: each hole of the skeleton (a background region it encloses) much wider
    than the crack around it is a loop (a ring-shaped crack); a small hole (a speck of
    background inside a wide crack) is not. Returns (list of (n, 2) (y, x) closed pixel chains,
    (H, W) bool of their skeleton pixels).
    """
    holes, n = ndimage.label(ndimage.binary_fill_holes(skel) & ~skel)
    ring_pixels = np.zeros_like(skel)
    loops = []
    if n == 0:
        return loops, ring_pixels
    inside = cv2.distanceTransform((holes > 0).astype(np.uint8), cv2.DIST_L2, 5)
    eight = np.ones((3, 3), bool)
    for k, box in enumerate(ndimage.find_objects(holes), start=1):
        y0, x0 = max(box[0].start - 2, 0), max(box[1].start - 2, 0)
        sub = (slice(y0, box[0].stop + 2), slice(x0, box[1].stop + 2))
        hole = holes[sub] == k
        ring = ndimage.binary_dilation(hole, eight) & skel[sub]
        half_width = float(np.max(sdf[sub][ring])) + 0.5  # EDT at the centre line
        if float(inside[sub][hole].max()) <= 2.0 * half_width:
            continue  # a speck of background inside the crack: the path goes around it
        contours, _ = cv2.findContours(
            (hole | ring).astype(np.uint8), cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE
        )
        chain = max(contours, key=len)[:, 0, ::-1].astype(float) + (y0, x0)  # (y, x)
        loops.append(chain)
        ring_pixels[sub] |= ring
    return loops, ring_pixels


def _closed_measures(chain, sdf, max_len):
    """Length (px) and width profile across a closed centre line (pixel chain, (n, 2))."""
    n = len(chain)
    smooth = ndimage.gaussian_filter1d(chain, min(_SMOOTH_SIGMA, n / 8.0), axis=0, mode="wrap")
    step = np.roll(smooth, -1, axis=0) - smooth
    length = float(np.linalg.norm(step, axis=1).sum())
    tan = (np.roll(smooth, -1, axis=0) - np.roll(smooth, 1, axis=0)) / 2.0
    tan /= np.maximum(np.linalg.norm(tan, axis=1, keepdims=True), 1e-9)
    normal = np.stack([-tan[:, 1], tan[:, 0]], axis=1)
    across = _ray_to_edge(sdf, smooth, normal, max_len) + _ray_to_edge(
        sdf, smooth, -normal, max_len
    )
    bad = ~np.isfinite(across)
    if bad.any():
        py, px = chain[bad, 0].astype(int), chain[bad, 1].astype(int)
        across[bad] = 2.0 * sdf[py, px]
    return smooth, length, across


def _centre_line_measures(crop):
    """length_px, width_max_px, width_mean_px, orientation_deg of a (padded) crack/rebar mask.

    A closed loop (ring-shaped crack) counts its whole circumference, measured on the closed
    centre line; a branch leaving a loop counts when it is longer than the loop is wide (shorter
    ones are skeleton spurs), without a tip extension at the end that meets the loop.
    """
    sdf = _signed_distance(crop)
    max_len = 2.0 * float(sdf.max()) + 4.0
    length = 0.0
    widths = []
    longest, longest_len = None, -1.0
    skel = skeletonize(crop)
    loops, ring_pixels = _loops(skel, sdf)
    loop_width = 0.0
    for chain in loops:
        smooth, seg, across = _closed_measures(chain, sdf, max_len)
        length += seg
        widths.append(across)
        loop_width = max(loop_width, float(np.median(across)))
        if seg > longest_len:
            longest, longest_len = smooth, seg
    near_loop = ndimage.binary_dilation(ring_pixels, np.ones((3, 3), bool))
    for path in _skeleton_paths(skel & ~ring_pixels) if (skel & ~ring_pixels).any() else []:
        smooth = _smooth(path)
        seg = np.linalg.norm(np.diff(smooth, axis=0), axis=1).sum() if len(smooth) > 1 else 0.0
        attached = [bool(near_loop[int(p[0]), int(p[1])]) for p in (path[0], path[-1])]
        if any(attached) and seg + 1.0 <= loop_width:
            continue  # a spur of the loop's skeleton
        if len(smooth) >= 2:
            reach = 2 * _SMOOTH_SIGMA
            ends = np.stack([smooth[0], smooth[-1]])
            dirs = np.stack([_end_direction(smooth, 0, reach), _end_direction(smooth, -1, reach)])
        else:  # a blob whose skeleton is one pixel: extent along its own principal axis
            angle = math.radians(_orientation(np.argwhere(crop).astype(float)))
            d = np.array([-math.sin(angle), math.cos(angle)])
            ends, dirs = np.stack([smooth[0], smooth[0]]), np.stack([d, -d])
        tips = _ray_to_edge(sdf, ends, dirs, max_len)
        tips[np.array(attached)] = 0.0  # the end at a loop: the join, not a tip
        seg += float(np.sum(attached))  # the step from the branch's end onto the loop
        length += seg + float(np.nansum(tips))

        tan = _tangents(smooth)
        normal = np.stack([-tan[:, 1], tan[:, 0]], axis=1)
        across = _ray_to_edge(sdf, smooth, normal, max_len) + _ray_to_edge(
            sdf, smooth, -normal, max_len
        )
        bad = ~np.isfinite(across)
        if bad.any():  # a smoothed point fell outside a 1-px crack: the EDT at its skeleton pixel
            py, px = path[bad, 0].astype(int), path[bad, 1].astype(int)
            across[bad] = 2.0 * sdf[py, px]
        widths.append(_body(smooth, across))
        if seg > longest_len:
            longest, longest_len = smooth, seg

    profile = np.concatenate([_median_filter_1d(w, 2 * int(np.median(w)) + 5) for w in widths])
    if len(longest) >= 2 and np.ptp(longest, axis=0).max() > 0:
        orientation = _orientation(longest)
    else:
        orientation = _orientation(np.argwhere(crop).astype(float))
    return {
        "length_px": round(float(length), 3),
        "width_max_px": round(float(profile.max()), 3),
        "width_mean_px": round(float(profile.mean()), 3),
        "orientation_deg": round(orientation, 2),
    }
