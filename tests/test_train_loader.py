"""The resumable training stream: aspect-ratio grouping (Detectron2's default behaviour) and
DATALOADER.SAMPLER_TRAIN (TrainingSampler, RepeatFactorTrainingSampler)."""

import d2_detr  # noqa: F401  # isort: skip  (compat first)
import numpy as np
import pytest
from PIL import Image

from d2_detr.engine.train_loader import (
    ResumableTrainLoader,
    aspect_groups,
    category_repeat_factors,
    train_repeat_factors,
)


def _loader(groups, world_size=1, rank=0, seed=3):
    dataset = [{"index": i} for i in range(len(groups))]
    return ResumableTrainLoader(
        dataset, lambda d: dict(d), 4, 0, seed, rank=rank, world_size=world_size, groups=groups
    )


def _loader_on(dicts, repeat_factors, groups=None, world_size=1, rank=0, seed=3):
    return ResumableTrainLoader(
        dicts, lambda d: dict(d), 4, 0, seed, rank=rank, world_size=world_size, groups=groups,
        repeat_factors=repeat_factors,
    )  # fmt: skip


def test_every_batch_comes_from_one_aspect_group_and_covers_both():
    groups = [0, 1, 0, 0, 1, 1, 0, 1, 0, 0]  # 6 landscape, 4 portrait
    loader = _loader(groups)
    seen_groups = set()
    for it in range(60):
        batch = [d["index"] for d in loader.batch(it)]
        assert len({groups[i] for i in batch}) == 1, (it, batch)
        assert len(set(batch)) == len(batch)  # without replacement: each group has >= 4
        seen_groups.add(groups[batch[0]])
    assert seen_groups == {0, 1}


def test_grouped_batches_are_a_function_of_seed_and_iteration_split_over_ranks():
    groups = [0, 1] * 6
    whole = [[d["index"] for d in _loader(groups).batch(it)] for it in range(20)]
    again = [[d["index"] for d in _loader(groups).batch(it)] for it in reversed(range(20))]
    assert whole == again[::-1]
    halves = [
        [d["index"] for r in range(2) for d in _loader(groups, 2, r).batch(it)] for it in range(20)
    ]
    assert halves == whole
    other_seed = [[d["index"] for d in _loader(groups, seed=4).batch(it)] for it in range(20)]
    assert other_seed != whole


def test_one_group_keeps_the_epoch_permutation():
    loader = _loader([0] * 8)
    first_epoch = [d["index"] for it in range(2) for d in loader.batch(it)]
    assert sorted(first_epoch) == list(range(8))


def test_aspect_groups_from_sizes_or_the_file_header(tmp_path):
    portrait = tmp_path / "p.jpg"
    Image.fromarray(np.zeros((40, 20, 3), np.uint8)).save(portrait)
    rotated = tmp_path / "r.jpg"
    exif = Image.Exif()
    exif[0x0112] = 6  # stored landscape, shown portrait
    Image.fromarray(np.zeros((20, 40, 3), np.uint8)).save(rotated, exif=exif)
    dicts = [
        {"width": 30, "height": 20},
        {"width": 20, "height": 30},
        {"file_name": str(portrait)},
        {"file_name": str(rotated)},
    ]
    assert aspect_groups(dicts) == [0, 1, 1, 1]


# DATALOADER.SAMPLER_TRAIN: RepeatFactorTrainingSampler in the resumable stream


def _panoptic_dicts(n=100, rare_every=10):
    """Panoptic dataset dicts as this project's registration gives them (``segments_info``):
    every image has the stuff class 3 and the thing class 0; every ``rare_every``-th image
    also holds the thing class 1 (10 % of the images)."""
    dicts = []
    for i in range(n):
        segments = [
            {"id": 1, "category_id": 3, "isthing": False, "iscrowd": 0},
            {"id": 2, "category_id": 0, "isthing": True, "iscrowd": 0},
        ]
        if i % rare_every == 0:
            segments.append({"id": 3, "category_id": 1, "isthing": True, "iscrowd": 0})
        dicts.append({"index": i, "width": 60, "height": 40, "segments_info": segments})
    return dicts


def _index_stream(loader, iterations):
    """The dataset indices of the first ``iterations`` batches (the stream without the mapper)."""
    batches = loader._batches()
    return [batches._index(p) for p in range(iterations * loader.total_batch_size)]


def test_repeat_factors_from_segments_info_follow_the_lvis_rule():
    dicts = _panoptic_dicts()
    factors = train_repeat_factors("RepeatFactorTrainingSampler", dicts, 0.3)
    rare = np.sqrt(0.3 / 0.1)  # f(rare) = 0.1: r = sqrt(t / f) = 1.732
    assert factors[0] == pytest.approx(rare, rel=1e-6)
    assert factors[10] == pytest.approx(rare, rel=1e-6)
    assert factors[1] == 1.0 and factors[99] == 1.0  # common classes only: f = 1
    assert sum(f > 1 for f in factors) == 10
    # a stuff class with the same contiguous id as the rare thing is another category
    for d in dicts:
        d["segments_info"].append({"id": 4, "category_id": 1, "isthing": False, "iscrowd": 0})
    assert category_repeat_factors(dicts, 0.3)[0] == pytest.approx(rare, rel=1e-6)
    # Detectron2's instance dicts (``annotations``) work too
    instances = [{"annotations": [{"category_id": 5 if i < 4 else 2}]} for i in range(16)]
    assert category_repeat_factors(instances, 0.75)[3:5] == pytest.approx([np.sqrt(3), 1])
    assert train_repeat_factors("TrainingSampler", dicts, 0.3) is None


def test_repeat_factors_raise_the_share_of_rare_images_in_the_stream():
    dicts = _panoptic_dicts()
    factors = train_repeat_factors("RepeatFactorTrainingSampler", dicts, 0.3)
    stream = _index_stream(_loader_on(dicts, factors), 1000)  # 4000 images, ~37 epochs
    share = np.mean([i % 10 == 0 for i in stream])
    expected = 10 * np.sqrt(3) / (90 + 10 * np.sqrt(3))  # 0.161, against 0.10 without
    assert abs(share - expected) < 0.015, share
    plain = _index_stream(_loader_on(dicts, None), 1000)  # 40 whole epochs
    assert np.mean([i % 10 == 0 for i in plain]) == pytest.approx(0.10)
    # every image is drawn: once or more per epoch (factor >= 1), the common ones ~40 times
    counts = np.bincount(stream, minlength=100)
    assert counts.min() >= 35 and counts[[0, 10, 20]].min() > 55
    # the first epoch holds every image 1 or 2 times (stochastic rounding of 1.732 for rare)
    first = _loader_on(dicts, factors)._batches()
    first._index(0)  # the epoch table grows as positions are asked for
    epoch0 = [first._index(p) for p in range(first._epoch_starts[1])]
    c0 = np.bincount(epoch0, minlength=100)
    assert set(c0[[i for i in range(100) if i % 10]]) == {1} and set(c0[::10]) <= {1, 2}


def test_repeat_factors_with_aspect_groups_raise_the_rare_share():
    dicts = _panoptic_dicts()
    factors = category_repeat_factors(dicts, 0.3)
    groups = [i % 3 == 0 for i in range(100)]  # 34 portrait, 66 landscape
    loader = _loader_on(dicts, factors, groups=[int(g) for g in groups])
    stream = _index_stream(loader, 1000)
    batches = [stream[i : i + 4] for i in range(0, len(stream), 4)]
    assert batches[:5] == [[d["index"] for d in loader.batch(it)] for it in range(5)]
    assert all(len({groups[i] for i in b}) == 1 for b in batches)
    share = np.mean([i % 10 == 0 for b in batches for i in b])
    expected = 10 * np.sqrt(3) / (90 + 10 * np.sqrt(3))
    assert abs(share - expected) < 0.025, share


def test_repeat_factor_stream_is_a_function_of_seed_and_iteration():
    dicts = _panoptic_dicts(30, rare_every=6)
    factors = category_repeat_factors(dicts, 0.5)
    for groups in (None, [i % 2 for i in range(30)]):
        whole = [[d["index"] for d in _loader_on(dicts, factors, groups).batch(it)]
                 for it in range(60)]  # fmt: skip
        # a fresh loader asked for iteration 59 first (resume far into the stream)
        late = _loader_on(dicts, factors, groups)
        again = [[d["index"] for d in late.batch(it)] for it in reversed(range(60))]
        assert again[::-1] == whole
        # the DataLoader path after restart_at (what --resume does)
        resumed = _loader_on(dicts, factors, groups)
        resumed.restart_at(37)
        stream = iter(resumed)
        assert [[d["index"] for d in next(stream)] for _ in range(23)] == whole[37:]
        halves = [
            [
                d["index"]
                for r in range(2)
                for d in _loader_on(dicts, factors, groups, 2, r).batch(it)
            ]
            for it in range(60)
        ]
        assert halves == whole
        other = [[d["index"] for d in _loader_on(dicts, factors, groups, seed=4).batch(it)]
                 for it in range(60)]  # fmt: skip
        assert other != whole


def test_unknown_sampler_or_bad_threshold_is_a_clear_error():
    dicts = _panoptic_dicts(10)
    with pytest.raises(ValueError) as e:
        train_repeat_factors("RandomSubsetTrainingSampler", dicts, 0.0)
    for name in ("DATALOADER.SAMPLER_TRAIN", "RandomSubsetTrainingSampler", "TrainingSampler",
                 "RepeatFactorTrainingSampler"):  # fmt: skip
        assert name in str(e.value)
    with pytest.raises(ValueError, match="DATALOADER.REPEAT_THRESHOLD"):
        train_repeat_factors("RepeatFactorTrainingSampler", dicts, -0.1)
    with pytest.raises(ValueError, match="segments_info"):
        train_repeat_factors("RepeatFactorTrainingSampler", [{"file_name": "a.jpg"}], 0.1)
    with pytest.raises(ValueError, match="repeat_factors"):
        _loader_on(dicts, [1.0] * 9)
    with pytest.raises(ValueError, match=">= 1"):
        _loader_on(dicts, [0.5] + [1.0] * 9)


def test_trainer_builds_the_repeat_factor_stream(tmp_path):
    from detectron2.data import DatasetCatalog
    from model_utils import tiny_cfg

    from d2_detr.data.datasets import unregister_dataset
    from d2_detr.engine import DETRTrainer

    dicts = _panoptic_dicts(20, rare_every=5)
    for d in dicts:
        d.update(file_name=str(tmp_path / "none.jpg"), image_id=d["index"])
    DatasetCatalog.register("_sampler_test_train", lambda: [dict(d) for d in dicts])
    try:
        cfg = tiny_cfg("DATASETS.TRAIN", "('_sampler_test_train',)",
                       "DATALOADER.SAMPLER_TRAIN", "RepeatFactorTrainingSampler",
                       "DATALOADER.REPEAT_THRESHOLD", "0.8")  # fmt: skip
        loader = DETRTrainer.build_train_loader(cfg)
        assert loader.repeat_factors[0] == pytest.approx(2.0) and loader.repeat_factors[1] == 1.0
        cfg.defrost()
        cfg.DATALOADER.SAMPLER_TRAIN = "TrainingSampler"
        assert DETRTrainer.build_train_loader(cfg).repeat_factors is None
        cfg.DATALOADER.SAMPLER_TRAIN = "RandomSubsetTrainingSampler"
        with pytest.raises(ValueError, match="DATALOADER.SAMPLER_TRAIN"):
            DETRTrainer.build_train_loader(cfg)
    finally:
        unregister_dataset("_sampler_test_train")
