"""Procedural photographs of concrete defects (crack, spall, exposed rebar) in the raw layout.

A tool for the demo, the benchmarks and the tests (import it by path, it is not part of the
``d2_detr`` package; ``datasets/make_synthetic_concrete.py`` is its command line). Each image is
drawn from its own generator seeded with ``(seed, index)``: a dataset is reproducible and any
image can be redrawn alone.

What is drawn, modelled on the real photographs of ``datasets/concrete_defects_sample``:

* surface: cast concrete (grey, blotches, grain, brushed streaks, pores / bug holes, water and
  rust stains, formwork joints and tie holes) or painted plaster (smooth pastel colour);
* crack: a jagged random walk with a general direction, branches, a width that varies along it
  and tapers at the ends, a dark core and often a lit rim (the mask covers both, as annotators
  outline the visible crack);
* spall: a cavity with a rough fractal outline, exposed aggregate (stones of varied colour in
  darker mortar), depth shading (the rim facing away from the light in shadow) and sometimes a
  flaked surface layer around it;
* exposed rebar: a spall with 1-4 rusty bars across it (cylindrical shading, ribs, a cast
  shadow), sometimes a bar across them. The real dataset labels the whole cavity with exposed
  bars as ``rebar`` (``rebar_label="region"``, the default); ``"bars"`` labels the bars rebar and
  the cavity spall;
* things that are not defects: poles or pipes in front of the wall (they hide the defects behind
  them), watermark text, plates, soft shadows;
* camera: perspective, defocus across the image, blur, exposure and gamma, white balance, noise
  and JPEG compression (quality drawn when the image is written).

Most real photographs hold one defect class (1401 of the 1443 images of the full dataset): so do
about 70 % of the images here; ``empty_fraction`` of them hold none.
"""

import os
import shutil
import tempfile

import cv2
import numpy as np
from PIL import Image

__all__ = [
    "CLASSES",
    "contact_sheet",
    "CRACK_MARGIN",
    "REBAR_LABELS",
    "draw_synthetic_sample",
    "make_synthetic_concrete",
]

CLASSES = ("crack", "spall", "rebar")
REBAR_LABELS = ("region", "bars")
# cracks end this many pixels inside the output image: one that left the image and came back
# would be cut into fragments (separate instances of a few pixels at the edge)
CRACK_MARGIN = 2


# ----------------------------------------------------------------------------------------------
# small helpers


def _smooth_noise(rng, h, w, cell, std):
    """(H, W) float32 noise with features of about ``cell`` pixels."""
    cell = max(int(cell), 1)
    grid = rng.normal(0.0, std, (h // cell + 2, w // cell + 2)).astype(np.float32)
    return cv2.resize(grid, (w, h), interpolation=cv2.INTER_CUBIC)


def _unit(angle):
    return np.array([np.cos(angle), np.sin(angle)], np.float64)


def _shading(mask, light, sigma):
    """Lambert-like shading of a cavity's wall: (H, W) float32, > 0 lit, < 0 in shadow.

    ``mask`` (H, W) bool cavity; ``light`` (2,) unit vector towards the light (image x, y).
    The wall's outward normal is minus the gradient of the blurred mask.
    """
    soft = cv2.GaussianBlur(mask.astype(np.float32), (0, 0), sigma)
    gx = cv2.Sobel(soft, cv2.CV_32F, 1, 0, ksize=3)
    gy = cv2.Sobel(soft, cv2.CV_32F, 0, 1, ksize=3)
    # the gradient points into the cavity: where it points towards the light, the wall there
    # faces the light (lit); the wall on the light's side faces away from it (shadow)
    return (gx * light[0] + gy * light[1]) * (2.0 * sigma)


# ----------------------------------------------------------------------------------------------
# surfaces


PLASTER_COLOURS = np.array(
    [[226, 206, 188], [232, 200, 190], [236, 234, 226], [228, 218, 182], [206, 214, 218],
     [214, 196, 170]],
    np.float32,
)  # fmt: skip


def _concrete(rng, h, w):
    """(H, W, 3) float32 cast-concrete surface."""
    scale = min(h, w) / 256.0
    grey = np.full((h, w), rng.uniform(85, 195), np.float32)
    grey += _smooth_noise(rng, h, w, rng.integers(24, 80) * scale, rng.uniform(4, 14))
    grey += _smooth_noise(rng, h, w, 6 * scale, rng.uniform(2, 6))
    grain = rng.normal(0, 1, (h, w)).astype(np.float32)
    if rng.random() < 0.45:  # brushed / broom finish: streaks in one direction
        length = int(rng.integers(9, 31))
        kernel = np.zeros((length, length), np.float32)
        c = (length - 1) / 2
        d = _unit(rng.uniform(0, np.pi)) * c
        cv2.line(kernel, (int(c - d[0]), int(c - d[1])), (int(c + d[0]), int(c + d[1])), 1.0)
        kernel /= kernel.sum()
        streaks = cv2.filter2D(rng.normal(0, 1, (h, w)).astype(np.float32), -1, kernel)
        grey += streaks / (streaks.std() + 1e-6) * rng.uniform(3, 9)
    grey += grain * rng.uniform(2, 9)
    # pores and bug holes: dark dots with a lit lower rim, not defects
    for _ in range(int(rng.integers(10, 120) * scale**2)):
        c = (int(rng.integers(0, w)), int(rng.integers(0, h)))
        r = int(rng.choice([1, 1, 1, 2, 2, 3]) * max(scale, 0.5))
        base = float(grey[c[1], c[0]])
        cv2.circle(grey, (c[0], c[1] + 1), r, base * 1.08, -1)
        cv2.circle(grey, c, r, base * rng.uniform(0.45, 0.8), -1)
    img = np.repeat(grey[..., None], 3, axis=2)
    img += rng.normal(0, 4, 3).astype(np.float32)  # tint
    for _ in range(int(rng.choice([0, 0, 1, 1, 2, 3]))):  # water / rust stains
        stain = _smooth_noise(rng, h, w, rng.integers(20, 60) * scale, 1.0)
        stain = np.clip(stain - rng.uniform(0.4, 1.2), 0, None)
        if rng.random() < 0.4:  # run-down streaks
            stain = cv2.blur(stain, (1, int(rng.integers(15, 60))))
        colour = rng.choice([[-1.0, -1.0, -1.0], [0.2, -0.25, -0.7], [-0.6, -0.6, -0.5]])
        img += stain[..., None] * np.array(colour, np.float32) * rng.uniform(10, 35)
    if rng.random() < 0.4:  # formwork joints: straight lines, often a step in tone across them
        for _ in range(int(rng.integers(1, 4))):
            vertical = rng.random() < 0.5
            pos = int(rng.integers(0, w if vertical else h))
            tilt = int(rng.normal(0, 3))
            p0, p1 = ((pos, 0), (pos + tilt, h)) if vertical else ((0, pos), (w, pos + tilt))
            line = np.zeros((h, w), np.uint8)
            cv2.line(line, p0, p1, 1, int(rng.integers(1, 3)))
            img[line > 0] *= rng.uniform(0.6, 1.15)
            if rng.random() < 0.5:
                yy, xx = np.mgrid[0:h, 0:w]
                side = (xx > pos) if vertical else (yy > pos)
                img[side] *= rng.uniform(0.9, 1.1)
    if rng.random() < 0.2:  # tie holes on a grid
        step = int(rng.uniform(0.3, 0.6) * min(h, w))
        r = max(2, int(rng.uniform(0.012, 0.025) * min(h, w)))
        ox, oy = rng.integers(0, step, 2)
        for y in range(int(oy), h, step):
            for x in range(int(ox), w, step):
                cv2.circle(img, (x, y), r + 1, [float(v) * 1.05 for v in img[y, x]], -1)
                cv2.circle(img, (x, y), r, [float(v) * 0.45 for v in img[y, x]], -1)
    return img


def _plaster(rng, h, w):
    """(H, W, 3) float32 painted plaster: smooth, one pastel colour."""
    colour = PLASTER_COLOURS[rng.integers(len(PLASTER_COLOURS))] + rng.normal(0, 6, 3)
    img = np.broadcast_to(colour.astype(np.float32), (h, w, 3)).copy()
    img += _smooth_noise(rng, h, w, 40, rng.uniform(2, 6))[..., None]
    img += rng.normal(0, rng.uniform(1, 3), (h, w)).astype(np.float32)[..., None]
    return img


def _lighting(rng, h, w):
    """(H, W) float32 multiplicative light: gradient, vignette, sometimes a soft shadow."""
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
    gx, gy = rng.uniform(-0.35, 0.35, 2)
    light = 1 + gx * (xx / w - 0.5) + gy * (yy / h - 0.5)
    light *= 1 - rng.uniform(0, 0.3) * ((xx / w - 0.5) ** 2 + (yy / h - 0.5) ** 2) * 2
    if rng.random() < 0.2:
        shadow = _smooth_noise(rng, h, w, min(h, w) // 3, 1.0)
        light *= 1 - rng.uniform(0.08, 0.25) * (shadow > rng.uniform(0, 0.8))
    return cv2.GaussianBlur(light, (0, 0), 3)


# ----------------------------------------------------------------------------------------------
# defects


def _rough_blob(rng, h, w, center, radius):
    """Filled irregular outline with a rough (fractal) edge, (H, W) bool."""
    n = 160
    ang = np.linspace(0, 2 * np.pi, n, endpoint=False)
    rad = np.ones(n)
    for k in range(2, 24):  # amplitude ~ 1 / k: smooth lobes, then a ragged edge
        rad += rng.uniform(0, 0.5 / k) * np.cos(k * ang + rng.uniform(0, 2 * np.pi))
    rad *= radius * (1 + rng.normal(0, 0.03, n))
    aspect = rng.uniform(0.5, 1.0)
    rot = rng.uniform(0, np.pi)
    x, y = rad * np.cos(ang), rad * np.sin(ang) * aspect
    xs = center[0] + x * np.cos(rot) - y * np.sin(rot)
    ys = center[1] + x * np.sin(rot) + y * np.cos(rot)
    mask = np.zeros((h, w), np.uint8)
    cv2.fillPoly(mask, [np.stack([xs, ys], 1).round().astype(np.int32)], 1)
    return mask.astype(bool)


def _aggregate(rng, h, w, box, surface_tone):
    """(h, w, 3) float32 exposed-aggregate texture for the box (x0, y0, x1, y1): stones of
    muted natural colours (greys, browns, beige) in darker mortar, speckled with voids."""
    x0, y0, x1, y1 = box
    bh, bw = y1 - y0, x1 - x0
    scale = max(min(h, w) / 256.0, 0.4)
    warm = np.array([rng.uniform(1.0, 1.12), 1.0, rng.uniform(0.8, 0.97)], np.float32)
    mortar = surface_tone.mean() * rng.uniform(0.6, 0.95) * warm
    tex = np.broadcast_to(mortar.astype(np.float32), (bh, bw, 3)).copy()
    tex += _smooth_noise(rng, bh, bw, 3 * scale, rng.uniform(5, 12))[..., None]
    rmax = rng.uniform(1.5, 4.0) * scale
    n = int(bh * bw * rng.uniform(0.15, 0.4) / (rmax**2 * 2))
    cx, cy = rng.integers(0, bw, n), rng.integers(0, bh, n)
    ax = np.maximum(1, (rng.uniform(0.4, 1.0, (n, 2)) * rmax * [1.0, 0.75]).astype(int))
    tone = mortar.mean() * rng.uniform(0.55, 1.45, n)
    colours = tone[:, None] * np.stack(
        [1.0 + rng.normal(0, 0.08, n), np.ones(n), 1.0 + rng.normal(-0.05, 0.08, n)], 1
    )
    angles = rng.uniform(0, 180, n)
    for k in range(n):  # lit stone with its shadow one pixel down-right
        c, axes, colour = (int(cx[k]), int(cy[k])), (int(ax[k, 0]), int(ax[k, 1])), colours[k]
        cv2.ellipse(tex, (c[0] + 1, c[1] + 1), axes, angles[k], 0, 360, (colour * 0.6).tolist(), -1)
        cv2.ellipse(tex, c, axes, angles[k], 0, 360, colour.tolist(), -1)
    speckle = rng.random((bh, bw)) < rng.uniform(0.02, 0.08)  # dark grains and voids
    tex[speckle] *= rng.uniform(0.3, 0.6)
    return tex


def _draw_cavity(rng, img, mask, light):
    """Paint a spall cavity (exposed aggregate, depth shading, flaked rim) into ``img``."""
    h, w = mask.shape
    ys, xs = np.nonzero(mask)
    if len(xs) == 0:
        return
    x0, y0, x1, y1 = xs.min(), ys.min(), xs.max() + 1, ys.max() + 1
    tone = img[mask].mean(0)
    tex = _aggregate(rng, h, w, (x0, y0, x1, y1), tone)
    inner = cv2.distanceTransform(mask.view(np.uint8), cv2.DIST_L2, 3)[y0:y1, x0:x1]
    depth = np.clip(inner / max(3.0, rng.uniform(0.1, 0.3) * np.sqrt(mask.sum())), 0, 1)
    tex *= (rng.uniform(0.7, 0.95) + 0.1 * depth)[..., None]
    sub = mask[y0:y1, x0:x1]
    img[y0:y1, x0:x1][sub] = tex[sub]
    if rng.random() < 0.3:  # flaked surface layer / broken paint here and there along the edge
        k = int(rng.integers(3, 8))
        ring = cv2.dilate(mask.view(np.uint8), np.ones((k, k), np.uint8), iterations=1) > 0
        ring &= ~mask
        ring &= _smooth_noise(rng, h, w, 5, 1.0) > rng.uniform(0.0, 0.8)
        img[ring] = np.minimum(img[ring] * rng.uniform(1.08, 1.25), 250)
    shade = _shading(mask, light, rng.uniform(1.5, 3.5)) * mask  # the cavity's walls only
    strength = rng.uniform(0.5, 1.0)
    img *= (1 + strength * np.clip(shade, -0.7, 0.35))[..., None]


def _draw_bars(rng, img, region, light):
    """Rusty bars across ``region`` (bool (H, W)) with ribs and cast shadows; bar mask back."""
    h, w = region.shape
    bars = np.zeros((h, w), bool)
    ys, xs = np.nonzero(region)
    if len(xs) < 20:
        return bars
    y0, y1, x0, x1 = ys.min(), ys.max() + 1, xs.min(), xs.max() + 1
    # bars end a little inside the cavity: they run on under the concrete
    inside = cv2.erode(region.view(np.uint8), np.ones((3, 3), np.uint8)) > 0
    theta = rng.choice([0.0, np.pi / 2]) + rng.normal(0, 0.12)
    width = rng.uniform(0.01, 0.035) * min(h, w)
    n_bars = int(rng.integers(1, 5))
    spacing = width * rng.uniform(2.5, 6.0)
    cx, cy = xs.mean(), ys.mean()
    yy, xx = np.mgrid[y0:y1, x0:x1].astype(np.float32)
    if rng.random() < 0.7:  # dark, corroded
        rust = np.array([rng.uniform(45, 110), rng.uniform(28, 65), rng.uniform(18, 45)])
    else:  # fresh orange rust
        rust = np.array([rng.uniform(120, 175), rng.uniform(60, 95), rng.uniform(25, 50)])
    rust = rust.astype(np.float32)
    families = [(theta, n_bars, spacing)]
    if rng.random() < 0.35:  # a stirrup / distribution bar across the main bars
        families.append((theta + np.pi / 2 + rng.normal(0, 0.08), 1, spacing))
    for angle, count, space in families:
        d, normal = _unit(angle), _unit(angle + np.pi / 2)
        across = (xx - cx) * normal[0] + (yy - cy) * normal[1]
        along = (xx - cx) * d[0] + (yy - cy) * d[1]
        offsets = (np.arange(count) - (count - 1) / 2) * space + rng.normal(0, width * 0.5)
        dist = np.min(np.abs(across[..., None] - offsets.astype(np.float32)), axis=-1)
        signed = across[..., None] - offsets.astype(np.float32)
        nearest = np.take_along_axis(signed, np.abs(signed).argmin(-1)[..., None], -1)[..., 0]
        on = (dist <= width / 2) & inside[y0:y1, x0:x1]
        # cast shadow: a band beside each bar on the side away from the light
        away = -np.sign(normal @ light) if abs(normal @ light) > 0.1 else 1.0
        shadow = (nearest * away > width / 2) & (nearest * away < width * rng.uniform(1.0, 1.8))
        shadow &= inside[y0:y1, x0:x1] & ~on
        img[y0:y1, x0:x1][shadow] *= rng.uniform(0.45, 0.7)
        shade = 0.45 + 0.55 * np.cos(np.clip(dist / (width / 2), 0, 1) * np.pi / 2)
        ribs = 1 + rng.uniform(0.03, 0.12) * np.sin(
            2 * np.pi * along / (width * rng.uniform(0.6, 1.0))
        )
        noise = _smooth_noise(rng, y1 - y0, x1 - x0, 2, 12)
        value = rust * (shade * ribs)[..., None] + noise[..., None]
        img[y0:y1, x0:x1][on] = value[on]
        bars[y0:y1, x0:x1] |= on
    return bars


def _crack_width_profile(rng, n, base):
    """(n,) widths along a crack: smooth variation around ``base``, tapering at both ends."""
    if n < 2:
        return np.full(n, base)
    knots = rng.uniform(0.55, 1.35, max(2, n // 12 + 2))
    profile = np.interp(np.linspace(0, len(knots) - 1, n), np.arange(len(knots)), knots)
    t = np.linspace(0, 1, n)
    taper = np.clip(np.minimum(t, 1 - t) / rng.uniform(0.05, 0.25), 0.35, 1.0)
    return base * profile * taper


def _crack_path(rng, inside, start, angle, length, base_width, depth, segments):
    """Random walk with a drifting direction; appends (points, widths) of it and its branches.

    ``inside(p)`` tells whether canvas point ``p`` is within the output image (minus a margin):
    the walk stops where it would leave it.
    """
    pts = [np.array(start, np.float64)]
    step = rng.uniform(1.5, 3.5)
    heading = angle
    jag = rng.uniform(0.25, 0.7)
    branches = []
    for _ in range(int(length / step)):
        heading += rng.normal(0, 0.08)  # the general direction drifts slowly
        nxt = pts[-1] + step * _unit(heading + rng.normal(0, jag))  # jagged around it
        if not inside(nxt):
            break
        pts.append(nxt)
        if depth < 2 and rng.random() < 0.012:
            branch = heading + rng.choice([-1, 1]) * rng.uniform(0.4, 1.1)
            branches.append((pts[-1].copy(), branch, length * rng.uniform(0.15, 0.45)))
    widths = _crack_width_profile(rng, len(pts), base_width)
    segments.append((np.stack(pts), widths))
    for k, (p, a, sub_len) in enumerate(branches):
        # a branch starts as wide as the crack where it leaves it, then tapers
        _crack_path(rng, inside, p, a, sub_len, base_width * rng.uniform(0.4, 0.8), depth + 1,
                    segments)  # fmt: skip


def _draw_crack(rng, img, inside, light):
    """Draw one crack (with its branches) into ``img``; returns its (H, W) bool mask."""
    h, w = img.shape[:2]
    scale = min(h, w) / 256.0
    for _ in range(100):
        start = (rng.uniform(0, w), rng.uniform(0, h))
        if inside(start):
            break
    else:
        return np.zeros((h, w), bool)
    length = rng.uniform(0.35, 1.3) * max(h, w)
    base = rng.choice([rng.uniform(1.5, 3.0), rng.uniform(2.5, 7.0)]) * max(scale, 0.5)
    angle = rng.uniform(0, 2 * np.pi)
    segments = []
    _crack_path(rng, inside, start, angle, length, base, 0, segments)
    if rng.random() < 0.6:  # grow the other way from the start too
        _crack_path(rng, inside, start, angle + np.pi, length * rng.uniform(0.3, 1), base, 1,
                    segments)  # fmt: skip
    core = np.zeros((h, w), np.float32)
    for pts, widths in segments:
        ip = np.round(pts).astype(np.int32)
        for k in range(len(ip) - 1):
            t = max(1, int(round(widths[k])))
            cv2.line(core, tuple(ip[k]), tuple(ip[k + 1]), 1.0, t, cv2.LINE_8)
        if len(ip) == 1:
            cv2.circle(core, tuple(ip[0]), 1, 1.0, -1)
    mask = core > 0
    dark = rng.uniform(0.15, 0.5)
    soft = cv2.GaussianBlur(core, (0, 0), rng.uniform(0.4, 0.9))
    if rng.random() < 0.55:  # lit rim: the crack's edge facing the light catches it
        shift = -light * max(1.0, rng.uniform(0.5, 1.0) * base)
        m = np.float32([[1, 0, shift[0]], [0, 1, shift[1]]])
        rim = cv2.warpAffine(soft, m, (w, h)) * (1 - soft)
        img *= (1 + rng.uniform(0.15, 0.45) * rim)[..., None]
        mask |= rim > 0.35
        # a rim shifted past a thin part of the crack would be a separate piece: keep the parts
        # that touch the crack itself
        _, labels = cv2.connectedComponents(mask.view(np.uint8), connectivity=8)
        touching = np.unique(labels[core > 0])
        mask = np.isin(labels, touching[touching > 0])
    img *= (1 - (1 - dark) * soft)[..., None]
    return mask


# ----------------------------------------------------------------------------------------------
# things that are not defects


def _draw_distractors(rng, img, masks):
    """Poles in front of the wall (they hide what is behind: masks are cleared), text, plates."""
    h, w = img.shape[:2]
    if rng.random() < 0.2:
        for _ in range(int(rng.integers(1, 4))):
            width = rng.uniform(0.025, 0.07) * w
            x = rng.uniform(0, w)
            tilt = rng.normal(0, 0.08) * h
            yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
            centre = x + tilt * (yy / h - 0.5)
            across = (xx - centre) / (width / 2)
            pole = np.abs(across) <= 1
            colour = rng.choice([[150, 180, 205], [190, 190, 195], [230, 230, 225], [90, 70, 60]])
            shade = 0.8 + 0.35 * np.cos(np.clip(across + rng.uniform(-0.5, 0.5), -1, 1) * np.pi / 2)
            img[pole] = (np.array(colour, np.float32) * shade[..., None])[pole]
            for cls in masks:
                masks[cls] &= ~pole
    if rng.random() < 0.1:  # a plate / box fixed to the wall
        bw, bh = rng.uniform(0.1, 0.25) * w, rng.uniform(0.08, 0.2) * h
        x0, y0 = rng.uniform(0, w - bw), rng.uniform(0, h - bh)
        p0, p1 = (int(x0), int(y0)), (int(x0 + bw), int(y0 + bh))
        colour = img[int(y0), int(x0)] * rng.uniform(0.85, 1.1) + rng.normal(0, 10, 3)
        cv2.rectangle(img, p0, p1, colour.tolist(), -1)
        cv2.rectangle(img, p0, p1, (colour * 0.7).tolist(), 1)
        for cls in masks:
            masks[cls][p0[1] : p1[1] + 1, p0[0] : p1[0] + 1] = False
    if rng.random() < 0.08:  # watermark text
        layer = np.zeros((h, w), np.float32)
        text = "".join(rng.choice(list("abcdefghijklmnopqrstuvwxyz"), int(rng.integers(5, 11))))
        org = (int(rng.uniform(0, w * 0.5)), int(rng.uniform(h * 0.2, h)))
        cv2.putText(layer, text + ".com", org, cv2.FONT_HERSHEY_SIMPLEX, rng.uniform(0.4, 0.9),
                    1.0, 1, cv2.LINE_AA)  # fmt: skip
        img += (rng.uniform(40, 90) * layer)[..., None]


# ----------------------------------------------------------------------------------------------
# camera


def _homography(rng, w, h, margin, perspective):
    """3x3 map from the padded canvas to the output image (a perspective view of it)."""
    corners = np.float32([[0, 0], [w, 0], [w, h], [0, h]])
    src = corners + margin
    if perspective:
        src += rng.uniform(-margin, margin, (4, 2)).astype(np.float32)
    return cv2.getPerspectiveTransform(src.astype(np.float32), corners)


def _camera(rng, img):
    """Defocus, blur, exposure, gamma, white balance and sensor noise on the output image."""
    h, w = img.shape[:2]
    if rng.random() < 0.3:  # depth of field: sharp on one side, blurred on the other
        blurred = cv2.GaussianBlur(img, (0, 0), rng.uniform(1.0, 2.5))
        yy, xx = np.mgrid[0:h, 0:w].astype(np.float32)
        d = _unit(rng.uniform(0, 2 * np.pi))
        ramp = ((xx / w - 0.5) * d[0] + (yy / h - 0.5) * d[1]) * 2 + rng.uniform(-0.3, 0.3)
        a = np.clip(ramp, 0, 1)[..., None]
        img = img * (1 - a) + blurred * a
    if rng.random() < 0.4:
        img = cv2.GaussianBlur(img, (0, 0), rng.uniform(0.3, 1.1))
    img = img * rng.uniform(0.75, 1.25)
    img = 255.0 * (np.clip(img, 0, 255) / 255.0) ** rng.uniform(0.8, 1.25)
    img = img * rng.normal(1, 0.05, 3).astype(np.float32)  # white balance
    if rng.random() < 0.7:
        img = img + rng.normal(0, rng.uniform(1, 6), img.shape).astype(np.float32)
    return img


# ----------------------------------------------------------------------------------------------
# one image


def _layout(rng):
    """Number of cracks, plain spalls and rebar cavities of one image with defects."""
    if rng.random() < 0.7:  # one class, as most real photographs
        cls = rng.choice(CLASSES, p=[0.4, 0.25, 0.35])
        count = {"crack": rng.choice([1, 1, 1, 2]), "spall": rng.choice([1, 1, 2, 3]),
                 "rebar": rng.choice([1, 1, 2])}[cls]  # fmt: skip
        counts = {c: 0 for c in CLASSES}
        counts[cls] = int(count)
        return counts
    counts = {c: int(rng.choice([0, 1, 1, 2])) for c in CLASSES}
    if sum(counts.values()) < 2:
        counts[rng.choice(CLASSES)] += 1
    return counts


def draw_synthetic_sample(
    rng, size=(320, 256), empty_fraction=0.2, rebar_label="region", camera=True
):
    """Draw one photograph and its defect masks.

    Args:
        rng: ``np.random.Generator``.
        size: (width, height) in pixels.
        empty_fraction: probability of an image without defects.
        rebar_label: "region" (the cavity with exposed bars is rebar, as the real dataset labels
            it) or "bars" (the bars are rebar, their cavity spall).
        camera: perspective, defocus, blur, exposure, white balance and noise (off: the scene as
            drawn, seen straight on).
    Returns:
        image: (H, W, 3) uint8 RGB; masks: dict class -> (H, W) bool, only non-empty classes.
    """
    if rebar_label not in REBAR_LABELS:
        raise ValueError(f"rebar_label must be one of {REBAR_LABELS}, got {rebar_label!r}")
    w, h = size
    margin = int(round(0.08 * max(w, h))) if camera else 0
    cw, ch = w + 2 * margin, h + 2 * margin
    hom = _homography(rng, w, h, margin, camera and rng.random() < 0.6)

    def inside(p):  # canvas point -> within the output image, CRACK_MARGIN from its border
        q = hom @ np.array([p[0], p[1], 1.0])
        x, y = q[0] / q[2], q[1] / q[2]
        return (
            CRACK_MARGIN <= x <= w - 1 - CRACK_MARGIN and CRACK_MARGIN <= y <= h - 1 - CRACK_MARGIN
        )

    img = _concrete(rng, ch, cw) if rng.random() < 0.75 else _plaster(rng, ch, cw)
    img *= _lighting(rng, ch, cw)[..., None]
    light = _unit(rng.uniform(0, 2 * np.pi))
    masks = {c: np.zeros((ch, cw), bool) for c in CLASSES}
    if rng.random() >= empty_fraction:
        counts = _layout(rng)
        s = min(w, h)
        for cls in ("rebar", "spall"):
            for _ in range(counts[cls]):
                r = (rng.uniform(0.15, 0.45) if cls == "rebar" else rng.uniform(0.06, 0.3)) * s
                centre = (rng.uniform(margin, margin + w), rng.uniform(margin, margin + h))
                cavity = _rough_blob(rng, ch, cw, centre, r) & ~masks["crack"]
                _draw_cavity(rng, img, cavity, light)
                if cls == "spall":
                    masks["spall"] |= cavity
                    continue
                bars = _draw_bars(rng, img, cavity, light)
                if rebar_label == "region":
                    masks["rebar"] |= cavity if bars.any() else False
                    masks["spall"] |= cavity if not bars.any() else False
                else:
                    masks["rebar"] |= bars
                    masks["spall"] |= cavity & ~bars
        for _ in range(counts["crack"]):
            masks["crack"] |= _draw_crack(rng, img, inside, light)
        _draw_distractors(rng, img, masks)
    if margin or camera:
        img = cv2.warpPerspective(img, hom, (w, h), flags=cv2.INTER_LINEAR)
        for cls in masks:
            m = cv2.warpPerspective(masks[cls].astype(np.float32), hom, (w, h))
            masks[cls] = m > 0.4
    if camera:
        img = _camera(rng, img)
    masks = {c: m for c, m in masks.items() if m.any()}
    return np.clip(img, 0, 255).round().astype(np.uint8), masks


# ----------------------------------------------------------------------------------------------
# a dataset in the raw layout


def make_synthetic_concrete(
    out_dir,
    num,
    seed=0,
    size=(320, 256),
    empty_fraction=0.2,
    mask_format="png",
    overwrite=False,
    rebar_label="region",
    camera=True,
):
    """Write ``num`` synthetic images in the raw layout (``images/``, ``masks/``).

    Args:
        out_dir: folder to create (replaced only with ``overwrite``; written atomically).
        size: (width, height) of every image.
        mask_format: "png" (exact) or "jpg" (JPEG-noisy, like the real data).
        rebar_label, camera: see :func:`draw_synthetic_sample`.
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
    summary = {"images": num, "images_without_defects": 0, "masks": {c: 0 for c in CLASSES}}
    try:
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o777 & ~umask)
        os.makedirs(os.path.join(tmp, "images"))
        os.makedirs(os.path.join(tmp, "masks"))
        digits = max(5, len(str(num - 1)))
        for i in range(num):
            rng = np.random.default_rng([seed, i])
            img, masks = draw_synthetic_sample(rng, size, empty_fraction, rebar_label, camera)
            stem = f"{i:0{digits}d}"
            quality = int(rng.integers(45, 96)) if camera else 95
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


OUTLINE = {"crack": (255, 200, 0), "spall": (0, 120, 255), "rebar": (255, 0, 60)}


def contact_sheet(raw_dir, count=12, columns=6):
    """(H, W, 3) uint8 RGB: the first ``count`` images of a raw folder, each above a copy with
    its masks outlined (crack yellow, spall blue, rebar red)."""
    names = sorted(os.listdir(os.path.join(raw_dir, "images")))[:count]
    tiles = []
    for name in names:
        stem = os.path.splitext(name)[0]
        img = np.asarray(Image.open(os.path.join(raw_dir, "images", name)).convert("RGB"))
        outlined = img.copy()
        for cls, colour in OUTLINE.items():
            for ext in ("png", "jpg"):
                path = os.path.join(raw_dir, "masks", f"{stem}{cls}.{ext}")
                if os.path.exists(path):
                    m = (np.asarray(Image.open(path).convert("L")) >= 128).astype(np.uint8)
                    contours, _ = cv2.findContours(m, cv2.RETR_EXTERNAL, cv2.CHAIN_APPROX_NONE)
                    cv2.drawContours(outlined, contours, -1, colour, 1)
        tiles.append(np.concatenate([img, outlined], 0))
    h, w = tiles[0].shape[:2]
    tiles += [np.zeros_like(tiles[0])] * (-len(tiles) % columns)
    rows = [np.concatenate(tiles[k : k + columns], 1) for k in range(0, len(tiles), columns)]
    return np.concatenate(rows, 0)
