"""A headless stand-in for the parts of the Slicer application the AutoSeg module logic uses.

slicer-core (PyPI) carries Slicer's real MRML classes and module logics but no application: no
``slicer.mrmlScene``, ``slicer.app`` or ``slicer.modules``. `SlicerHarness` builds a scene, the application
logic and the module logics (colors, volumes, segmentations, terminologies, subject hierarchy), registers
them with the application logic as Slicer does at start-up, and sets ``slicer.mrmlScene`` and
``slicer.modules.<name>.logic()`` so that ``slicer.util`` helpers that rely on them work.

It also turns VTK error messages into test failures (VTK logs errors instead of raising):
`SlicerHarness.vtk_errors` collects them; the pytest fixture fails the test when any was logged.
"""
from __future__ import annotations

import sys
import types
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
MODULE_DIR = REPO / "AutoSegModule"


def add_module_to_path() -> None:
    """Make ``AutoSegSlicer`` (the module's sub-package) and ``AutoSegLib`` importable."""
    for p in (str(MODULE_DIR), str(REPO)):
        if p not in sys.path:
            sys.path.insert(0, p)


class _ErrorCollector:
    """Replaces VTK's output window; remembers error and warning texts."""

    def __init__(self):
        import vtk

        self.errors: list = []
        self.warnings: list = []
        self._window = vtk.vtkOutputWindow.GetInstance()

        def on_error(obj, event, calldata=None):
            self.errors.append(str(calldata))

        def on_warning(obj, event, calldata=None):
            self.warnings.append(str(calldata))

        on_error.CallDataType = vtk.VTK_STRING  # receive the message text
        on_warning.CallDataType = vtk.VTK_STRING
        self._on_error, self._on_warning = on_error, on_warning
        self._observers = [
            self._window.AddObserver("ErrorEvent", on_error),
            self._window.AddObserver("WarningEvent", on_warning),
        ]

    def close(self) -> None:
        for tag in self._observers:
            self._window.RemoveObserver(tag)


class SlicerHarness:
    """Scene + application logic + module logics, installed into the ``slicer`` module.

    Attributes
    ----------
    scene : vtkMRMLScene
    app_logic : vtkSlicerApplicationLogic
    volumes, segmentations, terminologies, subject_hierarchy, colors : module logics
    vtk_errors, vtk_warnings : list of str
        Messages VTK logged since the harness was created.
    """

    def __init__(self):
        import slicer

        self.scene = slicer.vtkMRMLScene()
        self.app_logic = slicer.vtkSlicerApplicationLogic()
        self.app_logic.SetMRMLScene(self.scene)

        self.colors = slicer.vtkSlicerColorLogic()
        self.colors.SetMRMLApplicationLogic(self.app_logic)
        self.colors.SetMRMLScene(self.scene)  # adds the default colour tables
        self.volumes = slicer.vtkSlicerVolumesLogic()
        self.terminologies = slicer.vtkSlicerTerminologiesModuleLogic()
        self.segmentations = slicer.vtkSlicerSegmentationsModuleLogic()
        self.subject_hierarchy = slicer.vtkSlicerSubjectHierarchyModuleLogic()
        logics = {
            "Colors": self.colors,
            "Volumes": self.volumes,
            "Terminologies": self.terminologies,
            "Segmentations": self.segmentations,
            "SubjectHierarchy": self.subject_hierarchy,
        }
        for name, logic in logics.items():
            if logic is not self.colors:
                logic.SetMRMLApplicationLogic(self.app_logic)
                if logic is not self.terminologies:  # its default .term.json files are not in slicer-core
                    logic.SetMRMLScene(self.scene)
            self.app_logic.SetModuleLogic(name, logic)

        # What Slicer's application provides and slicer.util relies on.
        self._saved = {k: getattr(slicer, k, None) for k in ("mrmlScene", "modules", "app")}
        slicer.mrmlScene = self.scene
        slicer.modules = types.SimpleNamespace(**{
            name.lower(): types.SimpleNamespace(logic=(lambda lg=logic: lg)) for name, logic in logics.items()
        })
        slicer.app = None  # no application: code that needs one must fail loudly
        # Errors from here on fail the test (set-up itself is checked by test_harness).
        self._collector = _ErrorCollector()

    @property
    def vtk_errors(self) -> list:
        return self._collector.errors

    @property
    def vtk_warnings(self) -> list:
        return self._collector.warnings

    def load_volume(self, path, name: "str | None" = None, labelmap: bool = False):
        """Load an image file the way Slicer does (volume archetype storage node), return the node.

        Note trap 13: the node name keeps the file ending unless ``name`` is given.
        """
        node = self.volumes.AddArchetypeVolume(str(path), name or Path(path).name, 1 if labelmap else 0)
        if node is None:
            raise RuntimeError(f"could not load {path}")
        return node

    def close(self) -> None:
        import slicer

        self.scene.Clear(1)
        for k, v in self._saved.items():
            if v is None:
                if hasattr(slicer, k):
                    delattr(slicer, k)
            else:
                setattr(slicer, k, v)
        self._collector.close()
