"""The documented recipes for object stores and other hosts, run as written with
the real programs: ``synfast backup SRC - | rclone rcat REMOTE:PATH.tar`` and
``rclone cat REMOTE:PATH.tar | synfast restore - DIR``, against a real
``rclone serve webdav`` on loopback started by the test."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.backup.test_borg import dumps, small_service
from tests.conftest import free_port, wait_listening

pytestmark = pytest.mark.skipif(shutil.which("rclone") is None, reason="rclone is installed "
                                "by make test's set-up (.ci/sysdeps.sh)")

SYNFAST = f"{sys.executable} -m synfast"


@pytest.fixture
def webdav(tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """An rclone WebDAV server on loopback serving a fresh directory; yields the
    remote (an rclone connection string) and the directory."""
    served = tmp_path / "served"
    served.mkdir()
    port = free_port()
    server = subprocess.Popen(["rclone", "serve", "webdav", str(served), "--addr",
                               f"127.0.0.1:{port}"], stdout=subprocess.DEVNULL,
                              stderr=subprocess.DEVNULL)
    wait_listening(port, server, "rclone serve")
    try:
        yield f":webdav,url='http://127.0.0.1:{port}':", served
    finally:
        server.terminate()
        server.wait(timeout=30)


def sh(script: str, **env: str) -> subprocess.CompletedProcess[str]:
    """Run a recipe as a user would type it (bash, pipefail)."""
    return subprocess.run(["bash", "-o", "pipefail", "-c", script], capture_output=True,
                          text=True, env={**os.environ, "RCLONE_CONFIG": "/dev/null", **env})


def test_backup_to_and_restore_from_an_object_store(webdav: tuple[str, Path],
                                                    tmp_path: Path) -> None:
    remote, served = webdav
    svc = small_service(tmp_path)
    proc = sh(f"{SYNFAST} backup {svc} - -q | rclone rcat \"{remote}nightly/svc.tar\"")
    assert proc.returncode == 0, proc.stderr
    assert (served / "nightly" / "svc.tar").stat().st_size < 8 << 20   # holes not sent
    proc = sh(f"rclone cat \"{remote}nightly/svc.tar\" | {SYNFAST} verify -")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    target = tmp_path / "restored"
    proc = sh(f"rclone cat \"{remote}nightly/svc.tar\" | {SYNFAST} restore - {target}")
    assert proc.returncode == 0, proc.stderr
    assert dumps(target) == dumps(svc)
    assert (target / "sparse.bin").stat().st_blocks * 512 < 1 << 20


def test_a_stream_cut_on_its_way_is_refused(webdav: tuple[str, Path], tmp_path: Path) -> None:
    remote, served = webdav
    svc = small_service(tmp_path)
    proc = sh(f"{SYNFAST} backup {svc} - -q | head -c 30000 | rclone rcat \"{remote}cut.tar\"")
    assert proc.returncode != 0                      # pipefail: synfast's broken pipe
    assert "stopped reading (broken pipe)" in proc.stderr
    assert (served / "cut.tar").exists()             # rclone stored what it was given ...
    target = tmp_path / "restored"
    proc = sh(f"rclone cat \"{remote}cut.tar\" | {SYNFAST} restore - {target}")
    assert proc.returncode == 1                      # ... which restores nothing
    assert not target.exists() and not (tmp_path / "restored.partial").exists()
