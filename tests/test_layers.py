"""The layout's rules, checked on the source so that no change can quietly break them:
a lower layer never imports a higher one, no two modules import each other
(directly or round a circle), each extension module has exactly one importer
(its policy module), and no module grows past 500 lines."""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGE = ROOT / "synfast"

#: Layers, lowest first.  A module may import its own package and lower layers;
#: packages of one layer (lmdb and tls) may not import each other.
RANK = {"synfast.errors": 0, "synfast.workers": 1, "synfast.limits": 2,
        "synfast.files": 2, "synfast.lmdb": 3, "synfast.tls": 3, "synfast.copy": 4,
        "synfast.backup": 5, "synfast.cli": 6, "synfast.__main__": 7}


def _modules() -> dict[str, Path]:
    out = {}
    for path in PACKAGE.rglob("*.py"):
        rel = path.relative_to(ROOT).with_suffix("")
        parts = list(rel.parts)
        if parts[-1] == "__init__":
            parts.pop()
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path) -> set[str]:
    """Every synfast module ``name`` imports, at any depth of its code."""
    found: set[str] = set()
    package = name if path.name == "__init__.py" else name.rsplit(".", 1)[0]
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.startswith("synfast"))
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join(package.split(".")[: len(package.split(".")) - node.level + 1]
                                + ([base] if base else []))
            if not base.startswith("synfast"):
                continue
            for a in node.names:
                # "from synfast.lmdb import env" imports the module synfast.lmdb.env
                found.add(f"{base}.{a.name}" if f"{base}.{a.name}" in MODULES
                          or a.name.startswith("_") and base.count(".") == 1 else base)
    found.discard(name)
    return found


MODULES = _modules()
GRAPH = {name: _imports(name, path) for name, path in MODULES.items()}


def _layer(module: str) -> str | None:
    for prefix in sorted(RANK, key=len, reverse=True):
        if module == prefix or module.startswith(prefix + "."):
            return prefix
    return None


def test_lower_layers_never_import_higher_ones() -> None:
    wrong = []
    for name, imported in GRAPH.items():
        mine = _layer(name)
        for other in imported:
            theirs = _layer(other)
            if mine is None or theirs is None or theirs == mine:
                continue
            if RANK[theirs] >= RANK[mine]:
                wrong.append(f"{name} imports {other}")
    assert wrong == []


def test_no_import_circle() -> None:
    circles = []
    state: dict[str, int] = {}

    def visit(node: str, stack: list[str]) -> None:
        state[node] = 1
        for nxt in sorted(GRAPH.get(node, ())):
            if nxt not in GRAPH:
                continue
            if state.get(nxt) == 1:
                circles.append(stack[stack.index(nxt):] + [nxt])
            elif nxt not in state:
                visit(nxt, [*stack, nxt])
        state[node] = 2

    for name in sorted(GRAPH):
        if name not in state:
            visit(name, [name])
    assert circles == []


def test_each_extension_module_has_one_importer() -> None:
    extensions = {f"synfast.{p.parent.name}.{p.stem}" for p in ROOT.glob("ext/*/_*.pyx")}
    assert extensions, "no extension sources found under ext/"
    importers = {ext: sorted(n for n, imported in GRAPH.items() if ext in imported)
                 for ext in extensions}
    assert {ext: len(who) for ext, who in importers.items()} == dict.fromkeys(extensions, 1), \
        importers


def test_no_module_over_500_lines() -> None:
    sources = [*PACKAGE.rglob("*.py"), *ROOT.glob("ext/*/*.pyx"), *ROOT.glob("ext/*/*.pxi"),
               *ROOT.glob("ext/*/*.pxd")]
    long = {str(p.relative_to(ROOT)): n for p in sources
            if (n := len(p.read_text().splitlines())) > 500}
    assert long == {}
