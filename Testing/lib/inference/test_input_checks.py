"""predict makes verify's image check on every input (io.image_check): a truncated NIfTI, NaN/inf voxels
or float64 values beyond float32 are refused naming the file, never segmented as zero-filled data."""
import numpy as np
import pytest

from AutoSegLib.cli import main
from AutoSegLib.io.geometry import Geometry
from AutoSegLib.io.images import write_image


def _scan(folder, name, array):
    folder.mkdir(parents=True, exist_ok=True)
    write_image(array, Geometry.identity((2.0, 1.0, 1.0)), folder / name)
    return folder / name


@pytest.mark.parametrize("kind", ["truncated", "nan_nrrd", "nan_nifti", "float64_huge"])
def test_predict_refuses_what_verify_refuses(tiny_model, tmp_path, kind, capsys):
    model = tiny_model()
    rng = np.random.default_rng(0)
    arr = rng.random((10, 20, 20)).astype(np.float32)
    if kind == "truncated":
        p = _scan(tmp_path / "in", "a_0000.nii.gz", arr)
        p.write_bytes(p.read_bytes()[:-200])   # SimpleITK zero-fills the missing part without a word
    elif kind == "float64_huge":
        arr = arr.astype(np.float64)
        arr[1, 1, 1] = -1e200
        p = _scan(tmp_path / "in", "a_0000.nrrd", arr)
    else:
        arr[1, 2, 3] = np.nan
        p = _scan(tmp_path / "in", "a_0000.nrrd" if kind == "nan_nrrd" else "a_0000.nii.gz", arr)
    rc = main(["predict", "-m", str(model.path), "-i", str(tmp_path / "in"), "-o", str(tmp_path / "out"), "--no-tta"])
    err = capsys.readouterr().err
    assert rc == 2, err
    assert str(p) in err and ("truncated" in err or "NaN or infinite" in err or "float32 range" in err), err
    assert not (tmp_path / "out").exists() or not any((tmp_path / "out").iterdir())
