"""Intensity normalisation schemes, by name (one per input channel, chosen by the planner).

- ``ct``: clip to the dataset's foreground [0.5, 99.5] percentiles, then z-score with the dataset's
  foreground mean and std (``intensity_properties`` of that channel).
- ``zscore``: z-score per image; with ``use_mask`` only over the non-zero region (label >= 0 after
  cropping) and the outside set to 0.
- ``none``: unchanged (float32).  ``rescale_0_1``: min-max to [0, 1].  ``rgb_to_0_1``: divide by 255.

The reference implementation's class names (``ZScoreNormalization``, ...) are accepted as aliases so that
imported nnU-Net plans work.
"""
from __future__ import annotations

from typing import Callable, Dict, Optional

import numpy as np

from AutoSegLib.errors import AutoSegError

_EPS = 1e-8


def _ct(image: np.ndarray, mask: Optional[np.ndarray], props: Optional[dict]) -> np.ndarray:
    if not props:
        raise AutoSegError("CT normalisation needs the dataset's foreground intensity properties "
                           "(mean, std, percentile_00_5, percentile_99_5) in plans.json; re-run `autoseg plan`.")
    try:
        lo, hi = float(props["percentile_00_5"]), float(props["percentile_99_5"])
        mean, std = float(props["mean"]), float(props["std"])
    except KeyError as exc:
        raise AutoSegError(f"CT normalisation: intensity property {exc} missing from plans.json; "
                           f"re-run `autoseg plan`.") from None
    np.clip(image, lo, hi, out=image)
    image -= np.float32(mean)
    image /= np.float32(max(std, _EPS))
    return image


def _zscore(image: np.ndarray, mask: Optional[np.ndarray], props: Optional[dict]) -> np.ndarray:
    if mask is not None and not mask.all():
        if not mask.any():          # an all-zero image: nothing to normalise (and no NaN from empty stats)
            image[...] = 0.0
            return image
        values = image[mask]
        mean = values.mean(dtype=np.float64)
        std = values.std(dtype=np.float64)
        image -= np.float32(mean)
        image /= np.float32(max(std, _EPS))
        image[~mask] = 0.0
        return image
    mean = image.mean(dtype=np.float64)
    std = image.std(dtype=np.float64)
    image -= np.float32(mean)
    image /= np.float32(max(std, _EPS))
    return image


def _none(image: np.ndarray, mask, props) -> np.ndarray:
    return image


def _rescale_0_1(image: np.ndarray, mask, props) -> np.ndarray:
    image -= image.min()
    image /= max(float(image.max()), _EPS)
    return image


def _rgb_to_0_1(image: np.ndarray, mask, props) -> np.ndarray:
    lo, hi = float(image.min()), float(image.max())
    if lo < 0 or hi > 255:
        raise AutoSegError(f"'rgb_to_0_1' normalisation expects values in [0, 255] (8-bit colour), found "
                           f"[{lo:g}, {hi:g}]. Use 'zscore' for this channel (change its name in dataset.json).")
    image /= np.float32(255.0)
    return image


NORMALIZERS: Dict[str, Callable] = {
    "ct": _ct,
    "zscore": _zscore,
    "none": _none,
    "rescale_0_1": _rescale_0_1,
    "rgb_to_0_1": _rgb_to_0_1,
}

ALIASES = {
    "CTNormalization": "ct",
    "ZScoreNormalization": "zscore",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale_0_1",
    "RGBTo01Normalization": "rgb_to_0_1",
}


def get_normalizer(name: str) -> Callable:
    """The normalisation function registered under ``name`` (or a reference alias).

    Raises AutoSegError with a "did you mean" hint for an unknown name.
    """
    key = ALIASES.get(name, name)
    if key in NORMALIZERS:
        return NORMALIZERS[key]
    from difflib import get_close_matches

    close = get_close_matches(str(name), list(NORMALIZERS) + list(ALIASES), n=1)
    hint = f" Did you mean {close[0]!r}?" if close else ""
    raise AutoSegError(f"unknown normalisation scheme {name!r}; known: {sorted(NORMALIZERS)}.{hint}")


def normalize_image(image: np.ndarray, scheme: str, use_mask: bool = False, mask: Optional[np.ndarray] = None,
                    intensity_properties: Optional[dict] = None) -> np.ndarray:
    """Normalise one channel.

    Parameters
    ----------
    image : ndarray, shape (*spatial); converted to float32 (a copy only when it is not float32 already;
        a float32 input is modified in place)
    scheme : str, a key of ``NORMALIZERS`` (or a reference alias)
    use_mask : bool, restrict z-score statistics to ``mask`` and zero the outside
    mask : ndarray of bool, shape (*spatial), the non-zero region (needed when ``use_mask``)
    intensity_properties : dict, the channel's dataset foreground statistics (for ``ct``)

    Returns
    -------
    ndarray, float32, shape (*spatial)
    """
    fn = get_normalizer(scheme)
    image = image.astype(np.float32, copy=False)
    return fn(image, mask if use_mask else None, intensity_properties)
