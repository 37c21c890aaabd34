"""What the AutoSeg module uses of Slicer's API, read from its sources by AST, and checked against
slicer_api.json (built by extract_slicer_api.py from Slicer's and CTK's sources at each supported release).

`uses(paths)` finds:

- ``slicer.util.f(..., kw=...)``: the function and the keyword names;
- ``slicer.vtkX`` / ``slicer.qX``: the class; ``slicer.vtkX.Method``: a static method of that class;
- ``v = slicer.vtkX()`` or ``v = <scene>.AddNewNodeByClass("vtkX", ...)`` then ``v.Method(...)``: a method of
  that class (within one function);
- any other ``obj.Method(...)`` with an UpperCamel name (the VTK/MRML convention; the module's own Python
  methods are snake_case or lowerCamel): a method of some class;
- ``torch_logic.m(..., kw=...)`` (a ``PyTorchUtils.PyTorchUtilsLogic``): the method and its keywords;
- ``w.connect("signal(args)", ...)`` and ``w.prop = ...`` where ``w`` is a widget of the .ui files
  (``self.ui.name`` / ``self.form.name``), ``v = slicer.qX()`` or ``self.v = slicer.qX()``: a signal / property
  of that widget class;
- calls and property writes on a receiver of known Qt class (as above, ``v = <module>PythonQt.qX(...)``, or a name
  in `RECEIVER_CLASSES`, e.g. ``self.scriptedEffect``): every method name, lowerCamel too (Qt's own methods in
  `QT_METHODS` excepted);
- ``from SegmentEditorEffects import X``: a name of Slicer's Python effect package.

`check(uses, fixture, tag)` returns the uses that release lacks, as readable lines.
"""
from __future__ import annotations

import ast
import json
import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path

HERE = Path(__file__).resolve().parent
EXTERNAL = "<not Slicer>"
FIXTURE = HERE / "slicer_api.json"

#: Signals and properties of the plain Qt classes the module uses (Qt 5.15 in every supported Slicer; Qt's
#: own API is not in Slicer's sources). A Slicer/CTK widget inherits them from its Qt base.
QT_SIGNALS = {"clicked(bool)", "clicked()", "toggled(bool)", "currentIndexChanged(int)", "timeout()", "triggered()",
              "textChanged(QString)", "valueChanged(double)", "valueChanged(int)", "editingFinished()",
              "currentRowChanged(int)"}
QT_PROPERTIES = {"enabled", "toolTip", "text", "visible", "checked", "value", "maximum", "minimum", "currentIndex",
                 "currentData", "currentText", "count", "collapsed", "placeholderText", "readOnly", "objectName",
                 "title", "suffix", "decimals", "singleStep", "checkable", "plainText", "format", "toolTipDuration",
                 "alignment", "geometry", "wordWrap", "textFormat", "openExternalLinks", "maximumBlockCount"}


#: Receivers named like this are of this class wherever they appear (``self.scriptedEffect`` in a scripted
#: Segment Editor effect is the C++ adaptor; the effect code names slice widgets and the layout manager so).
RECEIVER_CLASSES = {"scriptedEffect": "qSlicerSegmentEditorScriptedEffect", "sliceWidget": "qMRMLSliceWidget",
                    "layoutManager": "qSlicerLayoutManager"}
#: Methods of QObject/QWidget (not in Slicer's sources) called on Slicer widgets; selectionModel: QAbstractItemView
#: (qMRMLTableView is a QTableView).
QT_METHODS = {"blockSignals", "setToolTip", "setEnabled", "setVisible", "show", "hide", "className", "objectName",
              "setObjectName", "deleteLater", "parent", "setParent", "connect", "disconnect", "self", "selectionModel"}
#: Slicer's Python packages whose names the module imports (checked against the fixture's ``python_modules``).
PYTHON_MODULES = ("SegmentEditorEffects",)


@dataclass
class Uses:
    util_calls: list = field(default_factory=list)       # (where, function, [keywords])
    classes: list = field(default_factory=list)          # (where, class)
    class_methods: list = field(default_factory=list)    # (where, class, method)
    methods: list = field(default_factory=list)          # (where, method) receiver unknown
    signals: list = field(default_factory=list)          # (where, class, signal)
    properties: list = field(default_factory=list)       # (where, class, property)
    pytorchutils: list = field(default_factory=list)     # (where, method, [keywords]) on a PyTorchUtilsLogic
    python_imports: list = field(default_factory=list)   # (where, module, name) from Slicer's Python packages


def ui_widget_classes(ui_dir) -> dict:
    """Widget name -> class name, over every .ui file."""
    out = {}
    for ui in Path(ui_dir).glob("*.ui"):
        for w in ET.parse(ui).getroot().iter("widget"):
            out[w.get("name")] = w.get("class")
    return out


def ui_properties(ui_dir) -> list:
    """(where, class, property) for each property set in the .ui files on a Slicer/CTK widget."""
    out = []
    for ui in Path(ui_dir).glob("*.ui"):
        for w in ET.parse(ui).getroot().iter("widget"):
            cls = w.get("class")
            if not cls.startswith(("qMRML", "qSlicer", "ctk")):
                continue
            for prop in w.findall("property"):
                if prop.get("stdset") == "0":   # dynamic properties (SlicerParameterName) are not API
                    continue
                out.append((f"{ui.name}:{w.get('name')}", cls, prop.get("name")))
    return out


def _slicer_attr(node):
    """``slicer.X`` -> "X"; ``slicer.util.X`` -> ("util", "X")."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
        return node.attr
    if (isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute)
            and isinstance(node.value.value, ast.Name) and node.value.value.id == "slicer"):
        return (node.value.attr, node.attr)
    return None


def _widget_of(node, widgets: dict, local_types: dict, self_types: dict = None):
    """The class of a widget expression: ``self.ui.name`` / ``self.form.name`` / ``panel.ui.name`` / a local /
    ``self.name`` assigned a Slicer widget in the file / a name in `RECEIVER_CLASSES`."""
    if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Attribute) and node.value.attr in ("ui", "form"):
        return widgets.get(node.attr)
    if isinstance(node, ast.Name):
        return local_types.get(node.id) or RECEIVER_CLASSES.get(node.id)
    if isinstance(node, ast.Attribute):
        if isinstance(node.value, ast.Name) and node.value.id == "self" and node.attr in (self_types or {}):
            return self_types[node.attr]
        return RECEIVER_CLASSES.get(node.attr)
    return None


def _class_call(call, pythonqt: set):
    """``slicer.qX(...)`` / ``<module>PythonQt.qX(...)`` -> "qX" (also vtk/ctk), else None."""
    if not isinstance(call, ast.Call):
        return None
    cls = _slicer_attr(call.func)
    if (cls is None and isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name)
            and call.func.value.id in pythonqt):
        cls = call.func.attr
    return cls if isinstance(cls, str) and re.match(r"(vtk|q|ctk)[A-Z]", cls) else None


def uses(paths, ui_dir) -> Uses:
    widgets = ui_widget_classes(ui_dir)
    found = Uses()
    found.properties += ui_properties(ui_dir)
    for path in paths:
        tree = ast.parse(Path(path).read_text(), str(path))
        other_modules = {a.asname or a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import)
                         for a in n.names if a.name.split(".")[0] not in ("slicer", "vtk")}
        other_modules |= {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)
                          for a in n.names if (n.module or "").split(".")[0] not in ("slicer", "vtk")}
        pythonqt = {a.asname or a.name for n in ast.walk(tree) if isinstance(n, ast.Import)
                    for a in n.names if a.name.endswith("PythonQt")}
        other_modules -= pythonqt
        for n in ast.walk(tree):
            if isinstance(n, ast.ImportFrom) and n.module in PYTHON_MODULES:
                found.python_imports += [(f"{Path(path).name}:{n.lineno}", n.module, a.name) for a in n.names]
        self_types = {}
        for n in ast.walk(tree):
            if (isinstance(n, ast.Assign) and len(n.targets) == 1 and isinstance(n.targets[0], ast.Attribute)
                    and isinstance(n.targets[0].value, ast.Name) and n.targets[0].value.id == "self"
                    and _class_call(n.value, pythonqt)):
                self_types[n.targets[0].attr] = _class_call(n.value, pythonqt)
        scopes = [n for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.AsyncFunctionDef))] + [tree]
        seen = set()
        for scope in scopes:
            local_types = {}
            for node in ast.walk(scope):
                if isinstance(node, ast.Assign) and len(node.targets) == 1 and isinstance(node.targets[0], ast.Name):
                    v = node.value
                    alias = _widget_of(v, widgets, {}, self_types) if isinstance(v, (ast.Attribute, ast.Name)) else None
                    if alias:   # p = self.scriptedEffect
                        local_types[node.targets[0].id] = alias
                    if isinstance(v, ast.Call):
                        cls = _class_call(v, pythonqt)
                        root = v.func
                        while isinstance(root, ast.Attribute):
                            root = root.value
                        if cls is not None and not cls.startswith("ctk"):
                            local_types[node.targets[0].id] = cls
                            if not isinstance(_slicer_attr(v.func), str):   # <module>PythonQt.qX: the class too
                                found.classes.append((f"{Path(path).name}:{node.lineno}", cls))
                        elif isinstance(root, ast.Name) and root.id in other_modules:
                            local_types[node.targets[0].id] = EXTERNAL  # e.g. sitk.ImageFileReader()
                        elif (isinstance(v.func, ast.Attribute) and v.func.attr == "AddNewNodeByClass" and v.args
                              and isinstance(v.args[0], ast.Constant) and isinstance(v.args[0].value, str)):
                            local_types[node.targets[0].id] = v.args[0].value
            for node in ast.walk(scope):
                if id(node) in seen:
                    continue
                where = f"{Path(path).name}:{getattr(node, 'lineno', '?')}"
                if isinstance(node, ast.Attribute):
                    attr = _slicer_attr(node)
                    if isinstance(attr, str) and re.match(r"(vtk|q|ctk)[A-Z]", attr):
                        seen.add(id(node))
                        found.classes.append((where, attr))
                    elif isinstance(attr, tuple) and re.match(r"(vtk|q|ctk)[A-Z]", attr[0]):
                        seen.add(id(node))
                        found.class_methods.append((where, attr[0], attr[1]))
                    cls = _widget_of(node.value, widgets, local_types, self_types)
                    if (cls and cls.startswith(("qMRML", "qSlicer", "ctk")) and isinstance(node.ctx, ast.Store)):
                        seen.add(id(node))
                        found.properties.append((where, cls, node.attr))
                if not isinstance(node, ast.Call) or not isinstance(node.func, ast.Attribute):
                    continue
                func = node.func
                attr = _slicer_attr(func)
                if isinstance(attr, tuple) and attr[0] == "util":
                    seen.add(id(node))
                    found.util_calls.append((where, attr[1], [k.arg for k in node.keywords if k.arg]))
                    continue
                if func.attr == "connect" and node.args and isinstance(node.args[0], ast.Constant):
                    cls = _widget_of(func.value, widgets, local_types, self_types)
                    if cls:
                        found.signals.append((where, cls, node.args[0].value))
                    continue
                receiver_name = func.value.id if isinstance(func.value, ast.Name) else getattr(func.value, "attr", "")
                if receiver_name == "torch_logic" or (isinstance(func.value, ast.Name) and func.value.id == "PyTorchUtils"):
                    found.pytorchutils.append((where, func.attr, [k.arg for k in node.keywords if k.arg]))
                    continue
                typed = _widget_of(func.value, widgets, local_types, self_types)
                if typed and typed.startswith(("qMRML", "qSlicer")) and func.attr not in QT_METHODS:
                    seen.add(id(node))
                    found.class_methods.append((where, typed, func.attr))   # Qt API: lowerCamel methods too
                    continue
                if not re.match(r"[A-Z][a-z]", func.attr):
                    continue
                receiver = func.value
                if isinstance(receiver, ast.Name) and receiver.id in other_modules:
                    continue  # SimpleITK, numpy ...: not Slicer
                if isinstance(receiver, ast.Name) and local_types.get(receiver.id) == EXTERNAL:
                    continue
                if isinstance(receiver, ast.Name) and receiver.id in local_types:
                    found.class_methods.append((where, local_types[receiver.id], func.attr))
                elif _slicer_attr(receiver) is None:
                    found.methods.append((where, func.attr))
    return found


def load_fixture(path=FIXTURE) -> dict:
    return json.loads(Path(path).read_text())


def _release(fixture, tag):
    r = fixture["releases"][tag]
    return r, set(fixture["common_all_classes"]) | set(r["all_classes"]), \
        set(fixture["common_all_methods"]) | set(r["all_methods"])


def _chain(release, cls):
    """The class and its bases that the fixture has in full, then the first base it lacks (Qt/VTK) or None."""
    chain, c = [], cls
    while c in release["classes"]:
        chain.append(release["classes"][c])
        bases = release["classes"][c]["bases"]
        c = bases[0] if bases else None
    return chain, c


def _vtk_methods(cls_name) -> set:
    """Methods of a VTK class (vtkObject, vtkImageData, ...) from the installed VTK: Slicer's sources do not
    have VTK's; its base API is stable across the VTK versions of the supported Slicers."""
    import vtk

    cls = getattr(vtk, cls_name, None)
    return set(dir(cls)) if cls is not None else set()


_VTK_NAMES = None


def vtk_method_names() -> set:
    global _VTK_NAMES
    if _VTK_NAMES is None:
        import vtk

        names = set()
        for n in dir(vtk):
            if n.startswith("vtk"):
                names |= {m for m in dir(getattr(vtk, n, None)) if m[:1].isupper()}
        _VTK_NAMES = names
    return _VTK_NAMES


def check(found: Uses, fixture: dict, tag: str) -> list:
    """Readable lines for each use that Slicer ``tag`` lacks."""
    release, classes, methods = _release(fixture, tag)
    util = release["util"]
    bad = []
    for where, fn, kws in found.util_calls:
        if fn not in util:
            bad.append(f"{where}: slicer.util.{fn} does not exist in Slicer {tag}")
            continue
        for k in kws:
            if k not in util[fn]["params"] and not util[fn]["varkw"]:
                bad.append(f"{where}: slicer.util.{fn}() has no keyword {k!r} in Slicer {tag}")
    for where, cls in found.classes:
        if cls not in classes:
            bad.append(f"{where}: slicer.{cls} does not exist in Slicer {tag}")
    for where, cls, method in found.class_methods:
        chain, external = _chain(release, cls)
        if not chain:
            if cls not in classes:
                bad.append(f"{where}: class {cls} does not exist in Slicer {tag}")
            continue
        have = set().union(*(set(c["methods"]) for c in chain))
        if method not in have and method not in _vtk_methods(external or ""):
            bad.append(f"{where}: {cls}.{method} does not exist in Slicer {tag}")
    for where, method in found.methods:
        if method not in methods and method not in vtk_method_names():
            bad.append(f"{where}: no class has a method {method} in Slicer {tag}")
    for where, cls, signal in found.signals:
        chain, _ = _chain(release, cls)
        have = set().union(*(set(c["signals"]) for c in chain)) if chain else set()
        if signal not in have and signal not in QT_SIGNALS:
            bad.append(f"{where}: {cls} has no signal {signal} in Slicer {tag}")
    modules = release.get("python_modules", {})
    for where, module, name in found.python_imports:
        if name != "*" and name not in modules.get(module, {}).get("names", ()):
            bad.append(f"{where}: {module}.{name} does not exist in Slicer {tag}")
    torch = fixture["pytorchutils"]
    for where, method, kws in found.pytorchutils:
        if method == "PyTorchUtilsLogic":
            continue
        if method not in torch:
            bad.append(f"{where}: PyTorchUtilsLogic.{method} does not exist in SlicerPyTorch")
            continue
        for k in kws:
            if k not in torch[method]["params"] and not torch[method]["varkw"]:
                bad.append(f"{where}: PyTorchUtilsLogic.{method}() has no keyword {k!r}")
    for where, cls, prop in found.properties:
        chain, _ = _chain(release, cls)
        if not chain:
            bad.append(f"{where}: widget class {cls} is not in Slicer {tag}")
            continue
        have = set().union(*(set(c["properties"]) for c in chain))
        if prop not in have and prop not in QT_PROPERTIES:
            bad.append(f"{where}: {cls} has no property {prop} in Slicer {tag}")
    return bad
