"""A real prediction through the module: 'Add model...' (autoseg import-model in a child process) on the
reference's tiny trained 2d model, then Apply (autoseg predict in a child process) on the reference's test
input, into a segmentation node; compared with the reference implementation's own prediction."""
from __future__ import annotations

import numpy as np
import pytest
import SimpleITK as sitk

from autoseg_harness import REPO
from AutoSegSlicer.common import conversion, segmentation
from AutoSegSlicer.correct import export
from AutoSegSlicer.segment.options import PredictOptions

# reference models trained by nnunetv2 and its predictions, in the repository (make_reference_models.py)
REF = REPO / "Testing" / "lib" / "models" / "data" / "nnunet_ref"
TRAINER = "nnUNetTrainerTiny"
MODEL_SRC = REF / "Dataset900_Synth" / f"{TRAINER}__nnUNetPlans__2d"
INPUT = REF / "inputs" / "test_000_0000.nii.gz"

pytestmark = [
    pytest.mark.skipif(not (REPO / "AutoSegLib" / "commands" / "predict.py").is_file()
                       or not (REPO / "AutoSegLib" / "commands" / "import_model.py").is_file(),
                       reason="the library's predict / import-model commands are not there yet"),
    pytest.mark.skipif(not MODEL_SRC.is_dir() or not INPUT.is_file(), reason=f"reference model not found in {REF}"),
]


@pytest.fixture(scope="module")
def installed_models(tmp_path_factory):
    """Factory: the reference model of a configuration, installed once through the module's 'Add model...'
    logic (autoseg import-model in a child process); returns its models folder."""
    import sys

    from AutoSegSlicer.segment.logic import AutoSegLogic

    done = {}

    def install(configuration):
        if configuration not in done:
            models_dir = tmp_path_factory.mktemp(f"models_{configuration}")
            logic = AutoSegLogic(scene=None, models_dir=models_dir, python_executable=sys.executable,
                                 pythonpath=str(REPO))
            logic.add_model(MODEL_SRC.parent / f"{TRAINER}__nnUNetPlans__{configuration}", timeout=300)
            done[configuration] = models_dir
        return done[configuration]

    return install


@pytest.mark.parametrize("configuration, tta", [
    pytest.param("3d_fullres", False, id="3d_fullres-notta"),                    # fast: default suite
    pytest.param("2d", True, id="2d-tta", marks=pytest.mark.slow),
])
def test_add_model_then_segment_matches_the_reference_prediction(installed_models, autoseg_logic, slicer_harness,
                                                                 configuration, tta):
    min_dice, min_agreement = 0.98, 0.995
    reference_output = REF / "outputs" / f"{configuration}_{'tta' if tta else 'notta'}" / "test_000.nii.gz"
    autoseg_logic.models_dir = installed_models(configuration)
    models, problems = autoseg_logic.models()
    assert problems == [] and len(models) == 1
    model = models[0]
    assert model.channel_names == ("MRI",) and model.labels == (("background", 0), ("organ", 1), ("lesion", 2))
    volume = slicer_harness.load_volume(INPUT)
    assert autoseg_logic.default_inputs(model, [volume]) == [volume]
    events = []
    seg = autoseg_logic.segment(model, [volume], PredictOptions(tta=tta, device="cpu"), on_event=events.append,
                                timeout=600)
    s = seg.GetSegmentation()
    segs = [s.GetSegment(s.GetNthSegmentID(i)) for i in range(s.GetNumberOfSegments())]
    assert [x.GetName() for x in segs] == ["organ", "lesion"]
    assert seg.GetName() == f"test_000_0000 {model.name}"   # file ending dropped (trap 13)
    assert [segmentation.segment_label_value(x) for x in segs] == [1, 2]
    assert segs[0].GetColor() != segs[1].GetColor()
    assert any(e["event"] == "progress" for e in events), "no progress events from the child"
    ours, _ = export.labelmap_array(seg, volume)
    ours, _ = conversion.array_in_file_grid(ours, volume)
    reference = sitk.GetArrayFromImage(sitk.ReadImage(str(reference_output)))
    assert ours.shape == reference.shape
    agreement = float((ours == reference).mean())
    for value in (1, 2):
        a, b = ours == value, reference == value
        if not a.any() and not b.any():  # the 2-epoch model never predicts this label: both agree it is absent
            continue
        dice = 2 * (a & b).sum() / (a.sum() + b.sum())
        print(f"label {value}: Dice {dice:.4f} against the reference prediction")
        assert dice > min_dice, f"label {value}: Dice {dice:.4f} against the reference prediction"
    print(f"voxel agreement with the reference prediction: {agreement:.5f}")
    assert agreement > min_agreement, agreement


TINY = REPO / "Testing" / "lib" / "models" / "data" / "nnunet_tiny"


@pytest.mark.skipif(not (TINY / "Dataset901_ResEncRegions").is_dir(), reason="tiny fixture models not present")
def test_two_channel_region_model_through_the_module_equals_the_reference(autoseg_logic, slicer_harness, tmp_path):
    """2 inputs (CT, MRI) pre-filled by channel name, an oblique grid, region labels (whole = [1, 2],
    core = 2): the exported label file equals the reference implementation's prediction voxel for voxel,
    on the same grid."""
    from AutoSegLib.io.geometry import Geometry

    autoseg_logic.add_model(TINY / "Dataset901_ResEncRegions" / "nnUNetTrainer__nnUNetResEncUNetMPlans__3d_fullres",
                            timeout=300)
    (model,), problems = autoseg_logic.models()
    assert problems == [] and model.channel_names == ("CT", "MRI")
    assert model.labels == (("background", 0), ("whole", 1), ("core", 2))
    mri = slicer_harness.load_volume(TINY / "inputs" / "resenc_000_0001.nii.gz", name="resenc MRI")
    ct = slicer_harness.load_volume(TINY / "inputs" / "resenc_000_0000.nii.gz", name="resenc CT")
    inputs = autoseg_logic.default_inputs(model, [mri, ct])
    assert inputs == [ct, mri]
    seg = autoseg_logic.segment(model, inputs, PredictOptions(tta=False, device="cpu"), timeout=300)
    s = seg.GetSegmentation()
    assert [s.GetNthSegment(i).GetName() for i in range(s.GetNumberOfSegments())] == ["whole", "core"]
    out = tmp_path / "resenc_000.nii.gz"
    autoseg_logic.export_labels(seg, out)
    ours = sitk.ReadImage(str(out))
    reference = sitk.ReadImage(str(TINY / "expected" / "Dataset901_ResEncRegions" / "notta" / "resenc_000.nii.gz"))
    assert Geometry.from_sitk(ours).is_close(Geometry.from_sitk(reference))
    a, b = sitk.GetArrayFromImage(ours), sitk.GetArrayFromImage(reference)
    assert set(np.unique(b)) >= {1, 2}, "fixture prediction should hold both labels"
    assert np.array_equal(a, b), f"{int((a != b).sum())} of {a.size} voxels differ from the reference"
