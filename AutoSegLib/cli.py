"""The `autoseg` command: a thin layer over AutoSegLib's stage functions.

Each subcommand lives in ``AutoSegLib/commands/<name>.py`` and defines ``add_arguments(parser)`` and
``run(args, progress) -> int``. Only the chosen subcommand's module is imported, and those modules import
torch/SimpleITK inside ``run``, so ``autoseg --help`` answers at once.
"""
from __future__ import annotations

import argparse
import importlib
import signal
import sys
import traceback

from AutoSegLib import __version__

# name -> (module, one-line help). The registry is explicit: no scanning of folders.
COMMANDS = {
    "verify": ("AutoSegLib.commands.verify", "check a raw dataset folder and report every problem found"),
    "fingerprint": ("AutoSegLib.commands.fingerprint", "extract the dataset fingerprint (spacings, shapes, intensities)"),
    "plan": ("AutoSegLib.commands.plan", "derive the plans (spacing, patch, network, batch) from the fingerprint"),
    "preprocess": ("AutoSegLib.commands.preprocess", "crop, resample and normalise the training cases per configuration"),
    "plan-and-preprocess": ("AutoSegLib.commands.plan_and_preprocess", "verify + fingerprint + plan + preprocess in one go"),
    "train": ("AutoSegLib.commands.train", "train one configuration on one fold (0-4) or on all cases"),
    "find-best": ("AutoSegLib.commands.find_best", "choose the best configuration/ensemble and post-processing from cross-validation"),
    "predict": ("AutoSegLib.commands.predict", "segment images with a trained model"),
    "evaluate": ("AutoSegLib.commands.evaluate", "compare predicted label maps with reference label maps"),
    "export-model": ("AutoSegLib.commands.export_model", "write a trained model as one archive file"),
    "import-model": ("AutoSegLib.commands.import_model", "install a model archive or an nnU-Net v2 results folder as an AutoSeg model"),
    "demo": ("AutoSegLib.commands.demo", "end-to-end demo: generate data, plan, train, predict, evaluate"),
}


def _add_common(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--debug", action="store_true", help="show full tracebacks on errors")
    parser.add_argument("--progress-json", action="store_true",
                        help="emit progress as one JSON object per line on stdout (for the Slicer module)")


def build_parser(command: "str | None" = None) -> argparse.ArgumentParser:
    """Build the parser; only ``command``'s own arguments are added (its module is imported)."""
    parser = argparse.ArgumentParser(
        prog="autoseg",
        description="AutoSeg: self-configuring segmentation (the nnU-Net recipe) from the command line.")
    parser.add_argument("--version", action="version", version=f"autoseg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module, help_text) in COMMANDS.items():
        p = sub.add_parser(name, help=help_text, description=help_text)
        if name == command:
            importlib.import_module(module).add_arguments(p)
            _add_common(p)
    return parser


def _chosen_command(argv: "list[str]") -> "str | None":
    for arg in argv:
        if not arg.startswith("-"):
            return arg if arg in COMMANDS else None
    return None


def main(argv: "list[str] | None" = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    command = _chosen_command(argv)
    parser = build_parser(command)
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 0

    from AutoSegLib.processes import Terminated, terminate_as_interrupt
    from AutoSegLib.progress import console_renderer, json_lines_renderer

    progress = json_lines_renderer() if args.progress_json else console_renderer()
    module = importlib.import_module(COMMANDS[args.command][0])
    previous = terminate_as_interrupt()  # SIGTERM cleans up like Ctrl-C (temporaries, worker processes)
    try:
        return _run(module, args, progress)
    except Terminated:  # arrived after the command ended
        return 143
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)


def _run(module, args, progress) -> int:
    from AutoSegLib.errors import AutoSegError
    from AutoSegLib.processes import Terminated

    try:
        return int(module.run(args, progress) or 0)
    except AutoSegError as exc:
        if args.debug:
            raise
        progress({"event": "error", "message": str(exc)})
        if args.progress_json:  # the console renderer already printed it
            print(f"ERROR: {exc}", file=sys.stderr)
        return 2
    except OSError as exc:
        # the operating system refused (disk full, read-only, a file where a folder is expected, ...): the
        # user's to fix, so a message naming the path and the cause, not a traceback
        if args.debug:
            raise
        from AutoSegLib.errors import os_error_message
        message = os_error_message(exc)
        progress({"event": "error", "message": message})
        if args.progress_json:
            print(f"ERROR: {message}", file=sys.stderr)
        return 2
    except KeyboardInterrupt as exc:
        terminated = isinstance(exc, Terminated)
        progress({"event": "error", "message": "terminated (SIGTERM)" if terminated else "interrupted"})
        return 143 if terminated else 130
    except Exception as exc:  # a bug, not bad input: keep the traceback
        tb = traceback.format_exc()
        progress({"event": "error", "message": f"internal error: {exc!r}", "traceback": tb})
        print(tb, file=sys.stderr)
        return 1


if __name__ == "__main__":
    raise SystemExit(main())
