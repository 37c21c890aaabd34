"""The epoch loop of `train_fold`: batches from the worker streams, steps, metrics, logs, checkpoints."""
from __future__ import annotations

import logging
import math
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import torch

from AutoSegLib.progress import ProgressCallback, emit
from AutoSegLib.training import checkpoint as ckpt_mod
from AutoSegLib.training import distributed as dist_mod
from AutoSegLib.training.logbook import plot_progress, write_log
from AutoSegLib.training.loop import dice_from_counts, output_shapes, train_step, validation_step
from AutoSegLib.training.sampling import augmentation_patch_size, forced_foreground, rotation_settings
from AutoSegLib.training.workers import BatchSpec, BatchStream

log = logging.getLogger(__name__)

PROGRESS_EVERY_S = 1.0


class EpochRunner:
    """Runs epochs ``state["epoch"] .. config.epochs - 1`` (or until the time budget), updating ``state``
    (epoch, log, ema, best_ema, elapsed_s) in place. A cascade stage passes ``previous_folder`` and
    ``cascade_values`` (see `workers.BatchSpec`)."""

    def __init__(self, model, net, optimizer, scaler, loss_fn, ex, plan, config, info, data_folder,
                 train_cases, val_cases, workers, state, progress: Optional[ProgressCallback], configuration, fold,
                 previous_folder: Optional[Path] = None, cascade_values=()):
        self.model, self.net, self.optimizer, self.scaler, self.loss_fn = model, net, optimizer, scaler, loss_fn
        self.ex, self.plan, self.config, self.info, self.state = ex, plan, config, info, state
        self.progress, self.configuration, self.fold = progress, configuration, fold
        self.shapes = output_shapes(plan.patch_size, plan.network.strides, config.deep_supervision)
        batch = config.batch_size or plan.batch_size
        forced = forced_foreground(batch, config.oversample_foreground)
        local_batch, local_forced = dist_mod.split_batch(batch, forced, info)
        max_angle, dummy_2d, mirror_axes = rotation_settings(plan.patch_size)
        common = dict(folder=str(data_folder), batch_size=local_batch, patch_size=tuple(plan.patch_size),
                      forced=tuple(local_forced), cascade_values=tuple(cascade_values),
                      previous_folder=str(previous_folder) if previous_folder is not None else None)
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
    def _over_budget(self, t_run: float, elapsed0: float) -> bool:
        """True once the run (all segments of a resumed run together) has used the time budget."""
        budget = self.config.time_budget_minutes
        if budget is None:
            return False
        return elapsed0 + (time.monotonic() - t_run) >= budget * 60

    def run(self, fold_dir: Path, base: dict) -> None:
        cfg, state, info = self.config, self.state, self.info
        t_run = time.monotonic()
        elapsed0 = float(state["elapsed_s"])
        stop = False
        while state["epoch"] < cfg.epochs and not stop:
            epoch = int(state["epoch"])
            t0 = time.monotonic()
            wait0 = self.train_stream.wait_s + self.val_stream.wait_s
            lr = cfg.lr_at(epoch, elapsed0 + (time.monotonic() - t_run))
            for g in self.optimizer.param_groups:
                g["lr"] = lr
            self.model.train()
            self.net.deep_supervision = cfg.deep_supervision
            losses: List[float] = []
            last_emit = 0.0
            for it in range(cfg.iterations_per_epoch):
                data, seg = next(self.train_stream)
                losses.append(train_step(self.model, self.optimizer, self.scaler, self.loss_fn, data, seg, self.ex,
                                         self.shapes, cfg.grad_clip))
                now = time.monotonic()
                if now - last_emit >= PROGRESS_EVERY_S or it + 1 == cfg.iterations_per_epoch:
                    last_emit = now
                    done = it + 1
                    eta = (now - t0) / done * (cfg.iterations_per_epoch - done)
                    emit(self.progress, "progress", stage=f"epoch {epoch + 1}/{cfg.epochs}", current=done,
                         total=cfg.iterations_per_epoch, eta_s=eta, message=f"loss {losses[-1]:.4f}")
                over = self._over_budget(t_run, elapsed0)
                if dist_mod.broadcast_flag(over, info):
                    stop = True
                    break
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
            if stop:
                log.info("time budget of %.1f min reached after %d iterations of epoch %d", cfg.time_budget_minutes,
                         len(losses), epoch + 1)
            if info.is_main:
                self._write(fold_dir, base, ema)
            remaining = cfg.epochs - state["epoch"]
            emit(self.progress, "epoch", configuration=self.configuration, fold=str(self.fold), epoch=epoch,
                 epochs=cfg.epochs, train_loss=train_loss, val_loss=val_loss, pseudo_dice=dice,
                 ema_pseudo_dice=ema, lr=lr, epoch_time_s=epoch_time, eta_s=0.0 if stop else remaining * epoch_time)

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
        for _ in range(cfg.val_iterations):
            data, seg = next(self.val_stream)
            loss, c = validation_step(self.net, self.loss_fn, data, seg, self.ex, self.shapes)
            losses.append(loss)
            counts = c if counts is None else counts + c
        self.model.train()
        counts = dist_mod.all_sum(torch.from_numpy(counts), self.info).numpy()
        return self._mean_over_ranks(losses), counts

    def _write(self, fold_dir: Path, base: dict, ema) -> None:
        state = self.state
        loop_state = {"epoch": state["epoch"], "log": state["log"], "ema": state["ema"],
                      "best_ema": state["best_ema"], "elapsed_s": state["elapsed_s"], "segment": state["segment"],
                      "rng": ckpt_mod.rng_state()}
        full = {**base, "network_weights": self.net.state_dict(), "epoch": state["epoch"],
                "optimizer_state": self.optimizer.state_dict(),
                "grad_scaler_state": self.scaler.state_dict() if self.scaler is not None else None,
                "loop_state": loop_state}
        if ema is not None and (state["best_ema"] is None or ema > state["best_ema"]):
            state["best_ema"] = ema
            loop_state["best_ema"] = ema
            ckpt_mod.save_checkpoint(fold_dir / "checkpoint_best.pt", full)
        if self.config.save_every_epoch or state["epoch"] >= self.config.epochs:
            ckpt_mod.save_checkpoint(fold_dir / "checkpoint_latest.pt", full)
        write_log(fold_dir / "training_log.jsonl", state["log"])
        try:
            plot_progress(fold_dir / "progress.png", state["log"],
                          title=f"{self.configuration} fold {self.fold}")
        except Exception as exc:  # a plot must never stop training
            log.warning("could not draw progress.png: %s", exc)
