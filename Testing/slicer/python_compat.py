"""Does AutoSegLib and the Slicer module run on an older Python? (the oldest supported Slicer's, e.g. 3.9).

Run by test_python_compat.py twice:

- with the test interpreter: ``grammar`` — every file parses with ``ast.parse(feature_version=...)``;
- with the old interpreter itself when one is found (``python3.9 python_compat.py stdlib FILE...``):
  every file compiles; every standard-library import resolves (``import x``, ``from x import y``); every
  attribute read from an imported standard-library module exists (``itertools.pairwise``); every keyword
  argument passed to a standard-library callable is accepted (``dataclasses.dataclass(slots=True)``,
  ``zip(strict=True)``); no builtin newer than that Python is used (``anext``, ``ExceptionGroup``);
  annotations that would be evaluated at run time (no ``from __future__ import annotations``) do not use
  ``X | Y``.

This file itself must stay valid Python 3.9 and import nothing outside the standard library.
Prints one problem per line as ``path:line: message``; exits 1 when there is any.
"""
import ast
import builtins
import importlib
import inspect
import json
import sys

#: Builtin callables whose signature inspect cannot read, with the keywords each accepts on 3.9.
BUILTIN_KEYWORDS = {"zip": set(), "map": set(), "print": {"sep", "end", "file", "flush"},
                    "sorted": {"key", "reverse"}, "min": {"key", "default"}, "max": {"key", "default"},
                    "open": {"mode", "buffering", "encoding", "errors", "newline", "closefd", "opener"},
                    "enumerate": {"start"}, "sum": {"start"}, "round": {"ndigits"}, "int": {"base"},
                    "isinstance": set(), "issubclass": set()}

#: Windows-only names (absent on the Linux interpreter that runs the check, whatever its version).
PLATFORM_ONLY = {"STARTUPINFO", "CREATE_NEW_PROCESS_GROUP", "CREATE_NO_WINDOW", "CTRL_BREAK_EVENT",
                 "STARTF_USESHOWWINDOW", "SW_HIDE"}

#: Builtins newer than 3.9 (names only; the interpreter running this file decides what exists).
NEWER_BUILTINS = ("aiter", "anext", "EncodingWarning", "ExceptionGroup", "BaseExceptionGroup")


def grammar(files, version):
    """``path:line: message`` for each file that does not parse with Python ``version``'s grammar."""
    out = []
    for path in files:
        try:
            ast.parse(open(path, encoding="utf-8").read(), path, feature_version=version)
        except SyntaxError as exc:
            out.append(f"{path}:{exc.lineno}: not valid Python {version[0]}.{version[1]}: {exc.msg}")
    return out


def _stdlib_module(name, stdlib):
    top = name.split(".")[0]
    return top in stdlib and top != "__future__"


def _resolve(module_name):
    try:
        return importlib.import_module(module_name), None
    except ImportError as exc:
        return None, str(exc)


def _annotation_nodes(tree):
    for node in ast.walk(tree):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
            args = node.args
            for a in args.posonlyargs + args.args + args.kwonlyargs + [args.vararg, args.kwarg]:
                if a is not None and a.annotation is not None:
                    yield a.annotation
            if node.returns is not None:
                yield node.returns
        elif isinstance(node, ast.AnnAssign):
            yield node.annotation


def check_file(path, stdlib):
    """Problems of one file under the running interpreter (see the module docstring)."""
    out = []
    source = open(path, encoding="utf-8").read()
    try:
        compile(source, path, "exec")
    except SyntaxError as exc:
        return [f"{path}:{exc.lineno}: does not compile on Python {sys.version.split()[0]}: {exc.msg}"]
    tree = ast.parse(source, path)
    future_annotations = any(isinstance(n, ast.ImportFrom) and n.module == "__future__"
                             and any(a.name == "annotations" for a in n.names) for n in tree.body)
    aliases = {}    # local name -> ("module", module object) or ("object", object)
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            for a in node.names:
                if not _stdlib_module(a.name, stdlib):
                    continue
                module, problem = _resolve(a.name)
                if module is None:
                    out.append(f"{node.lineno}: import {a.name}: {problem}")
                elif a.asname:
                    aliases[a.asname] = module
                else:
                    aliases[a.name.split(".")[0]] = _resolve(a.name.split(".")[0])[0]
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module \
                and _stdlib_module(node.module, stdlib):
            module, problem = _resolve(node.module)
            if module is None:
                out.append(f"{node.lineno}: from {node.module}: {problem}")
                continue
            for a in node.names:
                if a.name == "*":
                    continue
                if hasattr(module, a.name):
                    aliases[a.asname or a.name] = getattr(module, a.name)
                elif _resolve(f"{node.module}.{a.name}")[0] is None:
                    out.append(f"{node.lineno}: from {node.module} import {a.name}: not in Python "
                               f"{sys.version.split()[0]}")
    shadowed = {t.id for n in ast.walk(tree) for t in ast.walk(n)
                if isinstance(n, (ast.Assign, ast.AnnAssign, ast.For, ast.With, ast.arguments))
                and isinstance(t, ast.Name) and isinstance(t.ctx, ast.Store)}
    shadowed |= {a.arg for n in ast.walk(tree) if isinstance(n, ast.arguments)
                 for a in n.posonlyargs + n.args + n.kwonlyargs}

    def resolve_expr(expr):
        """The object an expression like ``mod.attr.attr`` names, when it starts at a stdlib import."""
        if isinstance(expr, ast.Name):
            if expr.id in aliases and expr.id not in shadowed:
                return aliases[expr.id], True
            if expr.id in BUILTIN_KEYWORDS and expr.id not in shadowed:
                return getattr(builtins, expr.id), True
            return None, False
        if isinstance(expr, ast.Attribute):
            base, known = resolve_expr(expr.value)
            if not known or base is None:
                return None, False
            if not hasattr(base, expr.attr):
                if expr.attr in PLATFORM_ONLY:
                    return None, False
                if inspect.ismodule(base) and _resolve(f"{base.__name__}.{expr.attr}")[0] is not None:
                    return _resolve(f"{base.__name__}.{expr.attr}")[0], True
                if inspect.ismodule(base) or inspect.isclass(base):
                    out.append(f"{expr.lineno}: {ast.unparse(expr) if hasattr(ast, 'unparse') else expr.attr}: "
                               f"no attribute {expr.attr!r} on Python {sys.version.split()[0]}")
                return None, False
            return getattr(base, expr.attr), True
        return None, False

    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Load):
            resolve_expr(node)
        elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Load) and node.id in NEWER_BUILTINS \
                and not hasattr(builtins, node.id) and node.id not in shadowed:
            out.append(f"{node.lineno}: builtin {node.id} does not exist on Python {sys.version.split()[0]}")
        elif isinstance(node, ast.Call) and node.keywords:
            func, known = resolve_expr(node.func)
            if not known or func is None:
                continue
            names = [k.arg for k in node.keywords if k.arg is not None]
            if func in [getattr(builtins, n) for n in BUILTIN_KEYWORDS]:
                allowed = BUILTIN_KEYWORDS[func.__name__]
                bad = [n for n in names if n not in allowed]
            else:
                try:
                    params = inspect.signature(func).parameters
                except (TypeError, ValueError):
                    continue
                if any(p.kind == p.VAR_KEYWORD for p in params.values()):
                    continue
                bad = [n for n in names if n not in params]
            for n in bad:
                out.append(f"{node.lineno}: {getattr(func, '__qualname__', func)}() takes no keyword {n!r} on "
                           f"Python {sys.version.split()[0]}")
    if not future_annotations:
        for ann in _annotation_nodes(tree):
            if any(isinstance(n, ast.BinOp) and isinstance(n.op, ast.BitOr) for n in ast.walk(ann)):
                out.append(f"{ann.lineno}: 'X | Y' in an annotation evaluated at run time (needs Python 3.10; add "
                           f"'from __future__ import annotations')")
    return [f"{path}:{line}" for line in out]


def main(argv):
    if argv[1] == "grammar":
        major, minor = (int(x) for x in argv[2].split("."))
        problems = grammar(argv[3:], (major, minor))
    else:  # stdlib STDLIB_JSON FILE...
        stdlib = set(json.loads(argv[2]))
        problems = [p for path in argv[3:] for p in check_file(path, stdlib)]
    for p in problems:
        print(p)
    return 1 if problems else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
