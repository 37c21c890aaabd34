"""The loss against hand-computed numbers (with and without ignore voxels), deep-supervision weights."""
import math

import pytest
import torch

from AutoSegLib.io.labels import LabelLayout
from AutoSegLib.training.loss import (LabelEncoder, SegmentationLoss, deep_supervision_weights, dice_bce_loss,
                                      dice_ce_loss)

# 4 voxels, 2 classes; the network's foreground probabilities and the labels, written out by hand.
P_FG = [0.9, 0.2, 0.6, 0.1]
LABELS = [1, 0, 1, 0]


def _logits(p_fg):
    p = torch.tensor(p_fg, dtype=torch.float64)
    return torch.stack([torch.log(1 - p), torch.log(p)])[None].reshape(1, 2, 1, 4)  # (B, K, 1, 4)


def test_dice_ce_by_hand_without_ignore():
    target = torch.tensor(LABELS).reshape(1, 1, 1, 4)
    loss = dice_ce_loss(_logits(P_FG), target)
    # Dice (foreground only): I = 0.9 + 0.6 = 1.5, P = 0.9+0.2+0.6+0.1 = 1.8, G = 2
    dice = (2 * 1.5 + 1e-5) / (1.8 + 2 + 1e-5)
    # CE: -mean(log p(true class)) = -(log .9 + log .8 + log .6 + log .9) / 4
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9)) / 4
    assert float(loss) == pytest.approx(ce - dice, abs=1e-6)


def test_dice_ce_by_hand_with_ignore_voxel():
    # label 2 = ignore on voxel 2 (a foreground voxel with p = 0.6): it must vanish from both terms
    layout = LabelLayout.from_dataset_labels({"background": 0, "fg": 1, "ignore": 2})
    seg = torch.tensor([1, 0, 2, 0]).reshape(1, 1, 1, 4)
    target, mask = LabelEncoder(layout).encode(seg)
    assert target.flatten().tolist() == [1, 0, 0, 0] and mask.flatten().tolist() == [True, True, False, True]
    loss = dice_ce_loss(_logits(P_FG), target, mask)
    dice = (2 * 0.9 + 1e-5) / ((0.9 + 0.2 + 0.1) + 1 + 1e-5)
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.9)) / 3
    assert float(loss) == pytest.approx(ce - dice, abs=1e-6)
    # the ignored voxel's prediction does not matter at all
    other = list(P_FG)
    other[2] = 0.01
    assert float(dice_ce_loss(_logits(other), target, mask)) == pytest.approx(float(loss), abs=1e-9)


def test_batch_dice_pools_the_batch():
    logits = torch.cat([_logits(P_FG), _logits([0.1, 0.1, 0.1, 0.7])])
    target = torch.tensor([LABELS, [0, 0, 0, 1]]).reshape(2, 1, 1, 4)
    pooled = dice_ce_loss(logits, target, batch_dice=True)
    ce = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9) + 3 * math.log(0.9) + math.log(0.7)) / 8
    dice = (2 * (1.5 + 0.7) + 1e-5) / ((1.8 + 1.0) + 3 + 1e-5)
    assert float(pooled) == pytest.approx(ce - dice, abs=1e-6)
    per_sample = dice_ce_loss(logits, target, batch_dice=False)
    d1, d2 = (3 + 1e-5) / (3.8 + 1e-5), (1.4 + 1e-5) / (2.0 + 1e-5)
    assert float(per_sample) == pytest.approx(ce - (d1 + d2) / 2, abs=1e-6)


def test_region_loss_by_hand():
    # one region, sigmoid outputs with the same probabilities: Dice over the region + BCE
    p = torch.tensor(P_FG, dtype=torch.float64)
    logits = torch.log(p / (1 - p)).reshape(1, 1, 1, 4)
    target = torch.tensor(LABELS, dtype=torch.float64).reshape(1, 1, 1, 4)
    loss = dice_bce_loss(logits, target)
    dice = (2 * 1.5 + 1e-5) / (1.8 + 2 + 1e-5)
    bce = -(math.log(0.9) + math.log(0.8) + math.log(0.6) + math.log(0.9)) / 4
    assert float(loss) == pytest.approx(bce - dice, abs=1e-6)


def test_region_encoding():
    layout = LabelLayout.from_dataset_labels({"background": 0, "whole": [1, 2], "core": [2]}, regions_class_order=[1, 2])
    target, mask = LabelEncoder(layout).encode(torch.tensor([0, 1, 2, -1]).reshape(1, 1, 4))
    assert mask is None
    assert target[0].tolist() == [[0, 1, 1, 0], [0, 0, 1, 0]]


def test_deep_supervision_weights():
    assert deep_supervision_weights(1) == [1.0]
    w = deep_supervision_weights(4)
    assert w == pytest.approx([1 / 1.75, 0.5 / 1.75, 0.25 / 1.75, 0.0])
    assert sum(w) == pytest.approx(1)


def test_segmentation_loss_sums_levels():
    layout = LabelLayout.from_dataset_labels({"background": 0, "fg": 1})
    rng = torch.Generator().manual_seed(0)
    outs = [torch.randn(2, 2, 8, 8, generator=rng), torch.randn(2, 2, 4, 4, generator=rng),
            torch.randn(2, 2, 2, 2, generator=rng)]
    segs = [torch.randint(0, 2, (2, 1, 8, 8), generator=rng), torch.randint(0, 2, (2, 1, 4, 4), generator=rng),
            torch.randint(0, 2, (2, 1, 2, 2), generator=rng)]
    total = SegmentationLoss(layout, n_outputs=3)(outs, segs)
    expected = (dice_ce_loss(outs[0], segs[0]) * 2 / 3 + dice_ce_loss(outs[1], segs[1]) / 3)
    assert float(total) == pytest.approx(float(expected), abs=1e-6)
