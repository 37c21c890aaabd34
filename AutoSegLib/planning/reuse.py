"""Plans for fine-tuning: a model's plans adopted for a new dataset instead of planning it again.

Fine-tuning starts from a model's weights, so the network, the voxel spacing, the patch and the intensity
normalisation must stay the model's: new plans computed from the new dataset's fingerprint (another median
spacing, other intensity percentiles) would make the weights see other data than they learned on, or not
fit at all. `adopt_plans` takes the model's plans unchanged, checks that the new dataset has the model's
input channels and labels, and only adds an ``ignore`` label when the new dataset has one (partially
annotated corrections: the network's outputs are the same).
"""
from __future__ import annotations

import os
from dataclasses import replace
from pathlib import Path
from typing import TYPE_CHECKING

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.work_folder import PLANS_JSON

if TYPE_CHECKING:
    from AutoSegLib.planning.plans import Plans


def adopt_plans(source: "str | os.PathLike", dataset) -> "Plans":
    """The plans of the model or work folder ``source`` for training on ``dataset``.

    Parameters
    ----------
    source : path
        A model folder or work folder (holding plans.json).
    dataset : io.datasets.Dataset
        The dataset that will be preprocessed with these plans.

    Returns
    -------
    Plans
        ``source``'s plans, with the dataset's ``ignore`` label added when it declares one.

    Raises
    ------
    AutoSegError
        ``source`` has no readable plans.json, or the dataset's channels or labels differ from the model's
        (the message names both).
    """
    from AutoSegLib.planning.plans import Plans

    path = Path(source) / PLANS_JSON
    if not path.is_file():
        raise AutoSegError(f"{path}: not found; --plans-from needs a model folder or work folder with plans.json.")
    plans = Plans.from_json(path)
    channels = {str(k): str(v) for k, v in dataset.channel_names.items()}
    if channels != {str(k): str(v) for k, v in plans.channel_names.items()}:
        raise AutoSegError(f"{dataset.root / 'dataset.json'}: channels {channels} differ from the model's "
                           f"{plans.channel_names} ({path}); fine-tuning needs the same inputs in the same order.")
    labels = dict(dataset.raw_json.get("labels") or {})
    ignore = labels.pop("ignore", None)
    model_labels = {k: v for k, v in plans.labels.items() if k != "ignore"}
    if _normalised(labels) != _normalised(model_labels):
        raise AutoSegError(f"{dataset.root / 'dataset.json'}: labels {labels} differ from the model's {model_labels} "
                           f"({path}); fine-tuning keeps the model's outputs, so the labels must be the same.")
    if ignore is not None:
        plans = replace(plans, labels={**model_labels, "ignore": ignore})
    return plans


def _normalised(labels: dict) -> dict:
    return {str(k): (tuple(v) if isinstance(v, (list, tuple)) else v) for k, v in labels.items()}
