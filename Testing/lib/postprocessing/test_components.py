"""Connected-component post-processing on constructed arrays (sizes counted by hand)."""
import json

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.postprocessing import (InferenceInstructions, apply_postprocessing, largest_component,
                                       load_inference_instructions, remove_all_but_largest_component,
                                       save_inference_instructions)


def test_largest_component_keeps_biggest_blob():
    m = np.zeros((6, 6, 6), bool)
    m[0:2, 0:2, 0:2] = True          # 8 voxels
    m[4:6, 4:6, 3:6] = True          # 12 voxels
    m[0, 5, 5] = True                # 1 voxel
    out = largest_component(m)
    expected = np.zeros_like(m)
    expected[4:6, 4:6, 3:6] = True
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == bool


def test_full_connectivity_joins_diagonal_neighbours():
    m = np.zeros((4, 4, 4), bool)
    m[0, 0, 0] = m[1, 1, 1] = m[2, 2, 2] = True  # a diagonal chain: one component with 26-connectivity
    m[0, 3, 0] = m[1, 3, 0] = True               # 2 voxels, separate
    out = largest_component(m)
    assert out.sum() == 3 and out[0, 0, 0] and out[2, 2, 2] and not out[0, 3, 0]


def test_ties_keep_all_largest_and_empty_mask():
    m = np.zeros((5, 9), bool)
    m[0:2, 0:2] = True
    m[3:5, 7:9] = True
    m[2, 4] = True
    out = largest_component(m)
    assert out.sum() == 8 and not out[2, 4]
    assert not largest_component(np.zeros((3, 3, 3), bool)).any()


def test_remove_all_but_largest_merged_labels_and_input_untouched():
    lm = np.zeros((1, 10, 10), np.uint8)
    lm[0, 1:4, 1:4] = 1          # 9 voxels of label 1 ...
    lm[0, 2, 4:6] = 2            # ... touching 2 voxels of label 2: together one component of 11
    lm[0, 8:10, 8:10] = 1        # 4 voxels of label 1, separate
    before = lm.copy()
    out = remove_all_but_largest_component(lm, [1, 2])
    np.testing.assert_array_equal(lm, before)
    expected = before.copy()
    expected[0, 8:10, 8:10] = 0
    np.testing.assert_array_equal(out, expected)
    assert out.dtype == np.uint8
    # label 2 alone: its 2 voxels are one component -> unchanged; label 1 alone: the 4-voxel blob goes
    np.testing.assert_array_equal(remove_all_but_largest_component(lm, 2), before)
    np.testing.assert_array_equal(remove_all_but_largest_component(lm, [[1]]), expected)


def test_apply_postprocessing_steps_in_order():
    layout = LabelLayout.from_dataset_labels({"background": 0, "organ": 1, "lesion": 2, "ignore": 3})
    lm = np.zeros((8, 8, 8), np.int16)
    lm[0:4, 0:4, 0:4] = 1                 # 64 voxels of organ
    lm[1:3, 1:3, 1:3] = 2                 # lesion inside
    lm[6:8, 6:8, 6:8] = 2                 # a separate lesion blob (8 voxels)
    lm[7, 0, 7] = 3                       # ignore value: never removed by "foreground"
    out = apply_postprocessing(lm, [{"step": "largest_component", "labels": "foreground"}], layout)
    exp = lm.copy()
    exp[6:8, 6:8, 6:8] = 0
    np.testing.assert_array_equal(out, exp)
    # per-class step on lesion only: keeps the larger lesion blob (8 voxels, each blob is 8: tie -> both)
    out2 = apply_postprocessing(lm, [{"step": "largest_component", "labels": [2]}], layout)
    np.testing.assert_array_equal(out2, lm)
    lm[6:8, 6:8, 7] = 0  # now the outside blob has 4 voxels
    out3 = apply_postprocessing(lm, [{"step": "largest_component", "labels": [2]}], layout)
    assert out3[6:8, 6:8, 6].sum() == 0 and out3[1:3, 1:3, 1:3].min() == 2
    np.testing.assert_array_equal(apply_postprocessing(lm, [], layout), lm)  # no steps: unchanged


def test_instructions_round_trip_and_bad_files(tmp_path):
    ins = InferenceInstructions(("3d_fullres", "2d"),
                                ({"step": "largest_component", "labels": "foreground"},
                                 {"step": "largest_component", "labels": [[1, 2]]}),
                                {"3d_fullres": ("0", "1"), "2d": ("0",)}, {"3d_fullres": 0.8}, ("note",))
    assert load_inference_instructions(tmp_path) is None
    save_inference_instructions(tmp_path, ins)
    back = load_inference_instructions(tmp_path)
    assert back == ins
    (tmp_path / "inference.json").write_text(json.dumps({"configurations": ["x"], "bogus": 1}))
    with pytest.raises(AutoSegError, match="unknown keys"):
        load_inference_instructions(tmp_path)
    (tmp_path / "inference.json").write_text(json.dumps({"configurations": ["x"],
                                                         "postprocessing": [{"step": "dilate"}]}))
    with pytest.raises(AutoSegError, match="postprocessing\\[0\\]"):
        load_inference_instructions(tmp_path)
    (tmp_path / "inference.json").write_text("{not json")
    with pytest.raises(AutoSegError, match="not valid JSON"):
        load_inference_instructions(tmp_path)
    (tmp_path / "inference.json").write_text(json.dumps({"schema_version": 99, "configurations": ["x"]}))
    with pytest.raises(AutoSegError, match="schema_version"):
        load_inference_instructions(tmp_path)


def test_matches_reference_component_filter():
    """Random 2D/3D masks filtered by the reference package (fixture made by make_reference_components.py)."""
    from pathlib import Path
    data = np.load(Path(__file__).parent / "data" / "reference_components.npz")
    n = len([k for k in data.files if k.startswith("mask_")])
    assert n == 24
    for i in range(n):
        np.testing.assert_array_equal(largest_component(data[f"mask_{i}"]), data[f"kept_{i}"], err_msg=f"mask_{i}")
