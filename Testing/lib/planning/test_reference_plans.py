"""Our plans against the reference planner's: on made-up fingerprints that exercise every rule
(data/reference_plans_scenarios.json, made by make_reference_plans.py) and, from the raw images, on the
shared datasets (../shared/reference/*/nnUNetPlans.json)."""
import json
from pathlib import Path

import numpy as np
import pytest

from AutoSegLib.fingerprint import Fingerprint, extract_fingerprint
from AutoSegLib.planning import Plans, plan_experiment



SCENARIOS = json.loads((Path(__file__).parent / "data" / "reference_plans_scenarios.json").read_text())


@pytest.mark.parametrize("name", sorted(SCENARIOS))
def test_made_up_fingerprints_plan_like_the_reference(name, compare_plans):
    s = SCENARIOS[name]
    fp = Fingerprint.from_reference_dict(s["fingerprint"], s["dataset_json"], dataset_name=name)
    plans = plan_experiment(fp, gpu_memory_gb=s["gpu_memory_gb"])
    assert compare_plans(plans, s["plans"]) == []


def test_scenarios_cover_the_rules():
    """The oracle file really exercises lowres/cascade, CT, masks, transposition and the 10th percentile."""
    confs = {n: s["plans"]["configurations"] for n, s in SCENARIOS.items()}
    assert "3d_cascade_fullres" in confs["ct_large"] and "3d_lowres" in confs["ct_large"]
    assert SCENARIOS["aniso_transposed_mask"]["plans"]["transpose_forward"] == [2, 0, 1]
    assert confs["ct_and_mri_mask"]["3d_fullres"]["use_mask_for_norm"] == [False, True]
    assert confs["aniso_tenth_below_inplane"]["3d_fullres"]["spacing"][0] == pytest.approx(1.20001)


DATASETS = {"LA2018_1p25mm": "data/LA2018_1p25mm", "BraTS2015_4cases": "data/BraTS2015_4cases",
            "Synth_aniso": "reference/Synth_aniso/raw"}




REPOSITORY_DATASET = Path(__file__).resolve().parents[1] / "models" / "data" / "nnunet_ref"


def test_repository_dataset_plans_like_the_reference(tmp_path, compare_plans):
    """In every checkout: the 8 synthetic anisotropic cases the repository's reference models were trained on,
    and the fingerprint and plans the reference made of them (make_reference_models.py)."""
    _check_plans(REPOSITORY_DATASET / "raw", REPOSITORY_DATASET / "reference_plans", tmp_path, compare_plans)


@pytest.mark.parametrize("name", sorted(DATASETS))
def test_shared_datasets_plan_like_the_reference(name, shared_dir, tmp_path, compare_plans):
    _check_plans(shared_dir / DATASETS[name], shared_dir / "reference" / name, tmp_path, compare_plans)


def _check_plans(raw, ref_dir, tmp_path, compare_plans):
    fp = extract_fingerprint(raw, num_workers=2)
    ref_fp = json.loads((ref_dir / "dataset_fingerprint.json").read_text())
    ours = fp.to_reference_dict()
    assert ours["shapes_after_crop"] == ref_fp["shapes_after_crop"]
    np.testing.assert_allclose(ours["spacings"], ref_fp["spacings"], rtol=1e-7)
    assert ours["median_relative_size_after_cropping"] == pytest.approx(ref_fp["median_relative_size_after_cropping"])
    for ch, stats in ref_fp["foreground_intensity_properties_per_channel"].items():
        for key, value in stats.items():
            # percentiles/min/max are order statistics of the same draws: equal; mean/std: the reference
            # sums float32 samples, we sum float64 -> equal to ~1e-7 relative
            assert ours["foreground_intensity_properties_per_channel"][ch][key] == pytest.approx(value, rel=1e-6), \
                (ch, key)
    plans = plan_experiment(fp)
    ref = json.loads((ref_dir / "nnUNetPlans.json").read_text())
    assert compare_plans(plans, ref) == []
    # and the JSON round trip keeps everything
    plans.to_json(tmp_path / "plans.json")
    assert Plans.from_json(tmp_path / "plans.json") == plans
