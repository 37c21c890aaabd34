"""What predict reports per case: label volumes, uncertainty summary, the slices to check, fingerprint warnings,
and ``predict_summary.json``.

Definitions (README.md "Where to correct" repeats them):

- region R of a case: the voxels within `MARGIN_MM` of its predicted foreground (the whole image when nothing
  is predicted). ``mean_uncertainty`` is the mean over R of the members' disagreement (mutual information,
  `inference.uncertainty`; the entropy when the ensemble has one member): unlike the entropy, it ranks whole
  cases by their Dice error (bench/README.md). The whole-image mean would mostly measure how much certain
  background the scan holds.
- uncertain volume of a slice: the integral of the uncertainty over the slice, sum(u) x voxel volume, in ml
  (a voxel of uncertainty 1 counts fully, 0.5 half); `rank_slices` keeps the largest, at least
  `MIN_SLICE_DISTANCE_MM` apart within one orientation.
- "far outside the training fingerprint": a spacing below half the smallest, or above twice the largest,
  training spacing on some axis; an intensity median (of the predicted foreground, or of the whole image
  when nothing is predicted) outside the training foreground's [0.5, 99.5] percentile range widened by half
  its width on each side (`fingerprint_warnings`).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.io.geometry import Geometry

log = logging.getLogger(__name__)

MARGIN_MM = 10.0
MIN_SLICE_DISTANCE_MM = 10.0
SLICE_COUNT = 5
SPACING_FACTOR = 2.0
INTENSITY_WIDEN = 0.5
SUMMARY_NAME = "predict_summary.json"
ORIENTATIONS = ("sagittal", "coronal", "axial")  # slices across physical x (L), y (P), z (S)


def analysis_region(labels: np.ndarray, geometry: Geometry, margin_mm: float = MARGIN_MM) -> np.ndarray:
    """R: a boolean mask of the voxels within ``margin_mm`` (physical distance) of the predicted foreground,
    the foreground included; the whole image when ``labels`` has no foreground. ``labels`` in array order."""
    from scipy.ndimage import distance_transform_edt
    fg = np.asarray(labels) > 0
    if not fg.any():
        return np.ones(fg.shape, bool)
    # the distances only within the foreground's box enlarged by the margin: R lies inside it, and a CT-sized
    # image's whole-grid distance map would take gigabytes
    box = []
    for axis, (size, spacing) in enumerate(zip(fg.shape, geometry.spacing)):
        idx = np.flatnonzero(fg.any(axis=tuple(a for a in range(fg.ndim) if a != axis)))
        pad = int(np.ceil(margin_mm / float(spacing)))
        box.append(slice(max(0, int(idx[0]) - pad), min(size, int(idx[-1]) + 1 + pad)))
    box = tuple(box)
    out = np.zeros(fg.shape, bool)
    out[box] = distance_transform_edt(~fg[box], sampling=geometry.spacing) <= margin_mm
    return out


def mean_uncertainty(uncertainty: np.ndarray, labels: np.ndarray, geometry: Geometry) -> float:
    """Mean of ``uncertainty`` over the case's region R (`analysis_region`)."""
    return float(np.mean(uncertainty[analysis_region(labels, geometry)], dtype=np.float64))


def _value_sets(layout) -> List[Tuple[str, set]]:
    """(name, label values in the label map that belong to it) for each foreground label or region."""
    return [(n, set(v) if isinstance(v, tuple) else {int(v)})
            for n, v in zip(layout.names, layout.values) if v != 0]


def volumes_ml(labels: np.ndarray, geometry: Geometry, layout) -> Dict[str, float]:
    """Volume of each foreground label (a region: of its label values) in millilitres."""
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    labels = np.asarray(labels)
    sets = _value_sets(layout)
    per_value = {v: int(np.count_nonzero(labels == v)) for _, members in sets for v in members}
    return {name: round(sum(per_value.get(v, 0) for v in members) * voxel_ml, 4)
            for name, members in sets}


def axis_orientation(geometry: Geometry, axis: int) -> str:
    """``axial``, ``coronal`` or ``sagittal``: the name of the slices across array axis ``axis``, from the
    physical (LPS) direction that axis runs along most."""
    column = geometry.direction_matrix[:, geometry.ndim - 1 - axis]  # ITK index axes are the array axes reversed
    return ORIENTATIONS[int(np.argmax(np.abs(column)))] if geometry.ndim == 3 else "axial"


def index_to_lps(geometry: Geometry, index_zyx: Sequence[float]) -> List[float]:
    """Physical LPS point (mm) of a continuous array index (z, y, x)."""
    ijk = np.asarray(index_zyx, float)[::-1]
    point = np.asarray(geometry.origin) + geometry.direction_matrix @ (np.asarray(geometry.spacing_xyz) * ijk)
    return [round(float(v), 3) for v in point]


def rank_slices(uncertainty: np.ndarray, labels: np.ndarray, geometry: Geometry, layout, count: int = SLICE_COUNT,
                min_distance_mm: float = MIN_SLICE_DISTANCE_MM) -> List[dict]:
    """The slices with the most uncertain volume, over the three orientations.

    Parameters
    ----------
    uncertainty : ndarray (z, y, x), float in [0, 1]
    labels : ndarray (z, y, x), int
        The predicted label map (same grid).
    geometry : Geometry
    layout : io.labels.LabelLayout
    count : int
        How many slices at most.
    min_distance_mm : float
        A slice closer than this to an already chosen slice of the same orientation is passed over (the
        neighbours of a slice show the same place).

    Returns
    -------
    list of dict, most uncertain first
        ``{"axis", "index" (along that array axis), "position_lps" (the uncertainty-weighted centre of the
        slice, mm), "uncertain_volume_ml", "labels"}``; ``labels``: the foreground labels predicted within
        2 voxels of the slice's uncertain voxels (uncertainty >= half the slice's maximum), most voxels first.
        Empty for 2D images and when the map is all zero.
    """
    u = np.asarray(uncertainty, dtype=np.float64)
    if u.ndim != 3 or not np.any(u > 0):
        return []
    voxel_ml = float(np.prod(geometry.spacing)) / 1000.0
    candidates = []
    for axis in range(3):
        other = tuple(a for a in range(3) if a != axis)
        per_slice = u.sum(axis=other) * voxel_ml
        for index in np.argsort(-per_slice, kind="stable"):
            if per_slice[index] <= 0:
                break
            candidates.append((float(per_slice[index]), axis, int(index)))
    candidates.sort(key=lambda c: -c[0])
    chosen: List[Tuple[float, int, int]] = []
    for vol, axis, index in candidates:
        if len(chosen) >= count:
            break
        if any(a == axis and abs(i - index) * geometry.spacing[axis] < min_distance_mm for _, a, i in chosen):
            continue
        chosen.append((vol, axis, index))
    return [_slice_entry(u, labels, geometry, layout, axis, index, vol) for vol, axis, index in chosen]


def _slice_entry(u, labels, geometry, layout, axis, index, vol) -> dict:
    from scipy.ndimage import binary_dilation

    sl = [slice(None)] * 3
    sl[axis] = index
    us, ls = u[tuple(sl)], np.asarray(labels)[tuple(sl)]
    grids = np.indices(us.shape, dtype=np.float64)
    centre_2d = [float((g * us).sum() / us.sum()) for g in grids]
    centre = centre_2d[:axis] + [float(index)] + centre_2d[axis:]
    near = binary_dilation(us >= 0.5 * us.max(), iterations=2)
    values, counts = np.unique(ls[near], return_counts=True)
    per_value = dict(zip(values.tolist(), counts.tolist()))
    found = [(sum(per_value.get(v, 0) for v in members), name) for name, members in _value_sets(layout)]
    names = [name for n, name in sorted(found, key=lambda t: -t[0]) if n > 0]
    return {"axis": axis_orientation(geometry, axis), "index": int(index),
            "position_lps": index_to_lps(geometry, centre), "uncertain_volume_ml": round(vol, 4), "labels": names}


def load_training_fingerprint(model) -> Optional[dict]:
    """``{"spacings": (N, ndim) array order, "intensity": {channel: {percentile_00_5, percentile_99_5, ...}}}``
    from the model folder's fingerprint.json (AutoSeg) or dataset_fingerprint.json (nnU-Net), None when the
    model keeps neither (or it cannot be read: then a log line, not a failure)."""
    from AutoSegLib.io.jsonfile import JSONFileError, read_json
    folder = Path(model.path)
    for name in ("fingerprint.json", "dataset_fingerprint.json"):
        path = folder / name
        if not path.is_file():
            continue
        try:
            d = read_json(path, "a training fingerprint", expect=dict)
            if "cases" in d:
                spacings = [c["spacing"] for c in d["cases"]]
                intensity = d.get("intensity_properties") or {}
            else:
                spacings = d["spacings"]
                intensity = d.get("foreground_intensity_properties_per_channel") or {}
            return {"spacings": np.asarray(spacings, float), "intensity": {str(k): v for k, v in intensity.items()},
                    "source": str(path)}
        except (JSONFileError, OSError, ValueError, KeyError, TypeError) as exc:
            log.warning("%s: unreadable training fingerprint (%s); no spacing/intensity warnings", path, exc)
    return None


def fingerprint_warnings(fingerprint: Optional[dict], images: np.ndarray, geometry: Geometry,
                         labels: Optional[np.ndarray] = None, channel_names: Optional[Sequence[str]] = None
                         ) -> List[str]:
    """Warnings when an image's spacing or intensities lie far outside the model's training data.

    Parameters
    ----------
    fingerprint : dict or None
        From `load_training_fingerprint` (None: no warnings).
    images : ndarray (C, *spatial)
        The case's channels as read (before any normalisation).
    geometry : Geometry
    labels : ndarray (*spatial), optional
        The predicted label map: intensities are taken over its foreground (as the fingerprint's were over
        the training labels' foreground), over the whole image when it has none or is not given.
    channel_names : sequence of str, optional

    Returns
    -------
    list of str
        Rules: spacing on an axis < min / `SPACING_FACTOR` or > max x `SPACING_FACTOR` of the training spacings;
        a channel's median outside [p0.5 - w, p99.5 + w] of the training foreground, w = `INTENSITY_WIDEN` x
        (p99.5 - p0.5).
    """
    if not fingerprint:
        return []
    out = []
    spacings = fingerprint["spacings"]
    if spacings.ndim == 2 and spacings.shape[1] == geometry.ndim and len(spacings):
        lo, hi = spacings.min(0), spacings.max(0)
        for axis, s in enumerate(geometry.spacing):
            if s < lo[axis] / SPACING_FACTOR or s > hi[axis] * SPACING_FACTOR:
                out.append(f"spacing {_fmt(geometry.spacing[::-1])} mm (x, y, z) is far from the training images' "
                           f"{_fmt(lo[::-1])}..{_fmt(hi[::-1])} mm: the model has not seen this resolution")
                break
    mask = None if labels is None else np.asarray(labels) > 0
    if mask is not None and not mask.any():
        mask = None
    for c in range(images.shape[0]):
        props = fingerprint["intensity"].get(str(c)) or {}
        p0, p1 = props.get("percentile_00_5"), props.get("percentile_99_5")
        if p0 is None or p1 is None:
            continue
        values = images[c][mask] if mask is not None else images[c]
        median = float(np.median(values))
        widen = INTENSITY_WIDEN * (float(p1) - float(p0))
        if not float(p0) - widen <= median <= float(p1) + widen:
            name = channel_names[c] if channel_names and c < len(channel_names) else f"channel {c}"
            where = "predicted foreground" if mask is not None else "whole image"
            out.append(f"{name}: intensity median {median:.4g} ({where}) is far outside the training foreground's "
                       f"0.5-99.5 percentile range {float(p0):.4g}..{float(p1):.4g}: check the modality or its scaling")
    return out


def _fmt(values) -> str:
    return "x".join(f"{float(v):.3g}" for v in values)


def case_row(case: str, inputs: Sequence, status: str = "ok", error: Optional[str] = None, seconds: float = 0.0,
             output=None, uncertainty=None, volumes: Optional[Dict[str, float]] = None,
             mean_unc: Optional[float] = None, slices: Optional[List[dict]] = None,
             warnings: Optional[List[str]] = None) -> dict:
    """One row of predict_summary.json (docs: interfaces of predict, README.md)."""
    return {"case": case, "inputs": [str(p) for p in inputs], "status": status, "error": error,
            "seconds": round(float(seconds), 3), "output": None if output is None else str(output),
            "uncertainty": None if uncertainty is None else str(uncertainty), "volumes_ml": dict(volumes or {}),
            "mean_uncertainty": None if mean_unc is None else round(float(mean_unc), 6),
            "uncertain_slices": list(slices or []), "warnings": list(warnings or [])}


def write_summary(folder, model, settings: dict, rows: List[dict]) -> Path:
    """Write ``<folder>/predict_summary.json`` atomically: version, model, settings, cases."""
    from AutoSegLib.io.atomic import write_json
    return write_json(Path(folder) / SUMMARY_NAME, {"version": 1, "model": str(model.path), "settings": settings,
                                                    "cases": rows})


def short_line(row: dict) -> str:
    """A one-line rendering of a row for the console."""
    if row["status"] != "ok":
        return f"{row['case']}: {row['status'].upper()}" + (f": {row['error']}" if row.get("error") else "")
    parts = [f"{row['case']}: ok {row['seconds']:.1f}s"]
    if row["volumes_ml"]:
        parts.append(", ".join(f"{k} {v:.1f} ml" for k, v in row["volumes_ml"].items()))
    if row["mean_uncertainty"] is not None:
        parts.append(f"mean uncertainty {row['mean_uncertainty']:.3f}")
    if row["uncertain_slices"]:
        parts.append("check " + ", ".join(f"{s['axis']} {s['index']}" for s in row["uncertain_slices"]))
    line = "; ".join(parts)
    for w in row["warnings"]:
        line += f"\n  WARNING: {w}"
    return line


def error_message(exc: BaseException) -> str:
    """The message a failed case's row carries: an AutoSegError's own text, the operating system's cause,
    or the exception's type and text."""
    from AutoSegLib.errors import AutoSegError, os_error_message
    if isinstance(exc, AutoSegError):
        return str(exc)
    if isinstance(exc, OSError):
        return os_error_message(exc)
    return f"{type(exc).__name__}: {exc}"


class Report:
    """Collects the rows of one predict run, emits a ``case`` event per case and rewrites the summary file.

    Parameters
    ----------
    model : models.folder.Model
    folder : path or None
        Output folder of the summary (None: a single output file, no summary written). The summary is
        rewritten after each case, except while every case so far failed and ``settings`` has no
        ``continue_on_error``: a run that stops at its first case writes nothing.
    failed : dict or None
        ``{case: (files, message)}``: cases refused before prediction (`files.find_cases`).
    progress : callable or None
    settings : dict
        The run's settings, written as they are.
    """

    def __init__(self, model, folder, failed, progress, settings: dict):
        self.model, self.folder, self.progress, self.settings = model, folder, progress, dict(settings)
        self.fingerprint = load_training_fingerprint(model)
        self.rows: List[dict] = []
        self._case = None
        for case, (files, message) in (failed or {}).items():
            self._add(case_row(case, files, "failed", message))

    @property
    def failures(self) -> int:
        return sum(r["status"] == "failed" for r in self.rows)

    def start(self, case: str, files) -> None:
        import time
        self._case = {"case": case, "files": list(files), "t0": time.monotonic(), "details": {}}

    def predicted(self, images: np.ndarray, geometry: Geometry, labels: np.ndarray, uncertainty: Optional[dict]
                  ) -> None:
        """Everything the row says about the prediction (before the images are let go)."""
        layout = self.model.label_layout
        names = [self.model.plans.channel_names[k] for k in sorted(self.model.plans.channel_names, key=int)]
        d = {"volumes": volumes_ml(labels, geometry, layout),
             "warnings": fingerprint_warnings(self.fingerprint, images, geometry, labels, names)}
        if uncertainty is not None:
            u = uncertainty["uncertainty"]
            d["mean_unc"] = mean_uncertainty(uncertainty.get("disagreement", u), labels, geometry)
            d["slices"] = rank_slices(u, labels, geometry, layout)
        for w in d["warnings"]:
            log.warning("%s: %s", self._case["case"], w)
        self._case["details"] = d

    def done(self, output, uncertainty_file=None) -> None:
        c = self._case
        self._add(case_row(c["case"], c["files"], "ok", None, self._elapsed(), output, uncertainty_file,
                           **c["details"]))

    def failed(self, exc: BaseException) -> None:
        c = self._case
        self._add(case_row(c["case"], c["files"], "failed", error_message(exc), self._elapsed()))

    def skipped(self, case: str, files, output) -> None:
        self._add(case_row(case, files, "skipped", None, 0.0, output))

    def _elapsed(self) -> float:
        import time
        return time.monotonic() - self._case["t0"]

    def _add(self, row: dict) -> None:
        from AutoSegLib.progress import emit
        self.rows.append(row)
        emit(self.progress, "case", **row)
        # a run stopped by its first case (no --continue-on-error) leaves the output folder as it was
        if self.folder is not None and (self.settings.get("continue_on_error")
                                        or any(r["status"] != "failed" for r in self.rows)):
            write_summary(self.folder, self.model, self.settings, self.rows)
