"""AutoSegLib's public API: plain functions with explicit paths, one per pipeline step.

The CLI (`autoseg ...`) is a thin layer over these; the Slicer module runs the CLI in a child process.
Every function takes an optional ``progress`` callback (see `AutoSegLib.progress`) and raises
`AutoSegLib.errors.AutoSegError` for input the user can fix. Heavy modules are imported inside the
functions, so ``import AutoSegLib.api`` is cheap.

Pipeline, in order::

    verify(dataset)                                   -> VerifyReport
    plan(dataset, output)                             -> (work_dir, Plans)      fingerprint + plans
    preprocess(work_dir)                              -> summary dict
    plan_and_preprocess(dataset, output)              -> (work_dir, Plans)
    train(work_dir, configuration, fold)              -> fold folder
    find_best(work_dir)                               -> SelectionResult        writes inference.json
    predict(model, inputs, output)                    -> written files          (predict_arrays in memory)
    evaluate(pred_dir, ref_dir, output_dir)           -> summary dict
    export_model(work_dir, archive) / import_model(sources, models_dir)
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Optional, Sequence, Tuple

if TYPE_CHECKING:  # annotations only: the heavy modules are imported inside the functions
    from AutoSegLib.planning.plans import Plans

PathLike = "str | os.PathLike"


def verify(dataset: PathLike, num_workers: Optional[int] = None, progress=None):
    """Check a raw dataset folder; returns a report listing every error and warning (never raises for
    bad data, never writes). See `AutoSegLib.io.verify.verify_dataset`."""
    from AutoSegLib.io.verify import verify_dataset
    return verify_dataset(dataset, num_workers=num_workers, progress=progress)


def fingerprint(dataset: PathLike, output: Optional[PathLike] = None, num_workers: Optional[int] = None,
                verify: bool = True, progress=None):
    """Extract the dataset fingerprint into the work folder (``output``, default ``./autoseg_work/<name>``);
    returns ``(work folder, Fingerprint)``. ``verify``: run the per-case integrity checks while reading."""
    from AutoSegLib.fingerprint.extract import extract_fingerprint
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.work_folder import FINGERPRINT_JSON, resolve_work_dir, write_work_dataset_json

    work = resolve_work_dir(dataset, output)
    ds = load_dataset(dataset)
    fp = extract_fingerprint(ds.root, num_workers=num_workers, progress=progress, verify=verify)
    fp.to_json(work / FINGERPRINT_JSON)
    write_work_dataset_json(ds, work)
    return work, fp


def plan(dataset: PathLike, output: Optional[PathLike] = None, gpu_memory_gb: float = 8.0,
         num_workers: Optional[int] = None, force_fingerprint: bool = False, progress=None,
         time_budget_minutes: Optional[float] = None, device: str = "auto", precision: str = "auto",
         calibration_cache: Optional[PathLike] = None, plans_from: Optional[PathLike] = None,
         budget_target_iterations: Optional[int] = None, coarse_to_fine: bool = True,
         recalibrate: bool = False) -> Tuple[Path, "Plans"]:
    """Fingerprint (reused while current) and plan ``dataset`` into the work folder ``output`` (default
    ``./autoseg_work/<dataset name>``; never inside the dataset). Writes fingerprint.json, plans.json and
    dataset.json (with "dataset_path"). Returns (work folder, plans).

    With ``plans_from`` (a model or work folder) nothing is planned: that model's plans are adopted for
    fine-tuning it on ``dataset`` (`planning.reuse.adopt_plans`: same channels and labels required), with its
    fingerprint.

    With ``time_budget_minutes`` the plans also get a configuration sized for that much training on
    ``device`` at ``precision`` ("auto": as training resolves it), from a measurement of the device
    cached in ``calibration_cache`` (default `training.calibration.default_cache_path`; ``recalibrate``
    measures it again); see
    `planning.budget`. ``budget_target_iterations`` changes that plan's iteration target (more iterations at
    a coarser spacing); ``coarse_to_fine=False`` keeps it a single plan where a coarse-to-fine pair would
    pay (`planning.coarse_to_fine`)."""
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.work_folder import resolve_work_dir, write_work_dataset_json
    from AutoSegLib.planning.planner import plan_experiment
    from AutoSegLib.planning.workdir import fingerprint_for

    if not gpu_memory_gb > 0:
        raise AutoSegError(f"--gpu-memory-gb must be a positive number of gigabytes; got {gpu_memory_gb}.")
    if plans_from is not None:
        if time_budget_minutes is not None:
            raise AutoSegError("--plans-from keeps the model's plans, --time-budget-minutes makes new ones: give one "
                               "of them (to fine-tune for a time, pass --time-budget-minutes to `autoseg train`).")
        return _adopt_plans(dataset, output, plans_from)
    if budget_target_iterations is not None and time_budget_minutes is None:
        raise AutoSegError("--budget-iterations sets how a time budget is planned: give --time-budget-minutes too.")
    if num_workers is not None and num_workers < 1:
        raise AutoSegError(f"--workers must be at least 1; got {num_workers}.")
    calibration = None
    if time_budget_minutes is not None:
        if not time_budget_minutes > 0:
            raise AutoSegError(f"--time-budget-minutes must be a positive number; got {time_budget_minutes}.")
        from AutoSegLib.training.calibration import calibrate
        calibration = calibrate(device, precision, cache_path=calibration_cache, force=recalibrate,
                                progress=progress)
    work = resolve_work_dir(dataset, output)
    ds = load_dataset(dataset)
    fp = fingerprint_for(ds, work, num_workers=num_workers, progress=progress, force=force_fingerprint)
    if progress:
        progress({"event": "stage", "stage": "plan", "message": f"{ds.name}, {gpu_memory_gb:g} GB budget"})
    plans = plan_experiment(fp, ds, gpu_memory_gb=gpu_memory_gb, budget_minutes=time_budget_minutes,
                            calibration=calibration, budget_target_iterations=budget_target_iterations,
                            coarse_to_fine=coarse_to_fine)
    plans.to_json(work / "plans.json")
    write_work_dataset_json(ds, work)
    return work, plans


def _adopt_plans(dataset: PathLike, output: Optional[PathLike], source: PathLike) -> Tuple[Path, "Plans"]:
    import shutil

    from AutoSegLib.io.atomic import atomic_path
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.work_folder import FINGERPRINT_JSON, PLANS_JSON, resolve_work_dir, write_work_dataset_json
    from AutoSegLib.planning.reuse import adopt_plans

    ds = load_dataset(dataset)
    plans = adopt_plans(source, ds)
    work = resolve_work_dir(dataset, output)
    plans.to_json(work / PLANS_JSON)
    if (Path(source) / FINGERPRINT_JSON).is_file():
        with atomic_path(work / FINGERPRINT_JSON) as tmp:
            shutil.copyfile(Path(source) / FINGERPRINT_JSON, tmp)
    write_work_dataset_json(ds, work)
    return work, plans


def preprocess(work_dir: PathLike, configurations: Optional[Sequence[str]] = None, num_workers: Optional[int] = None,
               force: bool = False, progress=None) -> dict:
    """Preprocess the training cases of a planned work folder (skips finished cases unless ``force``)."""
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.io.work_folder import dataset_path_of
    from AutoSegLib.planning.plans import Plans
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    work = Path(work_dir)
    if not work.is_dir():
        raise AutoSegError(f"{work}: work folder not found. Run `autoseg plan DATASET --output {work}` first.")
    if num_workers is not None and num_workers < 1:
        raise AutoSegError(f"--workers must be at least 1; got {num_workers}.")
    plans = Plans.from_json(work / "plans.json")
    return preprocess_dataset(dataset_path_of(work), plans, configurations, work, num_workers=num_workers,
                              force=force, progress=progress)


def plan_and_preprocess(dataset: PathLike, output: Optional[PathLike] = None, gpu_memory_gb: float = 8.0,
                        configurations: Optional[Sequence[str]] = None, num_workers: Optional[int] = None,
                        force: bool = False, force_fingerprint: bool = False, progress=None,
                        time_budget_minutes: Optional[float] = None, device: str = "auto", precision: str = "auto",
                        calibration_cache: Optional[PathLike] = None, plans_from: Optional[PathLike] = None,
                        budget_target_iterations: Optional[int] = None,
                        coarse_to_fine: bool = True, recalibrate: bool = False) -> Tuple[Path, "Plans", dict]:
    """verify (inside the fingerprint) + fingerprint + plan + preprocess. Returns (work folder, plans,
    preprocessing summary). With a time budget (see `plan`) and no ``configurations``, only the budget
    configuration is preprocessed (the one that budget will train); with ``plans_from``, the configurations
    that model has trained."""
    from AutoSegLib.io.work_folder import trained_folds
    from AutoSegLib.preprocessing.dataset import preprocess_dataset

    work, plans = plan(dataset, output, gpu_memory_gb, num_workers, force_fingerprint, progress,
                       time_budget_minutes=time_budget_minutes, device=device, precision=precision,
                       calibration_cache=calibration_cache, plans_from=plans_from,
                       budget_target_iterations=budget_target_iterations, coarse_to_fine=coarse_to_fine,
                       recalibrate=recalibrate)
    if configurations is None and plans_from is not None:
        configurations = [c for c in trained_folds(plans_from) if c in plans.configurations] or None
    if configurations is None and plans.budget is not None:
        configurations = list(plans.stages("auto"))
    for name in configurations or ():
        plans.configuration(name)  # planned for this dataset? (3d_lowres is not always)
    result = preprocess_dataset(Path(dataset), plans, configurations, work, num_workers=num_workers, force=force,
                                progress=progress)
    return work, plans, result


def train(work_dir: PathLike, configuration: str, fold, config=None, output_dir: Optional[PathLike] = None,
          resume: bool = False, progress=None) -> Path:
    """Train one configuration ("auto": the plans' recommendation; both stages, coarse first, when it was
    planned coarse to fine) on one fold (0-4, or "all"); ``config`` is a
    `AutoSegLib.training.config.TrainingConfig` (default: the recipe's, or the schedule a budget configuration
    was planned for; with a pair, each stage's). Returns the (last) fold folder."""
    from AutoSegLib.planning.plans import Plans
    from AutoSegLib.training.trainer import train_fold

    from AutoSegLib.errors import AutoSegError

    stages = Plans.from_json(Path(work_dir) / "plans.json").stages(configuration) if configuration == "auto" \
        and (Path(work_dir) / "plans.json").is_file() else (configuration,)
    if len(stages) > 1 and (config is not None or output_dir is not None):
        raise AutoSegError(f"auto trains {' then '.join(stages)}, each on its own planned schedule and fold folder; "
                           f"to give a config or output folder, train them one at a time.")
    for stage in stages:
        out = train_fold(work_dir, stage, fold, config, output_dir=output_dir, progress=progress, resume=resume)
    return out


def find_best(work_dir: PathLike, configurations: Optional[Sequence[str]] = None, folds=None,
              allow_ensembles: bool = True, progress=None):
    """Score configurations and pairwise ensembles on cross-validation, decide post-processing, write
    inference.json and the report into ``work_dir``."""
    from AutoSegLib.postprocessing.selection import find_best as _find_best
    return _find_best(work_dir, configurations=configurations, folds=folds, allow_ensembles=allow_ensembles,
                      progress=progress)


def load_model(path: PathLike, allow_non_final: bool = False):
    """A model folder, training work folder, model archive or nnU-Net v2 results folder as a `Model`
    (``allow_non_final``: a work folder's unfinished folds use their best/latest checkpoint)."""
    from AutoSegLib.models.folder import load_model as _load_model
    return _load_model(path, allow_non_final=allow_non_final)


def predict(model, inputs, output: PathLike, **options):
    """Segment files (a folder of ``<case>_<XXXX><ext>`` cases or one case's channel files) into
    ``output``, in each input's own geometry. ``model``: a path or a loaded `Model`. Options as
    `AutoSegLib.inference.files.predict_files` (configuration, folds, tta, step_size, device, ...)."""
    from AutoSegLib.inference.files import predict_files
    if not hasattr(model, "configurations"):
        model = load_model(model)
    return predict_files(model, inputs, output, **options)


def predict_arrays(model, images, geometry, **options):
    """Segment one in-memory case: ``images`` (C, *spatial) float32 with its `Geometry`; returns
    (label map, probabilities or None) in the input grid. See `AutoSegLib.inference.predict.predict_arrays`."""
    from AutoSegLib.inference.predict import predict_arrays as _predict_arrays
    if not hasattr(model, "configurations"):
        model = load_model(model)
    return _predict_arrays(model, images, geometry, **options)


def evaluate(pred_dir: PathLike, ref_dir: PathLike, output_dir: Optional[PathLike] = None, label_layout=None,
             num_workers: int = 1, surface: bool = True, progress=None) -> dict:
    """Dice, IoU, HD95, ASSD (mm; ``surface=False`` skips the two distances) and volumes per case and
    label; JSON and CSV into ``output_dir``."""
    from AutoSegLib.evaluation.folders import evaluate_folders
    return evaluate_folders(pred_dir, ref_dir, label_layout=label_layout, output_dir=output_dir,
                            num_workers=num_workers, surface=surface, progress=progress)


def export_model(source: PathLike, archive: PathLike, configurations=None, folds=None, metadata=None,
                 progress=None) -> Path:
    """Write a work or model folder as one archive (weights as tensors only)."""
    from AutoSegLib.models.archive import export_model_archive
    return export_model_archive(source, archive, configurations=configurations, folds=folds, metadata=metadata,
                                progress=progress)


def import_model(sources: Sequence[PathLike], models_dir: PathLike, name: Optional[str] = None,
                 overwrite: bool = False, progress=None) -> Path:
    """Install archives, model folders or nnU-Net v2 results folders as one AutoSeg model folder."""
    from AutoSegLib.models.install import import_models
    return import_models(sources, models_dir, name=name, overwrite=overwrite, progress=progress)
