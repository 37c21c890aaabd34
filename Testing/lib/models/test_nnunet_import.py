"""`autoseg import-model`: reference results folders (one or several) -> an AutoSeg model folder, atomically."""
from __future__ import annotations

import importlib.util
import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from AutoSegLib.cli import main
from AutoSegLib.errors import AutoSegError
from AutoSegLib.models.folder import load_model
from AutoSegLib.models.install import import_models
from AutoSegLib.models.safe_load import load_checkpoint

TINY = Path(__file__).resolve().parent / "data" / "nnunet_tiny"
REPO = Path(__file__).resolve().parents[3]


def test_cli_installs_a_cascade_with_its_postprocessing(tmp_path, capsys):
    models = tmp_path / "models"
    assert main(["import-model", str(TINY / "Dataset902_Cascade"), "--models-dir", str(models)]) == 0
    dest = models / "Dataset902_Cascade"
    assert capsys.readouterr().out.strip().endswith(str(dest))
    assert sorted(p.name for p in models.iterdir()) == ["Dataset902_Cascade"]  # no temporary leftovers
    for conf, n_in, axes in (("3d_lowres", 1, [0, 1, 2]), ("3d_cascade_fullres", 3, [1, 2])):
        ckpt = load_checkpoint(dest / "trained" / conf / "fold_0" / "checkpoint_final.pt")
        assert set(ckpt) == {"network_weights", "configuration", "plans_identifier", "num_input_channels",
                             "num_outputs", "epoch", "mirror_axes"}
        assert (ckpt["configuration"], ckpt["num_input_channels"], ckpt["num_outputs"], ckpt["mirror_axes"]) == \
               (conf, n_in, 3, axes)
        assert all(isinstance(v, torch.Tensor) for v in ckpt["network_weights"].values())
        assert not any("all_modules" in k or k.startswith("decoder.encoder") for k in ckpt["network_weights"])
        # the weights are the reference's, unchanged
        ref = load_checkpoint(TINY / "Dataset902_Cascade" / f"nnUNetTrainer__nnUNetPlans__{conf}" / "fold_0" /
                              "checkpoint_final.pth")["network_weights"]
        for k, v in ckpt["network_weights"].items():
            assert torch.equal(v, ref[k])
    inference = json.loads((dest / "inference.json").read_text())
    assert inference["configurations"] == ["3d_cascade_fullres"]
    assert inference["postprocessing"] == [{"step": "largest_component", "labels": [1, 2]},
                                           {"step": "largest_component", "labels": [2]}]
    model = load_model(dest)
    assert set(model.configurations) == {"3d_lowres", "3d_cascade_fullres"}
    assert model.plans.configurations["3d_cascade_fullres"].previous_stage == "3d_lowres"


def test_several_sources_make_one_model_and_names_are_respected(tmp_path):
    # the two stages of a cascade in two different places: only together do they make a model
    for part in ("3d_lowres", "3d_cascade_fullres"):
        shutil.copytree(TINY / "Dataset902_Cascade" / f"nnUNetTrainer__nnUNetPlans__{part}",
                        tmp_path / part / "Dataset902_Cascade" / f"nnUNetTrainer__nnUNetPlans__{part}")
    low = tmp_path / "3d_lowres" / "Dataset902_Cascade" / "nnUNetTrainer__nnUNetPlans__3d_lowres"
    casc = tmp_path / "3d_cascade_fullres" / "Dataset902_Cascade" / "nnUNetTrainer__nnUNetPlans__3d_cascade_fullres"
    with pytest.raises(AutoSegError, match="needs the trained '3d_lowres'"):
        import_models([casc], tmp_path / "models")
    dest = import_models([casc, low], tmp_path / "models", name="my model")
    assert dest.name == "my_model"
    assert set(load_model(dest).configurations) == {"3d_lowres", "3d_cascade_fullres"}
    assert json.loads((dest / "model.json").read_text())["name"] == "my model"
    with pytest.raises(AutoSegError, match="already installed"):
        import_models([low], tmp_path / "models", name="my model")
    again = import_models([low], tmp_path / "models", name="my model", overwrite=True)
    assert set(load_model(again).configurations) == {"3d_lowres"}
    with pytest.raises(AutoSegError, match="same dataset"):
        import_models([low, TINY / "Dataset901_ResEncRegions"], tmp_path / "models", name="mixed")
    with pytest.raises(AutoSegError, match="also in"):
        import_models([low, low], tmp_path / "models", name="twice")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["my_model"]


def test_failed_import_leaves_nothing(tmp_path, monkeypatch):
    import AutoSegLib.models.install as install

    def broken(*args, **kwargs):
        raise RuntimeError("disk full")

    monkeypatch.setattr(install, "_save_tensors", broken)
    with pytest.raises(RuntimeError):
        import_models([TINY / "Dataset901_ResEncRegions"], tmp_path / "models")
    assert not (tmp_path / "models").exists()  # not even the models folder it created
    (tmp_path / "models").mkdir()
    with pytest.raises(RuntimeError):
        import_models([TINY / "Dataset901_ResEncRegions"], tmp_path / "models")
    assert list((tmp_path / "models").iterdir()) == []  # a folder that existed stays, empty


def test_cli_errors_are_clean(tmp_path, capsys):
    assert main(["import-model", str(tmp_path / "nothing"), "--models-dir", str(tmp_path / "m")]) == 2
    assert "not found" in capsys.readouterr().err


def test_slicer_module_lists_an_imported_reference_model(tmp_path):
    path = REPO / "AutoSegModule" / "AutoSegSlicer" / "common" / "models.py"
    if not path.is_file():
        pytest.skip("Slicer module not present")
    spec = importlib.util.spec_from_file_location("_autoseg_slicer_models", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    try:
        spec.loader.exec_module(module)
        import_models([TINY / "Dataset901_ResEncRegions"], tmp_path / "models")
        models, problems = module.list_models(tmp_path / "models")
    finally:
        sys.modules.pop(spec.name, None)
    assert problems == []
    assert [m.name for m in models] == ["Dataset901_ResEncRegions"]
    info = models[0]
    assert info.channel_names == ("CT", "MRI") and info.configurations == ("3d_fullres",) and info.folds == ("0",)
    assert dict(info.labels) == {"background": 0, "whole": 1, "core": 2}


def test_archive_of_an_imported_model_imports_again(tmp_path):
    from AutoSegLib.models.archive import export_model_archive

    first = import_models([TINY / "Dataset901_ResEncRegions"], tmp_path / "models")
    archive = export_model_archive(first, tmp_path / "resenc.zip")
    second = import_models([archive], tmp_path / "models", name="from_archive")
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["Dataset901_ResEncRegions", "from_archive"]
    a, b = load_model(first), load_model(second)
    assert a.plans == b.plans and set(a.configurations) == set(b.configurations) == {"3d_fullres"}
    wa = a.configurations["3d_fullres"].folds["0"].state_dict()
    wb = b.configurations["3d_fullres"].folds["0"].state_dict()
    assert wa.keys() == wb.keys() and all(torch.equal(wa[k], wb[k]) for k in wa)
