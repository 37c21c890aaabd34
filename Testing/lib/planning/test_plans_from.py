"""`plan --plans-from MODEL`: fine-tuning adopts the model's plans instead of planning the new dataset."""
import json

import pytest

from AutoSegLib import cli
from AutoSegLib.io.synthetic import make_synthetic_dataset


@pytest.fixture(scope="module")
def datasets(tmp_path_factory):
    root = tmp_path_factory.mktemp("plans_from")
    a = make_synthetic_dataset(root / "A", n_cases=4, shape=(20, 32, 32), spacing=(2.0, 1.0, 1.0), seed=1)
    b = make_synthetic_dataset(root / "B", n_cases=4, shape=(20, 32, 32), spacing=(3.0, 0.7, 0.7), seed=2)
    assert cli.main(["plan", str(a), "-o", str(root / "workA"), "--workers", "1"]) == 0
    return root, a, b


def test_the_model_plans_are_adopted_not_recomputed(datasets):
    root, _, b = datasets
    assert cli.main(["plan", str(b), "-o", str(root / "new"), "--workers", "1"]) == 0
    assert cli.main(["plan", str(b), "-o", str(root / "tuned"), "--plans-from", str(root / "workA")]) == 0
    model = json.loads((root / "workA" / "plans.json").read_text())
    tuned = json.loads((root / "tuned" / "plans.json").read_text())
    new = json.loads((root / "new" / "plans.json").read_text())
    assert tuned == model  # the model's network, spacing and normalisation, unchanged
    spacing = lambda p: p["configurations"]["3d_fullres"]["spacing"]  # noqa: E731
    assert spacing(new) != spacing(model)  # what planning B would have made instead
    assert (root / "tuned" / "fingerprint.json").read_bytes() == (root / "workA" / "fingerprint.json").read_bytes()
    assert json.loads((root / "tuned" / "dataset.json").read_text())["dataset_path"] == str(b.resolve())


def test_an_ignore_label_of_the_corrections_is_added(datasets, tmp_path):
    root, _, b = datasets
    c = tmp_path / "C"
    make_synthetic_dataset(c, n_cases=2, shape=(20, 32, 32), seed=3)
    meta = json.loads((c / "dataset.json").read_text())
    meta["labels"]["ignore"] = 3
    (c / "dataset.json").write_text(json.dumps(meta))
    assert cli.main(["plan", str(c), "-o", str(tmp_path / "w"), "--plans-from", str(root / "workA")]) == 0
    labels = json.loads((tmp_path / "w" / "plans.json").read_text())["labels"]
    assert labels == {"background": 0, "organ": 1, "lesion": 2, "ignore": 3}


def test_other_labels_or_channels_are_refused_naming_both(datasets, tmp_path, capsys):
    root, _, _ = datasets
    c = tmp_path / "C"
    make_synthetic_dataset(c, n_cases=2, shape=(20, 32, 32), seed=3)
    meta = json.loads((c / "dataset.json").read_text())
    meta["labels"] = {"background": 0, "organ": 1, "tumour": 2}
    (c / "dataset.json").write_text(json.dumps(meta))
    assert cli.main(["plan", str(c), "-o", str(tmp_path / "w"), "--plans-from", str(root / "workA")]) == 2
    err = capsys.readouterr().err
    assert "tumour" in err and "lesion" in err and str(c / "dataset.json") in err
    assert not (tmp_path / "w").exists()  # nothing written
    meta["labels"] = {"background": 0, "organ": 1, "lesion": 2}
    meta["channel_names"] = {"0": "CT"}
    (c / "dataset.json").write_text(json.dumps(meta))
    assert cli.main(["plan", str(c), "-o", str(tmp_path / "w"), "--plans-from", str(root / "workA")]) == 2
    assert "'CT'" in capsys.readouterr().err


def test_plans_from_and_a_time_budget_exclude_each_other(datasets, tmp_path, capsys):
    root, _, b = datasets
    assert cli.main(["plan", str(b), "-o", str(tmp_path / "w"), "--plans-from", str(root / "workA"),
                     "--time-budget-minutes", "5"]) == 2
    assert "--plans-from" in capsys.readouterr().err


def test_plan_and_preprocess_prepares_the_configurations_the_model_trained(datasets, tmp_path):
    from AutoSegLib.io.work_folder import fold_dir
    root, a, b = datasets
    model = tmp_path / "model"
    (model).mkdir()
    for name in ("plans.json", "fingerprint.json", "dataset.json"):
        (model / name).write_bytes((root / "workA" / name).read_bytes())
    fold_dir(model, "3d_fullres", 0).mkdir(parents=True)
    (fold_dir(model, "3d_fullres", 0) / "checkpoint_final.pt").write_bytes(b"x")
    assert cli.main(["plan-and-preprocess", str(b), "-o", str(tmp_path / "w"), "--plans-from", str(model),
                     "--workers", "1"]) == 0
    made = sorted(p.name for p in (tmp_path / "w" / "preprocessed").iterdir())
    assert len(made) == 1  # only 3d_fullres's data, not 2d's
