"""The module's parameter node: field names, types and defaults as plain data.

In Slicer, `parameter_node_class` turns `FIELDS` into a ``slicer.parameterNodeWrapper`` class (GUI
widgets with a ``SlicerParameterName`` property in AutoSeg.ui bind to these names). Headless,
``slicer.parameterNodeWrapper`` does not exist; the tests check the .ui against `FIELDS`.
The device is not a field either: its choices are found at run time (the widget reads the combo box).
Input volumes are not fields: their number depends on the model, so the widget keeps them as node
references ``AutoSeg.Input<N>`` on the parameter node (`INPUT_REFERENCE_ROLE`).
"""
from __future__ import annotations

import functools
from pathlib import Path

#: name -> (type name, default). Type names: "bool", "int", "float", "str", "Path", or an MRML class name.
FIELDS = {
    "outputSegmentation": ("vtkMRMLSegmentationNode", None),
    "useTTA": ("bool", True),
    "folds": ("str", ""),            # "" = every fold of the model; else e.g. "0 1"
    "stepSize": ("float", 0.5),
    "show3D": ("bool", False),
    "fast": ("bool", False),
    "roi": ("vtkMRMLMarkupsROINode", None),   # None: the whole volume
    "saveUncertainty": ("bool", False),
    "datasetFolder": ("Path", Path()),
    "caseName": ("str", ""),
}

INPUT_REFERENCE_ROLE = "AutoSeg.Input"

#: .ui widget classes that can bind to each field type (used by the .ui check).
WIDGETS_FOR_TYPE = {
    "bool": {"QCheckBox", "ctkCheckBox", "QRadioButton"},
    "float": {"QDoubleSpinBox", "ctkDoubleSpinBox", "ctkSliderWidget", "qMRMLSliderWidget"},
    "int": {"QSpinBox", "ctkSliderWidget"},
    "str": {"QLineEdit", "QComboBox"},
    "Path": {"ctkPathLineEdit"},
}


def store_inputs(parameter_node, volumes) -> None:
    """Keep ``volumes`` (None for an empty selector) as references ``AutoSeg.Input<N>`` on the
    vtkMRMLScriptedModuleNode ``parameter_node`` (saved with the scene); references past the last are removed.
    A None parameter node (the scene is closing) stores nothing."""
    if parameter_node is None:
        return
    volumes = list(volumes)
    for i, node in enumerate(volumes):
        parameter_node.SetNodeReferenceID(f"{INPUT_REFERENCE_ROLE}{i}", node.GetID() if node is not None else None)
    i = len(volumes)
    while parameter_node.GetNodeReference(f"{INPUT_REFERENCE_ROLE}{i}") is not None:
        parameter_node.RemoveNodeReferenceIDs(f"{INPUT_REFERENCE_ROLE}{i}")
        i += 1


def stored_inputs(parameter_node, count: int) -> list:
    """The ``count`` input volumes stored by `store_inputs` (None where none, or not a scalar volume any more)."""
    out = []
    for i in range(count):
        node = parameter_node.GetNodeReference(f"{INPUT_REFERENCE_ROLE}{i}") if parameter_node is not None else None
        ok = node is not None and node.IsA("vtkMRMLScalarVolumeNode") and not node.IsA("vtkMRMLLabelMapVolumeNode")
        out.append(node if ok else None)
    return out


def initial_inputs(parameter_node, count: int, defaults) -> list:
    """What a model's ``count`` input selectors start with: the stored choice where there is one (the user's,
    or a loaded scene's), else the logic's default for that channel."""
    defaults = list(defaults) + [None] * count
    return [stored or default for stored, default in zip(stored_inputs(parameter_node, count), defaults)]


def parse_folds(text: str):
    """``"0 1"`` / ``"0,1"`` -> ``("0", "1")``; ``""`` -> None (all folds). Raises ValueError for junk."""
    parts = [p for p in str(text or "").replace(",", " ").split() if p]
    for p in parts:
        if p != "all" and not p.isdigit():
            raise ValueError(f"Folds must be numbers like '0 1 2' or 'all'; found {p!r}.")
    return tuple(parts) or None


@functools.lru_cache(maxsize=None)
def parameter_node_class():
    """Build the ``parameterNodeWrapper`` class once (inside Slicer only)."""
    import slicer
    from slicer.parameterNodeWrapper import parameterNodeWrapper

    annotations, defaults = {}, {}
    simple = {"bool": bool, "int": int, "float": float, "str": str, "Path": Path}
    for name, (type_name, default) in FIELDS.items():
        annotations[name] = simple.get(type_name) or getattr(slicer, type_name)
        if default is not None:
            defaults[name] = default
    cls = type("AutoSegParameterNode", (), {"__annotations__": annotations, **defaults})
    return parameterNodeWrapper(cls)
