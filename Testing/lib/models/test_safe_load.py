"""The one checkpoint loader: weights-only plus the explicit allow-list; malicious files never run."""
from __future__ import annotations

import os
import pickle
import subprocess
import sys
import textwrap
from collections import OrderedDict

import numpy as np
import pytest
import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.models.safe_load import CheckpointRefused, load_checkpoint


class _RunsCode:
    """Unpickling this calls os.system (writes a marker file): what a malicious checkpoint does."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


class _Harmless:
    def __init__(self):
        self.value = 3


def _weights():
    return OrderedDict(conv=torch.arange(6, dtype=torch.float32).reshape(2, 3))


@pytest.mark.parametrize("zip_format", [True, False])
def test_checkpoint_that_runs_code_is_refused_and_nothing_runs(tmp_path, zip_format):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"network_weights": _weights(), "trainer_name": _RunsCode(marker)}, path,
               _use_new_zipfile_serialization=zip_format)
    assert not marker.exists()
    with pytest.raises(CheckpointRefused) as info:
        load_checkpoint(path)
    message = str(info.value)
    assert str(path) in message and "system" in message and "Nothing in the file was run" in message
    assert not marker.exists()


def test_raw_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    path.write_bytes(pickle.dumps({"x": _RunsCode(marker)}, protocol=2))
    with pytest.raises(AutoSegError):
        load_checkpoint(path)
    assert not marker.exists()


def test_refusal_happens_in_a_fresh_process_too(tmp_path):
    """No state left from other tests (e.g. a global allow-list) makes the difference: a child process."""
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth"
    torch.save({"x": _RunsCode(marker)}, path)
    code = textwrap.dedent(f"""
        from AutoSegLib.models.safe_load import load_checkpoint, CheckpointRefused
        try:
            load_checkpoint({str(path)!r})
        except CheckpointRefused:
            raise SystemExit(3)
    """)
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, timeout=120)
    assert result.returncode == 3, result.stderr.decode()[-2000:]
    assert not marker.exists()


def test_other_classes_are_refused_even_harmless_ones(tmp_path):
    path = tmp_path / "other.pt"
    torch.save({"network_weights": _weights(), "extra": _Harmless()}, path)
    with pytest.raises(CheckpointRefused, match="_Harmless"):
        load_checkpoint(path)


def test_numpy_integer_scalars_are_not_on_the_list(tmp_path):
    path = tmp_path / "int.pt"
    torch.save({"network_weights": _weights(), "epoch": np.int64(4)}, path)
    with pytest.raises(CheckpointRefused):
        load_checkpoint(path)


def test_plain_values_tensors_and_float_scalars_load_exactly(tmp_path):
    path = tmp_path / "ok.pth"
    data = {"network_weights": _weights(), "epoch": 7, "name": "x", "flag": True, "nothing": None,
            "axes": (0, 1, 2), "log": {"dice": [np.float32(0.25), np.float64(0.5)]},
            "device": torch.device("cpu")}
    torch.save(data, path)
    loaded = load_checkpoint(path)
    assert torch.equal(loaded["network_weights"]["conv"], data["network_weights"]["conv"])
    assert (loaded["epoch"], loaded["name"], loaded["flag"], loaded["nothing"], loaded["axes"]) == (7, "x", True, None, (0, 1, 2))
    assert loaded["log"]["dice"][0] == np.float32(0.25) and type(loaded["log"]["dice"][0]) is np.float32
    assert type(loaded["log"]["dice"][1]) is np.float64


def test_missing_truncated_and_non_dict_files(tmp_path):
    with pytest.raises(AutoSegError, match="not found"):
        load_checkpoint(tmp_path / "nope.pt")
    good = tmp_path / "good.pt"
    torch.save({"network_weights": _weights()}, good)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(good.read_bytes()[: good.stat().st_size // 2])
    with pytest.raises(AutoSegError, match="cut.pt"):
        load_checkpoint(cut)
    text = tmp_path / "text.pt"
    text.write_text("hello")
    with pytest.raises(AutoSegError, match="text.pt"):
        load_checkpoint(text)
    tensor_only = tmp_path / "tensor.pt"
    torch.save(torch.zeros(2), tensor_only)
    with pytest.raises(AutoSegError, match="expected a checkpoint dict"):
        load_checkpoint(tensor_only)


@pytest.mark.parametrize("source", ["repository", pytest.param("shared", marks=pytest.mark.slow)])
def test_reference_checkpoints_load(source, nnunet_reference, request):
    """Checkpoints written by the reference's own trainer (optimizer state, numpy scalars in the log, the
    trainer's init arguments) load tensors-only."""
    if source == "repository":
        root, trainer = nnunet_reference.dataset, nnunet_reference.trainer
    else:
        root, trainer = request.getfixturevalue("shared_dir") / "reference" / "nnunet_models" / "Dataset900_Synth", \
            "nnUNetTrainerCPUBench"
    paths = sorted(root.glob("*/fold_0/checkpoint_final.pth"))
    if not paths:
        pytest.skip("reference nnU-Net checkpoints not found")
    assert len(paths) == 2
    for path in paths:
        ck = load_checkpoint(path)
        assert ck["trainer_name"] == trainer and ck["current_epoch"] >= 2
        ndim = 3 if "3d" in path.parent.parent.name else 2
        assert tuple(ck["inference_allowed_mirroring_axes"]) == tuple(range(ndim))
        weights = ck["network_weights"]
        assert weights["encoder.stages.0.0.convs.0.conv.weight"].ndim == ndim + 2
        assert all(isinstance(v, torch.Tensor) for v in weights.values())


@pytest.mark.parametrize("zip_format", [True, False])
def test_memory_mapped_loading_of_both_formats(tmp_path, zip_format):
    path = tmp_path / "w.pt"
    torch.save({"network_weights": _weights()}, path, _use_new_zipfile_serialization=zip_format)
    loaded = load_checkpoint(path, mmap=True)
    assert torch.equal(loaded["network_weights"]["conv"], _weights()["conv"])
