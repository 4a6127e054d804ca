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
"""

import logging
import random
from contextlib import contextmanager

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset

__all__ = ["ResumableTrainLoader", "aspect_groups", "derive_seed", "seeded_rngs"]

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

    def __init__(self, dataset, mapper, total_batch_size, rank, world_size, seed, groups=None):
        self.dataset, self.mapper, self.seed = dataset, mapper, seed
        self.total_batch_size = total_batch_size
        self.batch_size = total_batch_size // world_size
        self.rank = rank
        self._epoch, self._perm = None, None
        self._members = None
        if groups is not None and len(set(groups)) > 1:
            self._members = [np.flatnonzero(np.asarray(groups) == g) for g in sorted(set(groups))]
        self._iteration, self._indices = None, None

    def __len__(self):  # the stream is infinite; DataLoader asks only with a sized sampler
        raise TypeError("infinite stream")

    def _index(self, position):
        if self._members is not None:
            iteration, k = divmod(position, self.total_batch_size)
            if iteration != self._iteration:
                self._iteration, self._indices = iteration, self._grouped_batch(iteration)
            return self._indices[k]
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

    def _map(self, position):
        index = self._index(position)
        for attempt in range(10):
            with seeded_rngs(derive_seed(self.seed, self._SALT_SAMPLE, position, attempt)):
                out = self.mapper(self.dataset[index])
            if out is not None:
                return out
            # the mapper dropped the sample: another one, chosen by (seed, position, attempt)
            rng = random.Random(derive_seed(self.seed, self._SALT_RETRY, position, attempt))
            index = rng.randrange(len(self.dataset))
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
            self.seed, self.groups,
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
