"""Small dense files copied in batches: what is copied, what is handed back to
the general path, and failures that name the file and leave no partial copy."""

from __future__ import annotations

import json
import os
import random
from pathlib import Path

import pytest

from synfast.backup import checksum as cks
from synfast.errors import SynfastError
from synfast.files import small
from tests.conftest import run_cli, write_layout


def _tree(root: Path, n: int = 30, seed: int = 3) -> list[tuple[str, os.stat_result]]:
    rng = random.Random(seed)
    (root / "d").mkdir(parents=True)
    for i in range(n):
        p = root / "d" / f"f{i:02}"
        p.write_bytes(rng.randbytes(rng.randrange(0, 9000)))
        os.chmod(p, rng.choice([0o600, 0o640, 0o755, 0o4755]))
        os.utime(p, ns=(1_600_000_000_123_456_789 + i, 1_500_000_000_987_654_321 + i))
    return [(f"d/{p.name}", p.lstat()) for p in sorted((root / "d").iterdir())]


def test_a_batch_copies_content_mode_and_times_and_keeps_what_it_read(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    items = _tree(src)
    (dst / "d").mkdir(parents=True)
    assert all(small.qualifies(st) for _, st in items)
    copied, left = small.copy_batch(src, dst, items, keep_data=True)
    assert left == [] and [c.rel for c in copied] == [rel for rel, _ in items]
    for c, (_, planned) in zip(copied, items, strict=True):
        a, b = src / c.rel, dst / c.rel
        sb = b.lstat()
        assert b.read_bytes() == a.read_bytes() == bytes(c.data)
        # the times of the plan: reading the source may have moved its atime since
        assert (sb.st_mode, sb.st_mtime_ns, sb.st_atime_ns) == (
            planned.st_mode, planned.st_mtime_ns, planned.st_atime_ns)
        assert c.allocated == sb.st_blocks * 512
    # the checksums from the bytes read are those of the files, for every algorithm
    for algorithm in cks.ALGORITHMS:
        assert cks.checksum_contents([c.data for c in copied], algorithm) == [
            cks.checksum_file(dst / c.rel, algorithm) for c in copied]


def test_files_changed_or_removed_since_the_plan_are_handed_back(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    items = _tree(src, n=6)
    (dst / "d").mkdir(parents=True)
    (src / items[0][0]).write_bytes(b"longer than it was planned" * 500)      # size
    os.utime(src / items[1][0], ns=(1, 2))                                     # mtime
    (src / items[2][0]).unlink()                                               # removed
    (src / items[3][0]).unlink()
    (src / items[3][0]).symlink_to("elsewhere")                                # a symlink now
    copied, left = small.copy_batch(src, dst, items)
    assert [rel for rel, _ in left] == [rel for rel, _ in items[:4]]
    assert [c.rel for c in copied] == [rel for rel, _ in items[4:]]
    assert sorted(p.name for p in (dst / "d").iterdir()) == [
        rel.rpartition("/")[2] for rel, _ in items[4:]]


def test_a_sparse_or_large_file_or_an_always_option_is_not_batched(tmp_path: Path) -> None:
    sparse = tmp_path / "sparse"
    write_layout(sparse, 1 << 19, [(0, b"x" * 4096)])
    big = tmp_path / "big"
    big.write_bytes(os.urandom(small.SMALL_MAX + 1))
    dense = tmp_path / "dense"
    dense.write_bytes(b"y" * 5000)
    assert not small.qualifies(sparse.lstat())
    assert not small.qualifies(big.lstat())
    assert small.qualifies(dense.lstat())
    for opt in ("reflink", "sparse", "copy_file_range"):
        assert not small.qualifies(dense.lstat(), **{opt: "always"})


def test_an_existing_copy_is_never_overwritten_and_the_error_names_it(tmp_path: Path) -> None:
    src, dst = tmp_path / "src", tmp_path / "dst"
    items = _tree(src, n=5)
    (dst / "d").mkdir(parents=True)
    (dst / items[2][0]).write_bytes(b"theirs")
    with pytest.raises(SynfastError) as err:
        small.copy_batch(src, dst, items, display_root=tmp_path / "final")
    assert str(tmp_path / "final" / items[2][0]) in str(err.value)
    assert (dst / items[2][0]).read_bytes() == b"theirs"
    # the files before it were copied; those after it were not tried
    assert sorted(p.name for p in (dst / "d").iterdir()) == [
        rel.rpartition("/")[2] for rel, _ in items[:3]]


def test_a_full_destination_leaves_no_partial_copy(tmp_path: Path, small_tmpfs: Path) -> None:
    src = tmp_path / "src"
    (src / "d").mkdir(parents=True)
    for i in range(12):
        (src / "d" / f"f{i:02}").write_bytes(os.urandom(900_000))
    items = [(f"d/{p.name}", p.lstat()) for p in sorted((src / "d").iterdir())]
    (small_tmpfs / "d").mkdir()
    with pytest.raises(SynfastError) as err:
        small.copy_batch(src, small_tmpfs, items)
    assert "no space left" in str(err.value)
    failed = str(err.value).split(":")[0]
    assert not os.path.lexists(failed)         # the file it failed on is gone
    for p in (small_tmpfs / "d").iterdir():     # whatever is there is whole
        assert p.read_bytes() == (src / "d" / p.name).read_bytes()


def test_a_tree_of_small_files_is_copied_and_backed_up_whole(tmp_path: Path) -> None:
    """Through the command line: batches beside a sparse file, a large file, a
    symlink and a file whose name is not UTF-8; the report counts every file
    and the manifest's checksums are the files'."""
    src = tmp_path / "svc"
    _tree(src, n=40)
    (src / "e").mkdir()
    write_layout(src / "e" / "sparse", 1 << 20, [(8192, b"s" * 100)])
    (src / "e" / "big").write_bytes(os.urandom(small.SMALL_MAX * 2))
    (src / "e" / "link").symlink_to("big")
    (src / os.fsdecode(b"caf\xe9")).write_bytes(b"latin-1 name")
    proc = run_cli("copy", "--json", src, tmp_path / "copy")
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert report["files"] == 43
    assert report["copy_apparent"] == report["source_apparent"]
    proc = run_cli("backup", "--json", src, tmp_path / "bk")
    assert proc.returncode == 0, proc.stderr
    doc = json.loads((tmp_path / "bk" / ".synfast" / "manifest.json").read_text())
    files = {e["path"]: e for e in doc["entries"] if e["type"] == "file"}
    assert len(files) == 43
    for out in (tmp_path / "copy", tmp_path / "bk"):
        for rel in files:
            a, b = src / rel, out / rel
            assert b.read_bytes() == a.read_bytes(), rel
            assert b.lstat().st_mode == a.lstat().st_mode
            assert b.lstat().st_mtime_ns == a.lstat().st_mtime_ns
    for rel, e in files.items():
        assert e["checksum"] == cks.checksum_file(src / rel), rel
    assert run_cli("verify", tmp_path / "bk").returncode == 0
