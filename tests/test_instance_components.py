"""The instance output follows the dataset's instance definition (connected components) when
MODEL.DETR.TEST.COMPONENTS is on, as the panoptic output does."""

import d2_detr  # noqa: F401  (compat first)

# isort: split
import torch
from detectron2.structures import Boxes, Instances

from d2_detr.modeling.component_split import instance_components, split_instance_masks


def _instances(masks, scores, classes, boxes):
    inst = Instances(masks.shape[-2:])
    inst.pred_masks = masks
    inst.scores = torch.tensor(scores)
    inst.pred_classes = torch.tensor(classes)
    inst.pred_boxes = Boxes(torch.tensor(boxes, dtype=torch.float32))
    return inst


def test_split_instance_masks_parts_small_parts_and_overlap():
    masks = torch.zeros(3, 40, 60, dtype=torch.bool)
    masks[0, 2:10, 2:20] = True  # part A, 144 px
    masks[0, 20:30, 40:58] = True  # part B, 180 px (not touching A)
    masks[0, 35:37, 5:7] = True  # 4 px speck: dropped (<= min_area)
    masks[1, 0:40, 0:60] = True  # overlaps mask 0 entirely: one part of its own
    masks[2, 5:6, 5:6] = True  # nothing left after the speck rule
    source, parts, cores = split_instance_masks(masks, min_area=4)
    assert source.tolist() == [0, 0, 1]
    assert torch.equal(parts, cores)  # nothing merged: every part is its own component
    assert [int(p.sum()) for p in parts] == [144, 180, 2400]
    assert parts[0][2:10, 2:20].all() and not parts[0][20:30, 40:58].any()
    # a part under 0.2 of the largest stays with it: 20 px next to 180 px
    masks2 = torch.zeros(1, 40, 60, dtype=torch.bool)
    masks2[0, 20:30, 40:58] = True
    masks2[0, 2:4, 2:12] = True
    source, parts, cores = split_instance_masks(masks2, min_area=4, min_part_fraction=0.2)
    assert source.tolist() == [0] and int(parts[0].sum()) == 200
    assert int(cores[0].sum()) == 180 and not cores[0][2:4, 2:12].any()
    source, parts, _ = split_instance_masks(masks2, min_area=4, min_part_fraction=0.0)
    assert source.tolist() == [0, 0]


def test_instance_components_keep_score_class_and_take_tight_boxes():
    masks = torch.zeros(2, 40, 60, dtype=torch.bool)
    masks[0, 2:10, 2:20] = True
    masks[0, 20:30, 40:58] = True
    masks[1, 12:18, 30:35] = True
    inst = _instances(masks, [0.9, 0.6], [1, 2], [[0, 0, 60, 40], [29, 11, 36, 19]])
    out = instance_components(inst, min_area=4)
    assert len(out) == 3
    assert torch.equal(out.scores, torch.tensor([0.9, 0.9, 0.6]))
    assert out.pred_classes.tolist() == [1, 1, 2]
    # tight boxes, x1/y1 one past the last pixel
    assert out.pred_boxes.tensor.tolist() == [
        [2, 2, 20, 10],
        [40, 20, 58, 30],
        [30, 12, 35, 18],
    ]
    assert out.image_size == (40, 60)
    empty = instance_components(_instances(masks[:0], [], [], torch.zeros(0, 4)), min_area=4)
    assert len(empty) == 0 and empty.pred_masks.shape == (0, 40, 60)


def test_merged_fragment_stays_in_the_mask_but_not_in_the_box():
    masks = torch.zeros(1, 40, 60, dtype=torch.bool)
    masks[0, 20:30, 40:58] = True  # 180 px body
    masks[0, 2:4, 2:12] = True  # 20 px fragment far away: under 0.2 of the body, kept with it
    inst = _instances(masks, [0.8], [0], [[0, 0, 60, 40]])
    out = instance_components(inst, min_area=4, min_part_fraction=0.2)
    assert len(out) == 1 and int(out.pred_masks[0].sum()) == 200
    assert out.pred_boxes.tensor.tolist() == [
        [40, 20, 58, 30]
    ]  # the body's box, not [2, 2, 58, 30]
