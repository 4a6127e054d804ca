#!/usr/bin/env python
"""
Train or evaluate DETR panoptic with Detectron2.

    python tools/train_net.py --config-file configs/ConcreteDefects/detr_tiny_cpu.yaml \
        OUTPUT_DIR output/tiny
    python tools/train_net.py --config-file CFG --resume            # continue after a kill
    python tools/train_net.py --config-file CFG --eval-only MODEL.WEIGHTS output/x/model_final.pth

Several processes: ``--num-gpus N`` (one per GPU, or N CPU processes with gloo),
``--num-machines M --machine-rank K --dist-url tcp://HOST:PORT``, or started by ``torchrun``.
Bad input (config file, keys, datasets, weights, OUTPUT_DIR) ends with a message naming it and
exit code 2, checked before the model is built; ``--debug`` or ``D2_DETR_DEBUG=1`` shows the
traceback.
"""

import d2_detr  # noqa: F401  # isort: split  (compat patches before detectron2 imports)

import logging

from detectron2.engine import default_argument_parser, default_setup
from detectron2.evaluation import verify_results
from detectron2.utils import comm

from d2_detr.engine import DETRCheckpointer, DETRTrainer
from d2_detr.engine.launch import add_launch_arguments, launch_from_args
from d2_detr.engine.setup import (
    check_datasets,
    check_num_classes,
    check_output_dir,
    check_sampler,
    check_weights_fit,
    check_weights_path,
    load_config,
)
from d2_detr.utils.cli import UserError, run_cli


def setup(args):
    """Config from Detectron2's defaults + d2-detr's keys + the file + command-line opts, with
    every user input checked before anything is built or written."""
    cfg = load_config(args.config_file, args.opts)
    cfg.freeze()
    check_output_dir(cfg.OUTPUT_DIR)
    splits = ("TEST",) if args.eval_only else ("TRAIN", "TEST")
    check_datasets(cfg, splits)
    check_num_classes(cfg, splits)
    if not args.eval_only:
        check_sampler(cfg)
    if args.eval_only and not cfg.MODEL.WEIGHTS:
        raise UserError(
            "--eval-only needs weights to evaluate",
            "add MODEL.WEIGHTS path/to/model_final.pth after the options",
        )
    # the weights are read once here, so that a bad file is reported before OUTPUT_DIR is
    # written to (default_setup writes config.yaml and the log there)
    checkpointer = DETRCheckpointer(None, save_dir=cfg.OUTPUT_DIR)
    partial = None
    if args.resume and checkpointer.has_checkpoint():
        checkpointer.check_resume_file()
    elif cfg.MODEL.WEIGHTS and "://" not in cfg.MODEL.WEIGHTS:
        check_weights_path(cfg.MODEL.WEIGHTS)
        # another model's checkpoint: a message, not a warning per tensor and a random model
        data = checkpointer._load_file(cfg.MODEL.WEIGHTS)
        partial = check_weights_fit(cfg, data, cfg.MODEL.WEIGHTS, eval_only=args.eval_only)
        del data
    default_setup(cfg, args)
    if partial:  # training from a partial fit: one line instead of fvcore's line per tensor
        logging.getLogger("fvcore.common.checkpoint").addFilter(_ShapeSkipFilter())
        logging.getLogger("detectron2").warning(partial)
    return cfg


class _ShapeSkipFilter(logging.Filter):
    """Drops fvcore's line per skipped tensor and its lists of missing / unused names (the
    summary of ``check_weights_fit`` says it once)."""

    PREFIXES = (
        "Skip loading parameter",
        "Some model parameters or buffers are not found",
        "The checkpoint state_dict contains keys that are not used",
    )

    def filter(self, record):
        return not record.getMessage().startswith(self.PREFIXES)


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
        model = DETRTrainer.build_model(cfg)
        DETRCheckpointer(model, save_dir=cfg.OUTPUT_DIR).resume_or_load(
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


def worker_main(args):
    """``main`` with the user-error path, as run inside every launched process."""
    return run_cli(main, args)


def parse_args(argv=None):
    parser = add_launch_arguments(default_argument_parser())
    parser.add_argument("--debug", action="store_true", help="show tracebacks of user errors")
    return parser.parse_args(argv)


if __name__ == "__main__":
    args = parse_args()
    print("Command Line Args:", args)
    # d2_detr's launch: gloo on CPU / NCCL on GPU, torchrun, launch arguments checked
    run_cli(launch_from_args, worker_main, args)
