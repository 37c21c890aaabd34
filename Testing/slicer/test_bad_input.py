"""Bad input and failures leave the scene unchanged and say what is wrong; cancel leaves no process."""
from __future__ import annotations

import sys
import time

import numpy as np
import pytest

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.segment.options import PredictOptions
from autoseg_testing import fake_runner_factory, make_model_folder
from AutoSegLib.io.atomic import pid_alive


def _scene_snapshot(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


@pytest.fixture
def model(autoseg_logic):
    return autoseg_logic.require_model(make_model_folder(autoseg_logic.models_dir / "Organs"))


@pytest.fixture
def volume(make_volume):
    img = np.zeros((5, 8, 9), np.int16)
    img[1:4, 2:6, 2:7] = 100
    return make_volume(img, (2.0, 1.0, 1.0), name="ct")


def test_no_model_installed_and_no_model_selected(autoseg_logic, volume):
    with pytest.raises(AutoSegError, match="No model is installed .*Add model"):
        autoseg_logic.check_inputs(None, [volume])
    make_model_folder(autoseg_logic.models_dir / "M")
    with pytest.raises(AutoSegError, match="Select one in the model list"):
        autoseg_logic.check_inputs(None, [volume])


def test_folder_that_is_not_a_model(autoseg_logic, tmp_path, volume):
    junk = tmp_path / "models" / "holiday_photos"
    junk.mkdir(parents=True)
    (junk / "a.jpg").write_bytes(b"x")
    with pytest.raises(AutoSegError, match="not an AutoSeg model folder: dataset.json is missing"):
        autoseg_logic.check_inputs(junk, [volume])
    models, problems = autoseg_logic.models()
    assert models == [] and len(problems) == 1 and "holiday_photos" in problems[0]
    half = make_model_folder(tmp_path / "models" / "untrained")
    (half / "trained" / "3d_fullres" / "fold_0" / "checkpoint_final.pt").unlink()
    with pytest.raises(AutoSegError, match="no trained/<configuration>/fold_<k>/checkpoint_final.pt"):
        autoseg_logic.check_inputs(half, [volume])


def test_no_volume_and_too_few_volumes(autoseg_logic, tmp_path, volume):
    two = autoseg_logic.require_model(make_model_folder(tmp_path / "models" / "Two", channel_names=("T1", "FLAIR")))
    with pytest.raises(AutoSegError, match="No input volume selected"):
        autoseg_logic.check_inputs(two, [])
    with pytest.raises(AutoSegError, match=r"needs 2 input volume\(s\) \(T1, FLAIR\); missing: FLAIR"):
        autoseg_logic.check_inputs(two, [volume])
    with pytest.raises(AutoSegError, match="missing: T1"):
        autoseg_logic.check_inputs(two, [None, volume])


def test_2d_and_4d_volumes_for_a_3d_model(autoseg_logic, model, make_volume, slicer_harness):
    flat = make_volume(np.zeros((1, 8, 9), np.int16), name="scout")
    with pytest.raises(AutoSegError, match="'scout' is 2-D .*expects 3-D"):
        autoseg_logic.check_inputs(model, [flat])
    vec = slicer_harness.scene.AddNewNodeByClass("vtkMRMLVectorVolumeNode", "rgb")
    import slicer

    slicer.util.updateVolumeFromArray(vec, np.zeros((4, 5, 6, 3), np.uint8))
    with pytest.raises(AutoSegError, match="'rgb' has 3 values per voxel"):
        autoseg_logic.check_inputs(model, [vec])
    empty = slicer_harness.scene.AddNewNodeByClass("vtkMRMLScalarVolumeNode", "empty")
    with pytest.raises(AutoSegError, match="'empty' has no voxels"):
        autoseg_logic.check_inputs(model, [empty])


def test_bad_options(autoseg_logic, model, volume):
    with pytest.raises(AutoSegError, match="Device 'tpu'"):
        autoseg_logic.start_segmentation(model, [volume], PredictOptions(device="tpu"))
    with pytest.raises(AutoSegError, match="Step size 2"):
        autoseg_logic.start_segmentation(model, [volume], PredictOptions(step_size=2))


def test_child_failure_shows_error_and_log_tail_and_leaves_the_scene(autoseg_logic, model, volume, slicer_harness):
    before = _scene_snapshot(slicer_harness.scene)
    autoseg_logic.runner_factory = fake_runner_factory("fail")
    with pytest.raises(AutoSegError) as info:
        autoseg_logic.segment(model, [volume], PredictOptions(tta=False), timeout=60)
    msg = str(info.value)
    assert "exit code 2" in msg and "checkpoint_final.pt is damaged" in msg
    assert "loading fold 0" in msg and "CUDA out of memory" in msg       # the log tail
    assert _scene_snapshot(slicer_harness.scene) == before
    assert not list((autoseg_logic.work_root).iterdir())                  # temporary files removed


def test_child_exiting_without_output(autoseg_logic, model, volume, slicer_harness):
    before = _scene_snapshot(slicer_harness.scene)
    autoseg_logic.runner_factory = fake_runner_factory("nooutput")
    with pytest.raises(AutoSegError, match="wrote no label map"):
        autoseg_logic.segment(model, [volume], timeout=60)
    assert _scene_snapshot(slicer_harness.scene) == before



@pytest.mark.skipif(sys.platform != "linux", reason="checks /proc")
def test_cancel_during_a_run_leaves_no_process_no_node_no_files(autoseg_logic, model, volume, slicer_harness):
    before = _scene_snapshot(slicer_harness.scene)
    autoseg_logic.runner_factory = fake_runner_factory("sleep")
    events = []
    job = autoseg_logic.start_segmentation(model, [volume], PredictOptions(), on_event=events.append)
    t0 = time.monotonic()
    while not any(e["event"] == "stage" for e in events) and time.monotonic() - t0 < 30:
        time.sleep(0.02)
    pid = job.runner.pid
    assert pid_alive(pid) and job.running
    autoseg_logic.cancel(job)
    assert not job.running and not pid_alive(pid)
    assert job.runner.result.cancelled
    assert _scene_snapshot(slicer_harness.scene) == before
    assert not job.prepared.folder.exists()
    with pytest.raises(AutoSegError, match="cancelled"):
        autoseg_logic.finish_segmentation(job)
    assert _scene_snapshot(slicer_harness.scene) == before


def test_default_inputs_match_channel_names_then_order(autoseg_logic, tmp_path, make_volume):
    model = autoseg_logic.require_model(make_model_folder(tmp_path / "models" / "Two", channel_names=("T1", "FLAIR")))
    a = make_volume(np.zeros((3, 4, 5), np.int16), name="sub-01 flair")
    b = make_volume(np.zeros((3, 4, 5), np.int16), name="sub-01 t1w")
    c = make_volume(np.zeros((3, 4, 5), np.int16), name="other")
    assert autoseg_logic.default_inputs(model, [a, b, c]) == [b, a]
    assert autoseg_logic.default_inputs(model, [c]) == [c, None]
