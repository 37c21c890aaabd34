"""A model's plans.json is checked whenever a model is loaded (predict, import-model): malformed or
absurd patch sizes, spacings and batch sizes are refused naming the file; an image that would resample
to an absurd size at the model's spacing is refused before any allocation."""
import json

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image


@pytest.fixture
def scan(tmp_path):
    folder = tmp_path / "in"
    folder.mkdir()
    write_image(np.random.default_rng(0).random((10, 20, 20)).astype(np.float32),
                Geometry.identity((2.0, 1.0, 1.0)), folder / "a_0000.nii.gz")
    return folder


@pytest.mark.parametrize("key, value, text", [
    ("patch_size", "abc", "patch_size must be 2 or 3 integers"),
    ("patch_size", [100000, 100000, 100000], "patch_size [100000, 100000, 100000] is out of bounds"),
    ("patch_size", None, "patch_size must be 2 or 3 integers, found None"),
    ("spacing", [0, 1, 1], "spacing [0, 1, 1] mm is out of bounds"),
    ("spacing", [-2, 1, 1], "spacing [-2, 1, 1] mm is out of bounds"),
    ("spacing", [1e-6, 1, 1], "is out of bounds"),
    ("spacing", ["x", 1, 1], "spacing must be 3 numbers"),
    ("batch_size", 0, "batch_size must be an integer from 1"),
])
def test_damaged_plans_are_refused_at_predict_and_import(tiny_model, tmp_path, scan, key, value, text, capsys):
    model = tiny_model().path
    plans = json.loads((model / "plans.json").read_text())
    plans["configurations"]["3d_fullres"][key] = value
    (model / "plans.json").write_text(json.dumps(plans))
    out = tmp_path / "out"
    assert main(["predict", "-m", str(model), "-i", str(scan), "-o", str(out), "--no-tta"]) == 2
    err = capsys.readouterr().err
    assert f"{model / 'plans.json'}" in err and text in err, err
    assert not out.exists() or not any(out.iterdir())
    models_dir = tmp_path / "models"
    assert main(["import-model", str(model), "--models-dir", str(models_dir), "--name", "m"]) == 2
    assert text in capsys.readouterr().err
    assert not (models_dir / "m").exists()


def test_image_that_would_resample_to_an_absurd_size_is_refused(tiny_model, tmp_path, capsys):
    model = tiny_model().path
    folder = tmp_path / "in"
    folder.mkdir()
    # 10x20x20 voxels of 1000 mm: at the model's 2x1x1 mm that is 2e12 voxels
    write_image(np.zeros((10, 20, 20), np.float32), Geometry.identity((1000.0, 1000.0, 1000.0)),
                folder / "a_0000.nii.gz")
    assert main(["predict", "-m", str(model), "-i", str(folder), "-o", str(tmp_path / "out"), "--no-tta"]) == 2
    err = capsys.readouterr().err
    assert str(folder / "a_0000.nii.gz") in err and "would become 2e+12 voxels" in err, err
