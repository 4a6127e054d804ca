"""Procedural concrete-like surfaces with cracks, spalls and exposed rebar, in the raw layout.

Each image is drawn from its own generator seeded with ``(seed, index)``, so a dataset is
reproducible and any image can be redrawn alone. What varies: surface grey level, tint, blotches
(low-frequency noise), grain, pores (small dark dots that are NOT defects), lighting gradient and
vignette; per defect its shape, size, count, darkness and texture:

* crack: thin (1-3 px) dark random-walk polyline with branches (one connected instance);
* spall: irregular star-shaped blob, darker, rougher texture, shaded rim;
* rebar: 1-3 parallel rusty bars (orange-brown, cylindrical shading, ribs), usually inside a
  spall (the spall mask then covers the bars too: the converter's priority gives them to rebar).

About ``empty_fraction`` of the images hold no defect. Images are JPEG (quality 90-97), masks PNG
by default (``mask_format="jpg"`` gives JPEG-noisy masks like the real data).
"""

import os
import shutil
import tempfile

import cv2
import numpy as np
from PIL import Image

__all__ = ["draw_synthetic_sample", "make_synthetic_concrete"]


def _smooth_noise(rng, h, w, cell, std):
    grid = rng.normal(0.0, std, (h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _surface(rng, h, w):
    """(H, W, 3) float32 concrete texture with lighting."""
    grey = np.full((h, w), rng.uniform(95, 185), np.float32)
    grey += _smooth_noise(rng, h, w, int(rng.integers(24, 64)), rng.uniform(5, 14))
    grey += _smooth_noise(rng, h, w, 6, rng.uniform(2, 6))
    grey += rng.normal(0, rng.uniform(3, 9), (h, w)).astype(np.float32)
    for _ in range(int(rng.integers(10, 60))):  # pores: small dark dots, not defects
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        cv2.circle(grey, c, int(rng.integers(1, 3)), float(grey[c[1], c[0]] * 0.75), -1)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light = 1 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    r2 = ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2
    light *= 1 - rng.uniform(0, 0.3) * r2
    light *= rng.uniform(0.8, 1.15)
    tint = rng.normal(0, 5, 3).astype(np.float32)
    return grey[..., None] * light[..., None] + tint


def _blob(rng, h, w, center, radius):
    """Filled irregular star-shaped polygon, (H, W) bool."""
    n = 40
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 6):
        rad += rng.uniform(0, 0.35 / k * 2) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rad *= radius * rng.uniform(0.9, 1.1, n)
    aspect = rng.uniform(0.6, 1.0)
    rot = rng.uniform(0, np.pi)
    x, y = rad * np.cos(ang), rad * np.sin(ang) * aspect
    xs = center[0] + x * np.cos(rot) - y * np.sin(rot)
    ys = center[1] + x * np.sin(rot) + y * np.cos(rot)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.stack([xs, ys], 1).round().astype(np.int32)], 1)
    return mask.astype(bool)


def _draw_spall(rng, img, mask):
    h, w = mask.shape
    rough = _smooth_noise(rng, h, w, 3, rng.uniform(10, 20)) + rng.normal(0, 8, (h, w))
    dark = rng.uniform(0.45, 0.72)
    inner = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, 3)
    rim = np.clip(inner / rng.uniform(3, 8), 0, 1)  # shadowed edge, brighter inside
    shade = dark * (0.75 + 0.25 * rim)
    hue = np.array([rng.uniform(0.95, 1.08), 1.0, rng.uniform(0.85, 1.0)], np.float32)
    img[mask] = img[mask] * shade[mask, None] * hue + rough[mask, None]


def _draw_rebar(rng, img, region):
    """Parallel rusty bars clipped to ``region`` (bool (H, W)); returns the bar mask."""
    h, w = region.shape
    bars = np.zeros((h, w), bool)
    ys, xs = np.nonzero(region)
    if len(xs) == 0:
        return bars
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1  # work in the region's box
    theta = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.15)
    d = np.array([np.cos(theta), np.sin(theta)])
    normal = np.array([-d[1], d[0]])
    width = rng.uniform(0.025, 0.05) * min(h, w)
    n_bars = int(rng.integers(1, 4))
    spacing = width * rng.uniform(2.5, 4.5)
    cx, cy = xs.mean(), ys.mean()
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    across = (xx - cx) * normal[0] + (yy - cy) * normal[1]
    along = (xx - cx) * d[0] + (yy - cy) * d[1]
    offsets = (np.arange(n_bars) - (n_bars - 1) / 2) * spacing + rng.normal(0, width * 0.3)
    dist = np.min(np.abs(across[..., None] - offsets.astype(np.float32)), axis=-1)
    box = (dist <= width / 2) & region[y0:y1, x0:x1]
    shade = 0.55 + 0.45 * np.cos(np.clip(dist / (width / 2), 0, 1) * np.pi / 2)
    ribs = 1 + 0.12 * np.sin(2 * np.pi * along / (width * rng.uniform(0.6, 1.0)))
    rust = np.array([rng.uniform(125, 180), rng.uniform(60, 95), rng.uniform(25, 50)], np.float32)
    noise = _smooth_noise(rng, y1 - y0, x1 - x0, 2, 14)
    value = rust * (shade * ribs)[..., None] + noise[..., None]
    img[y0:y1, x0:x1][box] = value[box]
    bars[y0:y1, x0:x1] = box
    return bars


# cracks end this many pixels inside the image (their polyline is up to 3 px thick)
CRACK_MARGIN = 2


def _crack_path(rng, h, w, canvas, start, angle, length, thickness, depth):
    pts = [np.array(start, np.float64)]
    step = rng.uniform(2.5, 4.5)
    lo, hi = CRACK_MARGIN, np.array([w - 1 - CRACK_MARGIN, h - 1 - CRACK_MARGIN], np.float64)
    for _ in range(int(length / step)):
        angle += rng.normal(0, 0.3)
        nxt = pts[-1] + step * np.array([np.cos(angle), np.sin(angle)])
        # the crack ends at the border: one that left the image and came back would be cut
        # into fragments (separate instances, some only a few pixels at the edge)
        if not (lo <= nxt[0] <= hi[0] and lo <= nxt[1] <= hi[1]):
            break
        pts.append(nxt)
        if depth < 2 and rng.random() < 0.025:
            branch = angle + rng.choice([-1, 1]) * rng.uniform(0.5, 1.2)
            sub_len = length * rng.uniform(0.2, 0.5)
            sub_t = max(1, thickness - 1)
            _crack_path(rng, h, w, canvas, pts[-1], branch, sub_len, sub_t, depth + 1)
    poly = np.round(np.stack(pts)).astype(np.int32)
    cv2.polylines(canvas, [poly], False, 1, thickness=int(thickness), lineType=cv2.LINE_8)


def _draw_crack(rng, img):
    h, w = img.shape[:2]
    canvas = np.zeros((h, w), np.uint8)
    start = (
        rng.uniform(CRACK_MARGIN, w - 1 - CRACK_MARGIN),
        rng.uniform(CRACK_MARGIN, h - 1 - CRACK_MARGIN),
    )
    length = rng.uniform(0.4, 1.2) * max(h, w)
    thickness = int(rng.integers(2, 4))
    _crack_path(rng, h, w, canvas, start, rng.uniform(0, 2 * np.pi), length, thickness, 0)
    mask = canvas.astype(bool)
    dark = np.where(mask, rng.uniform(0.2, 0.45), 1.0).astype(np.float32)
    dark = cv2.GaussianBlur(dark, (3, 3), 0.6)  # soft edges, crisp mask
    img *= dark[..., None]
    return mask


def draw_synthetic_sample(rng, size=(320, 256), empty_fraction=0.2):
    """Draw one image and its masks.

    Args:
        rng: ``np.random.Generator``.
        size: (width, height).
    Returns:
        image: (H, W, 3) uint8 RGB; masks: dict class -> (H, W) bool, only non-empty classes.
    """
    w, h = size
    img = _surface(rng, h, w)
    masks = {}
    if rng.random() >= empty_fraction:
        n_spall = int(rng.choice([0, 1, 1, 2]))
        n_crack = int(rng.choice([0, 1, 1, 2]))
        rebar_alone = rng.random() < 0.25
        if n_spall + n_crack == 0 and not rebar_alone:
            n_crack = 1
        spall = np.zeros((h, w), bool)
        rebar = np.zeros((h, w), bool)
        for _ in range(n_spall):
            r = rng.uniform(0.1, 0.3) * min(h, w)
            c = (rng.uniform(r, w - r), rng.uniform(r, h - r))
            blob = _blob(rng, h, w, c, r)
            _draw_spall(rng, img, blob)
            spall |= blob
            if rng.random() < 0.6:
                rebar |= _draw_rebar(rng, img, blob)
        if rebar_alone:
            x0, y0 = rng.uniform(0, w * 0.6), rng.uniform(0, h * 0.6)
            region = np.zeros((h, w), bool)
            region[int(y0) : int(y0 + rng.uniform(0.2, 0.4) * h), int(x0) : int(x0 + 0.4 * w)] = 1
            rebar |= _draw_rebar(rng, img, region)
        crack = np.zeros((h, w), bool)
        for _ in range(n_crack):
            crack |= _draw_crack(rng, img)
        masks = {k: m for k, m in (("crack", crack), ("spall", spall), ("rebar", rebar)) if m.any()}
    return np.clip(img, 0, 255).round().astype(np.uint8), masks


def make_synthetic_concrete(
    out_dir,
    num,
    seed=0,
    size=(320, 256),
    empty_fraction=0.2,
    mask_format="png",
    overwrite=False,
):
    """Write ``num`` synthetic images in the raw layout (``images/``, ``masks/``).

    Args:
        out_dir: folder to create (replaced only with ``overwrite``; written atomically).
        size: (width, height) of every image.
        mask_format: "png" (exact) or "jpg" (JPEG-noisy, like the real data).
    Returns:
        dict: images, images_without_defects, masks per class.
    """
    if mask_format not in ("png", "jpg"):
        raise ValueError(f"mask_format must be 'png' or 'jpg', got {mask_format!r}")
    out_dir = os.path.abspath(os.fspath(out_dir))
    if os.path.lexists(out_dir) and not overwrite:
        raise FileExistsError(f"{out_dir}: already exists (pass overwrite=True / --overwrite)")
    parent = os.path.dirname(out_dir)
    os.makedirs(parent, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=f".{os.path.basename(out_dir)}.tmp-", dir=parent)
    summary = {"images": num, "images_without_defects": 0, "masks": {}}
    summary["masks"] = {"crack": 0, "spall": 0, "rebar": 0}
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "masks"))
        digits = max(5, len(str(num - 1)))
        for i in range(num):
            rng = np.random.default_rng([seed, i])
            img, masks = draw_synthetic_sample(rng, size, empty_fraction)
            stem = f"{i:0{digits}d}"
            quality = int(rng.integers(90, 98))
            Image.fromarray(img).save(os.path.join(tmp, "images", stem + ".jpg"), quality=quality)
            summary["images_without_defects"] += not masks
            for cls, mask in sorted(masks.items()):
                summary["masks"][cls] += 1
                path = os.path.join(tmp, "masks", f"{stem}{cls}.{mask_format}")
                Image.fromarray(mask.astype(np.uint8) * 255).save(path, quality=90)
        if os.path.lexists(out_dir):
            shutil.rmtree(out_dir)
        os.rename(tmp, out_dir)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return summary
