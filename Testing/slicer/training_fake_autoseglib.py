"""A scripted stand-in for ``python -m AutoSegLib <command>`` in the training tests (not a test file).

``verify`` is the real command (AutoSegLib.cli). ``fingerprint``, ``plan``, ``preprocess``, ``train`` and
``find-best`` write the files the real ones write (plans.json, training_log.jsonl, checkpoints, validation
summary, inference.json) with known numbers and emit the same progress events, in seconds. Every call's
argv is appended to ``WORK/fake_calls.jsonl``.

Behaviour is set by the environment variable ``AUTOSEG_FAKE_TRAIN`` (comma-separated):
``epochs=N`` (default 4, overridden by --epochs), ``sleep=S`` seconds per epoch, ``diskfull=E`` (epoch E
fails with ENOSPC before its checkpoint is written; exit 1).
Fake epoch numbers: train_loss = 1 / (epoch + 1), val_loss = train_loss + 0.1, pseudo_dice[k] =
(epoch + 1) / (epochs + k + 1), ema = mean of pseudo_dice; validation Dice of label value v = 0.5 + v / 10.
"""
import json
import os
import sys
import time
from pathlib import Path


def ev(**k):
    print(json.dumps(k), flush=True)


def settings():
    import os

    out = {"epochs": 4, "sleep": 0.0, "diskfull": None}
    for item in filter(None, os.environ.get("AUTOSEG_FAKE_TRAIN", "").split(",")):
        k, v = item.split("=")
        out[k] = float(v) if k == "sleep" else int(v)
    return out


def record(work, argv):
    Path(work).mkdir(parents=True, exist_ok=True)
    with open(Path(work) / "fake_calls.jsonl", "a") as f:
        f.write(json.dumps(argv) + "\n")


def opts(args):
    return {args[i]: args[i + 1] for i in range(len(args) - 1) if args[i].startswith("--")}


def fingerprint(args):
    dataset, work = Path(args[0]), Path(opts(args)["--output"])
    record(work, ["fingerprint", *args])
    ev(event="stage", stage="fingerprint", message="fake fingerprint")
    raw = json.loads((dataset / "dataset.json").read_text())
    (work / "dataset.json").write_text(json.dumps({**raw, "dataset_path": str(dataset)}))
    (work / "fingerprint.json").write_text("{}")
    return 0


def plan(args):
    work = Path(opts(args)["--output"])
    record(work, ["plan", *args])
    if not (work / "fingerprint.json").is_file():
        ev(event="error", message=f"{work / 'fingerprint.json'}: missing")
        return 2
    ev(event="stage", stage="plan", message="fake plan")
    plans = {"configurations": {
        "2d": {"patch_size": [32, 32]}, "3d_fullres": {"patch_size": [16, 32, 32]},
        "3d_cascade_fullres": {"patch_size": [16, 32, 32], "previous_stage": "3d_lowres"}}}
    minutes = opts(args).get("--time-budget-minutes")
    if minutes is not None:  # the budget configuration, as `autoseg plan --time-budget-minutes` adds it
        plans["configurations"]["3d_budget"] = {"patch_size": [16, 16, 16], "spacing": [2.0, 2.0, 2.0]}
        plans["budget"] = {"configuration": "3d_budget", "minutes": float(minutes), "device": "cpu",
                           "precision": "float32", "iterations": 1200, "step_seconds": 1.25, "spacing_factor": 2.0}
        if os.environ.get("AUTOSEG_FAKE_COARSE_TO_FINE"):  # planned as a pair: a third, then two thirds
            plans["budget"]["minutes"] = float(minutes) / 3
            plans["configurations"]["3d_budget_fine"] = {"patch_size": [32, 32, 32], "spacing": [1.0, 1.0, 1.0]}
            plans["budget"]["fine"] = {"configuration": "3d_budget_fine", "minutes": 2 * float(minutes) / 3,
                                       "device": "cpu", "precision": "float32", "iterations": 1500,
                                       "step_seconds": 0.8, "spacing_factor": 1.0, "located_by": "3d_budget"}
    (work / "plans.json").write_text(json.dumps(plans))
    ev(event="result", work=str(work))
    return 0


def preprocess(args):
    work = Path(args[0])
    record(work, ["preprocess", *args])
    if not (work / "plans.json").is_file():
        ev(event="error", message=f"{work / 'plans.json'}: missing")
        return 2
    ev(event="stage", stage="preprocess", message="fake preprocess")
    return 0


def train(args):
    work, conf, fold = Path(args[0]), args[1], args[2]
    record(work, ["train", *args])
    s = settings()
    o = opts(args)
    epochs = int(o.get("--epochs", s["epochs"]))
    labels = {k: v for k, v in json.loads((work / "dataset.json").read_text())["labels"].items()
              if k != "ignore" and v != 0}
    out = work / "trained" / conf / f"fold_{fold}"
    out.mkdir(parents=True, exist_ok=True)
    log_path = out / "training_log.jsonl"
    start = 0
    if "--resume" in args:
        start = len(log_path.read_text().splitlines()) if log_path.is_file() else 0
        ev(event="log", level="info", message=f"resuming from epoch {start}")
    elif log_path.exists():
        log_path.unlink()
    for epoch in range(start, epochs):
        time.sleep(s["sleep"])
        if s["diskfull"] is not None and epoch == s["diskfull"]:
            ev(event="error", message=f"[Errno 28] No space left on device: '{out / 'checkpoint_latest.pt'}'")
            return 1
        dice = [(epoch + 1) / (epochs + k + 1) for k in range(len(labels))]
        e = {"configuration": conf, "fold": fold, "epoch": epoch, "epochs": epochs, "train_loss": 1 / (epoch + 1),
             "val_loss": 1 / (epoch + 1) + 0.1, "pseudo_dice": dice, "ema_pseudo_dice": sum(dice) / len(dice),
             "lr": 0.01, "epoch_time_s": s["sleep"], "eta_s": s["sleep"] * (epochs - epoch - 1)}
        with open(log_path, "a") as f:
            f.write(json.dumps(e) + "\n")
        (out / "checkpoint_latest.pt").write_text(f"epoch {epoch}")
        ev(event="epoch", **e)
    (out / "checkpoint_final.pt").write_text(f"final {epochs}")
    (out / "validation").mkdir(exist_ok=True)
    (out / "validation" / "summary.json").write_text(json.dumps(
        {"mean_dice": {k: 0.5 + v / 10 for k, v in labels.items()}}))
    ev(event="result", fold_dir=str(out))
    return 0


def find_best(args):
    work = Path(args[0])
    record(work, ["find-best", *args])
    (work / "inference.json").write_text(json.dumps({"configurations": ["3d_fullres"], "postprocessing": []}))
    ev(event="result", inference=str(work / "inference.json"))
    return 0


def main(argv):
    command, args = argv[0], [a for a in argv[1:] if a != "--progress-json"]
    if command == "verify":
        from AutoSegLib.cli import main as cli_main
        return cli_main(argv)
    return {"fingerprint": fingerprint, "plan": plan, "preprocess": preprocess, "train": train,
            "find-best": find_best}[command](args)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
