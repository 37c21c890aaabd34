"""Predicting image files: a folder of cases (``<case>_<XXXX><ext>``) or one case's channel files.

Each output is a label map in its input's own grid and file format (size, spacing, origin, direction
copied from the input), written atomically: an interrupted run leaves no partial file. With
``save_probabilities`` a ``<case>.npz`` (key ``probabilities``, float32, (K, *spatial)) is written next
to it.
"""
from __future__ import annotations

import logging
import re
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import atomic_path, check_writable, output_folder, remove_stale_temporaries
from AutoSegLib.io.images import SUPPORTED_ENDINGS, file_ending, read_case, write_image
from AutoSegLib.progress import ProgressCallback, emit

log = logging.getLogger(__name__)

_CHANNEL = re.compile(r"^(?P<case>.+)_(?P<channel>\d{4})$")


def _is_image(p: Path) -> bool:
    return p.is_file() and not p.name.startswith(".") and any(p.name.lower().endswith(e) for e in SUPPORTED_ENDINGS)


def _stem(p: Path) -> str:
    return p.name[: len(p.name) - len(file_ending(p))]


def find_cases(inputs: "str | Path | Sequence[str | Path]", num_channels: int,
               progress: Optional[ProgressCallback] = None, failed: Optional[dict] = None) -> Dict[str, List[Path]]:
    """Group input files into cases: ``{case: [channel 0 file, channel 1 file, ...]}``.

    ``inputs`` is a folder of ``<case>_<XXXX><ext>`` files (for a one-channel model also plain
    ``<case><ext>`` files), or a list of one case's channel files (in channel order, or named
    ``_0000``, ``_0001`` ...), or one file. In a folder, a plain ``<case><ext>`` beside ``<case>_0000<ext>``
    (an earlier prediction) is ignored with a warning.

    Raises
    ------
    AutoSegError
        Nothing found, or a case with missing/extra channels (named). With ``failed`` (a dict) such cases
        are put there instead, ``{case: (files, message)}``, and the others returned.
    """
    if isinstance(inputs, (str, Path)):
        inputs = [inputs]
    paths = [Path(p).expanduser() for p in inputs]
    for p in paths:
        if not p.exists():
            raise AutoSegError(f"{p}: input not found.")
    if len(paths) == 1 and paths[0].is_dir():
        folder = paths[0]
        files = sorted(p for p in folder.iterdir() if _is_image(p))
        if not files:
            raise AutoSegError(f"{folder}: no image files found (expected <case>_0000{SUPPORTED_ENDINGS[0]} ...).")
        cases: Dict[str, Dict[int, Path]] = {}
        plain: List[Path] = []
        for f in files:
            m = _CHANNEL.match(_stem(f))
            if m:
                cases.setdefault(m["case"], {})[int(m["channel"])] = f
            else:
                plain.append(f)
        if plain and num_channels == 1:
            # `<case><ext>` beside `<case>_0000<ext>` is what predict writes for that case: a label map from an
            # earlier run into this folder, not a second scan. Taking it as channel 0 would segment a label map.
            ours = [f for f in plain if _stem(f) in cases]
            if ours:
                message = (f"{folder}: ignoring {len(ours)} file(s) that look like label maps predicted earlier "
                           f"(<case><ext> next to <case>_0000<ext>): {[p.name for p in ours[:5]]}")
                log.warning(message)
                emit(progress, "log", level="warning", message=message)
            for f in plain:
                if f not in ours:
                    cases.setdefault(_stem(f), {})[0] = f
        elif plain:
            log.warning("ignoring %d file(s) not named <case>_XXXX: %s", len(plain), [p.name for p in plain[:5]])
        problems = []
        out = {}
        for case, chans in sorted(cases.items()):
            want = list(range(num_channels))
            if sorted(chans) != want:
                problems.append(f"case {case!r}: channels {sorted(chans)} found, expected {want}")
                if failed is not None:
                    failed[case] = ([chans[k] for k in sorted(chans)],
                                    f"the model expects {num_channels} channel file(s) <case>_0000 .. "
                                    f"<case>_{num_channels - 1:04d}; found channels {sorted(chans)}")
            else:
                out[case] = [chans[i] for i in want]
        if problems and failed is not None and out:
            problems = []  # reported per case (continue on error)
        if problems:
            raise AutoSegError(f"{folder}: the model expects {num_channels} channel file(s) per case "
                               f"(<case>_0000 .. <case>_{num_channels - 1:04d}):\n" + "\n".join(f"  - {p}" for p in problems))
        if not out:
            raise AutoSegError(f"{folder}: no cases found (expected files named <case>_0000<ext>).")
        return out
    for p in paths:
        if p.is_dir():
            raise AutoSegError(f"{p}: give either one folder of cases or the channel files of one case, not both.")
    if len(paths) != num_channels:
        raise AutoSegError(f"the model expects {num_channels} channel file(s) for a case, got {len(paths)}: "
                           f"{[p.name for p in paths]}.")
    matches = [_CHANNEL.match(_stem(p)) for p in paths]
    if all(matches) and len({m["case"] for m in matches}) == 1:
        paths = [p for _, p in sorted(zip([int(m["channel"]) for m in matches], paths))]
        case = matches[0]["case"]
    else:
        case = _stem(paths[0])
    return {case: paths}


def _output_path(output: Path, case: str, ending: str, single_file_output: bool) -> Path:
    return output if single_file_output else output / f"{case}{ending}"


def _probabilities_path(dest: Path, ending: str) -> Path:
    return dest.with_name(dest.name[: len(dest.name) - len(ending)] + ".npz")


def _same_file(a: Path, b: Path) -> bool:
    try:
        return a.resolve() == b.resolve() or (a.exists() and b.exists() and a.samefile(b))
    except OSError:
        return False


def check_outputs_spare_inputs(inputs, cases: Dict[str, List[Path]], outputs: Dict[str, List[Path]]) -> None:
    """Refuse outputs that are, or would replace, an input file, and an output folder that is an input folder.

    Parameters
    ----------
    inputs : the ``inputs`` given to `find_cases`
    cases : {case: channel files}, as `find_cases` returns
    outputs : {case: files predict would write for it (label map, probabilities)}

    Raises
    ------
    AutoSegError
        Naming the output and the input it would overwrite (checked for every case before any is predicted).
    """
    given = [Path(p).expanduser() for p in ([inputs] if isinstance(inputs, (str, Path)) else inputs)]
    all_inputs = [f for files in cases.values() for f in files]
    for case, dests in outputs.items():
        for dest in dests:
            for folder in (p for p in given if p.is_dir()):
                if _same_file(dest.parent, folder):
                    raise AutoSegError(
                        f"{dest.parent}: the output folder is the input folder; label maps written there would "
                        f"mix with (and for single-channel cases replace) the scans. Give another output folder.")
            for f in all_inputs:
                if _same_file(dest, f):
                    raise AutoSegError(f"{dest}: this output would overwrite the input {f} of case {case!r}; "
                                       f"give another output file or folder.")


def predict_files(model, inputs, output: "str | Path", configuration=None, folds=None, tta: bool = True,
                  step_size: float = 0.5, device="auto", precision: str = "auto", save_probabilities: bool = False,
                  postprocess: bool = True, batch_size: int = 1, output_ending: Optional[str] = None,
                  overwrite: bool = True, progress: Optional[ProgressCallback] = None,
                  channels_last: Optional[bool] = None, runtime: str = "torch", save_uncertainty: bool = False,
                  continue_on_error: bool = False, fast: bool = False, roi=None, force: bool = False,
                  estimate: bool = True, estimate_only: bool = False) -> List[Path]:
    """Segment image files and write label maps in each input's own grid and format.

    Parameters
    ----------
    model : models.folder.Model
    inputs : path or sequence of paths
        A folder of cases, or one case's channel files (see ``find_cases``).
    output : path
        Output folder (created), or for a single case a file name with an image ending.
    configuration, folds, tta, step_size, device, precision, postprocess, batch_size, channels_last, runtime
        See ``predict_arrays``.
    save_probabilities : bool
        Also write ``<case>.npz`` with key ``probabilities`` (float32, (K, *spatial)).
    output_ending : str, optional
        Force a file format (".nii.gz", ".nrrd", ...); default: each input's own.
    overwrite : bool
        When False, cases whose output exists are skipped.
    fast, roi
        Fast mode and region of interest: see ``predict_arrays``.
    force, estimate : bool
        ``estimate``: emit the pre-flight estimate (``inference.estimate``) before any work; when it says the
        memory will not fit, stop with an AutoSegError unless ``force``.
    estimate_only : bool
        Stop after the estimate (nothing written; returns an empty list).
    save_uncertainty : bool
        Also write ``<case>_uncertainty<ending>`` (float32 in [0, 1], the input grid; `inference.uncertainty`).
    continue_on_error : bool
        A case that fails (unreadable, wrong channels, bad values, ...) is reported with status "failed" and
        the others go on; the caller counts the failures in the summary (`inference.summary`). Without it the
        first failure raises.

    Each case ends with a ``case`` progress event (a row of the summary); when ``output`` is a folder,
    ``<output>/predict_summary.json`` is rewritten atomically after every case.

    Returns
    -------
    list of Path
        The label-map files written (or kept).
    """
    from AutoSegLib.inference.runtimes import resolve_runtime

    failed: Optional[dict] = {} if continue_on_error else None
    cases = find_cases(inputs, model.plans.num_channels, progress, failed)
    runtime = resolve_runtime(runtime, str(device))
    output = Path(output).expanduser()
    single = len(cases) == 1 and any(output.name.lower().endswith(e) for e in SUPPORTED_ENDINGS)
    planned = {}
    for case, files in cases.items():
        ending = output_ending or file_ending(files[0])
        dest = _output_path(output, case, ending, single)
        planned[case] = [dest, _probabilities_path(dest, ending)] if save_probabilities else [dest]
        if save_uncertainty:
            planned[case].append(uncertainty_path(dest, ending))
    check_outputs_spare_inputs(inputs, cases, planned)
    todo = {c: f for c, f in cases.items() if overwrite or not planned[c][0].exists()}  # --skip-existing
    if estimate and todo:
        check_estimate(model, todo, configuration, folds, tta, step_size, runtime, save_probabilities, fast, roi,
                       force, progress)
    if estimate_only:
        return []
    if not single and output.exists() and not output.is_dir():
        raise AutoSegError(f"{output}: exists and is not a folder; give an output folder.")
    # the output folder (created if needed) is removed again if nothing could be written into it
    with output_folder(output.parent if single else output) as folder:
        check_writable(folder)  # a read-only or full folder is found before the first case, not after it
        remove_stale_temporaries([p for dests in planned.values() for p in dests])  # left by a killed run
        from AutoSegLib.inference.summary import Report
        report = Report(model, None if single else folder, failed, progress, settings={
            "configuration": configuration, "folds": None if folds is None else [str(f) for f in folds], "tta": tta,
            "step_size": step_size, "device": str(device), "precision": precision, "runtime": runtime,
            "postprocess": postprocess, "save_probabilities": save_probabilities,
            "save_uncertainty": save_uncertainty, "continue_on_error": continue_on_error, "fast": fast,
            "roi": None if roi is None else [list(map(float, c)) for c in roi]})
        return _predict_cases(model, cases, output, single, configuration, folds, tta, step_size, device, precision,
                              save_probabilities, postprocess, batch_size, output_ending, overwrite, progress,
                              channels_last, runtime, save_uncertainty, continue_on_error, report, fast, roi)


def uncertainty_path(dest: Path, ending: str) -> Path:
    """``<case>_uncertainty<ending>`` beside the label map ``dest``."""
    return dest.with_name(dest.name[: len(dest.name) - len(ending)] + "_uncertainty" + ending)


def check_estimate(model, cases, configuration, folds, tta, step_size, runtime, save_probabilities, fast, roi,
                   force, progress) -> dict:
    """Emit the pre-flight estimate; AutoSegError when the memory will not fit and ``force`` is not given."""
    from AutoSegLib.inference.estimate import estimate_run, run_configurations
    from AutoSegLib.inference.predict import resolve_settings
    from AutoSegLib.inference.runner import select_folds

    configurations, folds_for, tta, step_size = resolve_settings(model, configuration, folds, tta, step_size, fast)
    configurations = run_configurations(model, configurations)
    folds_for = {c: select_folds(model, c, folds_for.get(c, folds)) for c in configurations}
    try:
        event = estimate_run(model, cases, configurations, folds_for, tta, step_size, runtime, save_probabilities,
                             roi, progress)
    except (RuntimeError, OSError, ValueError, KeyError, TypeError) as exc:  # no estimate: predict all the same
        log.warning("no pre-flight estimate: %s", exc)
        emit(progress, "log", level="warning", message=f"no pre-flight estimate ({str(exc)[:200]})")
        return {}
    if not event["fits"] and not force:
        raise AutoSegError(f"{event['message']}. Nothing was predicted.")
    return event


def _predict_cases(model, cases, output, single, configuration, folds, tta, step_size, device, precision,
                   save_probabilities, postprocess, batch_size, output_ending, overwrite, progress,
                   channels_last, runtime, save_uncertainty=False, continue_on_error=False, report=None, fast=False,
                   roi=None) -> List[Path]:
    from AutoSegLib.inference.predict import check_input, predict_arrays

    written = []
    n = len(cases)
    start = time.monotonic()
    for i, (case, files) in enumerate(cases.items()):
        ending = output_ending or file_ending(files[0])
        dest = _output_path(output, case, ending, single)
        if dest.exists() and not overwrite:
            emit(progress, "log", level="info", message=f"{case}: output exists, skipped")
            written.append(dest)
            report.skipped(case, files, dest)
            continue
        emit(progress, "stage", stage="predict", message=f"case {i + 1}/{n}: {case}")
        report.start(case, files)
        try:
            images, geometry = read_case(files, check=True)  # verify's image check: never segment zero-filled data
            check_input(model, images, geometry, source=str(files[0]))
            unc = {} if save_uncertainty else None
            labels, probs = predict_arrays(model, images, geometry, configuration, folds, tta, step_size, device,
                                           precision, return_probabilities=save_probabilities, postprocess=postprocess,
                                           batch_size=batch_size, progress=progress, channels_last=channels_last,
                                           runtime=runtime, uncertainty_out=unc, fast=fast, roi=roi,
                                           source=str(files[0]))
            report.predicted(images, geometry, labels, unc)
            del images
            if save_probabilities:
                npz = _probabilities_path(dest, ending)
                with atomic_path(npz) as tmp:
                    with open(tmp, "wb") as f:
                        np.savez_compressed(f, probabilities=probs)
                del probs
            write_image(labels, geometry, dest)
            unc_path = None
            if save_uncertainty:
                from AutoSegLib.inference.uncertainty import write_uncertainty
                unc_path = write_uncertainty(unc["uncertainty"], geometry, uncertainty_path(dest, ending),
                                             unc["measure"], unc["members"])
            del unc
        except Exception as exc:  # noqa: BLE001 - continue_on_error: any case's failure is reported, not fatal
            report.failed(exc)
            if not continue_on_error:
                raise
            continue
        report.done(dest, unc_path)
        written.append(dest)
        elapsed = time.monotonic() - start
        emit(progress, "progress", stage="predict cases", current=i + 1, total=n,
             eta_s=elapsed / (i + 1) * (n - i - 1), message=case)
    emit(progress, "result", outputs=[str(p) for p in written])
    return written
