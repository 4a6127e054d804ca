"""
A training data stream that can restart at any iteration and give exactly the batches an
uninterrupted run would have had (the basis of exact ``--resume``).

Detectron2's ``TrainingSampler`` is an infinite seeded stream whose position is not saved, its
aspect-ratio grouping keeps images in buffers between batches, and the mapper's augmentations
draw from the global RNG of whichever worker runs them: a restart changes the data order and
every augmentation. Here every batch is a pure function of ``(seed, iteration)``:

- sample position ``p = iteration * total_batch + rank * batch + k`` holds dataset index
  ``permutation(seed, epoch = p // N)[p % N]`` (a new seeded permutation each epoch);
- the mapper runs with Python's, numpy's and torch's RNG seeded from ``(seed, p)`` (and the
  caller's RNG states restored after), so augmentation does not depend on history or on which
  data-loader worker runs it.

With ``groups`` (DATALOADER.ASPECT_RATIO_GROUPING, Detectron2's default), every batch is drawn
from one aspect group, again as a pure function of ``(seed, iteration)``; DETR pads a batch to
its largest image, and GroupNorm backbones see that padding in training.

DATALOADER.SAMPLER_TRAIN picks how images are drawn (:data:`TRAIN_SAMPLERS`):
``TrainingSampler`` as above, or ``RepeatFactorTrainingSampler``, where image ``i`` is seen
``r_i`` times per epoch in expectation (Detectron2's rule, LVIS: ``r = max(1, sqrt(t / f))`` for
the rarest category of the image, ``f`` the share of images holding it, ``t`` =
DATALOADER.REPEAT_THRESHOLD). Epoch ``e`` holds each image ``floor(r_i)`` times plus once more
with probability ``frac(r_i)`` (stochastic rounding, as Detectron2's sampler), shuffled, all drawn
from ``(seed, e)``: epochs differ in length, and a position finds its epoch from the lengths,
which are again functions of the seed alone, so resume stays exact.
"""

import logging
import random
from bisect import bisect_right
from contextlib import contextmanager

import numpy as np
import torch
from detectron2.data.samplers import RepeatFactorTrainingSampler
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = [
    "TRAIN_SAMPLERS",
    "ResumableTrainLoader",
    "aspect_groups",
    "category_repeat_factors",
    "check_train_sampler",
    "derive_seed",
    "seeded_rngs",
    "train_repeat_factors",
]

#: the values of DATALOADER.SAMPLER_TRAIN the training stream implements
TRAIN_SAMPLERS = ("TrainingSampler", "RepeatFactorTrainingSampler")

logger = logging.getLogger(__name__)


def derive_seed(*numbers):
    """A 32-bit seed that is a pure function of ``numbers`` (non-negative ints)."""
    return int(np.random.SeedSequence([int(n) for n in numbers]).generate_state(1)[0])


def aspect_groups(dicts):
    """0 (width >= height) or 1 (portrait) per dataset dict, from its ``width`` / ``height`` or,
    where the loader left them out (Detectron2 v0.6's panoptic loader), the image file's header."""
    groups = []
    for d in dicts:
        if "width" in d and "height" in d:
            w, h = d["width"], d["height"]
        else:
            with Image.open(d["file_name"]) as im:  # reads the header only
                w, h = im.size
                if im.getexif().get(0x0112, 1) in (5, 6, 7, 8):  # EXIF: rotated by 90 degrees
                    w, h = h, w
        groups.append(0 if w >= h else 1)
    return groups


def check_train_sampler(sampler_name, repeat_threshold=0.0):
    """ValueError naming the key for a DATALOADER.SAMPLER_TRAIN this stream does not implement,
    or a DATALOADER.REPEAT_THRESHOLD that is not a number >= 0 (for the repeat-factor sampler)."""
    if sampler_name not in TRAIN_SAMPLERS:
        raise ValueError(
            f"DATALOADER.SAMPLER_TRAIN {sampler_name!r} is not supported by d2-detr's resumable "
            f"training stream; use one of: {', '.join(TRAIN_SAMPLERS)}"
        )
    if sampler_name == "RepeatFactorTrainingSampler":
        try:
            ok = float(repeat_threshold) >= 0  # False for NaN
        except (TypeError, ValueError):
            ok = False
        if not ok:
            raise ValueError(
                f"DATALOADER.REPEAT_THRESHOLD {repeat_threshold!r}: must be a number >= 0 (the "
                "image frequency below which a category's images are repeated, e.g. 0.1)"
            )


def _image_categories(d):
    """The categories of one dataset dict as ``(isthing, category_id)`` pairs: from the panoptic
    ``segments_info`` (things and stuff; their ids may share one space or not), else from
    Detectron2's instance ``annotations`` (things); None when the dict has neither."""
    if "segments_info" in d:
        return {(bool(s.get("isthing", True)), s["category_id"]) for s in d["segments_info"]}
    if "annotations" in d:
        return {(True, a["category_id"]) for a in d["annotations"]}
    return None


def category_repeat_factors(dicts, repeat_thresh):
    """
    Per-image repeat factors by category frequency, from Detectron2's
    ``RepeatFactorTrainingSampler.repeat_factors_from_category_frequency``, for this project's
    panoptic dicts (categories from ``segments_info``: a thing and a stuff class count as two
    categories even when they share a contiguous id) or instance dicts (``annotations``).

    Returns:
        list of floats, each >= 1, one per dict.
    Raises:
        ValueError: a negative threshold, or dicts that carry no categories at all.
    """
    check_train_sampler("RepeatFactorTrainingSampler", repeat_thresh)
    categories = [_image_categories(d) for d in dicts]
    if not dicts or all(c is None for c in categories):
        raise ValueError(
            "DATALOADER.SAMPLER_TRAIN RepeatFactorTrainingSampler needs the categories of each "
            "training image ('segments_info' or 'annotations' in the dataset dicts), and the "
            "dataset dicts have none; use DATALOADER.SAMPLER_TRAIN TrainingSampler"
        )
    wrapped = [{"annotations": [{"category_id": c} for c in cats or ()]} for cats in categories]
    factors = RepeatFactorTrainingSampler.repeat_factors_from_category_frequency(
        wrapped, float(repeat_thresh)
    )
    return [float(f) for f in factors.tolist()]


def train_repeat_factors(sampler_name, dicts, repeat_threshold):
    """The ``repeat_factors`` of :class:`ResumableTrainLoader` for DATALOADER.SAMPLER_TRAIN:
    None for ``TrainingSampler``, :func:`category_repeat_factors` for
    ``RepeatFactorTrainingSampler``; ValueError naming the key for anything else."""
    check_train_sampler(sampler_name, repeat_threshold)
    if sampler_name == "TrainingSampler":
        return None
    factors = category_repeat_factors(dicts, repeat_threshold)
    repeated = sum(f > 1 for f in factors)
    logger.info(
        f"RepeatFactorTrainingSampler (threshold {repeat_threshold}): {repeated} of "
        f"{len(factors)} images repeated, {sum(factors):.1f} images per epoch on average"
    )
    return factors


def seed_all(seed):
    """Seed Python's, numpy's and torch's global RNGs with ``seed`` (32-bit int)."""
    random.seed(seed)
    np.random.seed(seed)
    torch.manual_seed(seed)


@contextmanager
def seeded_rngs(seed):
    """Run the body with the global RNGs seeded by ``seed``; restore their states after."""
    states = random.getstate(), np.random.get_state(), torch.get_rng_state()
    seed_all(seed)
    try:
        yield
    finally:
        random.setstate(states[0])
        np.random.set_state(states[1])
        torch.set_rng_state(states[2])


def _identity(batch):
    return batch


class _IterationBatches(Dataset):
    """Map-style dataset: item ``i`` is this rank's list of mapped dicts for iteration ``i``."""

    _SALT_PERMUTATION, _SALT_SAMPLE, _SALT_RETRY, _SALT_GROUP = 1, 2, 3, 6
    _SALT_REPEAT, _SALT_GROUP_REPEAT = 7, 8

    def __init__(
        self, dataset, mapper, total_batch_size, rank, world_size, seed, groups=None,
        repeat_factors=None,
    ):  # fmt: skip
        self.dataset, self.mapper, self.seed = dataset, mapper, seed
        self.total_batch_size = total_batch_size
        self.batch_size = total_batch_size // world_size
        self.rank = rank
        self._epoch, self._perm = None, None
        self._members = None
        if groups is not None and len(set(groups)) > 1:
            self._members = [np.flatnonzero(np.asarray(groups) == g) for g in sorted(set(groups))]
            self._groups = np.asarray(groups)
        self._iteration, self._indices = None, None
        self._repeat = None
        if repeat_factors is not None:
            factors = np.asarray(repeat_factors, dtype=np.float64)
            self._repeat = factors
            self._int_part = np.floor(factors).astype(np.int64)
            self._frac_part = factors - self._int_part
            self._epoch_starts = [0]  # first position of epochs 0, 1, ... (grown on demand)

    def __len__(self):  # the stream is infinite; DataLoader asks only with a sized sampler
        raise TypeError("infinite stream")

    def _index(self, position):
        if self._members is not None:
            iteration, k = divmod(position, self.total_batch_size)
            if iteration != self._iteration:
                grouped = self._grouped_batch if self._repeat is None else self._grouped_repeats
                self._iteration, self._indices = iteration, grouped(iteration)
            return self._indices[k]
        if self._repeat is not None:
            return self._repeat_index(position)
        n = len(self.dataset)
        epoch = position // n
        if epoch != self._epoch:
            g = torch.Generator()
            g.manual_seed(derive_seed(self.seed, self._SALT_PERMUTATION, epoch))
            self._epoch, self._perm = epoch, torch.randperm(n, generator=g).tolist()
        return self._perm[position % n]

    def _grouped_batch(self, iteration):
        """All images of one iteration from one aspect group (the group drawn with probability
        proportional to its size, its images uniformly; without replacement when it is large
        enough): a pure function of ``(seed, iteration)``, as Detectron2's aspect-ratio grouping
        keeps the padding of a batch small (GroupNorm backbones see padding; inference does not)."""
        rng = np.random.default_rng(derive_seed(self.seed, self._SALT_GROUP, iteration))
        sizes = np.array([len(m) for m in self._members], dtype=np.float64)
        members = self._members[rng.choice(len(sizes), p=sizes / sizes.sum())]
        replace = len(members) < self.total_batch_size
        return [int(i) for i in rng.choice(members, self.total_batch_size, replace=replace)]

    def _repeat_counts(self, uniforms):
        """Copies of each image: the repeat factors rounded stochastically by ``uniforms``, one
        draw in [0, 1) per image."""
        return self._int_part + (uniforms < self._frac_part)

    def _epoch_counts(self, generator):
        """Copies of each image in one epoch (its draws from ``generator``)."""
        n = len(self._repeat)
        return self._repeat_counts(torch.rand(n, generator=generator, dtype=torch.float64).numpy())

    def _epoch_generator(self, epoch):
        return torch.Generator().manual_seed(derive_seed(self.seed, self._SALT_REPEAT, epoch))

    def _repeat_index(self, position):
        """Epoch ``e`` of the repeat-factor stream: every image ``counts[i]`` times, shuffled;
        the epoch of ``position`` from the epoch lengths (each drawn from ``(seed, e)``)."""
        starts = self._epoch_starts
        while starts[-1] <= position:
            starts.append(
                starts[-1] + int(self._epoch_counts(self._epoch_generator(len(starts) - 1)).sum())
            )
        epoch = bisect_right(starts, position) - 1
        if epoch != self._epoch:
            g = self._epoch_generator(epoch)
            counts = self._epoch_counts(g)
            indices = np.repeat(np.arange(len(counts)), counts)
            order = torch.randperm(len(indices), generator=g).numpy()
            self._epoch, self._perm = epoch, indices[order].tolist()
        return self._perm[position - starts[epoch]]

    def _grouped_repeats(self, iteration):
        """:meth:`_grouped_batch` with repeat factors: this iteration's stochastically rounded
        copies of each image form the pool; the group is drawn in proportion to its copies and
        the batch from its copies (so an image is seen in proportion to its factor)."""
        rng = np.random.default_rng(derive_seed(self.seed, self._SALT_GROUP_REPEAT, iteration))
        counts = self._repeat_counts(rng.random(len(self._repeat)))
        pool = np.repeat(np.arange(len(counts)), counts)
        pool_groups = self._groups[pool]
        members = [pool[pool_groups == g] for g in sorted(set(self._groups.tolist()))]
        sizes = np.array([len(m) for m in members], dtype=np.float64)
        chosen = members[rng.choice(len(sizes), p=sizes / sizes.sum())]
        replace = len(chosen) < self.total_batch_size
        return [int(i) for i in rng.choice(chosen, self.total_batch_size, replace=replace)]

    def _map(self, position):
        index = self._index(position)
        for attempt in range(10):
            with seeded_rngs(derive_seed(self.seed, self._SALT_SAMPLE, position, attempt)):
                out = self.mapper(self.dataset[index])
            if out is not None:
                return out
            # the mapper dropped the sample: another one, chosen by (seed, position, attempt)
            rng = random.Random(derive_seed(self.seed, self._SALT_RETRY, position, attempt))
            if self._repeat is None:
                index = rng.randrange(len(self.dataset))
            else:  # in proportion to the repeat factors, as the stream draws
                index = rng.choices(range(len(self.dataset)), weights=self._repeat)[0]
        raise RuntimeError(f"the mapper dropped 10 samples in a row at position {position}")

    def __getitem__(self, iteration):
        first = iteration * self.total_batch_size + self.rank * self.batch_size
        return [self._map(first + k) for k in range(self.batch_size)]


class _Positions:
    """``start, start + 1, ...`` (a sampler of iteration numbers)."""

    def __init__(self, start):
        self.start = start

    def __iter__(self):
        i = self.start
        while True:
            yield i
            i += 1


class ResumableTrainLoader:
    """
    Iterable of training batches (lists of mapped dataset dicts), batch ``i`` for iteration
    ``start_iter + i``. ``start_iter`` and ``seed`` are read when iteration begins, so a trainer
    can set them after loading a checkpoint (:meth:`restart_at`).

    Args:
        dataset: indexable dataset of dicts (e.g. Detectron2's ``DatasetFromList``).
        mapper: callable dict -> dict (or None to drop the sample).
        total_batch_size: images per iteration over all processes (SOLVER.IMS_PER_BATCH).
        num_workers: data-loader worker processes (0: in this process).
        seed: int, the stream's seed.
        rank, world_size: this process's share of every batch.
        groups: optional aspect group per dataset index (e.g. 0 landscape, 1 portrait): with
            more than one group, every batch is drawn from one group (aspect-ratio grouping);
            otherwise each epoch is a seeded permutation of the dataset.
        repeat_factors: optional float >= 1 per dataset index (see
            :func:`train_repeat_factors`): image ``i`` is drawn ``repeat_factors[i]`` times per
            epoch in expectation (Detectron2's ``RepeatFactorTrainingSampler``). None: each
            image once per epoch (``TrainingSampler``).
    """

    def __init__(
        self,
        dataset,
        mapper,
        total_batch_size,
        num_workers,
        seed,
        rank=0,
        world_size=1,
        groups=None,
        repeat_factors=None,
    ):
        if total_batch_size % world_size:
            raise ValueError(
                f"SOLVER.IMS_PER_BATCH ({total_batch_size}) must be divisible by the number of "
                f"processes ({world_size})"
            )
        self.dataset, self.mapper = dataset, mapper
        self.total_batch_size, self.num_workers = total_batch_size, num_workers
        self.rank, self.world_size = rank, world_size
        self.seed, self.start_iter = int(seed), 0
        self.groups = groups
        if repeat_factors is not None:
            repeat_factors = [float(f) for f in repeat_factors]
            if len(repeat_factors) != len(dataset):
                raise ValueError(
                    f"repeat_factors: {len(repeat_factors)} values for {len(dataset)} images"
                )
            bad = [f for f in repeat_factors if not 1 <= f < float("inf")]
            if bad:
                raise ValueError(f"repeat_factors: each must be a finite number >= 1, got {bad[0]}")
        self.repeat_factors = repeat_factors

    def restart_at(self, start_iter, seed=None):
        """The next ``iter()`` starts at ``start_iter`` (with ``seed`` if given)."""
        self.start_iter = int(start_iter)
        if seed is not None:
            self.seed = int(seed)

    def batch(self, iteration):
        """This process's batch of ``iteration``, computed directly (for tests and tools)."""
        return self._batches()[iteration]

    def _batches(self):
        return _IterationBatches(
            self.dataset, self.mapper, self.total_batch_size, self.rank, self.world_size,
            self.seed, self.groups, self.repeat_factors,
        )  # fmt: skip

    def __iter__(self):
        logger.info(f"Training data stream: seed {self.seed}, from iteration {self.start_iter}")
        loader = DataLoader(
            self._batches(),
            sampler=_Positions(self.start_iter),
            batch_size=None,
            num_workers=self.num_workers,
            collate_fn=_identity,
            # its own generator: the workers' base seed must not be drawn from (and advance) the
            # global torch RNG in whichever iteration the stream starts
            generator=torch.Generator().manual_seed(derive_seed(self.seed, 5, self.start_iter)),
        )
        yield from loader
