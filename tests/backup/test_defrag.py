"""``synfast defrag``: real fragmented environments, real processes holding them
open, SIGKILL mid-way, a full filesystem, and the service writing afterwards."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import lmdb
import pytest
from prometheus_client.parser import text_string_to_metric_families

from synfast.backup import defrag as defrag_mod
from synfast.backup import hooks
from synfast.lmdb.meta import read_meta
from tests.conftest import IS_ROOT, allocated, assert_one_line_error, mdb_dump, run_cli

FRAGMENTED = ("layers/aaa.lmdb", "layers/bbb.lmdb", "slabs/cell.lmdb")
COMPACT = "axon.lmdb"


def _fragmented(path: Path, n: int, seed: int, writemap: bool = True) -> None:
    """An environment like a Cortex layer after deletes: random keys, three
    quarters of them deleted again, two named databases.  (Without writemap on
    a filesystem that may fill up: a full tmpfs is SIGBUS through a map.)"""
    rnd = __import__("random").Random(seed)
    path.parent.mkdir(parents=True, exist_ok=True)
    env = lmdb.open(str(path), map_size=1 << 30, writemap=writemap, max_dbs=4)
    nodes, tags = env.open_db(b"nodes"), env.open_db(b"tags")
    keys = [rnd.randbytes(16) for _ in range(n)]
    with env.begin(write=True) as txn:
        for k in keys:
            txn.put(k, rnd.randbytes(rnd.randrange(50, 700)), db=nodes)
            txn.put(k[:4], k, db=tags)
    with env.begin(write=True) as txn:
        for k in keys[: n * 3 // 4]:
            txn.delete(k, db=nodes)
    env.close()


def _service(root: Path) -> Path:
    svc = root / "cortex00"
    for i, rel in enumerate(FRAGMENTED):
        _fragmented(svc / rel, 3000 + 1000 * i, i)
    env = lmdb.open(str(svc / COMPACT), map_size=1 << 30, writemap=True)
    with env.begin(write=True) as txn:
        for i in range(4000):
            txn.put(b"%08d" % i, b"v" * 120)
    env.close()
    (svc / "cell.yaml").write_text("name: cortex00\n")
    (svc / "notes.bin").write_bytes(os.urandom(5000))
    os.chmod(svc / "layers" / "aaa.lmdb" / "data.mdb", 0o640)
    return svc


def _dumps(svc: Path) -> dict[str, str]:
    return {rel: mdb_dump(svc / rel) for rel in (*FRAGMENTED, COMPACT)}


def _state(svc: Path) -> dict[str, tuple]:
    """What must not change: every file but the environments' data files and
    their lock files (LMDB's reader table, written by every reader)."""
    out = {}
    for p in sorted(svc.rglob("*")):
        if p.is_file() and p.name not in ("data.mdb", "lock.mdb"):
            st = p.stat()
            out[str(p.relative_to(svc))] = (st.st_ino, st.st_mtime_ns, p.read_bytes())
    return out


def test_defrag_rebuilds_fragmented_environments_in_place(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    dumps, others = _dumps(svc), _state(svc)
    before = {rel: allocated(svc / rel / "data.mdb") for rel in (*FRAGMENTED, COMPACT)}
    compact_ino = (svc / COMPACT / "data.mdb").stat().st_ino
    proc = run_cli("defrag", "--dry-run", "--json", svc)
    assert proc.returncode == 0, proc.stderr
    predicted = {e["path"]: e for e in json.loads(proc.stdout)["environments"]}

    prom = tmp_path / "defrag.prom"
    proc = run_cli("defrag", "--json", "--metrics-file", prom, svc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    samples = {s.name: s.value for f in text_string_to_metric_families(prom.read_text())
               for s in f.samples}
    assert samples["synfast_defrag_rebuilt_environments"] == len(FRAGMENTED)
    assert samples["synfast_defrag_skipped_environments"] == 1
    assert samples["synfast_defrag_last_attempt_success"] == 1
    assert samples["synfast_defrag_after_bytes"] < samples["synfast_defrag_before_bytes"]
    prom.unlink()
    assert {e["path"]: e["action"] for e in report["environments"]} == {
        **{rel: "rebuilt" for rel in FRAGMENTED}, COMPACT: "skip"}
    assert _dumps(svc) == dumps                 # every entry of every database, unchanged
    assert _state(svc) == others                # other files never touched
    assert (svc / COMPACT / "data.mdb").stat().st_ino == compact_ino
    for rel in FRAGMENTED:
        after = allocated(svc / rel / "data.mdb")
        # Smaller by about the predicted saving.
        assert after < before[rel] * 0.6
        assert abs(after - predicted[rel]["predicted_bytes"]) <= 0.15 * before[rel]
    assert (svc / "layers/aaa.lmdb/data.mdb").stat().st_mode & 0o777 == 0o640
    # The old data files are kept beside the service, same relative paths.
    old = Path(report["old_dir"])
    assert old.name.startswith("cortex00.defrag-old-") and old.parent == tmp_path
    assert sorted(str(p.relative_to(old)) for p in old.rglob("data.mdb")) == sorted(
        f"{rel}/data.mdb" for rel in FRAGMENTED)
    assert mdb_dump(old / "layers/aaa.lmdb") == dumps["layers/aaa.lmdb"]
    # A second run at once finds nothing worth rebuilding.
    proc = run_cli("defrag", "--json", svc)
    assert proc.returncode == 0, proc.stderr
    assert [e["action"] for e in json.loads(proc.stdout)["environments"]] == ["skip"] * 4
    # The map size is kept; the service starts on the result and keeps writing,
    # with writemap.
    for rel in FRAGMENTED:
        assert read_meta(svc / rel / "data.mdb").map_size == 1 << 30
        env = lmdb.open(str(svc / rel), writemap=True, max_dbs=4, map_size=1 << 30)
        nodes = env.open_db(b"nodes")
        with env.begin(write=True) as txn:
            for i in range(2000):
                txn.put(b"new%06d" % i, os.urandom(200), db=nodes)
        with env.begin(db=nodes) as txn:
            assert txn.get(b"new001999") is not None
        env.close()


def test_dry_run_changes_nothing(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    def files() -> dict:
        # Lock files aside: a read snapshot registers in LMDB's reader table.
        return {str(p): (p.stat().st_ino, p.stat().st_mtime_ns, p.stat().st_size)
                for p in svc.rglob("*") if p.name != "lock.mdb"}

    before = files()
    proc = run_cli("defrag", "--dry-run", svc)
    assert proc.returncode == 0, proc.stderr
    assert "would rebuild" in proc.stdout and "would be rebuilt" in proc.stdout
    assert files() == before
    assert os.listdir(tmp_path) == ["cortex00"]


def test_min_saving_leaves_a_compact_environment_alone(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    ino = (svc / COMPACT / "data.mdb").stat().st_ino
    proc = run_cli("defrag", "--json", "--min-saving", "95", svc)
    assert proc.returncode == 0, proc.stderr
    assert {e["action"] for e in json.loads(proc.stdout)["environments"]} == {"skip"}
    assert (svc / COMPACT / "data.mdb").stat().st_ino == ino
    # With no threshold even the compact one is rebuilt.
    proc = run_cli("defrag", "--json", "--min-saving", "0", "--no-keep", svc)
    assert proc.returncode == 0, proc.stderr
    assert {e["action"] for e in json.loads(proc.stdout)["environments"]} == {"rebuilt"}
    assert (svc / COMPACT / "data.mdb").stat().st_ino != ino
    assert os.listdir(tmp_path) == ["cortex00"]       # --no-keep keeps nothing


def test_refused_while_an_environment_is_open(tmp_path: Path) -> None:
    svc = _service(tmp_path)
    dumps = _dumps(svc)
    holder = subprocess.Popen(
        [sys.executable, "-c", "import lmdb, sys; e = lmdb.open(sys.argv[1], max_dbs=4); "
         "print('open', flush=True); sys.stdin.read()", str(svc / "slabs/cell.lmdb")],
        stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout is not None and holder.stdout.readline() == "open\n"
        proc = run_cli("defrag", "--pre-cmd", f"touch {tmp_path}/pre", "--post-cmd",
                       f"touch {tmp_path}/post", svc)
        assert_one_line_error(proc, str(svc / "slabs/cell.lmdb"), f"process {holder.pid}",
                              "stop the service", code=1)
    finally:
        holder.kill()
        holder.wait()
    assert (tmp_path / "pre").exists() and (tmp_path / "post").exists()
    assert _dumps(svc) == dumps
    assert sorted(os.listdir(tmp_path)) == ["cortex00", "post", "pre"]


def _paused(point: str, svc: Path, after: int = 0) -> subprocess.Popen:
    """``synfast defrag`` held by the test hook at ``point`` (after ``after``
    environments were swapped in, for ``defrag-swapped``)."""
    env = {**os.environ, hooks.PAUSE_ENV: point}
    proc = subprocess.Popen([sys.executable, "-m", "synfast", "defrag", str(svc)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
                            env=env)
    assert proc.stderr is not None
    seen = []
    for line in proc.stderr:
        seen.append(line)
        if f"paused at {point}" in line:
            return proc
    proc.wait(timeout=30)
    raise AssertionError("".join(seen))


@pytest.mark.parametrize("point", defrag_mod.PAUSE_POINTS)
def test_killed_midway_then_run_again(tmp_path: Path, point: str) -> None:
    svc = _service(tmp_path)
    dumps = _dumps(svc)
    proc = _paused(point, svc)
    proc.send_signal(signal.SIGKILL)
    proc.wait(timeout=30)
    # Every environment is the old one or the new one, whole: same entries.
    assert _dumps(svc) == dumps
    leftovers = [p for p in svc.rglob("*synfast-partial")]
    assert len(leftovers) == (1 if point == "defrag-rebuilt" else 0)
    proc = run_cli("defrag", "--json", svc)
    assert proc.returncode == 0, proc.stderr
    report = json.loads(proc.stdout)
    assert [str(p) for p in leftovers] == report["leftovers_removed"]
    done = {e["path"] for e in report["environments"] if e["action"] == "rebuilt"}
    assert done == set(FRAGMENTED) - ({"layers/aaa.lmdb"} if point == "defrag-swapped" else set())
    assert _dumps(svc) == dumps
    assert not list(svc.rglob("*synfast-partial"))
    proc = run_cli("defrag", "--json", svc)
    assert {e["action"] for e in json.loads(proc.stdout)["environments"]} == {"skip"}


@pytest.mark.parametrize("signum,code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)],
                         ids=["SIGTERM", "SIGINT"])
def test_signal_stops_cleanly(tmp_path: Path, signum: int, code: int) -> None:
    svc = _service(tmp_path)
    dumps = _dumps(svc)
    ino = (svc / "layers/aaa.lmdb/data.mdb").stat().st_ino
    proc = _paused("defrag-rebuilt", svc)
    proc.send_signal(signum)
    assert proc.wait(timeout=30) == code
    assert proc.stderr is not None and "Traceback" not in proc.stderr.read()
    assert (svc / "layers/aaa.lmdb/data.mdb").stat().st_ino == ino
    assert not list(svc.rglob("*synfast-partial"))
    assert _dumps(svc) == dumps


@pytest.mark.skipif(not IS_ROOT, reason="mounting a small tmpfs needs root")
def test_full_disk_leaves_everything_as_it_was(small_tmpfs: Path) -> None:
    svc = small_tmpfs / "cortex00"
    _fragmented(svc / "layers/big.lmdb", 3000, 7, writemap=False)
    _fragmented(svc / "layers/small.lmdb", 300, 8, writemap=False)
    dumps = {rel: mdb_dump(svc / rel) for rel in ("layers/big.lmdb", "layers/small.lmdb")}
    st = os.statvfs(small_tmpfs)
    free = st.f_bavail * st.f_frsize
    # Leave room for the small environment's rebuild but not the big one's.
    (small_tmpfs / "filler").write_bytes(b"\1" * (free - (200 << 10)))
    proc = run_cli("defrag", "--no-keep", svc)
    assert_one_line_error(proc, str(svc / "layers/big.lmdb/data.mdb"), "no room",
                          "left as it was", code=1)
    assert {rel: mdb_dump(svc / rel) for rel in dumps} == dumps
    assert not list(svc.rglob("*synfast-partial"))
