"""Bad input around the compiled runtime, through `predict_arrays` as a user meets it: a model folder
without exported networks, a damaged exported file. (A missing runtime: test_compiled's
test_resolve_runtime_rules; read-only folder and no torch: test_compiled's stale/read-only and torch-free
tests.)"""
from __future__ import annotations

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference import compiled
from AutoSegLib.inference.predict import predict_arrays
from AutoSegLib.io.geometry import Geometry

pytestmark = pytest.mark.skipif(not any(compiled.installed(r) for r in compiled.COMPILED),
                                reason="no compiled runtime installed")
GEO = Geometry((2.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))


def _image():
    return np.random.default_rng(1).normal(100, 20, (1, 8, 16, 16)).astype(np.float32)


def test_missing_export_is_made_on_first_use_with_a_message(tiny_model):
    model = tiny_model()
    fw = next(iter(model.configurations["3d_fullres"].folds.values()))
    assert compiled.export_status(fw) == "missing"
    messages = []
    labels, _ = predict_arrays(model, _image(), GEO, tta=False, runtime="auto", progress=messages.append)
    assert labels.shape == (8, 16, 16)
    assert any("has no exported network: exporting it now" in str(m.get("message")) for m in messages)
    assert compiled.export_status(fw) == "ok"


def test_damaged_export_is_a_clear_error_naming_the_file(tiny_model):
    model = tiny_model()
    compiled.export_model(model)
    fw = next(iter(model.configurations["3d_fullres"].folds.values()))
    path = compiled.onnx_path(fw)
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte
    path.write_bytes(bytes(data))
    with pytest.raises(AutoSegError, match=f"{path}: the exported network is damaged"):
        predict_arrays(model, _image(), GEO, tta=False, runtime="auto")
