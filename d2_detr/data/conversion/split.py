"""Seeded, leak-free image-level split (duplicates share a split)."""

import numpy as np

__all__ = ["split_stems"]


def _split_count(fraction, n):
    k = int(np.floor(fraction * n + 0.5))
    return 1 if fraction > 0 and k == 0 and n >= 2 else k


def split_stems(stems, val_fraction=0.2, test_fraction=0.0, seed=0, groups=None):
    """Assign each stem to ``train``/``val``/``test`` with a seeded permutation.

    Args:
        groups: optional dict stem -> group key; stems of one group (e.g. byte-identical
            images) always share a split. The fractions then count groups.
    A non-zero fraction gets at least one group when there are two or more; train keeps at
    least one. The result does not depend on the order of ``stems``.
    Returns:
        dict stem -> split.
    """
    stems = sorted(stems)
    groups = groups or {}
    keys = sorted({groups.get(s, s) for s in stems})
    n = len(keys)
    n_test, n_val = _split_count(test_fraction, n), _split_count(val_fraction, n)
    while n_test + n_val > max(n - 1, 0):
        if n_val >= n_test:
            n_val -= 1
        else:
            n_test -= 1
    order = np.random.RandomState(seed).permutation(n)
    split_of_key = {}
    for rank, i in enumerate(order.tolist()):
        split_of_key[keys[i]] = (
            "test" if rank < n_test else "val" if rank < n_test + n_val else "train"
        )
    return {s: split_of_key[groups.get(s, s)] for s in stems}
