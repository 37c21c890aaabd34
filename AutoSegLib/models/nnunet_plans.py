"""Convert an nnU-Net v2 ``plans.json`` (+ its ``dataset.json``) into AutoSeg's `Plans`.

Facts about the reference's plans format (nnunetv2 2.x), as read from its files:

- ``configurations[<name>]`` may hold ``"inherits_from": <parent>``: the parent's entry (resolved
  recursively) updated with the child's keys. ``3d_cascade_fullres`` inherits from ``3d_fullres`` and adds
  ``previous_stage``; ``3d_lowres`` names its ``next_stage`` (a string or a list).
- ``architecture.network_class_name`` is a dotted class path ending in ``PlainConvUNet`` (its
  ``arch_kwargs`` hold ``n_conv_per_stage``) or ``ResidualEncoderUNet`` (``n_blocks_per_stage``); the
  other kwargs name torch classes by dotted path (``conv_op``, ``norm_op``, ``nonlin``, ``dropout_op``).
- ``normalization_schemes`` are class names (``ZScoreNormalization``, ``CTNormalization``, ...).
- ``resampling_fn_{data,seg,probabilities}`` name a function, ``*_kwargs`` its ``order``, ``order_z``,
  ``force_separate_z`` (and optionally ``separate_z_anisotropy_threshold``).
- Spatial entries are in the transposed axis order, as AutoSeg's plans are.

Anything AutoSeg cannot reproduce exactly raises `AutoSegError` naming the file, the configuration and
the unsupported value.
"""
from __future__ import annotations

import copy
from dataclasses import replace
from pathlib import Path
from typing import Dict, List, Optional, Tuple

from AutoSegLib.errors import AutoSegError
from AutoSegLib.planning.plans import ConfigurationPlan, NetworkTopology, Plans, ResamplingSettings

__all__ = ["resolve_configuration", "convert_configuration", "convert_plans", "NORMALIZATION_NAMES",
           "ARCHITECTURE_NAMES"]

NORMALIZATION_NAMES = {
    "ZScoreNormalization": "zscore",
    "CTNormalization": "ct",
    "NoNormalization": "none",
    "RescaleTo01Normalization": "rescale_0_1",
    "RGBTo01Normalization": "rgb_to_0_1",
}
ARCHITECTURE_NAMES = {"PlainConvUNet": "plain_unet", "ResidualEncoderUNet": "residual_encoder_unet"}
_SUPPORTED_RESAMPLING = "resample_data_or_seg_to_shape"


def resolve_configuration(plans: dict, name: str, source: str = "plans.json") -> dict:
    """The configuration entry ``name`` with ``inherits_from`` resolved (parent keys, child wins).

    Raises
    ------
    AutoSegError
        Unknown configuration or circular inheritance.
    """
    configurations = plans.get("configurations") or {}
    chain: List[str] = []
    current: Optional[str] = name
    while current is not None:
        if current not in configurations:
            what = "configuration" if current == name else f"parent configuration (inherits_from of {chain[-1]!r})"
            raise AutoSegError(f"{source}: {what} {current!r} not found; the plans define {sorted(configurations)}.")
        if current in chain:
            raise AutoSegError(f"{source}: circular 'inherits_from' chain {' -> '.join(chain + [current])}.")
        chain.append(current)
        current = configurations[current].get("inherits_from")
    resolved: dict = {}
    for entry in reversed(chain):
        resolved.update(copy.deepcopy(configurations[entry]))
    resolved.pop("inherits_from", None)
    return resolved


def _class_name(dotted) -> Optional[str]:
    return None if dotted is None else str(dotted).rsplit(".", 1)[-1]


def _per_stage(value, n: int, what: str, where: str) -> Tuple:
    if isinstance(value, int):
        return tuple([value] * n)
    if not isinstance(value, (list, tuple)) or len(value) != n:
        raise AutoSegError(f"{where}: {what} must have {n} entries (one per stage), found {value!r}.")
    return tuple(value)


def _per_axis(value, n_stages: int, ndim: int, what: str, where: str) -> Tuple[Tuple[int, ...], ...]:
    out = []
    for v in _per_stage(value, n_stages, what, where):
        v = [v] * ndim if isinstance(v, int) else list(v)
        if len(v) != ndim:
            raise AutoSegError(f"{where}: {what} entries must have {ndim} values each, found {value!r}.")
        out.append(tuple(int(x) for x in v))
    return tuple(out)


def _convert_topology(arch: dict, ndim: int, where: str) -> NetworkTopology:
    cls = _class_name(arch.get("network_class_name"))
    if cls not in ARCHITECTURE_NAMES:
        raise AutoSegError(f"{where}: network class {arch.get('network_class_name')!r} is not supported; AutoSeg runs "
                           f"{sorted(ARCHITECTURE_NAMES)} (the reference's plain and residual-encoder U-Nets).")
    kw = dict(arch.get("arch_kwargs") or {})
    problems = []
    conv = _class_name(kw.get("conv_op"))
    if conv != f"Conv{ndim}d":
        problems.append(f"conv_op {kw.get('conv_op')!r} (expected torch Conv{ndim}d for a {ndim}D patch)")
    norm = _class_name(kw.get("norm_op"))
    norm_kwargs = kw.get("norm_op_kwargs") or {}
    if norm != f"InstanceNorm{ndim}d":
        problems.append(f"norm_op {kw.get('norm_op')!r} (only InstanceNorm{ndim}d)")
    if abs(float(norm_kwargs.get("eps", 1e-5)) - 1e-5) > 1e-12 or not norm_kwargs.get("affine", False):
        problems.append(f"norm_op_kwargs {norm_kwargs!r} (only eps 1e-5, affine true)")
    if kw.get("dropout_op") is not None and float((kw.get("dropout_op_kwargs") or {}).get("p", 0.0)) != 0.0:
        problems.append(f"dropout_op {kw.get('dropout_op')!r} with {kw.get('dropout_op_kwargs')!r}")
    nonlin_kwargs = dict(kw.get("nonlin_kwargs") or {})
    nonlin_kwargs.pop("inplace", None)
    if _class_name(kw.get("nonlin")) != "LeakyReLU" or abs(float(nonlin_kwargs.pop("negative_slope", 0.01)) - 0.01) > 1e-12 \
            or nonlin_kwargs:
        problems.append(f"nonlin {kw.get('nonlin')!r} with {kw.get('nonlin_kwargs')!r} (only LeakyReLU, slope 0.01)")
    if cls == "ResidualEncoderUNet":
        if _class_name(kw.get("block")) not in (None, "BasicBlockD"):
            problems.append(f"block {kw.get('block')!r} (only BasicBlockD)")
        if kw.get("bottleneck_channels") is not None:
            problems.append(f"bottleneck_channels {kw.get('bottleneck_channels')!r}")
    known = {"n_stages", "features_per_stage", "conv_op", "kernel_sizes", "strides", "n_conv_per_stage",
             "n_blocks_per_stage", "n_conv_per_stage_decoder", "conv_bias", "norm_op", "norm_op_kwargs",
             "dropout_op", "dropout_op_kwargs", "nonlin", "nonlin_kwargs", "deep_supervision", "block",
             "bottleneck_channels", "stem_channels"}
    unknown = sorted(set(kw) - known)
    if unknown:
        problems.append(f"arch_kwargs {unknown}")
    if problems:
        raise AutoSegError(f"{where}: not supported by AutoSeg's networks: " + "; ".join(problems) + ".")

    n = int(kw["n_stages"])
    features = tuple(int(f) for f in _per_stage(kw["features_per_stage"], n, "features_per_stage", where))
    if cls == "ResidualEncoderUNet":
        stem = kw.get("stem_channels")
        if stem is not None and int(stem) != features[0]:
            raise AutoSegError(f"{where}: stem_channels {stem} differs from features_per_stage[0] {features[0]}; "
                               f"not supported by AutoSeg's residual-encoder U-Net.")
    per_stage_key = "n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"
    if per_stage_key not in kw:
        raise AutoSegError(f"{where}: arch_kwargs has no {per_stage_key!r} (required by {cls}).")
    return NetworkTopology(
        architecture=ARCHITECTURE_NAMES[cls],
        n_stages=n,
        features_per_stage=features,
        kernel_sizes=_per_axis(kw["kernel_sizes"], n, ndim, "kernel_sizes", where),
        strides=_per_axis(kw["strides"], n, ndim, "strides", where),
        n_conv_per_stage=tuple(int(v) for v in _per_stage(kw[per_stage_key], n, per_stage_key, where)),
        n_conv_per_stage_decoder=tuple(int(v) for v in _per_stage(kw["n_conv_per_stage_decoder"], n - 1,
                                                                  "n_conv_per_stage_decoder", where)),
        conv_bias=bool(kw.get("conv_bias", False)),
    )


def _legacy_architecture(conf: dict, where: str) -> dict:
    """The ``architecture`` entry of plans written before nnU-Net v2.2 (``UNet_class_name``,
    ``UNet_base_num_features``, ``n_conv_per_stage_encoder``, ...): same network, older key names.
    Features double per stage from the base, capped at ``unet_max_num_features``; InstanceNorm, LeakyReLU,
    conv bias, as those versions built them."""
    needed = ("UNet_class_name", "UNet_base_num_features", "n_conv_per_stage_encoder", "n_conv_per_stage_decoder",
              "pool_op_kernel_sizes", "conv_kernel_sizes", "unet_max_num_features")
    missing = [k for k in needed if k not in conf]
    if missing:
        raise AutoSegError(f"{where}: no 'architecture' entry, and not the older format either (missing {missing}).")
    cls = conf["UNet_class_name"]
    if cls not in ARCHITECTURE_NAMES:
        raise AutoSegError(f"{where}: network class {cls!r} is not supported; AutoSeg runs {sorted(ARCHITECTURE_NAMES)}.")
    n = len(conf["n_conv_per_stage_encoder"])
    ndim = len(conf["patch_size"])
    base, cap = int(conf["UNet_base_num_features"]), int(conf["unet_max_num_features"])
    return {"network_class_name": cls, "arch_kwargs": {
        "n_stages": n, "features_per_stage": [min(base * 2 ** i, cap) for i in range(n)],
        "conv_op": f"torch.nn.modules.conv.Conv{ndim}d", "kernel_sizes": conf["conv_kernel_sizes"],
        "strides": conf["pool_op_kernel_sizes"],
        ("n_conv_per_stage" if cls == "PlainConvUNet" else "n_blocks_per_stage"): conf["n_conv_per_stage_encoder"],
        "n_conv_per_stage_decoder": conf["n_conv_per_stage_decoder"], "conv_bias": True,
        "norm_op": f"torch.nn.modules.instancenorm.InstanceNorm{ndim}d", "norm_op_kwargs": {"eps": 1e-05, "affine": True},
        "dropout_op": None, "dropout_op_kwargs": None, "nonlin": "torch.nn.LeakyReLU", "nonlin_kwargs": {"inplace": True}}}


def _convert_resampling(conf: dict, where: str) -> ResamplingSettings:
    orders, order_z, force, threshold = {}, set(), set(), set()
    for kind in ("data", "seg", "probabilities"):
        fn = conf.get(f"resampling_fn_{kind}")
        if _class_name(fn) != _SUPPORTED_RESAMPLING:
            raise AutoSegError(f"{where}: resampling_fn_{kind} {fn!r} is not supported; AutoSeg reproduces "
                               f"{_SUPPORTED_RESAMPLING!r} only.")
        kw = dict(conf.get(f"resampling_fn_{kind}_kwargs") or {})
        kw.pop("is_seg", None)
        orders[kind] = int(kw.pop("order", 3 if kind == "data" else 1))
        order_z.add(int(kw.pop("order_z", 0)))
        force.add(kw.pop("force_separate_z", None))
        threshold.add(float(kw.pop("separate_z_anisotropy_threshold", 3.0)))
        if kw:
            raise AutoSegError(f"{where}: resampling_fn_{kind}_kwargs has unsupported keys {sorted(kw)}.")
    for what, values in (("order_z", order_z), ("force_separate_z", force), ("separate_z_anisotropy_threshold", threshold)):
        if len(values) > 1:
            raise AutoSegError(f"{where}: {what} differs between data, segmentation and probability resampling "
                               f"({sorted(values, key=str)}); AutoSeg uses one value for all three.")
    return ResamplingSettings(order_data=orders["data"], order_seg=orders["seg"],
                              order_probabilities=orders["probabilities"], order_z=order_z.pop(),
                              anisotropy_threshold=threshold.pop(), force_separate_z=force.pop())


def convert_configuration(plans: dict, name: str, num_channels: int, source: str = "plans.json") -> ConfigurationPlan:
    """One reference configuration as an AutoSeg `ConfigurationPlan` (inheritance resolved).

    Parameters
    ----------
    plans : dict
        The reference plans.json content.
    name : str
        Configuration name ('2d', '3d_fullres', '3d_lowres', '3d_cascade_fullres', or a custom one).
    num_channels : int
        Input image channels (dataset.json), to check the per-channel lists.
    """
    conf = resolve_configuration(plans, name, source)
    where = f"{source}: configuration {name!r}"
    if "architecture" not in conf:
        conf["architecture"] = _legacy_architecture(conf, where)
    patch = tuple(int(p) for p in conf["patch_size"])
    ndim = len(patch)
    schemes = []
    for s in conf["normalization_schemes"]:
        cls = _class_name(s)
        if cls not in NORMALIZATION_NAMES:
            raise AutoSegError(f"{where}: normalization scheme {s!r} is not supported; AutoSeg has "
                               f"{sorted(NORMALIZATION_NAMES)}.")
        schemes.append(NORMALIZATION_NAMES[cls])
    use_mask = tuple(bool(v) for v in conf["use_mask_for_norm"])
    if len(schemes) != num_channels or len(use_mask) != num_channels:
        raise AutoSegError(f"{where}: normalization_schemes / use_mask_for_norm have {len(schemes)} / {len(use_mask)} "
                           f"entries, but dataset.json declares {num_channels} channel(s).")
    preprocessor = conf.get("preprocessor_name", "DefaultPreprocessor")
    if preprocessor != "DefaultPreprocessor":
        raise AutoSegError(f"{where}: preprocessor {preprocessor!r} is not supported (only DefaultPreprocessor).")
    next_stage = conf.get("next_stage")
    if isinstance(next_stage, str):
        next_stage = [next_stage]
    return ConfigurationPlan(
        name=name,
        spacing=tuple(float(s) for s in conf["spacing"]),
        patch_size=patch,
        batch_size=int(conf.get("batch_size", 2)),
        median_image_size=tuple(float(s) for s in conf.get("median_image_size_in_voxels", patch)),
        normalization=tuple(schemes),
        use_mask_for_norm=use_mask,
        network=_convert_topology(conf["architecture"], ndim, where),
        resampling=_convert_resampling(conf, where),
        batch_dice=bool(conf.get("batch_dice", False)),
        data_identifier=str(conf.get("data_identifier", "")),
        previous_stage=conf.get("previous_stage"),
        next_stages=tuple(next_stage or ()),
    )


def convert_plans(plans: dict, dataset: dict, configurations: "List[str] | None" = None,
                  source: "str | Path" = "plans.json") -> Plans:
    """Convert reference plans + dataset.json into AutoSeg `Plans`.

    Parameters
    ----------
    plans, dataset : dict
        Contents of the reference's plans.json and dataset.json.
    configurations : list of str, optional
        Which configurations to convert (default: all). A cascade stage pulls in its previous stage.

    Raises
    ------
    AutoSegError
        Anything the reference model uses that AutoSeg cannot reproduce, named.
    """
    source = str(source)
    channel_names = dataset.get("channel_names", dataset.get("modality"))
    if not isinstance(channel_names, dict) or not channel_names:
        raise AutoSegError(f"{source}: dataset.json has no 'channel_names' (like {{\"0\": \"CT\"}}).")
    channel_names = {str(k): str(v) for k, v in channel_names.items()}
    if "labels" not in dataset:
        raise AutoSegError(f"{source}: dataset.json has no 'labels'.")
    wanted = list(configurations) if configurations else list((plans.get("configurations") or {}).keys())
    i = 0
    while i < len(wanted):  # a cascade stage needs its previous stage
        prev = resolve_configuration(plans, wanted[i], source).get("previous_stage")
        if prev and prev not in wanted:
            wanted.append(prev)
        i += 1
    confs: Dict[str, ConfigurationPlan] = {}
    for name in wanted:
        confs[name] = convert_configuration(plans, name, len(channel_names), source)
    # a next_stage that is not converted would point nowhere
    confs = {n: replace(c, next_stages=tuple(s for s in c.next_stages if s in confs)) for n, c in confs.items()}
    intensity = plans.get("foreground_intensity_properties_per_channel",
                          plans.get("foreground_intensity_properties_by_modality", {}))
    rco = dataset.get("regions_class_order")
    plans_out = Plans(
        dataset_name=str(plans.get("dataset_name", dataset.get("name", "nnUNet_model"))),
        channel_names=channel_names,
        labels=dict(dataset["labels"]),
        transpose_forward=tuple(int(a) for a in plans["transpose_forward"]),
        transpose_backward=tuple(int(a) for a in plans["transpose_backward"]),
        original_median_spacing=tuple(float(s) for s in plans.get("original_median_spacing_after_transp", ())),
        original_median_shape=tuple(float(s) for s in plans.get("original_median_shape_after_transp", ())),
        intensity_properties={str(k): {kk: float(vv) for kk, vv in v.items()} for k, v in intensity.items()},
        configurations=confs,
        file_ending=str(dataset.get("file_ending", ".nii.gz")),
        regions_class_order=tuple(int(v) for v in rco) if rco is not None else None,
    )
    plans_out.label_layout()  # validates labels / regions now, naming dataset.json
    for name, conf in confs.items():
        if "ct" in conf.normalization:
            for ch, scheme in enumerate(conf.normalization):
                if scheme == "ct" and str(ch) not in plans_out.intensity_properties:
                    raise AutoSegError(f"{source}: configuration {name!r} uses CT normalisation for channel {ch} but "
                                       f"the plans have no foreground intensity properties for it.")
    return plans_out
