"""The AutoSeg module's logic: segment loaded volumes with an installed model, export, add to a dataset.

`AutoSegLogic` takes its collaborators (the MRML scene, the models folder, the Python that runs
AutoSegLib, a runner factory), so it runs headless against slicer-core and in Slicer alike. Heavy work
runs in a child process (`runner.ProcessRunner`); the scene is changed only when the child has
succeeded and its output has been read, so a failed or cancelled run leaves the scene as it was.

Typical use (blocking, for scripts and tests)::

    logic = AutoSegLogic(scene=slicer.mrmlScene, models_dir=..., python_executable=...)
    model = logic.models()[0][0]
    seg = logic.segment(model, [volume_node], PredictOptions(tta=False))

The widget uses `start_segmentation` / the runner's `poll_events` / `finish_segmentation` instead. Correcting,
exporting and collecting training cases are in `corrections.CorrectionLogic` (a base class).
"""
from __future__ import annotations

import dataclasses
import logging
import shutil
import tempfile
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import conversion, models, segmentation
from AutoSegSlicer.common.runner import ProcessRunner, RunResult, autoseglib_command
from AutoSegSlicer.correct.logic import CorrectionLogic
from AutoSegSlicer.segment.options import MemoryWillNotFit, PredictOptions

log = logging.getLogger(__name__)

_WRITE_ENDINGS = (".nii.gz", ".nii", ".nrrd", ".mha")


@dataclass
class PreparedCase:
    """Input files written for the child process, and what is needed to read its output back."""
    folder: Path
    input_dir: Path
    output_dir: Path
    case: str
    shape: Tuple[int, ...]
    notes: List[str]


class SegmentationJob:
    """One running prediction: the runner, its temporary folder, and where the result goes."""

    def __init__(self, model, volumes, options, prepared, runner, target, on_event):
        self.model, self.volumes, self.options = model, list(volumes), options
        self.prepared, self.runner, self.target = prepared, runner, target
        self.on_event = on_event
        self.estimate: Optional[dict] = None   # the child's pre-flight ``estimate`` event
        self.uncertainty = None                # uncertainty.CaseUncertainty after finishing with save_uncertainty

    def note_event(self, event: dict) -> None:
        """Remember what the logic needs from the child's events (the pre-flight estimate)."""
        if event.get("event") == "estimate":
            self.estimate = dict(event)

    @property
    def running(self) -> bool:
        return self.runner.running

    def wait(self, timeout: Optional[float] = None) -> Optional[RunResult]:
        return self.runner.wait(timeout)


class AutoSegLogic(CorrectionLogic):
    """Segment, export and collect training cases.

    Parameters
    ----------
    scene : vtkMRMLScene
    models_dir : path
        Where installed models live (one sub-folder each); the widget keeps it in Slicer's settings.
    python_executable : str
        The interpreter that runs ``-m AutoSegLib`` (``PythonSlicer`` in Slicer).
    pythonpath : str, optional
        Folder holding AutoSegLib, prepended to the child's PYTHONPATH (the extension's lib folder).
    work_root : path, optional
        Parent of temporary folders (default: the system's).
    runner_factory : callable, optional
        ``runner_factory(on_event=..., on_finished=..., pythonpath=...)`` -> a `ProcessRunner`-like object.
    segmentations_logic, volumes_logic : module logics, optional (kept for callers that need them).
    """

    def __init__(self, scene, models_dir, python_executable: str, pythonpath: Optional[str] = None,
                 work_root=None, runner_factory: Callable = ProcessRunner, segmentations_logic=None,
                 volumes_logic=None):
        self.scene = scene
        self.models_dir = Path(models_dir)
        self.python_executable = str(python_executable)
        self.pythonpath = pythonpath
        self.work_root = Path(work_root) if work_root else None
        self.runner_factory = runner_factory
        self.segmentations_logic = segmentations_logic
        self.volumes_logic = volumes_logic
        self.last_job: Optional[SegmentationJob] = None  # the job `segment` finished last (its uncertainty)

    # -- models ------------------------------------------------------------------------------
    def models(self) -> Tuple[List[models.ModelInfo], List[str]]:
        """Installed models and one line per sub-folder of the models folder that is not a model."""
        return models.list_models(self.models_dir)

    def require_model(self, model) -> models.ModelInfo:
        """A `ModelInfo` from a ModelInfo or a path; AutoSegError when none is selected or it is not a model."""
        if model is None or model == "":
            found, _ = self.models()
            hint = ("Select one in the model list." if found else
                    f"No model is installed in {self.models_dir}: use 'Add model...' to install one.")
            raise AutoSegError(f"No model selected. {hint}")
        return model if isinstance(model, models.ModelInfo) else models.read_model_info(model)

    def start_add_model(self, source, on_event=None, on_finished=None):
        """Start ``autoseg import-model SOURCE --models-dir <models_dir>`` in a child process; returns the runner."""
        args = models.import_model_args(source, self.models_dir)
        self.models_dir.mkdir(parents=True, exist_ok=True)
        runner = self.runner_factory(on_event=on_event, on_finished=on_finished, pythonpath=self.pythonpath)
        try:
            runner.start(autoseglib_command(self.python_executable, "import-model", args))
        except OSError as exc:
            raise AutoSegError(f"Could not start {self.python_executable} to install the model: {exc}.") from None
        return runner

    def add_model(self, source, timeout: Optional[float] = None) -> RunResult:
        """Blocking `start_add_model`; raises AutoSegError with the child's error and log tail on failure."""
        events: list = []
        runner = self.start_add_model(source, on_event=events.append)
        result = runner.wait(timeout)
        if result is None:
            runner.cancel()
            raise AutoSegError(f"Installing {source} did not finish within {timeout} s.")
        if not result.ok:
            raise AutoSegError(result.failure_message(f"Installing the model {source}"))
        return result

    # -- inputs ------------------------------------------------------------------------------
    @staticmethod
    def default_inputs(model: models.ModelInfo, volumes: Sequence) -> list:
        """Pre-fill one volume per channel: a volume whose name contains the channel name, else the next
        unused one in the given order; None where nothing is left."""
        chosen, used = [], set()
        for channel in model.channel_names:
            match = next((v for v in volumes if id(v) not in used and channel.lower() in v.GetName().lower()), None)
            if match is None:
                match = next((v for v in volumes if id(v) not in used), None)
            if match is not None:
                used.add(id(match))
            chosen.append(match)
        return chosen

    def check_inputs(self, model, volumes: Sequence) -> models.ModelInfo:
        """Validate model and volumes; returns the `ModelInfo`. Raises AutoSegError naming what is wrong."""
        model = self.require_model(model)
        volumes = list(volumes or [])
        n = len(model.channel_names)
        if not volumes or all(v is None for v in volumes):
            raise AutoSegError(f"No input volume selected. Load a scan and select it as "
                               f"'{model.channel_names[0]}'.")
        missing = [model.channel_names[i] for i in range(n) if i >= len(volumes) or volumes[i] is None]
        if missing:
            raise AutoSegError(f"Model '{model.name}' needs {n} input volume(s) ({', '.join(model.channel_names)}); "
                               f"missing: {', '.join(missing)}. Select a volume for each input.")
        if len(volumes) > n:
            raise AutoSegError(f"Model '{model.name}' takes {n} input volume(s), {len(volumes)} were given.")
        for v in volumes:
            dims = conversion.check_volume_node(v, allow_single_slice=model.image_ndim == 2)  # raises for 2-D / 4-D
            if model.image_ndim == 2 and min(dims) > 1:
                raise AutoSegError(f"Model '{model.name}' was trained on 2-D images; volume '{v.GetName()}' has "
                                   f"several slices.")
        return model

    def prepare_case(self, model: models.ModelInfo, volumes: Sequence, folder) -> PreparedCase:
        """Write the input volumes as ``<case>_XXXX<ending>`` files; inputs on another grid than the first are
        resampled (linear) onto it, which ``notes`` records."""
        folder = Path(folder)
        input_dir, output_dir = folder / "input", folder / "output"
        input_dir.mkdir(parents=True, exist_ok=True)
        output_dir.mkdir(parents=True, exist_ok=True)
        from AutoSegLib.io.images import write_image

        ending = model.file_ending if model.file_ending in _WRITE_ENDINGS else ".nii.gz"
        case = "case"
        notes: List[str] = []
        first, ref_geo = conversion.array_from_node(volumes[0], allow_single_slice=model.image_ndim == 2)
        for c, node in enumerate(volumes):
            if c == 0:
                array = first
            else:
                array, geo = conversion.array_from_node(node, allow_single_slice=model.image_ndim == 2)
                if array.shape != first.shape or not geo.is_close(ref_geo):
                    why = "size differs" if array.shape != first.shape else ref_geo.describe_difference(geo)
                    notes.append(f"Input '{node.GetName()}' ({model.channel_names[c]}) is not on the grid of "
                                 f"'{volumes[0].GetName()}' ({why}); resampled onto it (linear).")
                    array = conversion.resample_onto(array, geo, ref_geo, first.shape)
            if array.dtype == np.float64:
                array = array.astype(np.float32)
            write_image(array, ref_geo, input_dir / f"{case}_{c:04d}{ending}")
        return PreparedCase(folder, input_dir, output_dir, case, tuple(first.shape), notes)

    # -- segmenting --------------------------------------------------------------------------
    def start_segmentation(self, model, volumes: Sequence, options: PredictOptions = PredictOptions(),
                           target_segmentation=None, on_event: Optional[Callable[[dict], None]] = None,
                           polling: bool = False) -> SegmentationJob:
        """Check inputs, write them to a temporary folder and start ``autoseg predict`` in a child process.

        ``on_event`` receives the child's progress events (and the resampling notes as ``log`` events);
        with ``polling`` True they are queued for `SegmentationJob.runner.poll_events` (GUI thread).
        Nothing in the scene changes until `finish_segmentation`.
        """
        model = self.check_inputs(model, volumes)
        option_args = options.args()
        if self.work_root:
            self.work_root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="autoseg-", dir=str(self.work_root) if self.work_root else None))
        try:
            prepared = self.prepare_case(model, volumes, folder)
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        for note in prepared.notes:
            log.info(note)
            if on_event is not None:
                on_event({"event": "log", "level": "warning", "message": note})
        def noting(event):
            job.note_event(event)  # the job exists before the child starts: no event arrives before it
            if on_event is not None:
                on_event(event)

        runner = self.runner_factory(on_event=None if polling else noting, pythonpath=self.pythonpath)
        job = SegmentationJob(model, volumes, options, prepared, runner, target_segmentation, on_event)
        args = ["-m", str(model.path), "-i", str(prepared.input_dir), "-o", str(prepared.output_dir), *option_args]
        try:
            runner.start(autoseglib_command(self.python_executable, "predict", args))
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise AutoSegError(f"Could not start {self.python_executable} to run the segmentation: {exc}. "
                               f"AutoSeg runs its work with Slicer's PythonSlicer; reinstall Slicer if it is missing.") from None
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        return job

    def poll_events(self, job: SegmentationJob) -> List[dict]:
        """The child's queued events (polling mode, GUI thread), noted on the job (see `SegmentationJob.note_event`)."""
        events = job.runner.poll_events()
        for event in events:
            job.note_event(event)
        return events

    def restart_forced(self, job: SegmentationJob, on_event=None, polling: bool = False) -> SegmentationJob:
        """Start ``job`` again with ``--force`` (after the user agreed to run although the memory will not fit)."""
        return self.start_segmentation(job.model, job.volumes, dataclasses.replace(job.options, force=True), job.target,
                                       on_event, polling)

    def cancel(self, job: SegmentationJob, wait: bool = True) -> None:
        """Kill the child process tree and remove the temporary files; the scene is not touched.

        ``wait=False`` (the GUI): returns at once; the kill and the removal finish on a background thread.
        """
        if wait:
            job.runner.cancel()
            shutil.rmtree(job.prepared.folder, ignore_errors=True)
            return

        def finish():
            job.runner.cancel()
            shutil.rmtree(job.prepared.folder, ignore_errors=True)

        threading.Thread(target=finish, daemon=True, name="autoseg-cancel").start()

    def finish_segmentation(self, job: SegmentationJob, result: Optional[RunResult] = None):
        """Read the child's label map into a segmentation node (new, or ``job.target`` replaced).

        Raises AutoSegError with the child's error and log tail when it failed (scene unchanged).
        """
        result = result or job.runner.result
        try:
            if result is None:
                raise AutoSegError("The segmentation process has not finished.")
            estimate = job.estimate
            if not result.ok and not result.cancelled and estimate and estimate.get("fits") is False \
                    and not job.options.force:
                raise MemoryWillNotFit(estimate)
            if not result.ok:
                raise AutoSegError(result.failure_message("Segmentation"))
            label = self._read_output(job)
            node = self.apply_labels(job.model, job.volumes[0], label, job.target, job.options.show_3d)
            if job.options.save_uncertainty:
                from AutoSegSlicer.segment import uncertainty

                job.uncertainty = uncertainty.read_case(self.scene, job.prepared.output_dir, job.prepared.case,
                                                        job.volumes[0], node)
            return node
        finally:
            shutil.rmtree(job.prepared.folder, ignore_errors=True)

    def _read_output(self, job: SegmentationJob) -> np.ndarray:
        from AutoSegLib.io.images import read_image

        out = job.prepared.output_dir
        candidates = [p for p in out.iterdir() if p.name.startswith(job.prepared.case + ".")
                      and not p.name.endswith((".json", ".npz"))] if out.is_dir() else []
        if not candidates:
            listing = ", ".join(sorted(p.name for p in out.iterdir())) if out.is_dir() else "nothing"
            raise AutoSegError(f"The segmentation process finished but wrote no label map for the case in {out} "
                               f"(found: {listing or 'nothing'}).")
        label, _ = read_image(candidates[0])
        if label.shape != job.prepared.shape:
            raise AutoSegError(f"The predicted label map {candidates[0].name} has size {label.shape[::-1]}, the input "
                               f"{job.prepared.shape[::-1]} (x, y, z).")
        return label

    def apply_labels(self, model: models.ModelInfo, volume, label: np.ndarray, target=None, show_3d: bool = False):
        """Put a label map (z, y, x, on ``volume``'s grid) into a segmentation node; returns the node.

        A new node is named '<volume> <model>' and placed beside the volume in the subject hierarchy;
        ``target`` (an existing segmentation node) has all its segments replaced.
        """

        known = {v for _, v in model.labels}
        extra = sorted(set(np.unique(label).tolist()) - known)
        if extra:
            raise AutoSegError(f"The predicted label map holds values {extra} that model '{model.name}' does not define "
                               f"({sorted(known)}).")
        specs = segmentation.segment_specs(model.labels, model.colors, model.terminology)
        geometry = conversion.geometry_from_node(volume)
        node = target
        if node is None:
            node = self.scene.AddNewNodeByClass("vtkMRMLSegmentationNode",
                                                self.scene.GenerateUniqueName(f"{_base_name(volume)} {model.name}"))
        try:
            if node.GetDisplayNode() is None:
                node.CreateDefaultDisplayNodes()
            node.SetReferenceImageGeometryParameterFromVolumeNode(volume)
            node.SetAndObserveTransformNodeID(volume.GetTransformNodeID())
            segmentation.fill_segmentation(node, label, geometry, specs)
            display = node.GetDisplayNode()
            display.SetVisibility(True)
            display.SetVisibility2D(True)
            if show_3d:
                node.CreateClosedSurfaceRepresentation()
            node.SetAttribute("AutoSeg.Model", str(model.path))
            node.SetAttribute("AutoSeg.SourceVolume", volume.GetID())
            segmentation.place_beside(self.scene, node, volume)
        except Exception:
            if target is None:
                self.scene.RemoveNode(node)
            raise
        return node

    def segment(self, model, volumes: Sequence, options: PredictOptions = PredictOptions(), target_segmentation=None,
                on_event=None, timeout: Optional[float] = None, prompt: Optional[Callable[[str], bool]] = None):
        """Blocking prediction into a segmentation node (scripts, tests, the self-test).

        When the child's pre-flight estimate says the memory will not fit, ``prompt(question)`` is asked; True
        runs it again with ``--force``, otherwise (or without ``prompt``) `MemoryWillNotFit` is raised.
        """
        job = self.start_segmentation(model, volumes, options, target_segmentation, on_event)
        while True:
            result = job.wait(timeout)
            if result is None:
                self.cancel(job)
                raise AutoSegError(f"Segmentation did not finish within {timeout} s and was cancelled.")
            try:
                node = self.finish_segmentation(job, result)
            except MemoryWillNotFit as exc:
                if prompt is None or not prompt(exc.question()):
                    raise
                job = self.restart_forced(job, on_event)
                continue
            self.last_job = job
            return node


def _base_name(volume) -> str:
    """The volume's name without a file ending (nodes loaded outside the app keep it: trap 13)."""
    name = volume.GetName()
    for ending in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd", ".seg.nrrd"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name
