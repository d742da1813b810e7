"""The build's promise: without the LMDB C library it stops with one line that
says what to install, instead of a compiler error about lmdb.h."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent


def test_missing_lmdb_stops_the_build_with_one_line(tmp_path: Path) -> None:
    env = dict(os.environ, PKG_CONFIG_LIBDIR=str(tmp_path / "nowhere"),
               PKG_CONFIG_PATH=str(tmp_path / "nowhere"))
    proc = subprocess.run([sys.executable, "setup.py", "build_ext", "--build-temp",
                           str(tmp_path / "build")], cwd=ROOT, env=env, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode != 0
    lines = [line for line in proc.stderr.splitlines() if line.strip()]
    assert len(lines) == 1, proc.stderr
    for package in ("liblmdb-dev", "lmdb-devel", "lmdb-dev", "brew install lmdb"):
        assert package in lines[0]
    assert not (tmp_path / "build").exists()


def test_extensions_are_linked_against_the_system_liblmdb() -> None:
    from synfast.lmdb import _lmdb

    major, minor, patch, banner = _lmdb.version()
    pc = subprocess.run(["pkg-config", "--modversion", "lmdb"], capture_output=True, text=True)
    assert pc.returncode == 0
    assert f"{major}.{minor}.{patch}" == pc.stdout.strip()
    assert banner.startswith("LMDB ")


def test_no_typed_memoryviews_in_the_extensions() -> None:
    """Cython's typed memoryviews bring module-init code that registers its
    types with collections.abc inside a bare ``except: pass``: a Ctrl-C or
    SIGTERM that arrives while such an extension is first imported (synfast
    imports them lazily, in the middle of a copy) is swallowed, and the
    command runs on to the end.  Extensions take bytes instead."""
    root = ROOT / "ext"
    typed_view = re.compile(r"^\s*cdef\b[^#\n]*\[\s*:+\s*(1\s*)?\]", re.M)
    offenders = [f"{p.relative_to(root)}: {m.group(0).strip()}"
                 for p in sorted([*root.rglob("*.pyx"), *root.rglob("*.pxi")])
                 for m in typed_view.finditer(p.read_text())]
    assert offenders == []
