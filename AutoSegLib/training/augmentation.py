"""The recipe's data augmentation, built from batchgenerators transforms (numpy only, no torch).

Training pipeline (probabilities per sample; recipe.md):

1. spatial: rotation (+-30 deg in 3D, p 0.2; in-plane only and +-180 deg for strongly anisotropic 3D
   patches, which are augmented as 2D slices), scaling 0.7-1.4 (p 0.2); image cubic, label linear per
   class; the larger sampled patch is centre-cropped to the network's patch;
2. Gaussian noise (variance 0-0.1, p 0.1); Gaussian blur (sigma 0.5-1, p 0.2, half the channels);
3. brightness x0.75-1.25 (p 0.15); contrast (p 0.15);
4. low-resolution simulation (zoom 0.5-1, p 0.25, half the channels; not along axis 0 for 2D-per-slice);
5. gamma 0.7-1.5 on the inverted image (p 0.1) and on the image (p 0.3), statistics retained;
6. mirroring on each allowed axis (p 0.5 each);
7. a cascade stage only: its previous-stage label map (label channel 1, moved like a label so far) becomes
   one-hot image channels, randomly perturbed (`cascade_augmentation`).

Validation batches get no augmentation. Labels keep -1 (outside the non-zero region); the trainer reads
it as background. Randomness comes from numpy's global generator, which each worker process seeds.
"""
from __future__ import annotations

from typing import Optional, Sequence

import numpy as np


class _To2D:
    """(B, C, X, Y, Z) -> (B, C*X, Y, Z): lets 2D spatial transforms work slice by slice."""

    def __call__(self, **d):
        for key in ("data", "seg"):
            a = d[key]
            d[f"_{key}_shape"] = a.shape
            d[key] = a.reshape(a.shape[0], a.shape[1] * a.shape[2], *a.shape[3:])
        return d


class _To3D:
    def __call__(self, **d):
        for key in ("data", "seg"):
            b, c, x = d.pop(f"_{key}_shape")[:3]
            a = d[key]
            d[key] = a.reshape(b, c, x, *a.shape[2:])
        return d


class Compose:
    """Apply transforms in order to a dict of arrays (``data``, ``seg``)."""

    def __init__(self, transforms):
        self.transforms = list(transforms)

    def __call__(self, **d):
        for t in self.transforms:
            d = t(**d)
        return d


def training_transforms(patch_size: Sequence[int], max_angle: float, dummy_2d: bool,
                        mirror_axes: Sequence[int], cascade_values: Optional[Sequence[int]] = None) -> Compose:
    """The training augmentation pipeline for the network's ``patch_size`` (see module docstring).

    The input batch (``data`` (B, C, *larger patch) float32, ``seg`` (B, 1, *larger patch) float32) is
    expected to be the augmentation patch of `sampling.augmentation_patch_size`. For a cascade stage
    (``cascade_values``: `models.folder.cascade_label_values`, possibly empty) ``seg`` is (B, 2, ...) with
    the previous stage's map in channel 1, and the output ``data`` has ``C + len(cascade_values)``
    channels, ``seg`` one."""
    from batchgenerators.transforms.color_transforms import (BrightnessMultiplicativeTransform,
                                                             ContrastAugmentationTransform, GammaTransform)
    from batchgenerators.transforms.noise_transforms import GaussianBlurTransform, GaussianNoiseTransform
    from batchgenerators.transforms.resample_transforms import SimulateLowResolutionTransform
    from batchgenerators.transforms.spatial_transforms import MirrorTransform, SpatialTransform

    patch_size = tuple(int(p) for p in patch_size)
    spatial_patch = patch_size[1:] if dummy_2d else patch_size
    in_plane = (-max_angle, max_angle)
    no_rot = (0.0, 0.0)
    if len(spatial_patch) == 2:
        angles = dict(angle_x=in_plane, angle_y=no_rot, angle_z=no_rot)
    else:
        angles = dict(angle_x=in_plane, angle_y=in_plane, angle_z=in_plane)
    transforms = []
    if dummy_2d:
        transforms.append(_To2D())
    transforms.append(SpatialTransform(
        spatial_patch, patch_center_dist_from_border=None, do_elastic_deform=False,
        do_rotation=True, **angles, p_rot_per_axis=1, do_scale=True, scale=(0.7, 1.4),
        border_mode_data="constant", border_cval_data=0, order_data=3,
        border_mode_seg="constant", border_cval_seg=-1, order_seg=1, random_crop=False,
        p_el_per_sample=0, p_scale_per_sample=0.2, p_rot_per_sample=0.2,
        independent_scale_for_each_axis=False))
    if dummy_2d:
        transforms.append(_To3D())
    transforms += [
        GaussianNoiseTransform(p_per_sample=0.1),
        GaussianBlurTransform((0.5, 1.0), different_sigma_per_channel=True, p_per_sample=0.2, p_per_channel=0.5),
        BrightnessMultiplicativeTransform(multiplier_range=(0.75, 1.25), p_per_sample=0.15),
        ContrastAugmentationTransform(p_per_sample=0.15),
        SimulateLowResolutionTransform(zoom_range=(0.5, 1), per_channel=True, p_per_channel=0.5,
                                       order_downsample=0, order_upsample=3, p_per_sample=0.25,
                                       ignore_axes=(0,) if dummy_2d else None),
        GammaTransform((0.7, 1.5), invert_image=True, per_channel=True, retain_stats=True, p_per_sample=0.1),
        GammaTransform((0.7, 1.5), invert_image=False, per_channel=True, retain_stats=True, p_per_sample=0.3),
    ]
    if mirror_axes:
        transforms.append(MirrorTransform(tuple(mirror_axes)))
    if cascade_values is not None:
        from AutoSegLib.training.cascade_augmentation import cascade_transforms
        transforms += cascade_transforms(cascade_values)
    return Compose(transforms)


def augment_batch(transforms: Compose, data: np.ndarray, seg: np.ndarray):
    """Run ``transforms`` on one batch; returns ``(data float32, seg int16)``."""
    out = transforms(data=data.astype(np.float32, copy=False), seg=seg.astype(np.float32))
    d = np.ascontiguousarray(out["data"], dtype=np.float32)
    s = np.ascontiguousarray(np.rint(out["seg"]), dtype=np.int16)
    return d, s
