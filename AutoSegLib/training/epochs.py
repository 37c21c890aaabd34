"""The epoch loop of `train_fold`: batches from the worker streams, steps, metrics, logs, checkpoints."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from AutoSegLib.planning.budget import sliding_windows, validation_reserve
from AutoSegLib.progress import ProgressCallback, emit
from AutoSegLib.training import checkpoint as ckpt_mod
from AutoSegLib.training import distributed as dist_mod
from AutoSegLib.training.logbook import plot_progress, write_log
from AutoSegLib.training.loop import dice_from_counts, output_shapes, train_step, validation_step
from AutoSegLib.training.sampling import augmentation_patch_size, forced_foreground, rotation_settings
from AutoSegLib.training.workers import BatchSpec, BatchStream

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0
# checkpoint_latest.pt in the middle of an epoch once this long has passed since the last one: a CPU epoch of
# the stock plans (250 iterations of ~20 s) would otherwise lose hours to a kill.
CHECKPOINT_EVERY_S = 600.0
# progress.png is drawn again once this long has passed since the last drawing, and when training ends. Drawn
# after every epoch it cost 0.26-0.44 s (0.9 s the first time) of the README demo's 2.5-second epochs: about
# 15 % of a short budget's iterations.
PLOT_EVERY_S = 60.0


class EpochRunner:
    """Runs epochs ``state["epoch"] .. config.epochs - 1`` (or until the time budget; past ``config.epochs``
    while time is left when the configuration fills its budget), updating ``state``
    (epoch, iteration within it, log, ema, best_ema, elapsed_s) in place. A cascade stage passes
    ``previous_folder`` and ``cascade_values`` (see `workers.BatchSpec`); ``final_cases`` are the cases the
    fold's final validation will predict (their windows are reserved from a time budget).

    Long epochs (a CPU with the stock plans) are handled on iterations and time, not epoch boundaries: the
    learning rate is set every iteration, checkpoint_latest.pt is also written every
    ``CHECKPOINT_EVERY_S`` inside an epoch, progress and ETA cover the whole training, and a time budget
    stops training early enough for its validation to end within it."""

    def __init__(self, model, net, optimizer, scaler, loss_fn, ex, plan, config, info, data_folder,
                 train_cases, val_cases, workers, state, progress: Optional[ProgressCallback], configuration, fold,
                 previous_folder: Optional[Path] = None, cascade_values=(), final_cases=()):
        self.model, self.net, self.optimizer, self.scaler, self.loss_fn = model, net, optimizer, scaler, loss_fn
        self.ex, self.plan, self.config, self.info, self.state = ex, plan, config, info, state
        self.progress, self.configuration, self.fold = progress, configuration, fold
        self.shapes = output_shapes(plan.patch_size, plan.network.strides, config.deep_supervision)
        batch = config.batch_size or plan.batch_size
        self.batch_size = int(batch)
        self.mean_step_s: Optional[float] = None        # measured training iteration time (this segment)
        self.forward_s_per_patch: Optional[float] = None  # measured on the last validation batches
        self.final_cases = len(final_cases)
        self.final_windows = sum(sliding_windows(np.load(Path(data_folder) / f"{c}.npy", mmap_mode="r").shape[1:],
                                                 plan.patch_size) for c in final_cases)
        forced = forced_foreground(batch, config.oversample_foreground)
        local_batch, local_forced = dist_mod.split_batch(batch, forced, info)
        max_angle, dummy_2d, mirror_axes = rotation_settings(plan.patch_size)
        box_margin = tuple(float(m) / float(s) for m, s in zip(config.box_margin_mm, plan.spacing))  # voxels
        common = dict(folder=str(data_folder), batch_size=local_batch, patch_size=tuple(plan.patch_size),
                      forced=tuple(local_forced), cascade_values=tuple(cascade_values),
                      previous_folder=str(previous_folder) if previous_folder is not None else None,
                      box_margin=box_margin)
        train_spec = BatchSpec(cases=tuple(train_cases), augment=True,
                               sample_patch_size=augmentation_patch_size(plan.patch_size, max_angle, dummy_2d),
                               max_angle=max_angle, dummy_2d=dummy_2d, mirror_axes=mirror_axes, **common)
        val_spec = BatchSpec(cases=tuple(val_cases), augment=False, sample_patch_size=tuple(plan.patch_size), **common)
        seed = config.seed + 7919 * info.rank
        segment = int(state["segment"])
        self.train_stream = BatchStream(train_spec, workers, seed, stream=2 * segment)
        val_workers = 0 if (workers <= 1 or config.val_iterations == 0) else 1
        self.val_stream = BatchStream(val_spec, val_workers, seed, stream=2 * segment + 1)

    def close(self) -> None:
        self.train_stream.close()
        self.val_stream.close()

    # ------------------------------------------------------------------------------------------------
    def reserve_seconds(self) -> float:
        """Time still needed after the last training iteration (`planning.budget.validation_reserve`):
        this epoch's validation batches and the fold's final validation (every window of every validation
        case, mirrored if asked) at the forward time measured on validation batches (a third of a
        training step before the first one). With a time budget, training stops this long before its end,
        so that nothing runs past it."""
        forward = self.forward_s_per_patch
        if forward is None:
            forward = (self.mean_step_s or 0.0) / 3.0 / max(1, self.batch_size)
        flips = 2 ** len(self.plan.patch_size) if self.config.mirror_at_validation else 1
        return validation_reserve(forward, self.batch_size, self.config.val_iterations, self.final_windows,
                                  self.final_cases, flips)

    def _over_budget(self, elapsed: float) -> bool:
        """True once the run (all segments of a resumed run together) has used its time budget, counting
        the time its validation will still take."""
        budget = self.config.time_budget_minutes
        if budget is None:
            return False
        return elapsed + self.reserve_seconds() >= budget * 60

    def _training_eta(self, elapsed: float, iterations_left: int) -> Optional[float]:
        """Seconds until this training ends (validation included), from the mean iteration time so far,
        never beyond the time budget (exactly the budget's rest when the run fills it)."""
        budget = self.config.time_budget_minutes
        if self.config.fills_budget:
            return max(0.0, budget * 60 - elapsed)
        if self.mean_step_s is None:
            return None
        eta = iterations_left * self.mean_step_s + self.reserve_seconds()
        if budget is not None:
            eta = min(eta, max(0.0, budget * 60 - elapsed))
        return eta

    def _expected_epochs(self, epoch: int, iterations_done: int, elapsed: float) -> int:
        """The epoch count to show: the configured one, or, when the run fills its budget, the epochs that
        the time left buys at the measured iteration time (never fewer than the current one)."""
        cfg = self.config
        if not cfg.fills_budget:
            return cfg.epochs
        if self.mean_step_s is None:
            return max(cfg.epochs, epoch + 1)
        time_left = max(0.0, cfg.time_budget_minutes * 60 - elapsed - self.reserve_seconds())
        total = epoch * cfg.iterations_per_epoch + iterations_done + time_left / self.mean_step_s
        return max(epoch + 1, math.ceil(total / cfg.iterations_per_epoch))

    def run(self, fold_dir: Path, base: dict) -> None:
        cfg, state, info = self.config, self.state, self.info
        t_run = time.monotonic()
        elapsed0 = float(state["elapsed_s"])
        ipe = cfg.iterations_per_epoch
        stop = False
        steps_timed, step_time_sum = 0, 0.0
        last_checkpoint = time.monotonic()
        self._last_plot = time.monotonic()  # the first drawing after PLOT_EVERY_S, not after the first epoch
        self._plotted = 0  # epochs in the last drawing
        while not stop:
            epoch = int(state["epoch"])
            if epoch >= cfg.epochs and (not cfg.fills_budget or
                                        self._over_budget(elapsed0 + (time.monotonic() - t_run))):
                break  # the planned epochs are done, and there is no budget left to fill
            first = int(state.get("iteration") or 0)  # > 0 after resuming from a mid-epoch checkpoint
            losses: List[float] = [float(v) for v in state.get("partial_losses") or []]
            t0 = time.monotonic()
            wait0 = self.train_stream.wait_s + self.val_stream.wait_s
            self.model.train()
            self.net.deep_supervision = cfg.deep_supervision
            last_emit = 0.0
            lr = cfg.initial_lr
            for it in range(first, ipe):
                # the learning rate anneals every iteration: with long epochs a per-epoch rate never moves
                # (under a time budget, the time still needed for validation counts as used: the rate
                # reaches 0 when training stops, not when the budget ends)
                lr = cfg.lr_at(epoch + it / ipe, elapsed0 + (time.monotonic() - t_run) + self.reserve_seconds())
                for g in self.optimizer.param_groups:
                    g["lr"] = lr
                t_step = time.monotonic()
                data, seg = next(self.train_stream)
                losses.append(train_step(self.model, self.optimizer, self.scaler, self.loss_fn, data, seg, self.ex,
                                         self.shapes, cfg.grad_clip))
                now = time.monotonic()
                steps_timed += 1
                step_time_sum += now - t_step
                self.mean_step_s = step_time_sum / steps_timed
                state["iteration"], state["partial_losses"] = it + 1, losses
                elapsed = elapsed0 + (now - t_run)
                over = dist_mod.broadcast_flag(self._over_budget(elapsed), info)
                if now - last_emit >= PROGRESS_EVERY_S or it + 1 == ipe or over:
                    last_emit = now
                    left = (cfg.epochs - epoch) * ipe - (it + 1)
                    epochs = self._expected_epochs(epoch, it + 1, elapsed)
                    emit(self.progress, "progress", stage=f"epoch {epoch + 1}/{epochs}", current=it + 1,
                         total=ipe, eta_s=self._training_eta(elapsed, left), message=f"loss {losses[-1]:.4f}")
                if over:
                    stop = True
                    break
                if now - last_checkpoint >= CHECKPOINT_EVERY_S and it + 1 < ipe:
                    # a long epoch: a kill must not lose it (resume continues at this iteration)
                    state["elapsed_s"] = elapsed
                    if info.is_main:
                        self._save_latest(fold_dir, base)
                    last_checkpoint = time.monotonic()
            val_loss, counts = self._validate()
            train_loss = self._mean_over_ranks(losses)
            dice = dice_from_counts(counts) if counts is not None else []
            finite = [d for d in dice if not math.isnan(d)]
            mean_dice = float(np.mean(finite)) if finite else float("nan")
            ema = state["ema"]
            if not math.isnan(mean_dice):
                ema = mean_dice if ema is None else cfg.ema_factor * ema + (1 - cfg.ema_factor) * mean_dice
            state["ema"] = ema
            epoch_time = time.monotonic() - t0
            state["elapsed_s"] = elapsed0 + (time.monotonic() - t_run)
            entry = {"epoch": epoch, "train_loss": train_loss, "val_loss": val_loss, "pseudo_dice": dice,
                     "mean_pseudo_dice": mean_dice, "ema_pseudo_dice": ema, "lr": lr, "epoch_time_s": epoch_time,
                     "iterations": len(losses),
                     "data_wait_s": self.train_stream.wait_s + self.val_stream.wait_s - wait0, "time": time.time()}
            state["log"].append(entry)
            state["epoch"] = epoch + 1
            state["iteration"], state["partial_losses"] = 0, []
            if stop:
                log.info("time budget of %.1f min reached after %d iterations of epoch %d (%.0f s kept for "
                         "validation)", cfg.time_budget_minutes, len(losses), epoch + 1, self.reserve_seconds())
            if info.is_main:
                self._write(fold_dir, base, ema)
                last_checkpoint = time.monotonic()
                if time.monotonic() - self._last_plot >= PLOT_EVERY_S:
                    self._plot(fold_dir)
            left = (cfg.epochs - state["epoch"]) * ipe
            emit(self.progress, "epoch", configuration=self.configuration, fold=str(self.fold), epoch=epoch,
                 epochs=epoch + 1 if stop else self._expected_epochs(state["epoch"], 0, state["elapsed_s"]),
                 train_loss=train_loss, val_loss=val_loss, pseudo_dice=dice,
                 ema_pseudo_dice=ema, lr=lr, epoch_time_s=epoch_time,
                 eta_s=0.0 if stop else self._training_eta(state["elapsed_s"], left))
        if info.is_main and self._plotted < len(state["log"]):
            self._plot(fold_dir)  # every epoch, once training is over (unless its last epoch was just drawn)

    def _mean_over_ranks(self, values: List[float]) -> float:
        t = torch.tensor([float(np.sum(values)), float(len(values))], dtype=torch.float64)
        t = dist_mod.all_sum(t, self.info)
        return float(t[0] / t[1]) if t[1] > 0 else float("nan")

    def _validate(self):
        cfg = self.config
        if cfg.val_iterations == 0:
            return float("nan"), None
        self.model.eval()
        losses, counts = [], None
        network_s = 0.0
        for _ in range(cfg.val_iterations):
            data, seg = next(self.val_stream)
            t0 = time.monotonic()
            loss, c = validation_step(self.net, self.loss_fn, data, seg, self.ex, self.shapes)
            network_s += time.monotonic() - t0
            losses.append(loss)
            counts = c if counts is None else counts + c
        self.model.train()
        self.forward_s_per_patch = network_s / (cfg.val_iterations * self.batch_size)
        counts = dist_mod.all_sum(torch.from_numpy(counts), self.info).numpy()
        return self._mean_over_ranks(losses), counts

    def _payload(self, base: dict) -> dict:
        state = self.state
        loop_state = {k: state[k] for k in ("epoch", "log", "ema", "best_ema", "elapsed_s", "segment", "iteration",
                                            "partial_losses")}
        loop_state["rng"] = ckpt_mod.rng_state()
        return {**base, "network_weights": self.net.state_dict(), "epoch": state["epoch"],
                "optimizer_state": self.optimizer.state_dict(),
                "grad_scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
                "loop_state": loop_state}

    def _save_latest(self, fold_dir: Path, base: dict) -> None:
        """checkpoint_latest.pt in the middle of an epoch (``loop_state["iteration"]`` says where)."""
        ckpt_mod.save_checkpoint(fold_dir / "checkpoint_latest.pt", self._payload(base))
        write_log(fold_dir / "training_log.jsonl", self.state["log"])

    def _write(self, fold_dir: Path, base: dict, ema) -> None:
        state = self.state
        improved = ema is not None and (state["best_ema"] is None or ema > state["best_ema"])
        if improved:
            state["best_ema"] = ema
        full = self._payload(base)
        if improved:
            ckpt_mod.save_checkpoint(fold_dir / "checkpoint_best.pt", full)
        if self.config.save_every_epoch or state["epoch"] >= self.config.epochs:
            ckpt_mod.save_checkpoint(fold_dir / "checkpoint_latest.pt", full)
        write_log(fold_dir / "training_log.jsonl", state["log"])

    def _plot(self, fold_dir: Path) -> None:
        self._last_plot, self._plotted = time.monotonic(), len(self.state["log"])
        try:
            plot_progress(fold_dir / "progress.png", self.state["log"],
                          title=f"{self.configuration} fold {self.fold}")
        except Exception as exc:  # a plot must never stop training
            log.warning("could not draw progress.png: %s", exc)
