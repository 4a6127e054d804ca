"""Register any COCO-panoptic dataset with Detectron2's catalogs (the register-your-own API)."""

import os

from detectron2.data import DatasetCatalog, MetadataCatalog
from detectron2.data.datasets.coco_panoptic import load_coco_panoptic_json, register_coco_panoptic

__all__ = [
    "class_priority_ids",
    "panoptic_metadata",
    "register_panoptic_dataset",
    "unregister_dataset",
]

_SET_BY_REGISTRATION = {
    "name",
    "panoptic_root",
    "image_root",
    "panoptic_json",
    "json_file",
    "evaluator_type",
    "ignore_label",
    "label_divisor",
}


def panoptic_metadata(categories):
    """Detectron2 panoptic metadata from COCO-panoptic categories.

    Contiguous ids follow Detectron2's convention for panoptic data: one id space, things first
    (in category-id order) then stuff, so ``thing_classes[i] == stuff_classes[i]`` for things;
    ``stuff_classes`` lists ALL classes (``Visualizer.draw_panoptic_seg`` labels with it).

    Args:
        categories: list of dicts with ``id``, ``name``, ``isthing`` and optional ``color``.
    Returns:
        dict with thing_classes, thing_colors, stuff_classes, stuff_colors,
        thing_dataset_id_to_contiguous_id, stuff_dataset_id_to_contiguous_id.
    """
    ordered = sorted(categories, key=lambda c: (not c["isthing"], c["id"]))
    things = [c for c in ordered if c["isthing"]]
    colors = [list(c.get("color", [128, 128, 128])) for c in ordered]
    return {
        "thing_classes": [c["name"] for c in things],
        "thing_colors": colors[: len(things)],
        "stuff_classes": [c["name"] for c in ordered],
        "stuff_colors": colors,
        "thing_dataset_id_to_contiguous_id": {c["id"]: i for i, c in enumerate(things)},
        "stuff_dataset_id_to_contiguous_id": {
            c["id"]: i for i, c in enumerate(ordered) if not c["isthing"]
        },
    }


def class_priority_ids(class_priority, metadata):
    """Thing class names (highest priority first) -> CONTIGUOUS thing ids, as the model uses.

    Args:
        class_priority: thing class names, e.g. ``("crack", "rebar", "spall")``.
        metadata: dict with ``thing_classes`` (see :func:`panoptic_metadata`).
    Raises:
        ValueError: a name that is not a thing class, or a name listed twice.
    """
    things = list(metadata["thing_classes"])
    unknown = [n for n in class_priority if n not in things]
    if unknown or len(set(class_priority)) != len(class_priority):
        raise ValueError(
            f"class_priority {list(class_priority)}: each entry must be one of the thing "
            f"classes {things}, at most once"
        )
    return [things.index(n) for n in class_priority]


def unregister_dataset(name):
    """Remove ``name`` from DatasetCatalog and MetadataCatalog (no error if absent)."""
    if name in DatasetCatalog.list():
        DatasetCatalog.remove(name)
    if name in MetadataCatalog.list():
        MetadataCatalog.remove(name)


def _load_checked(name, panoptic_json, image_root, panoptic_root, metadata, missing_hint):
    missing = [p for p in (panoptic_json, image_root, panoptic_root) if not os.path.exists(p)]
    if missing:
        hint = f"\n{missing_hint}" if missing_hint else ""
        raise FileNotFoundError(
            f"Dataset {name!r} is registered but its files are missing: {', '.join(missing)}" + hint
        )
    return load_coco_panoptic_json(panoptic_json, image_root, panoptic_root, metadata)


def register_panoptic_dataset(
    name,
    categories,
    image_root,
    panoptic_root,
    panoptic_json,
    instances_json=None,
    missing_hint=None,
    class_priority=None,
):
    """Register a COCO-panoptic dataset under ``name`` (re-registering replaces it).

    Uses Detectron2's ``register_coco_panoptic`` (the "standard", non-separated variant), so
    records carry ``file_name``, ``image_id``, ``pan_seg_file_name`` and ``segments_info`` (with
    contiguous ``category_id``, ``isthing``, ``iscrowd``, ``id``), and the metadata serves
    ``COCOPanopticEvaluator``, ``COCOEvaluator`` (``json_file = instances_json``) and the
    ``Visualizer``. The files need not exist yet: they are checked when the dataset is loaded
    (``DatasetCatalog.get``), which raises ``FileNotFoundError`` ending with ``missing_hint``.

    Args:
        categories: COCO-panoptic categories (see :func:`panoptic_metadata`), or a ready
            metadata dict with ``thing_dataset_id_to_contiguous_id`` and
            ``stuff_dataset_id_to_contiguous_id``.
        image_root: folder of ``<png stem>.jpg`` images (Detectron2 v0.6 assumes .jpg).
        panoptic_root, panoptic_json: PNG folder and panoptic json.
        instances_json: optional COCO instances json (for ``COCOEvaluator``).
        missing_hint: text telling the user how to create the files.
        class_priority: optional thing class names, highest priority first (which class keeps
            the pixels two classes claim); stored as ``metadata.class_priority``, a list of
            CONTIGUOUS thing ids (``[]`` when not given: no priority).
    """
    if isinstance(categories, dict):  # keys set by register_coco_panoptic itself are dropped
        metadata = {k: v for k, v in categories.items() if k not in _SET_BY_REGISTRATION}
    else:
        metadata = panoptic_metadata(categories)
    if class_priority is not None:
        metadata["class_priority"] = class_priority_ids(class_priority, metadata)
    metadata.setdefault("class_priority", [])
    unregister_dataset(name)
    register_coco_panoptic(name, metadata, image_root, panoptic_root, panoptic_json, instances_json)
    # Same loader as Detectron2's, behind a check that turns a missing dataset into a clear error.
    DatasetCatalog.remove(name)
    DatasetCatalog.register(
        name,
        lambda: _load_checked(
            name, panoptic_json, image_root, panoptic_root, metadata, missing_hint
        ),
    )
    return name
