"""Plans: the typed, frozen record of every rule-derived parameter, saved as plans.json.

One `Plans` per dataset, with one `ConfigurationPlan` per configuration ('2d', '3d_fullres',
'3d_lowres', '3d_cascade_fullres'). Spatial tuples are in the *transposed* array order (after
``transpose_forward``); a '2d' configuration works on slices along transposed axis 0, so its spacing
and patch have two entries. JSON round trip is exact; unknown keys are an error, another schema version
a clear message.
"""
from __future__ import annotations

import hashlib
import json
import os
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Dict, Optional, Tuple

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.atomic import write_json
from AutoSegLib.network.topology import NetworkTopology

SCHEMA_VERSION = 1

NORMALIZATIONS = ("ct", "zscore", "none", "rescale_0_1", "rgb_to_0_1")


@dataclass(frozen=True)
class ResamplingSettings:
    """How images, labels and probabilities are resampled (spline orders). When the spacing ratio
    between axes exceeds ``anisotropy_threshold`` the coarse axis is resampled separately with
    ``order_z``; ``force_separate_z`` None means decide by that rule."""
    order_data: int = 3
    order_seg: int = 1
    order_probabilities: int = 1
    order_z: int = 0
    anisotropy_threshold: float = 3.0
    force_separate_z: Optional[bool] = None


@dataclass(frozen=True)
class ConfigurationPlan:
    name: str
    spacing: Tuple[float, ...]
    patch_size: Tuple[int, ...]
    batch_size: int
    median_image_size: Tuple[float, ...]
    normalization: Tuple[str, ...]          # one scheme per input channel, from NORMALIZATIONS
    use_mask_for_norm: Tuple[bool, ...]
    network: NetworkTopology
    resampling: ResamplingSettings = field(default_factory=ResamplingSettings)
    batch_dice: bool = False
    data_identifier: str = ""               # preprocessed-data folder name; equal data shares it
    previous_stage: Optional[str] = None    # cascade: the configuration whose prediction is an extra input
    next_stages: Tuple[str, ...] = ()

    @property
    def is_2d(self) -> bool:
        return len(self.patch_size) == 2


@dataclass(frozen=True)
class BudgetPlan:
    """What a budget configuration was planned for, and the schedule the budget buys (in plans.json).

    Attributes
    ----------
    configuration : str
        Name of the configuration it sized ("3d_budget" / "2d_budget").
    minutes : float
        Training budget, its validation included.
    device, precision : str
        Device and resolved precision it was planned (and must be trained) for.
    machine : str
        The calibration's key (machine, torch version, threads).
    gflops : float
        Measured training throughput at the chosen network's size.
    step_seconds : float
        Predicted seconds per training iteration (network + data).
    iterations, iterations_per_epoch, epochs, val_iterations : int
        The schedule: ``epochs * iterations_per_epoch == iterations``.
    reserve_seconds : float
        Time kept from the budget for validation and overhead.
    spacing_factor : float
        Target spacing / fullres target spacing (finest axis).
    base_features : int
    candidates : tuple of tuple
        Every candidate the rules looked at: (spacing factor, base features, patch size, predicted
        iterations), in the order tried.
    target_iterations : int
        The choice rule's target: the finest candidate predicted to reach it was chosen.
    located_by : str or None
        A fine stage (`planning.coarse_to_fine`): the coarse configuration whose foreground, grown by
        ``roi_margin_mm`` (transposed order) on each side, bounds where it predicts.
    roi_margin_mm : tuple of float
    fine : BudgetPlan or None
        The coarse stage's record holds its fine stage's here (coarse to fine); None for a single plan.
    """
    configuration: str
    minutes: float
    device: str
    precision: str
    machine: str
    gflops: float
    step_seconds: float
    iterations: int
    iterations_per_epoch: int
    epochs: int
    val_iterations: int
    reserve_seconds: float
    spacing_factor: float
    base_features: int
    candidates: Tuple[Tuple, ...] = ()
    target_iterations: int = 1000
    located_by: Optional[str] = None
    roi_margin_mm: Tuple[float, ...] = ()
    fine: Optional["BudgetPlan"] = None


@dataclass(frozen=True)
class Plans:
    dataset_name: str
    channel_names: Dict[str, str]           # {"0": "CT", ...}, as in dataset.json
    labels: Dict[str, object]               # as in dataset.json (see io.labels.LabelLayout)
    transpose_forward: Tuple[int, ...]
    transpose_backward: Tuple[int, ...]
    original_median_spacing: Tuple[float, ...]   # after transposition
    original_median_shape: Tuple[float, ...]     # after transposition
    intensity_properties: Dict[str, Dict[str, float]]  # per channel: mean, std, percentile_00_5, ...
    configurations: Dict[str, ConfigurationPlan]
    file_ending: str = ".nii.gz"
    regions_class_order: Optional[Tuple[int, ...]] = None
    planner_memory_gb: float = 8.0
    schema_version: int = SCHEMA_VERSION
    budget: Optional[BudgetPlan] = None     # set when planned for a time budget (planning.budget)

    @property
    def num_channels(self) -> int:
        return len(self.channel_names)

    def label_layout(self):
        from AutoSegLib.io.labels import LabelLayout
        return LabelLayout.from_dataset_labels(self.labels, self.regions_class_order, source="plans.json")

    @property
    def recommended_configuration(self) -> str:
        """What ``autoseg train WORK auto`` trains and predicts with: the budget configuration when the plans
        have one (its fine stage when planned coarse to fine), else 3d_fullres (2d for 2D data)."""
        if self.budget is not None and self.budget.configuration in self.configurations:
            if self.budget.fine is not None and self.budget.fine.configuration in self.configurations:
                return self.budget.fine.configuration
            return self.budget.configuration
        return "3d_fullres" if "3d_fullres" in self.configurations else "2d"

    def budget_for(self, configuration: str) -> Optional[BudgetPlan]:
        """The budget record that planned ``configuration`` (the single or coarse plan, or the fine stage)."""
        b = self.budget
        if b is not None and configuration == b.configuration:
            return b
        if b is not None and b.fine is not None and configuration == b.fine.configuration:
            return b.fine
        return None

    def required_stage(self, configuration: str) -> Optional[str]:
        """The configuration predicted before ``configuration``, whose result it needs: a cascade stage's
        previous stage, or a fine stage's coarse stage (`planning.coarse_to_fine`); None for most."""
        conf = self.configuration(configuration)
        if conf.previous_stage:
            return conf.previous_stage
        record = self.budget_for(conf.name)
        return record.located_by if record is not None else None

    def stages(self, configuration: str) -> Tuple[str, ...]:
        """The configurations that train, in order, for ``configuration``: a fine stage's coarse stage first."""
        conf = self.configuration(configuration).name
        record = self.budget_for(conf)
        located = record.located_by if record is not None else None
        return ((located,) if located else ()) + (conf,)

    def configuration(self, name: str) -> ConfigurationPlan:
        if name == "auto":
            name = self.recommended_configuration
        if name not in self.configurations:
            from difflib import get_close_matches
            close = get_close_matches(name, list(self.configurations), n=1)
            hint = f" Did you mean {close[0]!r}?" if close else ""
            raise AutoSegError(f"unknown configuration {name!r}; these plans have {sorted(self.configurations)}.{hint}")
        return self.configurations[name]

    # ---- JSON ----
    def to_dict(self) -> dict:
        return asdict(self)

    def to_json(self, path: "str | os.PathLike") -> Path:
        return write_json(path, self.to_dict())

    @classmethod
    def from_dict(cls, d: dict, source: str = "plans") -> "Plans":
        version = d.get("schema_version")
        if version != SCHEMA_VERSION:
            raise AutoSegError(f"{source}: plans schema version {version!r} is not supported by this AutoSeg "
                               f"(expects {SCHEMA_VERSION}). Re-run `autoseg plan` to regenerate them.")
        try:
            d = dict(d)
            d["configurations"] = {k: record_from_dict(ConfigurationPlan, v, f"{source}: configuration {k}")
                                   for k, v in d["configurations"].items()}
            return record_from_dict(cls, d, source)
        except KeyError as exc:
            raise AutoSegError(f"{source}: missing key {exc} in plans.") from None

    @classmethod
    def from_json(cls, path: "str | os.PathLike") -> "Plans":
        from AutoSegLib.io.jsonfile import read_json
        path = Path(path)
        data = read_json(path, "plans", missing="plans file not found. Run `autoseg plan` first.", expect=dict)
        return cls.from_dict(data, source=str(path))


def _tupleize(value):
    if isinstance(value, list):
        return tuple(_tupleize(v) for v in value)
    return value


_NESTED = {"network": NetworkTopology, "resampling": ResamplingSettings, "budget": BudgetPlan, "fine": BudgetPlan}


def record_from_dict(cls, data: dict, source: str):
    """Construct dataclass ``cls`` from a JSON dict: lists become tuples, unknown keys are an error."""
    names = {f.name for f in fields(cls)}
    unknown = set(data) - names
    if unknown:
        raise AutoSegError(f"{source}: unknown keys {sorted(unknown)} (written by another AutoSeg version?).")
    kwargs = {}
    for k, v in data.items():
        if k in _NESTED and isinstance(v, dict):
            v = record_from_dict(_NESTED[k], v, f"{source}.{k}")
        elif k in ("labels", "channel_names", "intensity_properties", "configurations"):
            pass
        else:
            v = _tupleize(v)
        kwargs[k] = v
    return cls(**kwargs)


def network_input_channels(plans: "Plans", configuration: str) -> int:
    """Input channels of a configuration's network: the image channels, plus for a cascade stage one
    one-hot channel per `cascade_label_values` (training and loading both count them here)."""
    n = plans.num_channels
    if plans.configuration(configuration).previous_stage:
        from AutoSegLib.io.labels import cascade_label_values
        n += len(cascade_label_values(plans.label_layout()))
    return n


def plans_identifier(configuration_plan) -> str:
    """Hash of a configuration plan (its JSON, keys sorted): checkpoints and data record it."""
    blob = json.dumps(asdict(configuration_plan), sort_keys=True, default=list).encode()
    return hashlib.sha256(blob).hexdigest()[:16]
