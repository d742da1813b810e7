"""``synfast verify``: a backup tampered with after the fact is caught, problem by problem."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from synfast.backup import checksum as cks
from synfast.backup import manifest
from synfast.lmdb import meta as lmdbmeta
from tests.backup.service import backup_ok, service
from tests.conftest import run_cli


@pytest.fixture
def made(tmp_path: Path) -> Path:
    svc = service(tmp_path)
    bk = tmp_path / "bk"
    backup_ok(svc, bk, "-q")
    return bk


def problems(bk: Path) -> list[str]:
    proc = run_cli("verify", bk)
    assert proc.returncode == 1, proc.stdout + proc.stderr
    assert "Traceback" not in proc.stderr
    return proc.stdout.splitlines()


def test_a_clean_backup_verifies_and_is_recorded(made: Path) -> None:
    proc = run_cli("verify", made, "--json")
    assert proc.returncode == 0, proc.stdout
    out = json.loads(proc.stdout)
    assert out["ok"] and out["problems"] == []
    assert out["environments_checked"] == 3 and out["checksums_checked"] == 6
    # every entry of every database was walked: 1 + 400 + 4 + 40 + 2, plus the
    # named databases' records in the main databases (3 + 1)
    assert out["entries_walked"] == 1 + 400 + 4 + 40 + 2 + 3 + 1
    assert manifest.read_verified(made)["ok"] is True


def test_changed_byte_missing_file_truncated_env_and_extra_file(made: Path) -> None:
    with open(made / "sparse.bin", "r+b") as f:            # a changed byte inside data
        f.seek((1 << 20) + 100)
        b = f.read(1)
        f.seek((1 << 20) + 100)
        f.write(bytes([b[0] ^ 0xFF]))
    (made / "cell.yaml").unlink()                           # a missing file
    env = made / "layers" / "abc123" / "layer_v2.lmdb"
    os.truncate(env / "data.mdb", os.path.getsize(env / "data.mdb") - 4096)  # truncated env
    (made / "slabs" / "stray").write_text("x")              # something not in the manifest
    os.chmod(made / "slabs", 0o700)                         # a changed mode
    lines = problems(made)
    assert f"{made / 'sparse.bin'}: content differs from the manifest (checksum mismatch)" in lines
    assert f"{made / 'cell.yaml'}: missing (file listed in the manifest)" in lines
    assert any(line.startswith(f"{env / 'data.mdb'}: size ") for line in lines)
    assert f"{env}: environment not opened: its data file does not match the manifest" in lines
    assert f"{made / 'slabs' / 'stray'}: is not in the manifest" in lines
    assert f"{made / 'slabs'}: mode 0700, the manifest says 0755" in lines
    assert len(lines) == 6    # one line per problem (the summary goes to stderr)
    assert manifest.read_verified(made)["ok"] is False


def test_environment_with_wrong_counts_is_caught_by_the_walk(made: Path) -> None:
    # Without checksums the walk alone must notice an environment whose
    # content is not the one the manifest describes.
    doc = json.loads((made / ".synfast" / "manifest.json").read_text())
    doc["checksum"] = None
    cell = next(e for e in doc["environments"] if e["path"] == "slabs/cell.lmdb")
    cell["databases"]["nodes"] = 401
    cell["databases"]["gone"] = 5
    (made / ".synfast" / "manifest.json").write_text(json.dumps(doc))
    lines = problems(made)
    env = made / "slabs" / "cell.lmdb"
    assert f"{env}: database 'nodes' holds 400 entries, the manifest says 401" in lines
    assert f"{env}: database 'gone' is missing" in lines


def test_truncated_environment_is_refused_by_lmdb_when_sizes_are_not_checked(
        made: Path) -> None:
    env = made / "layers" / "abc123" / "layer_v2.lmdb"
    data = env / "data.mdb"
    os.truncate(data, lmdbmeta.read_meta(data).used_size - 8192)
    doc = json.loads((made / ".synfast" / "manifest.json").read_text())
    for e in doc["entries"]:
        if e["path"] == "layers/abc123/layer_v2.lmdb/data.mdb":
            e["size"] = os.path.getsize(data)
            e["checksum"] = cks.checksum_file(data)
    (made / ".synfast" / "manifest.json").write_text(json.dumps(doc))
    lines = problems(made)
    assert any(line.startswith(f"{env}: environment does not open or walk:")
               and "truncated" in line for line in lines), lines


def test_missing_or_broken_manifest(made: Path, tmp_path: Path) -> None:
    mf = made / ".synfast" / "manifest.json"
    mf.write_text('{"format": "synfast-backup", "version": 1}')
    assert "is incomplete" in problems(made)[0]
    mf.write_text("{not json")
    assert "is not valid JSON" in problems(made)[0]
    mf.unlink()
    assert problems(made)[0] == f"{mf}: is missing (not a complete synfast backup)"
    proc = run_cli("verify", tmp_path / "nothing")
    assert proc.returncode == 1 and "does not exist" in proc.stdout


@pytest.mark.parametrize("seed", range(6))
def test_damaged_environment_without_checksums_is_reported_not_a_crash(made: Path,
                                                                      seed: int) -> None:
    # With --no-checksum a damaged data file of the right size is opened; LMDB
    # trusts its pages and may crash or abort on garbage.  Verify must report
    # it, one line, exit 1, whatever LMDB does (or pass, exit 0, when the bytes
    # hit only values: without checksums nothing reads them).
    import random

    env = made / "slabs" / "cell.lmdb"
    data = env / "data.mdb"
    rng = random.Random(seed)
    used = lmdbmeta.read_meta(data).used_size
    with open(data, "r+b") as f:
        for _ in range(8):
            f.seek(rng.randrange(8192, used - 64))
            f.write(rng.randbytes(64))
    proc = run_cli("verify", "--no-checksum", made)
    assert proc.returncode in (0, 1), (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "Assertion" not in proc.stderr
    if proc.returncode == 1:
        assert [line for line in proc.stdout.splitlines()
                if not line.startswith(f"{env}: ")] == [], proc.stdout


@pytest.mark.parametrize("damage, says", [
    (lambda d: d["environments"][0].__setitem__("databases", 5),
     "environment 0 lacks 'databases'"),
    (lambda d: d["environments"][0]["databases"].__setitem__("x", "many"),
     "environment 0 has bad 'databases'"),
    (lambda d: d["environments"][0].__setitem__("entries", "x"), "environment 0 lacks 'entries'"),
    (lambda d: next(e for e in d["entries"] if e["type"] == "file").__setitem__("checksum", None),
     "lacks 'checksum'"),
    (lambda d: next(e for e in d["entries"] if e["type"] == "file").__setitem__("size", "abc"),
     "lacks 'size'"),
    (lambda d: d["entries"].append(dict(d["entries"][-1])), "a second time"),
    (lambda d: d["entries"][0].__setitem__("type", "fifo"), "unknown type 'fifo'"),
])
def test_a_manifest_of_the_wrong_shape_is_one_line_not_a_traceback(made: Path, damage,
                                                                  says: str) -> None:
    mf = made / ".synfast" / "manifest.json"
    doc = json.loads(mf.read_text())
    damage(doc)
    mf.write_text(json.dumps(doc))
    lines = problems(made)
    assert lines[0].startswith(f"{mf}: is incomplete: ") and says in lines[0], lines
    assert len(lines) == 1


def test_total_entries_of_an_environment_are_checked(made: Path) -> None:
    mf = made / ".synfast" / "manifest.json"
    doc = json.loads(mf.read_text())
    cell = next(e for e in doc["environments"] if e["path"] == "slabs/cell.lmdb")
    cell["entries"] += 1
    mf.write_text(json.dumps(doc))
    env = made / "slabs" / "cell.lmdb"
    assert problems(made) == [f"{env}: holds {cell['entries'] - 1} entries in all, the manifest "
                              f"says {cell['entries']}"]


@pytest.mark.parametrize("bad", ["../../../etc/hostname", "/etc/hostname", "a/../../x",
                                 "slabs/./cell.yaml", "slabs//x"])
@pytest.mark.parametrize("command", ["verify", "restore"])
def test_a_manifest_naming_paths_outside_the_backup_is_refused_unopened(
        made: Path, tmp_path: Path, bad: str, command: str) -> None:
    """A manifest is untrusted: an entry that would make verify or restore look
    (or write) outside the backup is an invalid manifest, and nothing it names
    is opened (a lookup would have reported it "missing")."""
    mf = made / ".synfast" / "manifest.json"
    doc = json.loads(mf.read_text())
    entry = next(e for e in doc["entries"] if e["type"] == "file")
    entry["path"] = bad
    mf.write_text(json.dumps(doc))
    args = [made] if command == "verify" else [made, tmp_path / "restored"]
    proc = run_cli(command, *args)
    assert proc.returncode == 1 and "Traceback" not in proc.stderr
    # verify lists its problems on stdout (a summary on stderr); restore says one line
    said = (proc.stdout if command == "verify" else proc.stderr).strip().splitlines()
    assert len(said) == 1, said
    assert f"{mf}: is invalid: entry " in said[0] and "not a path inside the backup" in said[0]
    assert "missing" not in said[0]
    assert not (tmp_path / "restored").exists()
    assert not (tmp_path / "restored.partial").exists()


def test_an_environment_record_outside_the_backup_is_refused(made: Path) -> None:
    mf = made / ".synfast" / "manifest.json"
    doc = json.loads(mf.read_text())
    doc["environments"][0]["data"] = "../elsewhere/data.mdb"
    mf.write_text(json.dumps(doc))
    lines = problems(made)
    assert lines == [f"{mf}: is invalid: environment 0 names a path outside the backup "
                     "(it was not written by synfast; do not trust this backup)"]


@pytest.mark.parametrize("algorithm", sorted(cks.CHOICES))
def test_small_files_checked_in_batches_find_each_damage(tmp_path: Path, algorithm: str) -> None:
    """Small files are read whole and hashed a directory at a time: a changed
    byte, a file rewritten at its size, a hole where zeros were (not damage)
    and a directory where a file was are each told apart."""
    svc = tmp_path / "svc"
    (svc / "d").mkdir(parents=True)
    for i in range(40):
        (svc / "d" / f"f{i:02}").write_bytes(os.urandom(3000 + i) if i != 7 else bytes(20000))
    bk = tmp_path / "bk"
    backup_ok(svc, bk, "-q", "--checksum", algorithm)
    d = bk / "d"
    with open(d / "f03", "r+b") as f:                       # a changed byte
        f.seek(1000)
        b = f.read(1)
        f.seek(1000)
        f.write(bytes([b[0] ^ 1]))
    os.unlink(d / "f07")                                     # zeros become a hole: same content
    with open(d / "f07", "wb") as f:
        f.truncate(20000)
    os.chmod(d / "f07", 0o644)
    os.unlink(d / "f11")                                     # a directory where a file was
    (d / "f11").mkdir(mode=0o755)
    size = os.path.getsize(d / "f20")                        # rewritten at its size
    (d / "f20").write_bytes(os.urandom(size))
    lines = problems(bk)
    assert f"{d / 'f03'}: content differs from the manifest (checksum mismatch)" in lines
    assert f"{d / 'f20'}: content differs from the manifest (checksum mismatch)" in lines
    assert f"{d / 'f11'}: is not a file as the manifest says" in lines
    assert not any(line.startswith(f"{d / 'f07'}") for line in lines)
    assert len(lines) == 3
