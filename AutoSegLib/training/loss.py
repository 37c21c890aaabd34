"""Training loss: soft Dice + cross-entropy (or + BCE for regions), with deep supervision and the ignore label.

Formulas (the recipe's, smooth as the reference's: 1e-5):

- Soft Dice over foreground channels ``k`` (background excluded for softmax outputs; every region for
  sigmoid outputs), probabilities ``p`` and one-hot target ``g``, optional mask ``m`` (0 on ignore voxels)::

      I_k = sum(p * g * m), P_k = sum(p * m), G_k = sum(g * m)      sums over space (and the batch when
      dice_k = (2 I_k + smooth) / max(P_k + G_k + smooth, 1e-8)     batch_dice), per sample otherwise
      L_dice = -mean(dice_k)

- Cross-entropy: mean over non-ignored voxels of ``-log softmax(logits)[target]`` (0 if every voxel is
  ignored). Regions: binary cross-entropy with logits, mean over non-ignored voxels and all regions.
- Total: ``L = L_ce + L_dice`` (weights 1:1).
- Deep supervision: level ``i`` (0 = full resolution) weighs ``2**-i``, the lowest level 0, normalised
  to sum 1 (`deep_supervision_weights`).

Targets are given as label *values* (what the preprocessed ``_seg.npy`` stores, -1 already mapped to 0)
and turned into class indices / region masks by `LabelEncoder`.
"""
from __future__ import annotations

from typing import List, Optional, Sequence, Tuple, Union

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from AutoSegLib.io.labels import LabelLayout

SMOOTH = 1e-5


def deep_supervision_weights(n_outputs: int) -> List[float]:
    """Weights of the ``n_outputs`` deep-supervision levels, highest resolution first.

    ``[1, 1/2, 1/4, ..., 0]`` normalised to sum 1 (the lowest level gets 0). One output: ``[1.0]``.
    """
    if n_outputs <= 1:
        return [1.0]
    w = np.array([1 / (2 ** i) for i in range(n_outputs)])
    w[-1] = 0
    return list(w / w.sum())


class LabelEncoder:
    """Turns a batch of label values into loss targets.

    Parameters
    ----------
    layout : LabelLayout
        The dataset's labels (plain or regions, optional ignore label).
    """

    def __init__(self, layout: LabelLayout):
        self.layout = layout
        self.regions = layout.has_regions
        self.ignore = layout.ignore_label
        if not self.regions:
            values = list(layout.softmax_values)
            top = max(values + ([self.ignore] if self.ignore is not None else []))
            lut = np.zeros(top + 1, np.int64)
            for i, v in enumerate(values):
                lut[v] = i
            self._lut = torch.from_numpy(lut)

    def encode(self, seg: torch.Tensor) -> Tuple[torch.Tensor, Optional[torch.Tensor]]:
        """Encode label values.

        Parameters
        ----------
        seg : Tensor (B, 1, *spatial), any numeric dtype
            Label values; negative values (outside the non-zero region) count as background.

        Returns
        -------
        target : Tensor
            Plain labels: (B, 1, *spatial) int64 class indices (ignore voxels set to 0).
            Regions: (B, R, *spatial) float 0/1 region masks.
        mask : Tensor (B, 1, *spatial) bool, or None
            True where the voxel counts (None when the dataset has no ignore label).
        """
        seg = seg.long().clamp_min_(0)
        mask = None
        if self.ignore is not None:
            mask = seg != self.ignore
        if self.regions:
            chans = []
            for v in self.layout.foreground_values:
                vals = v if isinstance(v, tuple) else (v,)
                m = torch.zeros_like(seg, dtype=torch.bool)
                for x in vals:
                    m |= seg == x
                chans.append(m)
            target = torch.cat(chans, 1).float()
            return target, mask
        lut = self._lut.to(seg.device)
        target = lut[seg.clamp_max_(len(lut) - 1)]
        if mask is not None:
            target = torch.where(mask, target, torch.zeros_like(target))
        return target, mask


def _sum_axes(x: torch.Tensor, batch_dice: bool) -> Tuple[int, ...]:
    axes = tuple(range(2, x.ndim))
    return ((0,) + axes) if batch_dice else axes


def soft_dice_loss(probs: torch.Tensor, onehot: torch.Tensor, mask: Optional[torch.Tensor] = None,
                   batch_dice: bool = False, smooth: float = SMOOTH, ddp: bool = False) -> torch.Tensor:
    """Negative mean soft Dice.

    Parameters
    ----------
    probs : Tensor (B, K, *spatial) float
        Probabilities of the channels that count (background already removed for softmax).
    onehot : Tensor (B, K, *spatial)
        Binary target of the same channels.
    mask : Tensor (B, 1, *spatial) bool, optional
        Voxels that count.
    batch_dice : bool
        Sum over the batch too (one Dice per class) instead of per sample.
    ddp : bool
        With batch_dice under torch.distributed: sum the terms over all processes.

    Returns
    -------
    Tensor, scalar
        ``-mean(dice)``.
    """
    onehot = onehot.to(probs.dtype)
    if mask is not None:
        m = mask.to(probs.dtype)
        onehot = onehot * m
        pm = probs * m
    else:
        pm = probs
    axes = tuple(range(2, probs.ndim))
    intersect = (pm * onehot).sum(axes)
    sum_pred = pm.sum(axes)
    sum_gt = onehot.sum(axes)
    if batch_dice:
        if ddp:
            import torch.distributed.nn.functional as dist_f
            intersect = torch.cat(dist_f.all_gather(intersect), 0)
            sum_pred = torch.cat(dist_f.all_gather(sum_pred), 0)
            sum_gt = torch.cat(dist_f.all_gather(sum_gt), 0)
        intersect, sum_pred, sum_gt = intersect.sum(0), sum_pred.sum(0), sum_gt.sum(0)
    dice = (2 * intersect + smooth) / torch.clamp(sum_gt + sum_pred + smooth, min=1e-8)
    return -dice.mean()


def dice_ce_loss(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                 batch_dice: bool = False, ddp: bool = False) -> torch.Tensor:
    """Soft Dice (background excluded) + cross-entropy for softmax outputs.

    Parameters
    ----------
    logits : Tensor (B, K, *spatial)
    target : Tensor (B, 1, *spatial) int64 class indices
    mask : Tensor (B, 1, *spatial) bool, optional
        False on ignore voxels: they contribute to neither term.
    """
    logits = logits.float()
    probs = torch.softmax(logits, 1)
    onehot = torch.zeros_like(probs).scatter_(1, target.long(), 1)
    dice = soft_dice_loss(probs[:, 1:], onehot[:, 1:], mask, batch_dice, ddp=ddp)
    ce_map = F.cross_entropy(logits, target[:, 0].long(), reduction="none")
    if mask is None:
        ce = ce_map.mean()
    else:
        m = mask[:, 0].to(ce_map.dtype)
        n = m.sum()
        ce = (ce_map * m).sum() / n if n > 0 else ce_map.sum() * 0
    return ce + dice


def dice_bce_loss(logits: torch.Tensor, target: torch.Tensor, mask: Optional[torch.Tensor] = None,
                  batch_dice: bool = False, ddp: bool = False) -> torch.Tensor:
    """Soft Dice over every region (sigmoid) + binary cross-entropy, for region-based labels.

    Parameters
    ----------
    logits : Tensor (B, R, *spatial)
    target : Tensor (B, R, *spatial) float 0/1
    mask : Tensor (B, 1, *spatial) bool, optional
    """
    logits = logits.float()
    probs = torch.sigmoid(logits)
    dice = soft_dice_loss(probs, target, mask, batch_dice, ddp=ddp)
    bce = F.binary_cross_entropy_with_logits(logits, target.float(), reduction="none")
    if mask is None:
        ce = bce.mean()
    else:
        m = mask.to(bce.dtype).expand_as(bce)
        n = m.sum()
        ce = (bce * m).sum() / n if n > 0 else bce.sum() * 0
    return ce + dice


class SegmentationLoss(nn.Module):
    """Dice + CE (or + BCE for regions) summed over deep-supervision levels.

    Parameters
    ----------
    layout : LabelLayout
    batch_dice : bool
        From the configuration plan.
    n_outputs : int
        Deep-supervision levels (1 without deep supervision).
    ddp : bool
        Gather batch-Dice terms over processes.

    ``forward(outputs, seg_levels)`` takes the network output (a tensor, or a list highest resolution
    first) and the label values at each level's resolution (same structure, (B, 1, *spatial)).
    """

    def __init__(self, layout: LabelLayout, batch_dice: bool = False, n_outputs: int = 1, ddp: bool = False):
        super().__init__()
        self.encoder = LabelEncoder(layout)
        self.batch_dice = batch_dice
        self.weights = deep_supervision_weights(n_outputs)
        if ddp and n_outputs > 1:
            # DDP needs a gradient for every parameter: the lowest head gets a negligible weight, not 0
            self.weights[-1] = 1e-6
        self.ddp = ddp
        self._fn = dice_bce_loss if layout.has_regions else dice_ce_loss

    def forward(self, outputs: Union[torch.Tensor, Sequence[torch.Tensor]],
                seg_levels: Union[torch.Tensor, Sequence[torch.Tensor]]) -> torch.Tensor:
        if isinstance(outputs, torch.Tensor):
            outputs, seg_levels = [outputs], [seg_levels if isinstance(seg_levels, torch.Tensor) else seg_levels[0]]
        weights = self.weights if len(outputs) == len(self.weights) else deep_supervision_weights(len(outputs))
        total = None
        for w, out, seg in zip(weights, outputs, seg_levels):
            if w == 0:
                continue
            target, mask = self.encoder.encode(seg)
            term = w * self._fn(out, target, mask, self.batch_dice, self.ddp)
            total = term if total is None else total + term
        return total
