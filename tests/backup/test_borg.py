"""borg as the store: the real borg 1.2 (repokey-blake2, a passphrase from
BORG_PASSPHRASE) on a small service directory, round trips, and borg's
failures as one line with no archive left behind."""

from __future__ import annotations

import io
import json
import os
import pwd
import shutil
import struct
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path

import lmdb
import pytest

from tests.conftest import free_port, run_cli, wait_listening
from tests.lmdb.test_pages import free_db_values, small_free_db_env

pytestmark = pytest.mark.skipif(shutil.which("borg") is None, reason="borg is installed by "
                                "make test's set-up (.ci/sysdeps.sh)")

PASS = "correct horse"


def small_service(root: Path) -> Path:
    """Two directory environments with small maps, a sparse file, a symlink."""
    svc = root / "svc"
    svc.mkdir()
    for name, n in (("cell.lmdb", 300), ("layer.lmdb", 40)):
        env = lmdb.open(str(svc / name), map_size=64 << 20, max_dbs=4, writemap=True)
        db = env.open_db(b"nodes")
        with env.begin(write=True) as txn:
            for i in range(n):
                txn.put(b"k%05d" % i, os.urandom(50 + i % 3000), db=db)
        env.close()
    with open(svc / "sparse.bin", "wb") as f:
        f.truncate(32 << 20)
        f.seek(1 << 20)
        f.write(os.urandom(5000))
    (svc / "cell.yaml").write_text("dmon:listen: tcp://0.0.0.0:27492\n")
    os.chmod(svc / "cell.yaml", 0o640)
    os.symlink("cell.yaml", svc / "cell.guid")
    return svc


@pytest.fixture
def borg_env(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> Path:
    monkeypatch.setenv("BORG_PASSPHRASE", PASS)
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "borg-home"))
    repo = tmp_path / "repo"
    subprocess.run(["borg", "init", "-e", "repokey-blake2", str(repo)], check=True,
                   capture_output=True)
    return repo


def archives(repo: Path) -> list[str]:
    out = subprocess.run(["borg", "list", "--short", str(repo)], capture_output=True, text=True,
                         check=True).stdout
    return out.split()


def dumps(root: Path) -> dict[str, str]:
    return {p.name: subprocess.run(["mdb_dump", "-a", str(p)], capture_output=True, text=True,
                                   check=True).stdout for p in sorted(root.glob("*.lmdb"))}


def one_line(proc: subprocess.CompletedProcess[str], *needles: str) -> None:
    assert proc.returncode == 1, proc.stdout + proc.stderr
    lines = proc.stderr.strip().splitlines()
    lines = [line for line in lines if not line.startswith("synfast: plan:")]
    assert len(lines) == 1 and all(n in lines[0] for n in needles), lines
    assert "Traceback" not in proc.stderr


def test_round_trip_through_borg(borg_env: Path, tmp_path: Path) -> None:
    svc = small_service(tmp_path)
    proc = run_cli("backup", svc, f"borg:{borg_env}::night-%Y%m%d", "--json")
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    stats = out["borg"]
    assert stats["original_size"] > 96 << 20           # the maps and the sparse file, holes
    assert stats["deduplicated_size"] < 8 << 20        # ... stored once as zero chunks
    name = time.strftime("night-%Y%m%d")
    assert archives(borg_env) == [name]
    listed = json.loads(run_cli("list", f"borg:{borg_env}", "--json").stdout)
    assert [(a["name"], a["complete"]) for a in listed] == [(name, True)]
    # The health check reads borg's archives too; borg keeps no record of verify.
    proc = run_cli("list", f"borg:{borg_env}", "--max-age", "26h")
    assert proc.returncode == 0 and name in proc.stdout, proc.stderr
    proc = run_cli("list", f"borg:{borg_env}", "--max-age", "26h", "--verified")
    one_line(proc, "not been verified")
    proc = run_cli("verify", f"borg:{borg_env}::{name}")
    assert proc.returncode == 0, proc.stdout + proc.stderr
    target = tmp_path / "restored"
    proc = run_cli("restore", f"borg:{borg_env}::{name}", target)
    assert proc.returncode == 0, proc.stderr
    assert dumps(target) == dumps(svc)
    assert os.readlink(target / "cell.guid") == "cell.yaml"
    assert (target / "cell.yaml").stat().st_mode & 0o777 == 0o640
    # holes came back as holes (borg export-tar streams them as zeros)
    assert (target / "sparse.bin").stat().st_size == 32 << 20
    assert (target / "sparse.bin").stat().st_blocks * 512 < 1 << 20
    env = lmdb.open(str(target / "cell.lmdb"), writemap=True, max_dbs=4, map_size=64 << 20)
    with env.begin(write=True) as txn:
        txn.put(b"after", b"restore", db=env.open_db(b"nodes", txn=txn))
    env.close()


def test_archives_not_made_by_synfast_are_not_listed(borg_env: Path, tmp_path: Path) -> None:
    other = tmp_path / "other"
    other.mkdir()
    (other / "f").write_text("x")
    subprocess.run(["borg", "create", f"{borg_env}::plain", str(other)], check=True)
    assert json.loads(run_cli("list", f"borg:{borg_env}", "--json").stdout) == []


def test_wrong_passphrase_is_one_line_and_no_archive(borg_env: Path, tmp_path: Path,
                                                     monkeypatch: pytest.MonkeyPatch) -> None:
    svc = small_service(tmp_path)
    monkeypatch.setenv("BORG_PASSPHRASE", "wrong")
    proc = run_cli("backup", svc, f"borg:{borg_env}::n1")
    one_line(proc, f"borg:{borg_env}: the passphrase is wrong")
    monkeypatch.setenv("BORG_PASSPHRASE", PASS)
    assert archives(borg_env) == []


def test_missing_repository_is_one_line(borg_env: Path, tmp_path: Path) -> None:
    svc = small_service(tmp_path)
    proc = run_cli("backup", svc, f"borg:{tmp_path / 'nowhere'}::n1")
    one_line(proc, "is not a borg repository")
    proc = run_cli("restore", f"borg:{borg_env}::absent", tmp_path / "r")
    one_line(proc, f"borg:{borg_env}: holds no archive 'absent'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "r.partial").exists()


def test_a_repository_locked_by_another_borg(borg_env: Path, tmp_path: Path) -> None:
    svc = small_service(tmp_path)
    holder = subprocess.Popen(["borg", "with-lock", str(borg_env), sys.executable, "-c",
                               "import sys, time; print('locked', flush=True); time.sleep(60)"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        proc = run_cli("backup", svc, f"borg:{borg_env}::n1")
        one_line(proc, f"borg:{borg_env}: is locked by another borg process")
    finally:
        holder.kill()
        holder.wait()
    subprocess.run(["borg", "break-lock", str(borg_env)], check=True)
    assert archives(borg_env) == []


def test_a_backup_failing_mid_stream_creates_no_archive(borg_env: Path, tmp_path: Path) -> None:
    """The damaged environment is streamed last: borg has already read the rest
    when the backup fails, and must not commit what it read."""
    svc = small_service(tmp_path)
    bad = small_free_db_env(svc / "zz.lmdb")
    values, last = free_db_values(bad / "data.mdb")
    with open(bad / "data.mdb", "r+b") as f:
        f.seek(values[0][0] + 8)
        f.write(struct.pack("<Q", last + 5))
    proc = run_cli("backup", svc, f"borg:{borg_env}::n1")
    one_line(proc, str(bad / "data.mdb"), "rebuild")
    assert archives(borg_env) == []
    assert not list(borg_env.glob("lock*"))            # borg let go of its lock


def test_an_archive_left_under_its_partial_name_is_listed_as_unfinished(
        borg_env: Path, tmp_path: Path) -> None:
    """borg commits a tar cut at a member boundary as if it were whole; a synfast
    killed outright can leave such an archive, under the partial name only."""
    from synfast.backup import borg

    svc = small_service(tmp_path)
    stream = subprocess.run([sys.executable, "-m", "synfast", "backup", str(svc), "-", "-q"],
                            capture_output=True, check=True).stdout
    with tarfile.open(fileobj=io.BytesIO(stream)) as tar:
        cut = tar.getmember("cell.yaml").offset           # a member boundary
    subprocess.run(["borg", "import-tar", "--comment", borg.COMMENT,
                    f"{borg_env}::n1{borg.PARTIAL}", "-"], input=stream[:cut], check=True)
    listed = json.loads(run_cli("list", f"borg:{borg_env}", "--json").stdout)
    assert [(a["name"], a["complete"]) for a in listed] == [(f"n1{borg.PARTIAL}", False)]
    assert "unfinished" in run_cli("list", f"borg:{borg_env}").stdout
    proc = run_cli("restore", f"borg:{borg_env}::n1{borg.PARTIAL}", tmp_path / "r")
    one_line(proc, "ended without its manifest")


@pytest.fixture
def sshd(tmp_path: Path) -> Iterator[tuple[str, str]]:
    """A real sshd on loopback, one key whose only command is ``borg serve``
    restricted to one directory; yields (the repository's ssh:// URL, BORG_RSH)."""
    if not os.path.exists("/usr/sbin/sshd"):
        pytest.skip("sshd is installed by make test's set-up (.ci/sysdeps.sh)")
    d = tmp_path / "sshd"
    repos = tmp_path / "remote-repos"
    d.mkdir()
    repos.mkdir()
    for key in ("hostkey", "userkey"):
        subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(d / key)],
                       check=True)
    pub = (d / "userkey.pub").read_text().strip()
    (d / "authorized_keys").write_text(
        f'command="borg serve --restrict-to-path {repos}",restrict {pub}\n')
    port = free_port()
    (d / "sshd_config").write_text(
        f"Port {port}\nListenAddress 127.0.0.1\nHostKey {d / 'hostkey'}\n"
        f"AuthorizedKeysFile {d / 'authorized_keys'}\nPasswordAuthentication no\n"
        "StrictModes no\nUsePAM no\nPermitRootLogin prohibit-password\n"
        f"PidFile {d / 'pid'}\n")
    os.makedirs("/run/sshd", exist_ok=True)
    server = subprocess.Popen(["/usr/sbin/sshd", "-D", "-e", "-f", str(d / "sshd_config")],
                              stderr=subprocess.DEVNULL)
    wait_listening(port, server, "sshd")
    rsh = (f"ssh -i {d / 'userkey'} -o StrictHostKeyChecking=no "
           "-o UserKnownHostsFile=/dev/null -o BatchMode=yes -o LogLevel=ERROR")
    user = pwd.getpwuid(os.getuid()).pw_name
    try:
        yield f"ssh://{user}@127.0.0.1:{port}{repos}/repo", rsh
    finally:
        server.terminate()
        server.wait(timeout=30)


def test_borg_over_ssh_to_borg_serve(sshd: tuple[str, str], tmp_path: Path,
                                     monkeypatch: pytest.MonkeyPatch) -> None:
    url, rsh = sshd
    monkeypatch.setenv("BORG_PASSPHRASE", PASS)
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "borg-home"))
    monkeypatch.setenv("BORG_RSH", rsh)
    subprocess.run(["borg", "init", "-e", "repokey-blake2", url], check=True,
                   capture_output=True)
    svc = small_service(tmp_path)
    proc = run_cli("backup", svc, f"borg:{url}::n1")
    assert proc.returncode == 0, proc.stderr
    listed = json.loads(run_cli("list", f"borg:{url}", "--json").stdout)
    assert [(a["name"], a["complete"]) for a in listed] == [("n1", True)]
    target = tmp_path / "restored"
    proc = run_cli("restore", f"borg:{url}::n1", target)
    assert proc.returncode == 0, proc.stderr
    assert dumps(target) == dumps(svc)
    # borg serve refuses paths outside the one it is restricted to: one line
    outside = url.replace("/remote-repos/repo", "/elsewhere")
    proc = run_cli("backup", svc, f"borg:{outside}::n2")
    one_line(proc, f"borg:{outside}")


def test_a_full_repository_disk_is_one_line_and_no_archive(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("BORG_PASSPHRASE", PASS)
    monkeypatch.setenv("BORG_BASE_DIR", str(tmp_path / "borg-home"))
    disk = tmp_path / "disk"
    disk.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(disk)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        repo = disk / "repo"
        subprocess.run(["borg", "init", "-e", "repokey-blake2", str(repo)], check=True,
                       capture_output=True)
        svc = small_service(tmp_path)
        (svc / "big.bin").write_bytes(os.urandom(8 << 20))     # incompressible, > the disk
        proc = run_cli("backup", svc, f"borg:{repo}::n1")
        one_line(proc, f"borg:{repo}: ran out of space")
        assert archives(repo) == []
    finally:
        subprocess.run(["umount", str(disk)], check=True)
