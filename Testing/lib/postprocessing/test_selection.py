"""find-best on constructed cross-validation results with hand-computed Dice values."""
import json

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.postprocessing import load_inference_instructions
from AutoSegLib.postprocessing.selection import determine_postprocessing, find_best, probabilities_to_label_map

ONE = LabelLayout.from_dataset_labels({"background": 0, "organ": 1})
TWO = LabelLayout.from_dataset_labels({"background": 0, "organ": 1, "lesion": 2})


def test_postprocessing_kept_when_removing_a_spurious_blob_raises_dice():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    pred = ref.copy()
    pred[8:10, 8:10, 8:10] = 1                       # 8 spurious voxels
    steps, decisions, before, after = determine_postprocessing([pred], [ref], ONE)
    assert steps == [{"step": "largest_component", "labels": "foreground"}]
    assert before == pytest.approx(128 / 136) and after == 1.0
    assert decisions[0]["kept"]


def test_postprocessing_not_kept_when_removing_lowers_dice():
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1
    ref[8:10, 8:10, 8:10] = 1                        # a real second component
    steps, decisions, before, after = determine_postprocessing([ref.copy()], [ref], ONE)
    assert steps == [] and before == after == 1.0 and not decisions[0]["kept"]


def test_per_class_step_kept_when_merged_step_hurts_another_class():
    ref = np.zeros((12, 12, 12), np.uint8)
    ref[1:6, 1:6, 1:6] = 1                            # organ, 125 voxels
    ref[9:11, 9:11, 9:11] = 2                         # lesion, separate, 8 voxels
    pred = ref.copy()
    pred[0:2, 9:12, 9:12] = 1                         # spurious organ blob, 18 voxels, far from both
    steps, decisions, before, after = determine_postprocessing([pred], [ref], TWO)
    # merged: would delete the lesion (Dice 1 -> 0) -> not kept; organ alone: 250/268 -> 1 -> kept;
    # lesion alone: unchanged -> not kept
    assert steps == [{"step": "largest_component", "labels": [1]}]
    assert [d["kept"] for d in decisions] == [False, True, False]
    assert decisions[0]["labels_worse"] == ["lesion"]
    assert before == pytest.approx((250 / 268 + 1) / 2) and after == 1.0


def test_probabilities_to_label_map_softmax_and_regions():
    p = np.zeros((3, 2, 2), np.float32)
    p[0] = 0.5
    p[2, 0, 0] = 0.9
    p[1, 1, 1] = 0.6
    np.testing.assert_array_equal(probabilities_to_label_map(p, TWO), [[2, 0], [0, 1]])
    regions = LabelLayout.from_dataset_labels({"background": 0, "whole": [1, 2], "core": [2]},
                                              regions_class_order=[1, 2])
    q = np.array([[[0.9, 0.2]], [[0.7, 0.9]]], np.float32)  # (2 regions, 1, 2)
    np.testing.assert_array_equal(probabilities_to_label_map(q, regions), [[2, 2]])


def _fake_work_dir(tmp_path, folds=("0", "1")):
    """Two configurations, one case per fold; probabilities chosen so that each alone has a known Dice and
    their average is the exact cube plus a 2-voxel spurious blob (removed by post-processing)."""
    raw = tmp_path / "raw"
    work = tmp_path / "work"
    geo = Geometry.identity((1.0, 1.0, 1.0))
    ref = np.zeros((10, 10, 10), np.uint8)
    ref[2:6, 2:6, 2:6] = 1                            # 64 voxels
    bg, fg = np.array([0.9, 0.1]), np.array([0.2, 0.8])
    a = np.zeros((2, 10, 10, 10), np.float32)
    a[:] = bg[:, None, None, None]
    b = a.copy()
    a[:, 3:6, 2:6, 2:6] = fg[:, None, None, None]     # A misses slice z=2 (48 voxels) ...
    a[:, 2, 2:6, 2:6] = np.array([0.6, 0.4])[:, None, None]  # ... but is unsure there
    b[:, 2:7, 2:6, 2:6] = fg[:, None, None, None]     # B adds slice z=6 (80 voxels) ...
    b[:, 6, 2:6, 2:6] = np.array([0.45, 0.55])[:, None, None]  # ... unsure there
    for p in (a, b):
        p[:, 9, 9, 8:10] = fg[:, None]                # spurious 2-voxel blob in both
    for i, fold in enumerate(folds):
        case = f"case_{i}"
        write_image(ref, geo, raw / "labelsTr" / f"{case}.nii.gz")
        for conf, probs in (("3d_fullres", a), ("2d", b)):
            vdir = work / "trained" / conf / f"fold_{fold}" / "validation"
            vdir.mkdir(parents=True)
            np.savez_compressed(vdir / f"{case}.npz", probabilities=probs)
            (vdir / "summary.json").write_text("{}")
    work.mkdir(exist_ok=True)
    (work / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "organ": 1},
                                                   "file_ending": ".nii.gz", "dataset_path": str(raw)}))
    return work


def test_find_best_scores_ensemble_and_postprocessing(tmp_path):
    work = _fake_work_dir(tmp_path)
    events = []
    r = find_best(work, progress=events.append)
    assert r.candidate_scores["3d_fullres"] == pytest.approx(96 / 114)   # 48 TP, 2 FP, 16 FN
    assert r.candidate_scores["2d"] == pytest.approx(128 / 146)          # 64 TP, 18 FP
    assert r.candidate_scores["2d+3d_fullres"] == pytest.approx(128 / 130)
    assert r.chosen == "2d+3d_fullres" and r.dice_after == 1.0
    ins = load_inference_instructions(work)
    assert ins.configurations == ("2d", "3d_fullres")
    assert ins.folds == {"2d": ("0", "1"), "3d_fullres": ("0", "1")}
    assert ins.postprocessing == ({"step": "largest_component", "labels": "foreground"},)
    assert any("folds ['2', '3', '4']" in n for n in ins.notes)           # missing folds noted
    assert any(e["event"] == "log" and e["level"] == "warning" for e in events)
    md = (work / "find_best_report.md").read_text()
    assert "2d+3d_fullres **(chosen)**" in md and "**kept**" in md
    rep = json.loads((work / "find_best_report.json").read_text())
    assert rep["candidates"]["2d"]["foreground_dice"] == pytest.approx(128 / 146)


def test_find_best_cli_single_configuration_and_errors(tmp_path, capsys):
    work = _fake_work_dir(tmp_path)
    assert main(["find-best", str(work), "-c", "3d_fullres", "--progress-json"]) == 0
    ins = load_inference_instructions(work)
    assert ins.configurations == ("3d_fullres",)
    assert main(["find-best", str(work), "-c", "3d_lowres"]) == 2
    assert main(["find-best", str(work), "--folds", "all"]) == 2
    with pytest.raises(AutoSegError, match="no configuration"):
        find_best(tmp_path / "work", folds=["4"])
    # probabilities in the wrong grid are refused, naming the file
    bad = work / "trained" / "2d" / "fold_0" / "validation" / "case_0.npz"
    np.savez_compressed(bad, probabilities=np.zeros((2, 5, 5, 5), np.float32))
    with pytest.raises(AutoSegError, match="case_0.npz"):
        find_best(work)


def test_decision_equals_the_reference_implementation():
    """Constructed CV predictions scored by the reference's determine_postprocessing (fixture made by
    make_reference_postprocessing.py): same steps kept, same Dice before and after."""
    from pathlib import Path

    data_dir = Path(__file__).parent / "data"
    expected = json.loads((data_dir / "reference_postprocessing.json").read_text())
    arrays = np.load(data_dir / "reference_postprocessing.npz")
    n = len([k for k in arrays.files if k.startswith("pred_")])
    preds = [arrays[f"pred_{i}"] for i in range(n)]
    refs = [arrays[f"ref_{i}"] for i in range(n)]
    steps, decisions, before, after = determine_postprocessing(preds, refs, TWO)
    ref_steps = [{"step": "largest_component", "labels": "foreground" if isinstance(k, list) else [k]}
                 for k in expected["kwargs"]]
    assert steps == ref_steps
    assert [d["kept"] for d in decisions] == [False, True, False]
    assert before == pytest.approx(expected["foreground_dice_before"], abs=1e-12)
    assert after == pytest.approx(expected["foreground_dice_after"], abs=1e-12)
