"""Atomic writes and the plans record's JSON contract."""
import json

import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path, write_json
from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans


def test_atomic_path_keeps_old_file_on_failure(tmp_path):
    target = tmp_path / "a.json"
    write_json(target, {"v": 1})
    with pytest.raises(RuntimeError):
        with atomic_path(target) as tmp:
            tmp.write_text("half")
            raise RuntimeError("killed")
    assert json.loads(target.read_text()) == {"v": 1}
    assert [p.name for p in tmp_path.iterdir()] == ["a.json"]


def test_atomic_path_keeps_double_suffix(tmp_path):
    with atomic_path(tmp_path / "img.nii.gz") as tmp:
        assert tmp.name.endswith(".nii.gz") and tmp.parent == tmp_path
        tmp.write_bytes(b"x")
    assert (tmp_path / "img.nii.gz").read_bytes() == b"x"


def _plans():
    topo = NetworkTopology("plain_unet", 3, (32, 64, 128), ((1, 3, 3), (3, 3, 3), (3, 3, 3)),
                           ((1, 1, 1), (1, 2, 2), (2, 2, 2)), (2, 2, 2), (2, 2))
    conf = ConfigurationPlan("3d_fullres", (3.0, 0.8, 0.8), (16, 64, 64), 2, (20.0, 90.0, 90.0), ("zscore",),
                             (False,), topo, data_identifier="AutoSegPlans_3d_fullres")
    return Plans("Demo", {"0": "MRI"}, {"background": 0, "organ": 1}, (0, 1, 2), (0, 1, 2), (3.0, 0.8, 0.8),
                 (20.0, 90.0, 90.0), {"0": {"mean": 1.0}}, {"3d_fullres": conf})


def test_plans_json_round_trip_is_exact(tmp_path):
    plans = _plans()
    plans.to_json(tmp_path / "plans.json")
    again = Plans.from_json(tmp_path / "plans.json")
    assert again == plans
    assert again.configuration("3d_fullres").network.pools_per_axis() == (1, 2, 2)


def test_plans_reject_unknown_keys_and_other_versions(tmp_path):
    d = _plans().to_dict()
    d["configurations"]["3d_fullres"]["surprise"] = 1
    with pytest.raises(AutoSegError, match="unknown keys"):
        Plans.from_dict(d)
    d = _plans().to_dict()
    d["schema_version"] = 99
    with pytest.raises(AutoSegError, match="schema version"):
        Plans.from_dict(d)


def test_unknown_configuration_suggests_a_name():
    with pytest.raises(AutoSegError, match="Did you mean '3d_fullres'"):
        _plans().configuration("3d_fulres")
