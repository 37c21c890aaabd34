"""Slow: preprocess_case on real cases against the reference preprocessor run on the same files and plans.

Uses the reference plans kept in ../shared/reference (converted to AutoSeg plans) and runs the reference's
DefaultPreprocessor in .bench-venv on the same cases; skipped when either is missing.
"""
from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import numpy as np
import pytest

REPO = Path(__file__).resolve().parents[3]
BENCH_PYTHON = REPO / ".bench-venv" / "bin" / "python"

_REFERENCE = r"""
import json, sys
import numpy as np
from nnunetv2.preprocessing.preprocessors.default_preprocessor import DefaultPreprocessor
from nnunetv2.utilities.plans_handling.plans_handler import PlansManager
job = json.load(open(sys.argv[1]))
plans = PlansManager(job['plans'])
conf = plans.get_configuration(job['configuration'])
pp = DefaultPreprocessor(verbose=False)
for i, (images, label) in enumerate(job['cases']):
    data, seg, props = pp.run_case(images, label, plans, conf, job['dataset'])
    np.save(f"{job['out']}/data_{i}.npy", data)
    np.save(f"{job['out']}/seg_{i}.npy", seg)
    json.dump({'bbox': [[int(a), int(b)] for a, b in props['bbox_used_for_cropping']]}, open(f"{job['out']}/p_{i}.json", 'w'))
"""


@pytest.mark.slow
@pytest.mark.parametrize("name, raw, n", [("LA2018_1p25mm", "data/LA2018_1p25mm", 3),
                                          ("Synth_aniso", "reference/Synth_aniso/raw", 3),
                                          ("BraTS2015_4cases", "data/BraTS2015_4cases", 1)])
def test_preprocess_case_equals_reference(shared_dir, tmp_path, name, raw, n):
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.images import read_case, read_image
    from AutoSegLib.models.nnunet_plans import convert_plans
    from AutoSegLib.preprocessing.case import preprocess_case

    if not BENCH_PYTHON.exists():
        pytest.skip("no .bench-venv with the reference implementation")
    ref_plans = json.loads((shared_dir / "reference" / name / "nnUNetPlans.json").read_text())
    dataset = load_dataset(shared_dir / raw)
    plans = convert_plans(ref_plans, dataset.raw_json, ["3d_fullres"])
    cases = [dataset.cases[c] for c in dataset.case_ids[:n]]
    job = {"plans": ref_plans, "configuration": "3d_fullres", "dataset": dataset.raw_json, "out": str(tmp_path),
           "cases": [[[str(p) for p in c.images], str(c.label)] for c in cases]}
    (tmp_path / "job.json").write_text(json.dumps(job))
    env = dict(os.environ, nnUNet_raw=str(tmp_path), nnUNet_preprocessed=str(tmp_path), nnUNet_results=str(tmp_path))
    run = subprocess.run([str(BENCH_PYTHON), "-c", _REFERENCE, str(tmp_path / "job.json")], capture_output=True,
                         text=True, env=env, timeout=900)
    if run.returncode != 0 and "No module named 'nnunetv2'" in run.stderr:
        pytest.skip("nnunetv2 is not installed in .bench-venv")
    assert run.returncode == 0, run.stderr[-3000:]
    for i, c in enumerate(cases):
        image, geometry = read_case(c.images)
        label, _ = read_image(c.label)
        data, seg, props = preprocess_case(image, geometry, plans, "3d_fullres", label)
        ref_data = np.load(tmp_path / f"data_{i}.npy")
        ref_seg = np.load(tmp_path / f"seg_{i}.npy")
        assert data.shape == ref_data.shape, c.case_id
        assert np.abs(data - ref_data).max() < 1e-3, c.case_id
        assert (seg == ref_seg).mean() > 0.999, c.case_id
        assert props["bbox_used_for_cropping"] == json.loads((tmp_path / f"p_{i}.json").read_text())["bbox"]


def test_preprocess_case_equals_the_shipped_reference_output(tmp_path):
    """In every checkout: one case of the repository's reference dataset against what the reference's
    DefaultPreprocessor made of it with the same plans (make_reference_models.py)."""
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.images import read_case, read_image
    from AutoSegLib.models.nnunet_plans import convert_plans
    from AutoSegLib.preprocessing.case import preprocess_case

    root = REPO / "Testing" / "lib" / "models" / "data" / "nnunet_ref"
    model = root / "Dataset900_Synth" / "nnUNetTrainerTiny__nnUNetPlans__3d_fullres"
    dataset = load_dataset(root / "raw")
    plans = convert_plans(json.loads((model / "plans.json").read_text()), dataset.raw_json, ["3d_fullres"])
    case = dataset.cases["synth_000"]
    image, geometry = read_case(case.images)
    label, _ = read_image(case.label)
    data, seg, props = preprocess_case(image, geometry, plans, "3d_fullres", label)
    ref = np.load(root / "preprocessed" / "synth_000.npz")
    assert data.shape == ref["data"].shape
    assert np.abs(data - ref["data"]).max() < 1e-3
    assert (seg == ref["seg"]).mean() > 0.999
    assert props["bbox_used_for_cropping"] == ref["bbox"].tolist()
