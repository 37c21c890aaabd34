"""One image check for verify and predict (truncated, NaN/inf, float64 beyond float32), and declared label
values that AutoSeg cannot store (negative, above int16, background not 0, malformed regions_class_order)."""
import json

import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.image_check import image_array_problem
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import read_image, write_image
from AutoSegLib.io.labels import LabelLayout


def _snapshot(folder):
    return {p: p.read_bytes() for p in sorted(folder.rglob("*")) if p.is_file()}


@pytest.fixture
def ds(synthetic_dataset):
    return synthetic_dataset("D", n_cases=3, shape=(8, 12, 12))


def test_float64_beyond_float32_range_is_refused_by_verify(ds, capsys):
    p = ds / "imagesTr" / "case_001_0000.nii.gz"
    arr, geo = read_image(p)
    arr = arr.astype(np.float64)
    arr[2, 3, 4] = 1e300
    write_image(arr, geo, p)
    assert main(["verify", str(ds), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "case_001_0000.nii.gz" in err and "exceed the float32 range (e.g. 1e+300" in err


def test_array_problem_is_precise():
    assert image_array_problem(np.zeros(5, np.float64) + 3e38) == ""
    assert "exceed the float32 range" in image_array_problem(np.array([0.0, -4e38]))
    assert "1 voxel(s) are NaN or infinite (0 NaN)" in image_array_problem(np.array([0.0, np.inf], np.float32))
    assert image_array_problem(np.array([70000], np.int64)) == ""


@pytest.mark.parametrize("labels, text", [
    ({"background": 0, "organ": 1, "huge": 40000}, "label 'huge' has value 40000; label values must lie in 0..32767"),
    ({"background": 0, "organ": -1}, "label 'organ' has value -1"),
    ({"background": 0, "whole": [1, 70000]}, "label 'whole' has value 70000"),
    ({"background": 1, "organ": 0}, "'background' has value 1; background must be 0"),
])
def test_unstorable_declared_labels_are_refused_by_verify(ds, labels, text, capsys):
    meta = json.loads((ds / "dataset.json").read_text())
    meta["labels"] = labels
    (ds / "dataset.json").write_text(json.dumps(meta))
    before = _snapshot(ds)
    assert main(["verify", str(ds), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert "dataset.json" in err and text in err, err
    assert _snapshot(ds) == before


@pytest.mark.parametrize("order", [None, "abc", [1, "x"], [1], [[1, 2], 3]])
def test_malformed_regions_class_order_is_a_message(order):
    with pytest.raises(AutoSegError, match="'regions_class_order'"):
        LabelLayout.from_dataset_labels({"background": 0, "whole": [1, 2], "core": 2}, regions_class_order=order)
    assert LabelLayout.from_dataset_labels({"background": 0, "whole": [1, 2], "core": 2},
                                           regions_class_order=[1, 2]).regions_class_order == (1, 2)


def _zero_pixdim(path):
    """Set pixdim[1] (x voxel size) to 0 in an uncompressed NIfTI-1 file's header."""
    import struct
    data = bytearray(path.read_bytes())
    data[80:84] = struct.pack("<f", 0.0)
    path.write_bytes(bytes(data))


def test_zero_voxel_size_is_refused_by_verify_and_predict_check(tmp_path):
    from AutoSegLib.io.image_check import check_image_files
    p = tmp_path / "a_0000.nii"
    write_image(np.ones((4, 5, 6), np.float32), Geometry.identity((2.0, 1.0, 1.0)), p)
    check_image_files([p], [read_image(p)[0]])  # fine as written
    _zero_pixdim(p)
    assert read_image(p)[1].spacing[-1] == 1.0  # the reader's silent guess
    with pytest.raises(AutoSegError, match=r"a_0000.nii: voxel size \(pixdim\) \[0.0, 1.0, 2.0\]"):
        check_image_files([p], [read_image(p)[0]])


def test_deeply_nested_dataset_json_is_a_message(ds, capsys):
    (ds / "dataset.json").write_text("[" * 100000 + "]" * 100000)
    assert main(["verify", str(ds), "--workers", "1"]) == 2
    err = capsys.readouterr().err
    assert f"{ds / 'dataset.json'}: nested more than 64 levels deep" in err and "Traceback" not in err
