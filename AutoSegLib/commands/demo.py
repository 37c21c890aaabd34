"""`autoseg demo`: the whole pipeline end to end, on generated data or on a real dataset.

    generate (or take) a dataset -> verify -> fingerprint -> plan -> preprocess -> train the folds ->
    find-best -> predict held-out cases -> evaluate -> PNG of a case (image | reference | prediction)

Without ``--dataset`` a small synthetic 3D dataset (``io.synthetic``: 20 training + 5 test cases of
16 x 32 x 32 voxels, organ + lesion, test cases in imagesTs/labelsTs) is generated and planned for a
training budget of ``SYNTH_BUDGET_MINUTES`` (2.5 min, validation included) on this device; the budget
configuration (planning.budget) is trained on fold 0. The small lesion (about 50 voxels) needs iterations
more than resolution: measured on the 2-core Xeon with bf16 (2026-12-07, bench/README.md), its held-out
Dice was 0 after 580 iterations at the data's spacing, 0.88-0.93 after 740-990, 0.946 and 0.958 after 1252
and 1291 (the 2.5-minute budget, on the machine at its slowest that day; 2.4 min in all), and 0.89-0.93
after 900-1600 at 1.25x coarser (the 1.5-minute budget used before). ``--folds 0 1 2 3 4`` runs the whole
cross-validation (the budget is shared by the folds). With ``--dataset PATH`` the same runs on a real
dataset; its held-out cases are imagesTs/labelsTs when the dataset has them, else ``--holdout`` training
cases set aside before preprocessing (they are never trained on; the fingerprint's intensity statistics
still include them).

Everything goes under ``--output`` (default ``./autoseg_demo``): ``raw/`` (generated data), ``work/``
(the training work folder), ``predictions/``, ``evaluation/``, ``demo_case.png`` and ``demo_summary.json``.
"""
from __future__ import annotations

import logging
import math
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence

log = logging.getLogger(__name__)

SYNTH_DEFAULTS = {"n_cases": 20, "n_test": 5, "shape": (16, 32, 32), "spacing": (2.0, 1.0, 1.0)}
SYNTH_BUDGET_MINUTES = 2.5


def add_arguments(parser) -> None:
    parser.add_argument("-o", "--output", default="autoseg_demo", metavar="DIR",
                        help="folder for everything the demo writes (default ./autoseg_demo)")
    parser.add_argument("--dataset", metavar="PATH", help="run on this raw dataset instead of generated data")
    parser.add_argument("--time-budget-minutes", type=float, default=None,
                        help="training time for all folds together, split evenly between them (default: "
                             f"{SYNTH_BUDGET_MINUTES:g} for the generated data, 30 for a real dataset)")
    parser.add_argument("--epochs", type=int, default=None,
                        help="epochs per fold (default: 60 for the generated data, 1000 capped by the time budget "
                             "for a real dataset)")
    parser.add_argument("--iterations-per-epoch", type=int, default=None,
                        help="training batches per epoch (default 10 for the generated data, 50 otherwise)")
    parser.add_argument("--folds", nargs="+", default=None, metavar="K",
                        help="cross-validation folds to train (default: 0 for the generated data, 0 1 2 3 4 for a real "
                             "dataset)")
    parser.add_argument("--configuration", default="auto",
                        help="configuration to train (default auto: the budget configuration planned for the time "
                             "budget, or 3d_fullres without one)")
    from AutoSegLib.commands.plan import add_precision_arguments
    add_precision_arguments(parser)
    parser.add_argument("--cases", type=int, default=SYNTH_DEFAULTS["n_cases"],
                        help="generated training cases (default 20)")
    parser.add_argument("--test-cases", type=int, default=SYNTH_DEFAULTS["n_test"],
                        help="generated held-out test cases (default 5)")
    parser.add_argument("--shape", type=int, nargs=3, default=list(SYNTH_DEFAULTS["shape"]), metavar=("Z", "Y", "X"),
                        help="generated image size in voxels (default 16 32 32; spacing 2 x 1 x 1 mm)")
    parser.add_argument("--val-iterations", type=int, default=None,
                        help="validation batches per epoch (default 1 for the generated data, 10 otherwise)")
    parser.add_argument("--holdout", type=int, default=None,
                        help="real dataset without imagesTs/labelsTs: training cases held out for testing "
                             "(default 20%%, at most 20)")
    parser.add_argument("--device", default="auto", help="auto (cuda, then mps, then cpu), cpu, cuda, mps")
    parser.add_argument("--tta", dest="tta", action="store_true", default=None,
                        help="test-time mirroring when predicting (default: on for a real dataset, off for the "
                             "generated data, where it would multiply the prediction time by 8)")
    parser.add_argument("--no-tta", dest="tta", action="store_false", help="no test-time mirroring")
    parser.add_argument("--workers", type=int, default=None, help="worker processes for data steps")
    parser.add_argument("--seed", type=int, default=0, help="seed of the generated data and the training")


def _holdout_cases(case_ids: Sequence[str], n: Optional[int], seed: int) -> List[str]:
    import numpy as np

    ids = sorted(case_ids)
    if n is None:
        n = min(20, max(1, round(0.2 * len(ids))))
    if not 1 <= n <= len(ids) - 2:
        from AutoSegLib.errors import AutoSegError
        raise AutoSegError(f"--holdout {n}: must leave at least 2 of the {len(ids)} training cases for training.")
    pick = np.random.default_rng(seed).permutation(len(ids))[:n]
    return sorted(ids[i] for i in pick)


def _copy(src: Path, dst: Path) -> None:
    import shutil

    from AutoSegLib.io.atomic import atomic_path

    if dst.is_file() and dst.stat().st_size == src.stat().st_size:
        return
    with atomic_path(dst) as tmp:
        shutil.copyfile(src, tmp)


def _fold_done(fold_dir: Path) -> bool:
    return (fold_dir / "checkpoint_final.pt").is_file() and (fold_dir / "validation" / "summary.json").is_file()


def run_demo(output: "str | os.PathLike" = "autoseg_demo", dataset: "str | os.PathLike | None" = None,
             time_budget_minutes: Optional[float] = None, epochs: Optional[int] = None,
             iterations_per_epoch: Optional[int] = None, folds: Optional[Sequence] = None,
             configuration: str = "auto", n_cases: int = SYNTH_DEFAULTS["n_cases"],
             n_test: int = SYNTH_DEFAULTS["n_test"], shape: Sequence[int] = SYNTH_DEFAULTS["shape"],
             spacing: Sequence[float] = SYNTH_DEFAULTS["spacing"], holdout: Optional[int] = None,
             device: str = "auto", tta: Optional[bool] = None, num_workers: Optional[int] = None, seed: int = 0,
             val_iterations: Optional[int] = None, precision: str = "auto",
             calibration_cache: "str | os.PathLike | None" = None, budget_target_iterations: Optional[int] = None,
             coarse_to_fine: bool = True, recalibrate: bool = False, progress=None) -> dict:
    """Run the whole pipeline; returns the summary also written to ``output/demo_summary.json``.

    Parameters
    ----------
    output : folder for everything written.
    dataset : raw dataset folder; None generates a synthetic one (``n_cases``, ``n_test``, ``shape``,
        ``spacing``, ``seed``).
    time_budget_minutes : training time for all folds together (split evenly), their validation included;
        the plans get a budget configuration for each fold's share (default SYNTH_BUDGET_MINUTES for the
        generated data, 30 for a real dataset).
    epochs, iterations_per_epoch, val_iterations : training schedule per fold.
    folds : folds to train (default 0-4).
    configuration : the configuration trained ("auto": the budget configuration).
    precision : training precision the budget is planned for; calibration_cache : where the device's measured
        speed is cached (training.calibration; ``recalibrate`` measures it again); budget_target_iterations :
        the budget rule's iteration target (planning.budget, default target_iterations_for the budget);
        coarse_to_fine : allow the pair where it pays (planning.coarse_to_fine).
    holdout : real dataset without labelsTs: number of training cases held out for the test.
    device, tta, num_workers : prediction/training device, test-time mirroring (None: off for generated
        data, on for a real dataset), data workers.
    progress : callable, optional

    Returns
    -------
    dict with ``test_dice`` (per label), ``test_foreground_dice``, ``cv_foreground_dice``, ``timings_s``,
    ``paths`` and ``notes``.
    """
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.evaluation.figure import save_case_figure
    from AutoSegLib.evaluation.folders import evaluate_folders
    from AutoSegLib.inference.files import predict_files
    from AutoSegLib.io.atomic import write_json
    from AutoSegLib.io.datasets import load_dataset
    from AutoSegLib.io.verify import verify_dataset
    from AutoSegLib.io.work_folder import write_work_dataset_json
    from AutoSegLib.io.images import read_case, read_image
    from AutoSegLib.io.synthetic import make_synthetic_dataset
    from AutoSegLib.models.folder import load_model
    from AutoSegLib.planning.budget import BudgetTooSmall
    from AutoSegLib.planning.planner import plan_experiment
    from AutoSegLib.planning.workdir import fingerprint_for
    from AutoSegLib.postprocessing.selection import find_best
    from AutoSegLib.preprocessing.dataset import preprocess_dataset
    from AutoSegLib.progress import emit
    from AutoSegLib.training.calibration import calibrate
    from AutoSegLib.training.config import TrainingConfig, budget_defaults
    from AutoSegLib.training.trainer import train_fold

    output = Path(output).expanduser().resolve()
    output.mkdir(parents=True, exist_ok=True)
    synthetic = dataset is None
    folds = [str(f) for f in (folds if folds is not None else ((0,) if synthetic else range(5)))]
    # Both the generated data and a real dataset train the budget configuration planned for the time budget
    # on this device (planning.budget): its schedule fits the budget, validation included.
    if time_budget_minutes is None:
        time_budget_minutes = SYNTH_BUDGET_MINUTES if synthetic else 30.0
    explicit = {k for k, v in (("epochs", epochs), ("iterations_per_epoch", iterations_per_epoch),
                               ("val_iterations", val_iterations)) if v is not None}
    if precision != "auto":
        explicit.add("precision")
    if tta is None:
        tta = not synthetic
    notes: List[str] = []
    timings = {}
    t0 = time.monotonic()

    def lap(name):
        nonlocal t0
        now = time.monotonic()
        timings[name] = round(now - t0, 2)
        t0 = now

    # 1. data
    if synthetic:
        raw = output / "raw" / "AutoSegDemo"
        if not (raw / "dataset.json").is_file():
            emit(progress, "stage", stage="generate",
                 message=f"synthetic dataset: {n_cases} training + {n_test} test cases of {tuple(shape)} voxels")
            make_synthetic_dataset(raw, n_cases=n_cases, shape=shape, spacing=spacing, n_test=n_test, seed=seed)
        else:
            emit(progress, "log", level="info", message=f"reusing the generated dataset in {raw}")
    else:
        raw = Path(dataset).expanduser().resolve()
    lap("generate")
    # 2. verify
    report = verify_dataset(raw, num_workers=num_workers, progress=progress)
    report.raise_if_failed()
    ds = load_dataset(raw)
    lap("verify")
    # held-out cases
    ending = ds.file_ending
    if (raw / "labelsTs").is_dir() and (raw / "imagesTs").is_dir():
        test_images, test_labels = raw / "imagesTs", raw / "labelsTs"
        train_cases = list(ds.case_ids)
        held = sorted(p.name[: -len(ending)] for p in test_labels.glob(f"*{ending}"))
    else:
        held = _holdout_cases(ds.case_ids, holdout, seed)
        test_images, test_labels = output / "holdout" / "images", output / "holdout" / "labels"
        for case in held:
            for img in ds.cases[case].images:
                _copy(img, test_images / img.name)
            _copy(ds.cases[case].label, test_labels / f"{case}{ending}")
        train_cases = [c for c in ds.case_ids if c not in held]
        notes.append(f"{len(held)} training case(s) held out for testing (never trained on; the fingerprint's "
                     f"intensity statistics include them): {held}")
    if not held:
        raise AutoSegError(f"{raw}: no held-out cases to test on (labelsTs is empty).")
    # 3. fingerprint (WORK/fingerprint.json, reused while it matches the dataset) + plan
    work = output / "work"
    work.mkdir(parents=True, exist_ok=True)
    fingerprint = fingerprint_for(ds, work, num_workers=num_workers, progress=progress)
    lap("fingerprint")
    emit(progress, "stage", stage="plan", message="planning")
    per_fold = time_budget_minutes / len(folds)
    calibration = calibrate(device, precision, cache_path=calibration_cache, force=recalibrate, progress=progress)
    try:
        plans = plan_experiment(fingerprint, ds, budget_minutes=per_fold, calibration=calibration,
                                budget_target_iterations=budget_target_iterations, coarse_to_fine=coarse_to_fine)
    except BudgetTooSmall as exc:  # a slow or busy machine: the demo still runs, for longer, and says so
        note = (f"{exc} The demo trains each fold for {exc.smallest_minutes} minutes instead of "
                f"{per_fold:g}.")
        emit(progress, "log", level="warning", message=note)
        notes.append(note)
        per_fold = float(exc.smallest_minutes)
        plans = plan_experiment(fingerprint, ds, budget_minutes=per_fold, calibration=calibration,
                                budget_target_iterations=budget_target_iterations, coarse_to_fine=coarse_to_fine)
    configuration = plans.configuration(configuration).name  # "auto" -> the budget configuration
    if (work / "plans.json").is_file():
        from AutoSegLib.planning.plans import Plans
        if Plans.from_json(work / "plans.json").to_dict() != plans.to_dict():
            raise AutoSegError(f"{work}: holds a training made with other plans; use a new --output folder.")
    plans.to_json(work / "plans.json")
    write_work_dataset_json(ds, work)
    lap("plan")
    # 4. preprocess (training cases only)
    stages = plans.stages(configuration)  # a coarse-to-fine pair trains its coarse stage first
    preprocess_dataset(raw, plans, list(stages), work, num_workers=num_workers, progress=progress,
                       cases=train_cases)
    lap("preprocess")
    # 5. train
    n_train = len(train_cases)
    if n_train < len(folds):
        folds = folds[:max(1, n_train)]
        notes.append(f"only {n_train} training cases: trained folds {folds}")
    if len(folds) < 5:
        notes.append(f"trained {len(folds)} of the 5 cross-validation folds ({folds}): the cross-validation Dice "
                     f"covers only their validation cases, and the model ensembles {len(folds)} fold(s)")
    given = {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch, "val_iterations": val_iterations}
    planned_minutes = {c: plans.budget_for(c).minutes for c in stages if plans.budget_for(c) is not None}
    configs = {}
    for stage in stages:  # each stage its share of the fold's minutes, as planned
        minutes = per_fold * planned_minutes[stage] / sum(planned_minutes.values()) if stage in planned_minutes \
            else per_fold
        config = TrainingConfig(time_budget_minutes=minutes, mirror_at_validation=False, device=device,
                                precision=precision, num_workers=num_workers, seed=12345 + seed,
                                **{k: v for k, v in given.items() if v is not None})
        if plans.budget_for(stage) is not None:
            config = budget_defaults(config, plans.budget_for(stage), explicit | {"device", "time_budget_minutes"})
        configs[stage] = config
    from AutoSegLib.io.work_folder import fold_dir as work_fold_dir
    for fold in folds:
        for stage, config in configs.items():
            fold_dir = work_fold_dir(work, stage, fold)
            if _fold_done(fold_dir):
                emit(progress, "log", level="info", message=f"{stage} fold {fold}: already trained, reused")
                continue
            resume = (fold_dir / "checkpoint_latest.pt").is_file()
            emit(progress, "stage", stage="train",
                 message=f"{stage} fold {fold}: {config.epochs} epochs x {config.iterations_per_epoch} iterations"
                         + (f", at most {config.time_budget_minutes:.1f} min" if config.time_budget_minutes else ""))
            train_fold(work, stage, fold, config, progress=progress, resume=resume)
    epochs, iterations_per_epoch = configs[configuration].epochs, configs[configuration].iterations_per_epoch
    lap("train")
    # 6. find-best
    selection = find_best(work, [configuration], folds, progress=progress)
    lap("find_best")
    # 7. predict held-out cases
    model = load_model(work)
    pred_dir = output / "predictions"
    emit(progress, "stage", stage="predict", message=f"{len(held)} held-out case(s)")
    predict_files(model, test_images, pred_dir, tta=tta, device=device, progress=progress)
    lap("predict")
    # 8. evaluate
    evaluation = evaluate_folders(pred_dir, test_labels, ds.labels, output / "evaluation", progress=progress)
    lap("evaluate")
    # 9. figure of the first held-out case
    case = held[0]
    channels = sorted(test_images.glob(f"{case}_[0-9][0-9][0-9][0-9]{ending}"))
    image, geometry = read_case(channels)
    reference, _ = read_image(test_labels / f"{case}{ending}")
    prediction, _ = read_image(pred_dir / f"{case}{ending}")
    organ = ds.labels.foreground_names[0]
    dice_case = next(c for c in evaluation["cases"] if c["case"] == case)["metrics"][organ]["Dice"]
    png = save_case_figure(image, reference, prediction, output / "demo_case.png", geometry.spacing,
                           title=f"{case}: reference vs prediction ({organ} Dice {dice_case:.3f})")
    lap("figure")

    test_dice = {n: evaluation["mean"][n]["Dice"] for n in evaluation["labels"]}
    summary = {
        "dataset": str(raw), "synthetic": synthetic, "configuration": configuration, "folds": folds,
        "training_cases": n_train, "test_cases": held,
        "schedule": {"epochs": epochs, "iterations_per_epoch": iterations_per_epoch,
                     "time_budget_minutes_total": time_budget_minutes},
        "cv_foreground_dice": selection.dice_after, "postprocessing": list(selection.instructions.postprocessing),
        "test_dice": test_dice, "test_foreground_dice": evaluation["foreground_mean"]["Dice"],
        "test_hd95_mm": {n: evaluation["mean"][n]["HD95_mm"] for n in evaluation["labels"]},
        "timings_s": timings, "total_s": round(sum(timings.values()), 1),
        "paths": {"work": str(work), "predictions": str(pred_dir), "evaluation": str(output / "evaluation"),
                  "figure": str(png), "find_best_report": str(work / "find_best_report.md")},
        "notes": notes,
    }
    write_json(output / "demo_summary.json", _json_safe(summary))
    return summary


def _json_safe(x):
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _json_safe(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_json_safe(v) for v in x]
    return x


def run(args, progress) -> int:
    from AutoSegLib.progress import emit

    summary = run_demo(args.output, args.dataset, args.time_budget_minutes, args.epochs, args.iterations_per_epoch,
                       args.folds, args.configuration, args.cases, args.test_cases, shape=args.shape,
                       holdout=args.holdout, val_iterations=args.val_iterations,
                       device=args.device, tta=args.tta, num_workers=args.workers, seed=args.seed,
                       precision=args.precision, calibration_cache=args.calibration_cache,
                       budget_target_iterations=args.budget_iterations, coarse_to_fine=args.coarse_to_fine,
                       recalibrate=args.recalibrate, progress=progress)

    def f(v):
        return "n/a" if v is None or (isinstance(v, float) and math.isnan(v)) else f"{v:.3f}"

    lines = [f"held-out Dice ({len(summary['test_cases'])} cases): "
             + ", ".join(f"{n} {f(v)}" for n, v in summary["test_dice"].items())
             + f"; mean {f(summary['test_foreground_dice'])}",
             f"cross-validation Dice (folds {summary['folds']}): {f(summary['cv_foreground_dice'])}",
             f"figure: {summary['paths']['figure']}",
             f"everything: {Path(summary['paths']['work']).parent} (demo_summary.json); total "
             f"{summary['total_s'] / 60:.1f} min"]
    for n in summary["notes"]:
        emit(progress, "log", level="warning", message=n)
    for line in lines:
        emit(progress, "log", level="info", message=line)
    emit(progress, "result", **{k: summary[k] for k in ("test_dice", "test_foreground_dice", "cv_foreground_dice",
                                                        "paths", "total_s")})
    return 0
