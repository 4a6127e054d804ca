"""
Accuracy of ``d2_detr.inspection.measure_defect`` on drawn shapes of known geometry.

    python -m benchmarks.bench_measure [--quick] [--seed 0]

Shapes (centre line + constant width ``w``, round ends, so the true tip-to-tip length is the
centre-line length + w): straight bands at every orientation, circular arcs (radius 50-90 px),
sine waves (tightest bend radius >= w) and branching (Y) cracks (main length = the longer
tip-to-tip path), for w = 1-20 px, each drawn two ways:

* ``aa``: exact anti-aliased coverage (4 x 4 supersampling, random sub-pixel position),
  thresholded at 0.5;
* ``jpeg``: the anti-aliased grey picture (dark crack on grey concrete, a little noise) saved as a
  JPEG at quality 50, decoded, thresholded half-way, largest component kept.

Prints the width RMS error (px) of ``width_mean_px`` and ``width_max_px`` per width group and the
length error (%) per shape family; targets: width RMS <= 0.5 px for w >= 2, |length error| <= 2 %.
Baseline in the same run: skeleton pixel count as length, twice the mean EDT on the skeleton as
width (no diagonal weighting, no end reach, no half-pixel correction).
"""

import argparse
import math
import time

import d2_detr  # noqa: F401  (compat layer first)

# isort: split
import cv2
import numpy as np
from scipy import ndimage
from scipy.spatial import cKDTree
from skimage.morphology import skeletonize

from d2_detr.inspection import measure_defect

SS = 4  # supersampling per axis
WIDTHS = [1, 2, 3, 4, 5, 6, 8, 10, 12, 16, 20]
GROUPS = [(1, 1), (2, 3), (4, 7), (8, 12), (13, 20)]


def _resample(points, spacing=0.02):
    """Dense points along a polyline (n, 2) (x, y) and its length."""
    seg = np.diff(points, axis=0)
    lens = np.hypot(seg[:, 0], seg[:, 1])
    out = [points[:1]]
    for p, d, n in zip(points[:-1], seg, lens):
        k = max(1, int(math.ceil(n / spacing)))
        t = (np.arange(1, k + 1) / k)[:, None]
        out.append(p + t * d)
    return np.concatenate(out), float(lens.sum())


def render_coverage(polylines, width, shape):
    """Fraction of each pixel within width/2 of any polyline ((n, 2) x, y arrays in pixels):
    pixel centres first, SS x SS sub-samples only for pixels the edge may cross."""
    tree = cKDTree(np.concatenate([_resample(p, 0.05)[0] for p in polylines]))
    r = width / 2.0
    gy, gx = np.mgrid[: shape[0], : shape[1]].astype(float)
    centres = np.stack([gx.ravel(), gy.ravel()], 1)
    d, _ = tree.query(centres, distance_upper_bound=r + 1.0)
    cov = (d <= r).astype(float)
    edge = np.nonzero(np.abs(d - r) <= 0.75)[0]  # a pixel's corner is 0.71 px from its centre
    off = (np.arange(SS) + 0.5) / SS - 0.5
    ox, oy = np.meshgrid(off, off)
    sub = centres[edge][:, None, :] + np.stack([ox.ravel(), oy.ravel()], 1)[None]
    ds, _ = tree.query(sub.reshape(-1, 2), distance_upper_bound=r + 1.0)
    cov[edge] = (ds.reshape(len(edge), -1) <= r).mean(axis=1)
    return cov.reshape(shape)


def jpeg_mask(coverage, rng, quality=50):
    """Grey picture of the crack -> JPEG -> decoded -> thresholded half-way, largest component."""
    bg, fg = 170.0, 60.0
    img = bg + (fg - bg) * coverage + rng.normal(0, 4, coverage.shape)
    ok, buf = cv2.imencode(
        ".jpg", np.clip(img, 0, 255).astype(np.uint8), [cv2.IMWRITE_JPEG_QUALITY, quality]
    )
    dec = cv2.imdecode(buf, cv2.IMREAD_GRAYSCALE).astype(float)
    mask = dec < (bg + fg) / 2
    lab, n = ndimage.label(mask, structure=np.ones((3, 3)))
    if n > 1:
        sizes = ndimage.sum(mask, lab, index=np.arange(1, n + 1))
        mask = lab == 1 + int(np.argmax(sizes))
    return mask


def shapes(rng, quick=False):
    """Yield (family, width, [polylines], true centre-line length of the main path)."""
    angles = np.arange(0, 180, 30 if quick else 7.5)
    widths = [2, 5, 12] if quick else WIDTHS
    for w in widths:
        for a in angles:
            a = math.radians(a + rng.uniform(-2, 2))
            length = 160.0
            c = np.array([110.0, 110.0]) + rng.uniform(-0.5, 0.5, 2)
            d = np.array([math.cos(a), -math.sin(a)]) * length / 2
            yield "straight", w, [np.stack([c - d, c + d])], length
        for k in range(1 if quick else 3):
            radius = rng.uniform(50, 90)
            span = rng.uniform(1.2, 2.5)
            start = rng.uniform(0, 2 * math.pi)
            t = np.linspace(start, start + span, 400)
            pts = np.stack([110 + radius * np.cos(t), 110 + radius * np.sin(t)], 1)
            yield "arc", w, [pts], radius * span
            # a tube: the tightest bend (radius period^2 / (4 pi^2 amp)) at least w, else the
            # inner edge folds over itself and the mask has no recoverable centre line
            period = rng.uniform(80, 140)
            amp = min(rng.uniform(8, 20), period**2 / (4 * math.pi**2 * w))
            x = np.linspace(20, 200, 2000)
            pts = np.stack([x, 110 + amp * np.sin(2 * math.pi * x / period)], 1)
            rot = rng.uniform(0, math.pi)
            rmat = np.array([[math.cos(rot), -math.sin(rot)], [math.sin(rot), math.cos(rot)]])
            pts = (pts - 110) @ rmat.T + 110
            yield "sine", w, [pts], _resample(pts)[1]
            # Y crack: a gently bent main crack and a shorter branch from its middle
            a = rng.uniform(0, math.pi)
            u = np.array([math.cos(a), math.sin(a)])
            v = np.array([-u[1], u[0]])
            j = np.array([110.0, 110.0])
            main = np.stack([j - 80 * u + 10 * v, j, j + 80 * u + 10 * v])
            branch = np.stack([j, j + 45 * (0.6 * u - 0.8 * v)])
            yield "branching", w, [main, branch], _resample(main)[1]


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="a few shapes only (smoke test)")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--verbose", action="store_true", help="print every shape's errors")
    args = parser.parse_args(argv)
    rng = np.random.default_rng(args.seed)
    results = []
    start = time.time()
    for family, w, lines, true_len in shapes(rng, args.quick):
        cov = render_coverage(lines, w, (220, 220))
        for edge, mask in (("aa", cov >= 0.5), ("jpeg", jpeg_mask(cov, rng))):
            m = measure_defect(mask, "crack")
            # the textbook baseline: skeleton pixel count, twice the EDT on the skeleton
            skel = skeletonize(mask)
            edt = ndimage.distance_transform_edt(mask)[skel]
            results.append(
                {
                    "family": family,
                    "edge": edge,
                    "w": w,
                    "width_mean_err": m["width_mean_px"] - w,
                    "width_max_err": m["width_max_px"] - w,
                    "length_err_pct": 100.0 * (m["length_px"] / (true_len + w) - 1.0),
                    "base_width_err": 2.0 * float(edt.mean()) - w,
                    "base_length_err_pct": 100.0 * (skel.sum() / (true_len + w) - 1.0),
                }
            )
            if args.verbose:
                print(
                    family, edge, w, {k: round(v, 3) for k, v in results[-1].items() if "err" in k}
                )
    print(f"{len(results)} masks measured in {time.time() - start:.1f} s (seed {args.seed})")
    print("\nwidth error (px), RMS over all shapes, families and edges, per true width group")
    print(
        f"{'width':>8} {'n':>5} {'mean RMS':>9} {'max RMS':>8} {'mean bias':>10} "
        f"{'baseline RMS':>13}  target"
    )
    for lo, hi in GROUPS:
        sel = [r for r in results if lo <= r["w"] <= hi]
        if not sel:
            continue
        e_mean = np.array([r["width_mean_err"] for r in sel])
        e_max = np.array([r["width_max_err"] for r in sel])
        e_base = np.array([r["base_width_err"] for r in sel])
        target = "<= 0.5" if lo >= 2 else "(none)"
        print(
            f"{f'{lo}-{hi}':>8} {len(sel):>5} {np.sqrt((e_mean**2).mean()):>9.3f} "
            f"{np.sqrt((e_max**2).mean()):>8.3f} {e_mean.mean():>+10.3f} "
            f"{np.sqrt((e_base**2).mean()):>13.3f}  {target}"
        )
    print("\nlength error (%) of tip-to-tip centre-line length, per family and edge")
    print(
        f"{'family':>10} {'edge':>5} {'n':>4} {'mean':>7} {'RMS':>6} {'max |e|':>8} "
        f"{'baseline mean':>14}  (w >= 2)"
    )
    for family in ("straight", "arc", "sine", "branching"):
        for edge in ("aa", "jpeg"):
            sel = [
                r for r in results if r["family"] == family and r["edge"] == edge and r["w"] >= 2
            ]
            if not sel:
                continue
            e = np.array([r["length_err_pct"] for r in sel])
            base = np.mean([r["base_length_err_pct"] for r in sel])
            print(
                f"{family:>10} {edge:>5} {len(e):>4} {e.mean():>+7.2f} "
                f"{np.sqrt((e**2).mean()):>6.2f} {np.abs(e).max():>8.2f} {base:>+14.2f}"
            )
    sel2 = [r for r in results if r["w"] >= 2]
    w_rms = max(
        np.sqrt(np.mean([r["width_mean_err"] ** 2 for r in sel2 if lo <= r["w"] <= hi]))
        for lo, hi in GROUPS[1:]
        if any(lo <= r["w"] <= hi for r in sel2)
    )
    l_max = max(abs(r["length_err_pct"]) for r in sel2)
    print(
        f"\nworst width-group RMS (w >= 2): {w_rms:.3f} px (target 0.5); "
        f"worst length error (w >= 2): {l_max:.2f} % (target 2)"
    )
    return results


if __name__ == "__main__":
    main()
