"""The native extent scan against the kernel's own answer (os.lseek), on real files."""

from __future__ import annotations

import os
from pathlib import Path

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.files import _sparse
from synfast.files import sparse as files
from tests.conftest import lseek_extents, write_layout

BLOCK = 4096

# A layout: (gap in blocks, data blocks) pairs, then a trailing hole in blocks.
layouts = st.tuples(
    st.lists(st.tuples(st.integers(0, 64), st.integers(1, 16)), max_size=12),
    st.integers(0, 64),
)


def build(path: Path, layout) -> list[tuple[int, bytes]]:
    runs, tail = layout
    chunks, pos = [], 0
    for i, (gap, blocks) in enumerate(runs):
        pos += gap * BLOCK
        chunks.append((pos, bytes([(i % 250) + 1]) * (blocks * BLOCK)))
        pos += blocks * BLOCK
    write_layout(path, pos + tail * BLOCK, chunks)
    return chunks


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(layout=layouts)
def test_matches_lseek_on_generated_layouts(tmp_path: Path, layout) -> None:
    f = tmp_path / "f"
    chunks = build(f, layout)
    got = files.extents(f)
    assert got == lseek_extents(f)
    # every byte we wrote lies inside a reported extent, and extents are ordered
    # and disjoint
    for off, data in chunks:
        assert any(s <= off and off + len(data) <= s + n for s, n in got), (off, got)
    for (s1, n1), (s2, _) in zip(got, got[1:], strict=False):
        assert s1 + n1 < s2


def test_empty_file_has_no_extents(tmp_path: Path) -> None:
    f = tmp_path / "empty"
    f.touch()
    assert files.extents(f) == []


def test_all_hole_file_has_no_extents(tmp_path: Path) -> None:
    f = tmp_path / "hole"
    write_layout(f, 1 << 30, [])
    assert files.extents(f) == []
    assert files.usage(f).data_bytes == 0


def test_holes_at_both_ends(tmp_path: Path) -> None:
    f = tmp_path / "f"
    write_layout(f, 10 * BLOCK, [(4 * BLOCK, b"x" * BLOCK)])
    assert files.extents(f) == [(4 * BLOCK, BLOCK)]


def test_offsets_beyond_4gib(tmp_path: Path) -> None:
    f = tmp_path / "big"
    offs = [(1 << 32) - BLOCK, 5 << 30, (9 << 30) + 3 * BLOCK]
    write_layout(f, 10 << 30, [(o, b"d" * BLOCK) for o in offs])
    got = files.extents(f)
    assert got == lseek_extents(f)
    assert [o for o, _ in got] == offs


def test_file_offset_is_left_alone(tmp_path: Path) -> None:
    f = tmp_path / "f"
    write_layout(f, 8 * BLOCK, [(2 * BLOCK, b"a" * BLOCK)])
    fd = os.open(f, os.O_RDONLY)
    try:
        os.lseek(fd, 123, os.SEEK_SET)
        _sparse.extents(fd)
        assert os.lseek(fd, 0, os.SEEK_CUR) == 123
    finally:
        os.close(fd)


def test_filesystem_without_holes_is_one_extent(ramfs: Path) -> None:
    # ramfs has no SEEK_HOLE support of its own: the file is data from start to
    # end, and the scan says so instead of inventing holes.
    f = ramfs / "f"
    write_layout(f, 40 * BLOCK, [(30 * BLOCK, b"z" * BLOCK)])
    assert files.extents(f) == [(0, 40 * BLOCK)]
