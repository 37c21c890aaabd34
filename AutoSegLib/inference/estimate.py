"""Pre-flight estimate of a prediction run: expected wall time and peak memory, before any work.

Time, per case and configuration, from the cached measurement of `inference.calibrate`::

    network    = windows x folds x ((mirror combinations + 1 with TTA) x patch_seconds + stitch_seconds)
    resampling = C x M x r(order_data) + K x N x r(order_probabilities)     (only when the grids differ)
    the rest   = N x voxel_seconds + K x N x class_voxel_seconds           (read, normalise, softmax, write)

plus loading each fold's network once (``session_seconds``), the imports this process has still to make, and,
for a compiled runtime whose networks are not exported yet, the export on first use (torch import, export
and its check with every installed runtime: ``export_seconds`` per fold, ``export_mib`` of memory). N: voxels of the input (of the ROI crop with
``roi``), M: voxels after resampling to the configuration's spacing, C channels, K network outputs.

Peak memory: the process's resident memory after its imports (``base_mib``), the loaded networks, and the
largest of the pipeline's stages (the arrays each holds at once; bytes per voxel from the code in
`predict`, `export`, `sliding_window` and `preprocessing.resampling`)::

    preprocessing: image C*N*4 + its float32 copy C*N*4 + resampling (float64 channel in and out)
    network:       image C*N*4 + network input C*M*4 + logits K*M*2 + weights M*2 + one window's activations
    export:        image C*N*4 + logits K*M*2 + resampled logits K*N*2 + one channel resampled (M*8 + N*12)
                   + labels N + probabilities K*N*4 (when saved) + the non-linearity's slab

The event (`interfaces.md`): ``{"event": "estimate", "seconds", "peak_memory_mib", "available_memory_mib",
"fits", "message"}``; ``fits`` is false when the peak exceeds what is available (``MemAvailable`` plus what
this process already holds).
"""
from __future__ import annotations

import math
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from AutoSegLib.progress import emit

SLAB_OVERHEAD = 3  # float32 copies of one slab the non-linearity holds (input, exp, output)


def _header(path: Path):
    """(array shape, Geometry) from the file's header only."""
    import SimpleITK as sitk

    from AutoSegLib.io.geometry import Geometry
    r = sitk.ImageFileReader()
    r.SetFileName(str(path))
    r.ReadImageInformation()
    size = r.GetSize()
    geo = Geometry(tuple(reversed(r.GetSpacing())), tuple(r.GetOrigin()), tuple(r.GetDirection()))
    return tuple(reversed(size)), geo


def available_mib() -> float:
    """Memory this process could use: ``MemAvailable`` (Linux; psutil elsewhere) plus its own resident set."""
    from AutoSegLib.inference.calibrate import rss_mib
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemAvailable:"):
                return int(line.split()[1]) / 1024.0 + rss_mib()
    except OSError:
        pass
    try:
        import psutil
        return psutil.virtual_memory().available / 2 ** 20 + rss_mib()
    except ImportError:
        return float("inf")


def case_cost(cal: dict, model, configuration: str, shape: Sequence[int], spacing: Sequence[float], folds: int,
              tta: bool, step_size: float, save_probabilities: bool) -> Dict[str, float]:
    """Seconds and peak MiB of one case (array ``shape`` and ``spacing`` in array order) for one configuration,
    without the process base and the loaded networks. Returns ``{"network_s", "resample_s", "other_s",
    "pipeline_mib", "windows"}``."""
    from AutoSegLib.inference.sliding_window import count_windows, mirror_combinations
    from AutoSegLib.preprocessing.case import target_spacing
    from AutoSegLib.preprocessing.resampling import compute_new_shape

    conf = model.plans.configuration(configuration)
    cm = model.configurations[configuration]
    tf = [int(a) for a in model.plans.transpose_forward]
    shape_t = [int(shape[a]) for a in tf]
    spacing_t = [float(spacing[a]) for a in tf]
    new_shape = tuple(int(s) for s in compute_new_shape(shape_t, spacing_t, target_spacing(conf, spacing_t)))
    n, m = float(np.prod(shape_t)), float(np.prod(new_shape))
    c, k = cm.num_input_channels, cm.num_outputs
    windows = count_windows(new_shape, conf.patch_size, step_size)
    passes = (len(mirror_combinations(cm.mirror_axes)) + 1) if tta else 1
    network_s = windows * folds * (passes * cal["patch_seconds"] + cal.get("stitch_seconds", 0.0))
    resample_s = 0.0
    resampled = tuple(new_shape) != tuple(shape_t)
    r = cal["resample_seconds_per_voxel"]
    rate = lambda order: r["3"] if order >= 2 else r["1"]  # noqa: E731  order 0 costs about what 1 does
    if resampled:
        resample_s = c * m * rate(conf.resampling.order_data) + k * n * rate(conf.resampling.order_probabilities)
    other_s = n * cal["voxel_seconds"] * c + k * n * cal["class_voxel_seconds"]
    mib = 2.0 ** 20
    image = c * n * 4
    padded = float(np.prod([max(s, p) for s, p in zip(new_shape, conf.patch_size)])) if len(conf.patch_size) == len(
        new_shape) else m
    pre = image + c * n * 4 + ((n * 8 + m * 8) if resampled else 0) + c * m * 4
    net = image + c * m * 4 + (c * padded * 4 if padded > m else 0) + k * padded * 2 + padded * 2 \
        + cal["activation_mib"] * mib
    slab = min(16_000_000, n) * k * 4 * SLAB_OVERHEAD
    export = image + k * m * 2 + k * n * 2 + ((m * 8 + n * 12) if resampled else 0) + n + slab \
        + (k * n * 4 if save_probabilities else 0)
    return {"network_s": network_s, "resample_s": resample_s, "other_s": other_s,
            "pipeline_mib": max(pre, net, export) / mib, "windows": windows}


def estimate_run(model, cases: Dict[str, List[Path]], configurations: Sequence[str], folds_for: dict, tta: bool,
                 step_size: float, runtime: str, save_probabilities: bool = False, roi=None,
                 progress=None) -> dict:
    """The estimate event for predicting ``cases`` ({case: channel files}) with these settings.

    Parameters
    ----------
    model : models.folder.Model
    cases : dict
    configurations : the configurations to run (a cascade's previous stage included by the caller)
    folds_for : {configuration: fold names}
    tta, step_size, runtime, save_probabilities, roi
        As `predict_files` uses them (``runtime`` resolved).

    Returns
    -------
    dict
        ``{"event": "estimate", "seconds", "peak_memory_mib", "available_memory_mib", "fits", "message"}``
        (also emitted to ``progress``).
    """
    from AutoSegLib.inference.calibrate import measure

    cals = {c: measure(model, c, runtime, progress) for c in configurations}
    seconds, pipeline_peak = 0.0, 0.0
    from AutoSegLib.inference.predict import check_input
    for files in cases.values():
        shape, geo = _header(files[0])
        # the prediction's own input check, on the header (a zero-stride array: no memory), so that an image
        # it would refuse is refused with its message before an estimate is made of it
        check_input(model, np.broadcast_to(np.float32(0), (len(files), *shape)), geo, source=str(files[0]))
        if roi is not None:
            shape = _roi_crop_shape(model, configurations, shape, geo, roi, str(files[0]))
        for c in configurations:
            cost = case_cost(cals[c], model, c, located_shape(model.plans, c, shape, geo.spacing) or shape,
                             geo.spacing, len(folds_for[c]), tta, step_size, save_probabilities)
            seconds += cost["network_s"] + cost["resample_s"] + cost["other_s"]
            pipeline_peak = max(pipeline_peak, cost["pipeline_mib"])
    # networks exported on first use (compiled runtime): torch is imported and each fold exported and checked
    from AutoSegLib.inference.compiled import export_status
    from AutoSegLib.inference.runtimes import COMPILED
    export_s, export_mib = 0.0, 0.0
    if runtime in COMPILED:
        for c in configurations:
            missing = sum(export_status(model.configurations[c].folds[f]) != "ok" for f in folds_for[c])
            if missing:
                export_s += missing * cals[c].get("export_seconds", 0.0)
                export_mib = max(export_mib, cals[c].get("export_mib", 0.0))
    seconds += export_s
    # every fold's network stays loaded while cases follow one another (the CLI caches them)
    sessions = sum(cals[c]["session_mib"] * len(folds_for[c]) for c in configurations)
    seconds += sum(cals[c]["session_seconds"] * len(folds_for[c]) for c in configurations)
    import sys
    imports = cals[configurations[0]].get("import_seconds") or {}
    seconds += sum(t for module, t in imports.items() if module not in sys.modules)  # imported after this
    base = max(cals[c]["base_mib"] for c in configurations)
    peak = base + export_mib + sessions + pipeline_peak
    avail = available_mib()
    fits = peak <= avail
    n = len(cases)
    message = (f"estimate: about {_duration(seconds)} for {n} case{'s' if n != 1 else ''} ({runtime}), "
               f"peak memory about {peak / 1024:.1f} GiB of {avail / 1024:.1f} GiB available")
    if export_s:
        message += f" (including exporting the networks for {runtime}, once)"
    if not fits:
        message += (". This may not fit in memory: close other programs, predict with --roi or on a machine with "
                    "more memory, or give --force to try anyway")
    event = {"event": "estimate", "seconds": float(seconds), "peak_memory_mib": float(peak),
             "available_memory_mib": float(avail), "fits": bool(fits), "message": message}
    emit(progress, "estimate", **{k: v for k, v in event.items() if k != "event"})
    return event


def located_shape(plans, configuration: str, shape: Sequence[int], spacing: Sequence[float]) -> Optional[tuple]:
    """What a fine stage (`inference.located`) predicts of an image of array ``shape`` and ``spacing``, for
    the estimate: its planned region (the median foreground box with its margin) plus one patch of context,
    clipped to the image; None for any other configuration (it predicts the whole image)."""
    from AutoSegLib.inference.located import located_stage
    if located_stage(plans, configuration) is None:
        return None
    conf = plans.configuration(configuration)
    out = list(int(n) for n in shape)
    for i, axis in enumerate(int(a) for a in plans.transpose_forward):
        mm = (float(conf.median_image_size[i]) + float(conf.patch_size[i])) * float(conf.spacing[i])
        out[axis] = min(out[axis], int(math.ceil(mm / float(spacing[axis]) - 1e-6)))
    return tuple(out)


def _roi_crop_shape(model, configurations, shape, geo, roi, source) -> tuple:
    from AutoSegLib.inference.roi import context_box, patch_extent_mm, roi_to_box
    box = roi_to_box(roi, shape, geo, source)
    _, crop = context_box(box, shape, geo, patch_extent_mm(model, configurations, geo.ndim))
    return tuple(hi - lo for lo, hi in crop)


def _duration(seconds: float) -> str:
    if seconds < 90:
        return f"{max(1, int(math.ceil(seconds)))} s"
    if seconds < 5400:
        return f"{seconds / 60:.0f} min"
    return f"{seconds / 3600:.1f} h"


def run_configurations(model, configurations: Sequence[str]) -> List[str]:
    """``configurations`` with the stages each needs first (a cascade's previous stages, a fine stage's coarse
    stage: they run too)."""
    out: List[str] = []
    for c in configurations:
        chain = [c]
        while model.plans.required_stage(chain[-1]):
            chain.append(model.plans.required_stage(chain[-1]))
        for x in reversed(chain):
            if x not in out and x in model.configurations:
                out.append(x)
    return out


__all__ = ["estimate_run", "case_cost", "available_mib", "run_configurations", "located_shape"]
