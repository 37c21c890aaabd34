"""Benchmark: does the training calibration predict what an iteration of a budget candidate costs?

    .venv/bin/python bench/calibration_check.py [--precision float32] [--threads 2] [--force]

For LA2018_1p25mm's budget candidates (spacing factor x first-stage features, patch as `planning.budget`
cuts it from the LA median image), measured on this machine: the network's training step alone, one
augmentation batch alone, and the step while a worker process augments one batch per step beside it (as
training runs on the CPU); against `Calibration.step_seconds` and its network / data parts. ``--force``
measures the calibration again instead of reading the cache.
"""
import argparse, json, multiprocessing as mp, time
import numpy as np, torch

def worker(conn, patch):
    """Augments ``n`` batches whenever the parent sends ``n`` (None ends it); answers the seconds taken."""
    from AutoSegLib.training.calibration import augmentation_batch
    augment = augmentation_batch(patch)
    np.random.seed(0)
    while True:
        msg = conn.recv()
        if msg is None:
            return
        t0 = time.perf_counter()
        for _ in range(msg):
            augment()
        conn.send(time.perf_counter() - t0)

def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--precision", default="float32", choices=("float32", "auto", "bfloat16"))
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--force", action="store_true")
    args = ap.parse_args()
    from AutoSegLib.network.memory import conv_macs
    from AutoSegLib.planning.budget import budget_patch, candidate_topology
    from AutoSegLib.training.calibration import PROBE_BATCH, calibrate, training_step
    from AutoSegLib.device import choose_execution
    cal = calibrate("cpu", args.precision, threads=args.threads, force=args.force)
    torch.set_num_threads(args.threads)
    ex = choose_execution(torch.device("cpu"), args.precision, False, 3)
    print(json.dumps({"calibration": cal.key, "probe_gflops": [round(6 * m / s / 1e9, 1) for m, s in
                                                                zip(cal.probe_macs, cal.probe_seconds)]}), flush=True)
    median = np.array([44 * 1.25, 71 * 1.25, 96 * 1.25])  # LA median image (mm) at 1.25 mm
    rows = []
    for factor, base in [(1.0, 32), (1.0, 16), (1.25, 32), (1.25, 16), (1.5, 32), (1.5, 16), (2.0, 16)]:
        spacing = (1.25 * factor,) * 3
        pool = budget_patch(spacing, tuple(median / spacing))
        topo = candidate_topology(pool, base)
        patch = tuple(pool.patch_size)
        macs = conv_macs(topo, patch, 1, 2) * PROBE_BATCH
        step = training_step(topo, patch, ex)
        step()
        t0 = time.perf_counter(); n = 4
        for _ in range(n): step()
        alone = (time.perf_counter() - t0) / n
        parent, child = mp.get_context("spawn").Pipe()
        p = mp.get_context("spawn").Process(target=worker, args=(child, patch)); p.start()
        parent.send(2); parent.recv()  # warm-up
        parent.send(4); aug = parent.recv() / 4
        t0 = time.perf_counter()
        for _ in range(n):
            parent.send(1); step(); parent.recv()
        together = (time.perf_counter() - t0) / n
        parent.send(None); p.join()
        pred = cal.step_seconds(macs, patch, 2, base)
        rows.append(dict(factor=factor, base=base, patch=patch, gmacs=round(macs / 1e9, 1), net_alone=round(alone, 3),
                         aug_alone=round(aug, 3), sum=round(alone + aug, 3), together=round(together, 3),
                         predicted=round(pred, 3), predicted_net=round(cal.network_seconds(macs, patch, base), 3),
                         predicted_over_together=round(pred / together, 2),
                         predicted_data=round(cal.data_seconds(patch, 2), 3)))
        print(json.dumps(rows[-1]), flush=True)

if __name__ == "__main__":
    main()
