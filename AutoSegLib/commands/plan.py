"""`autoseg plan DATASET --output DIR`: fingerprint (unless DIR has a current one) and plans into DIR."""
from __future__ import annotations


def add_arguments(parser) -> None:
    parser.add_argument("dataset", help="raw dataset folder (dataset.json, imagesTr/, labelsTr/)")
    parser.add_argument("--output", "-o", default=None,
                        help="work folder (default: ./autoseg_work/<dataset folder name>); never the dataset folder")
    parser.add_argument("--gpu-memory-gb", type=float, default=8.0,
                        help="memory budget per training process that sets patch and batch size (default 8)")
    parser.add_argument("--workers", type=int, default=None, help="worker processes (default: the machine's cores)")
    parser.add_argument("--force-fingerprint", action="store_true",
                        help="recompute the fingerprint even if DIR/fingerprint.json matches the dataset")
    add_budget_arguments(parser)


def add_budget_arguments(parser) -> None:
    """--time-budget-minutes / --device / --precision / --calibration-cache / --plans-from (plan,
    plan-and-preprocess)."""
    parser.add_argument("--plans-from", default=None, metavar="MODEL",
                        help="fine-tuning: adopt the plans of this model or work folder instead of planning (same "
                             "channels and labels required), then `autoseg train WORK CONF FOLD --init-from MODEL`")
    parser.add_argument("--time-budget-minutes", type=float, default=None, metavar="M",
                        help="also plan a configuration (3d_budget) that trains within M minutes, validation "
                             "included, on --device; `autoseg train WORK auto FOLD` then trains it")
    parser.add_argument("--device", default="auto", help="device the budget is planned for: auto (cuda, then mps, "
                        "then cpu), cpu, cuda, cuda:N, mps")
    add_precision_arguments(parser)


def add_precision_arguments(parser) -> None:
    """--precision / --calibration-cache / --budget-iterations / --no-coarse-to-fine: what a budget is planned
    for, and how (plan, plan-and-preprocess, demo)."""
    parser.add_argument("--precision", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="training precision the budget is planned for (auto: float16 on CUDA, bfloat16 on "
                             "CPUs with native support, else float32)")
    parser.add_argument("--calibration-cache", default=None, metavar="FILE",
                        help="where the device's measured speed is cached (default ~/.cache/autoseg/calibration.json)")
    parser.add_argument("--recalibrate", action="store_true",
                        help="measure the device again instead of using its cached speed (training drops the cached "
                             "speed by itself when its iterations ran 1.4x off their planned time)")
    parser.add_argument("--budget-iterations", type=int, default=None, metavar="N",
                        help="the time budget's plan is the finest resolution that buys N training iterations "
                             "(default 1000 for budgets up to 15 minutes, 2500 above); more iterations plan a coarser "
                             "resolution")
    parser.add_argument("--no-coarse-to-fine", dest="coarse_to_fine", action="store_false",
                        help="always one budget configuration, also where a coarse stage that finds the structure "
                             "and a fine one that refines it inside the box it found would pay")


def budget_options(args) -> dict:
    return {"time_budget_minutes": args.time_budget_minutes, "device": args.device, "precision": args.precision,
            "calibration_cache": args.calibration_cache, "recalibrate": args.recalibrate, "plans_from": args.plans_from,
            "budget_target_iterations": args.budget_iterations, "coarse_to_fine": args.coarse_to_fine}


def describe(plans, progress) -> None:
    """One log line per configuration, and what the budget configuration was planned for."""
    for name, c in plans.configurations.items():
        progress({"event": "log", "level": "info",
                  "message": f"{name}: spacing {_fmt(c.spacing)}, patch {c.patch_size}, batch {c.batch_size}, "
                             f"{c.network.n_stages} stages, features {c.network.features_per_stage[0]}.."
                             f"{c.network.features_per_stage[-1]}, normalisation {list(c.normalization)}"})
    records = [] if plans.budget is None else [plans.budget] + ([plans.budget.fine] if plans.budget.fine else [])
    for b in records:
        if b.located_by:
            rule = f"inside the box {b.located_by} finds, grown by {_fmt(b.roi_margin_mm)} mm"
        elif any(c[3] >= b.target_iterations for c in b.candidates):
            rule = f"the finest that buys {b.target_iterations} iterations"
        else:
            rule = f"the most iterations of any candidate (none buys {b.target_iterations})"
        progress({"event": "log", "level": "info", "message": (
            f"{b.configuration}: planned for {b.minutes:.3g} min on {b.device} ({b.precision}): {b.iterations} "
            f"iterations of {b.step_seconds:.2f} s ({b.epochs} epochs x {b.iterations_per_epoch}), "
            f"{b.reserve_seconds:.0f} s kept for validation (training goes on while time is left); spacing "
            f"x{b.spacing_factor:g}, {rule}; measured {b.gflops:.0f} GFLOP/s")})


def run(args, progress) -> int:
    from AutoSegLib.api import plan

    work, plans = plan(args.dataset, args.output, args.gpu_memory_gb, args.workers, args.force_fingerprint, progress,
                       **budget_options(args))
    describe(plans, progress)
    progress({"event": "result", "plans": str(work / "plans.json"), "fingerprint": str(work / "fingerprint.json"),
              "work_dir": str(work), "configurations": list(plans.configurations)})
    return 0


def _fmt(values) -> str:
    return "(" + ", ".join(f"{v:.4g}" for v in values) + ")"
