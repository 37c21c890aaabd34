"""One training step, one validation step and the pseudo-Dice counts: the numeric core of an epoch.

Batches arrive as numpy arrays (``data`` (B, C, *patch) float32, ``seg`` (B, 1, *patch) int16 label
values, -1 outside the non-zero region). The label is downsampled (nearest) to every deep-supervision
output's size here, on the device, instead of in the workers.
"""
from __future__ import annotations

from typing import List, Sequence, Tuple

import numpy as np
import torch
import torch.nn.functional as F

from AutoSegLib.errors import AutoSegError
from AutoSegLib.device import Execution
from AutoSegLib.training.loss import LabelEncoder, SegmentationLoss

OOM_HINT = ("CUDA ran out of memory while training. Re-plan for a smaller GPU, e.g. `autoseg plan ... "
            "--gpu-memory-gb 6` (smaller patch or batch), then preprocess and train again; or free the GPU "
            "from other programs.")


def output_shapes(patch_size: Sequence[int], strides: Sequence[Sequence[int]], deep_supervision: bool
                  ) -> List[Tuple[int, ...]]:
    """Spatial shapes of the network outputs, highest resolution first (one without deep supervision)."""
    shapes, cur = [], np.array(patch_size, dtype=np.int64)
    for s in strides[:-1] if deep_supervision else strides[:1]:
        cur = cur // np.array(s, dtype=np.int64)
        shapes.append(tuple(int(x) for x in cur))
    return shapes


def to_device(data: np.ndarray, seg: np.ndarray, ex: Execution) -> Tuple[torch.Tensor, torch.Tensor]:
    non_blocking = ex.device.type == "cuda"
    x = torch.from_numpy(data)
    y = torch.from_numpy(seg.astype(np.int16, copy=False))
    if non_blocking:
        x, y = x.pin_memory(), y.pin_memory()
    x = x.to(ex.device, non_blocking=non_blocking).contiguous(memory_format=ex.memory_format)
    y = y.to(ex.device, non_blocking=non_blocking)
    return x, y


def seg_pyramid(seg: torch.Tensor, shapes: Sequence[Tuple[int, ...]]) -> List[torch.Tensor]:
    """Label values at each output size (nearest, like the reference's order-0 downsampling)."""
    seg = seg.clamp_min(0)
    out = []
    for shape in shapes:
        if tuple(seg.shape[2:]) == tuple(shape):
            out.append(seg)
        else:
            out.append(F.interpolate(seg.float(), size=shape, mode="nearest-exact").to(seg.dtype))
    return out


def train_step(net, optimizer, scaler, loss_fn: SegmentationLoss, data: np.ndarray, seg: np.ndarray,
               ex: Execution, shapes, grad_clip: float) -> float:
    """Forward, loss, backward, clipped SGD step. Returns the loss value."""
    x, y = to_device(data, seg, ex)
    targets = seg_pyramid(y, shapes)
    optimizer.zero_grad(set_to_none=True)
    try:
        with ex.autocast():
            out = net(x)
        loss = loss_fn(out, targets)
        if scaler is not None:
            scaler.scale(loss).backward()
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
            scaler.step(optimizer)
            scaler.update()
        else:
            loss.backward()
            torch.nn.utils.clip_grad_norm_(net.parameters(), grad_clip)
            optimizer.step()
    except torch.cuda.OutOfMemoryError:
        raise AutoSegError(OOM_HINT) from None
    return float(loss.detach())


@torch.no_grad()
def validation_step(net, loss_fn: SegmentationLoss, data: np.ndarray, seg: np.ndarray, ex: Execution, shapes
                    ) -> Tuple[float, np.ndarray]:
    """Loss and pseudo-Dice counts of one validation batch.

    Returns
    -------
    loss : float
    counts : ndarray (3, K_fg) float64
        True positives, false positives, false negatives per foreground class (or region), summed over
        the batch, ignore voxels excluded.
    """
    x, y = to_device(data, seg, ex)
    targets = seg_pyramid(y, shapes)
    try:
        with ex.autocast():
            out = net(x)
        loss = loss_fn(out, targets)
    except torch.cuda.OutOfMemoryError:
        raise AutoSegError(OOM_HINT) from None
    top = out[0] if isinstance(out, (list, tuple)) else out
    return float(loss), pseudo_dice_counts(top.float(), targets[0], loss_fn.encoder)


def pseudo_dice_counts(logits: torch.Tensor, seg: torch.Tensor, encoder: LabelEncoder) -> np.ndarray:
    """tp/fp/fn per foreground class (softmax: argmax; regions: sigmoid > 0.5), ignore voxels excluded.

    Parameters
    ----------
    logits : Tensor (B, K, *spatial)
    seg : Tensor (B, 1, *spatial) label values
    """
    target, mask = encoder.encode(seg)
    if encoder.regions:
        pred = logits > 0
        gt = target > 0.5
    else:
        k = logits.shape[1]
        lab = logits.argmax(1, keepdim=True)
        classes = torch.arange(1, k, device=logits.device).view(1, -1, *([1] * (logits.ndim - 2)))
        pred = lab == classes
        gt = target == classes
    if mask is not None:
        pred = pred & mask
        gt = gt & mask
    axes = [0] + list(range(2, logits.ndim))
    tp = (pred & gt).sum(axes)
    fp = (pred & ~gt).sum(axes)
    fn = (~pred & gt).sum(axes)
    return torch.stack([tp, fp, fn]).double().cpu().numpy()


def dice_from_counts(counts: np.ndarray) -> List[float]:
    """Dice per class ``2tp / (2tp + fp + fn)``; NaN where the class is absent from both."""
    tp, fp, fn = counts
    denom = 2 * tp + fp + fn
    with np.errstate(invalid="ignore", divide="ignore"):
        d = np.where(denom > 0, 2 * tp / np.maximum(denom, 1e-12), np.nan)
    return [float(v) for v in d]
