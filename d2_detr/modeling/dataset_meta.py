"""What the model needs from the datasets' metadata: which classes are things, and the class
priority of the converter (for splitting thing segments into connected components)."""

import logging

from detectron2.data import MetadataCatalog

__all__ = ["dataset_classes", "class_priority"]

logger = logging.getLogger(__name__)


def dataset_classes(cfg):
    """
    Contiguous class ids that are things, and the number of classes, from the metadata of
    ``DATASETS.TEST[0]`` (or ``TRAIN[0]``); every listed dataset with metadata must agree with
    ``MODEL.DETR.NUM_CLASSES``. Without metadata, ``MODEL.DETR.THING_CLASSES`` is used (empty: all
    classes are things).
    """
    num_classes = cfg.MODEL.DETR.NUM_CLASSES
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    thing_ids = None
    for name in names:
        meta = MetadataCatalog.get(name)
        thing_map = meta.get("thing_dataset_id_to_contiguous_id")
        if thing_map is None:
            continue
        if meta.get("stuff_dataset_id_to_contiguous_id") is not None:
            found = len(meta.get("stuff_classes", []))  # panoptic: stuff_classes lists all
        else:
            found = len(meta.get("thing_classes", []))
        if found != num_classes:
            raise ValueError(
                f"MODEL.DETR.NUM_CLASSES is {num_classes} but dataset '{name}' has {found} "
                "classes (things + stuff in one contiguous id space): set MODEL.DETR.NUM_CLASSES "
                f"to {found}"
            )
        if thing_ids is None:
            thing_ids = set(thing_map.values())
    if thing_ids is None:
        thing_ids = set(cfg.MODEL.DETR.THING_CLASSES) or set(range(num_classes))
        logger.info(f"No dataset metadata found for {names}: thing classes {sorted(thing_ids)}")
    bad = [c for c in thing_ids if not 0 <= c < num_classes]
    if bad:
        raise ValueError(f"thing class ids {bad} are outside [0, {num_classes})")
    return thing_ids


def _default_priority_names():
    """The converter's default ``--class-priority`` (class names), wherever the data package
    keeps it; None if it has none."""
    from d2_detr.data import categories

    names = getattr(categories, "DEFAULT_CLASS_PRIORITY", None)
    if names is None:
        try:
            from d2_detr.data.conversion import DEFAULT_CLASS_PRIORITY as names
        except ImportError:
            return None
    return tuple(names)


def class_priority(cfg, thing_ids):
    """
    Contiguous thing ids, highest priority first, for ``split_into_components``: the
    ``class_priority`` of the first dataset of ``DATASETS.TEST`` + ``TRAIN`` whose metadata has
    one (the converter's ``--class-priority``, one source of truth). Without it, the converter's
    default priority, by class name (the metadata's class names, else the concrete categories).
    """
    names = list(cfg.DATASETS.TEST) + list(cfg.DATASETS.TRAIN)
    class_names = None
    for name in names:
        meta = MetadataCatalog.get(name)
        priority = meta.get("class_priority")
        if priority is not None:
            bad = [c for c in priority if c not in thing_ids]
            if bad:
                raise ValueError(
                    f"class_priority {list(priority)} of dataset '{name}' lists {bad}, which are "
                    f"not thing classes {sorted(thing_ids)}"
                )
            return tuple(int(c) for c in priority)
        if class_names is None:
            class_names = meta.get("stuff_classes") or meta.get("thing_classes")
    default = _default_priority_names()
    if default is None:
        logger.warning("No class priority found: thing segments are split by their own pixels")
        return ()
    if class_names is None:
        from d2_detr.data.categories import THING_NAMES as class_names
    index = {n: i for i, n in enumerate(class_names)}
    priority = tuple(index[n] for n in default if n in index and index[n] in thing_ids)
    logger.info(f"No class_priority in the metadata of {names}: the converter's default {priority}")
    return priority
