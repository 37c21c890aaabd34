"""Sampled voxel locations per foreground class, stored with each preprocessed case for oversampling.

Training forces a third of each patch batch to contain foreground: it picks a class, then one of that
class's stored locations. Per class (or region) at most ``max_samples`` voxels are kept, but at least
``min_fraction`` of the class's voxels (the reference's 10000 / 1 % rule), drawn without replacement from
a generator seeded per case, so a re-run stores the same locations.
"""
from __future__ import annotations

from typing import Dict, Sequence, Tuple, Union

import numpy as np

ClassKey = Union[int, Tuple[int, ...]]


def class_key(value: ClassKey) -> str:
    """JSON key of a class (``"2"``) or a region / label set (``"1,2,3"``)."""
    if isinstance(value, (tuple, list)):
        return ",".join(str(int(v)) for v in value)
    return str(int(value))


def sample_class_locations(seg: np.ndarray, classes: Sequence[ClassKey], seed: int = 1234,
                           max_samples: int = 10000, min_fraction: float = 0.01) -> Dict[str, np.ndarray]:
    """Sample voxel coordinates of each class or region.

    Parameters
    ----------
    seg : ndarray, integer, shape (*spatial) (no channel axis)
    classes : label values, or tuples of label values (a region: the union of those labels)
    seed : int, seeds the generator (one sequence of draws for all classes)

    Returns
    -------
    dict ``class_key(c)`` -> int64 array of shape (N, seg.ndim), spatial coordinates in array order;
    N = max(min(max_samples, count), ceil(count * min_fraction)); (0, ndim) when the class is absent.
    """
    rng = np.random.default_rng(seed)
    flat = seg.ravel()
    out: Dict[str, np.ndarray] = {}
    for c in classes:
        values = tuple(int(v) for v in c) if isinstance(c, (tuple, list)) else (int(c),)
        hit = flat == values[0]
        for v in values[1:]:
            hit |= flat == v
        index = np.flatnonzero(hit)
        total = index.size
        if total == 0:
            out[class_key(c)] = np.zeros((0, seg.ndim), dtype=np.int64)
            continue
        n = max(min(max_samples, total), int(np.ceil(total * min_fraction)))
        chosen = index if n >= total else index[rng.choice(total, n, replace=False)]
        out[class_key(c)] = np.stack(np.unravel_index(np.sort(chosen), seg.shape), axis=1).astype(np.int64)
    return out
