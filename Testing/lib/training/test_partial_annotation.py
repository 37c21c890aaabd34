"""Partial annotations through the whole library: cases annotated on one axial slice in four (the other
voxels carry the dataset's "ignore" label) preprocess with the ignore value kept, train, and the model
segments the unannotated slices as well as the annotated ones (Dice above chance on both)."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from AutoSegLib.io.images import read_image, write_image

IGNORE = 3
EVERY = 4  # one annotated axial slice in EVERY


def _dice(pred: np.ndarray, ref: np.ndarray) -> float:
    denom = pred.sum() + ref.sum()
    return float(2 * np.logical_and(pred, ref).sum() / denom) if denom else 1.0


def _chance(ref: np.ndarray) -> float:
    """Best Dice a prediction blind to the image reaches: everything foreground gives 2p / (1 + p)."""
    p = float(ref.mean())
    return 2 * p / (1 + p)


def partialize(raw: Path, work: Path, value: int = IGNORE) -> dict:
    """Replace every label file by its partial version (``value`` off the annotated slices); with ``value`` the
    ignore label, declare it in the raw and work dataset.json and in plans.json. Returns the full labels."""
    full = {}
    for path in sorted((raw / "labelsTr").glob("*.nii.gz")):
        label, geo = read_image(path)
        full[path.name[:-len(".nii.gz")]] = label.copy()
        partial = label.copy()
        partial[np.arange(label.shape[0]) % EVERY != 0] = value
        write_image(partial.astype(np.uint8), geo, path)
    if value != IGNORE:
        return full
    for p in (raw / "dataset.json", work / "dataset.json", work / "plans.json"):
        data = json.loads(p.read_text())
        data["labels"] = {**data["labels"], "ignore": IGNORE}
        p.write_text(json.dumps(data))
    return full


def train_on_partial_cases(tmp_path, make_work, value: int = IGNORE) -> dict:
    """Partialize, check, preprocess, train 4 short epochs on fold 'all', predict the training cases in full;
    returns {"annotated": (organ Dice, chance), "unannotated": (...)} over the annotated / other slices."""
    import torch

    from AutoSegLib.inference.predict import predict_arrays
    from AutoSegLib.io.verify import verify_dataset
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.planning.plans import Plans
    from AutoSegLib.preprocessing.dataset import preprocess_dataset
    from AutoSegLib.training.config import TrainingConfig
    from AutoSegLib.training.trainer import train_fold

    torch.set_num_threads(1)
    work = make_work(tmp_path, n_cases=6, shape=(16, 24, 24), seed=2)
    raw = Path(json.loads((work / "dataset.json").read_text())["dataset_path"])
    full = partialize(raw, work, value)
    report = verify_dataset(raw, num_workers=1)
    assert report.ok, report.errors
    plans = Plans.from_json(work / "plans.json")
    assert plans.label_layout().num_outputs == 3
    preprocess_dataset(raw, plans, work_dir=work, num_workers=1, force=True)
    if value == IGNORE:
        assert report.dataset.labels.ignore_label == IGNORE and plans.label_layout().ignore_label == IGNORE
        segs = sorted(work.glob("preprocessed/*/*_seg.npy"))
        assert len(segs) == 6 and all(IGNORE in np.unique(np.load(s)) for s in segs)

    config = TrainingConfig(epochs=4, iterations_per_epoch=10, val_iterations=2, num_workers=0, torch_threads=1,
                            mirror_at_validation=False, validate_at_end=False, seed=3)
    train_fold(work, "3d_fullres", "all", config)
    model = load_model(work)

    annotated_pred, annotated_ref, other_pred, other_ref = [], [], [], []
    for case, ref in full.items():
        image, geo = read_image(raw / "imagesTr" / f"{case}_0000.nii.gz")
        labels, _ = predict_arrays(model, image[None], geo, tta=False, device="cpu")
        assert labels.shape == ref.shape and set(np.unique(labels).tolist()) <= {0, 1, 2}   # ignore never predicted
        on = np.arange(ref.shape[0]) % EVERY == 0
        organ_pred, organ_ref = labels > 0, ref > 0          # organ region (organ + lesion inside it)
        annotated_pred.append(organ_pred[on]); annotated_ref.append(organ_ref[on])
        other_pred.append(organ_pred[~on]); other_ref.append(organ_ref[~on])
    results = {}
    for name, pred, ref in (("annotated", annotated_pred, annotated_ref), ("unannotated", other_pred, other_ref)):
        pred, ref = np.concatenate([p.ravel() for p in pred]), np.concatenate([r.ravel() for r in ref])
        results[name] = (_dice(pred, ref), _chance(ref))
    print("organ Dice (value, chance):", results)
    return results


def test_partially_annotated_cases_train_and_segment_unannotated_slices(tmp_path, make_work):
    results = train_on_partial_cases(tmp_path, make_work)       # measured: 0.87 / 0.86, chance 0.09 / 0.10
    for name, (dice, chance) in results.items():
        assert dice > max(0.5, chance + 0.1), (name, results)


@pytest.mark.slow
def test_control_the_same_slices_as_background_do_not_train(tmp_path, make_work):
    """Control: the unannotated voxels labelled background instead of ignore (what a tool without the ignore
    label would do) teach the network that the organ is mostly background; measured Dice 0.0 / 0.0."""
    results = train_on_partial_cases(tmp_path, make_work, value=0)
    assert results["unannotated"][0] < 0.5, results
