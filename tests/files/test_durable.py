"""synfast.files.durable: the one way every writer puts a result in place, on a real
filesystem.  Whole or absent, never a replaced name unless asked, nothing left behind."""

from __future__ import annotations

import os
import stat
from pathlib import Path

import pytest

from synfast.files import durable


def _names(d: Path) -> list[str]:
    return sorted(os.listdir(d))


def test_write_atomic_writes_whole_with_its_mode_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o077)
    try:
        durable.write_atomic(tmp_path / "a.crt", b"x" * 100_000, mode=0o644)
    finally:
        os.umask(old)
    assert (tmp_path / "a.crt").read_bytes() == b"x" * 100_000
    assert stat.S_IMODE(os.stat(tmp_path / "a.crt").st_mode) == 0o644
    assert _names(tmp_path) == ["a.crt"]


def test_an_existing_name_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    (tmp_path / "b.crt").write_bytes(b"old")
    with pytest.raises(FileExistsError) as info:
        durable.write_all_or_none([(tmp_path / "b.key", b"key", 0o600),
                                   (tmp_path / "b.crt", b"new", 0o644)])
    assert info.value.filename == str(tmp_path / "b.crt")
    assert (tmp_path / "b.crt").read_bytes() == b"old"
    assert _names(tmp_path) == ["b.crt"]


def test_replace_overwrites_atomically(tmp_path: Path) -> None:
    (tmp_path / "ca.crl").write_bytes(b"old")
    durable.write_atomic(tmp_path / "ca.crl", b"new", replace=True)
    assert (tmp_path / "ca.crl").read_bytes() == b"new"
    assert _names(tmp_path) == ["ca.crl"]


def test_replace_never_swaps_out_a_directory(tmp_path: Path) -> None:
    (tmp_path / "ca.crl").mkdir()
    (tmp_path / "ca.crl" / "keep").write_text("x")
    with pytest.raises(IsADirectoryError):
        durable.write_atomic(tmp_path / "ca.crl", b"new", replace=True)
    assert _names(tmp_path / "ca.crl") == ["keep"] and _names(tmp_path) == ["ca.crl"]


def test_a_failure_part_way_removes_what_was_placed(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        durable.write_all_or_none([(tmp_path / "c.key", b"key", 0o600),
                                   (tmp_path / "missing" / "c.crt", b"crt", 0o644)])
    assert _names(tmp_path) == []


def test_place_never_replaces_unless_asked(tmp_path: Path) -> None:
    built = durable.temp_sibling(tmp_path / "out", directory=True)
    (built / "f").write_text("new")
    (tmp_path / "out").mkdir()
    (tmp_path / "out" / "g").write_text("old")
    with pytest.raises(FileExistsError) as info:
        durable.place(built, tmp_path / "out")
    assert info.value.filename == str(tmp_path / "out")
    assert _names(tmp_path / "out") == ["g"] and _names(built) == ["f"]
    durable.place(built, tmp_path / "out", replace=True)     # a directory: swapped
    assert _names(tmp_path / "out") == ["f"]
    assert _names(tmp_path) == ["out"]


def test_temp_siblings_are_hidden_fresh_names_beside_the_target(tmp_path: Path) -> None:
    a = durable.temp_sibling(tmp_path / "x")
    b = durable.temp_sibling(tmp_path / "x", directory=True)
    assert a.parent == b.parent == tmp_path and a != b
    assert a.name.startswith(".x.") and not a.exists() and b.is_dir()
    assert stat.S_IMODE(os.stat(b).st_mode) == 0o700
    durable.remove_path(b)
    durable.remove_path(a)      # missing: fine
    assert _names(tmp_path) == []


def test_an_unfinished_tree_is_removed_while_a_worker_still_writes_into_it(
        tmp_path: Path) -> None:
    """After Ctrl-C the workers are not waited for: one may create files in the
    partial tree while it is being removed.  The tree must still be gone."""
    import threading
    import time

    tree = tmp_path / "bk.partial"
    (tree / "d").mkdir(parents=True)
    for i in range(2000):              # so that one pass of the removal takes a while
        (tree / "d" / f"f{i}").write_bytes(b"x")

    def worker() -> None:              # a worker finishing its item: 200 more files
        for i in range(200):
            try:
                (tree / "d" / f"late{i}").write_bytes(b"x")
            except FileNotFoundError:  # its directory is gone: it stops
                return
            time.sleep(0.001)

    t = threading.Thread(target=worker)
    t.start()
    durable.remove_unfinished(tree, tree / "manifest.json")
    t.join()
    assert not tree.exists()
