"""`autoseg import-model SOURCE... --models-dir DIR [--name NAME] [--overwrite]`.

Installs nnU-Net v2 results folders (``Dataset<ID>_<Name>/`` or ``<Trainer>__<Plans>__<configuration>/``),
AutoSeg model archives or folders as one AutoSeg model folder ``DIR/NAME`` (see
``AutoSegLib.models.install``). Several SOURCEs are combined (e.g. the 2d and 3d_fullres folders of one
dataset). Prints where the model went.
"""
from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("sources", nargs="+", metavar="SOURCE",
                        help="nnU-Net v2 results folder (Dataset<ID>_<Name>/ or <Trainer>__<Plans>__<configuration>/), "
                             "AutoSeg model folder or model archive; several are combined into one model")
    parser.add_argument("--models-dir", required=True, metavar="DIR",
                        help="folder holding installed models (created if missing); the model goes to DIR/NAME")
    parser.add_argument("--name", default=None,
                        help="name of the installed model folder (default: the dataset name, e.g. Dataset900_Synth)")
    parser.add_argument("--overwrite", action="store_true",
                        help="replace an installed model of the same name (after the new one is complete)")


def run(args, progress) -> int:
    from AutoSegLib import api
    from AutoSegLib.progress import emit

    dest = api.import_model(args.sources, args.models_dir, name=args.name, overwrite=args.overwrite, progress=progress)
    emit(progress, "log", level="info", message=f"model installed in {dest}")
    if not args.progress_json:
        print(dest)
    return 0
