"""Predicting one case held in memory: preprocessing, fold and configuration ensembles, cascade,
export to the input grid, post-processing.

`predict_arrays` is what the Slicer module and `predict_files` call. For each configuration the case is
preprocessed exactly like the training data, predicted fold by fold (``runner.predict_logits``), and the
logits exported to the input grid (``export.export_logits``). An ensemble of configurations averages the
probabilities; a cascade stage gets the previous stage's label map as one-hot extra channels; the
model's post-processing steps (inference.json) run last. ``runtime`` picks what runs the networks
(`inference.compiled`); with a compiled runtime nothing here imports torch.
"""
from __future__ import annotations

import logging
from typing import Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference.export import export_logits, label_dtype, probabilities_to_labels
from AutoSegLib.inference.runner import NetworkPredictor, predict_logits, resolve_device, resolve_precision
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.progress import ProgressCallback, emit

log = logging.getLogger(__name__)


# Fast mode (``fast=True``, `autoseg predict --fast`): one fold, no mirroring, a larger window step. Chosen by
# measurement (bench/fast_mode.py, README "Fast mode"): on an LA model trained for 15 minutes (Dice 0.88 on 13
# unseen cases) no mirroring cost 0.004 Dice at 0.17x the time; with windows smaller than the image, steps
# 0.5 / 0.7 / 0.9 scored 0.583 / 0.560 / 0.496 at 0.15 / 0.12 / 0.08 of the default's time, so the step
# stops at 0.7 (0.9 had looked free on a 3-minute model, Dice 0.5, where everything was uncertain anyway).
FAST_FOLDS = 1
FAST_STEP_SIZE = 0.7
MAX_RESAMPLED_VOXELS = 2 ** 31  # 8 GiB per float32 channel: far beyond any real scan at its model's spacing


def check_input(model, images: np.ndarray, geometry: Geometry, source: str = "input") -> None:
    """Refuse images whose channel count or dimensionality does not fit the model (AutoSegError)."""
    names = [model.plans.channel_names[k] for k in sorted(model.plans.channel_names, key=int)]
    model_ndim = len(model.plans.transpose_forward)
    if images.ndim != geometry.ndim + 1:
        raise AutoSegError(f"{source}: image array of shape {images.shape} does not match its {geometry.ndim}D "
                           f"geometry; expected (channels, *spatial).")
    if geometry.ndim != model_ndim:
        raise AutoSegError(f"{source}: the model was trained on {model_ndim}D images, this image is "
                           f"{geometry.ndim}D of size {tuple(images.shape[1:])}. Give a {model_ndim}D image.")
    # the model's spacing applied to this image: a damaged plans.json (or a scan with absurd spacing) must be
    # refused here, not by trying to allocate hundreds of GiB in resampling. The voxel count after
    # resampling is the image's volume over the model's voxel volume, whatever the axis order.
    for name, conf in model.plans.configurations.items():
        if len(conf.spacing) == geometry.ndim:
            volume = float(np.prod(np.asarray(images.shape[1:], float) * np.asarray(geometry.spacing, float)))
            voxels = volume / float(np.prod(conf.spacing))
            if not voxels <= MAX_RESAMPLED_VOXELS:
                raise AutoSegError(f"{source}: at the model's spacing {list(conf.spacing)} mm ({name!r}) this image "
                                   f"of size {tuple(images.shape[1:])[::-1]} and spacing {tuple(geometry.spacing)[::-1]} "
                                   f"mm would become {voxels:.3g} voxels (at most {MAX_RESAMPLED_VOXELS:.3g} are "
                                   f"accepted). Check the image's spacing in its header, or the model.")
    if images.shape[0] != len(names):
        raise AutoSegError(f"{source}: the model expects {len(names)} channel(s) {names} "
                           f"(files <case>_0000{'' if len(names) == 1 else f' .. <case>_{len(names) - 1:04d}'}), "
                           f"found {images.shape[0]}.")


def predict_configuration(model, images: np.ndarray, geometry: Geometry, configuration: str,
                          folds=None, tta: bool = True, step_size: float = 0.5, device="auto",
                          precision: str = "auto", batch_size: int = 1, return_probabilities: bool = True,
                          progress: Optional[ProgressCallback] = None, _cache: Optional[dict] = None,
                          channels_last: Optional[bool] = None, runtime: str = "torch",
                          uncertainty_out: Optional[dict] = None, locate: bool = True
                          ) -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """One configuration (its folds averaged) -> (labels, probabilities) in the input grid; a cascade stage
    first predicts its previous stage, a fine stage its coarse stage (results cached in ``_cache`` for
    ensembles) and then only the box around what that found (``locate=False``: the whole image). With
    ``uncertainty_out`` (a dict), ``{"uncertainty", "measure", "members"[, "disagreement"]}`` (maps in the
    input grid, see `predict_arrays`) is stored there under the configuration's name."""
    from AutoSegLib.io.labels import cascade_label_values, cascade_one_hot
    from AutoSegLib.preprocessing.case import preprocess_case

    _cache = {} if _cache is None else _cache
    key = (configuration, return_probabilities)
    if key in _cache and uncertainty_out is None:
        return _cache[key]
    conf = model.plans.configuration(configuration)
    if locate:
        from AutoSegLib.inference.located import located_stage
        located = located_stage(model.plans, conf.name)
        if located is not None:
            result = _predict_located(model, images, geometry, conf.name, located, folds, tta, step_size, device,
                                      precision, batch_size, return_probabilities, progress, _cache, channels_last,
                                      runtime, uncertainty_out)
            if not return_probabilities:
                _cache[key] = result
            return result
    prev_labels = None
    if conf.previous_stage:
        if conf.previous_stage not in model.configurations:
            raise AutoSegError(f"{model.path}: {configuration!r} is a cascade stage and needs the trained "
                               f"{conf.previous_stage!r} configuration, which this model lacks.")
        emit(progress, "log", level="info", message=f"cascade: predicting {conf.previous_stage} first")
        prev_labels, _ = predict_configuration(model, images, geometry, conf.previous_stage, folds, tta, step_size,
                                               device, precision, batch_size, False, progress, _cache, channels_last,
                                               runtime)
    emit(progress, "stage", stage="predict", message=f"{configuration}: preprocessing")
    label_in = None if prev_labels is None else prev_labels[None].astype(np.int16)
    data, seg, props = preprocess_case(images, geometry, model.plans, configuration, label=label_in)
    if prev_labels is not None:
        seg_arr = np.asarray(seg)[0]
        data = np.concatenate([np.asarray(data, dtype=np.float32),
                               cascade_one_hot(seg_arr, cascade_label_values(model.label_layout))])
    if runtime == "torch":
        import torch
        data = torch.from_numpy(np.ascontiguousarray(data, dtype=np.float32))
        device = resolve_device(device)
    statistics = measure = None
    if uncertainty_out is not None:
        from AutoSegLib.inference.uncertainty import MEASURE, EnsembleStatistics, ensemble_members
        members = ensemble_members(model, configuration, folds, tta)
        measure = MEASURE if members > 1 else "entropy"
        if members > 1:  # the members' moments: the disagreement (and a measure other than the entropy)
            statistics = EnsembleStatistics(regions=model.label_layout.has_regions)
    logits = predict_logits(model, configuration, data, folds=folds, tta=tta, step_size=step_size, device=device,
                            precision=precision, batch_size=batch_size, progress=progress,
                            channels_last=channels_last, runtime=runtime, statistics=statistics)
    del data
    maps = {}
    if measure is not None:
        from AutoSegLib.inference.uncertainty import DISAGREEMENT, entropy_of_logits
        maps["uncertainty"] = (entropy_of_logits(logits, model.label_layout.has_regions) if measure == "entropy"
                               else statistics.uncertainty(measure))
        if statistics is not None:
            maps["disagreement"] = statistics.uncertainty(DISAGREEMENT)
        del statistics
    emit(progress, "stage", stage="predict", message=f"{configuration}: resampling to the input grid")
    result = export_logits(logits, props, model.plans, configuration, return_probabilities=return_probabilities)
    if maps:
        from AutoSegLib.inference.uncertainty import export_uncertainty
        del logits
        uncertainty_out[configuration] = {"measure": measure, "members": members, **{
            k: export_uncertainty(maps.pop(k), props, model.plans, configuration) for k in list(maps)}}
    if not return_probabilities:
        _cache[key] = result  # label maps only (a cascade's previous stage): small
    return result


def _predict_located(model, images, geometry, configuration, located, folds, tta, step_size, device, precision,
                     batch_size, return_probabilities, progress, cache, channels_last, runtime, uncertainty_out):
    """A fine stage (`inference.located`): its coarse stage first, then the fine network inside the box around
    the coarse foreground (half a patch of context; background outside)."""
    from AutoSegLib.inference.located import margin_in_array_order, region_of_interest
    from AutoSegLib.inference.roi import predict_in_box

    coarse, margin_t = located
    if coarse not in model.configurations:
        raise AutoSegError(f"{model.path}: {configuration!r} refines what {coarse!r} finds and needs its trained "
                           f"weights, which this model lacks.")
    emit(progress, "log", level="info", message=f"coarse to fine: predicting {coarse} first")
    coarse_labels, _ = predict_configuration(model, images, geometry, coarse, folds, tta, step_size, device,
                                             precision, batch_size, False, progress, cache, channels_last, runtime)
    margin = margin_in_array_order(margin_t, model.plans.transpose_forward)
    box = region_of_interest(coarse_labels, geometry.spacing, margin)
    layout = model.label_layout
    if box is None:
        emit(progress, "log", level="warning",
             message=f"coarse to fine: {coarse} found no foreground; {configuration} has nothing to refine")
        shape = images.shape[1:]
        probs = None
        if return_probabilities:
            probs = np.zeros((layout.num_outputs, *shape), np.float32)
            if not layout.has_regions:
                probs[0] = 1.0
        if uncertainty_out is not None:
            from AutoSegLib.inference.uncertainty import ensemble_members
            uncertainty_out[configuration] = {"measure": "entropy", "uncertainty": np.zeros(shape, np.float32),
                                              "members": ensemble_members(model, configuration, folds, tta)}
        return np.zeros(shape, label_dtype(layout)), probs
    emit(progress, "log", level="info",
         message=f"coarse to fine: {configuration} inside {'x'.join(str(h - l) for l, h in box[::-1])} of "
                 f"{'x'.join(str(n) for n in images.shape[1:][::-1])} voxels")
    crop_maps: dict = {}

    def inside(m, imgs, geo):
        out = None if uncertainty_out is None else {}
        result = predict_configuration(m, imgs, geo, configuration, folds, tta, step_size, device, precision,
                                       batch_size, return_probabilities, progress, {}, channels_last, runtime, out,
                                       locate=False)
        if out:
            crop_maps.update(out[configuration])
        return result

    result = predict_in_box(inside, model, images, geometry, box, None, [configuration], return_probabilities,
                            progress, maps=crop_maps)
    if uncertainty_out is not None:
        uncertainty_out[configuration] = crop_maps
    return result


def predict_arrays(model, images: np.ndarray, geometry: Geometry, configuration: "str | Sequence[str] | None" = None,
                   folds=None, tta: bool = True, step_size: float = 0.5, device="auto", precision: str = "auto",
                   return_probabilities: bool = False, postprocess: bool = True, batch_size: int = 1,
                   progress: Optional[ProgressCallback] = None, channels_last: Optional[bool] = None,
                   runtime: str = "torch", uncertainty_out: Optional[dict] = None, fast: bool = False, roi=None,
                   source: str = "input") -> Tuple[np.ndarray, Optional[np.ndarray]]:
    """Segment one case given as arrays.

    Parameters
    ----------
    model : models.folder.Model
        From ``load_model``.
    images : ndarray, (C, *spatial)
        The case's channels in array order (z, y, x), as ``io.images.read_case`` returns them.
    geometry : Geometry
        Their geometry (spacing in array order).
    configuration : str or sequence of str, optional
        One configuration or several to ensemble (probabilities averaged). Default: the model's inference
        instructions, else its best single configuration.
    folds : sequence, optional
        Folds to use (default: all present).
    tta : bool
        Test-time mirroring.
    step_size : float
        Sliding-window step as a fraction of the patch.
    device : str
        ``auto``, ``cpu``, ``cuda`` or ``mps``.
    precision : str
        ``auto`` (float16 autocast on CUDA, as the reference; on CPU bfloat16 for a model trained in bfloat16
        when the CPU computes it natively, else float32), ``float32``, ``bfloat16``, ``float16``.
    return_probabilities : bool
        Also return the probabilities.
    postprocess : bool
        Apply the model's post-processing steps (when it has instructions for this configuration choice).
    batch_size : int
        Windows per network call.
    channels_last : bool, optional
        Channels-last convolutions: faster on CPU, but float32 results then agree with the reference to
        ~1e-3 in probability instead of exactly. Default: on with autocast or CUDA, off otherwise.
    runtime : str
        What runs the networks: ``torch`` (default), ``openvino``, ``onnxruntime`` (CPU, float32, the
        folds' exported ONNX networks; exported on first use when missing) or ``auto`` (the compiled
        runtime on the CPU when one is installed, torch on CUDA/MPS); see `runtimes.resolve_runtime`.
    uncertainty_out : dict, optional
        When given, filled with ``uncertainty`` (ndarray (*spatial) float32 in [0, 1], the input grid: the
        ensemble's per-voxel uncertainty, `inference.uncertainty`; the mean over configurations for an
        ensemble of configurations), ``measure`` (str), ``members`` (int: folds x mirrorings, summed over
        configurations) and, with more than one member, ``disagreement`` (the members' mutual information,
        same grid). Costs no extra network passes.
    fast : bool
        Fast mode: no mirroring, step ``max(step_size, FAST_STEP_SIZE)`` and the first ``FAST_FOLDS`` fold(s)
        of each configuration when ``folds`` is not given (see `fast_settings`).
    roi : pair of (x, y, z) corners in mm, optional
        Predict only inside this box (LPS physical coordinates; see `inference.roi`); labels are zero
        outside it, on the full input grid.
    source : str
        Names the input in error messages.

    Returns
    -------
    labels : ndarray (*spatial), uint8 (uint16 for label values >= 255)
        In the input grid.
    probabilities : ndarray (K, *spatial) float32, or None
        Softmax probabilities (sigmoid per region for region-based models).

    Raises
    ------
    AutoSegError
        Wrong channel count or dimensionality, unknown configuration or fold.
    """
    check_input(model, images, geometry)
    configurations, folds_for, tta, step_size = resolve_settings(model, configuration, folds, tta, step_size, fast,
                                                                 progress)
    from AutoSegLib.inference.runtimes import resolve_runtime
    runtime = resolve_runtime(runtime, str(device))  # once, so that every configuration and fold uses the same
    if roi is not None:
        from AutoSegLib.inference.roi import predict_in_roi

        def whole(m, imgs, geo):
            return _predict_configurations(m, imgs, geo, configurations, folds_for, tta, step_size, device, precision,
                                           return_probabilities, postprocess, batch_size, progress, channels_last,
                                           runtime, uncertainty_out)
        return predict_in_roi(whole, model, images, geometry, roi, configurations, return_probabilities, progress,
                              source, maps=uncertainty_out)
    return _predict_configurations(model, images, geometry, configurations, folds_for, tta, step_size, device,
                                   precision, return_probabilities, postprocess, batch_size, progress, channels_last,
                                   runtime, uncertainty_out)


def resolve_settings(model, configuration=None, folds=None, tta: bool = True, step_size: float = 0.5,
                     fast: bool = False, progress: Optional[ProgressCallback] = None):
    """``(configurations, {configuration: folds or None}, tta, step_size)`` that `predict_arrays` will use: the
    model's default configurations and find-best's folds when none are named, then fast mode."""
    if configuration is None:
        configurations = tuple(model.default_configurations())
    elif isinstance(configuration, str):
        configurations = (configuration,)
    else:
        configurations = tuple(configuration)
    for c in configurations:
        if c not in model.configurations:
            raise AutoSegError(f"{model.path}: no trained weights for configuration {c!r}; "
                               f"available: {sorted(model.configurations)}.")
    folds_for = {c: folds for c in configurations}
    if folds is None and configuration is None and model.inference and model.inference.get("folds"):
        for c in configurations:  # the folds find-best chose, when the user named none
            chosen = model.inference["folds"].get(c)
            if chosen and all(str(f) in model.configurations[c].folds for f in chosen):
                folds_for[c] = list(chosen)
    if fast:
        folds_for, tta, step_size = fast_settings(model, folds_for, tta, step_size, explicit_folds=folds is not None)
        emit(progress, "log", level="info", message=f"fast mode: folds {folds_for}, no mirroring, step {step_size}")
    return configurations, folds_for, tta, step_size


def fast_settings(model, folds_for: dict, tta: bool, step_size: float, explicit_folds: bool = False):
    """Fast mode's ``(folds per configuration, tta, step_size)``: no mirroring, a step of at least
    ``FAST_STEP_SIZE``, and (unless the user named folds) the first ``FAST_FOLDS`` of the folds that would
    otherwise be used."""
    out = {}
    for c, chosen in folds_for.items():
        present = list(model.configurations[c].folds)
        use = list(chosen) if chosen else present
        out[c] = use if explicit_folds else [str(f) for f in use[:FAST_FOLDS]]
    return out, False, max(float(step_size), FAST_STEP_SIZE)


def _predict_configurations(model, images, geometry, configurations, folds_for, tta, step_size, device, precision,
                            return_probabilities, postprocess, batch_size, progress, channels_last, runtime,
                            uncertainty_out=None):
    layout = model.label_layout
    cache: dict = {}
    per_configuration = None if uncertainty_out is None else {}
    need_probs = return_probabilities or len(configurations) > 1
    if len(configurations) == 1:
        labels, probs = predict_configuration(model, images, geometry, configurations[0], folds_for[configurations[0]],
                                              tta, step_size,
                                              device, precision, batch_size, need_probs, progress, cache,
                                              channels_last, runtime, per_configuration)
    else:
        probs = None
        for c in configurations:
            _, p = predict_configuration(model, images, geometry, c, folds_for[c], tta, step_size, device, precision,
                                         batch_size, True, progress, cache, channels_last, runtime, per_configuration)
            if probs is None:
                probs = p
            else:
                probs += p
            del p
        probs /= len(configurations)
        labels = probabilities_to_labels(probs, layout).astype(label_dtype(layout))
    if postprocess:
        labels = _postprocess(model, labels, configurations, layout)
    if uncertainty_out is not None:
        from AutoSegLib.inference.uncertainty import combine_configurations
        uncertainty_out.update(combine_configurations(per_configuration))
    return labels, (probs if return_probabilities else None)


def _postprocess(model, labels: np.ndarray, configurations: Tuple[str, ...], layout) -> np.ndarray:
    instr = model.inference or {}
    steps = instr.get("postprocessing") or []
    if not steps:
        return labels
    if tuple(instr.get("configurations") or ()) != tuple(configurations):
        log.info("post-processing skipped: it was chosen for %s, not %s", instr.get("configurations"), configurations)
        return labels
    from AutoSegLib.postprocessing import apply_postprocessing
    return np.asarray(apply_postprocessing(labels, steps, layout)).astype(labels.dtype, copy=False)


__all__ = ["predict_arrays", "predict_configuration", "check_input", "NetworkPredictor", "resolve_device",
           "resolve_precision"]
