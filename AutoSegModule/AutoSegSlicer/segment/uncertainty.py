"""Where to correct: the uncertainty ``autoseg predict --save-uncertainty`` writes, shown in Slicer.

- `read_case`: after a run, ``<case>_uncertainty.<ext>`` becomes a scalar volume node (values 0..1 on the
  input grid) and the case's row of ``predict_summary.json`` gives the most uncertain slices.
- `show_overlay` / `hide_overlay`: the uncertainty as a colour overlay (foreground layer, colour table,
  opacity; voxels under a threshold transparent).
- `slice_entries` / `jump_to`: the list of the most uncertain slices; an entry's ``position_lps`` (the
  file's physical coordinates) is converted to RAS as (-x, -y, z) and every slice view is moved there.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path
from typing import List, Optional, Tuple

from AutoSegLib.errors import AutoSegError
from AutoSegLib.io.jsonfile import JSONFileError, read_json
from AutoSegSlicer.common.roi import ras_to_lps

log = logging.getLogger(__name__)

#: Colour tables tried in order (the first is Slicer's file-based Inferno; headless only procedural ones exist).
COLOR_NODE_IDS = ("vtkMRMLColorTableNodeFileInferno.txt", "vtkMRMLPETProceduralColorNodePET-Heat",
                  "vtkMRMLColorTableNodeRainbow")
#: Voxels below this uncertainty are not drawn (the overlay shows where the model is unsure only).
SHOW_ABOVE = 0.05
SUMMARY_NAME = "predict_summary.json"


@dataclass
class CaseUncertainty:
    """What a finished case leaves for guidance: the uncertainty volume node (or None) and its summary row."""
    volume: object = None
    row: dict = field(default_factory=dict)

    @property
    def slices(self) -> list:
        return list(self.row.get("uncertain_slices") or [])


def read_summary(folder) -> Optional[dict]:
    """``<folder>/predict_summary.json`` as a dict, None when absent; AutoSegError when it is not valid."""
    path = Path(folder) / SUMMARY_NAME
    if not path.is_file():
        return None
    try:
        data = read_json(path, "a prediction summary")
    except JSONFileError as exc:
        cause = str(exc)[len(f"{path}: "):] if str(exc).startswith(f"{path}: ") else str(exc)
        raise AutoSegError(f"{path}: not a readable prediction summary ({cause})") from None
    if not isinstance(data, dict) or not isinstance(data.get("cases"), list):
        raise AutoSegError(f"{path}: expected {{'version': 1, 'cases': [...]}}; found {type(data).__name__} "
                           f"without a 'cases' list.")
    return data


def find_row(summary: Optional[dict], case: str) -> dict:
    """The summary row of ``case`` ({} when there is none)."""
    for row in (summary or {}).get("cases", []):
        if isinstance(row, dict) and row.get("case") == case:
            return row
    return {}


def load_volume(scene, path, name: str):
    """A scalar volume node from an uncertainty file (read with AutoSegLib, LPS -> RAS by `conversion`)."""
    from AutoSegLib.io.images import read_image
    from AutoSegSlicer.common.conversion import add_volume_from_array

    array, geometry = read_image(path)
    node = add_volume_from_array(scene, array.astype("float32", copy=False), geometry,
                                 name=scene.GenerateUniqueName(name))
    node.SetAttribute("AutoSeg.Uncertainty", str(path))
    return node


def read_case(scene, output_dir, case: str, reference_volume, segmentation_node=None) -> CaseUncertainty:
    """Load ``case``'s uncertainty file (named by its summary row, else ``<case>_uncertainty.*``) beside
    ``reference_volume`` and return it with the summary row. A missing file is logged, not an error: the
    segmentation is there already."""
    output_dir = Path(output_dir)
    row = find_row(read_summary(output_dir), case)
    path = Path(row["uncertainty"]) if row.get("uncertainty") else None
    if path is not None and not path.is_absolute():
        path = output_dir / path
    if path is None or not path.is_file():
        found = sorted(output_dir.glob(f"{case}_uncertainty.*"))
        path = found[0] if found else None
    if path is None:
        log.warning("no uncertainty file for case %s in %s", case, output_dir)
        return CaseUncertainty(None, row)
    base = reference_volume.GetName() if reference_volume is not None else case
    node = load_volume(scene, path, f"{base} uncertainty")
    if reference_volume is not None:
        node.SetAndObserveTransformNodeID(reference_volume.GetTransformNodeID())
        node.SetAttribute("AutoSeg.SourceVolume", reference_volume.GetID())
    if segmentation_node is not None:
        segmentation_node.SetNodeReferenceID("AutoSeg.Uncertainty", node.GetID())
    return CaseUncertainty(node, row)


def style_overlay(uncertainty_node, scene) -> str:
    """Colour table, window 0..1 and threshold on the node's display; returns the colour node ID used."""
    if uncertainty_node.GetDisplayNode() is None:
        uncertainty_node.CreateDefaultDisplayNodes()
    display = uncertainty_node.GetDisplayNode()
    color_id = next((i for i in COLOR_NODE_IDS if scene.GetNodeByID(i) is not None), "")
    if color_id:
        display.SetAndObserveColorNodeID(color_id)
    display.SetAutoWindowLevel(False)
    display.SetWindowLevelMinMax(0.0, 1.0)
    display.SetApplyThreshold(True)
    display.SetLowerThreshold(SHOW_ABOVE)
    display.SetUpperThreshold(1.0)
    return color_id


def show_overlay(background_volume, uncertainty_node, opacity: float = 0.5) -> None:
    """Show ``uncertainty_node`` over ``background_volume`` in every slice view."""
    import slicer

    if uncertainty_node is None:
        raise AutoSegError("This case has no uncertainty volume: segment it with 'Save uncertainty' on.")
    style_overlay(uncertainty_node, uncertainty_node.GetScene())
    slicer.util.setSliceViewerLayers(background=background_volume, foreground=uncertainty_node,
                                     foregroundOpacity=float(opacity))


def hide_overlay() -> None:
    import slicer

    slicer.util.setSliceViewerLayers(foreground=None)


def slice_entries(row: dict, limit: int = 10) -> List[Tuple[str, Tuple[float, float, float]]]:
    """``[(text, (R, A, S)), ...]`` for the summary row's ``uncertain_slices`` (most uncertain first, as the
    library ranks them), e.g. ``"axial 42: 3.10 ml (liver, tumour)"``."""
    out = []
    for entry in list(row.get("uncertain_slices") or [])[:limit]:
        try:
            ras = ras_to_lps(entry["position_lps"])   # the same sign flip converts LPS to RAS
            text = f"{entry.get('axis', '?')} {int(entry.get('index', -1))}"
        except (KeyError, TypeError, ValueError):
            log.warning("ignoring a malformed uncertain_slices entry: %r", entry)
            continue
        volume = entry.get("uncertain_volume_ml")
        if isinstance(volume, (int, float)):
            text += f": {volume:.2f} ml"
        labels = [str(x) for x in entry.get("labels") or []]
        if labels:
            text += f" ({', '.join(labels)})"
        out.append((text, ras))
    return out


def jump_to(scene, ras) -> None:
    """Move every slice view so that it passes through ``ras`` (each keeps its orientation)."""
    import slicer

    r, a, s = (float(c) for c in ras)
    slicer.vtkMRMLSliceNode.JumpAllSlices(scene, r, a, s, slicer.vtkMRMLSliceNode.OffsetJumpSlice)
