"""The dataset fingerprint: a typed, frozen record saved as fingerprint.json (schema-versioned).

Spatial tuples are in array order ((z, y, x) or (y, x)), *before* any transposition. Intensity
statistics are keyed by channel index as a string ("0", "1", ...), like dataset.json's channel_names.
"""
from __future__ import annotations

import os
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json

SCHEMA_VERSION = 1
INTENSITY_KEYS = ("mean", "median", "std", "min", "max", "percentile_00_5", "percentile_99_5")


@dataclass(frozen=True)
class CaseFingerprint:
    """One training case.

    ``bbox`` is the non-zero bounding box (union over channels) as half-open ``(start, stop)`` per axis;
    ``shape_after_crop`` is its extent. ``foreground_bbox`` is the bounding box of the label's foreground
    (every value > 0) in the same array coordinates, None when the case has none or the fingerprint was
    made before it was recorded."""
    case_id: str
    spacing: Tuple[float, ...]
    shape_before_crop: Tuple[int, ...]
    shape_after_crop: Tuple[int, ...]
    bbox: Tuple[Tuple[int, int], ...]
    relative_size_after_cropping: float
    foreground_voxels: int
    foreground_bbox: Optional[Tuple[Tuple[int, int], ...]] = None


@dataclass(frozen=True)
class Fingerprint:
    """What planning needs to know about a dataset.

    Attributes
    ----------
    dataset_name, dataset_path : str
    channel_names : dict      ``{"0": "CT", ...}``
    labels : dict             dataset.json "labels"
    regions_class_order : tuple or None
    file_ending : str
    ndim : int                2 or 3 (spatial dimensions of the images)
    cases : tuple of CaseFingerprint, sorted by case id
    intensity_properties : dict
        Per channel ("0", ...): mean, median, std, min, max, percentile_00_5, percentile_99_5 of the
        pooled foreground samples (None where no case has foreground).
    median_relative_size_after_cropping : float
        Median over cases of (voxels after crop) / (voxels before crop).
    foreground_samples_per_case : int
        Samples drawn per case and channel (with replacement, seed 1234) for the statistics.
    dataset_signature : str
        io.datasets.dataset_signature of the files it was computed from ('' when unknown): a fingerprint
        whose signature differs from the dataset's is stale.
    """
    dataset_name: str
    dataset_path: str
    channel_names: Dict[str, str]
    labels: Dict[str, object]
    regions_class_order: Optional[Tuple[int, ...]]
    file_ending: str
    ndim: int
    cases: Tuple[CaseFingerprint, ...]
    intensity_properties: Dict[str, Dict[str, Optional[float]]]
    median_relative_size_after_cropping: float
    foreground_samples_per_case: int
    dataset_signature: str = ""
    schema_version: int = SCHEMA_VERSION

    # ---- derived ----
    @property
    def num_cases(self) -> int:
        return len(self.cases)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def case_ids(self) -> Tuple[str, ...]:
        return tuple(c.case_id for c in self.cases)

    @property
    def spacings(self) -> np.ndarray:
        """(num_cases, ndim) float64."""
        return np.array([c.spacing for c in self.cases], dtype=np.float64).reshape(-1, self.ndim)

    @property
    def shapes_after_crop(self) -> np.ndarray:
        """(num_cases, ndim) int64."""
        return np.array([c.shape_after_crop for c in self.cases], dtype=np.int64).reshape(-1, self.ndim)

    @property
    def has_foreground_boxes(self) -> bool:
        """Every case with foreground has its ``foreground_bbox`` (fingerprints before it was recorded have none)."""
        return all(c.foreground_bbox is not None for c in self.cases if c.foreground_voxels != 0)

    def foreground_extents_mm(self) -> np.ndarray:
        """(cases with foreground, ndim) float64: each case's foreground bounding box in millimetres, array order."""
        rows = [[(b - a) * s for (a, b), s in zip(c.foreground_bbox, c.spacing)]
                for c in self.cases if c.foreground_bbox is not None]
        return np.array(rows, dtype=np.float64).reshape(-1, self.ndim)

    @property
    def median_spacing(self) -> Tuple[float, ...]:
        return tuple(float(v) for v in np.median(self.spacings, 0))

    @property
    def median_shape(self) -> Tuple[float, ...]:
        """Median shape after cropping."""
        return tuple(float(v) for v in np.median(self.shapes_after_crop, 0))

    @property
    def class_names(self) -> Tuple[str, ...]:
        return tuple(self.labels)

    def label_layout(self):
        from AutoSegLib.io.labels import LabelLayout
        return LabelLayout.from_dataset_labels(self.labels, self.regions_class_order, source="fingerprint.json")

    # ---- JSON ----
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: "str | os.PathLike") -> Path:
        """Write atomically; returns the path."""
        return write_json(path, self.to_dict())

    def to_reference_dict(self) -> dict:
        """The same facts in the reference implementation's dataset_fingerprint.json layout."""
        return {
            "foreground_intensity_properties_per_channel": self.intensity_properties,
            "median_relative_size_after_cropping": self.median_relative_size_after_cropping,
            "shapes_after_crop": [list(c.shape_after_crop) for c in self.cases],
            "spacings": [list(c.spacing) for c in self.cases],
        }

    @classmethod
    def from_reference_dict(cls, ref: dict, dataset_json: dict, dataset_name: str = "",
                            dataset_path: str = "") -> "Fingerprint":
        """Build a fingerprint from the reference implementation's dataset_fingerprint.json and the
        dataset.json it belongs to (cases are named case_000, ...; boxes and shapes before cropping are
        unknown there and set to the cropped extent)."""
        try:
            spacings, shapes = ref["spacings"], ref["shapes_after_crop"]
            channels = dataset_json.get("channel_names", dataset_json.get("modality"))
            cases = tuple(CaseFingerprint(
                case_id=f"case_{i:03d}", spacing=tuple(float(v) for v in sp), shape_before_crop=tuple(int(v) for v in sh),
                shape_after_crop=tuple(int(v) for v in sh), bbox=tuple((0, int(v)) for v in sh),
                relative_size_after_cropping=float(ref["median_relative_size_after_cropping"]), foreground_voxels=-1)
                for i, (sp, sh) in enumerate(zip(spacings, shapes)))
            rco = dataset_json.get("regions_class_order")
            return cls(dataset_name=dataset_name or str(dataset_json.get("name", "")), dataset_path=dataset_path,
                       channel_names={str(k): str(v) for k, v in channels.items()}, labels=dict(dataset_json["labels"]),
                       regions_class_order=tuple(rco) if rco else None,
                       file_ending=str(dataset_json.get("file_ending", ".nii.gz")), ndim=len(spacings[0]),
                       cases=cases,
                       intensity_properties={str(k): dict(v) for k, v in
                                             ref["foreground_intensity_properties_per_channel"].items()},
                       median_relative_size_after_cropping=float(ref["median_relative_size_after_cropping"]),
                       foreground_samples_per_case=0)
        except (KeyError, TypeError, AttributeError, IndexError) as exc:
            raise AutoSegError(f"not a reference dataset_fingerprint.json / dataset.json pair ({exc!r}).") from None

    @classmethod
    def from_dict(cls, d: dict, source: str = "fingerprint") -> "Fingerprint":
        if not isinstance(d, dict) or d.get("schema_version") != SCHEMA_VERSION:
            version = d.get("schema_version") if isinstance(d, dict) else None
            raise AutoSegError(f"{source}: fingerprint schema version {version!r} is not supported (expects "
                               f"{SCHEMA_VERSION}). Re-run `autoseg fingerprint` to regenerate it.")
        _check_keys(cls, d, source)
        try:
            d = dict(d)
            cases = []
            for c in d["cases"]:
                _check_keys(CaseFingerprint, c, f"{source}: case")
                c = {k: _tupleize(v) for k, v in c.items()}
                cases.append(CaseFingerprint(**c))
            d["cases"] = tuple(cases)
            if d.get("regions_class_order") is not None:
                d["regions_class_order"] = tuple(d["regions_class_order"])
            return cls(**d)
        except (KeyError, TypeError) as exc:
            raise AutoSegError(f"{source}: malformed fingerprint ({exc}). Re-run `autoseg fingerprint`.") from None

    @classmethod
    def from_json(cls, path: "str | os.PathLike") -> "Fingerprint":
        from AutoSegLib.io.jsonfile import read_json
        path = Path(path)
        data = read_json(path, "a fingerprint", hint="Delete it and run `autoseg fingerprint`.",
                         missing="fingerprint file not found. Run `autoseg fingerprint` first.", expect=dict)
        return cls.from_dict(data, source=str(path))


def _check_keys(cls, d: dict, source: str) -> None:
    names = {f.name for f in fields(cls)}
    unknown = set(d) - names
    if unknown:
        raise AutoSegError(f"{source}: unknown keys {sorted(unknown)} (written by another AutoSeg version?).")


def _tupleize(value):
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value
