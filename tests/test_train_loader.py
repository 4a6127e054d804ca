"""Aspect-ratio grouping of the resumable training stream (Detectron2's default behaviour)."""

import d2_detr  # noqa: F401  # isort: skip  (compat first)
import numpy as np
from PIL import Image

from d2_detr.engine.train_loader import ResumableTrainLoader, aspect_groups


def _loader(groups, world_size=1, rank=0, seed=3):
    dataset = [{"index": i} for i in range(len(groups))]
    return ResumableTrainLoader(
        dataset, lambda d: dict(d), 4, 0, seed, rank=rank, world_size=world_size, groups=groups
    )


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
