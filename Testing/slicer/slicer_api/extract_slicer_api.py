"""Build slicer_api.json: the parts of Slicer's and CTK's API the AutoSeg module uses, at each supported release.

Run from the repository root with bare (or normal) git clones of Slicer and CTK::

    python Testing/slicer/slicer_api/extract_slicer_api.py --slicer-git PATH/Slicer.git --ctk-git PATH/CTK.git \
        --pytorch-git PATH/SlicerPyTorch.git [--tags v5.8.0 v5.10.0 v5.12.0]

For each Slicer tag it reads, without building anything:

- the Python version Slicer ships (``Slicer_REQUIRED_PYTHON_VERSION`` in CMakeLists.txt);
- the CTK revision it builds (``Slicer_CTK_GIT_TAG`` in SuperBuild/External_CTK.cmake), then CTK at that revision;
- from every C++ header of Slicer (Libs/, Base/, Modules/) and CTK (Libs/): each class's base class, its
  methods (declarations and VTK's Set/Get/Boolean macros) and enumerators, and for Qt classes its Q_PROPERTY names and
  signal signatures (normalized as PythonQt's connect() strings are written: ``currentPathChanged(QString)``);
- from Base/Python/slicer/util.py: each function's parameter names and whether it takes ``**kwargs``;
- the Python hooks the scripted Segment Editor effect adaptor calls (``effect_hooks``, from
  qSlicerSegmentEditorScriptedEffect.cxx) and the classes/functions of Slicer's ``SegmentEditorEffects`` Python
  package with their methods (``python_modules``).

And from SlicerPyTorch (the PyTorch extension, one branch for all releases; its commit is recorded):
PyTorchUtils/PyTorchUtils.py's ``PyTorchUtilsLogic`` methods and their parameters (``pytorchutils``).

Only classes the module can reach are kept in full (those named in AutoSegModule's sources and their bases);
of all the other classes only the class names and method names are kept (``all_classes``, ``all_methods``;
the names every release has are stored once as ``common_all_classes`` / ``common_all_methods``), for calls
whose receiver type the test cannot infer. The C++ parsing is deliberately generous (any identifier followed by '(' inside a
class counts as a method): the test can miss a wrong name that happens to exist, never reject a right one.

The tags read are stored in the fixture (``tags``); the oldest of each minor release is read, since an API
present there is present in its patch releases. Refresh for a new release by adding its tag.
"""
from __future__ import annotations

import argparse
import ast
import json
import re
import subprocess
import sys
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[2]
DEFAULT_TAGS = ("v5.8.0", "v5.10.0", "v5.12.0")
SLICER_HEADER_ROOTS = ("Libs/", "Base/", "Modules/")
CTK_HEADER_ROOTS = ("Libs/",)
#: The scripted Segment Editor effect adaptor (its Python hooks) and Slicer's Python effect package.
EFFECT_ADAPTOR = "Modules/Loadable/Segmentations/EditorEffects/qSlicerSegmentEditorScriptedEffect.cxx"
EFFECTS_PACKAGE = "Modules/Loadable/Segmentations/EditorEffects/Python/SegmentEditorEffects/"

CLASS_RE = re.compile(r"\bclass\s+(?:\w+_EXPORT\s+)?((?:vtk|q|ctk)\w+)\s*(?:final\s*)?:\s*public\s+([\w:]+)")
METHOD_RE = re.compile(r"\b([A-Za-z_]\w*)\s*\(")
MACRO_RE = re.compile(r"\b(vtk(?:Set|Get|Boolean)\w*Macro|vtkMRML(?:Copy|Print)\w*Macro)\s*\(\s*(\w+)")
PROPERTY_RE = re.compile(r"Q_PROPERTY\s*\(\s*[\w:<>\s\*]+?\s+\*?(\w+)\s+(?:READ|WRITE|MEMBER)")
ACCESS_RE = re.compile(r"^\s*(public|protected|private|signals|Q_SIGNALS|public\s+slots|public\s+Q_SLOTS|"
                       r"protected\s+slots|protected\s+Q_SLOTS|private\s+slots|private\s+Q_SLOTS)\s*:", re.M)
NOT_METHODS = {"if", "for", "while", "switch", "return", "sizeof", "defined", "decltype", "static_cast",
               "dynamic_cast", "reinterpret_cast", "const_cast", "Q_PROPERTY", "Q_DECLARE_PRIVATE", "Q_OBJECT",
               "Q_ENUMS", "Q_ENUM", "Q_FLAGS", "Q_DISABLE_COPY", "vtkTypeMacro", "operator", "Q_INVOKABLE"}


def git(git_dir: str, *args: str) -> str:
    return subprocess.run(["git", "--git-dir", git_dir, *args], check=True, capture_output=True,
                          text=True, errors="replace").stdout


def read_files(git_dir: str, rev: str, paths: list) -> dict:
    """path -> text for every path at ``rev`` (one `git cat-file --batch`)."""
    request = "".join(f"{rev}:{p}\n" for p in paths).encode()
    out = subprocess.run(["git", "--git-dir", git_dir, "cat-file", "--batch"], input=request, check=True,
                         capture_output=True).stdout
    texts, pos = {}, 0
    for p in paths:
        header_end = out.index(b"\n", pos)
        header = out[pos:header_end].split()
        if header[-1] == b"missing":
            pos = header_end + 1
            continue
        size = int(header[2])
        texts[p] = out[header_end + 1:header_end + 1 + size].decode("utf-8", errors="replace")
        pos = header_end + 1 + size + 1
    return texts


def strip_comments(text: str) -> str:
    text = re.sub(r"/\*.*?\*/", " ", text, flags=re.S)
    return re.sub(r"//[^\n]*", " ", text)


def normalize_signal(name: str, params: str) -> str:
    """``void currentPathChanged(const QString& path)`` -> ``currentPathChanged(QString)``."""
    types = []
    for p in [p.strip() for p in params.split(",") if p.strip() and p.strip() != "void"]:
        p = p.split("=")[0].strip()
        p = re.sub(r"\bconst\b", "", p).replace("&", " ").strip()
        m = re.match(r"^([\w:<>]+(?:\s*<[^>]*>)?)\s*(\**)\s*\w*$", p)
        types.append((m.group(1) + m.group(2)) if m else re.sub(r"\s+", "", p))
    return f"{name}({','.join(types)})"


def parse_header(text: str) -> dict:
    """class name -> {"bases": [...], "methods": set, "properties": set, "signals": set}."""
    text = strip_comments(text)
    classes = {}
    starts = [(m.start(), m.group(1), m.group(2)) for m in CLASS_RE.finditer(text)]
    for i, (start, name, base) in enumerate(starts):
        end = starts[i + 1][0] if i + 1 < len(starts) else len(text)
        body = text[start:end]
        methods = {m for m in METHOD_RE.findall(body) if m not in NOT_METHODS}
        for enum_body in re.findall(r"\benum\b[^{;]*\{([^}]*)\}", body):   # enumerators: class constants
            methods |= {m.group(1) for m in re.finditer(r"(?:^|,)\s*([A-Za-z_]\w*)", enum_body)}
        for macro, arg in MACRO_RE.findall(body):
            if macro.startswith("vtkBoolean"):
                methods |= {arg + "On", arg + "Off"}
            elif macro.startswith("vtkSet"):
                methods.add("Set" + arg)
            elif macro.startswith("vtkGet"):
                methods.add("Get" + arg)
        signals = set()
        parts = ACCESS_RE.split(body)
        # parts: [before, access, section, access, section, ...]
        for access, section in zip(parts[1::2], parts[2::2]):
            if access in ("signals", "Q_SIGNALS"):
                for m in re.finditer(r"\bvoid\s+(\w+)\s*\(([^)]*)\)", section):
                    signals.add(normalize_signal(m.group(1), m.group(2)))
        classes[name] = {"bases": [base.split("::")[-1]], "methods": methods,
                         "properties": set(PROPERTY_RE.findall(body)), "signals": signals}
    return classes


def util_functions(source: str) -> dict:
    """slicer.util function -> {"params": [...], "varkw": bool} (top-level defs, classes as constructors)."""
    out = {}
    for node in ast.parse(source).body:
        if isinstance(node, ast.FunctionDef):
            a = node.args
            out[node.name] = {"params": [p.arg for p in a.posonlyargs + a.args + a.kwonlyargs],
                              "varkw": a.kwarg is not None}
        elif isinstance(node, ast.ClassDef):
            init = next((n for n in node.body if isinstance(n, ast.FunctionDef) and n.name == "__init__"), None)
            params = [p.arg for p in (init.args.args[1:] + init.args.kwonlyargs)] if init else []
            out[node.name] = {"params": params, "varkw": bool(init and init.args.kwarg)}
    return out


def effect_hooks(source: str) -> list:
    """The Python methods qSlicerSegmentEditorScriptedEffect calls on a scripted effect (``declareMethod``)."""
    return sorted(set(re.findall(r'declareMethod\(\s*Self::\w+,\s*"(\w+)"\s*\)', source)))


def python_package(texts: dict) -> dict:
    """{"names": top-level classes and functions, "classes": {class: [methods]}} over a package's .py files."""
    names, classes = set(), {}
    for text in texts.values():
        for node in ast.parse(text).body:
            if isinstance(node, (ast.ClassDef, ast.FunctionDef)):
                names.add(node.name)
            if isinstance(node, ast.ClassDef):
                classes[node.name] = sorted(n.name for n in node.body if isinstance(n, ast.FunctionDef))
    return {"names": sorted(names), "classes": classes}


def used_class_names() -> set:
    """Every vtk*/q*/ctk* class named in the module's Python sources and .ui files."""
    names = set()
    for path in list((REPO / "AutoSegModule").rglob("*.py")) + list((REPO / "AutoSegModule").rglob("*.ui")):
        names |= set(re.findall(r"\b((?:vtkMRML|vtkSlicer|vtkSegment|vtkOrientedImage|qMRML|qSlicer|ctk)\w*)",
                                path.read_text()))
    return names


def read_tag(slicer_git: str, ctk_git: str, tag: str, keep: set) -> dict:
    cmake = read_files(slicer_git, tag, ["CMakeLists.txt", "SuperBuild/External_CTK.cmake"])
    python = re.search(r'set\(Slicer_REQUIRED_PYTHON_VERSION\s+"([\d.]+)"\)', cmake["CMakeLists.txt"]).group(1)
    ctk_rev = re.search(r'Slicer_\$\{proj\}_GIT_TAG\s*\n\s*"(\w+)"', cmake["SuperBuild/External_CTK.cmake"]).group(1)
    classes = {}
    for git_dir, rev, roots in ((slicer_git, tag, SLICER_HEADER_ROOTS), (ctk_git, ctk_rev, CTK_HEADER_ROOTS)):
        headers = [p for p in git(git_dir, "ls-tree", "-r", "--name-only", rev).splitlines()
                   if p.endswith(".h") and p.startswith(roots)]
        for text in read_files(git_dir, rev, headers).values():
            for name, info in parse_header(text).items():
                if name in classes:  # same name twice (tests, examples): merge generously
                    for k in ("methods", "properties", "signals"):
                        classes[name][k] |= info[k]
                else:
                    classes[name] = info
    # Keep in full the classes the module names, and their bases.
    full, todo = {}, [c for c in keep if c in classes]
    while todo:
        c = todo.pop()
        if c in full or c not in classes:
            continue
        full[c] = {"bases": classes[c]["bases"], "methods": sorted(classes[c]["methods"]),
                   "properties": sorted(classes[c]["properties"]), "signals": sorted(classes[c]["signals"])}
        todo += classes[c]["bases"]
    all_methods = sorted({m for info in classes.values() for m in info["methods"] if m[:1].isupper()})
    util = util_functions(read_files(slicer_git, tag, ["Base/Python/slicer/util.py"])["Base/Python/slicer/util.py"])
    hooks = effect_hooks(read_files(slicer_git, tag, [EFFECT_ADAPTOR])[EFFECT_ADAPTOR])
    package = [p for p in git(slicer_git, "ls-tree", "--name-only", tag, EFFECTS_PACKAGE).splitlines() if p.endswith(".py")]
    return {"python": python, "ctk_revision": ctk_rev, "classes": full, "all_methods": all_methods,
            "all_classes": sorted(classes), "util": util, "effect_hooks": hooks,
            "python_modules": {"SegmentEditorEffects": python_package(read_files(slicer_git, tag, package))}}


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--slicer-git", required=True)
    parser.add_argument("--ctk-git", required=True)
    parser.add_argument("--pytorch-git", required=True)
    parser.add_argument("--tags", nargs="+", default=list(DEFAULT_TAGS))
    parser.add_argument("--out", default=str(HERE / "slicer_api.json"))
    args = parser.parse_args(argv)
    keep = used_class_names()
    fixture = {"about": "Generated by extract_slicer_api.py from Slicer's and CTK's sources; do not edit.",
               "tags": args.tags,
               "slicer_commits": {t: git(args.slicer_git, "rev-list", "-n1", t).strip() for t in args.tags},
               "releases": {}}
    torch_rev = git(args.pytorch_git, "rev-parse", "HEAD").strip()
    torch_source = read_files(args.pytorch_git, torch_rev, ["PyTorchUtils/PyTorchUtils.py"])["PyTorchUtils/PyTorchUtils.py"]
    logic = next(n for n in ast.parse(torch_source).body if isinstance(n, ast.ClassDef) and n.name == "PyTorchUtilsLogic")
    fixture["pytorchutils_commit"] = torch_rev
    fixture["pytorchutils"] = {n.name: {"params": [a.arg for a in n.args.args + n.args.kwonlyargs if a.arg != "self"],
                                        "varkw": n.args.kwarg is not None}
                               for n in logic.body if isinstance(n, ast.FunctionDef)}
    for tag in args.tags:
        fixture["releases"][tag] = read_tag(args.slicer_git, args.ctk_git, tag, keep)
        print(f"{tag}: Python {fixture['releases'][tag]['python']}, CTK {fixture['releases'][tag]['ctk_revision'][:10]}, "
              f"{len(fixture['releases'][tag]['all_classes'])} classes", file=sys.stderr)
    # Most names are in every release: store those once ("common_*") and per release only the rest.
    for key in ("all_methods", "all_classes"):
        common = set.intersection(*(set(r[key]) for r in fixture["releases"].values()))
        fixture["common_" + key] = sorted(common)
        for r in fixture["releases"].values():
            r[key] = sorted(set(r[key]) - common)
    Path(args.out).write_text(json.dumps(fixture, indent=None, sort_keys=True, separators=(",", ":")) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
