"""Backups as tar streams: ``backup SRC -``, ``export``, ``verify -|FILE`` and
``restore -|FILE``, with the real GNU tar, bsdtar and Python's tarfile beside
them, and hostile, damaged and cut streams refused with nothing left behind."""

from __future__ import annotations

import io
import json
import os
import subprocess
import tarfile
from pathlib import Path

import lmdb
import pytest

from synfast.backup import tarformat
from tests.backup.service import service
from tests.conftest import run_cli
from tests.live_writer import check_snapshot, start_writer, wait_for_txnid


def synfast_cmd() -> list[str]:
    import sys

    return [sys.executable, "-m", "synfast"]


def stream_of(src: Path, *args: str) -> bytes:
    proc = subprocess.run([*synfast_cmd(), "backup", str(src), "-", "-q", *args],
                          capture_output=True, check=False)
    assert proc.returncode == 0, proc.stderr.decode()
    return proc.stdout


def dump(path: Path) -> str:
    return subprocess.run(["mdb_dump", "-a", str(path)], capture_output=True, text=True,
                          check=True).stdout


def dumps_of(root: Path) -> dict[str, str]:
    """``mdb_dump -a`` of every directory environment under ``root``."""
    return {str(p.parent.relative_to(root)): dump(p.parent)
            for p in sorted(root.rglob("data.mdb"))}


@pytest.fixture
def svc(tmp_path: Path) -> Path:
    """The service of tests/backup/service.py, and a file of several stream
    buffers with a hole (hashed on the writer's hashing thread)."""
    root = service(tmp_path)
    with open(root / "blob.bin", "wb") as f:
        f.write(os.urandom(3 << 19))
        f.seek(2 << 20, os.SEEK_CUR)
        f.write(os.urandom(5 << 19))
    return root


@pytest.fixture
def good(svc: Path, tmp_path: Path) -> Path:
    out = tmp_path / "good.tar"
    out.write_bytes(stream_of(svc))
    return out


def allocated(path: Path) -> int:
    return sum(p.lstat().st_blocks * 512 for p in path.rglob("*") if p.is_file())


def test_the_manifest_is_the_last_member_and_files_are_sparse_members(good: Path) -> None:
    with tarfile.open(good) as tar:
        members = tar.getmembers()
        assert members[-1].name == ".synfast/manifest.json"
        doc = json.loads(tar.extractfile(members[-1]).read())
    assert doc["destination"] == "-"
    assert {e["engine"] for e in doc["environments"]} == {"pages"}
    sparse = {m.name: m for m in members if m.sparse is not None}
    # every environment (1-2 GiB maps) and the 3 GiB sparse file, holes not streamed
    assert "sparse.bin" in sparse and "slabs/cell.lmdb/data.mdb" in sparse
    assert sparse["sparse.bin"].size == 3 << 30
    assert good.stat().st_size < 6 << 20               # 4 MiB of it is blob.bin


@pytest.mark.parametrize("reader", ["gnu", "bsdtar", "tarfile"])
def test_any_tar_extracts_a_backup_that_verifies_with_holes_kept(
        good: Path, svc: Path, tmp_path: Path, reader: str) -> None:
    out = tmp_path / reader
    out.mkdir()
    if reader == "gnu":
        subprocess.run(["tar", "-xf", str(good), "-C", str(out)], check=True)
    elif reader == "bsdtar":
        subprocess.run(["bsdtar", "-xf", str(good), "-C", str(out)], check=True)
    else:
        with tarfile.open(good) as tar:
            tar.extractall(out, filter="fully_trusted")
    proc = run_cli("verify", out)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert allocated(out) < 8 << 20                      # 7 GiB apparent, holes kept
    assert (out / "sparse.bin").stat().st_size == 3 << 30
    assert os.readlink(out / "cell.guid") == "cell.yaml"
    assert (out / "cell.yaml").stat().st_mode & 0o777 == 0o640
    assert dumps_of(out) == dumps_of(svc)


def test_restore_from_stdin_and_from_a_file_then_the_service_writes(
        good: Path, svc: Path, tmp_path: Path) -> None:
    target = tmp_path / "restored"
    with open(good, "rb") as f:
        proc = subprocess.run([*synfast_cmd(), "restore", "-", str(target)], stdin=f,
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    assert dumps_of(target) == dumps_of(svc)
    assert not (target / ".synfast").exists()
    assert allocated(target) < 8 << 20
    env = lmdb.open(str(target / "slabs" / "cell.lmdb"), writemap=True, max_dbs=8,
                    map_size=2 << 30)
    with env.begin(write=True) as txn:
        db = env.open_db(b"nodes", txn=txn)
        txn.put(b"after-restore", b"yes", db=db)
    env.close()
    # a second restore from the file moves the first aside
    proc = run_cli("restore", good, target)
    assert proc.returncode == 0, proc.stderr
    assert len(list(tmp_path.glob("restored.old-*"))) == 1


def test_verify_reads_a_stream_on_stdin(good: Path) -> None:
    with open(good, "rb") as f:
        proc = subprocess.run([*synfast_cmd(), "verify", "-", "--json"], stdin=f,
                              capture_output=True, text=True)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout)
    assert out["ok"] and out["environments_checked"] == 3 and out["checksums_checked"] == 7


def refused(stream: Path, tmp_path: Path, says: str) -> None:
    """Restore and verify both refuse ``stream`` with one line, leaving nothing."""
    target = tmp_path / "target"
    proc = run_cli("restore", stream, target)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and says in lines[0], lines
    assert not target.exists() and not (tmp_path / "target.partial").exists()
    proc = run_cli("verify", stream)
    assert proc.returncode == 1 and says in proc.stdout, proc.stdout


def test_a_stream_cut_anywhere_is_refused(good: Path, tmp_path: Path) -> None:
    """Cut anywhere before the manifest's last byte (a cut in the end-of-archive
    blocks after it loses nothing, and is accepted)."""
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        last = tar.getmembers()[-1]
    end = last.offset_data + last.size
    cuts = sorted({*range(0, end, end // 23), last.offset, last.offset_data + 1, end - 1})
    for n in cuts:
        cut = tmp_path / f"cut{n}.tar"
        cut.write_bytes(data[:n])
        target = tmp_path / "target"
        proc = run_cli("restore", cut, target)
        assert proc.returncode == 1, (n, proc.stdout)
        assert "Traceback" not in proc.stderr and len(proc.stderr.strip().splitlines()) == 1
        assert not target.exists() and not (tmp_path / "target.partial").exists()
        cut.unlink()


def test_a_changed_byte_is_refused(good: Path, tmp_path: Path) -> None:
    data = bytearray(good.read_bytes())
    with tarfile.open(good) as tar:
        m = tar.getmember("cell.yaml")
    data[m.offset_data + 3] ^= 0x01
    bad = tmp_path / "bad.tar"
    bad.write_bytes(bytes(data))
    refused(bad, tmp_path, "member 'cell.yaml' differs from the manifest (checksum mismatch)")


def with_member(good: Path, tmp_path: Path, *members: tuple[tarfile.TarInfo, bytes]) -> Path:
    """``good`` with ``members`` inserted before its manifest directory."""
    data = good.read_bytes()
    with tarfile.open(good) as tar:
        at = tar.getmember(".synfast").offset
    extra = b""
    for info, body in members:
        info.size = len(body)
        extra += info.tobuf(format=tarfile.PAX_FORMAT) + body + tarformat.padding(len(body))
    out = tmp_path / "hostile.tar"
    out.write_bytes(data[:at] + extra + data[at:])
    return out


def member(name: str, kind: bytes = tarfile.REGTYPE, linkname: str = "") -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type, info.linkname, info.mode = kind, linkname, 0o644
    return info


@pytest.mark.parametrize("members, says", [
    ([(member("/etc/evil"), b"x")], "member '/etc/evil' has an absolute name"),
    ([(member("../evil"), b"x")], "member '../evil' has an absolute name or a '..'"),
    ([(member("slabs/../../evil"), b"x")], "has an absolute name or a '..' component"),
    ([(member("escape", tarfile.SYMTYPE, "/tmp"), b""), (member("escape/evil"), b"x")],
     "member 'escape/evil' would be written through a symlink"),
    ([(member("dev", tarfile.CHRTYPE), b"")], "member 'dev' is a device"),
    ([(member("hard", tarfile.LNKTYPE, "cell.yaml"), b"")], "member 'hard' is a hard link"),
    ([(member("stray.txt"), b"hello")], "member 'stray.txt' is not in the manifest"),
    ([(member("cell.yaml"), b"again")], "member 'cell.yaml' appears twice"),
])
def test_a_hostile_stream_is_refused_and_nothing_is_written_outside(
        good: Path, tmp_path: Path, members: list, says: str) -> None:
    hostile = with_member(good, tmp_path, *members)
    refused(hostile, tmp_path, says)
    assert not (tmp_path / "evil").exists() and not Path("/etc/evil").exists()
    assert not Path("/tmp/evil").exists()


def test_a_stream_without_a_manifest_is_not_a_backup(svc: Path, tmp_path: Path) -> None:
    plain = tmp_path / "plain.tar"
    subprocess.run(["tar", "--sparse", "-cf", str(plain), "-C", str(svc), "cell.yaml"],
                   check=True)
    refused(plain, tmp_path, "ended without its manifest")


def test_a_broken_pipe_fails_the_backup_with_one_line(svc: Path, tmp_path: Path) -> None:
    big = svc / "big.bin"
    big.write_bytes(os.urandom(4 << 20))
    proc = subprocess.Popen([*synfast_cmd(), "backup", str(svc), "-", "-q"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    assert proc.stdout is not None and proc.stderr is not None
    proc.stdout.read(1000)
    proc.stdout.close()
    err = proc.stderr.read().decode()
    assert proc.wait(timeout=60) == 1
    assert err.strip().splitlines() == [
        "synfast: error: -: the program reading the backup stream stopped reading (broken "
        "pipe) (check the command the stream is piped into)"], err


def test_a_stream_to_a_terminal_is_refused(svc: Path) -> None:
    import pty

    leader, follower = pty.openpty()
    try:
        proc = subprocess.run([*synfast_cmd(), "backup", str(svc), "-"], stdout=follower,
                              stderr=subprocess.PIPE, text=True)
    finally:
        os.close(leader)
        os.close(follower)
    assert proc.returncode == 2 and "will not write a tar stream to a terminal" in proc.stderr


def test_staging_engines_need_scratch_and_leave_it_empty(svc: Path, tmp_path: Path) -> None:
    proc = subprocess.run([*synfast_cmd(), "backup", str(svc), "-", "--lmdb-engine", "rebuild"],
                          capture_output=True)
    assert proc.returncode == 2 and b"--scratch DIR" in proc.stderr
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    data = stream_of(svc, "--lmdb-engine", "rebuild", "--scratch", str(scratch))
    assert list(scratch.iterdir()) == []
    target = tmp_path / "restored"
    proc = subprocess.run([*synfast_cmd(), "restore", "-", str(target)], input=data,
                          capture_output=True)
    assert proc.returncode == 0, proc.stderr
    assert dumps_of(target) == dumps_of(svc)


def test_export_streams_a_local_backup_and_stops_at_damage(svc: Path, tmp_path: Path) -> None:
    bk = tmp_path / "bk"
    assert run_cli("backup", svc, bk, "-q").returncode == 0
    out = tmp_path / "exported.tar"
    proc = run_cli("export", bk, out)
    assert proc.returncode == 0, proc.stderr
    assert run_cli("verify", out).returncode == 0
    assert run_cli("export", bk, out).returncode == 1          # never overwritten
    with open(bk / "cell.yaml", "r+b") as f:
        f.write(b"X")
    proc = subprocess.run([*synfast_cmd(), "export", str(bk), "-"], capture_output=True)
    assert proc.returncode == 1 and b"checksum mismatch" in proc.stderr
    assert b".synfast/manifest.json" not in proc.stdout
    with tarfile.open(fileobj=io.BytesIO(proc.stdout + bytes(1024))) as tar:
        names = tar.getnames()
    assert ".synfast/manifest.json" not in names


def test_every_environment_in_a_stream_taken_under_a_live_writer_is_one_state(
        tmp_path: Path) -> None:
    svc = tmp_path / "svc"
    svc.mkdir()
    paths = [svc / "a.lmdb", svc / "b.lmdb"]
    for p in paths:
        p.mkdir()
    writer = start_writer(*paths)
    try:
        for p in paths:
            wait_for_txnid(p, 100, writer)
        for n in range(5):
            data = stream_of(svc)
            out = tmp_path / f"x{n}"
            out.mkdir()
            with tarfile.open(fileobj=io.BytesIO(data)) as tar:
                tar.extractall(out, filter="fully_trusted")
            counters = [check_snapshot(out / p.name) for p in paths]
            assert counters[1] >= counters[0] - 1, counters
            assert run_cli("verify", out).returncode == 0
        assert writer.poll() is None
    finally:
        writer.kill()
        writer.wait(timeout=30)


def test_restoring_a_stream_refuses_a_service_in_use(good: Path, svc: Path,
                                                      tmp_path: Path) -> None:
    from tests.backup.test_restore import hold
    from tests.conftest import assert_one_line_error

    holder = hold(svc / "slabs" / "cell.lmdb")
    try:
        proc = run_cli("restore", good, svc)
        assert_one_line_error(proc, str(svc / "slabs" / "cell.lmdb"),
                              f"is open by process {holder.pid}", code=1)
        assert not (tmp_path / "cortex00.partial").exists()
        assert not list(tmp_path.glob("cortex00.old-*"))
    finally:
        holder.kill()
        holder.wait()


def test_a_scratch_directory_too_small_is_one_clear_line(svc: Path, tmp_path: Path) -> None:
    tiny = tmp_path / "tiny"
    tiny.mkdir()
    if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=256k", "tmpfs", str(tiny)],
                      capture_output=True).returncode != 0:
        pytest.skip("mounting a tmpfs needs root")
    try:
        proc = subprocess.run([*synfast_cmd(), "backup", str(svc), "-", "-q",
                               "--lmdb-engine", "rebuild", "--scratch", str(tiny)],
                              capture_output=True)
        assert proc.returncode == 1
        assert proc.stderr.decode().strip().splitlines() == [
            f"synfast: error: {tiny}: has no room for a copy of "
            f"{svc / 'layers' / 'abc123' / 'layer_v2.lmdb'} "
            "(--scratch) (give --scratch a directory with room for the largest environment, "
            "or stream with --lmdb-engine pages)"], proc.stderr
        assert b".synfast/manifest.json" not in proc.stdout
        assert list(tiny.iterdir()) == []
    finally:
        subprocess.run(["umount", str(tiny)], check=True)
