"""Per-voxel uncertainty of an ensemble prediction, gathered while the ensemble runs (no extra network passes).

The ensemble's members are every fold times every test-time mirroring. `EnsembleStatistics` is handed to
the sliding-window stitchers; for each window it receives every member's logits (mirrored back), turns them
into probabilities and accumulates, with the same Gaussian window weights as the logits:

- ``P``: the members' mean probabilities, (K, *spatial);
- ``E``: the members' mean normalised entropy, (*spatial);
- ``Q``: the members' mean squared probability norm ``sum_k p_k^2``, (*spatial).

From these, three measures in [0, 1] (softmax models: entropies normalised by log K; region models: each
region a binary variable, normalised by log 2, averaged over regions):

- ``entropy``: normalised entropy of the mean probabilities, H(P) / log K (total predictive uncertainty);
- ``mutual_information``: H(P) - E, the members' disagreement (BALD; >= 0 by Jensen's inequality, 0 when
  every member says the same);
- ``variance``: the members' spread ``E_m ||p_m - P||^2 = Q - ||P||^2`` over its largest value 1 - 1/K.

What predict uses (the choice and the bench behind it: README.md "Where to correct", bench/README.md):

- the map it writes is `MEASURE`, the normalised entropy of the prediction's own probabilities (the softmax
  of the ensemble's mean logits, from which the label map is made; `entropy_of_logits`): of the measures it
  puts the most wrong voxels among the most uncertain ones;
- the case's ``mean_uncertainty`` (`inference.summary`) is the mean of `DISAGREEMENT`, the members' mutual
  information: unlike the entropy, its case mean grows with the case's Dice error.

With a single member (one fold, no mirroring) there is no disagreement: the entropy serves for both.

Memory: the entropy needs nothing beyond the logits predict keeps anyway (one float32 map of the
preprocessed grid, then one of the input grid). With more than one member `EnsembleStatistics` adds K + 3
float32 arrays of the padded preprocessed grid (the stitcher's own logits accumulator holds K + 1 float16
arrays: about 3x its memory for K = 2) plus one window batch of member probabilities, and the disagreement is
a second float32 map of the input grid.
"""
from __future__ import annotations

import math
from typing import Optional, Sequence, Tuple

import numpy as np

MEASURES = ("entropy", "mutual_information", "variance")
MEASURE = "entropy"  # the map: of the three it points at wrong voxels best (bench/README.md, uncertainty_la.py)
DISAGREEMENT = "mutual_information"  # the case's mean: it ranks cases by their Dice error (the entropy does not)
METADATA_KEY = "autoseg_uncertainty"


def _numpy(x) -> np.ndarray:
    if type(x).__module__.startswith("torch"):
        return x.detach().float().cpu().numpy()
    return np.asarray(x, dtype=np.float32)


def _probabilities(logits: np.ndarray, regions: bool, axis: int) -> np.ndarray:
    if regions:
        return 1.0 / (1.0 + np.exp(-logits))
    e = np.exp(logits - logits.max(axis=axis, keepdims=True))
    e /= e.sum(axis=axis, keepdims=True)
    return e


def _xlogx(p: np.ndarray) -> np.ndarray:
    with np.errstate(divide="ignore", invalid="ignore"):
        return np.where(p > 0, p * np.log(np.maximum(p, 1e-30)), 0.0).astype(np.float32, copy=False)


def normalised_entropy(p: np.ndarray, regions: bool = False, axis: int = 0) -> np.ndarray:
    """Entropy of probabilities along ``axis`` over its largest value, in [0, 1].

    Parameters
    ----------
    p : ndarray, float
        Softmax probabilities (summing to 1 along ``axis``), or per-region sigmoid probabilities.
    regions : bool
        Region (sigmoid) probabilities: each channel a binary variable, entropy / log 2, averaged over channels.
    axis : int
        The channel axis.

    Returns
    -------
    ndarray, float32, ``p``'s shape without ``axis``
    """
    p = np.asarray(p, dtype=np.float32)
    k = p.shape[axis]
    if regions:
        h = -(_xlogx(p) + _xlogx(1.0 - p)).mean(axis=axis) / math.log(2.0)
    else:
        if k < 2:
            return np.zeros(np.delete(p.shape, axis), np.float32)
        h = -_xlogx(p).sum(axis=axis) / math.log(k)
    return np.clip(h, 0.0, 1.0).astype(np.float32, copy=False)


def entropy_of_logits(logits, regions: bool = False, slab_voxels: int = 16_000_000) -> np.ndarray:
    """Normalised entropy of the probabilities of stitched logits (K, *spatial): softmax (regions: sigmoid),
    then `normalised_entropy`, in slabs along the first spatial axis; torch or numpy logits, float32 out."""
    spatial = tuple(logits.shape[1:])
    out = np.empty(spatial, np.float32)
    per_slice = int(np.prod(spatial[1:])) if len(spatial) > 1 else 1
    step = max(1, slab_voxels // max(per_slice * int(logits.shape[0]), 1))
    for z0 in range(0, spatial[0], step):
        z = _numpy(logits[:, z0:z0 + step])
        out[z0:z0 + step] = normalised_entropy(_probabilities(z, regions, 0), regions, 0)
    return out


def ensemble_members(model, configuration: str, folds=None, tta: bool = True) -> int:
    """Folds x mirrorings that predict one case of ``configuration``."""
    from AutoSegLib.inference.runner import select_folds
    from AutoSegLib.inference.sliding_window import mirror_combinations
    cm = model.configurations[configuration]
    mirrors = len(mirror_combinations(tuple(cm.mirror_axes))) + 1 if tta else 1
    return len(select_folds(model, configuration, folds)) * mirrors


def _squared_norm(p: np.ndarray, regions: bool, axis: int) -> np.ndarray:
    return (p * p).mean(axis=axis) if regions else (p * p).sum(axis=axis)


def measure_from_moments(mean_p: np.ndarray, mean_entropy: np.ndarray, mean_square: np.ndarray, measure: str,
                         regions: bool = False) -> np.ndarray:
    """One measure (see the module docstring) from the members' moments.

    Parameters
    ----------
    mean_p : ndarray (K, *spatial)
        Members' mean probabilities.
    mean_entropy, mean_square : ndarray (*spatial)
        Members' mean normalised entropy and mean ``sum_k p_k^2`` (regions: mean over regions of ``p^2``).
    measure : str
        One of `MEASURES`.
    regions : bool
        Region (sigmoid) probabilities.

    Returns
    -------
    ndarray (*spatial), float32 in [0, 1]
    """
    if measure not in MEASURES:
        raise ValueError(f"unknown uncertainty measure {measure!r}; choose one of {MEASURES}")
    if measure == "variance":
        k = mean_p.shape[0]
        top = 0.25 if regions else 1.0 - 1.0 / k
        if top <= 0:
            return np.zeros(mean_p.shape[1:], np.float32)
        out = (mean_square - _squared_norm(mean_p, regions, 0)) / top
    else:
        out = normalised_entropy(mean_p, regions)
        if measure == "mutual_information":
            out = out - mean_entropy
    return np.clip(out, 0.0, 1.0).astype(np.float32, copy=False)


class EnsembleStatistics:
    """Accumulates the members' moments during sliding-window prediction (one configuration, one case).

    The stitchers call `prepare` once per fold with the padded grid, `add_member` with each member's
    window logits (B, K, *patch) and `add_windows` once per window batch; `result` gives the moments in the
    unpadded grid, `uncertainty` the chosen measure.

    Parameters
    ----------
    regions : bool
        The model predicts regions (sigmoid per channel) instead of a softmax.
    """

    def __init__(self, regions: bool = False):
        self.regions = bool(regions)
        self.sum_p: Optional[np.ndarray] = None
        self.sum_e = self.sum_q = self.sum_w = None
        self.region: Optional[Tuple[slice, ...]] = None
        self.members = 0   # members per window (mirrorings), summed over folds
        self._batch = None
        self._count = 0
        self._weight = None
        self._saved = None
        self._shape = None
        self._pass_members = 0

    # ---- called by the stitchers ----
    def prepare(self, padded_spatial: Sequence[int], region: Tuple[slice, ...], weight) -> None:
        """Start one pass (one fold) over a padded grid; ``region`` are the stitcher's slices of the
        unpadded array (channel axis first), ``weight`` the window weight map (patch shape)."""
        shape = tuple(int(s) for s in padded_spatial)
        if self.sum_w is not None and self.sum_w.shape != shape:
            raise ValueError(f"ensemble statistics over {self.sum_w.shape} cannot take a pass over {shape}")
        self._shape = shape
        self.region = tuple(region)
        self._weight = _numpy(weight)
        self._pass_members = 0

    def add_member(self, logits) -> None:
        """One member's logits of the current window batch, (B, K, *patch), already mirrored back."""
        z = _numpy(logits)
        p = _probabilities(z, self.regions, 1)
        h = normalised_entropy(p, self.regions, 1)
        q = _squared_norm(p, self.regions, 1)
        if self._batch is None:
            self._batch = [p, h, q]
        else:
            for acc, v in zip(self._batch, (p, h, q)):
                acc += v
        self._count += 1

    def add_windows(self, slicers: Sequence[tuple]) -> None:
        """Add the current batch's member means at ``slicers`` (one per window, padded grid), weighted."""
        p, h, q = self._batch
        n = float(self._count)
        if self.sum_p is None:
            self.sum_p = np.zeros((p.shape[1], *self._shape), np.float32)
            self.sum_e, self.sum_q, self.sum_w = (np.zeros(self._shape, np.float32) for _ in range(3))
        w = self._weight
        for b, sl in enumerate(slicers):
            self.sum_p[(slice(None), *sl)] += p[b] * (w / n)
            self.sum_e[sl] += h[b] * (w / n)
            self.sum_q[sl] += q[b] * (w / n)
            self.sum_w[sl] += w
        self._pass_members = self._count
        self._batch, self._count = None, 0

    def finish_pass(self) -> None:
        """The pass (fold) is complete: count its members."""
        self.members += self._pass_members
        self._pass_members = 0

    def checkpoint(self) -> None:
        """Remember the accumulators (before a pass that may be abandoned and redone, e.g. a GPU running out
        of memory); `restore` goes back to them."""
        self._saved = None if self.sum_p is None else [a.copy() for a in (self.sum_p, self.sum_e, self.sum_q,
                                                                          self.sum_w)]

    def restore(self) -> None:
        if self._saved is None:
            self.sum_p = self.sum_e = self.sum_q = self.sum_w = None
        else:
            self.sum_p, self.sum_e, self.sum_q, self.sum_w = self._saved
        self._saved, self._batch, self._count, self._pass_members = None, None, 0, 0

    # ---- results ----
    def result(self) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
        """``(mean_p (K, *spatial), mean_entropy, mean_square)`` in the unpadded grid, float32."""
        if self.sum_w is None or self.sum_p is None:
            raise RuntimeError("no window was accumulated")
        reg = self.region[1:]
        w = np.maximum(self.sum_w[reg], np.finfo(np.float32).tiny)
        return self.sum_p[(slice(None), *reg)] / w, self.sum_e[reg] / w, self.sum_q[reg] / w

    def measure_name(self, measure: Optional[str] = None) -> str:
        """The measure actually computed: ``measure`` (default `MEASURE`), or ``entropy`` for one member."""
        measure = MEASURE if measure is None else measure
        return "entropy" if self.members <= 1 else measure

    def uncertainty(self, measure: Optional[str] = None) -> np.ndarray:
        """The measure (see `measure_name`) in the unpadded preprocessed grid, float32 in [0, 1]."""
        mean_p, mean_e, mean_q = self.result()
        return measure_from_moments(mean_p, mean_e, mean_q, self.measure_name(measure), self.regions)


def export_uncertainty(values: np.ndarray, properties: dict, plans, configuration: str) -> np.ndarray:
    """An uncertainty map of the preprocessed grid -> the raw image grid, by the probabilities' path back.

    Resampled like the probabilities (the configuration's probability resampling settings), clipped to
    [0, 1], pasted into the crop box (0 outside: the cropped-away region is background for certain) and
    transposed back.

    Parameters
    ----------
    values : ndarray (*preprocessed spatial), float
    properties : dict
        From ``preprocess_case``.
    plans : Plans
    configuration : str

    Returns
    -------
    ndarray (*raw spatial), float32 in [0, 1]
    """
    import inspect

    from AutoSegLib.inference.export import case_properties
    from AutoSegLib.preprocessing.resampling import resample_image

    conf = plans.configuration(configuration)
    props = case_properties(properties)
    spacing = props["spacing"]
    current = tuple(conf.spacing) if len(conf.spacing) == len(spacing) else (spacing[0], *conf.spacing)
    target = props["shape_after_cropping"]
    values = np.asarray(values, dtype=np.float32)
    if tuple(values.shape) != tuple(target):
        extra = {"new_spacing": tuple(spacing)} if "new_spacing" in inspect.signature(resample_image).parameters else {}
        values = resample_image(values[None].astype(np.float64), current, target, conf.resampling,
                                is_probabilities=True, **extra)[0]
    out = np.zeros(props["shape_before_cropping"], np.float32)
    out[tuple(slice(lo, hi) for lo, hi in props["bbox"])] = np.clip(values, 0.0, 1.0)
    back = tuple(int(a) for a in plans.transpose_backward)
    return np.ascontiguousarray(out.transpose(back)) if back != tuple(range(len(back))) else out


def write_uncertainty(values: np.ndarray, geometry, path, measure: str, members: int):
    """Write an uncertainty map (float32, the label map's grid) atomically, read back and compared.

    The measure goes into the image's metadata: the key ``autoseg_uncertainty`` (NRRD, MHA keep it) and,
    for formats without free keys (NIfTI), the description field as ``autoseg_uncertainty=<measure>``
    (`read_measure` reads either).
    """
    from pathlib import Path

    import SimpleITK as sitk

    from AutoSegLib.io.atomic import atomic_path
    from AutoSegLib.io.images import _check_written

    array = np.ascontiguousarray(values, dtype=np.float32)
    image = sitk.GetImageFromArray(array)
    geometry.apply_to_sitk(image)
    note = f"{measure}; {members} member(s)"
    image.SetMetaData(METADATA_KEY, note)
    image.SetMetaData("ITK_FileNotes", f"{METADATA_KEY}={note}")
    path = Path(path)
    with atomic_path(path, verify=lambda tmp: _check_written(tmp, array)) as tmp:
        sitk.WriteImage(image, str(tmp), True)
    return path


def read_measure(path) -> Optional[str]:
    """The measure named in an uncertainty file's metadata (`write_uncertainty`), or None."""
    import SimpleITK as sitk

    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    reader.ReadImageInformation()
    keys = set(reader.GetMetaDataKeys())
    for key in (METADATA_KEY, "descrip", "ITK_FileNotes"):
        if key in keys:
            value = reader.GetMetaData(key)
            if key != METADATA_KEY:
                if not value.startswith(METADATA_KEY + "="):
                    continue
                value = value[len(METADATA_KEY) + 1:]
            return value.split(";")[0].strip()
    return None


def combine_configurations(per_configuration: dict) -> dict:
    """``{configuration: {"uncertainty", "measure", "members"[, "disagreement"]}}`` -> one such dict: one
    configuration's as it is, several averaged map by map (their grids are the same input grid)."""
    items = list(per_configuration.items())
    if len(items) == 1:
        return dict(items[0][1])
    out = {}
    for key in ("uncertainty", "disagreement"):
        maps = [d[key] for _, d in items if key in d]
        if len(maps) == len(items):
            total = maps[0].astype(np.float32, copy=True)
            for m in maps[1:]:
                total += m
            out[key] = total / np.float32(len(maps))
    measures = sorted({d["measure"] for _, d in items})
    out["measure"] = f"{'/'.join(measures)}, mean over configurations {', '.join(c for c, _ in items)}"
    out["members"] = int(sum(d["members"] for _, d in items))
    return out
