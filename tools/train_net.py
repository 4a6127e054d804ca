#!/usr/bin/env python
"""
Train or evaluate DETR panoptic with Detectron2.

    python tools/train_net.py --config-file configs/ConcreteDefects/detr_tiny_cpu.yaml \
        OUTPUT_DIR output/tiny
    python tools/train_net.py --config-file CFG --resume            # continue after a kill
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/x/model_final.pth

Multi-GPU: ``--num-gpus N`` (Detectron2's ``launch``); on CPU only one process is possible.
"""

import d2_detr  # isort: split  (d2_detr.compat patches before detectron2 imports)

from detectron2.checkpoint import DetectionCheckpointer
from detectron2.config import get_cfg
from detectron2.engine import default_argument_parser, default_setup, launch
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from d2_detr.engine import DETRTrainer


def setup(args):
    """Config from Detectron2's defaults + d2-detr's keys + the file + command-line opts."""
    cfg = get_cfg()
    d2_detr.add_detr_config(cfg)
    cfg.merge_from_file(args.config_file)
    cfg.merge_from_list(args.opts)
    cfg.freeze()
    default_setup(cfg, args)
    return cfg


def format_pq(cfg, results):
    """One line per test dataset with PQ/SQ/RQ (all, things, stuff) from evaluation results."""
    names = list(cfg.DATASETS.TEST)
    per_dataset = results if len(names) > 1 else {names[0]: results}
    lines = []
    for name, res in per_dataset.items():
        pan = res.get("panoptic_seg")
        if pan:
            lines.append(
                f"{name}: PQ {pan['PQ']:.1f}  SQ {pan['SQ']:.1f}  RQ {pan['RQ']:.1f}  "
                f"PQ_th {pan['PQ_th']:.1f}  PQ_st {pan['PQ_st']:.1f}"
            )
    return "\n".join(lines)


def main(args):
    cfg = setup(args)
    if args.eval_only:
        if not cfg.MODEL.WEIGHTS:
            raise SystemExit("--eval-only needs MODEL.WEIGHTS path/to/model.pth")
        model = DETRTrainer.build_model(cfg)
        DetectionCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
            cfg.MODEL.WEIGHTS, resume=args.resume
        )
        results = DETRTrainer.test(cfg, model)
        if comm.is_main_process():
            verify_results(cfg, results)
            summary = format_pq(cfg, results)
            if summary:
                print("Panoptic quality:\n" + summary, flush=True)
        return results

    trainer = DETRTrainer(cfg)
    trainer.resume_or_load(resume=args.resume)
    results = trainer.train()
    if results and comm.is_main_process():
        summary = format_pq(cfg, results)
        if summary:
            print("Panoptic quality:\n" + summary, flush=True)
    return results


if __name__ == "__main__":
    args = default_argument_parser().parse_args()
    print("Command Line Args:", args)
    launch(
        main,
        args.num_gpus,
        num_machines=args.num_machines,
        machine_rank=args.machine_rank,
        dist_url=args.dist_url,
        args=(args,),
    )
