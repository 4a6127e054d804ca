"""
Helper script of tests/test_distributed.py: train or evaluate with DETRTrainer through
:func:`d2_detr.engine.launch.launch` on ``--procs`` CPU processes and write, from rank 0, what a
comparison needs as JSON: the loss of every iteration (Detectron2 logs the mean over ranks),
the image ids every rank saw at every step, and the evaluation results.

    python tests/dist_worker.py --procs 2 --out result.json [--eval [--weights W]] [--echo-eval] \
        --config-file CFG KEY VALUE ...

``MODEL.META_ARCHITECTURE _PanopticEcho`` is a stand-in model for evaluation tests: it answers
the ground truth with deterministic mistakes, so that PQ and AP are neither 0 nor 100.
"""

import d2_detr  # isort: split  (compat first)

import argparse
import os

import numpy as np
import torch
from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.data.detection_utils import read_image
from detectron2.engine import default_setup
from detectron2.modeling import META_ARCH_REGISTRY
from detectron2.structures import Boxes, Instances
from detectron2.utils import comm
from panopticapi.utils import rgb2id
from torch import nn

from d2_detr.engine import DETRTrainer
from d2_detr.engine.launch import launch
from d2_detr.utils.io import atomic_write_json


@META_ARCH_REGISTRY.register()
class _PanopticEcho(nn.Module):
    """
    Inference only: the ground-truth panoptic segmentation, minus the smallest thing segment of
    every image with an odd id (a missed detection), and its thing segments as instances scored
    by area, plus one false positive (a shifted box) per image.
    """

    def __init__(self, cfg):
        super().__init__()
        self.dummy = nn.Parameter(torch.zeros(1))

    def forward(self, batched_inputs):
        return [self._one(d) for d in batched_inputs]

    @staticmethod
    def _one(d):
        pan = rgb2id(read_image(d["pan_seg_file_name"], "RGB"))
        out = np.zeros(pan.shape, dtype=np.int32)
        things = sorted(
            (s for s in d["segments_info"] if s["isthing"]), key=lambda s: (s["area"], s["id"])
        )
        dropped = things[0]["id"] if things and d["image_id"] % 2 else None
        segments, boxes, scores, classes, masks = [], [], [], [], []
        for s in d["segments_info"]:
            mask = pan == s["id"]
            if s["id"] == dropped or not mask.any():
                continue
            out[mask] = len(segments) + 1
            segments.append(
                {"id": len(segments) + 1, "category_id": s["category_id"], "isthing": s["isthing"]}
            )
            if s["isthing"]:
                ys, xs = np.nonzero(mask)
                boxes.append([xs.min(), ys.min(), xs.max() + 1, ys.max() + 1])
                scores.append(0.5 + 0.4 * min(1.0, mask.sum() / 2000.0))
                classes.append(s["category_id"])
                masks.append(mask)
        h, w = pan.shape
        if boxes:  # a false positive: the first box moved by half its size, low score
            x0, y0, x1, y1 = boxes[0]
            dx, dy = (x1 - x0) // 2 + 1, (y1 - y0) // 2 + 1
            fp = np.zeros_like(masks[0])
            fp[min(h - 1, y0 + dy) : y1 + dy, min(w - 1, x0 + dx) : x1 + dx] = True
            boxes.append([x0 + dx, y0 + dy, x1 + dx, y1 + dy])
            scores.append(0.3)
            classes.append(classes[0])
            masks.append(fp)
        inst = Instances((h, w))
        inst.pred_boxes = Boxes(torch.tensor(np.array(boxes, dtype=np.float32).reshape(-1, 4)))
        inst.pred_boxes.clip((h, w))
        inst.scores = torch.tensor(scores, dtype=torch.float32)
        inst.pred_classes = torch.tensor(classes, dtype=torch.int64)
        inst.pred_masks = torch.from_numpy(np.array(masks, dtype=bool).reshape(-1, h, w))
        return {"panoptic_seg": (torch.from_numpy(out), segments), "instances": inst}


def _recording(iterator, seen):
    """Yield the batches of ``iterator`` and append each batch's image ids to ``seen``."""
    for batch in iterator:
        seen.append([d["image_id"] for d in batch])
        yield batch


def main(args):
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    out = {"world_size": comm.get_world_size()}
    if args.eval:
        model = DETRTrainer.build_model(cfg)
        if args.weights:
            DetectionCheckpointer(model).load(args.weights)
        out["results"] = DETRTrainer.test(cfg, model)
    else:
        trainer = DETRTrainer(cfg)
        trainer.resume_or_load(resume=False)
        seen = []
        trainer._trainer._data_loader_iter = _recording(trainer._trainer._data_loader_iter, seen)
        trainer.train()
        out["image_ids"] = comm.gather(seen)  # rank 0: [per rank [per step [ids]]]
        out["losses"] = {
            name: [value for value, _ in buf.values()]
            for name, buf in trainer.storage.histories().items()
            if name.startswith("loss") or name == "total_loss"
        }
    if args.echo_eval:  # evaluation of the stand-in model, same loader and evaluators
        echo = cfg.clone()
        echo.defrost()
        echo.MODEL.META_ARCHITECTURE = "_PanopticEcho"
        echo.OUTPUT_DIR = os.path.join(cfg.OUTPUT_DIR, "echo")
        echo.freeze()
        out["echo_results"] = DETRTrainer.test(echo, DETRTrainer.build_model(echo))
    if comm.is_main_process():
        atomic_write_json(args.out, out)


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--procs", type=int, default=1)
    parser.add_argument("--out", required=True)
    parser.add_argument("--config-file", required=True)
    parser.add_argument("--eval", action="store_true", help="evaluate instead of training")
    parser.add_argument("--weights", default="", help="weights to evaluate")
    parser.add_argument("--echo-eval", action="store_true", help="also evaluate _PanopticEcho")
    parser.add_argument("opts", nargs=argparse.REMAINDER)
    args = parser.parse_args()
    args.opts = [o for o in args.opts if o != "--"]
    args.eval_only = args.eval
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    launch(main, args.procs, dist_url="auto", args=(args,))
