"""Fingerprint extraction: per case (in worker processes) spacing, shapes, non-zero bounding box and
foreground intensity samples; then dataset-level statistics.

Intensity statistics follow the reference recipe exactly: each case draws ``1e8 // num_cases``
foreground voxels per channel, with replacement, from ``numpy.random.RandomState(1234)`` (channels drawn
one after the other from that one generator), and the statistics are taken over all cases' samples
pooled. We do not materialise the samples: a draw with replacement is a vector of voxel indices, so
each case returns its foreground values with their draw *counts*, and the pooled mean, std and
percentiles are computed on that weighted multiset (identical values, a fraction of the memory).
"""
from __future__ import annotations

import os
from typing import List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError, DatasetError
from AutoSegLib.fingerprint.record import CaseFingerprint, Fingerprint
from AutoSegLib.io.datasets import CaseFiles, dataset_signature, load_dataset
from AutoSegLib.progress import ProgressCallback, emit

TOTAL_FOREGROUND_SAMPLES = 10e7   # over the whole dataset, as the reference
SAMPLING_SEED = 1234
_CHUNK = 1 << 22                  # draw indices in chunks: same stream, bounded memory


def nonzero_bbox(images: np.ndarray) -> Tuple[Tuple[int, int], ...]:
    """Half-open bounding box of the voxels where any channel is non-zero.

    Parameters
    ----------
    images : ndarray, shape (C, *spatial)

    Returns
    -------
    tuple of (start, stop) per spatial axis; the whole image when every voxel is zero.

    Notes
    -----
    The reference fills holes in the non-zero mask before taking its box; a filled hole lies inside
    the mask's box by definition, so the box is the same without that (costly) step.
    """
    mask = np.any(images != 0, axis=0)
    spatial = mask.shape
    if not mask.any():
        return tuple((0, int(n)) for n in spatial)
    box = []
    for axis in range(mask.ndim):
        other = tuple(a for a in range(mask.ndim) if a != axis)
        nz = np.flatnonzero(mask.any(axis=other))
        box.append((int(nz[0]), int(nz[-1]) + 1))
    return tuple(box)


def sample_foreground_counts(values: np.ndarray, n_samples: int, rs: np.random.RandomState) -> np.ndarray:
    """How often each of ``values`` (the foreground voxels of one channel, in C order) is drawn by
    ``rs.choice(values, n_samples, replace=True)``: int32 counts of the same length (sum n_samples)."""
    counts = np.zeros(len(values), np.int64)
    left = int(n_samples)
    while left > 0:
        k = min(left, _CHUNK)
        counts += np.bincount(rs.randint(0, len(values), k), minlength=len(values))
        left -= k
    return counts.astype(np.int32)


def analyze_case(case: CaseFiles, n_samples: int, label_values: Optional[Tuple[int, ...]] = None) -> dict:
    """Read one case and compute its fingerprint entry (run in a worker process).

    Returns a dict with ``case`` (CaseFingerprint or None), ``samples`` (per channel ``(values float32,
    counts int64)``: the distinct intensities among the drawn foreground voxels and how often they were
    drawn), ``errors`` and ``warnings``. When
    ``label_values`` is given the case is also verified (io.verify.check_case_arrays).
    """
    from AutoSegLib.io.images import read_image
    from AutoSegLib.io.verify import check_case_arrays, raw_file_errors

    errors: List[str] = []
    try:
        read = [read_image(p) for p in case.images]
        label, label_geo = read_image(case.label)
    except AutoSegError as exc:
        return {"case": None, "samples": None, "errors": [str(exc)], "warnings": []}
    warnings: List[str] = []
    if label_values is not None:
        errors, warnings = check_case_arrays(case, [a for a, _ in read], [g for _, g in read], label, label_geo,
                                             label_values)
        errors += raw_file_errors(case)
        if errors:
            return {"case": None, "samples": None, "errors": errors, "warnings": warnings}
    images = np.stack([a for a, _ in read]).astype(np.float32, copy=False)
    geometry = read[0][1]
    box = nonzero_bbox(images)
    sl = tuple(slice(a, b) for a, b in box)
    cropped = images[(slice(None),) + sl]
    fg = label[sl] > 0
    n_fg = int(fg.sum())
    fg_box = nonzero_bbox(fg[None]) if n_fg else None
    if fg_box is not None:  # back to the whole array's coordinates
        fg_box = tuple((int(a + s.start), int(b + s.start)) for (a, b), s in zip(fg_box, sl))
    rs = np.random.RandomState(SAMPLING_SEED)
    samples = []
    for c in range(len(cropped)):
        if n_fg == 0:
            samples.append((np.zeros(0, np.float32), np.zeros(0, np.int32)))
            continue
        values = cropped[c][fg]
        counts = sample_foreground_counts(values, n_samples, rs)
        keep = counts > 0
        # merge equal intensities (integer-valued data such as CT has few distinct values): the parent
        # then pools thousands of (value, count) pairs instead of millions of samples
        distinct, inverse = np.unique(values[keep], return_inverse=True)
        samples.append((distinct, np.bincount(inverse, weights=counts[keep]).astype(np.int64)))
    before, after = images.shape[1:], cropped.shape[1:]
    record = CaseFingerprint(
        case_id=case.case_id, spacing=tuple(geometry.spacing), shape_before_crop=tuple(int(s) for s in before),
        shape_after_crop=tuple(int(s) for s in after), bbox=box,
        relative_size_after_cropping=float(np.prod(after, dtype=np.float64) / np.prod(before, dtype=np.float64)),
        foreground_voxels=n_fg, foreground_bbox=fg_box)
    return {"case": record, "samples": samples, "errors": errors, "warnings": warnings}


def pooled_statistics(values: Sequence[np.ndarray], counts: Sequence[np.ndarray]) -> dict:
    """Statistics of the multiset where ``values[i][j]`` occurs ``counts[i][j]`` times.

    Percentiles use linear interpolation between order statistics (numpy's default), so the result
    equals ``np.percentile(np.repeat(v, c), q)``; std is the population std (ddof 0).
    Returns None for every key when the multiset is empty.
    """
    v = np.concatenate([np.asarray(x, np.float64) for x in values]) if values else np.zeros(0)
    c = np.concatenate([np.asarray(x, np.int64) for x in counts]) if counts else np.zeros(0, np.int64)
    v, c = v[c > 0], c[c > 0]  # a value never drawn is not in the sample (matters for min/max)
    n = int(c.sum())
    if n == 0:
        return {k: None for k in ("mean", "median", "std", "min", "max", "percentile_99_5", "percentile_00_5")}
    order = np.argsort(v, kind="stable")
    v, c = v[order], c[order]
    cum = np.cumsum(c)

    def rank(k: int) -> float:
        return float(v[np.searchsorted(cum, k, side="right")])

    def percentile(q: float) -> float:
        pos = q / 100.0 * (n - 1)
        lo = int(np.floor(pos))
        frac = pos - lo
        a = rank(lo)
        if frac == 0:
            return a
        b = rank(min(lo + 1, n - 1))
        return a + (b - a) * frac

    mean = float(np.dot(v, c) / n)
    std = float(np.sqrt(np.dot((v - mean) ** 2, c) / n))
    return {"mean": mean, "median": percentile(50.0), "std": std, "min": float(v[0]), "max": float(v[-1]),
            "percentile_99_5": percentile(99.5), "percentile_00_5": percentile(0.5)}


def extract_fingerprint(dataset_path: "str | os.PathLike", num_workers: Optional[int] = None,
                        progress: Optional[ProgressCallback] = None, verify: bool = True,
                        foreground_samples: float = TOTAL_FOREGROUND_SAMPLES) -> Fingerprint:
    """Extract the fingerprint of a raw dataset.

    Parameters
    ----------
    dataset_path : str or PathLike
        Raw dataset folder.
    num_workers : int, optional
        Worker processes (default: io.verify.default_workers: the cores, at most one per case, or 1 for
        datasets under 8 MB; 1 = in this process).
    progress : callable, optional
        Receives ``stage``/``progress`` events (stage "fingerprint").
    verify : bool
        Also run the per-case integrity checks on the arrays read (no extra reading); any problem
        raises DatasetError listing all of them.
    foreground_samples : float
        Foreground intensity samples over the whole dataset (1e8, the reference's; split evenly over
        the cases). Smaller values are faster and approximate the statistics less closely.

    Returns
    -------
    Fingerprint

    Raises
    ------
    DatasetError
        Structural problems, unreadable files, or (with ``verify``) failed integrity checks.
    """
    from AutoSegLib.io.verify import map_cases

    dataset = load_dataset(dataset_path)
    signature = dataset_signature(dataset)  # before reading: an edit during extraction makes it stale
    emit(progress, "stage", stage="fingerprint", message=f"{dataset.name}: {len(dataset.cases)} case(s)")
    cases = list(dataset.cases.values())
    n_samples = int(foreground_samples // len(cases))
    values = dataset.labels.all_label_values if verify else None
    results = map_cases(analyze_case, [(c, n_samples, values) for c in cases], num_workers, progress, "fingerprint")
    errors = [e for r in results for e in r["errors"]]
    for r in results:
        for w in r["warnings"]:
            emit(progress, "log", level="warning", message=w)
    if errors:
        raise DatasetError(f"{dataset.root}: {len(errors)} problem(s) found while reading the cases; fix them "
                           f"(`autoseg verify` lists them too).", errors)
    records = [r["case"] for r in results]
    ndims = {len(r.spacing) for r in records}
    if len(ndims) > 1:
        raise DatasetError(f"{dataset.root}: cases mix 2D and 3D images; all cases must have the same "
                           f"dimensionality.")
    stats = {}
    for ch in range(dataset.num_channels):
        stats[str(ch)] = pooled_statistics([r["samples"][ch][0] for r in results],
                                           [r["samples"][ch][1] for r in results])
    if all(r.foreground_voxels == 0 for r in records):
        emit(progress, "log", level="warning",
             message=f"{dataset.root}: no case has foreground (label > 0); intensity statistics are empty.")
    raw = dataset.raw_json
    return Fingerprint(
        dataset_name=dataset.name, dataset_path=str(dataset.root), channel_names=dict(dataset.channel_names),
        labels=dict(raw["labels"]),
        regions_class_order=tuple(raw["regions_class_order"]) if raw.get("regions_class_order") else None,
        file_ending=dataset.file_ending, ndim=ndims.pop(), cases=tuple(records), intensity_properties=stats,
        median_relative_size_after_cropping=float(np.median([r.relative_size_after_cropping for r in records])),
        foreground_samples_per_case=n_samples, dataset_signature=signature)
