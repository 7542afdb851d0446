"""The kernel-interface layer holds: each file under /proc that rdmapin reads is opened by one
module, inside rdmapin/kernel/, paths built at run time (f-strings, ``PROC / name``) included;
and rdmapin.kernel imports nothing of rdmapin but its own modules and the error types."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

pytestmark = pytest.mark.pure

PKG = Path(__file__).resolve().parents[2] / "rdmapin"
PROC_FILES = ("smaps", "maps", "zoneinfo", "kpageflags", "kpagecount", "pagemap", "kcore",
              "vmstat", "status", "meminfo", "buddyinfo", "pagetypeinfo", "kallsyms", "iomem")


def _docstrings(tree: ast.AST) -> set[int]:
    out = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Module | ast.ClassDef | ast.FunctionDef | ast.AsyncFunctionDef):
            body = node.body
            if body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant):
                out.add(id(body[0].value))
    return out


def proc_files_named(source: str) -> set[str]:
    """The /proc files a module builds a path to: a path-like string (no spaces: not a
    message) ending in ``/NAME``, or ``NAME`` itself inside an f-string or on the right of
    ``/`` (``PROC / "vmstat"``)."""
    tree = ast.parse(source)
    docs = _docstrings(tree)
    parents = {id(c): p for p in ast.walk(tree) for c in ast.iter_child_nodes(p)}
    found = set()
    for node in ast.walk(tree):
        if not (isinstance(node, ast.Constant) and isinstance(node.value, str)):
            continue
        if id(node) in docs:
            continue
        text = node.value
        for name in PROC_FILES:
            if text.endswith("/" + name) and not any(c.isspace() for c in text):
                found.add(name)
            elif text == name:
                parent = parents.get(id(node))
                in_path = isinstance(parent, ast.BinOp) and isinstance(parent.op, ast.Div)
                p = parent
                while p is not None and not in_path:
                    in_path = isinstance(p, ast.JoinedStr)
                    p = parents.get(id(p))
                if in_path:
                    found.add(name)
    return found


def test_each_proc_file_is_opened_by_one_module_of_the_kernel_layer():
    readers: dict[str, list[str]] = {}
    for path in sorted(PKG.rglob("*.py")):
        for name in proc_files_named(path.read_text()):
            readers.setdefault(name, []).append(str(path.relative_to(PKG)))
    for name in ("smaps", "maps", "zoneinfo", "kpageflags", "pagemap", "kcore", "vmstat",
                 "status"):
        assert name in readers, f"/proc/{name}: no reader found (the scan is broken)"
    for name, modules in readers.items():
        assert len(modules) == 1, f"/proc/{name} is opened by {modules}"
        assert modules[0].startswith("kernel/"), f"/proc/{name} is read in {modules[0]}"


def test_the_scan_sees_paths_built_at_run_time():
    src = ('PROC = Path("/proc")\n'
           'def a(pid): return open(f"/proc/{pid}/{\'smaps\' if x else \'maps\'}")\n'
           'def b(): return (PROC / "vmstat").read_text()\n'
           'def c(): return os.open("/proc/kpageflags", 0)\n'
           'def d(): """Reads /proc/zoneinfo."""\n'
           'def e(): raise E(f"see /proc/{pid}/status for it")\n'
           'def f(): return "not in /proc/kallsyms"\n')
    assert proc_files_named(src) == {"smaps", "maps", "vmstat", "kpageflags"}


def test_the_kernel_layer_depends_on_nothing_but_the_error_types():
    for path in sorted((PKG / "kernel").glob("*.py")):
        tree = ast.parse(path.read_text())
        for node in ast.walk(tree):
            if isinstance(node, ast.ImportFrom) and node.module and \
                    node.module.startswith("rdmapin"):
                assert node.module in ("rdmapin.errors", "rdmapin.kernel") or \
                    node.module.startswith("rdmapin.kernel."), f"{path.name}: {node.module}"
            if isinstance(node, ast.Import):
                for alias in node.names:
                    assert not alias.name.startswith("rdmapin") or \
                        alias.name.startswith("rdmapin.kernel"), f"{path.name}: {alias.name}"
