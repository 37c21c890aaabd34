"""Fast mode: one fold, no mirroring, a larger step (`predict.fast_settings`)."""
from __future__ import annotations

import numpy as np

from AutoSegLib.inference import predict as predict_module
from AutoSegLib.inference.predict import FAST_FOLDS, FAST_STEP_SIZE, fast_settings, predict_arrays
from AutoSegLib.io.geometry import Geometry

GEO = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def test_fast_settings(tiny_model):
    model = tiny_model(folds=("0", "1", "2"))
    folds, tta, step = fast_settings(model, {"3d_fullres": None}, True, 0.5)
    assert folds == {"3d_fullres": ["0"][:FAST_FOLDS]} and tta is False and step == FAST_STEP_SIZE
    # folds the user named are kept; find-best's choice is cut to FAST_FOLDS; a larger step is kept
    assert fast_settings(model, {"3d_fullres": ["1", "2"]}, True, 0.5, explicit_folds=True)[0] == {"3d_fullres": ["1", "2"]}
    assert fast_settings(model, {"3d_fullres": ["2", "1"]}, True, 0.5)[0] == {"3d_fullres": ["2"]}
    assert fast_settings(model, {"3d_fullres": None}, True, 1.0)[2] == 1.0


def test_fast_prediction_is_the_first_fold_without_mirroring(tiny_model):
    model = tiny_model(folds=("0", "1"))
    img = np.random.default_rng(3).normal(100, 20, (1, 8, 20, 20)).astype(np.float32)
    messages = []
    fast, _ = predict_arrays(model, img, GEO, fast=True, runtime="auto", progress=messages.append)
    ref, _ = predict_arrays(model, img, GEO, folds=["0"], tta=False, step_size=predict_module.FAST_STEP_SIZE,
                            runtime="auto")
    full, _ = predict_arrays(model, img, GEO, runtime="auto")
    np.testing.assert_array_equal(fast, ref)
    assert not np.array_equal(fast, full)  # the two folds (random weights) and mirroring do change the labels
    assert any("fast mode" in str(m.get("message")) for m in messages)
