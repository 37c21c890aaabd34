"""The panel's Qt slots driven headless (fake_panel.py stands in for Qt and the application; the scene, the
logic and the child processes are real): every connected slot ends in a handled state whatever it raises,
and the user-visible defects of issue #13 (items 1, 2, 3, 4, 8, 9, 10) stay fixed."""
from __future__ import annotations

import re
import subprocess
import sys
import time
import types
from pathlib import Path

import numpy as np
import pytest

import fake_panel
from autoseg_testing import fake_runner_factory, make_model_folder
from AutoSegSlicer.common import dependencies as _dependencies

REAL_ENSURE = _dependencies.ensure_dependencies


@pytest.fixture
def panel(slicer_harness, tmp_path, monkeypatch):
    make_model_folder(tmp_path / "models" / "Organs", model_json={"name": "Organs", "version": "1.0"})
    p, shown = fake_panel.install(monkeypatch, slicer_harness, tmp_path)
    p.shown = shown
    p.training = next(s for s in p.sections if type(s).__name__ == "TrainingSection")
    # torch and the other packages count as installed (nothing is installed by these tests).
    from AutoSegSlicer.common import dependencies
    monkeypatch.setattr(dependencies, "ensure_dependencies", lambda **kw: True)
    yield p
    if p.job is not None and p.job.running:
        p.logic.cancel(p.job)
    p.cleanup()   # removes the scene observers before the harness closes the scene


def _volume(make_volume, name):
    return make_volume(np.zeros((4, 6, 6), np.int16) + 100, name=name)


def _loaded(panel, make_volume, name="ct"):
    """A volume loaded after the panel was built, then chosen as the model's input (as the user would)."""
    volume = _volume(make_volume, name)
    panel.refreshModels()
    panel.input_selectors[0][1].setCurrentNode(volume)
    panel.onInputChanged()
    return volume


def _usable(p):
    """The panel is usable: nothing runs, Apply says Apply, no timer polls for nothing, no wait cursor."""
    assert p.job is None and p._add_model_runner is None
    assert p.ui.applyButton.text == "Apply"
    assert not p._timer.isActive() and not p.training._timer.isActive()
    assert fake_panel.Cursor.depth == 0
    assert p.ui.addModelButton.enabled and p.ui.modelComboBox.enabled


class Exploding:
    """A logic whose every method (and attribute write) raises: what any slot does with it fails."""

    def __init__(self, exc):
        object.__setattr__(self, "exc", exc)

    def __getattr__(self, name):
        def fail(*args, **kwargs):
            raise self.exc
        return fail

    def __setattr__(self, name, value):
        raise self.exc


def test_every_connected_slot_is_guarded(panel):
    slots = fake_panel.connected_slots()
    assert len(slots) >= 20
    unguarded = [fake_panel.slot_name(s) for _, s in slots if not hasattr(s, "guarded_what")]
    assert unguarded == []


@pytest.mark.parametrize("exc", [RuntimeError("boom"), subprocess.CalledProcessError(1, ["pip", "install", "scipy"]),
                                 AttributeError("'vtkSegment' object has no attribute 'SetTerminology'")])
def test_every_slot_ends_handled_when_the_logic_raises(panel, make_volume, monkeypatch, tmp_path, exc):
    from AutoSegSlicer.common import dependencies
    from AutoSegSlicer.train import widget as training_widget

    _loaded(panel, make_volume)
    assert panel.currentModel() is not None
    panel.shown.update(directory=str(tmp_path), file=str(tmp_path / "m.zip"), save=str(tmp_path / "out.nii.gz"))
    panel.training.form.datasetPathLineEdit.currentPath = str(tmp_path)
    panel.ui.modelsFolderPathLineEdit.currentPath = str(tmp_path / "elsewhere")
    panel.ui.outputSegmentationSelector.setCurrentNode(None)
    panel.ui.batchOutputPathLineEdit.currentPath = str(tmp_path / "batch")

    def fail(*a, **k):
        raise exc
    monkeypatch.setattr(dependencies, "ensure_dependencies", fail)
    monkeypatch.setattr(dependencies, "list_devices", fail)
    monkeypatch.setattr(training_widget, "add_partial_case", fail)
    panel.training.logic = Exploding(exc)
    logic = panel.logic
    panel.logic = Exploding(exc)
    seg = panel.currentSegmentation
    monkeypatch.setattr(panel, "currentSegmentation", lambda: seg() or object())   # buttons that need one

    silent = []
    for signal, slot in fake_panel.connected_slots():
        before = len(panel.shown["errors"])
        fake_panel.call_like_pythonqt(slot, signal)          # never raises
        _usable(panel)
        if len(panel.shown["errors"]) == before:
            silent.append(fake_panel.slot_name(slot))
        else:
            assert str(exc) in panel.shown["errors"][-1] or "exit code 1" in panel.shown["errors"][-1]
    panel.logic = logic
    # Slots that never reach the logic: buttons' state, a timer start, the poll with nothing running.
    # Nothing to show or load yet (no uncertainty, no batch table): the "Where to correct" and "Batch" slots.
    assert set(silent) <= {"AutoSegPanel._updateButtons", "AutoSegPanel.onModelsFolderEdited",
                           "AutoSegPanel._poll", "TrainingSection._poll", "TrainingSection.onFineTuneToggled",
                           "AutoSegPanel.onInputChanged", "AutoSegPanel.onModelChanged",
                           "UncertaintySection.onShowToggled", "UncertaintySection.onOpacityChanged",
                           "UncertaintySection.onSliceChosen", "BatchSection.onSourceChanged", "BatchSection._poll",
                           "BatchSection.onRowSelected"}, silent
    assert len(panel.shown["errors"]) >= 12


def test_a_failing_poll_stops_the_job_and_restores_the_panel(panel, make_volume, monkeypatch):
    _loaded(panel, make_volume)
    panel.logic.runner_factory = fake_runner_factory("sleep")
    panel.onApply()
    job = panel.job
    assert job is not None and job.running and panel.ui.applyButton.text == "Cancel" and panel._timer.isActive()
    monkeypatch.setattr(job.runner, "poll_events", lambda: 1 / 0)
    panel._poll()
    assert "ZeroDivisionError" in panel.shown["errors"][-1]
    assert panel.ui.statusLabel.text.startswith("Failed")
    _wait_stopped(job)
    _usable(panel)


def _wait_stopped(job, timeout=20):
    deadline = time.monotonic() + timeout
    while job.running or job.prepared.folder.exists():
        assert time.monotonic() < deadline, "the child was not stopped"
        time.sleep(0.05)


# -- item 1: terminology on Slicer 5.8 ---------------------------------------------------------------------------
def test_terminology_uses_the_tag_api_that_slicer_58_has(slicer_harness, monkeypatch):
    import slicer

    from AutoSegLib.io.geometry import Geometry
    from AutoSegSlicer.common import segmentation

    class Segment58(slicer.vtkSegment):
        """vtkSegment as in Slicer 5.8: no SetTerminology (Libs/vtkSegmentationCore/vtkSegment.h at v5.8.0)."""
        def SetTerminology(self, *args):
            raise AttributeError("'vtkSegment' object has no attribute 'SetTerminology' (Slicer 5.8)")

    monkeypatch.setattr(slicer, "vtkSegment", Segment58)
    node = slicer_harness.scene.AddNewNodeByClass("vtkMRMLSegmentationNode")
    entry = "Segmentation category and type - 3D Slicer General Anatomy list~SCT^123037004^Anatomical Structure~" \
            "SCT^10200004^Liver~^^~Anatomic codes - DICOM master list~^^~^^"
    labels = np.zeros((3, 4, 5), np.uint8)
    labels[1, 1:3, 1:4] = 1
    geometry = Geometry((1.0, 1.0, 1.0), (0.0, 0.0, 0.0), tuple(np.eye(3).ravel()))
    ids = segmentation.fill_segmentation(node, labels, geometry, [segmentation.SegmentSpec("liver", 1, (1, 0, 0), entry)])
    segment = node.GetSegmentation().GetSegment(ids[0])
    assert segmentation._get_tag(segment, slicer.vtkSegment.GetTerminologyEntryTagName()) == entry
    assert segment.GetTerminology() == entry   # the real class reads the same tag (5.10+)


# -- items 2 and 3: installers ---------------------------------------------------------------------------------
@pytest.fixture
def needs_install(monkeypatch):
    """The real ensure_dependencies, with one requirement that is never installed."""
    from AutoSegSlicer.common import dependencies
    monkeypatch.setattr(dependencies, "ensure_dependencies", REAL_ENSURE)
    monkeypatch.setitem(dependencies.REQUIREMENTS, "autoseg-not-a-package>=1", "autoseg_not_a_package")


def test_slicer_512_declined_install_is_a_message_and_packaging_is_imported_explicitly(
        panel, needs_install, make_volume, monkeypatch):
    import slicer

    _loaded(panel, make_volume)
    asked = []

    def pip_ensure(requirements, requester=None):
        asked.append(list(requirements))
        raise RuntimeError("User declined package installation")   # Slicer 5.12 packaging.pip_ensure

    monkeypatch.delattr(slicer, "packaging", raising=False)          # `import slicer` does not import it
    monkeypatch.setitem(sys.modules, "slicer.packaging", types.SimpleNamespace(pip_ensure=pip_ensure))
    panel.onApply()
    assert asked == [["autoseg-not-a-package>=1"]]
    assert "declined" in panel.shown["errors"][-1]
    _usable(panel)


def test_slicer_58_failed_pip_install_is_a_message_and_asks_without_a_wait_cursor(
        panel, needs_install, make_volume, monkeypatch):
    import slicer

    _loaded(panel, make_volume)
    monkeypatch.delattr(slicer, "packaging", raising=False)
    monkeypatch.setitem(sys.modules, "slicer.packaging", None)       # 5.8 / 5.10: no such module
    cursors = []

    def confirm(text, *a, **kw):
        cursors.append(fake_panel.Cursor.depth)
        return True

    def pip_install(requirements):
        cursors.append(fake_panel.Cursor.depth)
        raise subprocess.CalledProcessError(1, ["PythonSlicer", "-m", "pip", "install", *requirements])

    monkeypatch.setattr(slicer.util, "confirmOkCancelDisplay", confirm)
    monkeypatch.setattr(slicer.util, "pip_install", pip_install, raising=False)
    panel.onApply()
    assert cursors == [0, 1]      # the question with a normal cursor, the install under a wait cursor
    assert "exit code 1" in panel.shown["errors"][-1] and "autoseg-not-a-package" in panel.shown["errors"][-1]
    _usable(panel)


# -- item 4: Cancel in the Resume dialog ------------------------------------------------------------------------
def test_cancelling_the_resume_dialog_resumes_nothing(panel, monkeypatch, tmp_path):
    from AutoSegSlicer.train.widget import choose_resumable

    step = types.SimpleNamespace(status="done")
    states = [types.SimpleNamespace(options=types.SimpleNamespace(model_name=n), kind="training", steps=[step],
                                    work=tmp_path / n) for n in ("first", "second")]
    resumed = []
    monkeypatch.setattr(panel.training.logic, "resumable", lambda: states)
    monkeypatch.setattr(panel.training.logic, "resume", lambda work: resumed.append(work))
    monkeypatch.setattr(panel.training, "_follow", lambda job: None)
    fake_panel.FakeInputDialog.answer = None                         # Cancel (Qt's textValue is still 'first')
    panel.training.onResume()
    assert resumed == [] and len(fake_panel.FakeInputDialog.shown) == 1
    fake_panel.FakeInputDialog.answer = fake_panel.FakeInputDialog.shown[0][1]
    panel.training.onResume()
    assert resumed == [tmp_path / "second"]
    assert choose_resumable(states, lambda names: None) is None
    assert choose_resumable([], lambda names: 1 / 0) is None


# -- item 8: Add model can be cancelled with no model installed -------------------------------------------------
def test_adding_a_model_can_be_cancelled_when_none_is_installed(panel, monkeypatch, tmp_path):
    panel.logic.models_dir = tmp_path / "empty"
    panel.refreshModels()
    assert panel.currentModel() is None and not panel.ui.applyButton.enabled

    class Runner:
        running, result, cancelled = True, None, []

        def poll_events(self):
            return []

        def cancel(self, wait=True):
            self.cancelled.append(wait)
            self.running = False
            self.result = types.SimpleNamespace(ok=False, failure_message=lambda what: f"{what} was cancelled.")

    monkeypatch.setattr(panel.logic, "start_add_model", lambda source, **kw: Runner())
    panel.shown["directory"] = str(tmp_path)
    menu_actions = [a for _, a in panel.ui.addModelButton.menu.items]
    assert len(menu_actions) == 2                                    # folder or archive: one dialog each
    panel.onAddModelFolder()
    assert panel.ui.applyButton.enabled and panel.ui.applyButton.text == "Cancel"
    panel.onApply()
    assert Runner.cancelled == [False]                               # without blocking the GUI
    panel._poll()
    assert "cancelled" in panel.shown["errors"][-1]
    _usable(panel)


# -- item 9: inputs survive a refresh and live on the parameter node --------------------------------------------
def test_chosen_inputs_survive_a_refresh_and_are_stored_on_the_parameter_node(panel, make_volume):
    from AutoSegSlicer.common import parameters

    a, b = _volume(make_volume, "a"), _volume(make_volume, "b")
    labelmap = make_volume(np.zeros((4, 6, 6), np.int16), name="labels", labelmap=True)
    panel.initializeParameterNode()                                  # e.g. the module entered on a loaded scene
    (_, selector), = panel.input_selectors
    assert selector.currentNode() is a and selector.hideChildNodeTypes == ["vtkMRMLLabelMapVolumeNode"]
    selector.setCurrentNode(b)
    panel.onInputChanged()
    node = panel._mrmlParameterNode()
    assert node.GetNodeReference(parameters.INPUT_REFERENCE_ROLE + "0") is b
    panel.refreshModels()                                            # e.g. after a model was installed
    assert panel.input_selectors[0][1] is selector and selector.currentNode() is b
    panel.input_selectors = []                                       # a new panel on the same (saved) scene
    panel.initializeParameterNode()
    assert panel.input_selectors[0][1].currentNode() is b
    node.SetNodeReferenceID(parameters.INPUT_REFERENCE_ROLE + "0", labelmap.GetID())
    assert parameters.stored_inputs(node, 2) == [None, None]         # a label map is never an input
    parameters.store_inputs(node, [])
    assert node.GetNodeReference(parameters.INPUT_REFERENCE_ROLE + "0") is None


# -- item 10: closing the scene cancels the run -----------------------------------------------------------------
def test_closing_the_scene_cancels_a_running_segmentation(panel, make_volume, slicer_harness):
    _loaded(panel, make_volume)
    panel.logic.runner_factory = fake_runner_factory("sleep")
    panel.onApply()
    job = panel.job
    assert job is not None and job.running
    slicer_harness.scene.Clear(0)                                    # File / Close scene
    assert panel.job is None and panel.ui.statusLabel.text == "Cancelled: the scene was closed."
    _wait_stopped(job)
    panel._poll()
    _usable(panel)
    assert panel.shown["errors"] == []
    assert slicer_harness.scene.GetNodesByClass("vtkMRMLSegmentationNode").GetNumberOfItems() == 0
    assert panel._parameterNode is not None                          # re-initialized at EndClose
    assert [sel.currentNode() for _, sel in panel.input_selectors] == [None]   # not the removed volume


# -- item 6: no console window for child processes on Windows --------------------------------------------------
def test_child_processes_hide_their_console_window_on_windows(monkeypatch):
    from AutoSegSlicer.common import runner

    assert runner.hidden_console_kwargs() == {}                     # POSIX: nothing to hide

    class StartupInfo:
        dwFlags, wShowWindow = 0, 1

    monkeypatch.setattr(runner.sys, "platform", "win32")
    monkeypatch.setattr(runner.subprocess, "STARTUPINFO", StartupInfo, raising=False)
    info = runner.hidden_console_kwargs()["startupinfo"]
    assert info.dwFlags & 1 and info.wShowWindow == 0              # STARTF_USESHOWWINDOW, SW_HIDE
    calls = []
    monkeypatch.setattr(runner.subprocess, "run", lambda argv, **kw: calls.append((argv, kw)))
    runner._signal_tree(types.SimpleNamespace(pid=42), None)
    assert calls[0][0][0] == "taskkill" and isinstance(calls[0][1]["startupinfo"], StartupInfo)


# -- item 7: typing a models folder does not rescan per keystroke ---------------------------------------------
def test_typing_a_models_folder_applies_it_once_after_the_last_keystroke(panel, monkeypatch, tmp_path):
    scans = []
    monkeypatch.setattr(panel, "refreshModels", lambda *a, **k: scans.append(str(panel.logic.models_dir)))
    typed = str(tmp_path / "mymodels")
    for i in range(1, len(typed) + 1):                              # currentPathChanged per keystroke
        panel.ui.modelsFolderPathLineEdit.currentPath = typed[:i]
        panel.onModelsFolderEdited(typed[:i])
    assert scans == [] and panel.shown["settings"].get("AutoSeg/ModelsFolder") is None
    assert panel._folder_timer.isActive() and panel._folder_timer.singleShot
    panel.applyModelsFolder()                                        # the single-shot timer fires
    panel.applyModelsFolder()                                        # unchanged: nothing again
    assert scans == [typed] and panel.shown["settings"]["AutoSeg/ModelsFolder"] == typed


# -- item 12: smaller ones -------------------------------------------------------------------------------------
def test_cancel_returns_at_once_and_the_child_is_still_stopped(panel, make_volume, monkeypatch):
    from AutoSegSlicer.common.runner import ProcessRunner

    slow_kill = ProcessRunner._finish_cancel

    def stubborn_child(self, proc, grace_s):                         # as a child ignoring SIGTERM would
        time.sleep(2.0)
        slow_kill(self, proc, grace_s)

    monkeypatch.setattr(ProcessRunner, "_finish_cancel", stubborn_child)
    _loaded(panel, make_volume)
    panel.logic.runner_factory = fake_runner_factory("sleep")
    panel.onApply()
    job = panel.job
    start = time.monotonic()
    panel.onApply()                                                  # Apply is Cancel now
    assert time.monotonic() - start < 1.0                            # the GUI is not blocked (was up to ~11 s)
    assert panel.ui.statusLabel.text.startswith("Cancelled")
    _wait_stopped(job)
    _usable(panel)


def test_sections_are_stacked_from_the_top_and_the_help_links_the_homepage(panel):
    import xml.etree.ElementTree as ET

    from autoseg_harness import MODULE_DIR, REPO

    assert panel.module_widget.layout.widgets[-1] == "stretch"       # after the training section
    root = ET.parse(MODULE_DIR / "Resources" / "UI" / "AutoSeg.ui").getroot()
    assert [s for s in root.iter("spacer") if s.findtext("property/enum") == "Qt::Vertical"] == []
    homepage = re.search(r'EXTENSION_HOMEPAGE "https://github.com/([^/"]+/[^/#"]+)', (REPO / "CMakeLists.txt").read_text())
    links = re.findall(r'href=\\"https://github.com/([^/"\\]+/[^/#"\\]+)', (MODULE_DIR / "AutoSeg.py").read_text())
    assert links == [homepage.group(1)]


# -- item 13: models and training runs in the per-user data folder, moved from the old places -------------------
def test_models_and_training_runs_move_to_the_data_folder_once(slicer_harness, tmp_path, monkeypatch):
    old_models = tmp_path / "settings" / "AutoSeg" / "models"       # next to Slicer.ini (roaming on Windows)
    make_model_folder(old_models / "Organs", model_json={"name": "Organs", "version": "1.0"})
    (old_models / ".installing-dead").mkdir()                        # an interrupted install: left alone
    old_runs = tmp_path / "tmp" / "AutoSeg" / "training"             # Slicer's temporary folder
    (old_runs / "Liver").mkdir(parents=True)
    (old_runs / "Liver" / "state.json").write_text("{}")
    data = tmp_path / "appdata" / "AutoSeg"
    (data / "training" / "Spleen").mkdir(parents=True)               # already there: never overwritten
    (old_runs / "Spleen").mkdir()
    panel, shown = fake_panel.install(monkeypatch, slicer_harness, tmp_path, patch_models_folder=False)
    try:
        assert panel.logic.models_dir == data / "models"
        assert [m.name for m in panel.models] == ["Organs"] and not (old_models / "Organs").exists()
        training = next(s for s in panel.sections if type(s).__name__ == "TrainingSection")
        assert training.logic.work_root == data / "training"
        assert training.form.trainingRunsPathLineEdit.currentPath == str(data / "training")
        assert (data / "training" / "Liver" / "state.json").read_text() == "{}"
        assert (old_runs / "Spleen").is_dir() and any("Not moved" in ln and "Spleen" in ln
                                                      for ln in panel.ui.logTextEdit.lines)
        assert shown["settings"]["AutoSeg/MigratedToDataFolder"] == str(data)
        training.onTrainingRunsFolderChanged(str(tmp_path / "elsewhere"))   # changeable in the panel
        assert training.logic.work_root == tmp_path / "elsewhere"
        assert shown["settings"]["AutoSeg/TrainingRunsFolder"] == str(tmp_path / "elsewhere")
    finally:
        panel.cleanup()
    make_model_folder(old_models / "Later", model_json={"name": "Later", "version": "1.0"})
    panel, shown = fake_panel.install(monkeypatch, slicer_harness, tmp_path, patch_models_folder=False,
                                      settings=shown["settings"])
    try:
        assert (old_models / "Later").is_dir()                       # migrated once only
    finally:
        panel.cleanup()


def test_a_models_folder_the_user_chose_stays_where_it_is(slicer_harness, tmp_path, monkeypatch):
    mine = tmp_path / "my models"
    make_model_folder(mine / "Organs", model_json={"name": "Organs", "version": "1.0"})
    panel, shown = fake_panel.install(monkeypatch, slicer_harness, tmp_path, patch_models_folder=False,
                                      settings={"AutoSeg/ModelsFolder": str(mine)})
    try:
        assert panel.logic.models_dir == mine and (mine / "Organs").is_dir() and len(panel.models) == 1
    finally:
        panel.cleanup()


def test_migrate_never_leaves_a_half_copy(tmp_path, monkeypatch):
    from AutoSegSlicer.common import storage

    old, new = tmp_path / "old", tmp_path / "new"
    (old / "A").mkdir(parents=True)
    (old / "A" / "w.pt").write_bytes(b"x" * 10)
    monkeypatch.setattr(storage.os, "rename", lambda a, b: (_ for _ in ()).throw(OSError(18, "cross-device")))
    monkeypatch.setattr(storage.shutil, "copytree", lambda a, b: (Path(b).mkdir(), (_ for _ in ()).throw(OSError(28, "disk full"))))
    messages = storage.migrate(old, new)
    assert "disk full" in messages[0] and (old / "A" / "w.pt").is_file() and list(new.iterdir()) == []


def test_a_section_failing_on_every_state_change_still_ends_in_one_message(panel, monkeypatch):
    """recover() updates the buttons, which call the sections: a failure there must not recurse."""
    corrections = next(s for s in panel.sections if type(s).__name__ == "CorrectionsSection")
    monkeypatch.setattr(corrections, "onStateChanged", lambda busy, seg: 1 / 0)
    panel._updateButtons()
    assert len(panel.shown["errors"]) == 1 and "ZeroDivisionError" in panel.shown["errors"][0]
    assert panel.ui.applyButton.text == "Apply"
