"""Categories of the concrete-defect datasets (ids kept from the earlier attempt's files)."""

__all__ = ["CONCRETE_DEFECT_CATEGORIES", "THING_NAMES", "BACKGROUND_ID"]

#: COCO-panoptic categories: 1 rebar, 2 spall, 3 crack (things), 4 background (stuff).
CONCRETE_DEFECT_CATEGORIES = [
    {"id": 1, "name": "rebar", "isthing": 1, "color": [230, 120, 20], "supercategory": "defect"},
    {"id": 2, "name": "spall", "isthing": 1, "color": [40, 110, 230], "supercategory": "defect"},
    {"id": 3, "name": "crack", "isthing": 1, "color": [220, 20, 60], "supercategory": "defect"},
    {
        "id": 4,
        "name": "background",
        "isthing": 0,
        "color": [140, 140, 140],
        "supercategory": "background",
    },
]

#: Thing class names in category-id order.
THING_NAMES = tuple(c["name"] for c in CONCRETE_DEFECT_CATEGORIES if c["isthing"])

#: Category id of the stuff class that takes every pixel no defect claims.
BACKGROUND_ID = 4
