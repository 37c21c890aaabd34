"""Model listing from model folders, the dependency decisions, device listing, dataset-case validation."""
from __future__ import annotations

import json
import sys

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.geometry import Geometry
from AutoSegSlicer.correct import dataset_case
from AutoSegSlicer.common import dependencies, models, parameters
from autoseg_testing import make_model_folder


def test_model_info_reads_channels_labels_folds_and_model_json(tmp_path):
    path = make_model_folder(tmp_path / "Brain", channel_names=("T1", "FLAIR"),
                             labels={"background": 0, "edema": 2, "tumor": 1},
                             model_json={"name": "Brain tumours", "version": "2.1", "colors": {"edema": [0, 1, 0]}})
    (path / "trained" / "3d_fullres" / "fold_3").mkdir()
    (path / "trained" / "3d_fullres" / "fold_3" / "checkpoint_final.pt").write_bytes(b"x")
    (path / "trained" / "3d_fullres" / "fold_4").mkdir()  # no checkpoint: not a usable fold
    info = models.read_model_info(path)
    assert info.name == "Brain tumours" and info.version == "2.1"
    assert info.channel_names == ("T1", "FLAIR")
    assert info.labels == (("background", 0), ("edema", 2), ("tumor", 1))
    assert info.foreground_labels == (("edema", 2), ("tumor", 1))
    assert info.folds == ("0", "3") and info.configurations == ("3d_fullres",)
    assert info.colors == {"edema": (0.0, 1.0, 0.0)} and info.image_ndim == 3
    assert "inputs: T1, FLAIR" in info.summary() and "edema (2)" in info.summary()


def test_region_model_lists_one_label_per_region_with_its_painted_value(tmp_path):
    path = make_model_folder(tmp_path / "Regions", labels={"background": 0, "whole": [1, 2, 3], "core": [2, 3],
                                                           "enhancing": 3})
    data = json.loads((path / "dataset.json").read_text())
    data["regions_class_order"] = [1, 2, 3]
    (path / "dataset.json").write_text(json.dumps(data))
    info = models.read_model_info(path)
    assert info.labels == (("background", 0), ("whole", 1), ("core", 2), ("enhancing", 3))


def test_bad_model_folders_give_clear_messages(tmp_path):
    with pytest.raises(AutoSegError, match="model folder not found"):
        models.read_model_info(tmp_path / "nowhere")
    path = make_model_folder(tmp_path / "M")
    (path / "dataset.json").write_text("{not json")
    with pytest.raises(AutoSegError, match="not valid JSON"):
        models.read_model_info(path)
    (path / "dataset.json").write_text(json.dumps({"channel_names": {}, "labels": {"background": 0}}))
    with pytest.raises(AutoSegError, match="'channel_names' must map"):
        models.read_model_info(path)
    with pytest.raises(AutoSegError, match="not found. Choose a model folder"):
        models.import_model_args(tmp_path / "missing.zip", tmp_path)


def test_list_models_sorts_by_name_and_reports_non_models(tmp_path):
    make_model_folder(tmp_path / "b_folder", model_json={"name": "Zeta"})
    make_model_folder(tmp_path / "a_folder", model_json={"name": "alpha"})
    (tmp_path / "notes").mkdir()
    found, problems = models.list_models(tmp_path)
    assert [m.name for m in found] == ["alpha", "Zeta"]
    assert len(problems) == 1 and "notes" in problems[0]
    assert models.list_models(tmp_path / "absent") == ([], [])


class _TorchLogic:
    def __init__(self, installed, install_result="torch"):
        self.installed, self.install_result, self.calls = installed, install_result, []

    def torchInstalled(self):
        return self.installed

    def installTorch(self, askConfirmation, torchVersionRequirement):
        self.calls.append((askConfirmation, torchVersionRequirement))
        return self.install_result


def test_dependencies_ask_before_installing_and_respect_a_refusal():
    present = {"torch", "scipy", "numpy", "SimpleITK", "openvino"}
    installed, asked = [], []
    everything = dependencies.required(training=True)

    def pip(reqs):
        installed.extend(reqs)
        present.update(everything[r] for r in reqs)

    def confirm(text):
        asked.append(text)
        return False

    ok = dependencies.ensure_dependencies(confirm, pip, torch_logic=None, is_importable=present.__contains__,
                                          training=True)
    assert ok is False and installed == [] and "batchgenerators>=0.25" in asked[0]
    ok = dependencies.ensure_dependencies(lambda t: True, pip, torch_logic=None, is_importable=present.__contains__,
                                          training=True)
    assert ok is True and sorted(installed) == ["batchgenerators>=0.25", "matplotlib>=3.6", "onnx>=1.15"]
    # Slicer 5.12+: pip_ensure does the asking
    present.discard("matplotlib")
    present.discard("openvino")
    ensured = []
    ok = dependencies.ensure_dependencies(lambda t: pytest.fail("must not ask twice"), pip,
                                          is_importable=present.__contains__, training=True,
                                          pip_ensure=lambda reqs, requester: (ensured.append((reqs, requester)), pip(reqs)))
    assert ok and ensured == [(["openvino>=2024.0", "matplotlib>=3.6"], "AutoSeg")]


def test_torch_comes_from_the_pytorch_extension():
    present = {"scipy", "batchgenerators", "matplotlib", "numpy", "SimpleITK", "openvino", "onnx"}
    with pytest.raises(AutoSegError, match="install the 'PyTorch' extension"):
        dependencies.ensure_dependencies(lambda t: True, lambda r: None, torch_logic=None,
                                         is_importable=present.__contains__, training=True)
    declined = _TorchLogic(installed=False, install_result=None)
    assert dependencies.ensure_dependencies(lambda t: True, lambda r: None, torch_logic=declined,
                                            is_importable=present.__contains__, training=True) is False
    assert declined.calls == [(True, dependencies.TORCH_REQUIREMENT)]
    accepted = _TorchLogic(installed=False)
    assert dependencies.ensure_dependencies(lambda t: True, lambda r: None, torch_logic=accepted,
                                            is_importable=present.__contains__, training=True) is True


def test_list_devices_reports_what_torch_finds_in_the_child():
    devices, problem = dependencies.list_devices(sys.executable)   # this environment: torch, CPU build
    ids = [d for d, _ in devices]
    assert problem == "" and ids[0] == "auto" and ids[-1] == "cpu"
    assert devices[0][1] == f"auto ({devices[1][1]})" and devices[-1][1].startswith("CPU (")
    devices, problem = dependencies.list_devices("/nonexistent/python")
    assert [d for d, _ in devices] == ["auto", "cpu"] and "Could not list devices" in problem


def test_parse_folds():
    assert parameters.parse_folds("") is None and parameters.parse_folds("0, 2 4") == ("0", "2", "4")
    assert parameters.parse_folds("all") == ("all",)
    with pytest.raises(ValueError, match="Folds must be numbers"):
        parameters.parse_folds("zero")


def test_add_case_validates_before_writing(tmp_path):
    geo = Geometry.identity((1.0, 1.0, 1.0))
    img = np.zeros((3, 4, 5), np.float32)
    lab = np.zeros((3, 4, 5), np.uint8)
    lab[1, 1, 1] = 2
    labels = {"background": 0, "organ": 1, "lesion": 2}
    ds = tmp_path / "ds"
    with pytest.raises(AutoSegError, match="not valid"):
        dataset_case.add_case(ds, "bad/name", [img], geo, lab, labels, ["MRI"])
    with pytest.raises(AutoSegError, match="size"):
        dataset_case.add_case(ds, "c1", [np.zeros((3, 4, 6), np.float32)], geo, lab, labels, ["MRI"])
    with pytest.raises(AutoSegError, match=r"values \[7\] not in the label set"):
        dataset_case.add_case(ds, "c1", [img], geo, np.full_like(lab, 7), labels, ["MRI"])
    assert not ds.exists()
    dataset_case.add_case(ds, "c1", [img], geo, lab, labels, ["MRI"])
    with pytest.raises(AutoSegError, match="1 input channel"):
        dataset_case.add_case(ds, "c2", [img, img], geo, lab, labels, ["MRI", "CT"])
    assert dataset_case.next_case_name(ds) == "case_000"
    assert sorted(p.name for p in (ds / "imagesTr").iterdir()) == ["c1_0000.nii.gz"]


def test_list_devices_labels_a_gpu_the_child_finds(tmp_path):
    """What a CUDA machine's child reports (a stand-in interpreter printing the probe's answer)."""
    fake = tmp_path / "python"
    fake.write_text("#!/bin/sh\necho '[[\"cuda\", \"CUDA: NVIDIA H100\"], [\"cpu\", \"CPU (16 threads)\"]]'\n")
    fake.chmod(0o755)
    devices, problem = dependencies.list_devices(str(fake))
    assert problem == ""
    assert devices == [("auto", "auto (CUDA: NVIDIA H100)"), ("cuda", "CUDA: NVIDIA H100"), ("cpu", "CPU (16 threads)")]
    fake.write_text("#!/bin/sh\necho '[[\"error\", \"ModuleNotFoundError: torch\"]]'\n")
    devices, problem = dependencies.list_devices(str(fake))
    assert devices == [("auto", "auto (CPU)"), ("cpu", "CPU")] and "PyTorch is not usable" in problem


def test_an_installed_torch_older_than_23_is_upgraded_through_pytorchutils_after_asking():
    """torch.amp.GradScaler("cuda") needs torch 2.3: an older torch is not accepted silently (issue #13 item 5)."""
    present = {"torch", "scipy", "batchgenerators", "matplotlib", "numpy", "SimpleITK", "openvino", "onnx"}
    versions = iter(["2.1.2+cu118", "2.5.1+cu121"])      # before and after the upgrade
    logic = _TorchLogic(installed=True)
    asked = []
    assert dependencies.TORCH_REQUIREMENT == ">=2.3"
    assert dependencies.ensure_dependencies(lambda t: asked.append(t) or True, lambda r: None, torch_logic=logic,
                                            is_importable=present.__contains__,
                                            torch_version=lambda: next(versions), training=True) is True
    assert logic.calls == [(False, ">=2.3")] and "2.1.2+cu118 is installed" in asked[0]
    declined = _TorchLogic(installed=True)
    assert dependencies.ensure_dependencies(lambda t: False, lambda r: None, torch_logic=declined,
                                            is_importable=present.__contains__, torch_version=lambda: "2.2.0", training=True) is False
    assert declined.calls == []
    with pytest.raises(AutoSegError, match="PyTorch >=2.3.*2.2.0 is installed.*'PyTorch' extension"):
        dependencies.ensure_dependencies(lambda t: True, lambda r: None, torch_logic=None,
                                         is_importable=present.__contains__, torch_version=lambda: "2.2.0", training=True)
    stuck = _TorchLogic(installed=True)
    with pytest.raises(AutoSegError, match="Upgrading PyTorch did not work: 2.2.0"):
        dependencies.ensure_dependencies(lambda t: True, lambda r: None, torch_logic=stuck,
                                         is_importable=present.__contains__, torch_version=lambda: "2.2.0", training=True)
    assert dependencies.version_tuple("2.3.0a0+git1234") == (2, 3, 0) and dependencies.version_tuple("2.10") > (2, 3)


def test_command_line_import_and_slicer_install_keep_the_same_fold_records(tmp_path):
    """`import-model WORK` and the module's install of a finished training give models that predict alike:
    both keep each fold's training_config.json (prediction takes the training precision from it), its log
    and its validation summary (one list of fold records, io.work_folder.FOLD_RECORDS)."""
    import importlib.util
    from pathlib import Path

    from AutoSegLib.io.work_folder import FOLD_RECORDS, fold_dir
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.models.install import import_models
    from AutoSegSlicer.train.install import install_model

    spec = importlib.util.spec_from_file_location(
        "inference_conftest", Path(__file__).parents[1] / "lib" / "inference" / "conftest.py")
    factory = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(factory)
    work = factory.write_model(tmp_path / "work", factory.make_plans(), folds=("0", "1"))
    for fold in ("0", "1"):
        fdir = fold_dir(work, "3d_fullres", fold)
        (fdir / "training_config.json").write_text(json.dumps({"resolved": {"autocast": "torch.bfloat16"}}))
        (fdir / "training_log.jsonl").write_text('{"epoch": 0}\n')
        (fdir / "validation").mkdir()
        (fdir / "validation" / "summary.json").write_text(json.dumps({"fold": fold}))
    assert load_model(work).configurations["3d_fullres"].trained_precision == "bfloat16"

    imported = import_models([work], tmp_path / "cli_models", name="cli")
    installed = install_model(work, tmp_path / "slicer_models", "slicer")
    for folder in (imported, installed):
        assert load_model(folder).configurations["3d_fullres"].trained_precision == "bfloat16", folder
        for fold in ("0", "1"):
            for record in ("training_config.json", "training_log.jsonl", "validation/summary.json"):
                assert record in FOLD_RECORDS
                got = fold_dir(folder, "3d_fullres", fold) / record
                assert got.read_bytes() == (fold_dir(work, "3d_fullres", fold) / record).read_bytes(), got
