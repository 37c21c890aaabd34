"""Data-parallel training: two gloo processes under torchrun train one tiny epoch together."""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from AutoSegLib.training import distributed as dist_mod

REPO = Path(__file__).resolve().parents[3]


def test_batch_split_keeps_global_forced_positions():
    info0, info1 = dist_mod.DistInfo(True, 0, 2), dist_mod.DistInfo(True, 1, 2)
    forced = [False, False, True]
    assert dist_mod.split_batch(3, forced, info0) == (2, [False, False])
    assert dist_mod.split_batch(3, forced, info1) == (1, [True])
    with pytest.raises(ValueError):
        dist_mod.split_batch(1, [True], info1)


def test_two_gloo_processes_train(tmp_path, make_work):
    work = make_work(tmp_path, n_cases=4)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2",
           "-m", "AutoSegLib", "train", str(work), "3d_fullres", "0", "--epochs", "2", "--iterations-per-epoch", "2",
           "--val-iterations", "1", "--workers", "0", "--threads", "1", "--no-mirroring", "--progress-json"]
    env = {**os.environ, "PYTHONPATH": str(REPO), "OMP_NUM_THREADS": "1"}
    res = subprocess.run(cmd, cwd=tmp_path, env=env, capture_output=True, text=True, timeout=300)
    assert res.returncode == 0, res.stderr[-3000:]
    events = [json.loads(line) for line in res.stdout.splitlines() if line.startswith("{")]
    epochs = [e for e in events if e["event"] == "epoch"]
    # both processes report epochs (losses are already averaged over processes, so they agree)
    assert len(epochs) == 4
    by_epoch = {}
    for e in epochs:
        by_epoch.setdefault(e["epoch"], []).append(e["train_loss"])
    for losses in by_epoch.values():
        assert losses[0] == pytest.approx(losses[1])
    out = work / "trained" / "3d_fullres" / "fold_0"
    log = [json.loads(line) for line in (out / "training_log.jsonl").read_text().splitlines()]
    assert len(log) == 2
    ck = torch.load(out / "checkpoint_final.pt", weights_only=True)
    assert ck["epoch"] == 2 and not any(k.startswith("module.") for k in ck["network_weights"])
    assert (out / "validation" / "summary.json").is_file()
