"""Reading a raw dataset folder (the nnU-Net v2 raw layout) into a `Dataset` record.

Layout::

    DATASET/
      dataset.json      channel_names (or legacy "modality"), labels, numTraining, file_ending
      imagesTr/<case>_<XXXX><ending>    one file per channel, XXXX = 0000, 0001, ...
      labelsTr/<case><ending>
      imagesTs/ (optional, not read here)

A dataset.json may instead list its training files under "dataset" (``{case: {"images": [...],
"label": ...}}``, paths relative to the folder), as the reference allows.

`load_dataset` checks the structure only (files present, names, keys) and raises `DatasetError` listing
every structural problem; `verify_dataset` (io.verify) also reads every file. Nothing here writes.
"""
from __future__ import annotations

import json
import os
import re
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from AutoSegLib.errors import AutoSegError, DatasetError
from AutoSegLib.io.labels import LabelLayout

REQUIRED_KEYS = ("channel_names", "labels", "numTraining", "file_ending")
_CHANNEL_RE = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")
# files that operating systems and editors leave behind: never worth a warning
_IGNORED_NAMES = {".DS_Store", "Thumbs.db", "desktop.ini"}


@dataclass(frozen=True)
class CaseFiles:
    """The files of one training case: ``images`` one path per channel in channel order."""
    case_id: str
    images: Tuple[Path, ...]
    label: Optional[Path] = None


@dataclass(frozen=True)
class Dataset:
    """A raw dataset folder, structurally checked.

    Attributes
    ----------
    root : Path
        Absolute path of the dataset folder.
    name : str
        dataset.json "name", else the folder name.
    channel_names : dict
        ``{"0": "CT", ...}`` in channel order (legacy "modality" accepted).
    labels : LabelLayout
    file_ending : str
        Like ".nii.gz".
    raw_json : dict
        dataset.json as read.
    cases : dict
        ``{case_id: CaseFiles}`` sorted by case id.
    """
    root: Path
    name: str
    channel_names: Dict[str, str]
    labels: LabelLayout
    file_ending: str
    raw_json: dict = field(repr=False)
    cases: Dict[str, CaseFiles] = field(repr=False)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    @property
    def case_ids(self) -> Tuple[str, ...]:
        return tuple(self.cases)

    @property
    def num_training(self) -> int:
        return len(self.cases)


def default_work_dir(dataset_path: "str | os.PathLike") -> Path:
    """The default ``--output`` work folder: ``./autoseg_work/<dataset folder name>`` (absolute)."""
    return Path.cwd() / "autoseg_work" / Path(dataset_path).expanduser().resolve().name


def load_dataset(path: "str | os.PathLike") -> Dataset:
    """Read the structure of a raw dataset folder.

    Parameters
    ----------
    path : str or PathLike
        The dataset folder (the one holding dataset.json).

    Returns
    -------
    Dataset

    Raises
    ------
    DatasetError
        Listing every structural problem found (missing folder/keys/channels/labels, numTraining
        mismatch, ...). Image contents are not read; use `verify_dataset` for that.
    """
    dataset, errors, _ = scan_dataset(path)
    if errors:
        raise DatasetError(f"{Path(path)}: not a usable dataset ({len(errors)} problem(s)); run `autoseg verify` "
                           f"for a full report.", errors)
    return dataset


def scan_dataset(path: "str | os.PathLike") -> Tuple[Optional[Dataset], List[str], List[str]]:
    """Structural scan. Returns ``(dataset or None, errors, warnings)``; never raises for bad input.

    ``dataset`` is None when the folder cannot be interpreted at all (no dataset.json, bad labels or
    channels); otherwise it holds the cases that could be assembled, even if ``errors`` is not empty.
    """
    errors: List[str] = []
    warnings: List[str] = []
    root = Path(path).expanduser()
    if not root.exists():
        return None, [f"{root}: path does not exist. Give the dataset folder (the one containing dataset.json, "
                      f"imagesTr/ and labelsTr/)."], warnings
    if not root.is_dir():
        return None, [f"{root}: is a file, not a folder. Give the dataset folder (the one containing "
                      f"dataset.json, imagesTr/ and labelsTr/)."], warnings
    root = root.resolve()
    json_path = root / "dataset.json"
    if not json_path.is_file():
        found = sorted(p.name for p in root.iterdir())[:8]
        hint = ("it has imagesTr/ but no dataset.json: write one with channel_names, labels, numTraining and "
                "file_ending." if (root / "imagesTr").is_dir() else
                "this is not a dataset folder (nnU-Net raw layout: dataset.json, imagesTr/, labelsTr/).")
        return None, [f"{json_path}: missing; {hint} Found in the folder: {found or 'nothing'}."], warnings
    try:
        raw = json.loads(json_path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        return None, [f"{json_path}: not valid JSON ({exc}). Fix the file's syntax."], warnings
    except RecursionError:  # hundreds of nested brackets: not a dataset description
        return None, [f"{json_path}: nested too deeply to be a dataset.json. Fix the file."], warnings
    if not isinstance(raw, dict):
        return None, [f"{json_path}: expected a JSON object with channel_names, labels, numTraining and "
                      f"file_ending; found a {type(raw).__name__}."], warnings

    fatal = False
    channels = raw.get("channel_names")
    if channels is None and "modality" in raw:
        channels = raw["modality"]
        warnings.append(f"{json_path}: uses the legacy key 'modality'; rename it to 'channel_names'.")
    missing = [k for k in REQUIRED_KEYS if k not in raw and not (k == "channel_names" and channels is not None)]
    if missing:
        errors.append(f"{json_path}: missing key(s) {missing}. Required: {list(REQUIRED_KEYS)}, e.g. "
                      f"\"channel_names\": {{\"0\": \"MRI\"}}, \"labels\": {{\"background\": 0, \"organ\": 1}}, "
                      f"\"numTraining\": 10, \"file_ending\": \".nii.gz\".")
    channel_names: Dict[str, str] = {}
    if channels is not None:
        keys_ok = isinstance(channels, dict) and channels and \
            sorted(channels, key=lambda k: int(k) if str(k).isdigit() else -1) == [str(i) for i in range(len(channels))]
        if not keys_ok:
            errors.append(f"{json_path}: 'channel_names' must map \"0\", \"1\", ... to channel names, like "
                          f"{{\"0\": \"CT\"}}; found {channels!r}.")
            fatal = True
        else:
            channel_names = {str(i): str(channels[str(i)]) for i in range(len(channels))}
    else:
        fatal = True
    layout = None
    if "labels" in raw:
        try:
            layout = LabelLayout.from_dataset_labels(raw["labels"], raw.get("regions_class_order"),
                                                     source=str(json_path))
        except AutoSegError as exc:
            errors.append(str(exc))
    if layout is None:
        fatal = True
    ending = raw.get("file_ending")
    if ending is not None and (not isinstance(ending, str) or not ending.startswith(".")):
        errors.append(f"{json_path}: 'file_ending' must be a string like \".nii.gz\"; found {ending!r}.")
        ending = None
    num_training = raw.get("numTraining")
    if num_training is not None and (not isinstance(num_training, int) or isinstance(num_training, bool)):
        errors.append(f"{json_path}: 'numTraining' must be an integer; found {num_training!r}.")
        num_training = None

    if "dataset" in raw:
        cases = _cases_from_listing(root, raw["dataset"], json_path, len(channel_names), errors)
    else:
        if ending is None:
            ending = _guess_ending(root / "imagesTr")
        cases = _cases_from_folders(root, ending, channel_names, errors, warnings) if ending else {}
    if num_training is not None and cases is not None and num_training != len(cases):
        errors.append(f"{json_path}: numTraining is {num_training} but {len(cases)} training case(s) were found"
                      f"{' in imagesTr/' if 'dataset' not in raw else ''}. Set numTraining to {len(cases)} or add "
                      f"the missing cases.")
    if fatal or cases is None:
        return None, errors, warnings
    dataset = Dataset(root=root, name=str(raw.get("name") or root.name), channel_names=channel_names,
                      labels=layout, file_ending=ending or "", raw_json=raw,
                      cases={k: cases[k] for k in sorted(cases)})
    return dataset, errors, warnings


def _guess_ending(folder: Path) -> Optional[str]:
    from AutoSegLib.io.images import file_ending
    if not folder.is_dir():
        return None
    counts = Counter(file_ending(p) for p in folder.iterdir() if p.is_file() and not p.name.startswith("."))
    return counts.most_common(1)[0][0] if counts else None


def _visible_files(folder: Path) -> List[Path]:
    return sorted(p for p in folder.iterdir() if p.name not in _IGNORED_NAMES and not p.name.startswith("."))


def _cases_from_folders(root: Path, ending: str, channel_names: Dict[str, str], errors: List[str],
                        warnings: List[str]) -> Optional[Dict[str, CaseFiles]]:
    images_dir, labels_dir = root / "imagesTr", root / "labelsTr"
    if not images_dir.is_dir():
        errors.append(f"{images_dir}: missing. Put the training images there as <case>_0000{ending} "
                      f"(one file per channel).")
        return None
    n_channels = len(channel_names)
    found: Dict[str, Dict[int, Path]] = {}
    for p in _visible_files(images_dir):
        if p.is_dir():
            warnings.append(f"{p}: unexpected folder in imagesTr/ (ignored).")
            continue
        if not p.name.endswith(ending):
            warnings.append(f"{p}: does not end with the dataset's file_ending {ending!r} (ignored).")
            continue
        m = _CHANNEL_RE.match(p.name[: -len(ending)])
        if not m:
            errors.append(f"{p}: image name does not follow <case>_XXXX{ending} (XXXX = channel number, 0000 for "
                          f"the first). Rename it, e.g. to {p.name[: -len(ending)]}_0000{ending}.")
            continue
        found.setdefault(m["case"], {})[int(m["channel"])] = p
    if not found:
        errors.append(f"{images_dir}: no training images named <case>_XXXX{ending} found. Put one file per "
                      f"channel there.")
    label_files: Dict[str, Path] = {}
    if not labels_dir.is_dir():
        errors.append(f"{labels_dir}: missing. Put one label map per case there as <case>{ending}.")
    else:
        for p in _visible_files(labels_dir):
            if p.is_file() and p.name.endswith(ending):
                label_files[p.name[: -len(ending)]] = p
            else:
                warnings.append(f"{p}: not a label file ending with {ending!r} (ignored).")
        if not label_files:
            errors.append(f"{labels_dir}: empty; expected one label map <case>{ending} per training case.")
    cases: Dict[str, CaseFiles] = {}
    for case_id, chans in found.items():
        for c in range(n_channels):
            if c not in chans:
                errors.append(f"case {case_id!r}: missing channel {c} ({channel_names[str(c)]}): expected file "
                              f"{images_dir / f'{case_id}_{c:04d}{ending}'}. Add it or remove the case's other files.")
        extra = sorted(c for c in chans if c >= n_channels)
        for c in extra:
            errors.append(f"{chans[c]}: channel {c} found but dataset.json channel_names declares {n_channels} "
                          f"channel(s) (0..{n_channels - 1}). Add it to channel_names or remove the file.")
        label = label_files.get(case_id)
        if label is None and labels_dir.is_dir() and label_files:
            errors.append(f"case {case_id!r}: label file missing: expected {labels_dir / (case_id + ending)}.")
        images = tuple(chans[c] for c in range(n_channels) if c in chans)
        cases[case_id] = CaseFiles(case_id, images, label)
    for case_id in sorted(set(label_files) - set(found)):
        warnings.append(f"{label_files[case_id]}: label without images (no {case_id}_0000{ending} in imagesTr/); "
                        f"ignored.")
    return cases


def _cases_from_listing(root: Path, listing, json_path: Path, n_channels: int,
                        errors: List[str]) -> Optional[Dict[str, CaseFiles]]:
    if not isinstance(listing, dict):
        errors.append(f"{json_path}: 'dataset' must map case ids to {{\"images\": [...], \"label\": ...}}; "
                      f"found {type(listing).__name__}.")
        return None
    cases = {}
    for case_id, entry in listing.items():
        if not isinstance(entry, dict) or "images" not in entry or "label" not in entry:
            errors.append(f"{json_path}: dataset entry {case_id!r} needs 'images' (list) and 'label'; found {entry!r}.")
            continue
        images = tuple(_resolve(root, p) for p in entry["images"])
        label = _resolve(root, entry["label"])
        if len(images) != n_channels:
            errors.append(f"case {case_id!r}: {len(images)} image(s) listed, dataset.json declares {n_channels} "
                          f"channel(s).")
        for p in images + (label,):
            if not p.is_file():
                errors.append(f"case {case_id!r}: file listed in dataset.json not found: {p}.")
        cases[str(case_id)] = CaseFiles(str(case_id), images, label)
    return cases


def _resolve(root: Path, p: str) -> Path:
    q = Path(os.path.expandvars(str(p))).expanduser()
    return q if q.is_absolute() else (root / q)


def dataset_signature(dataset: Dataset) -> str:
    """A short hash of dataset.json and of every training file's name, size and modification time: it
    changes when a case is added, removed, replaced or edited (or the folder is copied without keeping
    times), so stored results derived from the files can tell they are stale."""
    import hashlib
    h = hashlib.sha1()
    h.update((dataset.root / "dataset.json").read_bytes() if (dataset.root / "dataset.json").is_file() else b"")
    for case in dataset.cases.values():
        for p in tuple(case.images) + ((case.label,) if case.label is not None else ()):
            try:
                st = p.stat()
                h.update(f"{case.case_id}|{p.name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
            except OSError:
                h.update(f"{case.case_id}|{p.name}|missing\n".encode())
    return h.hexdigest()[:16]
