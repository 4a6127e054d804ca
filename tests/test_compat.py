"""The CPU fallbacks of d2_detr.compat against brute-force references."""

import itertools

import numpy as np
import pytest
import torch
import torchvision  # noqa: E402
from torchvision.ops import nms, roi_align  # noqa: E402

import d2_detr  # noqa: F401  (applies compat before torchvision is imported)


def brute_force_nms(boxes, scores, thr):
    """Textbook greedy NMS with plain Python floats."""
    b = boxes.tolist()
    s = scores.tolist()
    order = sorted(range(len(s)), key=lambda i: (-s[i], i))
    keep = []
    for i in order:
        ok = True
        for j in keep:
            iw = max(0.0, min(b[i][2], b[j][2]) - max(b[i][0], b[j][0]))
            ih = max(0.0, min(b[i][3], b[j][3]) - max(b[i][1], b[j][1]))
            inter = iw * ih
            ai = (b[i][2] - b[i][0]) * (b[i][3] - b[i][1])
            aj = (b[j][2] - b[j][0]) * (b[j][3] - b[j][1])
            if inter / (ai + aj - inter) > thr:
                ok = False
                break
        if ok:
            keep.append(i)
    return keep


def random_boxes(n, size, gen):
    xy = torch.rand(n, 2, generator=gen) * size
    wh = torch.rand(n, 2, generator=gen) * size / 2 + 1
    boxes = torch.cat([xy, xy + wh], dim=1)
    return boxes.clamp(0, size)  # some boxes end exactly at the image border


@pytest.mark.parametrize("seed,n,thr", [(0, 50, 0.5), (1, 200, 0.3), (2, 10, 0.7), (3, 120, 0.0)])
def test_nms_matches_brute_force(seed, n, thr):
    gen = torch.Generator().manual_seed(seed)
    boxes = random_boxes(n, 64.0, gen)
    scores = torch.rand(n, generator=gen)
    assert nms(boxes, scores, thr).tolist() == brute_force_nms(boxes, scores, thr)


def test_nms_ties_and_empty():
    boxes = torch.tensor([[0, 0, 10, 10], [0, 0, 10, 10], [20, 20, 30, 30], [0, 0, 10, 10.0]])
    scores = torch.tensor([0.5, 0.5, 0.5, 0.9])
    kept = nms(boxes, scores, 0.5).tolist()
    assert kept == brute_force_nms(boxes, scores, 0.5) == [3, 2]
    empty = nms(torch.zeros((0, 4)), torch.zeros((0,)), 0.5)
    assert empty.shape == (0,) and empty.dtype == torch.int64


def test_batched_nms_keeps_boxes_of_other_classes():
    boxes = torch.tensor([[0, 0, 10, 10], [1, 1, 10, 10.0]])
    scores = torch.tensor([0.9, 0.8])
    same = torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 0]), 0.5)
    different = torchvision.ops.batched_nms(boxes, scores, torch.tensor([0, 1]), 0.5)
    assert same.tolist() == [0] and sorted(different.tolist()) == [0, 1]


def bilinear(feat, y, x):
    """Bilinear sample of an (H, W) map at (y, x); zero outside [-1, H] x [-1, W] as torchvision."""
    h, w = feat.shape
    if y < -1.0 or y > h or x < -1.0 or x > w:
        return 0.0
    y, x = max(y, 0.0), max(x, 0.0)
    y0, x0 = int(y), int(x)
    if y0 >= h - 1:
        y0 = y1 = h - 1
        y = float(y0)
    else:
        y1 = y0 + 1
    if x0 >= w - 1:
        x0 = x1 = w - 1
        x = float(x0)
    else:
        x1 = x0 + 1
    ly, lx = y - y0, x - x0
    hy, hx = 1 - ly, 1 - lx
    return (
        hy * hx * feat[y0, x0]
        + hy * lx * feat[y0, x1]
        + ly * hx * feat[y1, x0]
        + ly * lx * feat[y1, x1]
    )


def brute_force_roi_align(feats, rois, scale, out_h, out_w, ratio, aligned):
    feats = feats.double().numpy()
    out = np.zeros((len(rois), feats.shape[1], out_h, out_w))
    off = 0.5 if aligned else 0.0
    for k, (b, x1, y1, x2, y2) in enumerate(rois.double().tolist()):
        x1, y1, x2, y2 = x1 * scale - off, y1 * scale - off, x2 * scale - off, y2 * scale - off
        rw, rh = x2 - x1, y2 - y1
        if not aligned:
            rw, rh = max(rw, 1.0), max(rh, 1.0)
        bw, bh = rw / out_w, rh / out_h
        gh = ratio if ratio > 0 else int(np.ceil(rh / out_h))
        gw = ratio if ratio > 0 else int(np.ceil(rw / out_w))
        count = max(gh * gw, 1)
        for c, ph, pw in itertools.product(range(feats.shape[1]), range(out_h), range(out_w)):
            acc = 0.0
            for iy, ix in itertools.product(range(gh), range(gw)):
                y = y1 + ph * bh + (iy + 0.5) * bh / gh
                x = x1 + pw * bw + (ix + 0.5) * bw / gw
                acc += bilinear(feats[int(b), c], y, x)
            out[k, c, ph, pw] = acc / count
    return torch.from_numpy(out)


@pytest.mark.parametrize("aligned,ratio,scale", [(True, 2, 1.0), (False, 2, 0.5), (True, 0, 0.25)])
def test_roi_align_matches_brute_force(aligned, ratio, scale):
    gen = torch.Generator().manual_seed(7)
    feats = torch.randn(3, 2, 9, 11, generator=gen)
    size = torch.tensor([11.0, 9.0]) / scale
    rois = torch.tensor(
        [
            [0, 0.0, 0.0, size[0], size[1]],  # whole image, touching both borders
            [2, 3.5, 2.0, 9.0, 7.5],
            [1, -2.0, -1.0, 4.0, 3.0],  # partly outside the image
            [2, 5.0, 5.0, 5.0, 5.0],  # degenerate
        ]
    )
    ours = roi_align(feats, rois, (3, 4), scale, ratio, aligned)
    ref = brute_force_roi_align(feats, rois, scale, 3, 4, ratio, aligned)
    torch.testing.assert_close(ours.double(), ref, atol=1e-5, rtol=1e-5)
    op = torch.ops.torchvision.roi_align(feats, rois, scale, 3, 4, ratio, aligned)
    torch.testing.assert_close(op, ours)


def test_roi_align_has_gradients_and_empty_rois():
    feats = torch.randn(1, 2, 6, 6, requires_grad=True)
    out = roi_align(feats, torch.tensor([[0, 1.0, 1.0, 4.0, 4.0]]), (2, 2), 1.0, 2, True)
    out.sum().backward()
    assert feats.grad is not None and feats.grad.abs().sum() > 0
    empty = roi_align(feats.detach(), torch.zeros((0, 5)), (2, 2), 1.0, 2, True)
    assert empty.shape == (0, 2, 2, 2)


def test_compat_patches_only_what_is_missing():
    """The torchvision fallback is active exactly when the native library fails to load."""
    import subprocess
    import sys

    from d2_detr import compat

    probe = (
        "import glob, importlib.util, os, torch\n"
        "folder = os.path.dirname(importlib.util.find_spec('torchvision').origin)\n"
        "try:\n"
        "    torch.ops.load_library(glob.glob(os.path.join(folder, '_C*.so'))[0])\n"
        "    print('native')\n"
        "except (OSError, RuntimeError):\n"
        "    print('missing')\n"
    )
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, timeout=120)
    native = out.stdout.strip() == "native"
    patched = any("torchvision::nms" in name for name in compat.APPLIED)
    assert out.stdout.strip() in ("native", "missing"), out.stderr
    assert patched == (not native)
    assert all(hasattr(np, n) for n in ("int", "float", "bool"))
