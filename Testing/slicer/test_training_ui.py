"""The training section's Qt side: the .ui file against the code (XML level), and the section's flow driven
with stand-in widgets (Qt cannot run headless): start, too few cases -> single fold offered, progress,
install; a failed verification shown; partial-case button."""
from __future__ import annotations

import re
import sys
import types
import xml.etree.ElementTree as ET

import pytest

from autoseg_harness import MODULE_DIR, REPO

UI = MODULE_DIR / "Resources" / "UI" / "AutoSegTraining.ui"
CODE = MODULE_DIR / "AutoSegSlicer" / "train" / "widget.py"
QT_CLASSES = {"QWidget", "QLabel", "QComboBox", "QPushButton", "QCheckBox", "QLineEdit", "QDoubleSpinBox", "QSpinBox",
              "QProgressBar", "QPlainTextEdit"}


def test_every_form_attribute_used_exists_in_the_ui_and_custom_widgets_are_declared():
    root = ET.parse(UI).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    used = set(re.findall(r"\bform\.([A-Za-z_]\w*)", CODE.read_text()))
    assert len(used) > 10
    assert sorted(used - set(widgets)) == []
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    assert sorted({c for c in widgets.values() if c not in QT_CLASSES} - custom) == []
    cmake = (MODULE_DIR / "CMakeLists.txt").read_text()
    assert "Resources/UI/AutoSegTraining.ui" in cmake


# -- the section with stand-in widgets ------------------------------------------------------------------------
class FakeWidget:
    def __init__(self, **values):
        self.text, self.value, self.checked, self.enabled, self.toolTip = "", 0, False, True, ""
        self.maximum, self.currentPath, self.lines, self.items, self._data = 100, "", [], [], None
        self.__dict__.update(values)

    def connect(self, signal, slot):
        pass

    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self._data is None:
            self._data = data

    @property
    def currentData(self):
        return self._data

    def appendPlainText(self, line):
        self.lines.append(line)

    def clear(self):
        self.lines = []


class FakeTimer:
    def __init__(self):
        self.active = False

    def setInterval(self, ms):
        pass

    def connect(self, signal, slot):
        pass

    def start(self):
        self.active = True

    def stop(self):
        self.active = False


@pytest.fixture
def section(slicer_harness, tmp_path, monkeypatch):
    import slicer

    from AutoSegSlicer.train.logic import TrainingLogic
    from test_training import fake_factory

    fake_qt = types.SimpleNamespace(QTimer=FakeTimer, QSettings=lambda: types.SimpleNamespace(setValue=lambda k, v: None))
    monkeypatch.setitem(sys.modules, "qt", fake_qt)
    shown = {"errors": [], "confirm": []}
    monkeypatch.setattr(slicer.util, "errorDisplay", lambda text, **kw: shown["errors"].append(text), raising=False)
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                        lambda text, **kw: shown["confirm"].append(text) or True, raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(applicationLogic=lambda: slicer_harness.app_logic))
    from AutoSegSlicer.train.widget import TrainingSection

    refreshed = []
    panel = types.SimpleNamespace(ensureDependencies=lambda training=False: True, currentModel=lambda: None,
                                  refreshModels=lambda select_path=None: refreshed.append(select_path),
                                  logic=types.SimpleNamespace(models_dir=tmp_path / "models"))
    s = TrainingSection(panel)
    names = re.findall(r"\bform\.([A-Za-z_]\w*)", CODE.read_text())
    s.form = types.SimpleNamespace(**{n: FakeWidget() for n in names})
    s.form.modeComboBox._data = "full"
    s.form.trainingDeviceComboBox._data = "cpu"
    s.form.budgetSpinBox.value = 0.0
    s.logic = TrainingLogic(slicer_harness.scene, tmp_path / "models", sys.executable, work_root=tmp_path / "runs",
                            pythonpath=str(REPO), runner_factory=fake_factory())
    s.shown, s.refreshed = shown, refreshed
    return s


def _run(section, timeout=120):
    import time
    deadline = time.monotonic() + timeout
    while section.job is not None:
        assert time.monotonic() < deadline
        section._poll()
        time.sleep(0.05)


def test_start_offers_a_single_fold_for_few_cases_then_installs(section, synthetic_dataset, monkeypatch,
                                                                slicer_harness):
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=3")
    ds = synthetic_dataset(name="Few", n_cases=3, shape=(6, 10, 10))
    section.form.datasetPathLineEdit.currentPath = str(ds)
    section.onDatasetChanged(str(ds))
    assert section.form.datasetSummaryLabel.text.startswith("Few: 3 case(s); inputs: MRI; labels: organ (1), lesion (2)")
    assert section.form.modelNameLineEdit.text == "Few"
    section.onStart()
    assert "at least 5" in section.shown["confirm"][0]            # explained, single fold offered, accepted
    assert section.job is not None and section.form.startTrainingButton.text == "Cancel"
    assert section.job.state.folds == ["all"]
    _run(section)
    assert section.shown["errors"] == []
    assert section.form.trainingStatusLabel.text.startswith("Done: model installed in ")
    bar = section.form.trainingProgressBar
    assert bar.value == bar.maximum and bar.maximum in (3, 100)   # 3 epochs, unless no poll fell within them
    assert len(section.refreshed) == 1 and section.refreshed[0].name == "Few"
    assert section.form.startTrainingButton.text == "Start training"
    table_id = slicer_harness.app_logic.GetSelectionNode().GetActiveTableID()
    assert slicer_harness.scene.GetNodeByID(table_id).GetName() == "Few cross-validation"
    assert any("installed" in line for line in section.form.trainingMessagesTextEdit.lines)


def test_a_failed_verification_is_shown_and_nothing_installed(section, synthetic_dataset):
    import SimpleITK as sitk

    ds = synthetic_dataset(name="Bad", n_cases=5, shape=(6, 10, 10))
    path = ds / "labelsTr" / "case_003.nii.gz"
    img = sitk.ReadImage(str(path))
    arr = sitk.GetArrayFromImage(img)
    arr[:] = 9
    bad = sitk.GetImageFromArray(arr)
    bad.CopyInformation(img)
    sitk.WriteImage(bad, str(path))
    section.form.datasetPathLineEdit.currentPath = str(ds)
    section.onVerify()                                   # in a child; the panel stays responsive
    assert section._verify_runner is not None and not section.form.verifyButton.enabled
    import time
    deadline = time.monotonic() + 60
    while section._verify_runner is not None:
        assert time.monotonic() < deadline
        section._poll()
        time.sleep(0.05)
    lines = section.form.trainingMessagesTextEdit.lines
    assert any(ln.startswith("ERROR: ") and "case_003" in ln for ln in lines) and "training would not start" in lines[-1]
    assert section.form.verifyButton.enabled
    section.form.modelNameLineEdit.text = "Bad"
    section.onStart()
    _run(section)
    assert len(section.shown["errors"]) == 1 and "failed verification" in section.shown["errors"][0]
    assert any("case_003" in line for line in section.form.trainingMessagesTextEdit.lines)
    assert section.refreshed == [] and section.form.trainingStatusLabel.text.startswith("Stopped")
    assert section.form.resumeTrainingButton.enabled      # the failed run is listed for resuming


def test_starting_over_an_interrupted_run_offers_resume_then_discard(section, synthetic_dataset, monkeypatch):
    import slicer

    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=3,diskfull=1")     # stops after one epoch, resumable
    ds = synthetic_dataset(name="Again", n_cases=3, shape=(6, 10, 10))
    section.form.datasetPathLineEdit.currentPath = str(ds)
    section.form.modelNameLineEdit.text = "Again"
    section.form.modeComboBox._data = "quick"
    section.onStart()
    _run(section)
    assert "is full" in section.shown["errors"][-1]
    monkeypatch.setenv("AUTOSEG_FAKE_TRAIN", "epochs=3")
    answers = iter([False, True])                       # not resume; yes discard and start anew
    monkeypatch.setattr(slicer.util, "confirmYesNoDisplay",
                        lambda text, **kw: section.shown["confirm"].append(text) or next(answers))
    section.onStart()
    assert "Resume it?" in section.shown["confirm"][-2] and "Discard" in section.shown["confirm"][-1]
    _run(section)
    assert section.form.trainingStatusLabel.text.startswith("Done")
    calls = [c for c in (section.logic.work_root / "Again" / "fake_calls.jsonl").read_text().splitlines()]
    assert len(calls) == 4 and all("--resume" not in c for c in calls)   # a fresh folder, trained from scratch
