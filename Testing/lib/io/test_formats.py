"""Datasets in every common format, and 2D datasets, pass verification, fingerprinting and planning."""
import pytest

from AutoSegLib.fingerprint import extract_fingerprint
from AutoSegLib.io.verify import verify_dataset
from AutoSegLib.planning import plan_experiment


@pytest.mark.parametrize("ending", [".nii", ".nrrd", ".mha"])
def test_formats(synthetic_dataset, ending):
    ds = synthetic_dataset(n_cases=2, shape=(8, 12, 12), file_ending=ending, seed=4)
    report = verify_dataset(ds, num_workers=1)
    assert report.ok and report.cases_checked == 2, report.errors
    fp = extract_fingerprint(ds, num_workers=1, foreground_samples=1e4)
    assert fp.file_ending == ending and fp.ndim == 3


def test_2d_dataset(synthetic_dataset):
    ds = synthetic_dataset(n_cases=3, shape=(40, 48), spacing=(0.5, 0.4), file_ending=".nrrd", seed=5)
    assert verify_dataset(ds, num_workers=1).ok
    fp = extract_fingerprint(ds, num_workers=1, foreground_samples=1e4)
    assert fp.ndim == 2 and fp.cases[0].spacing == (0.5, 0.4)
    plans = plan_experiment(fp)
    assert list(plans.configurations) == ["2d"]
    c = plans.configurations["2d"]
    assert c.spacing == (0.5, 0.4) and len(c.patch_size) == 2 and plans.transpose_forward == (0, 1)


def test_mixed_2d_and_3d_cases_are_an_error(synthetic_dataset, tmp_path):
    import shutil
    ds3 = synthetic_dataset(name="A", n_cases=2, shape=(8, 12, 12), seed=6, file_ending=".nrrd")
    ds2 = synthetic_dataset(name="B", n_cases=1, shape=(12, 12), spacing=(1.0, 1.0), seed=7, file_ending=".nrrd")
    shutil.copy(ds2 / "imagesTr" / "case_000_0000.nrrd", ds3 / "imagesTr" / "flat_0000.nrrd")
    shutil.copy(ds2 / "labelsTr" / "case_000.nrrd", ds3 / "labelsTr" / "flat.nrrd")
    import json
    d = json.loads((ds3 / "dataset.json").read_text())
    d["numTraining"] = 3
    (ds3 / "dataset.json").write_text(json.dumps(d))
    report = verify_dataset(ds3, num_workers=1)
    assert not report.ok and "mix 2D and 3D" in report.errors[-1] and "flat" in report.errors[-1]
