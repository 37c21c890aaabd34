"""Adding a corrected case to a training dataset in the raw layout.

``imagesTr/<case>_<XXXX><ending>`` (one file per channel) + ``labelsTr/<case><ending>`` + ``dataset.json``.
The folder and its dataset.json are created when needed; an existing dataset.json must have the same
label set (names and values) and channel count, or nothing is written. Existing cases are never touched:
a case name already present is refused. Every file is written atomically (AutoSegLib.io.atomic).
"""
from __future__ import annotations

import logging
import re
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.jsonfile import read_json

log = logging.getLogger(__name__)

_CASE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9_\-.]*$")


def _case_files(dataset: Path, case: str, ending: str) -> list:
    found = list((dataset / "imagesTr").glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}")) if (dataset / "imagesTr").is_dir() else []
    label = dataset / "labelsTr" / f"{case}{ending}"
    return found + ([label] if label.exists() else [])


def next_case_name(dataset_dir, prefix: str = "case", ending: str = ".nii.gz") -> str:
    """The first ``<prefix>_NNN`` with no file in the dataset."""
    dataset = Path(dataset_dir)
    i = 0
    while _case_files(dataset, f"{prefix}_{i:03d}", ending):
        i += 1
    return f"{prefix}_{i:03d}"


def check_dataset_compatible(dataset_dir, labels: Dict[str, int], n_channels: int) -> Optional[dict]:
    """Return the existing dataset.json (or None when there is none); raise when it does not match.

    Raises
    ------
    AutoSegError
        Different label set (names or values), different channel count, or an unreadable dataset.json.
    """
    path = Path(dataset_dir) / "dataset.json"
    if not path.is_file():
        return None
    existing = read_json(path, "a dataset.json", hint="Fix or remove it before adding cases.", expect=dict)
    theirs = existing.get("labels") or {}
    # "ignore" (partially annotated cases, train/partial.py) is not a label a segment carries
    if {str(k): v for k, v in theirs.items() if k != "ignore"} != {k: v for k, v in labels.items() if k != "ignore"}:
        raise AutoSegError(
            f"{path}: the dataset's labels {theirs} differ from this segmentation's {dict(labels)}. Rename or "
            f"remove segments so that names and values match the dataset, or choose another dataset folder.")
    channels = existing.get("channel_names") or {}
    if len(channels) != n_channels:
        raise AutoSegError(f"{path}: the dataset has {len(channels)} input channel(s) {channels}, this case has "
                           f"{n_channels}. Choose a dataset made with the same inputs, or another folder.")
    return existing


def add_case(dataset_dir, case_name: str, channels: Sequence[np.ndarray], geometry: Geometry,
             label: np.ndarray, labels: Dict[str, int], channel_names: Sequence[str],
             file_ending: str = ".nii.gz", dataset_name: Optional[str] = None) -> Dict[str, Path]:
    """Write one case (channel images + label) into a raw-layout dataset folder.

    Parameters
    ----------
    dataset_dir : path
        Created when missing, with a dataset.json made from ``labels``/``channel_names``.
    case_name : str
        Letters, digits, ``_-.``; must not exist yet in the dataset.
    channels : sequence of ndarray, each (z, y, x)
        Input images on ``geometry``, in channel order.
    geometry : Geometry
    label : ndarray (z, y, x), integer
        Values from ``labels``.
    labels : dict
        ``{"background": 0, name: value, ...}``.
    channel_names : sequence of str
        One per channel (dataset.json ``channel_names`` when the dataset is new).

    Returns
    -------
    dict
        ``{"images": [paths], "label": path, "dataset_json": path}``.

    Raises
    ------
    AutoSegError
        Bad case name, case already present, shapes differ, label values outside ``labels``, or a
        dataset.json with another label set or channel count.
    """
    from AutoSegLib.io.images import write_image

    dataset = Path(dataset_dir)
    if not _CASE_NAME.match(case_name or "") or case_name.endswith(file_ending):
        raise AutoSegError(f"Case name {case_name!r} is not valid: use letters, digits, '_', '-' or '.', "
                           f"without a file ending (e.g. 'liver_017').")
    if len(channels) != len(channel_names) or not channels:
        raise AutoSegError(f"{len(channels)} image(s) given for {len(channel_names)} channel name(s) "
                           f"{list(channel_names)}; give one volume per channel.")
    for c, arr in enumerate(channels):
        if arr.shape != label.shape:
            raise AutoSegError(f"Channel {c} ({channel_names[c]}) has size {arr.shape[::-1]}, the label "
                               f"{label.shape[::-1]} (x, y, z): all must share one grid.")
    if labels.get("background") != 0:
        raise AutoSegError(f"The label set {labels} must contain background = 0.")
    present = set(np.unique(label).tolist())
    unknown = present - set(labels.values())
    if unknown:
        raise AutoSegError(f"The label map holds values {sorted(unknown)} not in the label set {labels}.")
    existing = check_dataset_compatible(dataset, labels, len(channels))
    ending = existing.get("file_ending", file_ending) if existing else file_ending
    taken = _case_files(dataset, case_name, ending)
    if taken:
        raise AutoSegError(f"Case '{case_name}' already exists in {dataset} ({taken[0].name}); existing cases "
                           f"are never overwritten. Choose another case name (e.g. "
                           f"'{next_case_name(dataset, ending=ending)}').")

    images = []
    for c, arr in enumerate(channels):
        images.append(write_image(arr, geometry, dataset / "imagesTr" / f"{case_name}_{c:04d}{ending}"))
    label_dtype = np.uint8 if max(labels.values()) < 256 else np.int16
    label_path = write_image(label.astype(label_dtype), geometry, dataset / "labelsTr" / f"{case_name}{ending}")

    n_training = len(list((dataset / "labelsTr").glob(f"*{ending}")))
    if existing is None:
        data = {
            "name": dataset_name or dataset.name,
            "description": "cases added from 3D Slicer with AutoSeg",
            "channel_names": {str(i): str(n) for i, n in enumerate(channel_names)},
            "labels": dict(labels),
            "numTraining": n_training,
            "file_ending": ending,
        }
    else:
        data = dict(existing)
        data["numTraining"] = n_training
    json_path = write_json(dataset / "dataset.json", data)
    log.info("Added case %s to %s (%d training cases)", case_name, dataset, n_training)
    return {"images": images, "label": label_path, "dataset_json": json_path}
