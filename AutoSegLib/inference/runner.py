"""Running a model's networks: device choice, precision, and fold-averaged sliding-window logits.

`predict_logits` is the one place where weights meet data: for each requested fold it loads that fold's
weights into one network, predicts the preprocessed array window by window (with test-time mirroring),
and averages the folds' logits. With a compiled CPU runtime (``runtime``, see `inference.compiled`) the
exported networks replace the torch network and nothing here imports torch.
"""
from __future__ import annotations

import contextlib
import logging
from typing import TYPE_CHECKING, Optional, Sequence

import numpy as np

from AutoSegLib.allocator import keep_freed_memory
from AutoSegLib.errors import AutoSegError
from AutoSegLib.inference.sliding_window import count_windows, predict_sliding_window
from AutoSegLib.progress import ProgressCallback

if TYPE_CHECKING:
    import torch

log = logging.getLogger(__name__)

PRECISIONS = ("auto", "float32", "bfloat16", "float16")


def resolve_device(device: "str | torch.device" = "auto") -> "torch.device":
    """``auto``: CUDA if available, else MPS, else CPU. An unavailable explicit choice is an AutoSegError.
    One rule for training and inference: `AutoSegLib.device.resolve_device`."""
    import torch
    if isinstance(device, torch.device):
        return device
    from AutoSegLib.device import resolve_device as _resolve
    return _resolve(str(device))


def resolve_precision(precision: str, device: "torch.device", trained_precision: Optional[str] = None
                      ) -> "Optional[torch.dtype]":
    """The autocast dtype, or None for plain float32.

    ``auto``: float16 autocast on CUDA (as the reference does there); on the CPU, bfloat16 for a model that
    was itself trained in bfloat16 (``trained_precision``, AutoSeg's CPU training default) when the CPU
    computes bfloat16 natively, else float32 (the reference's CPU mode: nnU-Net models and models trained
    in float32 or on a GPU get the reference's numbers)."""
    import torch
    p = str(precision).lower()
    if p not in PRECISIONS:
        raise AutoSegError(f"unknown precision {precision!r}; choose one of {PRECISIONS}.")
    if p == "auto":
        if device.type == "cuda":
            return torch.float16
        if device.type == "cpu" and trained_precision == "bfloat16":
            from AutoSegLib.device import cpu_has_native_bf16
            return torch.bfloat16 if cpu_has_native_bf16() else None
        return None
    return {"float32": None, "bfloat16": torch.bfloat16, "float16": torch.float16}[p]


class NetworkPredictor:
    """Callable ``batch -> float32 logits`` around an eval-mode network on ``device``, with optional autocast.

    ``channels_last`` (default: on with autocast or CUDA, off for float32 on the CPU) switches the
    convolutions to the channels-last memory layout: faster on CPU, but float32 results then differ from
    the reference's in the last bits, which its float16 accumulator can round into 1-ulp logit differences
    (up to ~2e-3 in probability); the default float32 CPU path is bit-identical to the reference."""

    def __init__(self, network: "torch.nn.Module", device: "torch.device", autocast_dtype: "Optional[torch.dtype]" = None,
                 channels_last: Optional[bool] = None):
        import torch
        self.device = device
        self.autocast_dtype = autocast_dtype
        network.deep_supervision = False
        network.eval().to(device)
        self.memory_format = None
        if channels_last is None:
            channels_last = autocast_dtype is not None or device.type == "cuda"
        if channels_last and device.type != "mps":
            ndim = len(network.topology.kernel_sizes[0])
            self.memory_format = torch.channels_last_3d if ndim == 3 else torch.channels_last
            network.to(memory_format=self.memory_format)
        self.network = network

    def load(self, state_dict: dict) -> None:
        self.network.load_state_dict(state_dict, strict=True)
        if self.memory_format is not None:
            self.network.to(memory_format=self.memory_format)

    def __call__(self, batch: "torch.Tensor") -> "torch.Tensor":
        import torch
        if self.memory_format is not None:
            batch = batch.contiguous(memory_format=self.memory_format)
        ctx = (torch.autocast(self.device.type, dtype=self.autocast_dtype) if self.autocast_dtype is not None
               else contextlib.nullcontext())
        with ctx:
            out = self.network(batch)
        return out.float().contiguous()


def predict_logits(model, configuration: str, data, folds: Optional[Sequence[str]] = None, tta: bool = True,
                   step_size: float = 0.5, device: "str | torch.device" = "auto", precision: str = "auto",
                   batch_size: int = 1, progress: Optional[ProgressCallback] = None,
                   predictor: Optional[NetworkPredictor] = None, channels_last: Optional[bool] = None,
                   runtime: str = "torch", statistics=None) -> "torch.Tensor | np.ndarray":
    """Fold-averaged logits of one preprocessed case.

    Parameters
    ----------
    model : models.folder.Model
    configuration : str
    data : ndarray or Tensor, (C, *spatial) float32
        Preprocessed image (plus one-hot previous-stage channels for a cascade), transposed order.
    folds : sequence of str, optional
        Folds to use (default: every fold present).
    tta : bool
        Test-time mirroring over the configuration's mirror axes.
    step_size, batch_size : see ``predict_sliding_window``.
    device, precision : see ``resolve_device`` / ``resolve_precision``.
    channels_last : bool, optional
        Channels-last convolutions (see ``NetworkPredictor``); default: on with autocast or CUDA.
    runtime : str
        ``torch`` (default), a compiled CPU runtime (``openvino``, ``onnxruntime``) or ``auto``
        (`runtimes.resolve_runtime`). A compiled runtime ignores ``precision`` (always float32),
        ``predictor`` and ``channels_last``.
    statistics : inference.uncertainty.EnsembleStatistics, optional
        Receives every member's (fold x mirroring) window logits, for the uncertainty map.

    Returns
    -------
    Tensor (torch) or ndarray (compiled runtime), (K, *spatial) float16 on the CPU
        Mean over folds of the stitched logits (float16 like the reference's accumulator).
    """
    from AutoSegLib.inference.runtimes import COMPILED, resolve_runtime

    cm = model.configurations.get(configuration)
    if cm is None:
        raise AutoSegError(f"{model.path}: no trained weights for configuration {configuration!r}; "
                           f"this model has {sorted(model.configurations)}.")
    fold_names = select_folds(model, configuration, folds)
    if predictor is None and runtime != "torch":
        runtime = resolve_runtime(runtime, str(device))
        if runtime in COMPILED:
            from AutoSegLib.inference.compiled import predict_logits_compiled
            keep_freed_memory()
            data = np.asarray(data.numpy() if hasattr(data, "numpy") else data)
            if data.shape[0] != cm.num_input_channels:
                raise AutoSegError(f"configuration {configuration!r} expects {cm.num_input_channels} input channels, "
                                   f"got {data.shape[0]}.")
            return predict_logits_compiled(model, configuration, data, fold_names, runtime, tta=tta,
                                           step_size=step_size, batch_size=batch_size, progress=progress,
                                           statistics=statistics)
    import torch

    from AutoSegLib.network.unet import build_network

    conf = model.plans.configuration(configuration)
    dev = resolve_device(device)
    if dev.type == "cpu":
        keep_freed_memory()
    data = torch.as_tensor(data)
    if data.shape[0] != cm.num_input_channels:
        raise AutoSegError(f"configuration {configuration!r} expects {cm.num_input_channels} input channels, "
                           f"got {data.shape[0]}.")
    if predictor is None:
        net = build_network(conf.network, cm.num_input_channels, cm.num_outputs, deep_supervision=False,
                            initialize=False)  # the fold's weights replace every parameter
        predictor = NetworkPredictor(net, dev, resolve_precision(precision, dev, cm.trained_precision),
                                     channels_last=channels_last)
    mirror = tuple(cm.mirror_axes) if tta else ()
    total = None
    with torch.inference_mode():  # the fold sum too: inference tensors cannot be updated outside it
        for i, fold in enumerate(fold_names):
            predictor.load(cm.folds[fold].state_dict(cache=getattr(model, "cache_weights", False)))
            log.info("predicting %s fold %s: %d windows, mirror axes %s", configuration, fold,
                     count_windows(tuple(data.shape[1:]), conf.patch_size, step_size), mirror)
            stage = f"predict {configuration} fold {fold} ({i + 1}/{len(fold_names)})"
            logits = _stitch_on_device(data, predictor, conf.patch_size, cm.num_outputs, step_size, mirror,
                                       batch_size, dev, progress, stage, statistics)
            if total is None:
                total = logits
            else:
                total += logits  # float16 sum, as the reference
            del logits
        if len(fold_names) > 1:
            total /= len(fold_names)
    return total


def _stitch_on_device(data, predictor, patch_size, num_outputs, step_size, mirror, batch_size, dev, progress,
                      stage, statistics=None) -> "torch.Tensor":
    """Sliding window with the accumulator on the GPU when there is one (falling back to the CPU when the
    GPU runs out of memory, as the reference does); the result is always on the CPU."""
    kw = dict(num_outputs=num_outputs, step_size=step_size, mirror_axes=mirror, batch_size=batch_size,
              device=dev, progress=progress, stage=stage, statistics=statistics)
    import torch
    if dev.type == "cuda":
        if statistics is not None:
            statistics.checkpoint()  # the pass may be redone on the CPU below
        try:
            return predict_sliding_window(data, predictor, patch_size, results_device=dev, **kw).cpu()
        except torch.cuda.OutOfMemoryError:
            log.warning("GPU memory too small to hold the whole case; accumulating on the CPU instead")
            if statistics is not None:
                statistics.restore()
            torch.cuda.empty_cache()
    return predict_sliding_window(data, predictor, patch_size, results_device="cpu", **kw)


def select_folds(model, configuration: str, folds: Optional[Sequence] = None) -> list:
    """The fold names to use; an AutoSegError names the folds present when a requested one is missing."""
    present = list(model.configurations[configuration].folds)
    if folds is None or len(folds) == 0:
        return present
    wanted = [str(f) for f in folds]
    missing = [f for f in wanted if f not in present]
    if missing:
        raise AutoSegError(f"{model.path}: configuration {configuration!r} has no weights for fold(s) {missing}; "
                           f"folds present: {present}.")
    return wanted
