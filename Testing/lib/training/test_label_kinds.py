"""Training with region-based labels (sigmoid outputs) and with an ignore label, end to end (tiny)."""
import json

import numpy as np
import pytest

from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training.trainer import train_fold

CFG = TrainingConfig(epochs=1, iterations_per_epoch=3, val_iterations=1, num_workers=0, torch_threads=1,
                     mirror_at_validation=False, seed=2)


@pytest.mark.parametrize("labels,order,names", [
    ({"background": 0, "whole": [1, 2], "lesion": [2]}, [1, 2], ["whole", "lesion"]),
    ({"background": 0, "organ": 1, "ignore": 2}, None, ["organ"]),   # the synthetic lesion becomes unannotated
], ids=["regions", "ignore"])
def test_label_kinds_train_and_validate(tmp_path, make_work, labels, order, names, check_validation_dice):
    work = make_work(tmp_path, n_cases=4, labels=labels, regions_class_order=order)
    events = []
    out = train_fold(work, "3d_fullres", 0, CFG, progress=events.append)
    epoch = [e for e in events if e["event"] == "epoch"][0]
    assert len(epoch["pseudo_dice"]) == len(names)
    summary = json.loads((out / "validation" / "summary.json").read_text())
    assert sorted(summary["mean_dice"]) == sorted(names)
    # the recorded Dice, recomputed by hand from the written label maps and the raw references: a region
    # counts every value it holds; the ignore label's reference voxels count for nothing
    regions = {n: tuple(v) if isinstance(v, list) else (v,) for n, v in labels.items() if n in names}
    check_validation_dice(out, regions, ignore_value=labels.get("ignore"))
    if order is not None:  # regions are painted with regions_class_order's values only
        from AutoSegLib.io.images import read_image
        for entry in summary["cases"].values():
            assert set(np.unique(read_image(out / "validation" / entry["prediction"])[0])) <= {0, 1, 2}
