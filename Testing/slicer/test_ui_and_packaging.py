"""Static checks of what cannot run headless: the .ui file against the code, Slicer API use (trap 12),
the CMake lists against the files on disk, and the ExtensionsIndex entry against its schema."""
from __future__ import annotations

import ast
import json
import re
import struct
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from autoseg_harness import MODULE_DIR, REPO
from AutoSegSlicer.common import parameters

UI = MODULE_DIR / "Resources" / "UI" / "AutoSeg.ui"
MODULE_SOURCES = [MODULE_DIR / "AutoSeg.py", *sorted((MODULE_DIR / "AutoSegSlicer").rglob("*.py"))]

QT_CLASSES = {"QWidget", "QLabel", "QComboBox", "QPushButton", "QFrame", "QCheckBox", "QLineEdit", "QDoubleSpinBox",
              "QSpinBox", "QProgressBar", "QPlainTextEdit", "QTextEdit", "QGroupBox", "QRadioButton", "QToolButton",
              "QTableWidget", "QTabWidget", "QSplitter", "QScrollArea", "QListWidget", "QSlider"}


def _ui():
    root = ET.parse(UI).getroot()
    widgets = {w.get("name"): w.get("class") for w in root.iter("widget")}
    layouts = {w.get("name") for w in root.iter("layout")}
    custom = {c.findtext("class") for c in root.iter("customwidget")}
    return root, widgets, layouts, custom


def test_every_ui_attribute_used_in_code_exists_in_the_ui_file():
    _, widgets, layouts, _ = _ui()
    used = set()
    for path in MODULE_SOURCES:
        used |= set(re.findall(r"\bui\.([A-Za-z_]\w*)", path.read_text()))
    assert used, "no ui.X found: the regular expression is wrong"
    missing = sorted(used - set(widgets) - layouts)
    assert not missing, f"used in code but not in {UI.name}: {missing}"


def test_custom_widgets_are_declared():
    _, widgets, _, custom = _ui()
    undeclared = sorted({c for c in widgets.values() if c not in QT_CLASSES} - custom)
    assert not undeclared, f"widget classes neither Qt nor declared in <customwidgets>: {undeclared}"


def test_parameter_names_match_the_parameter_node_and_widget_types():
    root, widgets, _, _ = _ui()
    bound = {}
    for w in root.iter("widget"):
        for prop in w.findall("property"):
            if prop.get("name") == "SlicerParameterName":
                bound[prop.findtext("string")] = w
    assert set(bound) == set(parameters.FIELDS), (sorted(bound), sorted(parameters.FIELDS))
    for name, w in bound.items():
        type_name = parameters.FIELDS[name][0]
        if type_name.startswith("vtkMRML"):
            assert w.get("class") == "qMRMLNodeComboBox"
            node_types = [s.text for s in w.iter("string") if s.text and s.text.startswith("vtkMRML")]
            assert type_name in node_types, (name, node_types)
        else:
            assert w.get("class") in parameters.WIDGETS_FOR_TYPE[type_name], (name, w.get("class"), type_name)


def test_ui_connections_name_existing_widgets():
    root, widgets, _, _ = _ui()
    for c in root.iter("connection"):
        assert c.findtext("sender") in widgets and c.findtext("receiver") in widgets


def _slicer_attribute_uses(path):
    tree = ast.parse(path.read_text())
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) and node.value.id == "slicer":
            yield node.attr, node.lineno


def test_slicer_util_functions_are_always_called_as_slicer_util_x():
    """Trap 12: slicer-core re-exports slicer.util names at the top level, the app does not."""
    import slicer.util

    util_names = {n for n, v in vars(slicer.util).items() if callable(v) and getattr(v, "__module__", "") == "slicer.util"}
    assert "getNode" in util_names and "arrayFromVolume" in util_names
    bad = [(p.name, line, attr) for p in MODULE_SOURCES for attr, line in _slicer_attribute_uses(p) if attr in util_names]
    assert not bad, f"write slicer.util.X instead: {bad}"


def test_module_code_imports_no_qt_outside_the_widget_and_nothing_at_import_time():
    for path in MODULE_SOURCES:
        if path.name == "AutoSeg.py" or path.name.startswith("widget"):  # the Qt side: widget*.py only
            continue
        tree = ast.parse(path.read_text())
        for node in tree.body:
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                names = [a.name for a in node.names] if isinstance(node, ast.Import) else [node.module or ""]
                assert not any(n.split(".")[0] in ("qt", "ctk", "slicer", "torch") for n in names), (path.name, names)


#: The Slicer package's sub-packages, bottom first, with the sub-packages each may import (DEVELOPERS.md).
LAYERS = {"common": {"common"},
          "correct": {"common", "correct"},
          "segment": {"common", "correct", "segment"},
          "train": {"common", "correct", "train"},
          "effect": {"common", "segment", "effect"}}


def _slicer_package_imports(path):
    """The AutoSegSlicer modules ``path`` imports (at module level or inside functions), as dotted names."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and (node.module or "").startswith("AutoSegSlicer"):
            out |= {f"{node.module}.{a.name}" for a in node.names}
        elif isinstance(node, ast.Import):
            out |= {a.name for a in node.names if a.name.startswith("AutoSegSlicer")}
    return out


def test_slicer_sub_packages_import_one_way():
    package = MODULE_DIR / "AutoSegSlicer"
    found = {p.name for p in package.iterdir() if (p / "__init__.py").is_file()}
    assert found == set(LAYERS), sorted(found)
    for path in package.rglob("*.py"):
        rel = path.relative_to(package).parts
        if len(rel) == 1:        # the package root (self-test): on top, may import any sub-package
            continue
        layer = rel[0]
        for name in _slicer_package_imports(path):
            parts = name.split(".")
            assert len(parts) > 2 and parts[1] in LAYERS, f"{path}: imports {name}, not a sub-package module"
            assert parts[1] in LAYERS[layer], f"{path}: {layer} may not import {name} (allowed: {sorted(LAYERS[layer])})"


def test_the_module_reads_and_writes_json_files_only_through_autoseglib():
    """JSON files go through AutoSegLib.io.jsonfile.read_json and io.atomic.write_json; ``json.loads`` stays only
    where the text is no file: a child's stdout (runner, dependencies) and node attributes (region, batch_table)."""
    allowed = {"AutoSegSlicer/common/runner.py", "AutoSegSlicer/common/dependencies.py",
               "AutoSegSlicer/common/region.py", "AutoSegSlicer/segment/batch_table.py"}
    stray = []
    for path in sorted(MODULE_DIR.rglob("*.py")):
        rel = path.relative_to(MODULE_DIR).as_posix()
        for number, line in enumerate(path.read_text().splitlines(), 1):
            if re.search(r"json\.loads?\(|JSONDecodeError|json\.dump\(", line) and rel not in allowed:
                stray.append(f"{rel}:{number}: {line.strip()}")
    assert stray == [], "\n".join(stray)


def test_the_packaging_check_would_catch_a_left_out_sub_package():
    """The CMake glob evaluated by `cmake_glob` misses the sub-packages when it is not recursive."""
    text = (MODULE_DIR / "CMakeLists.txt").read_text().replace("GLOB_RECURSE AUTOSEGSLICER", "GLOB AUTOSEGSLICER")
    flat = cmake_glob(text, "AUTOSEGSLICER_PYTHON_SCRIPTS", MODULE_DIR)
    assert MODULE_DIR / "AutoSegSlicer" / "selftest.py" in flat
    assert MODULE_DIR / "AutoSegSlicer" / "train" / "logic.py" not in flat


def _cmake_list(text, variable):
    m = re.search(r"set\(\s*" + variable + r"\s+(.*?)\)", text, re.S)
    assert m, f"{variable} not found"
    return [t for t in m.group(1).split() if not t.startswith("#")]


def cmake_glob(text, variable, source_dir):
    """The files CMake's ``file(GLOB|GLOB_RECURSE <variable> RELATIVE ... <patterns>)`` in ``text`` lists, evaluated
    here as CMake does: GLOB matches the last path component in its folder only, GLOB_RECURSE at any depth below."""
    m = re.search(r"file\(\s*(GLOB|GLOB_RECURSE)\s+" + variable + r"\s(.*?)\)", text, re.S)
    assert m, f"file(GLOB ... {variable} ...) not found"
    words = m.group(2).split()
    assert "RELATIVE" in words, "the list must hold paths relative to the module folder (installed keeping them)"
    patterns = [w for w in words if "*" in w]
    assert patterns, words
    found = set()
    for pattern in patterns:
        folder, name = pattern.replace("${CMAKE_CURRENT_SOURCE_DIR}", str(source_dir)).rsplit("/", 1)
        assert "*" not in folder, pattern
        found |= set(Path(folder).rglob(name) if m.group(1) == "GLOB_RECURSE" else Path(folder).glob(name))
    return {p for p in found if "__pycache__" not in p.parts}


def test_every_module_file_on_disk_is_in_the_module_cmake_lists():
    text = (MODULE_DIR / "CMakeLists.txt").read_text()
    scripts = _cmake_list(text, "MODULE_PYTHON_SCRIPTS")
    assert scripts == ["${MODULE_NAME}.py", "${AUTOSEGSLICER_PYTHON_SCRIPTS}", "${EFFECT_PYTHON_SCRIPTS}"], scripts
    effect_scripts = _cmake_list(text, "EFFECT_PYTHON_SCRIPTS")
    # every .py of the module folder (the AutoSegSlicer sub-packages included) is installed
    covered = {MODULE_DIR / "AutoSeg.py", *cmake_glob(text, "AUTOSEGSLICER_PYTHON_SCRIPTS", MODULE_DIR),
               *(MODULE_DIR / p for p in effect_scripts)}
    on_disk = {p for p in MODULE_DIR.rglob("*.py") if "__pycache__" not in p.parts}
    assert (MODULE_DIR / "AutoSegSlicer" / "train" / "logic.py") in on_disk
    assert on_disk - covered == set(), f"not installed by the module CMakeLists: {sorted(on_disk - covered)}"
    # a package folder without __init__.py would not import once installed
    for folder in {p.parent for p in on_disk if "AutoSegSlicer" in p.parts}:
        assert (folder / "__init__.py").is_file(), f"{folder} has .py files but no __init__.py"
    resources = {s.replace("${MODULE_NAME}", "AutoSeg") for s in _cmake_list(text, "MODULE_PYTHON_RESOURCES")}
    res_disk = {str(p.relative_to(MODULE_DIR)) for p in (MODULE_DIR / "Resources").rglob("*") if p.is_file()}
    assert res_disk == resources, (sorted(res_disk), sorted(resources))
    assert "WITH_GENERIC_TESTS" in text and "slicer_add_python_unittest(SCRIPT ${MODULE_NAME}.py)" in text


def test_top_level_cmake_declares_the_extension_and_bundles_all_of_autoseglib():
    text = (REPO / "CMakeLists.txt").read_text()
    for key in ("EXTENSION_HOMEPAGE", "EXTENSION_CATEGORY", "EXTENSION_CONTRIBUTORS", "EXTENSION_DESCRIPTION",
                "EXTENSION_ICONURL", "EXTENSION_SCREENSHOTURLS"):
        assert re.search(r"set\(" + key + r" \"[^\"]+\"\)", text), key
    assert re.search(r'set\(EXTENSION_DEPENDS "PyTorch"\)', text)
    assert "add_subdirectory(AutoSegModule)" in text
    # The glob must reach every .py of AutoSegLib, at any depth.
    m = re.search(r"file\(GLOB_RECURSE AUTOSEGLIB_PYTHON_SCRIPTS(.*?)\)", text, re.S)
    assert m and "${CMAKE_CURRENT_SOURCE_DIR}/AutoSegLib/*.py" in m.group(1) and "RELATIVE" in m.group(1)
    assert re.search(r"slicerMacroBuildScriptedModule\(\s*NAME AutoSegLib\s*SCRIPTS \$\{AUTOSEGLIB_PYTHON_SCRIPTS\}", text)
    globbed = {p for p in (REPO / "AutoSegLib").rglob("*.py")}       # what CMake's glob matches
    assert (REPO / "AutoSegLib" / "__init__.py") in globbed
    # every package folder has an __init__.py (else the installed copy would not import)
    for d in {p.parent for p in globbed}:
        assert (d / "__init__.py").is_file(), f"{d} has .py files but no __init__.py"
    # screenshot and icon URLs point at files that exist in the repository
    for url in re.search(r'EXTENSION_SCREENSHOTURLS "([^"]+)"', text).group(1).split() + \
            [re.search(r'EXTENSION_ICONURL "([^"]+)"', text).group(1)]:
        rel = url.split("/main/", 1)[1]
        assert (REPO / rel).is_file(), f"{url}: {rel} is not in the repository"


def test_extensions_index_entry_uses_only_schema_fields():
    entry = json.loads((REPO / "AutoSeg.json").read_text())
    allowed = {"$schema", "build_dependencies", "build_subdirectory", "category", "enabled", "scm_revision",
               "scm_type", "scm_url", "tier"}   # slicer-extension-catalog-entry-schema v1.0.1 (additionalProperties: false)
    assert set(entry) <= allowed, sorted(set(entry) - allowed)
    assert {"$schema", "category", "scm_url"} <= set(entry)
    assert "slicer-extension-catalog-entry-schema-v1.0.1.json" in entry["$schema"]
    assert entry["build_dependencies"] == ["PyTorch"] and entry["category"] == "Segmentation"
    assert 1 <= entry["tier"] <= 5 and entry["scm_type"] == "git"


def _png_size(path: Path):
    data = path.read_bytes()[:24]
    assert data[:8] == b"\x89PNG\r\n\x1a\n", f"{path} is not a PNG"
    return struct.unpack(">II", data[16:24])


@pytest.mark.parametrize("icon", [REPO / "Resources" / "AutoSeg.png", MODULE_DIR / "Resources" / "Icons" / "AutoSeg.png"])
def test_icons_are_128_pixel_pngs(icon):
    assert _png_size(icon) == (128, 128)
