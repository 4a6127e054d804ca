"""
Prepared GPU check (needs CUDA; NOT run yet: no GPU was lent where this was written).

1. ``tools/train_net.py --num-gpus 1`` for 20 iterations of the R50 concrete config on CUDA
   (synthetic 256x320 images from ``benchmarks/bench_distributed.py``'s writer);
2. the NCCL path of ``d2_detr.engine.launch``: one spawned worker, ``init_process_group("nccl")``,
   ``torch.cuda.set_device``, a DDP model from ``create_ddp_model`` (``device_ids`` = the local
   GPU), 3 training steps and an all-reduce;
3. inference FPS of DETR R50 panoptic (COCO config, 133 classes, random weights) at 800x1066,
   batch 1, after warm-up (DETR reports 28 FPS for R50 detection on a V100).

    python -m benchmarks.gpu_check [--fps-iters 50]

Writes output/benchmarks/gpu_check.json and prints one line per check.
"""

import argparse
import os
import re
import subprocess
import sys
import time
from datetime import timedelta

import torch

from benchmarks.bench_distributed import write_dataset
from benchmarks.common import OUTPUT_DIR, write_result

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def check_train_net(iters=20):
    data_root = os.path.join(OUTPUT_DIR, "dist_data")
    folder = os.path.join(data_root, "synthetic_concrete")
    if not os.path.exists(os.path.join(folder, "annotations", "panoptic_train.json")):
        write_dataset(folder, "train", 16)
    out = os.path.join(OUTPUT_DIR, "gpu_train_net")
    cmd = [
        sys.executable, os.path.join(ROOT, "tools", "train_net.py"), "--num-gpus", "1",
        "--config-file", os.path.join(ROOT, "configs/ConcreteDefects/detr_R_50_panoptic.yaml"),
        "MODEL.DEVICE", "cuda", "MODEL.WEIGHTS", "",
        "DATASETS.TRAIN", "('synthetic_concrete_train_panoptic',)", "DATASETS.TEST", "()",
        "SOLVER.IMS_PER_BATCH", "2", "SOLVER.MAX_ITER", str(iters),
        "SOLVER.CHECKPOINT_PERIOD", "100000", "TEST.EVAL_PERIOD", "0", "OUTPUT_DIR", out,
    ]  # fmt: skip
    env = dict(os.environ, DETECTRON2_DATASETS=data_root)
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True)
    ok = proc.returncode == 0
    speed = re.search(r"Overall training speed: .*\(([\d.]+) s / it\)", proc.stdout + proc.stderr)
    return {"ok": ok, "s_per_it": float(speed.group(1)) if speed else None,
            "tail": "" if ok else (proc.stdout + proc.stderr)[-2000:]}  # fmt: skip


def _nccl_steps(result_path):
    from detectron2.utils import comm

    from d2_detr.engine.launch import create_ddp_model

    assert torch.distributed.get_backend() == "nccl"
    model = create_ddp_model(torch.nn.Linear(8, 2).cuda())
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    for _ in range(3):
        loss = model(torch.randn(4, 8, device="cuda")).square().mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    t = torch.ones(1, device="cuda")
    torch.distributed.all_reduce(t)
    with open(result_path, "w") as f:
        f.write(f"{comm.get_world_size()} {float(t)} {float(loss)}")


def check_nccl():
    from d2_detr.engine import launch as d2_launch

    path = os.path.join(OUTPUT_DIR, "gpu_nccl.txt")
    port = d2_launch._find_free_port()
    torch.multiprocessing.spawn(
        d2_launch._distributed_worker,
        nprocs=1,
        args=(_nccl_steps, 1, 1, 0, f"tcp://127.0.0.1:{port}", (path,), timedelta(minutes=5)),
    )
    with open(path) as f:
        world, reduced, loss = f.read().split()
    return {"ok": world == "1" and float(reduced) == 1.0, "final_loss": float(loss)}


def check_fps(iters):
    from detectron2.config import get_cfg
    from detectron2.modeling import build_model

    import d2_detr

    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(
        os.path.join(ROOT, "configs/COCO-PanopticSegmentation/detr_R_50_panoptic.yaml")
    )
    cfg.MODEL.DEVICE = "cuda"
    cfg.MODEL.WEIGHTS = ""
    model = build_model(cfg).eval()
    image = torch.randint(0, 256, (3, 800, 1066), dtype=torch.uint8)
    inputs = [{"image": image, "height": 800, "width": 1066}]
    with torch.no_grad():
        for _ in range(5):
            model(inputs)
        torch.cuda.synchronize()
        start = time.perf_counter()
        for _ in range(iters):
            model(inputs)
        torch.cuda.synchronize()
    return {"fps": iters / (time.perf_counter() - start), "size": [800, 1066], "iters": iters,
            "gpu": torch.cuda.get_device_name(0)}  # fmt: skip


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--fps-iters", type=int, default=50)
    args = parser.parse_args(argv)
    if not torch.cuda.is_available():
        sys.exit("gpu_check: CUDA is not available (this check needs a GPU)")
    results = {}
    for name, fn in (("train_net_1gpu", check_train_net), ("nccl", check_nccl),
                     ("inference_fps", lambda: check_fps(args.fps_iters))):  # fmt: skip
        try:
            results[name] = fn()
        except Exception as e:  # report every check, whatever fails
            results[name] = {"ok": False, "error": repr(e)}
        print(name, results[name], flush=True)
    print("wrote", write_result("gpu_check", results))


if __name__ == "__main__":
    main()
