"""`autoseg predict -m MODEL -i INPUT... -o OUTPUT`: segment images with a trained model."""
from __future__ import annotations

from AutoSegLib.inference.runtimes import RUNTIMES

DEVICES = ("auto", "cpu", "cuda", "mps")
PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def add_arguments(parser) -> None:
    parser.add_argument("-m", "--model", required=True,
                        help="model folder, training work folder, model archive or nnU-Net v2 results folder")
    parser.add_argument("-i", "--input", required=True, nargs="+",
                        help="folder of cases (<case>_0000.nii.gz, ...) or the channel files of one case")
    parser.add_argument("-o", "--output", required=True,
                        help="output folder (or, for one case, an output file name such as seg.nii.gz)")
    parser.add_argument("-c", "--configuration", nargs="+", default=None,
                        help="configuration(s) to use; several are ensembled (default: the model's choice "
                             "from find-best, else 3d_fullres or 2d)")
    parser.add_argument("-f", "--folds", nargs="+", default=None,
                        help="folds to average, e.g. 0 1 2 (default: every fold present)")
    parser.add_argument("--step-size", type=float, default=0.5,
                        help="sliding-window step as a fraction of the patch (default 0.5; larger is faster)")
    parser.add_argument("--no-tta", action="store_true",
                        help="disable test-time mirroring (about 8x faster in 3D, slightly less accurate)")
    parser.add_argument("--device", choices=DEVICES, default="auto", help="compute device (default: best available)")
    parser.add_argument("--runtime", choices=RUNTIMES, default="auto",
                        help="what runs the networks: auto (default): OpenVINO or ONNX Runtime on the CPU when "
                             "installed (float32, faster, no PyTorch needed), torch on CUDA/MPS; torch; openvino; "
                             "onnxruntime. A compiled runtime uses each fold's exported network.onnx (exported on "
                             "first use when missing)")
    parser.add_argument("--precision", choices=PRECISIONS, default="auto",
                        help="auto: float16 autocast on CUDA; on CPU bfloat16 for AutoSeg models trained in "
                             "bfloat16 (on CPUs that compute it natively), float32 otherwise (nnU-Net models: the "
                             "same numbers as nnU-Net). bfloat16 is about 2x faster on recent CPUs")
    parser.add_argument("--channels-last", action="store_true", default=None,
                        help="channels-last convolutions in float32 on CPU: faster, probabilities within ~1e-3 of "
                             "nnU-Net's instead of identical (always on with bfloat16/float16 and on CUDA)")
    parser.add_argument("--batch-size", type=int, default=1, help="sliding windows per network call (default 1)")
    parser.add_argument("--save-probabilities", action="store_true",
                        help="also write <case>.npz with the class probabilities (key 'probabilities')")
    parser.add_argument("--no-postprocessing", action="store_true",
                        help="skip the model's post-processing steps")
    parser.add_argument("--output-ending", default=None,
                        help="file format of the label maps, e.g. .nii.gz or .nrrd (default: the input's own)")
    parser.add_argument("--allow-unfinished", action="store_true",
                        help="for a training work folder: use checkpoint_best/latest of folds without a final checkpoint")
    parser.add_argument("--fast", action="store_true",
                        help="fast mode (less accurate): one fold, no mirroring, sliding-window step 0.7 "
                             "(see the README's table for its speed and Dice cost)")
    parser.add_argument("--roi", type=float, nargs=6, metavar=("X0", "Y0", "Z0", "X1", "Y1", "Z1"), default=None,
                        help="predict only inside this box: two opposite corners in mm, in the image file's "
                             "physical LPS coordinates (what ITK/SimpleITK report; Slicer's RAS (R, A, S) is LPS "
                             "(-R, -A, S)); the label map covers the whole image, zero outside the box")
    parser.add_argument("--force", action="store_true",
                        help="predict even when the pre-flight estimate says the memory will not fit")
    parser.add_argument("--estimate-only", action="store_true",
                        help="print the pre-flight estimate (time, peak memory) and exit without predicting")
    parser.add_argument("--skip-existing", action="store_true", help="skip cases whose output already exists")
    parser.add_argument("--save-uncertainty", action="store_true",
                        help="also write <case>_uncertainty.<ext>: per voxel how unsure the ensemble (folds x "
                             "mirrorings) is, float32 in [0, 1] (no extra network passes; see README)")
    parser.add_argument("--continue-on-error", action="store_true",
                        help="a case that fails is reported in predict_summary.json and the others go on; "
                             "exit status 2 when any failed")
    parser.add_argument("--threads", type=int, default=None,
                        help="CPU threads for the runtime (default: the runtime's own choice)")


def run(args, progress) -> int:
    import os

    from AutoSegLib import api
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.inference.runtimes import resolve_runtime

    if not 0 < args.step_size <= 1:
        raise AutoSegError(f"--step-size must be in (0, 1], got {args.step_size}.")
    if args.batch_size < 1:
        raise AutoSegError(f"--batch-size must be at least 1, got {args.batch_size}.")
    runtime = resolve_runtime(args.runtime, args.device)
    if args.threads and args.threads < 1:
        raise AutoSegError(f"--threads must be at least 1, got {args.threads}.")
    if args.threads:
        os.environ["AUTOSEG_THREADS"] = str(args.threads)  # read by the compiled runtimes
        if runtime == "torch":
            import torch
            torch.set_num_threads(args.threads)
    model = api.load_model(args.model, allow_non_final=args.allow_unfinished)
    model.cache_weights = True  # several cases in a row: read each fold's weights once
    progress({"event": "stage", "stage": "predict",
              "message": f"model {model.path} ({model.source}); configurations {sorted(model.configurations)}; "
                         f"runtime {runtime}"})
    inputs = args.input[0] if len(args.input) == 1 else args.input
    roi = None if args.roi is None else (tuple(args.roi[:3]), tuple(args.roi[3:]))
    if not getattr(args, "progress_json", False):
        progress = _printing_estimates(progress)
    configuration = None
    if args.configuration:
        configuration = args.configuration[0] if len(args.configuration) == 1 else args.configuration
    failures, total = [0], [0]

    def report(event: dict) -> None:  # the library's per-case row, printed short on the console
        progress(event)
        if event.get("event") == "case":
            total[0] += 1
            failures[0] += event.get("status") == "failed"
            if not getattr(args, "progress_json", False):
                from AutoSegLib.inference.summary import short_line
                progress({"event": "log", "level": "info", "message": short_line(event)})

    written = api.predict(model, inputs, args.output, configuration=configuration, folds=args.folds,
                          tta=not args.no_tta, step_size=args.step_size, device=args.device,
                          precision=args.precision, save_probabilities=args.save_probabilities,
                          postprocess=not args.no_postprocessing, batch_size=args.batch_size,
                          output_ending=args.output_ending, overwrite=not args.skip_existing, progress=report,
                          channels_last=args.channels_last, runtime=runtime,
                          save_uncertainty=args.save_uncertainty, continue_on_error=args.continue_on_error,
                          fast=args.fast, roi=roi, force=args.force or args.estimate_only,
                          estimate_only=args.estimate_only)
    if args.estimate_only:
        return 0
    progress({"event": "log", "level": "info", "message": f"wrote {len(written)} label map(s) to {args.output}"})
    if failures[0]:
        from pathlib import Path

        from AutoSegLib.inference.summary import SUMMARY_NAME
        where = SUMMARY_NAME if Path(args.output).is_dir() else "the messages above"
        progress({"event": "error", "message": f"{failures[0]} of {total[0]} cases failed (see {where})"})
        return 2
    return 0


def _printing_estimates(progress):
    """The console renderer does not draw estimate events: print their message (a warning when it does not fit)."""
    def render(event: dict) -> None:
        progress(event)
        if event.get("event") == "estimate":
            progress({"event": "log", "level": "info" if event.get("fits") else "warning",
                      "message": event.get("message")})
    return render
