"""train_fold on a tiny synthetic work folder: learning, outputs, checkpoints, resume, bad input."""
import json
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch

from AutoSegLib.errors import AutoSegError
from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training.trainer import train_fold

HERE = Path(__file__).parent
REPO = HERE.parents[2]
FAST = TrainingConfig(epochs=2, iterations_per_epoch=10, val_iterations=3, num_workers=0, torch_threads=1,
                      mirror_at_validation=False, seed=1)


@pytest.fixture(scope="module")
def base_work(tmp_path_factory, make_work):
    return make_work(tmp_path_factory.mktemp("tiny3d"))


@pytest.fixture
def work(base_work, tmp_path):
    """A private copy of the tiny work folder (raw data shared)."""
    dst = tmp_path / "work"
    shutil.copytree(base_work, dst)
    return dst


def test_progress_png_is_drawn_when_time_has_passed_and_at_the_end(work, monkeypatch):
    from AutoSegLib.training import epochs as epochs_mod
    drawn = []
    monkeypatch.setattr(epochs_mod, "plot_progress", lambda path, entries, title="": drawn.append(len(entries)))
    three = FAST.replace(epochs=3, iterations_per_epoch=2, validate_at_end=False)
    train_fold(work, "3d_fullres", 0, three)
    assert drawn == [3]  # short epochs: once, with every epoch, when training is over
    drawn.clear()
    monkeypatch.setattr(epochs_mod, "PLOT_EVERY_S", 0.0)  # long epochs: after each one (the last not twice)
    train_fold(work, "3d_fullres", 1, three)
    assert drawn == [1, 2, 3]


def test_two_epochs_lower_the_loss_and_beat_chance(work):
    events = []
    out = train_fold(work, "3d_fullres", 0, FAST, progress=events.append)
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == [0, 1]
    assert log[1]["train_loss"] < log[0]["train_loss"]
    # the rate anneals every iteration; the log keeps each epoch's last one (iteration 10 of 20: lr(9/20))
    assert log[1]["lr"] < log[0]["lr"] == pytest.approx(0.01 * (1 - 9 / 20) ** 0.9)
    assert (out / "progress.png").stat().st_size > 1000
    epochs = [e for e in events if e["event"] == "epoch"]
    assert len(epochs) == 2 and {"train_loss", "val_loss", "pseudo_dice", "ema_pseudo_dice", "lr", "eta_s"} <= set(epochs[0])
    # full validation of the fold's cases, in the raw grid; chance Dice for a class = its voxel fraction
    summary = json.loads((out / "validation" / "summary.json").read_text())
    splits = json.loads((work / "splits_final.json").read_text())
    assert sorted(summary["cases"]) == sorted(splits[0]["val"])
    raw = Path(json.loads((work / "dataset.json").read_text())["dataset_path"])
    from AutoSegLib.io.images import read_image
    for case, entry in summary["cases"].items():
        ref, _ = read_image(raw / "labelsTr" / f"{case}.nii.gz")
        probs = np.load(out / "validation" / f"{case}.npz")["probabilities"]
        assert probs.shape == (3, *ref.shape) and probs.dtype == np.float32
        np.testing.assert_allclose(probs.sum(0), 1, atol=1e-3)
        organ_fraction = float(np.isin(ref, (1, 2)).mean())
        assert entry["dice"]["organ"] > max(0.5, 2 * organ_fraction)
    # checkpoints: tensors and plain values only
    for name in ("checkpoint_latest.pt", "checkpoint_best.pt", "checkpoint_final.pt"):
        ck = torch.load(out / name, weights_only=True)
        assert ck["configuration"] == "3d_fullres" and ck["epoch"] == 2 and ck["num_outputs"] == 3
        assert "network_weights" in ck and ck["plans_identifier"]
    latest = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    assert {"optimizer_state", "grad_scaler_state", "loop_state"} <= set(latest)
    assert len(latest["loop_state"]["log"]) == 2


def test_2d_configuration_trains(tmp_path, make_work, check_validation_dice):
    work = make_work(tmp_path, ndim=2, n_cases=4)
    cfg = FAST.replace(epochs=1, iterations_per_epoch=4, val_iterations=1)
    out = train_fold(work, "2d", 1, cfg)
    check_validation_dice(out, {"organ": (1,), "lesion": (2,)})


_KILL_SCRIPT = """
from AutoSegLib.training.config import TrainingConfig
from AutoSegLib.training.trainer import train_fold
train_fold({work!r}, "3d_fullres", 0, TrainingConfig(epochs=200, iterations_per_epoch=3, val_iterations=1,
           num_workers=0, torch_threads=1, seed=1))
"""


def test_resume_after_kill_restores_the_state(work):
    out = work / "trained" / "3d_fullres" / "fold_0"
    proc = subprocess.Popen([sys.executable, "-c", _KILL_SCRIPT.format(work=str(work))],
                            env={**os.environ, "PYTHONPATH": str(REPO)})
    try:
        deadline = time.time() + 120
        while time.time() < deadline:
            log = out / "training_log.jsonl"
            if log.is_file() and len(log.read_text().splitlines()) >= 3:
                break
            time.sleep(0.2)
        else:
            pytest.fail("training did not write 3 epochs in time")
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    saved = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    done = saved["epoch"]
    assert done >= 3
    # resume with a shorter total: the loop continues at the saved epoch with the saved weights/optimizer/log
    from AutoSegLib.training import trainer as trainer_mod
    seen = {}
    real = trainer_mod.ckpt_mod.set_rng_state

    def spy(state):
        seen["rng"] = state
        real(state)

    trainer_mod.ckpt_mod.set_rng_state = spy
    try:
        train_fold(work, "3d_fullres", 0, FAST.replace(epochs=done + 1, validate_at_end=False), resume=True)
    finally:
        trainer_mod.ckpt_mod.set_rng_state = real
    assert torch.equal(seen["rng"]["torch"], saved["loop_state"]["rng"]["torch"])
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert [e["epoch"] for e in log] == list(range(done + 1))
    old = saved["loop_state"]["log"]
    assert [e["train_loss"] for e in log[:done]] == pytest.approx([e["train_loss"] for e in old])
    final = torch.load(out / "checkpoint_latest.pt", weights_only=True)
    assert final["epoch"] == done + 1
    # the optimizer continued from the saved momentum (state for every parameter)
    assert len(final["optimizer_state"]["state"]) == len(saved["optimizer_state"]["state"])


def test_kill_mid_save_leaves_the_previous_checkpoint(tmp_path, monkeypatch):
    from AutoSegLib.training import checkpoint as ck
    path = tmp_path / "checkpoint_latest.pt"
    ck.save_checkpoint(path, {"network_weights": {"w": torch.ones(3)}, "configuration": "x", "epoch": 1})
    before = path.read_bytes()
    real_save = torch.save

    def dying_save(obj, f, *a, **k):
        f.write(b"PK\x03\x04 partial")
        raise KeyboardInterrupt("killed mid-save")

    monkeypatch.setattr(torch, "save", dying_save)
    with pytest.raises(KeyboardInterrupt):
        ck.save_checkpoint(path, {"network_weights": {"w": torch.zeros(3)}, "configuration": "x", "epoch": 2})
    monkeypatch.setattr(torch, "save", real_save)
    assert path.read_bytes() == before
    assert ck.load_training_checkpoint(path)["epoch"] == 1
    assert not list(tmp_path.glob(".checkpoint_latest.tmp-*"))


# ---- bad input ------------------------------------------------------------------------------------------
def test_unknown_configuration_and_fold(work):
    with pytest.raises(AutoSegError, match="unknown configuration '3d_fulres'.*Did you mean '3d_fullres'"):
        train_fold(work, "3d_fulres", 0, FAST)
    with pytest.raises(AutoSegError, match="unknown fold 7: expected 0..4 or 'all'"):
        train_fold(work, "3d_fullres", 7, FAST)


def test_missing_and_stale_preprocessed_data(work):
    folder = work / "preprocessed" / "tiny_3d_fullres"
    props = json.loads((folder / "case_000.json").read_text())
    props["preprocessing_signature"] = "made-with-other-plans"
    (folder / "case_000.json").write_text(json.dumps(props))
    with pytest.raises(AutoSegError, match="made with other plans"):
        train_fold(work, "3d_fullres", 0, FAST)
    assert not (work / "trained").exists()
    shutil.rmtree(folder)
    with pytest.raises(AutoSegError, match="no preprocessed data"):
        train_fold(work, "3d_fullres", 0, FAST)


def test_existing_run_corrupt_checkpoint_and_init_from(work, tmp_path):
    cfg = FAST.replace(epochs=1, iterations_per_epoch=2, val_iterations=1, validate_at_end=False)
    out = train_fold(work, "3d_fullres", "all", cfg)
    with pytest.raises(AutoSegError, match="holds a training already.*--resume"):
        train_fold(work, "3d_fullres", "all", cfg)
    # checkpoints made with other plans: clear error, nothing overwritten
    latest = out / "checkpoint_latest.pt"
    ck = torch.load(latest, weights_only=True)
    torch.save({**ck, "plans_identifier": "other"}, latest)
    before = latest.read_bytes()
    with pytest.raises(AutoSegError, match="checkpoint_latest.pt: made with other plans"):
        train_fold(work, "3d_fullres", "all", cfg, resume=True)
    assert latest.read_bytes() == before
    torch.save(ck, latest)
    # fine-tuning from the final checkpoint works (same labels and architecture)
    ft = train_fold(work, "3d_fullres", 0, cfg.replace(init_from=str(work)), output_dir=tmp_path / "ft")
    assert json.loads((ft / "training_config.json").read_text())["resolved"]["init_from"].endswith("checkpoint_final.pt")
    # other labels
    other = tmp_path / "other_labels.pt"
    ck = torch.load(out / "checkpoint_final.pt", weights_only=True)
    torch.save({**ck, "labels": {"background": 0, "liver": 1, "tumour": 2}}, other)
    with pytest.raises(AutoSegError, match="labels"):
        train_fold(work, "3d_fullres", 0, cfg.replace(init_from=str(other)), output_dir=tmp_path / "x")
    # another architecture (a different first-stage width)
    w = dict(ck["network_weights"])
    w["encoder.stages.0.0.convs.0.conv.weight"] = torch.zeros(8, 1, 3, 3, 3)
    arch = tmp_path / "other_arch.pt"
    torch.save({**ck, "network_weights": w}, arch)
    with pytest.raises(AutoSegError, match="another architecture.*encoder.stages.0.0.convs.0.conv.weight"):
        train_fold(work, "3d_fullres", 0, cfg.replace(init_from=str(arch)), output_dir=tmp_path / "y")
    assert not (tmp_path / "x").exists() and not (tmp_path / "y" / "trained" / "3d_fullres" / "fold_0" / "checkpoint_latest.pt").exists()


def test_time_budget_stops_cleanly_and_still_validates(work):
    cfg = FAST.replace(epochs=100, iterations_per_epoch=50, time_budget_minutes=1e-4)
    out = train_fold(work, "3d_fullres", 0, cfg)
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 1 and log[0]["iterations"] == 1          # stopped after the first iteration
    assert torch.load(out / "checkpoint_final.pt", weights_only=True)["epoch"] == 1
    assert (out / "validation" / "summary.json").is_file()


def test_cuda_out_of_memory_names_the_fix():
    from AutoSegLib.io.labels import LabelLayout
    from AutoSegLib.device import Execution
    from AutoSegLib.training.loop import train_step
    from AutoSegLib.training.loss import SegmentationLoss

    class Oom(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.w = torch.nn.Parameter(torch.zeros(1))

        def forward(self, x):
            raise torch.cuda.OutOfMemoryError("CUDA out of memory. Tried to allocate 2.00 GiB")

    net = Oom()
    ex = Execution(torch.device("cpu"), None, False, torch.contiguous_format)
    loss = SegmentationLoss(LabelLayout.from_dataset_labels({"background": 0, "fg": 1}))
    with pytest.raises(AutoSegError, match="--gpu-memory-gb"):
        train_step(net, torch.optim.SGD(net.parameters(), lr=0.1), None, loss, np.zeros((1, 1, 4, 4), np.float32),
                   np.zeros((1, 1, 4, 4), np.int16), ex, [(4, 4)], 12.0)


def test_resume_falls_back_to_the_newest_loadable_checkpoint(work):
    """A kill during the first checkpoint write leaves checkpoint_best.pt without a (complete)
    checkpoint_latest.pt: --resume continues from best; with nothing loadable it starts anew, warning."""
    cfg = FAST.replace(epochs=1, iterations_per_epoch=2, val_iterations=1, validate_at_end=False)
    out = train_fold(work, "3d_fullres", 0, cfg)
    latest, best_path = out / "checkpoint_latest.pt", out / "checkpoint_best.pt"
    for damage in ("missing", "truncated"):
        (out / "checkpoint_final.pt").unlink()
        if damage == "missing":
            latest.unlink()
        else:
            latest.write_bytes(latest.read_bytes()[:300])
        best = torch.load(best_path, weights_only=True)["epoch"]
        events = []
        train_fold(work, "3d_fullres", 0, cfg.replace(epochs=best + 1), progress=events.append, resume=True)
        warnings = [e["message"] for e in events if e.get("level") == "warning"]
        assert any("resuming from" in m and "checkpoint_best.pt" in m for m in warnings), warnings
        log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
        # best's epochs were kept and one more trained on top
        assert [e["epoch"] for e in log] == list(range(best + 1)), damage
        assert torch.load(latest, weights_only=True)["epoch"] == best + 1
    # nothing loadable at all: a new training, with a warning (not "nothing to resume")
    (out / "checkpoint_final.pt").unlink()
    for p in (latest, best_path):
        p.write_bytes(b"garbage")
    events = []
    train_fold(work, "3d_fullres", 0, cfg, progress=events.append, resume=True)
    assert any("no loadable checkpoint to resume from; starting a new training" in e.get("message", "")
               for e in events)
    assert torch.load(latest, weights_only=True)["epoch"] == 1


def test_full_disk_during_training_says_so_and_how_to_go_on(work, monkeypatch):
    """A checkpoint write on a full disk stops training with "the disk is full" (not torch's
    inline_container text), names the checkpoint, and says how to go on: --resume from the intact previous
    checkpoint, or (nothing saved yet, the first epoch) run again. Resuming then finishes the training."""
    import errno

    from AutoSegLib.errors import WriteError
    from AutoSegLib.io.atomic import atomic_path
    from AutoSegLib.training import checkpoint as ckpt_mod

    real = ckpt_mod.save_checkpoint
    cfg = FAST.replace(epochs=2, iterations_per_epoch=2, val_iterations=1, validate_at_end=False)

    def full_disk_after(n_ok):
        calls = []

        def save(path, payload):
            calls.append(path)
            if len(calls) <= n_ok:
                return real(path, payload)
            with atomic_path(path) as tmp:  # the writer fails as on a full disk
                tmp.write_bytes(b"x")
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(tmp))
        return save

    monkeypatch.setattr(ckpt_mod, "save_checkpoint", full_disk_after(0))
    with pytest.raises(WriteError) as err:
        train_fold(work, "3d_fullres", 0, cfg)
    fold = work / "trained" / "3d_fullres" / "fold_0"
    text = str(err.value)
    assert f"{fold / 'checkpoint_best.pt'}: could not be written: the disk is full" in text
    assert "after 1 completed epoch(s), before any checkpoint was saved" in text and "inline_container" not in text
    assert not list(fold.glob("*.pt")) and not list(fold.glob(".*tmp*"))

    shutil.rmtree(fold)
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", full_disk_after(2))  # epoch 1's best + latest fit
    with pytest.raises(WriteError) as err:
        train_fold(work, "3d_fullres", 0, cfg)
    assert "the disk is full" in str(err.value) and "after 2 completed epoch(s); checkpoint_latest.pt from before is intact" in \
        str(err.value) and "--resume" in str(err.value)
    assert torch.load(fold / "checkpoint_latest.pt", weights_only=True)["epoch"] == 1
    monkeypatch.setattr(ckpt_mod, "save_checkpoint", real)  # room again
    train_fold(work, "3d_fullres", 0, cfg, resume=True)
    assert torch.load(fold / "checkpoint_final.pt", weights_only=True)["epoch"] == 2
