"""A fold's final validation: predict its validation cases in full and score them in their raw grid.

For each validation case: sliding-window prediction of the whole preprocessed image (Gaussian weighting,
step 0.5, test-time mirroring unless switched off), export to the raw case's own grid
(``inference.export.export_logits``: resample, softmax/sigmoid, paste into the crop box, transpose back),
written as ``validation/<case>.npz`` (key ``probabilities``, float32 (K, *raw spatial)) and
``validation/<case><file_ending>`` (label map with the raw image's geometry). Dice per foreground class
(or region) against the raw reference label goes to ``validation/summary.json``.

Dice here is this module's own small implementation (`dice_per_label`): 2|P&G| / (|P| + |G|), NaN when
the class is absent from both, ignore-label voxels excluded.

Cascades (``training.cascade``): a cascade stage's validation cases get their previous-stage prediction
(the one its training used) as one-hot input channels, as inference does; a stage that a cascade follows
also writes each predicted label map onto the next stage's preprocessed grid (this needs the raw images,
found through ``dataset_path`` in the work folder's dataset.json).
"""
from __future__ import annotations

import logging
import math
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np
import torch

from AutoSegLib.io.atomic import atomic_path, write_json
from AutoSegLib.io.jsonfile import read_json_or_none
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.io.work_folder import raw_label_of, recorded_file_ending
from AutoSegLib.progress import ProgressCallback, ProgressTracker
from AutoSegLib.device import Execution

log = logging.getLogger(__name__)


def dice_per_label(pred: np.ndarray, ref: np.ndarray, layout: LabelLayout) -> Dict[str, float]:
    """Dice per foreground label/region name.

    Parameters
    ----------
    pred, ref : ndarray (*spatial) int
        Label maps (values as in dataset.json).
    layout : LabelLayout

    Returns
    -------
    dict name -> float (NaN when the label is absent from both maps)
    """
    valid = np.ones(ref.shape, bool) if layout.ignore_label is None else ref != layout.ignore_label
    out = {}
    for name, value in zip(layout.foreground_names, layout.foreground_values):
        vals = value if isinstance(value, tuple) else (value,)
        p = np.isin(pred, vals) & valid
        g = np.isin(ref, vals) & valid
        denom = int(p.sum()) + int(g.sum())
        out[name] = float(2 * int((p & g).sum()) / denom) if denom else float("nan")
    return out


def _nanmean(values: Sequence[float]) -> Optional[float]:
    vals = [v for v in values if v is not None and not math.isnan(v)]
    return float(np.mean(vals)) if vals else None


def _raw_images(work_dir: Path) -> Optional[Dict[str, tuple]]:
    """Image files per case of the raw dataset (``dataset_path`` of the work folder's dataset.json), or
    None (with a warning) when it cannot be read."""
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.work_folder import dataset_path_of

    try:
        return {c: f.images for c, f in load_dataset(dataset_path_of(work_dir)).cases.items()}
    except Exception as exc:  # the validation itself must go on
        log.warning("%s: cannot read the raw dataset (%s): no predictions for the next cascade stage written",
                    work_dir / "dataset.json", exc)
        return None


def work_file_ending(work_dir: Path, plans) -> str:
    """The raw dataset's file ending (the work folder's dataset.json; the plans' when it has none)."""
    return recorded_file_ending(read_json_or_none(Path(work_dir) / "dataset.json", expect=dict), plans.file_ending)


def _located_logits(data, props: dict, coarse_map: Path, margin_mm, plans, patch_size, layout, predict_crop):
    """A fine stage's logits of one validation case: its network only inside the box around the coarse
    stage's validation prediction (`inference.located`); background where that found nothing."""
    from AutoSegLib.inference.located import (background_logits, box_on_preprocessed_grid, logits_in_box,
                                              margin_in_array_order, region_of_interest)
    from AutoSegLib.io.images import read_image

    coarse_labels, coarse_geometry = read_image(coarse_map)
    margin = margin_in_array_order(margin_mm, plans.transpose_forward)
    box = region_of_interest(np.asarray(coarse_labels), coarse_geometry.spacing, margin)
    box = box_on_preprocessed_grid(box, props) if box is not None else None
    if box is None:
        return background_logits(data.shape[1:], layout.num_outputs, layout.has_regions)
    return logits_in_box(data, box, patch_size, predict_crop, layout.num_outputs, layout.has_regions)


def validate_fold(net: torch.nn.Module, plans, configuration: str, data_folder: Path, cases: Sequence[str],
                  work_dir: Path, out_dir: Path, ex: Execution, mirror: bool = True,
                  progress: Optional[ProgressCallback] = None, fold=None) -> dict:
    """Predict ``cases`` in full, write probabilities, label maps and ``summary.json`` into ``out_dir``.

    A cascade stage reads its previous-stage predictions (checked before training); a stage with next
    stages also writes the predictions onto their grids (``fold`` is recorded with them).

    Returns the summary dict (also written to ``out_dir/summary.json``)."""
    from AutoSegLib.inference.export import export_logits
    from AutoSegLib.inference.located import coarse_validation_maps, located_stage
    from AutoSegLib.inference.sliding_window import predict_sliding_window
    from AutoSegLib.io.geometry import Geometry
    from AutoSegLib.io.images import read_case, read_image, write_image
    from AutoSegLib.io.labels import cascade_label_values, cascade_one_hot
    from AutoSegLib.training import cascade
    from AutoSegLib.planning.plans import plans_identifier
    from AutoSegLib.training.data import load_case

    plan = plans.configuration(configuration)
    layout = plans.label_layout()
    previous_folder = cascade.previous_stage_folder(work_dir, plans, configuration) if plan.previous_stage else None
    raw_images = _raw_images(work_dir) if cascade.next_stages(plans, configuration) else None
    record = read_json_or_none(Path(work_dir) / "dataset.json", expect=dict)
    ending = recorded_file_ending(record, plans.file_ending)
    located = located_stage(plans, configuration)
    coarse_maps = coarse_validation_maps(work_dir, located[0], fold, cases, ending) if located else None
    net.deep_supervision = False
    net.eval()
    mirror_axes = tuple(range(len(plan.patch_size))) if mirror else ()

    @torch.no_grad()
    def predictor(batch: torch.Tensor) -> torch.Tensor:
        with ex.autocast():
            return net(batch.contiguous(memory_format=ex.memory_format)).float()

    tracker = ProgressTracker(progress, "validation", len(cases))
    per_case: Dict[str, dict] = {}
    for case in cases:
        data, _, props = load_case(data_folder, case, mmap=False)
        if previous_folder is not None:
            previous = cascade.load_previous_stage(previous_folder, case, shape=data.shape[1:], mmap=False)
            data = np.concatenate([data, cascade_one_hot(previous[0], cascade_label_values(layout))])
        if coarse_maps is None:
            logits = predict_sliding_window(data, predictor, plan.patch_size, num_outputs=layout.num_outputs,
                                            mirror_axes=mirror_axes, device=ex.device)
        else:  # a fine stage: only inside the box around what its coarse stage found in this case
            logits = _located_logits(data, props, coarse_maps[case], located[1], plans, plan.patch_size, layout,
                                     lambda crop: predict_sliding_window(crop, predictor, plan.patch_size,
                                                                         num_outputs=layout.num_outputs,
                                                                         mirror_axes=mirror_axes, device=ex.device))
        labels, probs = export_logits(logits, props, plans, configuration)
        if raw_images is not None and case in raw_images:
            image, raw_geometry = read_case(raw_images[case])
            cascade.save_next_stage_predictions(work_dir, plans, configuration, case, labels, image, raw_geometry,
                                                fold, plans_identifier(plan))
        elif raw_images is not None:
            log.warning("case %s is not in the raw dataset: no prediction for the next cascade stage", case)
        with atomic_path(out_dir / f"{case}.npz") as tmp:
            np.savez_compressed(tmp, probabilities=probs.astype(np.float32))
        geometry = Geometry.from_dict(props["geometry"])
        write_image(labels, geometry, out_dir / f"{case}{ending}")
        ref_path = raw_label_of(record, case)
        entry: dict = {"prediction": f"{case}{ending}", "probabilities": f"{case}.npz"}
        if ref_path is not None:
            ref, _ = read_image(ref_path)
            entry["reference"] = str(ref_path)
            entry["dice"] = dice_per_label(labels, np.asarray(ref), layout)
        else:
            log.warning("no raw label for %s (%s names no dataset_path, or its labelsTr lacks the case): Dice not "
                        "computed", case, work_dir / "dataset.json")
            entry["dice"] = None
        per_case[case] = entry
        tracker.step(case)
    names = list(layout.foreground_names)
    mean = {n: _nanmean([c["dice"][n] for c in per_case.values() if c["dice"]]) for n in names}
    summary = {
        "configuration": configuration,
        "metric": "Dice per foreground label in the raw image grid (training.validation.dice_per_label)",
        "mirroring": bool(mirror),
        "cases": per_case,
        "mean_dice": mean,
        "mean_foreground_dice": _nanmean([v for v in mean.values() if v is not None]),
    }
    write_json(out_dir / "summary.json", summary)
    return summary
