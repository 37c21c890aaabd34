"""Checks shared by the module's self-test (inside Slicer) and the headless pytest suite.

Each ``check_*`` function takes the scene and a scratch folder, builds what it needs (synthetic volumes, a
model folder, a stand-in child command), and raises AssertionError on a wrong result. The stand-in
child (`FAKE_PREDICT_SOURCE`) is a threshold "model" written through AutoSegLib's image IO, so the real
child-process runner, file exchange, segmentation building and export are exercised without torch.
"""
from __future__ import annotations

import sys
import time
from pathlib import Path

import numpy as np

FAKE_PREDICT_SOURCE = '''
"""Stand-in for `python -m AutoSegLib predict`: 1 where image > 50, 2 where > 150 (modes: ok, sleep, fail, nooutput)."""
import json, sys, time
from pathlib import Path

def ev(**k):
    print(json.dumps(k), flush=True)

def main(argv):
    mode, args = argv[0], argv[1:]
    opts = {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("-")}
    ev(event="stage", stage="predict", message="fake predict (%s)" % mode)
    print("argv " + json.dumps(args), flush=True)
    if mode == "sleep":
        time.sleep(120)
    if mode == "fail":
        ev(event="log", level="info", message="loading fold 0")
        print("Traceback (most recent call last):\\n  RuntimeError: CUDA out of memory", file=sys.stderr, flush=True)
        ev(event="error", message="fold 0: checkpoint_final.pt is damaged")
        return 2
    inp, out = Path(opts["-i"]), Path(opts["-o"])
    src = sorted(inp.glob("case_0000*"))[0]
    ending = src.name[len("case_0000"):]
    if mode == "nooutput":
        return 0
    import numpy as np
    from AutoSegLib.io.images import read_image, write_image
    image, geometry = read_image(src)
    for i in range(1, 4):
        ev(event="progress", stage="predict", current=i, total=3, eta_s=float(3 - i), message="patch %d" % i)
    label = (image > 50).astype(np.uint8) + (image > 150).astype(np.uint8)
    write_image(label, geometry, out / ("case" + ending))
    ev(event="result", output=str(out / ("case" + ending)))
    return 0

if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
'''


def library_path() -> str:
    """Folder holding AutoSegLib (installed extension: next to the module; checkout: one up)."""
    here = Path(__file__).resolve().parents[1]
    for candidate in (here, here.parent):
        if (candidate / "AutoSegLib" / "__init__.py").is_file():
            return str(candidate)
    return str(here)


def fake_runner_factory(mode: str, folder):
    """A runner factory whose child runs the stand-in script in ``mode`` instead of ``-m AutoSegLib <cmd>``."""
    from AutoSegSlicer.common.runner import ProcessRunner

    script = Path(folder) / "fake_predict.py"
    script.parent.mkdir(parents=True, exist_ok=True)
    script.write_text(FAKE_PREDICT_SOURCE)

    class FakeRunner(ProcessRunner):
        def start(self, argv):
            assert list(argv[1:3]) == ["-m", "AutoSegLib"], argv
            super().start([argv[0], str(script), mode, *argv[4:]])

    def factory(**kwargs):
        kwargs.setdefault("pythonpath", library_path())
        return FakeRunner(**kwargs)

    return factory


def make_model_folder(path, channel_names=("MRI",), labels=None, model_json=None, configuration="3d_fullres",
                      patch=(16, 16, 16)):
    """A model folder with the layout of DEVELOPERS.md. The checkpoint is a placeholder: the module never
    loads weights itself (the child does). Returns its path."""
    path = Path(path)
    labels = labels or {"background": 0, "organ": 1, "lesion": 2}
    from AutoSegLib.io.atomic import write_json
    from AutoSegLib.io.work_folder import fold_dir
    fold = fold_dir(path, configuration, 0)
    fold.mkdir(parents=True)
    (fold / "checkpoint_final.pt").write_bytes(b"placeholder")
    write_json(path / "dataset.json", {
        "name": path.name, "channel_names": {str(i): n for i, n in enumerate(channel_names)},
        "labels": labels, "numTraining": 2, "file_ending": ".nii.gz"})
    _tiny_plans(path.name, channel_names, labels, configuration, patch).to_json(path / "plans.json")
    if model_json is not None:
        write_json(path / "model.json", model_json)
    return path


def _tiny_plans(name, channel_names, labels, configuration, patch):
    """Valid plans for a two-stage U-Net of 4..8 features at 1 mm (what a fine-tuning adopts)."""
    from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans

    nd = len(patch)
    topology = NetworkTopology("plain_unet", 2, (4, 8), ((3,) * nd, (3,) * nd), ((1,) * nd, (2,) * nd), (1, 1), (1,))
    n = len(channel_names)
    conf = ConfigurationPlan(name=configuration, spacing=(1.0,) * nd, patch_size=tuple(patch), batch_size=2,
                             median_image_size=tuple(float(p) for p in patch), normalization=("zscore",) * n,
                             use_mask_for_norm=(False,) * n, network=topology, data_identifier=f"tiny_{configuration}")
    return Plans(dataset_name=name, channel_names={str(i): c for i, c in enumerate(channel_names)}, labels=labels,
                 transpose_forward=(0, 1, 2), transpose_backward=(0, 1, 2), original_median_spacing=(1.0, 1.0, 1.0),
                 original_median_shape=tuple(float(p) for p in patch)[-3:], intensity_properties={},
                 configurations={configuration: conf})


def synthetic_image():
    """(z, y, x) int16 image and the stand-in model's expected label map (1 > 50, 2 > 150)."""
    img = np.zeros((6, 12, 14), np.int16)
    img[1:4, 2:8, 3:10] = 100
    img[2:3, 4:6, 5:7] = 200
    img[5, 10:12, 0:3] = 100
    return img, ((img > 50).astype(np.int16) + (img > 150))


def python_for_children() -> str:
    """PythonSlicer inside Slicer (sys.executable is the application there), else this interpreter."""
    import shutil

    return shutil.which("PythonSlicer") or sys.executable


def _logic(scene, folder, mode):
    from AutoSegSlicer.segment.logic import AutoSegLogic

    return AutoSegLogic(scene=scene, models_dir=Path(folder) / "models", python_executable=python_for_children(),
                        pythonpath=library_path(), work_root=Path(folder) / "work",
                        runner_factory=fake_runner_factory(mode, Path(folder) / "bin"))


def _nodes(scene):
    return sorted(scene.GetNthNode(i).GetID() for i in range(scene.GetNumberOfNodes()))


def check_geometry_round_trip(scene, folder) -> None:
    """Oblique, anisotropic, left-handed: node -> array + geometry -> node is exact."""
    from AutoSegLib.io.geometry import Geometry
    from AutoSegSlicer.common import conversion

    c, s = np.cos(0.4), np.sin(0.4)
    for direction in (np.array([[c, -s, 0], [s, c, 0], [0, 0, 1.0]]), np.diag([1.0, 1.0, -1.0])):
        geo = Geometry((3.0, 0.7, 1.2), (4.0, -8.0, 15.5), tuple(direction.ravel()))
        array = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
        node = conversion.add_volume_from_array(scene, array, geo, "AutoSegSelfTestGeometry")
        back, back_geo = conversion.array_from_node(node)
        assert np.array_equal(back, array), "voxels changed in the node round trip"
        assert np.allclose(back_geo.direction, geo.direction, atol=1e-12), (back_geo, geo)
        assert np.allclose(back_geo.origin, geo.origin, atol=1e-12) and np.allclose(back_geo.spacing, geo.spacing)
        scene.RemoveNode(node)


def check_segment_correct_export_dataset(scene, folder) -> None:
    """Child-process prediction -> segments with names/values; rename/reorder/add; export; dataset."""
    import SimpleITK as sitk

    from AutoSegLib.io.geometry import Geometry
    from AutoSegSlicer.common import conversion, segmentation
    from AutoSegSlicer.correct import export
    from AutoSegSlicer.segment.options import PredictOptions

    folder = Path(folder)
    logic = _logic(scene, folder, "ok")
    model = logic.require_model(make_model_folder(folder / "models" / "SelfTest"))
    img, expected = synthetic_image()
    geo = Geometry((2.5, 0.8, 0.9), (10.0, -5.0, 3.0), tuple(np.eye(3).ravel()))
    volume = conversion.add_volume_from_array(scene, img, geo, "AutoSegSelfTest")
    seg = logic.segment(model, [volume], PredictOptions(tta=False), timeout=120)
    s = seg.GetSegmentation()
    ids = [s.GetNthSegmentID(i) for i in range(s.GetNumberOfSegments())]
    assert [s.GetSegment(i).GetName() for i in ids] == ["organ", "lesion"]
    assert [segmentation.segment_label_value(s.GetSegment(i)) for i in ids] == [1, 2]
    arr, _ = export.labelmap_array(seg, volume)
    assert np.array_equal(arr, expected), "segmentation differs from the child's label map"
    # corrections: rename, reorder, add a segment -> values follow segments; new one gets 3
    s.GetSegment(ids[0]).SetName("renamed organ")
    s.SetSegmentIndex(ids[1], 0)
    s.AddEmptySegment("", "extra")
    out = folder / "export" / "labels.nii.gz"
    assignment = logic.export_labels(seg, out)
    assert dict(zip(assignment.names, assignment.values)) == {"lesion": 2, "renamed organ": 1, "extra": 3}
    written = sitk.ReadImage(str(out))
    assert np.array_equal(sitk.GetArrayFromImage(written), expected)
    assert Geometry.from_sitk(written).is_close(geo)
    try:
        logic.export_labels(seg, out)
    except Exception as exc:  # AutoSegError
        assert "already exists" in str(exc)
    else:
        raise AssertionError("an existing file was overwritten without confirmation")
    s.RemoveSegment(s.GetSegmentIdBySegmentName("extra"))
    s.GetSegment(ids[0]).SetName("organ")
    case, paths, _ = logic.add_to_training_set(seg, [volume], folder / "Dataset")
    from AutoSegLib.io.jsonfile import read_json

    data = read_json(folder / "Dataset" / "dataset.json", "the dataset.json the self-test wrote", expect=dict)
    assert data["labels"] == {"background": 0, "organ": 1, "lesion": 2} and data["numTraining"] == 1
    assert np.array_equal(sitk.GetArrayFromImage(sitk.ReadImage(str(paths["label"]))), expected)
    scene.RemoveNode(seg)
    scene.RemoveNode(volume)


def check_failure_and_cancel_leave_scene(scene, folder) -> None:
    """A failing child: its error and log tail in the message; cancel: no process, no node, no files."""
    from AutoSegLib.errors import AutoSegError
    from AutoSegSlicer.common import conversion
    from AutoSegLib.io.geometry import Geometry

    folder = Path(folder)
    img, _ = synthetic_image()
    volume = conversion.add_volume_from_array(scene, img, Geometry.identity((1.0, 1.0, 1.0)), "AutoSegSelfTestFail")
    before = _nodes(scene)
    logic = _logic(scene, folder, "fail")
    model = logic.require_model(make_model_folder(folder / "models" / "FailTest"))
    try:
        logic.segment(model, [volume], timeout=120)
    except AutoSegError as exc:
        assert "checkpoint_final.pt is damaged" in str(exc) and "CUDA out of memory" in str(exc), str(exc)
    else:
        raise AssertionError("a failing child process was not reported")
    assert _nodes(scene) == before
    logic.runner_factory = fake_runner_factory("sleep", folder / "bin")
    events = []
    job = logic.start_segmentation(model, [volume], on_event=events.append)
    t0 = time.monotonic()
    while not events and time.monotonic() - t0 < 60:
        time.sleep(0.02)
    logic.cancel(job)
    assert not job.running and job.runner.result.cancelled
    assert not job.prepared.folder.exists() and _nodes(scene) == before
    scene.RemoveNode(volume)


def check_bad_input(scene, folder) -> None:
    """No model, no volume, too few volumes, 2-D volume: clear AutoSegError messages."""
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.geometry import Geometry
    from AutoSegSlicer.common import conversion

    folder = Path(folder)
    logic = _logic(scene, folder / "bad", "ok")
    flat = conversion.add_volume_from_array(scene, np.zeros((1, 5, 5), np.int16), Geometry.identity((1.0,) * 3), "flat")
    cases = [
        (lambda: logic.check_inputs(None, [flat]), "No model is installed"),
        (lambda: logic.check_inputs(make_model_folder(folder / "bad" / "models" / "Two", ("T1", "T2")), []),
         "No input volume selected"),
        (lambda: logic.check_inputs(folder / "bad" / "models" / "Two", [flat]), "missing: T2"),
        (lambda: logic.check_inputs(folder / "bad" / "models" / "Two", [flat, flat]), "is 2-D"),
        (lambda: logic.check_inputs(folder, [flat]), "not an AutoSeg model folder"),
    ]
    for call, expected in cases:
        try:
            call()
        except AutoSegError as exc:
            assert expected in str(exc), f"expected '{expected}' in: {exc}"
        else:
            raise AssertionError(f"no error raised (expected '{expected}')")
    scene.RemoveNode(flat)


from AutoSegSlicer.selftest_guidance import check_roi_table_and_jump  # noqa: E402  (it uses make_model_folder)

ALL_CHECKS = (check_geometry_round_trip, check_segment_correct_export_dataset, check_failure_and_cancel_leave_scene,
              check_bad_input, check_roi_table_and_jump)
