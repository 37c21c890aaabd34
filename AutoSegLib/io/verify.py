"""Dataset verification: the structure (io.datasets.scan_dataset) plus the contents of every file.

Every problem is collected, never only the first: each message names the case and file, what was
expected, what was found and how to fix it. Cases are checked in parallel worker processes. Nothing is
written anywhere.

Per-case checks (`check_case_arrays`, also run by the fingerprint extractor on the arrays it reads):
readable 2D/3D scalar images; all channels and the label on one grid (size, spacing, origin, direction,
up to float noise); no NaN/inf in images; integral label values within the declared set.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError, DatasetError
from AutoSegLib.io.datasets import CaseFiles, Dataset, scan_dataset
from AutoSegLib.io.image_check import image_array_problem, nifti_raw_problem  # noqa: F401 (re-exported)
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.progress import ProgressCallback, ProgressTracker, emit


@dataclass
class VerifyReport:
    """Result of `verify_dataset`: ``errors`` and ``warnings`` (one message each) and the dataset
    record (None when the folder could not be interpreted)."""
    errors: List[str] = field(default_factory=list)
    warnings: List[str] = field(default_factory=list)
    dataset: Optional[Dataset] = None
    cases_checked: int = 0
    path: str = ""

    @property
    def ok(self) -> bool:
        return not self.errors

    def raise_if_failed(self) -> None:
        """Raise `DatasetError` listing every error when there is any."""
        if self.errors:
            where = self.dataset.root if self.dataset is not None else (self.path or "dataset")
            raise DatasetError(f"{where}: {len(self.errors)} problem(s) found; fix them and run `autoseg verify` "
                               f"again.", self.errors)


def verify_dataset(path: "str | os.PathLike", num_workers: Optional[int] = None,
                   progress: Optional[ProgressCallback] = None) -> VerifyReport:
    """Check a raw dataset folder: structure, then every case's files.

    Parameters
    ----------
    path : str or PathLike
        Dataset folder.
    num_workers : int, optional
        Worker processes; default `default_workers` (cores, or 1 for small datasets); 1 runs in this
        process.
    progress : callable, optional
        Receives ``stage`` and ``progress`` events (stage "verify").

    Returns
    -------
    VerifyReport
        Never raises for bad input; call ``report.raise_if_failed()`` to turn errors into DatasetError.
    """
    emit(progress, "stage", stage="verify", message=f"checking {path}")
    dataset, errors, warnings = scan_dataset(path)
    report = VerifyReport(errors=list(errors), warnings=list(warnings), dataset=dataset, path=str(path))
    if dataset is None:
        return report
    checkable = [c for c in dataset.cases.values() if len(c.images) == dataset.num_channels and c.label is not None]
    values = dataset.labels.all_label_values
    results = map_cases(_check_case_files, [(c, values) for c in checkable], num_workers, progress, "verify")
    ndims = {}
    for case, (errs, warns, ndim) in zip(checkable, results):
        report.errors.extend(errs)
        report.warnings.extend(warns)
        if ndim is not None:
            ndims.setdefault(ndim, []).append(case.case_id)
        report.cases_checked += 1
    if len(ndims) > 1:
        summary = "; ".join(f"{d}D: {ids[:5]}{' ...' if len(ids) > 5 else ''}" for d, ids in sorted(ndims.items()))
        report.errors.append(f"{dataset.root}: cases mix 2D and 3D images ({summary}). All cases must have the same "
                             f"dimensionality.")
    return report


SMALL_DATASET_BYTES = 8 << 20  # below this, starting worker processes costs more than it saves


def default_workers(cases: Sequence[CaseFiles]) -> int:
    """Worker processes when none are asked for: the machine's cores (at most one per case), or 1 when
    the files total less than 8 MB (a spawned worker needs about a second just to start)."""
    total = 0
    for c in cases:
        for p in tuple(c.images) + ((c.label,) if c.label is not None else ()):
            try:
                total += p.stat().st_size
            except OSError:
                pass
    if total < SMALL_DATASET_BYTES:
        return 1
    return max(1, min(os.cpu_count() or 1, len(cases)))


def map_cases(fn, args: Sequence[tuple], num_workers: Optional[int], progress: Optional[ProgressCallback],
              stage: str) -> list:
    """Run ``fn(*a)`` for each ``a`` in ``args`` in worker processes (spawned; results in input order),
    emitting one progress event per finished case. ``num_workers`` None: `default_workers` of the cases
    (each ``a[0]`` is a CaseFiles)."""
    tracker = ProgressTracker(progress, stage, len(args))
    if not args:
        return []
    if not num_workers:
        num_workers = default_workers([a[0] for a in args if a and isinstance(a[0], CaseFiles)])
    n = min(int(num_workers), len(args))
    if n <= 1:
        out = []
        for a in args:
            out.append(fn(*a))
            tracker.step(_case_name(a))
        return out
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed

    # spawn, not fork: ITK's thread pool does not survive fork reliably, and torch may be loaded
    from AutoSegLib.processes import die_with_parent
    with ProcessPoolExecutor(n, mp_context=multiprocessing.get_context("spawn"), initializer=die_with_parent,
                             initargs=(os.getpid(),)) as pool:  # workers end with a killed parent
        futures = {pool.submit(fn, *a): i for i, a in enumerate(args)}
        out = [None] * len(args)
        for fut in as_completed(futures):
            i = futures[fut]
            out[i] = fut.result()
            tracker.step(_case_name(args[i]))
    return out


def _case_name(a) -> str:
    return a[0].case_id if a and isinstance(a[0], CaseFiles) else ""


# ---- per case -------------------------------------------------------------------------------------
def _read(path: Path, errors: List[str]):
    from AutoSegLib.io.images import read_image
    try:
        return read_image(path)
    except AutoSegError as exc:
        errors.append(str(exc))
        return None, None


def _check_case_files(case: CaseFiles, label_values: Tuple[int, ...]):
    """Read and check one case. Returns ``(errors, warnings, ndim or None)``."""
    errors: List[str] = []
    images = [_read(p, errors) for p in case.images]
    label, label_geo = _read(case.label, errors)
    if any(a is None for a, _ in images) or label is None:
        return errors, [], None
    errs, warns = check_case_arrays(case, [a for a, _ in images], [g for _, g in images], label, label_geo,
                                    label_values)
    errs += raw_file_errors(case)
    return errors + errs, warns, images[0][0].ndim


def raw_file_errors(case: CaseFiles) -> List[str]:
    """Problems in a case's NIfTI files that the image reader hides: truncated data (ITK zero-fills the
    missing part) and NaN/inf in float images (ITK reads them as 0). One message per file."""
    errs = []
    for path in tuple(case.images) + ((case.label,) if case.label is not None else ()):
        problem = nifti_raw_problem(path)
        if problem:
            errs.append(f"case {case.case_id!r}: {path.name}: {problem}")
    return errs


def check_case_arrays(case: CaseFiles, images: Sequence[np.ndarray], geometries: Sequence[Geometry],
                      label: np.ndarray, label_geometry: Geometry,
                      label_values: Tuple[int, ...]) -> Tuple[List[str], List[str]]:
    """Check one case's arrays as read from its files.

    Parameters
    ----------
    case : CaseFiles
        For the file names in messages.
    images : sequence of ndarray
        One per channel, shape (z, y, x) or (y, x), any dtype.
    geometries : sequence of Geometry
        One per channel.
    label : ndarray
        Same shape as the images, any numeric dtype.
    label_geometry : Geometry
    label_values : tuple of int
        Every value allowed in the label (ignore label included).

    Returns
    -------
    errors, warnings : list of str
    """
    errors: List[str] = []
    warnings: List[str] = []
    ref_path, ref_shape, ref_geo = case.images[0], images[0].shape, geometries[0]
    others = list(zip(case.images[1:], images[1:], geometries[1:])) + [(case.label, label, label_geometry)]
    for path, arr, geo in others:
        what = "label" if path == case.label else "channel"
        if arr.shape != ref_shape:
            errors.append(f"case {case.case_id!r}: {path.name}: size {_xyz(arr.shape)} differs from {ref_path.name}'s "
                          f"{_xyz(ref_shape)} (x, y, z). The {what} must be on the image's grid; resample it onto "
                          f"the first channel.")
            continue
        diff = ref_geo.describe_difference(geo)
        if diff:
            errors.append(f"case {case.case_id!r}: {path.name}: {diff} (found vs expected from {ref_path.name}). "
                          f"The {what} must share the image's geometry; fix the header or resample it.")
    for path, arr in zip(case.images, images):
        problem = image_array_problem(arr)  # the same check predict makes (io.image_check)
        if problem:
            errors.append(f"case {case.case_id!r}: {path.name}: {problem}")
    found = _label_values(label)
    if found is None:
        errors.append(f"case {case.case_id!r}: {case.label.name}: contains NaN/inf or non-integer values; a label map "
                      f"must hold integers from {list(label_values)}.")
    else:
        unexpected = sorted(set(found) - set(label_values))
        if unexpected:
            errors.append(f"case {case.case_id!r}: {case.label.name}: label value(s) {unexpected} are not declared in "
                          f"dataset.json 'labels' (allowed: {list(label_values)}). Add them to 'labels' or relabel "
                          f"the file.")
        elif found == [0]:
            warnings.append(f"case {case.case_id!r}: {case.label.name}: only background (0); the case has no "
                            f"foreground.")
    return errors, warnings


def _label_values(label: np.ndarray) -> Optional[List[int]]:
    """Sorted distinct values of an integral label map, or None if it holds non-integers/NaN."""
    if label.dtype.kind == "f":
        if not np.isfinite(label).all() or not np.array_equal(label, np.round(label)):
            return None
        label = label.astype(np.int64)
    if label.dtype.kind in "iu" and label.size:
        lo, hi = int(label.min()), int(label.max())
        if hi - lo < 65536:
            counts = np.bincount((label.ravel().astype(np.int64) - lo) if lo else label.ravel(), minlength=1)
            return [int(v) + lo for v in np.flatnonzero(counts)]
    return [int(v) for v in np.unique(label)]


def _xyz(shape) -> Tuple[int, ...]:
    return tuple(int(s) for s in reversed(shape))
