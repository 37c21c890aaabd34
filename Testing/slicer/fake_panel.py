"""Stand-ins for Qt, the .ui widgets and the Slicer application, so that `widget.AutoSegPanel` and its sections
run headless on slicer-core's real scene.

Qt cannot run here (slicer-headless.md). What the panel needs from it is small: timers, a settings object,
file and input dialogs, message boxes, node combo boxes and the .ui file's widgets. `FakeWidget` records
every ``connect(signal, slot)`` in `CONNECTIONS`, so a test can call each connected slot the way PythonQt
does (`call_like_pythonqt`: only as many of the signal's arguments as the slot's code accepts).
`install(monkeypatch, harness, tmp_path)` puts all of it in place and returns a `Panel` holder.
"""
from __future__ import annotations

import inspect
import sys
import types
import xml.etree.ElementTree as ET

from autoseg_harness import MODULE_DIR

#: (widget, signal, slot) for every connect() made since the last `install`.
CONNECTIONS: list = []

#: Arguments a signal passes, by its signature (what the real widgets send).
SIGNAL_ARGS = {"clicked(bool)": (False,), "toggled(bool)": (True,), "currentIndexChanged(int)": (0,),
               "currentPathChanged(QString)": ("/",), "currentNodeChanged(vtkMRMLNode*)": (None,),
               "timeout()": (), "triggered()": (), "valueChanged(int)": (50,), "currentRowChanged(int)": (0,),
               "selectionChanged()": ()}


class FakeWidget:
    """Any widget: properties are plain attributes; signals are recorded."""

    def __init__(self, name="", **values):
        self.objectName = name
        self.text, self.value, self.checked, self.enabled, self.toolTip = "", 0, False, True, ""
        self.maximum, self.currentPath, self.lines, self.items, self.currentIndex = 100, "", [], [], -1
        self.menu, self.rows, self._node = None, [], None
        self.__dict__.update(values)

    def connect(self, signal, slot):
        CONNECTIONS.append((self, signal, slot))
        return True

    # combo boxes
    def addItem(self, text, data=None):
        self.items.append((text, data))
        if self.currentIndex < 0:
            self.currentIndex = 0

    @property
    def count(self):
        return len(self.items)

    @property
    def currentData(self):
        return self.items[self.currentIndex][1] if 0 <= self.currentIndex < len(self.items) else None

    def findData(self, data):
        return next((i for i, (_, d) in enumerate(self.items) if d == data), -1)

    def setCurrentIndex(self, i):
        self.currentIndex = i

    def setItemData(self, *args):
        pass

    def blockSignals(self, value):
        return False

    def clear(self):
        self.items, self.lines, self.currentIndex = [], [], -1

    # text edits, layouts, buttons, node selectors
    def appendPlainText(self, line):
        self.lines.append(line)

    def addRow(self, label, widget):
        self.rows.append((label, widget))

    def removeWidget(self, widget):
        self.rows = [r for r in self.rows if widget not in r]

    def deleteLater(self):
        pass

    def setMenu(self, menu):
        self.menu = menu

    def setMRMLScene(self, scene):
        self.scene = scene

    def setToolTip(self, text):
        self.toolTip = text

    def currentNode(self):
        return self._node

    # list widgets, table views
    def selectedItems(self):
        return [self.items[i] for i in getattr(self, "selected_rows", [])]

    def row(self, item):
        return self.items.index(item)

    def setMRMLTableNode(self, node):
        self.tableNode = node

    def selectionModel(self):
        """Selected indexes of a table view: ``selected_rows`` (set by a test) of ``tableNode``."""
        table, rows = getattr(self, "tableNode", None), getattr(self, "selected_rows", [])
        return types.SimpleNamespace(selectedIndexes=lambda: [TableIndex(table, r, 1) for r in rows])

    def setCurrentNode(self, node):
        self._node = node


class TableIndex:
    """A QModelIndex of a table view over a vtkMRMLTableNode (row, column; ``data()`` is the cell's text)."""

    def __init__(self, table, row, column):
        self.table, self._row, self._column = table, row, column

    def row(self):
        return self._row

    def sibling(self, row, column):
        return TableIndex(self.table, row, column)

    def data(self):
        return self.table.GetCellText(self._row, self._column)


class FakeTimer(FakeWidget):
    def setInterval(self, ms):
        self.interval = ms

    def setSingleShot(self, value):
        self.singleShot = value

    def start(self):
        self.active = True

    def stop(self):
        self.active = False

    def isActive(self):
        return getattr(self, "active", False)


class FakeMenu(FakeWidget):
    def addAction(self, text):
        action = FakeWidget(text)
        action.text = text
        self.items.append((text, action))
        return action


class FakeInputDialog(FakeWidget):
    """QInputDialog object: ``answer`` (class attribute) is the item chosen, None = Cancel."""
    answer = None
    shown = []

    def setWindowTitle(self, t):
        pass

    def setLabelText(self, t):
        pass

    def setComboBoxItems(self, names):
        self.names = list(names)
        FakeInputDialog.shown.append(self.names)

    def setComboBoxEditable(self, v):
        pass

    def exec_(self):
        return 1 if FakeInputDialog.answer is not None else 0

    def textValue(self):
        # Like Qt: the current item, whatever button was pressed.
        return FakeInputDialog.answer if FakeInputDialog.answer is not None else self.names[0]


class Cursor:
    depth = 0

    @staticmethod
    def overrideCursor():
        return object() if Cursor.depth else None

    @staticmethod
    def restoreOverrideCursor():
        Cursor.depth = max(0, Cursor.depth - 1)


class WaitCursor:
    def __enter__(self):
        Cursor.depth += 1

    def __exit__(self, *exc):
        Cursor.depth -= 1


class FakeSettings:
    """QSettings over a dict (``answers["settings"]``)."""
    store: dict = {}

    def setValue(self, key, value):
        FakeSettings.store[key] = value

    def value(self, key, default=None):
        return FakeSettings.store.get(key, default)

    def contains(self, key):
        return key in FakeSettings.store


def fake_qt(answers, app_data):
    FakeSettings.store = answers["settings"]
    return types.SimpleNamespace(
        QStandardPaths=types.SimpleNamespace(AppLocalDataLocation=9, writableLocation=lambda kind: str(app_data)),
        QTimer=FakeTimer, QMenu=FakeMenu, QLabel=lambda text="": FakeWidget(text=text),
        QSettings=FakeSettings,
        QFileDialog=types.SimpleNamespace(getExistingDirectory=lambda *a: answers["directory"],
                                          getOpenFileName=lambda *a: answers["file"],
                                          getSaveFileName=lambda *a: answers["save"]),
        QInputDialog=FakeInputDialog, QDialog=types.SimpleNamespace(Accepted=1, Rejected=0),
        Qt=types.SimpleNamespace(ToolTipRole=3, WaitCursor=3), QApplication=Cursor,
        QDesktopServices=types.SimpleNamespace(openUrl=lambda url: None),
        QUrl=types.SimpleNamespace(fromLocalFile=lambda p: p))


def ui_widgets(ui_file) -> dict:
    """name -> FakeWidget for every widget and named layout of a .ui file, with its ``text`` property."""
    root = ET.parse(ui_file).getroot()
    out = {}
    for w in root.iter("widget"):
        text = next((prop.findtext("string") for prop in w.findall("property") if prop.get("name") == "text"), "")
        out[w.get("name")] = FakeWidget(w.get("name"), text=text or "")
    for lay in root.iter("layout"):
        if lay.get("name"):
            out[lay.get("name")] = FakeWidget(lay.get("name"))
    return out


def fake_parameter_node_class():
    """A stand-in for ``parameterNodeWrapper`` over `parameters.FIELDS` (values kept in Python), exposing the
    wrapped vtkMRMLScriptedModuleNode as ``parameterNode`` as the real wrapper does."""
    from AutoSegSlicer.common import parameters

    class Wrapper:
        def __init__(self, node):
            self.parameterNode = node
            for name, (_, default) in parameters.FIELDS.items():
                setattr(self, name, default)

        def connectGui(self, ui):
            return object()

        def disconnectGui(self, tag):
            pass

    return Wrapper


def call_like_pythonqt(slot, signal):
    """Call ``slot`` with the signal's arguments as PythonQt does: all of them when the slot's code takes
    ``*args``, else only as many as its positional parameters (PythonQtSignalTarget::call)."""
    args = SIGNAL_ARGS[signal]
    code = slot.__code__
    if not code.co_flags & inspect.CO_VARARGS:
        args = args[:code.co_argcount - (1 if inspect.ismethod(slot) else 0)]
    return slot(*args)


def install(monkeypatch, harness, tmp_path, settings=None, patch_models_folder=True):
    """Fake Qt + Slicer app; returns ``(panel, shown)`` with the panel set up on ``harness``'s scene.
    ``shown`` collects errors, confirmations (answered by ``shown['confirm_answer']``) and dialog answers."""
    import slicer

    CONNECTIONS.clear()
    FakeInputDialog.answer, FakeInputDialog.shown = None, []
    Cursor.depth = 0
    shown = {"errors": [], "confirm": [], "confirm_answer": True, "settings": {}, "directory": "", "file": "",
             "save": "", "warnings": []}
    shown["settings"].update(settings or {})
    monkeypatch.setitem(sys.modules, "qt", fake_qt(shown, tmp_path / "appdata"))
    for name in ("AutoSegSlicer.common.widget", "AutoSegSlicer.segment.widget", "AutoSegSlicer.segment.widget_models",
                 "AutoSegSlicer.correct.widget", "AutoSegSlicer.segment.widget_uncertainty",
                 "AutoSegSlicer.segment.widget_batch"):
        monkeypatch.delitem(sys.modules, name, raising=False)   # re-import against the fake qt

    def error_display(text, **kw):
        shown["errors"].append(text + ("\n" + kw["detailedText"] if kw.get("detailedText") else ""))

    def confirm(text, *a, **kw):
        shown["confirm"].append(text)
        return shown["confirm_answer"]

    widgets = {}
    for ui_file in ("AutoSeg.ui", "AutoSegTraining.ui"):
        widgets[ui_file] = ui_widgets(MODULE_DIR / "Resources" / "UI" / ui_file)

    def load_ui(path):
        w = FakeWidget(path)
        w.children = widgets[path.split("/")[-1]]
        return w

    util = slicer.util
    for name, value in {"errorDisplay": error_display, "confirmOkCancelDisplay": confirm,
                        "confirmYesNoDisplay": confirm, "warningDisplay": lambda t, **k: shown["warnings"].append(t),
                        "loadUI": load_ui, "childWidgetVariables": lambda w: types.SimpleNamespace(**w.children),
                        "settingsValue": lambda key, default: shown["settings"].get(key, default), "mainWindow": lambda: None,
                        "WaitCursor": WaitCursor, "setSliceViewerLayers": lambda **kw: None,
                        "selectModule": lambda name: None}.items():
        monkeypatch.setattr(util, name, value, raising=False)
    monkeypatch.setattr(slicer, "qMRMLNodeComboBox", lambda: FakeWidget("nodeCombo"), raising=False)
    monkeypatch.setattr(slicer, "app", types.SimpleNamespace(
        temporaryPath=str(tmp_path / "tmp"), setOverrideCursor=lambda cursor: WaitCursor().__enter__(),
        restoreOverrideCursor=Cursor.restoreOverrideCursor, slicerUserSettingsFilePath=str(tmp_path / "settings" / "Slicer.ini"),
        applicationLogic=lambda: harness.app_logic), raising=False)
    from AutoSegSlicer.common import parameters

    monkeypatch.setattr(parameters, "parameter_node_class", fake_parameter_node_class)
    node = harness.scene.AddNewNodeByClass("vtkMRMLScriptedModuleNode", "AutoSeg")
    layout = types.SimpleNamespace(widgets=[], addWidget=lambda w: layout.widgets.append(w),
                                   addStretch=lambda n=0: layout.widgets.append("stretch"))
    module_widget = types.SimpleNamespace(resourcePath=lambda rel: rel, layout=layout,
                                          logic=types.SimpleNamespace(getParameterNode=lambda: node),
                                          parent=types.SimpleNamespace(isEntered=True))
    import AutoSegSlicer.segment.widget as widget_module

    if patch_models_folder:
        monkeypatch.setattr(widget_module, "default_models_folder", lambda: str(tmp_path / "models"))
    monkeypatch.setattr(widget_module, "python_executable", lambda: sys.executable)
    panel = widget_module.AutoSegPanel(module_widget)
    panel.setup()
    return panel, shown


def connected_slots():
    """(signal, slot) of every recorded connection, slots as bound methods (stand-in actions included)."""
    return [(signal, slot) for _, signal, slot in CONNECTIONS]


def slot_name(slot) -> str:
    """``Class.method`` of a bound slot, named by the object's class (a panel's slots may come from a mixin)."""
    owner = getattr(slot, "__self__", None)
    if owner is not None and hasattr(slot, "__name__"):
        return f"{type(owner).__name__}.{slot.__name__}"
    return getattr(slot, "__qualname__", repr(slot))
