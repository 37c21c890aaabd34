"""models.install.install_from_work: a finished training copied into a model folder (the Slicer module's
install), staged and renamed into place; refusals and a full disk leave the models folder as it was."""
from __future__ import annotations

import errno
import json
import shutil

import pytest

from AutoSegLib.errors import AutoSegError, WriteError
from AutoSegLib.io.work_folder import fold_dir
from AutoSegLib.models.install import install_from_work


def _work(root):
    """A work folder by hand: what a model folder takes, and what it must not take."""
    (root / "preprocessed" / "plans_3d").mkdir(parents=True)
    (root / "preprocessed" / "plans_3d" / "c1.npy").write_bytes(b"data")
    (root / "dataset.json").write_text(json.dumps({"labels": {"background": 0, "a": 1}, "dataset_path": "/raw"}))
    (root / "plans.json").write_text('{"plans": 1}')
    (root / "fingerprint.json").write_text(json.dumps({"dataset_path": "/home/me/patients", "cases": []}))
    (root / "splits_final.json").write_text("[]")
    for conf, fold, final in (("3d_fullres", "0", True), ("3d_fullres", "1", True), ("2d", "0", False)):
        fdir = fold_dir(root, conf, fold)
        (fdir / "validation").mkdir(parents=True)
        (fdir / "checkpoint_latest.pt").write_bytes(b"latest" + fold.encode())
        (fdir / "checkpoint_best.pt").write_bytes(b"best")
        (fdir / "training_config.json").write_text('{"resolved": {"autocast": "torch.bfloat16"}}')
        (fdir / "training_log.jsonl").write_text('{"epoch": 0}\n')
        (fdir / "validation" / "summary.json").write_text(json.dumps({"fold": fold}))
        (fdir / "validation" / "c1.npz").write_bytes(b"probabilities")
        if final:
            (fdir / "checkpoint_final.pt").write_bytes(b"final" + fold.encode())
    return root


def _files(folder):
    return {str(p.relative_to(folder)): p.read_bytes() for p in folder.rglob("*") if p.is_file()}


def test_installs_the_final_folds_with_their_records_and_nothing_else(tmp_path):
    work = _work(tmp_path / "work")
    dest = install_from_work(work, tmp_path / "models", "Liver_v2", {"name": "Liver", "version": "2"})
    assert dest == tmp_path / "models" / "Liver_v2"
    got = _files(dest)
    fold_files = ["checkpoint_final.pt", "training_config.json", "training_log.jsonl", "validation/summary.json"]
    expected = {"dataset.json", "plans.json", "fingerprint.json", "splits_final.json", "model.json",
                *(f"trained/3d_fullres/fold_{k}/{f}" for k in "01" for f in fold_files)}
    assert set(got) == expected                  # no 2d (no final checkpoint), no preprocessed data, no npz
    for name in expected - {"model.json", "dataset.json", "fingerprint.json"}:
        assert got[name] == (work / name).read_bytes(), name
    # where the raw training data was is not the model's business, and would travel with an exported model
    assert json.loads(got["dataset.json"]) == {"labels": {"background": 0, "a": 1}}
    assert json.loads(got["fingerprint.json"]) == {"dataset_path": "", "cases": []}
    assert json.loads(got["model.json"]) == {"name": "Liver", "version": "2",
                                             "configurations": {"3d_fullres": ["0", "1"]}}
    assert sorted(p.name for p in (tmp_path / "models").iterdir()) == ["Liver_v2"]   # no staging left


def test_refusals_name_the_cause_and_change_nothing(tmp_path):
    work = _work(tmp_path / "work")
    models = tmp_path / "models"
    first = install_from_work(work, models, "Liver")
    before = _files(first)
    with pytest.raises(AutoSegError, match="already installed"):
        install_from_work(work, models, "Liver")
    with pytest.raises(AutoSegError, match="plain name"):
        install_from_work(work, models, "../Liver")
    (work / "plans.json").unlink()
    with pytest.raises(AutoSegError, match=r"plans.json: missing"):
        install_from_work(work, models, "Other")
    for fold in ("0", "1"):
        (fold_dir(work, "3d_fullres", fold) / "checkpoint_final.pt").unlink()
    with pytest.raises(AutoSegError, match="the training did not finish"):
        install_from_work(work, models, "Other")
    assert sorted(p.name for p in models.iterdir()) == ["Liver"] and _files(first) == before


def test_a_full_disk_is_a_write_error_and_leaves_no_half_installed_model(tmp_path, monkeypatch):
    work = _work(tmp_path / "work")
    models = tmp_path / "models"
    previous = install_from_work(work, models, "Previous")
    before = _files(previous)
    real_copy = shutil.copyfile

    def full_disk(src, dst, *args, **kwargs):
        if str(src).endswith("checkpoint_final.pt") and "fold_1" in str(src):
            raise OSError(errno.ENOSPC, "No space left on device", str(dst))
        return real_copy(src, dst, *args, **kwargs)

    monkeypatch.setattr(shutil, "copyfile", full_disk)
    with pytest.raises(WriteError) as info:
        install_from_work(work, models, "Next")
    message = str(info.value)
    assert "fold_1" in message and "checkpoint_final.pt: could not be written: the disk is full" in message
    assert str(models) in message
    assert sorted(p.name for p in models.iterdir()) == ["Previous"] and _files(previous) == before
