"""Patch sampling with foreground oversampling, from memory-mapped preprocessed cases.

A batch of ``B`` samples is drawn as the recipe says: the last ``round(B * oversample)`` samples are
*forced* to contain foreground (a random class among those the case has, at a random stored location of
it, placed at the patch centre as far as the image allows); the others are random positions. Patches are
larger than the network's patch when spatial augmentation follows (`augmentation_patch_size`: rotation
and scaling are applied to the larger patch, then it is cropped to the final size, so that the corners
never show padding introduced by the rotation). Where a patch leaves the image, the image is padded with
0 and the label with -1 (outside the non-zero region; read as background).

For a cascade stage (the store has a ``previous_folder``) the previous stage's label map is cropped and
padded exactly like the label, as a second label channel: ``seg[:, 1]``. Augmentation transforms it like a
label and then turns it into one-hot image channels (`cascade_augmentation`).

A 2D configuration over 3D data draws a slice along axis 0 first (the slice of the chosen foreground
location when forced).
"""
from __future__ import annotations

import math
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from AutoSegLib.training.data import CaseStore, class_locations

ANISOTROPY_THRESHOLD = 3.0


def rotation_settings(patch_size: Sequence[int]) -> Tuple[float, bool, Tuple[int, ...]]:
    """Rotation range, 2D-per-slice flag and mirror axes for a patch (recipe + reference rules).

    Returns
    -------
    max_angle : float
        Rotations are drawn in ``[-max_angle, max_angle]`` radians: 30 degrees for 3D patches, 180 for
        strongly anisotropic 3D patches (rotated in-plane only) and for near-square 2D patches, 15 for
        elongated 2D patches (aspect > 1.5).
    dummy_2d : bool
        3D patch whose axis 0 is more than 3x shorter than the longest: spatial augmentation per slice.
    mirror_axes : tuple of int
        All spatial axes.
    """
    p = [int(x) for x in patch_size]
    if len(p) == 2:
        angle = math.radians(15) if max(p) / min(p) > 1.5 else math.pi
        return angle, False, (0, 1)
    dummy_2d = max(p) / p[0] > ANISOTROPY_THRESHOLD
    return (math.pi if dummy_2d else math.radians(30)), dummy_2d, (0, 1, 2)


def _rotated_extent(a: float, b: float, max_angle: float) -> Tuple[float, float]:
    """Bounding box of an ``a x b`` rectangle rotated by any angle in ``[-max_angle, max_angle]``."""
    angles = np.linspace(0, min(max_angle, math.pi / 2), 91)
    c, s = np.abs(np.cos(angles)), np.abs(np.sin(angles))
    return float(np.max(a * c + b * s)), float(np.max(a * s + b * c))


def augmentation_patch_size(patch_size: Sequence[int], max_angle: float, dummy_2d: bool,
                            min_scale: float = 0.85) -> Tuple[int, ...]:
    """The larger patch to sample before spatial augmentation.

    Every plane that is rotated gets the bounding box of the rotated patch, then everything is divided by
    ``min_scale`` (zooming out shows more of the image). With ``dummy_2d`` axis 0 is left as is.
    """
    ext = [float(x) for x in patch_size]
    planes = [(0, 1)] if len(ext) == 2 else ([(1, 2)] if dummy_2d else [(1, 2), (0, 2), (0, 1)])
    for i, j in planes:
        ext[i], ext[j] = _rotated_extent(ext[i], ext[j], max_angle)
    out = [int(math.ceil(e / min_scale - 1e-6)) for e in ext]
    if dummy_2d:
        out[0] = int(patch_size[0])
    return tuple(max(o, int(p)) for o, p in zip(out, patch_size))


def forced_foreground(batch_size: int, oversample: float) -> List[bool]:
    """Which samples of a batch must contain foreground: the last ``round(B * oversample)``."""
    n_random = int(round(batch_size * (1 - oversample)))
    return [i >= n_random for i in range(batch_size)]


class PatchSampler:
    """Draws training/validation batches of (image, label) patches.

    Parameters
    ----------
    store : CaseStore
        The cases to sample from.
    patch_size : sequence of int
        Size of the sampled patch (the augmentation patch when spatial augmentation follows).
    final_patch_size : sequence of int
        The network's patch size; the difference to ``patch_size`` may fall outside the image.
    oversample : float
        Fraction of forced-foreground samples.
    box_margin : sequence of float, optional
        Voxels per axis: every patch is centred at a uniformly drawn voxel of the case's foreground box (from
        its stored foreground locations) grown by this margin, instead of the forced/random rule (a
        coarse-to-fine pair's fine stage; a case without foreground gets a random position).
    """

    def __init__(self, store: CaseStore, patch_size: Sequence[int], final_patch_size: Sequence[int],
                 oversample: float = 0.33, box_margin: Optional[Sequence[float]] = None):
        self.store = store
        self.patch_size = tuple(int(p) for p in patch_size)
        self.final_patch_size = tuple(int(p) for p in final_patch_size)
        self.oversample = float(oversample)
        self.box_margin = tuple(float(m) for m in box_margin) if box_margin else None
        self._locs: Dict[str, Dict[str, np.ndarray]] = {}

    def _locations(self, case: str, props: dict, ndim: int) -> Dict[str, np.ndarray]:
        if case not in self._locs:
            self._locs[case] = class_locations(props, ndim)
        return self._locs[case]

    def sample_batch(self, rng: np.random.Generator, batch_size: int, forced: Optional[Sequence[bool]] = None
                     ) -> Tuple[np.ndarray, np.ndarray, List[str]]:
        """One batch.

        Parameters
        ----------
        rng : numpy Generator
        batch_size : int
        forced : sequence of bool, optional
            Per sample, force foreground (default `forced_foreground(batch_size, oversample)`).

        Returns
        -------
        data : ndarray (B, C, *patch_size) float32
        seg : ndarray (B, S, *patch_size) int16, -1 outside the image / non-zero region; S = 1, or 2 for a
            cascade stage (channel 1: the previous stage's label map)
        cases : list of str
        """
        forced = forced_foreground(batch_size, self.oversample) if forced is None else list(forced)
        datas, segs, cases = [], [], []
        for i in range(batch_size):
            case = self.store.cases[int(rng.integers(len(self.store.cases)))]
            d, s = self.sample_case(case, rng, bool(forced[i]))
            datas.append(d)
            segs.append(s)
            cases.append(case)
        return np.stack(datas), np.stack(segs), cases

    def sample_case(self, case: str, rng: np.random.Generator, force_fg: bool) -> Tuple[np.ndarray, np.ndarray]:
        """One patch of ``case``: image (C, *patch) float32 and label (S, *patch) int16 (see `sample_batch`)."""
        image, seg, props = self.store.load(case)
        previous = self.store.load_previous(case) if self.store.previous_folder is not None else None
        ndim_data = image.ndim - 1
        ndim_patch = len(self.patch_size)
        locs = self._locations(case, props, ndim_data)
        chosen = None
        if self.box_margin is not None and ndim_patch == ndim_data:
            if locs:
                chosen = box_centre(np.concatenate(list(locs.values())), self.box_margin, image.shape[1:], rng)
            return crop_with_padding(image, seg, self.patch_size, self.final_patch_size, rng, chosen, previous)
        if force_fg and locs:
            key = sorted(locs)[int(rng.integers(len(locs)))]
            chosen = locs[key][int(rng.integers(len(locs[key])))]
        if ndim_patch == ndim_data - 1:  # 2D patches from 3D data: choose a slice
            if chosen is not None:
                z = int(chosen[0])
                chosen = chosen[1:]
            else:
                z = int(rng.integers(image.shape[1]))
            image, seg = image[:, z], seg[:, z]
            previous = previous[:, z] if previous is not None else None
        return crop_with_padding(image, seg, self.patch_size, self.final_patch_size, rng, chosen, previous)


def box_centre(locations: np.ndarray, margin: Sequence[float], shape: Sequence[int],
               rng: np.random.Generator) -> Tuple[int, ...]:
    """A uniformly drawn voxel of the bounding box of ``locations`` (N, ndim) grown by ``ceil(margin)`` voxels
    per axis, clipped to ``shape``."""
    from AutoSegLib.inference.located import grow_box
    box = tuple((int(a), int(b) + 1) for a, b in zip(locations.min(0), locations.max(0)))
    return tuple(int(rng.integers(lo, hi)) for lo, hi in grow_box(box, margin, shape))


def crop_with_padding(image: np.ndarray, seg: np.ndarray, patch_size: Sequence[int],
                      final_patch_size: Sequence[int], rng: np.random.Generator,
                      centre: Optional[Sequence[int]] = None, previous: Optional[np.ndarray] = None
                      ) -> Tuple[np.ndarray, np.ndarray]:
    """Crop a patch (padding where it leaves the image).

    The patch's lower corner is drawn uniformly such that at most half of the extra context
    (``patch_size - final_patch_size``, or what a small image lacks) lies outside on each side; with
    ``centre`` the patch is centred on that voxel, moved inside those same bounds.

    ``previous`` (1, *spatial), a cascade stage's previous-stage label map, is cropped and padded like
    ``seg`` and returned as its second channel (it draws nothing from ``rng``).

    Returns image (C, *patch) float32 (0 outside) and seg (1, *patch), or (2, *patch) with ``previous``,
    int16 (-1 outside).
    """
    shape = image.shape[1:]
    nd = len(shape)
    lbs, ubs = [], []
    for d in range(nd):
        need = max(int(patch_size[d]) - int(final_patch_size[d]), 0)
        if need + shape[d] < patch_size[d]:
            need = int(patch_size[d]) - shape[d]
        lbs.append(-(need // 2))
        ubs.append(shape[d] + need // 2 + need % 2 - int(patch_size[d]))
    if centre is None:
        lo = [int(rng.integers(lbs[d], ubs[d] + 1)) for d in range(nd)]
    else:
        lo = [min(max(int(centre[d]) - int(patch_size[d]) // 2, lbs[d]), ubs[d]) for d in range(nd)]
    src, dst = [], []
    for d in range(nd):
        a, b = max(lo[d], 0), min(lo[d] + int(patch_size[d]), shape[d])
        src.append(slice(a, b))
        dst.append(slice(a - lo[d], b - lo[d]))
    out_img = np.zeros((image.shape[0], *patch_size), np.float32)
    out_seg = np.full((1 if previous is None else 2, *patch_size), -1, np.int16)
    out_img[(slice(None), *dst)] = image[(slice(None), *src)]
    out_seg[(slice(0, 1), *dst)] = seg[(slice(0, 1), *src)]
    if previous is not None:
        out_seg[(slice(1, 2), *dst)] = previous[(slice(0, 1), *src)]
    return out_img, out_seg
