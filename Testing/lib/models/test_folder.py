"""load_model on AutoSeg model folders and work folders: what it finds, lazy tensors-only weights,
defaults from inference instructions, and the messages for missing pieces."""
import importlib.util
import json
from pathlib import Path

import pytest
import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.labels import cascade_label_values
from AutoSegLib.models.folder import load_model

_spec = importlib.util.spec_from_file_location("inference_conftest",
                                               Path(__file__).parents[1] / "inference" / "conftest.py")
_factory = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_factory)
make_plans, write_model = _factory.make_plans, _factory.write_model


def test_loads_folds_lazily_and_weights_fit_the_network(tmp_path):
    folder = write_model(tmp_path / "m", make_plans(configurations=("3d_fullres", "2d")), folds=("0", "2", "all"))
    model = load_model(folder)
    assert set(model.configurations) == {"3d_fullres", "2d"}
    cm = model.configurations["3d_fullres"]
    assert list(cm.folds) == ["0", "2", "all"]
    assert (cm.num_input_channels, cm.num_outputs, cm.mirror_axes) == (1, 3, (0, 1, 2))
    assert model.configurations["2d"].mirror_axes == (0, 1)
    assert cm.folds["0"]._cache is None  # nothing read yet
    sd = cm.folds["2"].state_dict()
    from AutoSegLib.network.unet import build_network
    build_network(model.plans.configurations["3d_fullres"].network, 1, 3).load_state_dict(sd, strict=True)
    assert model.source == "autoseg" and model.channel_names == {"0": "MR0"}
    assert model.default_configurations() == ("3d_fullres",)


def test_inference_instructions_choose_the_default(tmp_path):
    folder = write_model(tmp_path / "m", make_plans(configurations=("3d_fullres", "2d")))
    (folder / "inference.json").write_text(json.dumps({"schema_version": 1, "configurations": ["2d"],
                                                       "postprocessing": []}))
    model = load_model(folder)
    assert model.inference["configurations"] == ["2d"] and model.inference["postprocessing"] == []
    assert tuple(model.default_configurations()) == ("2d",)


def test_work_dir_with_unfinished_training(tmp_path):
    folder = write_model(tmp_path / "w", make_plans(), checkpoint="checkpoint_latest.pt")
    (folder / "preprocessed").mkdir()
    with pytest.raises(AutoSegError, match=r"no trained weights.*Found only: \['trained/3d_fullres/fold_0/checkpoint_latest.pt'\]"):
        load_model(folder)
    model = load_model(folder, allow_non_final=True)
    assert model.source == "work_dir" and list(model.configurations["3d_fullres"].folds) == ["0"]


def test_missing_pieces_are_named(tmp_path):
    with pytest.raises(AutoSegError, match="model not found"):
        load_model(tmp_path / "nope")
    empty = tmp_path / "empty"
    empty.mkdir()
    with pytest.raises(AutoSegError, match="plans.json is missing"):
        load_model(empty)
    folder = write_model(tmp_path / "m", make_plans())
    (folder / "dataset.json").unlink()
    with pytest.raises(AutoSegError, match="dataset.json is missing"):
        load_model(folder)


def test_corrupt_or_pickled_checkpoint_is_refused_when_used(tmp_path):
    folder = write_model(tmp_path / "m", make_plans())
    ckpt = folder / "trained" / "3d_fullres" / "fold_0" / "checkpoint_final.pt"
    ckpt.write_bytes(b"not a checkpoint")
    model = load_model(folder)  # lazy: loading the folder still works
    with pytest.raises(AutoSegError, match="checkpoint_final.pt"):
        model.configurations["3d_fullres"].folds["0"].state_dict()

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))
    torch.save({"network_weights": {}, "x": Evil()}, ckpt)
    with pytest.raises(AutoSegError):
        model.configurations["3d_fullres"].folds["0"].state_dict()


def test_cascade_inputs_count_foreground_label_values():
    layout = make_plans(labels={"background": 0, "a": 1, "b": 2, "ignore": 3}).label_layout()
    assert cascade_label_values(layout) == (1, 2)
    regions = make_plans(labels={"background": 0, "whole": [1, 2], "core": 2},
                         regions_class_order=(1, 2)).label_layout()
    assert cascade_label_values(regions) == (1, 2)


def test_nnunet_results_folder_is_delegated(nnunet_reference):
    model = load_model(nnunet_reference.model("3d_fullres"))
    assert model.source == "nnunet" and "3d_fullres" in model.configurations


def test_mirror_axes_recorded_in_model_json_win(tmp_path):
    folder = write_model(tmp_path / "m", make_plans(configurations=("3d_fullres", "2d")))
    (folder / "model.json").write_text(json.dumps({"name": "x", "mirror_axes": {"3d_fullres": [1, 2]}}))
    model = load_model(folder)
    assert model.configurations["3d_fullres"].mirror_axes == (1, 2)
    assert model.configurations["2d"].mirror_axes == (0, 1)
    assert model.metadata["name"] == "x"


def test_archive_round_trip_predicts_the_same(tmp_path):
    archive_mod = pytest.importorskip("AutoSegLib.models.archive")
    import numpy as np
    from AutoSegLib.inference.predict import predict_arrays
    from AutoSegLib.io.geometry import Geometry
    folder = write_model(tmp_path / "m", make_plans())
    archive = archive_mod.export_model_archive(folder, tmp_path / "model.zip")
    model = load_model(archive, cache_dir=tmp_path / "cache")
    assert model.source == "archive" and (tmp_path / "cache" / "plans.json").is_file()
    img = np.random.default_rng(0).normal(size=(1, 6, 16, 16)).astype(np.float32)
    geo = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    a, _ = predict_arrays(model, img, geo, tta=False, device="cpu")
    b, _ = predict_arrays(load_model(folder), img, geo, tta=False, device="cpu")
    np.testing.assert_array_equal(a, b)


def _record_autocast(folder, fold, autocast):
    fdir = folder / "trained" / "3d_fullres" / f"fold_{fold}"
    (fdir / "training_config.json").write_text(json.dumps({"epochs": 1, "resolved": {"autocast": autocast}}))


def test_training_precision_is_read_from_the_folds(tmp_path):
    folder = write_model(tmp_path / "m", make_plans(), folds=("0", "1"))
    assert load_model(folder).configurations["3d_fullres"].trained_precision is None  # not recorded
    for fold in ("0", "1"):  # a training_config.json without the resolved autocast records nothing either
        (folder / "trained" / "3d_fullres" / f"fold_{fold}" / "training_config.json").write_text('{"epochs": 1}')
    assert load_model(folder).configurations["3d_fullres"].trained_precision is None
    _record_autocast(folder, "0", "torch.bfloat16")
    _record_autocast(folder, "1", "torch.bfloat16")
    assert load_model(folder).configurations["3d_fullres"].trained_precision == "bfloat16"
    _record_autocast(folder, "1", "None")  # one fold trained in float32: no single answer
    assert load_model(folder).configurations["3d_fullres"].trained_precision is None
    _record_autocast(folder, "0", "None")
    assert load_model(folder).configurations["3d_fullres"].trained_precision == "float32"
