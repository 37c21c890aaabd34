"""Batch segmentation: many cases, one model, ONE child process (``autoseg predict ... --continue-on-error``).

Sources of cases: every loaded volume (`cases_from_volumes`), a folder of images (`cases_from_folder`, the
folder layout ``autoseg predict`` reads) or DICOM series of Slicer's DICOM database (`dicom_batch`). Cases
that are not already a folder of files are staged into a temporary input folder as ``<case>_XXXX<ext>``
(loaded volumes written from the scene, files linked or copied, DICOM series converted). The child writes
the label maps and ``predict_summary.json`` into the output folder and reports each case as a ``case``
event; `batch_table.results_table` turns them into a table node, and `batch_table.load_case` loads a row.

Typical use (blocking)::

    batch = BatchLogic(autoseg_logic)
    job = batch.start(model, cases_from_folder(folder, model), output_dir, PredictOptions(tta=False))
    job.wait(); table = batch.finish(job)
"""
from __future__ import annotations

import logging
import os
import re
import shutil
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, List, Optional, Sequence

from AutoSegLib.errors import AutoSegError
from AutoSegSlicer.common import conversion
from AutoSegSlicer.segment.options import PredictOptions
from AutoSegSlicer.common.runner import RunResult, autoseglib_command
from AutoSegSlicer.segment.uncertainty import SUMMARY_NAME

log = logging.getLogger(__name__)


@dataclass
class BatchCase:
    """One case: its name and its channels as files, volume nodes, or DICOM series (lists of files)."""
    name: str
    files: List[Path] = field(default_factory=list)
    volumes: list = field(default_factory=list)
    dicom: List[List[str]] = field(default_factory=list)
    source: str = ""   # what the user sees: a volume name, a file, a DICOM series description


def case_name(text: str) -> str:
    """A case name from a volume name or file stem: letters, digits, '-', '.', '_' (others become '_')."""
    name = re.sub(r"[^A-Za-z0-9._-]+", "_", text).strip("._") or "case"
    return re.sub(r"_\d{4}$", "", name) or "case"   # never ends like a channel suffix


def unique_names(names: Sequence[str]) -> List[str]:
    """Names made unique by appending _2, _3, ... in order."""
    used: set = set()
    out = []
    for n in names:
        candidate, k = n, 1
        while candidate in used:
            k += 1
            candidate = f"{n}_{k}"
        used.add(candidate)
        out.append(candidate)
    return out


def cases_from_volumes(volumes: Sequence, model) -> List[BatchCase]:
    """Every given scalar volume as a one-channel case (label maps and AutoSeg's uncertainty volumes excluded)."""
    volumes = [v for v in volumes if v is not None and not v.IsA("vtkMRMLLabelMapVolumeNode")
               and not v.GetAttribute("AutoSeg.Uncertainty")]
    if len(model.channel_names) != 1:
        raise AutoSegError(f"Model '{model.name}' takes {len(model.channel_names)} inputs "
                           f"({', '.join(model.channel_names)}): a batch over loaded volumes needs a one-input model. "
                           f"Put the cases in a folder as <case>_0000, <case>_0001 ... files instead.")
    if not volumes:
        raise AutoSegError("No volume is loaded: load the scans to segment, or choose a folder of images.")
    names = unique_names([case_name(_base_name(v.GetName())) for v in volumes])
    return [BatchCase(n, volumes=[v], source=v.GetName()) for n, v in zip(names, volumes)]


def cases_from_folder(folder, model) -> List[BatchCase]:
    """The cases ``autoseg predict`` finds in ``folder`` (``<case>_XXXX<ext>``; plain files for one input)."""
    from AutoSegLib.inference.files import find_cases

    folder = Path(folder)
    if not folder.is_dir():
        raise AutoSegError(f"Input folder {folder} not found: choose a folder of images.")
    found = find_cases(folder, len(model.channel_names))
    return [BatchCase(case, files=list(files), source=files[0].name) for case, files in found.items()]


def _base_name(name: str) -> str:
    for ending in (".nii.gz", ".nii", ".nrrd", ".nhdr", ".mha", ".mhd"):
        if name.lower().endswith(ending):
            return name[: -len(ending)]
    return name


class BatchJob:
    """A running batch: the runner, its folders, the cases, the ``case`` rows received so far."""

    def __init__(self, model, cases, options, runner, folder, input_dir, output_dir):
        self.model, self.cases, self.options, self.runner = model, list(cases), options, runner
        self.folder, self.input_dir, self.output_dir = folder, Path(input_dir), Path(output_dir)
        self.rows: List[dict] = []
        self.estimate: Optional[dict] = None
        self.summary_before = _stamp(self.output_dir / SUMMARY_NAME)   # an earlier run's summary is not this one's
        self.fraction_of_case = 0.0   # progress inside the current case, from its ``progress`` events

    @property
    def running(self) -> bool:
        return self.runner.running

    def wait(self, timeout: Optional[float] = None) -> Optional[RunResult]:
        return self.runner.wait(timeout)

    def note_event(self, event: dict) -> None:
        kind = event.get("event")
        if kind == "case":
            self.rows.append({k: v for k, v in event.items() if k != "event"})
            self.fraction_of_case = 0.0
        elif kind == "estimate":
            self.estimate = dict(event)
        elif kind == "progress" and event.get("total"):
            self.fraction_of_case = min(max(float(event.get("current") or 0) / float(event["total"]), 0.0), 1.0)

    def progress(self) -> float:
        """Overall progress 0..1: finished cases plus the fraction of the current one."""
        total = max(len(self.cases), 1)
        return min((len(self.rows) + (self.fraction_of_case if len(self.rows) < total else 0.0)) / total, 1.0)


class BatchLogic:
    """Start, follow, cancel and finish batch runs; ``logic`` is the module's `AutoSegLogic` (its scene,
    child Python, runner factory and temporary folder are used)."""

    def __init__(self, logic):
        self.logic = logic

    def command(self, model, input_path, output_dir, options: PredictOptions) -> List[str]:
        """The child's argument list: ``predict -m MODEL -i INPUT -o OUTPUT --continue-on-error <options>``."""
        args = ["-m", str(model.path), "-i", str(input_path), "-o", str(output_dir), "--continue-on-error",
                *options.args()]
        return autoseglib_command(self.logic.python_executable, "predict", args)

    def stage(self, model, cases: Sequence[BatchCase], input_dir) -> None:
        """Write or link every case's channels into ``input_dir`` as ``<case>_XXXX<ext>``."""
        from AutoSegLib.io.images import file_ending, write_image

        input_dir = Path(input_dir)
        input_dir.mkdir(parents=True, exist_ok=True)
        if len({c.name for c in cases}) != len(cases):
            raise AutoSegError("Two cases have the same name; rename one of them.")
        for case in cases:
            n = len(case.volumes) or len(case.files) or len(case.dicom)
            if n != len(model.channel_names):
                raise AutoSegError(f"Case '{case.name}' has {n} input(s); model '{model.name}' takes "
                                   f"{len(model.channel_names)} ({', '.join(model.channel_names)}).")
            for c, node in enumerate(case.volumes):
                array, geometry = conversion.array_from_node(node, allow_single_slice=model.image_ndim == 2)
                if array.dtype.kind == "f" and array.dtype.itemsize > 4:
                    array = array.astype("float32")
                write_image(array, geometry, input_dir / f"{case.name}_{c:04d}.nii.gz")
            for c, path in enumerate(case.files):
                dest = input_dir / f"{case.name}_{c:04d}{file_ending(path)}"
                _link_or_copy(Path(path), dest)
            if case.dicom:
                from AutoSegSlicer.segment.dicom_batch import write_series

                for c, files in enumerate(case.dicom):
                    write_series(files, input_dir / f"{case.name}_{c:04d}.nii.gz")

    def start(self, model, cases: Sequence[BatchCase], output_dir, options: PredictOptions = PredictOptions(),
              input_folder=None, on_event: Optional[Callable[[dict], None]] = None,
              polling: bool = False) -> BatchJob:
        """Stage the cases (unless ``input_folder``, a folder predict reads as it is, is given) and start the child.

        Raises AutoSegError for no cases, an output folder that is the input folder, or a failed start.
        """
        model = self.logic.require_model(model)
        cases = list(cases)
        if not cases:
            raise AutoSegError("Nothing to segment: no cases were found.")
        output_dir = Path(output_dir)
        if input_folder is not None and output_dir.resolve() == Path(input_folder).resolve():
            raise AutoSegError(f"The output folder {output_dir} is the input folder: choose another one (the label "
                               f"maps would be mixed with the scans).")
        options.args()  # bad options fail before anything is written
        root = self.logic.work_root
        if root:
            root.mkdir(parents=True, exist_ok=True)
        folder = Path(tempfile.mkdtemp(prefix="autoseg-batch-", dir=str(root) if root else None))
        try:
            input_path = Path(input_folder) if input_folder is not None else folder / "input"
            if input_folder is None:
                self.stage(model, cases, input_path)
            output_dir.mkdir(parents=True, exist_ok=True)
            holder: list = []

            def noting(event):
                if holder:
                    holder[0].note_event(event)
                if on_event is not None:
                    on_event(event)

            runner = self.logic.runner_factory(on_event=None if polling else noting, pythonpath=self.logic.pythonpath)
            argv = self.command(model, input_path, output_dir, options)
            runner.start(argv)
        except OSError as exc:
            shutil.rmtree(folder, ignore_errors=True)
            raise AutoSegError(f"Could not start the batch segmentation: {exc}.") from None
        except Exception:
            shutil.rmtree(folder, ignore_errors=True)
            raise
        job = BatchJob(model, cases, options, runner, folder, input_path, output_dir)
        holder.append(job)
        return job

    @staticmethod
    def poll_events(job: BatchJob) -> List[dict]:
        events = job.runner.poll_events()
        for event in events:
            job.note_event(event)
        return events

    @staticmethod
    def cancel(job: BatchJob, wait: bool = True) -> None:
        """Kill the child; the staged inputs go, the label maps written so far stay in the output folder."""
        def finish():
            job.runner.cancel()
            shutil.rmtree(job.folder, ignore_errors=True)

        if wait:
            finish()
        else:
            import threading

            threading.Thread(target=finish, daemon=True, name="autoseg-batch-cancel").start()

    def finish(self, job: BatchJob, result: Optional[RunResult] = None, table_node=None):
        """The results table node (new, or ``table_node`` refilled) from the summary, else the ``case`` events.

        A run where some cases failed is a result (their rows say why). Raises AutoSegError when the child
        failed before any case (bad model, memory will not fit, ...) or was cancelled with nothing done.
        """
        from AutoSegSlicer.segment import batch_table
        from AutoSegSlicer.segment.options import MemoryWillNotFit
        from AutoSegSlicer.segment.uncertainty import read_summary

        result = result or job.runner.result
        try:
            if result is None:
                raise AutoSegError("The batch segmentation has not finished.")
            fresh = _stamp(job.output_dir / SUMMARY_NAME) != job.summary_before
            summary = read_summary(job.output_dir) if fresh else None
            rows = summary["cases"] if summary else job.rows
            if not rows:
                if job.estimate and job.estimate.get("fits") is False and not job.options.force:
                    raise MemoryWillNotFit(job.estimate)
                raise AutoSegError(result.failure_message("Batch segmentation"))
            return batch_table.results_table(self.logic.scene, job.model, rows, job.output_dir, job.cases,
                                             node=table_node)
        finally:
            shutil.rmtree(job.folder, ignore_errors=True)


def _stamp(path: Path):
    """(modification time in ns, size) of a file, None when absent."""
    try:
        st = path.stat()
    except OSError:
        return None
    return st.st_mtime_ns, st.st_size


def _link_or_copy(source: Path, dest: Path) -> None:
    """A symbolic link to ``source`` (no copy of large scans), else a copy (Windows without the privilege)."""
    if not source.is_file():
        raise AutoSegError(f"Input file {source} not found.")
    try:
        os.symlink(source.resolve(), dest)
    except (OSError, NotImplementedError):
        shutil.copy2(source, dest)
