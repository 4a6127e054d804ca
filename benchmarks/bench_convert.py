#!/usr/bin/env python
"""Converter speed on 1008x754 images (the real data's most common size).

Draws a few synthetic 1008x754 images with JPEG masks (like the real data: one defect class per
image except every 30th, about 10 % without defect), replicates them under distinct stems to
``--num`` images (byte-identical copies, which the converter keeps in one split), then times
``convert_concrete_dataset`` (including its validation pass) with 1 and with all workers,
interleaved. Prints a markdown table (wall-clock images/s and CPU ms per image, the latter
independent of other processes sharing the cores) and writes
``output/benchmarks/bench_convert.json``. Target: >= 50 images/s on 2 cores, i.e. at most
about 40 CPU ms per image.

Second table: does the hand-written panoptic PNG encoder matter? CPU ms per image to encode the
converted id maps with ``encode_panoptic_png`` (filter None, zlib level 1) vs OpenCV's
``imencode`` (libpng, default level 3 and level 1) and Pillow (default level 6 and level 1), min
over ``--runs``, and each as a share of the converter's CPU ms per image.

    python -m benchmarks.bench_convert [--num 240] [--runs 3]   (or python benchmarks/...py)
"""

import argparse
import io
import os
import resource
import shutil
import sys
import tempfile
import time

import cv2
import numpy as np
from PIL import Image

import d2_detr  # noqa: F401
from d2_detr.data.conversion import convert_concrete_dataset
from d2_detr.data.panoptic_format import encode_panoptic_png, id2rgb, read_panoptic_png

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
from benchmarks.common import (  # noqa: E402
    interleaved_timing,
    load_synthetic,
    markdown_table,
    write_result,
)

SIZE = (1008, 754)


def cpu_seconds():
    """CPU time of this process and its reaped children (pool workers), user + system."""
    own = resource.getrusage(resource.RUSAGE_SELF)
    kids = resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def make_raw(folder, num, distinct, seed=0):
    """Raw layout with ``num`` images, ``distinct`` different drawings; returns masks written."""
    os.makedirs(os.path.join(folder, "images"))
    os.makedirs(os.path.join(folder, "masks"))
    n_masks = 0
    for i in range(num):
        stem = f"{i:05d}"
        if i < distinct:
            rng = np.random.default_rng([seed, i])
            img, masks = load_synthetic().draw_synthetic_sample(rng, SIZE, 0.1)
            if masks and i % 30:  # like the real data: 97 % of the images hold one class
                keep = sorted(masks)[int(rng.integers(len(masks)))]
                masks = {keep: masks[keep]}
            Image.fromarray(img).save(os.path.join(folder, "images", stem + ".jpg"), quality=92)
            for cls, m in masks.items():
                path = os.path.join(folder, "masks", f"{stem}{cls}.jpg")
                Image.fromarray(m.astype(np.uint8) * 255).save(path, quality=90)
        else:
            src = f"{i % distinct:05d}"
            shutil.copyfile(
                os.path.join(folder, "images", src + ".jpg"),
                os.path.join(folder, "images", stem + ".jpg"),
            )
            for name in os.listdir(os.path.join(folder, "masks")):
                if name.startswith(src) and len(name) > len(src) and not name[len(src)].isdigit():
                    shutil.copyfile(
                        os.path.join(folder, "masks", name),
                        os.path.join(folder, "masks", stem + name[len(src) :]),
                    )
        n_masks = len(os.listdir(os.path.join(folder, "masks")))
    return n_masks


def _pil_png(id_map, level):
    buf = io.BytesIO()
    Image.fromarray(id2rgb(id_map)).save(buf, format="PNG", compress_level=level)
    return buf.getvalue()


PNG_ENCODERS = {
    "encode_panoptic_png (own, level 1)": encode_panoptic_png,
    "cv2.imencode (libpng, level 3 default)": lambda m: cv2.imencode(
        ".png", np.ascontiguousarray(id2rgb(m)[:, :, ::-1])
    )[1],
    "cv2.imencode (libpng, level 1)": lambda m: cv2.imencode(
        ".png", np.ascontiguousarray(id2rgb(m)[:, :, ::-1]), [cv2.IMWRITE_PNG_COMPRESSION, 1]
    )[1],
    "Pillow (level 6 default)": lambda m: _pil_png(m, 6),
    "Pillow (level 1)": lambda m: _pil_png(m, 1),
}


def png_encoder_costs(id_maps, runs):
    """CPU ms per id map and mean bytes of each PNG encoder (min CPU over ``runs``)."""
    out = {}
    for name, encode in PNG_ENCODERS.items():
        best, size = float("inf"), 0
        for _ in range(runs):
            start = time.process_time()
            size = sum(len(encode(m)) for m in id_maps)
            best = min(best, time.process_time() - start)
        out[name] = {"cpu_ms": 1000 * best / len(id_maps), "bytes": size / len(id_maps)}
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--num", type=int, default=240)
    p.add_argument("--distinct", type=int, default=24)
    p.add_argument("--runs", type=int, default=3)
    args = p.parse_args(argv)
    cores = os.cpu_count() or 1
    work = tempfile.mkdtemp(prefix="bench_convert_")
    try:
        raw = os.path.join(work, "raw")
        n_masks = make_raw(raw, args.num, args.distinct)
        worker_counts = sorted({1, cores})
        candidates = {
            f"workers={w}": (
                lambda w=w: convert_concrete_dataset(
                    raw, os.path.join(work, f"out{w}"), workers=w, overwrite=True, progress=False
                )
            )
            for w in worker_counts
        }
        cpu = {name: [] for name in candidates}

        def with_cpu(name, fn):
            def run():
                before = cpu_seconds()
                fn()
                cpu[name].append(cpu_seconds() - before)

            return run

        timed = {name: with_cpu(name, fn) for name, fn in candidates.items()}
        load_before = os.getloadavg()[0]
        timing = interleaved_timing(timed, runs=args.runs, warmup=0)
        load_after = os.getloadavg()[0]
        pan = os.path.join(work, "out1", "panoptic_train")
        id_maps = [read_panoptic_png(os.path.join(pan, n))[0] for n in sorted(os.listdir(pan))]
        id_maps = id_maps[: args.distinct]
        png_costs = png_encoder_costs(id_maps, args.runs)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    rows, results = [], {}
    for name, t in timing.items():
        ips = args.num / t["median_s"]
        cpu_ms = 1000 * min(cpu[name]) / args.num
        results[name] = dict(t, images_per_s=ips, cpu_ms_per_image=cpu_ms)
        rows.append([name, f"{t['median_s']:.2f}", f"{ips:.1f}", f"{cpu_ms:.1f}"])
    print(f"convert_concrete_dataset, {args.num} images {SIZE[0]}x{SIZE[1]}, {n_masks} JPEG masks")
    print(f"load average before/after: {load_before:.1f} / {load_after:.1f} on {cores} cores")
    print(markdown_table(["run", "median s", "images/s", "CPU ms / image"], rows))
    convert_ms = results["workers=1"]["cpu_ms_per_image"]
    png_rows = [
        [name, f"{c['cpu_ms']:.2f}", f"{100 * c['cpu_ms'] / convert_ms:.1f} %", f"{c['bytes']:.0f}"]
        for name, c in png_costs.items()
    ]
    print(f"\npanoptic PNG encoding of {len(id_maps)} converted id maps ({SIZE[0]}x{SIZE[1]})")
    print(markdown_table(["encoder", "CPU ms / image", "of convert CPU", "bytes"], png_rows))
    path = write_result(
        "bench_convert",
        {
            "num_images": args.num,
            "size": SIZE,
            "num_masks": n_masks,
            "load_average": [load_before, load_after],
            "results": results,
            "png_encoders": png_costs,
        },
    )
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
