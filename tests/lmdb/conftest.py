"""Fixtures shared by the LMDB tests."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.live_writer import start_writer, wait_for_txnid


@pytest.fixture
def live_env(tmp_path: Path) -> Iterator[tuple[Path, object]]:
    """An environment a writer process commits to throughout (tests/live_writer.py),
    with 200 transactions behind it; yields its path and the writer."""
    path = tmp_path / "live.lmdb"
    proc = start_writer(path)
    try:
        wait_for_txnid(path, 200, proc, seconds=30)
        yield path, proc
    finally:
        proc.kill()
        proc.wait(timeout=30)
