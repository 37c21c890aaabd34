"""Helpers shared by the benchmarks: a reference-implementation sandbox and measured process runs.

Benchmarks run by hand (not in CI), with the reference installed in ``.bench-venv``. Nothing here is
imported by AutoSegLib.
"""
from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from pathlib import Path
from typing import Dict, List, Optional

REPO = Path(__file__).resolve().parents[1]
SHARED = Path(os.environ.get("AUTOSEG_SHARED", REPO.parent / "shared"))
AUTOSEG_PYTHON = REPO / ".venv" / "bin" / "python"
BENCH_VENV = REPO / ".bench-venv"
BENCH_PYTHON = BENCH_VENV / "bin" / "python"


def nnunet_sandbox(root: Path, dataset_path: Path, dataset_id: int) -> Dict[str, str]:
    """Create ``root/{nnUNet_raw,nnUNet_preprocessed,nnUNet_results}`` with the raw dataset linked in as
    ``Dataset<id>_<name>``; returns the environment variables the reference needs."""
    root = Path(root)
    name = f"Dataset{dataset_id:03d}_{Path(dataset_path).name}"
    raw = root / "nnUNet_raw" / name
    raw.mkdir(parents=True, exist_ok=True)
    for entry in ("imagesTr", "labelsTr", "dataset.json"):
        link = raw / entry
        if not link.exists():
            link.symlink_to(Path(dataset_path).resolve() / entry)
    for sub in ("nnUNet_preprocessed", "nnUNet_results"):
        (root / sub).mkdir(parents=True, exist_ok=True)
    return {"nnUNet_raw": str(root / "nnUNet_raw"), "nnUNet_preprocessed": str(root / "nnUNet_preprocessed"),
            "nnUNet_results": str(root / "nnUNet_results")}


def bench_env(extra: Optional[Dict[str, str]] = None, threads: int = 1) -> Dict[str, str]:
    """The environment for a measured child: thread pools pinned so that only processes count.

    The child imports AutoSegLib from this checkout (``PYTHONPATH`` = the repository), not from whatever
    checkout the interpreter has installed editable, so a bench run from a frozen worktree measures that
    worktree's code while main moves on.
    """
    env = dict(os.environ)
    for var in ("OMP_NUM_THREADS", "MKL_NUM_THREADS", "OPENBLAS_NUM_THREADS"):
        env[var] = str(threads)
    env["PYTHONPATH"] = str(REPO)
    env.update(extra or {})
    return env


def _pss_bytes(pid: int) -> int:
    """Proportional set size of one process from /proc/<pid>/smaps_rollup (one line for the whole process:
    far cheaper than psutil's full smaps walk, which on 2 cores stole measurable CPU from the process being
    measured); 0 where unavailable."""
    try:
        with open(f"/proc/{pid}/smaps_rollup") as f:
            for line in f:
                if line.startswith("Pss:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return 0


def run_measured(cmd: List[str], env: Optional[Dict[str, str]] = None, cwd: Optional[Path] = None,
                 interval: float = 0.2, log_path: Optional[Path] = None) -> Dict[str, float]:
    """Run ``cmd``; return wall time (``wall_s``), CPU time of the process tree (``cpu_s``, user + sys of every
    waited-for descendant) and the peaks of the whole process tree's summed RSS (``peak_rss_mib``) and summed
    PSS (``peak_pss_mib``: a page shared by forked workers counts once in total, not once per process),
    sampled every ``interval`` seconds. Raises RuntimeError (with the output tail) on failure.

    The sampling is not free: reading every process's PSS every 0.2 s took 10 % of a core beside a 2-thread
    training on 2 cores (and such a training slows down by more than that, its threads waiting on each other),
    so runs of many minutes pass ``interval=2`` or more."""
    import psutil

    import resource

    out = open(log_path, "w") if log_path else subprocess.DEVNULL
    before = resource.getrusage(resource.RUSAGE_CHILDREN)
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, env=env, cwd=cwd, stdout=out, stderr=subprocess.STDOUT)
    peak = {"rss": 0, "pss": 0}
    stop = threading.Event()

    def sample():
        try:
            root = psutil.Process(proc.pid)
        except psutil.Error:
            return
        while not stop.is_set():
            rss = pss = 0
            try:
                procs = [root] + root.children(recursive=True)
            except psutil.Error:
                break
            for p in procs:
                try:
                    rss += p.memory_info().rss
                except psutil.Error:
                    pass
                pss += _pss_bytes(p.pid)
            peak["rss"], peak["pss"] = max(peak["rss"], rss), max(peak["pss"], pss)
            stop.wait(interval)

    thread = threading.Thread(target=sample, daemon=True)
    thread.start()
    rc = proc.wait()
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN)
    stop.set()
    thread.join()
    if log_path:
        out.close()
    if rc != 0:
        tail = Path(log_path).read_text()[-3000:] if log_path else ""
        raise RuntimeError(f"command failed ({rc}): {' '.join(map(str, cmd))}\n{tail}")
    cpu = (after.ru_utime - before.ru_utime) + (after.ru_stime - before.ru_stime)
    return {"wall_s": wall, "peak_rss_mib": peak["rss"] / 2 ** 20, "peak_pss_mib": peak["pss"] / 2 ** 20,
            "cpu_s": cpu}


def load_json(path: Path):
    return json.loads(Path(path).read_text())
