"""Catalog entries of the concrete-defect datasets (run on import of ``d2_detr``).

Registers ``concrete_defects_{train,val,test}_panoptic`` from
``$DETECTRON2_DATASETS/concrete_defects`` and ``synthetic_concrete_{train,val,test}_panoptic``
from ``$DETECTRON2_DATASETS/synthetic_concrete`` (default ``$DETECTRON2_DATASETS`` =
``./datasets``, as Detectron2 does), in the layout written by
``datasets/prepare_concrete_defects.py``.

Why every split is registered even when its files are missing: registration runs when the
package is imported, but a dataset is often generated later in the same process (tests, demo,
a first training run). So the names always exist, and "only splits whose files exist" is
enforced when a dataset is loaded: ``DatasetCatalog.get`` of a missing split raises
``FileNotFoundError`` naming the missing files and the commands that create them. Use
:func:`register_concrete_defects` to point the names at another root (re-registration is fine).

Class priority, one source of truth: the converter's ``--class-priority`` is stored in
``ROOT/conversion_summary.json`` (``settings.class_priority``); registration puts it into
``MetadataCatalog.get(name).class_priority`` as CONTIGUOUS thing ids, highest priority first
(the converter's default, crack > rebar > spall, when the dataset does not exist yet or says
nothing). For a dataset converted after registration in the same process, call
:func:`register_concrete_defects` again.
"""

import json
import logging
import os

from ..categories import CONCRETE_DEFECT_CATEGORIES
from ..conversion.settings import DEFAULT_CLASS_PRIORITY
from .register_panoptic import register_panoptic_dataset

__all__ = [
    "SPLITS",
    "dataset_class_priority",
    "register_concrete_defects",
    "register_all_concrete_defects",
]

SPLITS = ("train", "val", "test")

_HINTS = {
    "synthetic_concrete": (
        "Create it with:\n"
        "  python datasets/make_synthetic_concrete.py --out output/synthetic_concrete_raw "
        "--num 400\n"
        "  python datasets/prepare_concrete_defects.py --raw output/synthetic_concrete_raw "
        "--out {root}{test}"
    ),
    "concrete_defects": (
        "Create it from the raw dataset (RAW/images, RAW/masks) with:\n"
        "  python datasets/prepare_concrete_defects.py --raw RAW --out {root}{test}\n"
        "(a 2-image sample of the raw layout is in datasets/concrete_defects_sample)"
    ),
}


def dataset_class_priority(root):
    """Class names, highest priority first, the dataset at ``root`` was converted with.

    Read from ``root/conversion_summary.json``; the converter's default when the file is absent,
    unreadable or holds no valid priority (a warning says which).
    """
    path = os.path.join(os.fspath(root), "conversion_summary.json")
    if not os.path.isfile(path):
        return list(DEFAULT_CLASS_PRIORITY)
    try:
        with open(path, encoding="utf-8") as f:
            names = json.load(f)["settings"]["class_priority"]
        if sorted(names) != sorted(DEFAULT_CLASS_PRIORITY):
            raise ValueError(f"not a permutation of {list(DEFAULT_CLASS_PRIORITY)}: {names}")
    except (OSError, ValueError, KeyError, TypeError) as e:
        logging.getLogger(__name__).warning(
            "%s: no valid settings.class_priority (%s); using the default %s",
            path,
            e,
            list(DEFAULT_CLASS_PRIORITY),
        )
        return list(DEFAULT_CLASS_PRIORITY)
    return list(names)


def register_concrete_defects(root, name_prefix="concrete_defects", splits=SPLITS):
    """(Re-)register ``{name_prefix}_{split}_panoptic`` for a converted dataset at ``root``.

    Returns:
        list of the registered names.
    """
    root = os.fspath(root)
    hint = _HINTS.get(name_prefix, _HINTS["concrete_defects"])
    priority = dataset_class_priority(root)
    names = []
    for split in splits:
        ann = os.path.join(root, "annotations")
        test = " --test-fraction 0.1" if split == "test" else ""
        names.append(
            register_panoptic_dataset(
                f"{name_prefix}_{split}_panoptic",
                CONCRETE_DEFECT_CATEGORIES,
                image_root=os.path.join(root, split),
                panoptic_root=os.path.join(root, f"panoptic_{split}"),
                panoptic_json=os.path.join(ann, f"panoptic_{split}.json"),
                instances_json=os.path.join(ann, f"instances_{split}.json"),
                missing_hint=hint.format(root=root, test=test),
                class_priority=priority,
            )
        )
    return names


def register_all_concrete_defects(root=None):
    """Register both datasets under ``root`` (default ``$DETECTRON2_DATASETS`` or ``datasets``)."""
    root = os.getenv("DETECTRON2_DATASETS", "datasets") if root is None else root
    names = register_concrete_defects(os.path.join(root, "concrete_defects"), "concrete_defects")
    names += register_concrete_defects(
        os.path.join(root, "synthetic_concrete"), "synthetic_concrete"
    )
    return names


register_all_concrete_defects()
