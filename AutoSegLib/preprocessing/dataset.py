"""Preprocessing of a whole dataset into the work folder, cases in parallel.

Each case is read once and preprocessed for every requested configuration; configurations whose data
would be identical for that case (same target spacing, normalisation and resampling, e.g. '2d' and
'3d_fullres' of an isotropic dataset) are computed once and hard-linked. A case is complete when its
.json exists (written last), so an interrupted run loses at most the cases in flight and a re-run skips
the complete ones (``force`` redoes them). Cases made with other settings, or from raw files that have
changed since (a label corrected in Slicer), are redone.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from dataclasses import asdict
from pathlib import Path
from typing import Dict, Iterable, List, Optional, Sequence

from AutoSegLib.errors import AutoSegError
from AutoSegLib.planning.plans import Plans
from AutoSegLib.progress import ProgressCallback, ProgressTracker, emit

log = logging.getLogger(__name__)


def preprocessed_folder(work_dir: "str | os.PathLike", plans: Plans, configuration: str) -> Path:
    """``WORK/preprocessed/<data_identifier>`` of a configuration (its name when the identifier is empty)."""
    cfg = plans.configuration(configuration)
    return Path(work_dir) / "preprocessed" / (cfg.data_identifier or cfg.name)


def preprocessing_signature(plans: Plans, configuration: str) -> str:
    """Hash of every setting that changes a configuration's preprocessed data."""
    cfg = plans.configuration(configuration)
    relevant = {
        "transpose_forward": list(plans.transpose_forward),
        "spacing": list(cfg.spacing),
        "normalization": list(cfg.normalization),
        "use_mask_for_norm": list(cfg.use_mask_for_norm),
        "resampling": asdict(cfg.resampling),
        "intensity_properties": {str(c): plans.intensity_properties.get(str(c)) for c in range(plans.num_channels)
                                 if cfg.normalization[c] in ("ct", "CTNormalization")},
        "labels": plans.labels,
        "regions_class_order": list(plans.regions_class_order or []),
        "format": 1,
    }
    return hashlib.sha1(json.dumps(relevant, sort_keys=True).encode()).hexdigest()[:16]


def source_stamp(files) -> str:
    """Hash of a case's raw files (name, size, modification time): a case edited or replaced in the raw
    dataset (e.g. corrected in Slicer) is preprocessed again."""
    h = hashlib.sha1()
    for p in list(files.images) + ([files.label] if files.label is not None else []):
        try:
            st = os.stat(p)
            h.update(f"{Path(p).name}|{st.st_size}|{st.st_mtime_ns}\n".encode())
        except OSError:
            h.update(f"{Path(p).name}|missing\n".encode())
    return h.hexdigest()[:16]


def _identifier_jobs(plans: Plans, configurations: Sequence[str], work_dir: Path) -> List[dict]:
    """One job per distinct output folder; configurations sharing a folder must preprocess identically."""
    jobs: Dict[Path, dict] = {}
    for name in configurations:
        folder = preprocessed_folder(work_dir, plans, name)
        sig = preprocessing_signature(plans, name)
        if folder in jobs:
            if jobs[folder]["signature"] != sig:
                raise AutoSegError(f"plans.json: configurations {jobs[folder]['configuration']!r} and {name!r} share "
                                   f"the data_identifier {folder.name!r} but preprocess differently (spacing, "
                                   f"normalisation or resampling). Give them different data_identifiers.")
            continue
        jobs[folder] = {"folder": str(folder), "configuration": name, "signature": sig}
    return list(jobs.values())


# ------------------------------------------------------------------------------------------------------
# worker side
# ------------------------------------------------------------------------------------------------------
_PLANS: Optional[Plans] = None


def _init_worker(plans_dict: dict, parent_pid: "int | None" = None) -> None:
    global _PLANS
    from AutoSegLib.processes import die_with_parent
    die_with_parent(parent_pid)  # a killed plan-and-preprocess must not leave workers writing
    _PLANS = Plans.from_dict(plans_dict)


def _same_data_key(plans: Plans, configuration: str, spacing_transposed) -> str:
    from AutoSegLib.preprocessing.case import target_spacing

    cfg = plans.configuration(configuration)
    return json.dumps([target_spacing(cfg, spacing_transposed), list(cfg.normalization), list(cfg.use_mask_for_norm),
                       asdict(cfg.resampling), preprocessing_signature(plans, configuration) if any(
                           n in ("ct", "CTNormalization") for n in cfg.normalization) else ""])


def _run_case(task: dict) -> dict:
    """Preprocess one case for its pending jobs (runs in a worker process or inline)."""
    from AutoSegLib.io.images import read_case, read_image
    from AutoSegLib.preprocessing.case import preprocess_case
    from AutoSegLib.preprocessing.storage import case_paths, save_preprocessed_case

    plans = _PLANS
    case = task["case"]
    image, geometry = read_case(task["images"])
    label = None
    if task["label"] is not None:
        label, _ = read_image(task["label"])
        if label.shape != image.shape[1:]:
            raise AutoSegError(f"{task['label']}: label size {label.shape[::-1]} differs from the image size "
                               f"{image.shape[1:][::-1]} (x, y, z) of case {case!r}. Run `autoseg verify`.")
    spacing_t = tuple(geometry.spacing[a] for a in plans.transpose_forward)
    done: Dict[str, tuple] = {}
    for job in task["jobs"]:
        key = _same_data_key(plans, job["configuration"], spacing_t)
        if key in done:
            image_path, seg_path, _ = case_paths(done[key][0], case)
            props = dict(done[key][1], configuration=job["configuration"], preprocessing_signature=job["signature"])
            # identical data: hard-link the arrays written for the earlier configuration (label only if any)
            save_preprocessed_case(job["folder"], case, None, label, props, same_as=(image_path, seg_path))
            continue
        data, seg, props = preprocess_case(image, geometry, plans, job["configuration"], label)
        props["case"] = case
        props["preprocessing_signature"] = job["signature"]
        props["source_stamp"] = task["stamp"]
        save_preprocessed_case(job["folder"], case, data, seg, props)
        done[key] = (job["folder"], props)
    return {"case": case, "jobs": len(task["jobs"])}


# ------------------------------------------------------------------------------------------------------
# driver
# ------------------------------------------------------------------------------------------------------
def default_num_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:
        return max(1, os.cpu_count() or 1)


def preprocess_dataset(dataset_path: "str | os.PathLike", plans: Plans, configurations: Optional[Iterable[str]] = None,
                       work_dir: "str | os.PathLike" = ".", num_workers: Optional[int] = None, force: bool = False,
                       progress: Optional[ProgressCallback] = None, cases: Optional[Iterable[str]] = None) -> dict:
    """Preprocess the training cases of a raw dataset for the given configurations.

    Parameters
    ----------
    dataset_path : the raw dataset folder
    plans : Plans
    configurations : configuration names (default: all in the plans)
    work_dir : the work folder; output goes to ``work_dir/preprocessed/<data_identifier>/``
    num_workers : processes (default: the CPU cores available); 1 runs in this process
    force : redo complete cases too
    progress : progress callback (stage "preprocess", one step per case)
    cases : restrict to these case ids (default: all)

    Returns
    -------
    dict with ``folders`` ({configuration: folder}), ``processed``, ``skipped`` (case counts) and ``cases``.

    Raises
    ------
    AutoSegError for a bad dataset, unknown configurations, or a worker that died.
    """
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.preprocessing.storage import is_case_complete, remove_stale_temporaries

    dataset = load_dataset(dataset_path)
    configurations = list(configurations) if configurations else list(plans.configurations)
    for name in configurations:
        plans.configuration(name)  # raises with a "did you mean" for unknown names
    if dataset.num_channels != plans.num_channels:
        raise AutoSegError(f"{dataset.root}: {dataset.num_channels} channel(s) but the plans were made for "
                           f"{plans.num_channels}. Re-plan for this dataset.")
    work_dir = Path(work_dir)
    jobs = _identifier_jobs(plans, configurations, work_dir)
    for job in jobs:
        remove_stale_temporaries(job["folder"])  # before the completeness checks below
    wanted = list(cases) if cases is not None else list(dataset.case_ids)
    unknown = [c for c in wanted if c not in dataset.cases]
    if unknown:
        raise AutoSegError(f"{dataset.root}: no case(s) {unknown[:5]} in this dataset.")

    tasks, skipped = [], 0
    for case_id in wanted:
        files = dataset.cases[case_id]
        has_label = files.label is not None
        stamp = source_stamp(files)
        pending = [j for j in jobs
                   if force or not is_case_complete(j["folder"], case_id, j["signature"], has_label, stamp)]
        if not pending:
            skipped += 1
            continue
        tasks.append({"case": case_id, "images": [str(p) for p in files.images],
                      "label": str(files.label) if has_label else None, "jobs": pending, "stamp": stamp})
    emit(progress, "stage", stage="preprocess",
         message=f"{len(tasks)} case(s) to preprocess for {', '.join(configurations)}"
                 + (f" ({skipped} already done)" if skipped else ""))
    if tasks:  # the room the arrays will take, before minutes of work rather than at a full disk
        from AutoSegLib.io.atomic import require_free_space
        require_free_space(work_dir, _bytes_to_write(work_dir, plans, tasks), "the preprocessed data")
    for job in jobs:
        Path(job["folder"]).mkdir(parents=True, exist_ok=True)
    tracker = ProgressTracker(progress, "preprocess", len(tasks))
    workers = min(num_workers or default_num_workers(), max(1, len(tasks)))
    if num_workers is None and workers > 1:
        fitting = _workers_fitting_in_memory(work_dir, plans, configurations)
        if fitting < workers:
            emit(progress, "log", level="info", message=f"preprocessing with {fitting} worker(s) instead of {workers}: "
                 f"the largest cases would not fit in the available memory {workers} at a time")
            workers = fitting
    if tasks:
        _execute(tasks, plans, workers, tracker)
    folders = {name: str(preprocessed_folder(work_dir, plans, name)) for name in configurations}
    result = {"folders": folders, "processed": len(tasks), "skipped": skipped, "cases": len(wanted)}
    emit(progress, "result", stage="preprocess", **result)
    return result


BYTES_PER_VOXEL = 32        # measured peak of preprocess_case: ~26 bytes per channel-voxel + the image read
PROCESS_OVERHEAD = 200 * 2 ** 20


def available_memory() -> Optional[int]:
    """Bytes of memory available to new processes (Linux MemAvailable, else free pages), or None."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    try:
        return os.sysconf("SC_AVPHYS_PAGES") * os.sysconf("SC_PAGE_SIZE")
    except (ValueError, OSError, AttributeError):
        return None


def _workers_fitting_in_memory(work_dir: Path, plans: Plans, configurations: Sequence[str]) -> int:
    """How many cases can be preprocessed at once in the available memory, from the case shapes in
    ``work_dir/fingerprint.json`` (no limit when it or the memory figure is unavailable)."""
    import numpy as np

    from AutoSegLib.preprocessing.case import target_spacing

    from AutoSegLib.io.jsonfile import read_json_or_none
    cases = (read_json_or_none(Path(work_dir) / "fingerprint.json", expect=dict) or {}).get("cases")
    if not isinstance(cases, list):
        return 1 << 30
    available = available_memory()
    if available is None:
        return 1 << 30
    tf = list(plans.transpose_forward)
    largest = 0.0
    for case in cases:
        spacing = np.asarray(case["spacing"], float)[tf]
        voxels_in = float(np.prod(case["shape_before_crop"], dtype=np.float64))
        cropped = float(np.prod(case["shape_after_crop"], dtype=np.float64))
        for name in configurations:
            target = np.asarray(target_spacing(plans.configuration(name), spacing), float)
            largest = max(largest, voxels_in, cropped * float(np.prod(spacing / target)))
    per_case = BYTES_PER_VOXEL * plans.num_channels * largest + PROCESS_OVERHEAD
    return max(1, int(0.8 * available // per_case))


def _bytes_to_write(work_dir: Path, plans: Plans, tasks: List[dict]) -> float:
    """Bytes the preprocessed arrays of ``tasks`` will take (float32 image channels + int16 labels at each
    job's target spacing), from the case shapes in ``work_dir/fingerprint.json``; 0 when unknown."""
    import numpy as np

    from AutoSegLib.io.jsonfile import read_json_or_none
    from AutoSegLib.preprocessing.case import target_spacing

    cases = (read_json_or_none(Path(work_dir) / "fingerprint.json", expect=dict) or {}).get("cases")
    if not isinstance(cases, list):
        return 0.0
    by_id = {c.get("case_id"): c for c in cases if isinstance(c, dict)}
    tf = list(plans.transpose_forward)
    total = 0.0
    for task in tasks:
        case = by_id.get(task["case"])
        if case is None:
            continue
        spacing = np.asarray(case["spacing"], float)[tf]
        cropped = float(np.prod(case["shape_after_crop"], dtype=np.float64))
        for job in task["jobs"]:
            target = np.asarray(target_spacing(plans.configuration(job["configuration"]), spacing), float)
            total += cropped * float(np.prod(spacing / target)) * (4 * plans.num_channels + 2)
    return total


def _start_method() -> str:
    """'fork' (workers start in milliseconds, no re-import) unless this process has loaded SimpleITK or
    torch, whose thread pools do not survive a fork reliably; then 'spawn'."""
    import multiprocessing
    import sys

    if "fork" in multiprocessing.get_all_start_methods() and not ({"SimpleITK", "torch"} & set(sys.modules)):
        return "fork"
    return "spawn"


def _execute(tasks: List[dict], plans: Plans, workers: int, tracker: ProgressTracker) -> None:
    if workers <= 1:
        _init_worker(plans.to_dict())
        for task in tasks:
            _run_case(task)
            tracker.step(task["case"])
        return
    import multiprocessing
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    ctx = multiprocessing.get_context(_start_method())
    pool = ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker,
                               initargs=(plans.to_dict(), os.getpid()))
    futures = {}
    try:
        futures = {pool.submit(_run_case, t): t["case"] for t in tasks}
        for fut in as_completed(futures):
            fut.result()
            tracker.step(futures[fut])
    except BrokenProcessPool:
        raise AutoSegError(f"a preprocessing worker process died (out of memory?). Complete cases are kept; re-run "
                           f"with fewer workers (--workers {max(1, workers // 2)}).") from None
    except BaseException:
        # interrupted (Ctrl-C, SIGTERM through the CLI) or failed: the workers stop now rather than finishing
        # their cases; a case's files are written atomically, so a half-done case leaves nothing
        for proc in list((getattr(pool, "_processes", None) or {}).values()):
            proc.terminate()
        raise
    finally:
        pool.shutdown(wait=True, cancel_futures=True)
