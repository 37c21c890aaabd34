"""Access to the preprocessed training cases (memory-mapped), as stored by the preprocessing stage.

Layout (DEVELOPERS.md): ``preprocessed/<data_identifier>/<case>.npy`` float32 (C, *spatial),
``<case>_seg.npy`` int (1, *spatial) with -1 outside the non-zero region, ``<case>.json`` properties
with ``class_locations`` ({label value as str: [[(c,) z, y, x], ...]}). Arrays are opened with
``mmap_mode="r"`` so that worker processes share the page cache instead of copying volumes.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError

log = logging.getLogger(__name__)


class CaseStore:
    """Opens preprocessed cases lazily and keeps them memory-mapped (one per process).

    Parameters
    ----------
    folder : Path
        ``WORK/preprocessed/<data_identifier>``.
    cases : sequence of str
        Case ids this store serves.
    previous_folder : Path, optional
        For a cascade stage: the previous stage's predictions on this grid
        (``training.cascade.previous_stage_folder``), read by `load_previous`.
    """

    def __init__(self, folder: "str | Path", cases: Sequence[str], previous_folder: "str | Path | None" = None):
        self.folder = Path(folder)
        self.cases = list(cases)
        self.previous_folder = Path(previous_folder) if previous_folder is not None else None
        self._open: Dict[str, Tuple[np.ndarray, np.ndarray, dict]] = {}
        self._previous: Dict[str, np.ndarray] = {}

    def __len__(self) -> int:
        return len(self.cases)

    def load(self, case: str) -> Tuple[np.ndarray, np.ndarray, dict]:
        """Return ``(image (C, *spatial) float32 memmap, seg (1, *spatial) int memmap, properties)``."""
        if case not in self._open:
            self._open[case] = load_case(self.folder, case)
        return self._open[case]

    def load_previous(self, case: str) -> np.ndarray:
        """The previous stage's label map of ``case``: int memmap (1, *spatial), the shape of its label.

        Raises AutoSegError when the store has no ``previous_folder``, or the file is missing or of
        another shape."""
        if self.previous_folder is None:
            raise AutoSegError(f"{self.folder}: no previous-stage folder given; {case!r} is not read as a cascade "
                               f"stage's case.")
        if case not in self._previous:
            from AutoSegLib.training.cascade import load_previous_stage
            seg = self.load(case)[1]
            self._previous[case] = load_previous_stage(self.previous_folder, case, shape=seg.shape[1:])
        return self._previous[case]

    def __getstate__(self):  # memmaps are reopened in each worker process
        return {"folder": self.folder, "cases": self.cases, "previous_folder": self.previous_folder,
                "_open": {}, "_previous": {}}


def load_case(folder: Path, case: str, mmap: bool = True) -> Tuple[np.ndarray, np.ndarray, dict]:
    """Read one preprocessed case (``preprocessing.storage``); errors name the file and how to fix it."""
    from AutoSegLib.preprocessing.storage import load_preprocessed_case
    image, seg, props = load_preprocessed_case(folder, case, mmap=mmap)
    if seg is None:
        raise AutoSegError(f"{Path(folder) / (case + '_seg.npy')}: the training case has no preprocessed label. "
                           f"Re-run `autoseg preprocess` (the raw case needs labelsTr/{case}).")
    if image.ndim != seg.ndim or image.shape[1:] != seg.shape[1:] or seg.shape[0] != 1:
        raise AutoSegError(f"{Path(folder) / (case + '.npy')}: image shape {image.shape} and label shape {seg.shape} "
                           f"do not match (expected (C, *spatial) and (1, *spatial)). Re-run `autoseg preprocess`.")
    return image, seg, props


def check_preprocessed(work_dir: Path, plans, configuration: str) -> Tuple[Path, List[str]]:
    """Find a configuration's preprocessed data and check that it was made with these plans.

    Returns
    -------
    folder : Path
    cases : list of str
        Sorted case ids.

    Raises
    ------
    AutoSegError
        No preprocessed data, or cases made with other plans (their ``preprocessing_signature`` differs):
        the data is not used silently.
    """
    from AutoSegLib.preprocessing.dataset import preprocessed_folder, preprocessing_signature
    from AutoSegLib.preprocessing.storage import list_preprocessed_cases, read_case_properties

    folder = preprocessed_folder(work_dir, plans, configuration)
    cases = list_preprocessed_cases(folder)
    if not cases:
        raise AutoSegError(f"{folder}: no preprocessed data for configuration {configuration!r}. Run "
                           f"`autoseg preprocess {work_dir} -c {configuration}` (or plan-and-preprocess) first.")
    want = preprocessing_signature(plans, configuration)
    stale = []
    for case in cases:
        props = read_case_properties(folder, case) or {}
        if props.get("preprocessing_signature") != want:
            stale.append(case)
    if stale:
        raise AutoSegError(f"{folder}: {len(stale)} of {len(cases)} preprocessed cases (e.g. {stale[:3]}) were made "
                           f"with other plans (preprocessing signature differs from plans.json). Re-run "
                           f"`autoseg preprocess {work_dir} -c {configuration} --force` before training.")
    return folder, cases


def class_locations(props: dict, ndim: int) -> Dict[str, np.ndarray]:
    """Stored foreground locations per class: ``{key: int array (N, ndim)}`` (spatial coordinates only;
    a leading channel coordinate, if stored, is dropped). Classes without locations are left out."""
    locs = props.get("class_locations") or {}
    out = {}
    for k, v in locs.items():
        a = np.asarray(v, dtype=np.int64)
        if a.size == 0:
            continue
        a = a.reshape(len(a), -1)
        out[str(k)] = a[:, -ndim:]
    return out
