import d2_detr  # noqa: F401  # isort: skip  (compat before torchvision)
import numpy as np
import pytest
import torch
from PIL import Image

from d2_detr.modeling.component_split import split_into_components
from d2_detr.modeling.postprocess import (
    detr_panoptic_inference,
    instance_inference,
    mask_boxes,
    panoptic_inference,
    resize_mask_logits,
    select_panoptic_queries,
    semantic_inference,
)

THINGS = {0, 1}  # classes 2 and 3 are stuff


def _hand_made():
    """10x10 image; see the comments for what each kept query covers."""
    m = torch.full((6, 10, 10), -10.0)
    m[0, :5, :5] = 10  # thing 0: top-left 5x5
    m[1, 5:, :5] = 10  # stuff 2: bottom-left
    m[2, 5:, 5:] = 10  # stuff 2 again: bottom-right -> merged with query 1
    m[3, :2, 8:] = 10  # thing 1: 2x2 = 4 px -> too small, dropped
    m[4, :5, :6] = 5  # thing 1 under query 0: wins 5 of its 30 px -> mostly overlapped, dropped
    m[5, :5, 6:] = 8  # stuff 3: top-right, 16 of 20 px left after query 3
    scores = torch.tensor([0.9, 0.95, 0.97, 0.99, 0.9, 0.88])
    labels = torch.tensor([0, 2, 2, 1, 1, 3])
    return scores, labels, m


def test_panoptic_segments_by_hand():
    scores, labels, masks = _hand_made()
    seg, info = panoptic_inference(scores, labels, masks, THINGS, overlap_threshold=0.7, min_area=4)
    assert seg.dtype == torch.int32 and seg.shape == (10, 10)
    assert [(s["id"], s["category_id"], s["isthing"], s["area"]) for s in info] == [
        (1, 0, True, 25),
        (2, 2, False, 50),
        (3, 3, False, 16),
    ]
    assert info[1]["score"] == pytest.approx(0.97)  # merged stuff: best score of its queries
    assert (seg[:5, :5] == 1).all() and (seg[5:] == 2).all()
    assert (seg[:2, 8:] == 0).all() and (seg[:5, 5] == 0).all()  # dropped -> void
    for s in info:
        assert (seg == s["id"]).sum().item() == s["area"]


def test_thresholds_change_the_result():
    scores, labels, masks = _hand_made()
    # min_area 3: the 4-pixel thing survives
    _, info = panoptic_inference(scores, labels, masks, THINGS, overlap_threshold=0.7, min_area=3)
    assert [s["category_id"] for s in info] == [0, 2, 1, 3]
    # overlap 0.85: stuff 3 (16 of 20 px) is now "mostly overlapped"
    _, info = panoptic_inference(scores, labels, masks, THINGS, overlap_threshold=0.85, min_area=4)
    assert [s["category_id"] for s in info] == [0, 2]
    # with all classes things, the two class-2 queries stay separate segments
    _, info = panoptic_inference(
        scores, labels, masks, {0, 1, 2, 3}, overlap_threshold=0.7, min_area=4
    )
    assert [(s["category_id"], s["area"]) for s in info] == [(0, 25), (2, 25), (2, 25), (3, 16)]


def test_score_weighted_pixels_go_to_the_confident_query():
    """Two queries claim the same 4x10 strip: the larger logit wins unless weighted by score."""
    m = torch.full((2, 4, 10), -10.0)
    m[0] = 3.0  # sigmoid 0.95, class score 0.5  -> 0.48
    m[1] = 1.0  # sigmoid 0.73, class score 0.95 -> 0.69
    scores, labels = torch.tensor([0.5, 0.95]), torch.tensor([0, 1])
    _, info = panoptic_inference(scores, labels, m, THINGS, overlap_threshold=0.5)
    assert [(s["category_id"], s["area"]) for s in info] == [(0, 40)]
    _, info = panoptic_inference(
        scores, labels, m, THINGS, overlap_threshold=0.5, score_weighted=True
    )
    assert [(s["category_id"], s["area"]) for s in info] == [(1, 40)]


def test_no_kept_query_gives_empty_result():
    seg, info = panoptic_inference(torch.zeros(0), torch.zeros(0, dtype=torch.long),
                                   torch.zeros(0, 7, 9), THINGS)  # fmt: skip
    assert info == [] and seg.shape == (7, 9) and (seg == 0).all()


def test_query_selection_threshold():
    logits = torch.tensor(
        [
            [5.0, 0.0, 0.0],  # class 0, p ~ 0.987 -> kept
            [0.0, 0.0, 5.0],  # no-object -> dropped
            [1.0, 0.0, 0.0],  # class 0 but p ~ 0.58 -> dropped
            [0.0, 3.0, 0.0],  # class 1, p ~ 0.91 -> kept
        ]
    )
    assert select_panoptic_queries(logits, 0.85).tolist() == [0, 3]
    assert select_panoptic_queries(logits, 0.5).tolist() == [0, 2, 3]


def test_mask_logits_cropped_before_resizing():
    logits = torch.full((1, 4, 4), -1.0)
    logits[:, :, :2] = 1.0  # left half of the padded canvas
    out = resize_mask_logits(logits, padded_size=(16, 16), image_size=(12, 8), output_size=(24, 16))
    assert out.shape == (1, 24, 16)
    assert (out > 0).all()  # the image is the left half: all of it positive
    assert resize_mask_logits(torch.zeros(0, 4, 4), (16, 16), (12, 8), (5, 6)).shape == (0, 5, 6)


def test_instances_scaled_and_sorted():
    boxes = torch.tensor([[0.5, 0.5, 0.5, 0.5], [0.25, 0.25, 0.5, 0.5]])
    masks = torch.stack([torch.full((100, 200), 1.0), torch.full((100, 200), -1.0)])
    inst = instance_inference(torch.tensor([0.3, 0.8]), torch.tensor([1, 0]), boxes, masks,
                              (100, 200))  # fmt: skip
    assert inst.image_size == (100, 200)
    assert inst.scores.tolist() == pytest.approx([0.8, 0.3]) and inst.pred_classes.tolist() == [
        0,
        1,
    ]
    torch.testing.assert_close(
        inst.pred_boxes.tensor, torch.tensor([[0.0, 0.0, 100.0, 50.0], [50.0, 25.0, 150.0, 75.0]])
    )
    assert inst.pred_masks.dtype == torch.bool
    assert not inst.pred_masks[0].any() and inst.pred_masks[1].all()


def test_semantic_scores():
    prob = torch.tensor([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]])
    masks = torch.stack([torch.full((2, 3), 10.0), torch.full((2, 3), -10.0)])
    sem = semantic_inference(prob, masks)
    assert sem.shape == (2, 2, 3)
    torch.testing.assert_close(sem[:, 0, 0], torch.tensor([0.7, 0.2]), atol=1e-3, rtol=0)


# -- splitting thing segments into connected components (the concrete converter's instances) --
REBAR, SPALL, CRACK, BACKGROUND = 0, 1, 2, 3


def _segments(ids, classes):
    """(H, W) int ids and {id: class} -> (panoptic_seg, segments_info) as panoptic_inference."""
    seg = torch.as_tensor(ids, dtype=torch.int32)
    info = [
        {"id": i, "category_id": c, "isthing": c != BACKGROUND, "score": 0.9,
         "area": int((seg == i).sum())}
        for i, c in classes.items()
    ]  # fmt: skip
    return seg, info


def _spall_with_two_bars():
    """A 20x20 spall (id 2) crossed by two horizontal bars that one rebar segment (id 1) holds."""
    ids = torch.full((30, 30), 3)
    ids[5:25, 5:25] = 2
    ids[8:11, 5:25] = 1
    ids[18:21, 5:25] = 1
    return _segments(ids, {1: REBAR, 2: SPALL, 3: BACKGROUND})


def test_parallel_bars_become_one_instance_each_and_the_crossed_spall_stays_one():
    seg, info = _spall_with_two_bars()
    out, out_info = split_into_components(seg, info, class_priority=(CRACK, REBAR, SPALL))
    by_class = {}
    for s in out_info:
        by_class.setdefault(s["category_id"], []).append(s)
        assert s["area"] == int((out == s["id"]).sum()) > 0
    assert [s["area"] for s in by_class[REBAR]] == [60, 60]
    assert [s["area"] for s in by_class[SPALL]] == [400 - 120]  # bridged by the bars
    assert [s["area"] for s in by_class[BACKGROUND]] == [900 - 400]
    assert sorted(s["id"] for s in out_info) == list(range(1, 5))
    assert int((out == 0).sum()) == 0  # nothing became void


def test_without_priority_each_class_is_split_by_its_own_pixels():
    seg, info = _spall_with_two_bars()
    _, out_info = split_into_components(seg, info)
    spall_parts = sorted(s["area"] for s in out_info if s["category_id"] == SPALL)
    assert spall_parts == [20 * 3, 20 * 4, 20 * 7]  # cut in three by the two bars


def test_small_parts_become_void_and_diagonal_pixels_connect():
    ids = torch.zeros((12, 12), dtype=torch.int64)
    for k in range(8):  # a diagonal crack: 8-connected, one instance
        ids[k, k] = 1
    ids[10:12, 10:12] = 1  # a 4-pixel fragment of the same prediction
    seg, info = _segments(ids, {1: CRACK})
    out, out_info = split_into_components(seg, info, min_area=4)
    assert [s["area"] for s in out_info] == [8]
    assert int((out[10:, 10:] == 0).sum()) == 4


def test_parts_under_a_fraction_of_the_largest_stay_with_it():
    ids = torch.zeros((20, 40), dtype=torch.int64)
    ids[2:4, 0:30] = 1  # a bar of 60 px
    ids[2:4, 32:37] = 1  # past a gap: 10 px (1/6 of the bar)
    ids[10:12, 0:25] = 1  # a parallel bar of 50 px
    seg, info = _segments(ids, {1: REBAR})
    out, out_info = split_into_components(seg, info, min_area=4, min_part_fraction=0.2)
    assert sorted(s["area"] for s in out_info) == [50, 70]
    assert out[2, 0] == out[2, 35] != out[10, 0]
    _, plain = split_into_components(seg, info, min_area=4)
    assert sorted(s["area"] for s in plain) == [10, 50, 60]


# -- DETR's own merging (PostProcessPanoptic) ---------------------------------------------------
def test_detr_merge_reassigns_small_segments_instead_of_voiding_them():
    m = torch.full((3, 6, 6), -10.0)
    m[0, :, :3] = 5  # thing 0: left half
    m[1, :, 3:] = 5  # thing 1: right half
    m[2, :2, :2] = 9  # thing 1: a 2x2 = 4 px corner over query 0 -> dropped
    m[2, :2, 2] = 1  # ... with query 0 second best there
    scores, labels = torch.tensor([0.9, 0.9, 0.95]), torch.tensor([0, 1, 1])
    seg, info = detr_panoptic_inference(scores, labels, m, THINGS, (6, 6), min_area=4)
    assert [(s["id"], s["category_id"], s["area"]) for s in info] == [(1, 0, 18), (2, 1, 18)]
    assert (seg[:, :3] == 1).all() and (seg[:, 3:] == 2).all()  # the corner went to query 0
    # MaskFormer's rules leave it void instead
    seg2, _ = panoptic_inference(scores, labels, m, THINGS, overlap_threshold=0.0, min_area=4)
    assert (seg2[:2, :2] == 0).all()


def test_detr_merge_area_is_counted_at_the_output_size():
    m = torch.full((2, 4, 4), -10.0)
    m[0] = 5
    m[1, 0, :2] = 9  # 2 px at the input resolution, 8 px at twice the size
    scores, labels = torch.tensor([0.9, 0.9]), torch.tensor([2, 0])
    _, info = detr_panoptic_inference(scores, labels, m, THINGS, (4, 4), min_area=4)
    assert [s["category_id"] for s in info] == [2]
    seg, info = detr_panoptic_inference(scores, labels, m, THINGS, (8, 8), min_area=4)
    assert [(s["category_id"], s["area"]) for s in info] == [(2, 56), (0, 8)]
    assert (seg[:2, :4] == 2).all()


def test_detr_merge_stuff_duplicates_dropped_then_pixels_to_the_best_remaining_query():
    """DETR's code merges same-class stuff queries in its first pass only: the duplicates then
    have area 0 and are dropped, and their pixels go to the arg-max of the remaining queries."""
    m = torch.full((3, 6, 8), -10.0)
    m[0, :, :4] = 5  # stuff 2, left
    m[1, :, 4:] = 5  # stuff 2 again, right
    m[2, :, 7] = 6  # thing 0: column 7 (6 px) ...
    m[2, :, 6] = 3  # ... second best on column 6
    m[0, :, 4:6] = -1  # query 0 second best on columns 4-5
    scores, labels = torch.tensor([0.9, 0.9, 0.9]), torch.tensor([2, 2, 0])
    seg, info = detr_panoptic_inference(scores, labels, m, THINGS, (6, 8), min_area=4)
    assert [(s["category_id"], s["isthing"], s["area"]) for s in info] == [
        (2, False, 36),
        (0, True, 12),
    ]
    assert (seg[:, :6] == 1).all() and (seg[:, 6:] == 2).all()
    # a thing query that wins no pixel in the first pass is dropped with the duplicates
    m[2, :, 7] = 3
    _, info = detr_panoptic_inference(scores, labels, m, THINGS, (6, 8), min_area=4)
    assert [(s["category_id"], s["area"]) for s in info] == [(2, 48)]


def test_detr_merge_without_kept_queries_is_all_void():
    seg, info = detr_panoptic_inference(
        torch.zeros(0), torch.zeros(0, dtype=torch.long), torch.zeros(0, 5, 6), THINGS, (10, 12)
    )
    assert info == [] and seg.shape == (10, 12) and (seg == 0).all()
    # every kept query too small: all dropped, all void
    m = torch.full((2, 1, 6), -10.0)
    m[0, 0, :3] = 5
    m[1, 0, 3:] = 5
    seg, info = detr_panoptic_inference(torch.ones(2), torch.tensor([0, 1]), m, THINGS, (1, 6))
    assert info == [] and (seg == 0).all()


def _detr_reference(labels, mask_logits, thing_ids, output_size, min_area=4):
    """DETR's PostProcessPanoptic loop restated with numpy and PIL's NEAREST resize."""
    masks = mask_logits.numpy().reshape(len(labels), -1)
    labels = labels.tolist()
    h, w = mask_logits.shape[-2:]
    equiv = {}
    for k, c in enumerate(labels):
        if c not in thing_ids:
            equiv.setdefault(c, []).append(k)

    def ids_and_areas(masks, dedup):
        if masks.shape[0] == 0:
            m = np.zeros((h, w), np.int64)
        else:
            m = masks.argmax(0).reshape(h, w)
        if dedup:
            for same in equiv.values():
                for k in same:
                    m[m == k] = same[0]
        img = Image.fromarray(m.astype(np.int32), mode="I")
        m = np.asarray(img.resize(output_size[::-1], resample=Image.NEAREST))
        return m, [int((m == i).sum()) for i in range(masks.shape[0])]

    kept = list(range(len(labels)))
    m, area = ids_and_areas(masks, True)
    while kept:
        small = [a <= min_area for a in area]
        if not any(small):
            break
        kept = [k for k, s in zip(kept, small) if not s]
        m, area = ids_and_areas(masks[kept], False)
    if not kept:
        return np.zeros(output_size, np.int64), []
    return m + 1, [(labels[k], a) for k, a in zip(kept, area)]


@pytest.mark.parametrize("output_size", [(13, 17), (40, 52), (7, 30)])
def test_detr_merge_equals_a_reference_on_random_outputs(output_size):
    g = torch.Generator().manual_seed(sum(output_size))
    for trial in range(20):
        n = int(torch.randint(1, 7, (1,), generator=g))
        # coarse random blobs: a few segments, some small
        coarse = torch.randn(n, 3, 4, generator=g) * 3
        m = torch.nn.functional.interpolate(coarse[None], size=(12, 16), mode="bilinear")[0]
        labels = torch.randint(0, 4, (n,), generator=g)
        seg, info = detr_panoptic_inference(torch.ones(n), labels, m, THINGS, output_size)
        ref_seg, ref_info = _detr_reference(labels, m, THINGS, output_size)
        assert [(s["category_id"], s["area"]) for s in info] == ref_info, trial
        assert np.array_equal(seg.numpy(), ref_seg), trial


def test_mask_boxes_cover_the_pixels_and_fall_back_for_empty_masks():
    masks = torch.zeros(3, 10, 12, dtype=torch.bool)
    masks[0, 2:5, 3:9] = True
    masks[1, 7, 11] = True
    fallback = torch.tensor([[0.0, 0, 1, 1], [0, 0, 2, 2], [1.5, 2.5, 3.5, 4.5]])
    boxes = mask_boxes(masks, fallback)
    assert boxes.tolist() == [[3, 2, 9, 5], [11, 7, 12, 8], [1.5, 2.5, 3.5, 4.5]]
    inst = instance_inference(
        torch.tensor([0.9, 0.8, 0.7]), torch.tensor([0, 1, 0]),
        torch.tensor([[0.5, 0.5, 0.2, 0.2]] * 3), masks.float() * 2 - 1, (10, 12),
        boxes_from_masks=True,
    )  # fmt: skip
    torch.testing.assert_close(inst.pred_boxes.tensor[:2], boxes[:2])
    torch.testing.assert_close(inst.pred_boxes.tensor[2], torch.tensor([4.8, 4.0, 7.2, 6.0]))
