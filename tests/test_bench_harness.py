"""The benchmark harness (bench/run.py) end to end, at a tiny scale.

It runs the real harness in a subprocess, as ``make bench`` would, on real
(tiny) datasets with real contenders: ``cp -a`` (the baseline), ``synfast``
and the test-only ``broken`` contender, which copies with ``cp -a`` and then
changes one byte (or, in an LMDB environment, deletes one entry).  What is
checked is the instrument, not the figures: the table, the JSON and the
correctness checks are produced, and the fast wrong copy is reported as WRONG
and never as a win.  No timing assertions.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent

pytestmark = pytest.mark.skipif(
    shutil.which("mdb_dump") is None, reason="needs mdb_dump (lmdb-utils) for the checks")


@pytest.fixture(scope="module")
def bench_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[subprocess.CompletedProcess,
                                                                  Path, Path]:
    tmp = tmp_path_factory.mktemp("bench")
    out, cache = tmp / "out", tmp / "cache"
    env = dict(os.environ, SYNFAST_BENCH_BROKEN="1")
    proc = subprocess.run(
        [sys.executable, "bench/run.py", "--scale", "0.0005", "--only", "sparse,lmdb-b",
         "--contenders", "cp-a,synfast,broken", "--runs", "2", "--warmup", "1",
         "--out", os.fspath(out), "--cache", os.fspath(cache), "--min-free-gib", "0",
         # not the benchmark's memory settings: they drop the page cache and
         # touch all free memory, which would slow the rest of the suite
         "--unsteady"],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return proc, out, cache


def test_table_on_stdout(bench_run) -> None:
    proc, _, _ = bench_run
    table = proc.stdout
    for heading in ("### sparse", "### lmdb-b"):
        assert heading in table
    assert "| contender | wall s (min-max) | ratio to cp -a |" in table
    rows = [ln for ln in table.splitlines() if ln.startswith("| ")]
    names = {ln.split("|")[1].strip() for ln in rows}
    assert {"cp-a", "synfast", "broken"} <= names


def test_json_has_raw_figures_and_machine(bench_run) -> None:
    _, out, _ = bench_run
    doc = json.loads((out / "latest.json").read_text())
    machine = doc["machine"]
    for field in ("cores", "memory_bytes", "kernel", "filesystem", "cp", "lmdb", "python"):
        assert machine[field], field
    assert "LMDB" in machine["lmdb"]
    assert doc["options"]["runs"] == 2
    assert set(doc["datasets"]) == {"sparse", "lmdb-b"}
    for ds in doc["datasets"].values():
        assert ds["source"]["apparent"] > ds["source"]["allocated"] > 0   # sparse sources
        for name in ("cp-a", "synfast", "broken"):
            runs = ds["contenders"][name]["runs"]
            assert len(runs) == 3                      # one warm-up + two counted
            assert [r["warmup"] for r in runs] == [True, False, False]
            for r in runs:
                for field in ("wall", "cpu", "user", "sys", "maxrss", "out_apparent",
                              "out_allocated", "returncode", "status", "argv"):
                    assert field in r, field
                assert r["maxrss"] > 0
            assert len(ds["contenders"][name]["summary"]["ratios"]) == 2
    assert (out / "latest.md").read_text().startswith("# synfast benchmark")


def test_correct_copies_pass_the_checks(bench_run) -> None:
    _, out, _ = bench_run
    doc = json.loads((out / "latest.json").read_text())
    for ds in doc["datasets"].values():
        for name in ("cp-a", "synfast"):
            assert {r["status"] for r in ds["contenders"][name]["runs"]} == {"ok"}
            assert ds["contenders"][name]["summary"]["status"] == "ok"
    # Copies of the sparse file stayed sparse (the sizes are the output's own).
    sparse = doc["datasets"]["sparse"]
    s = sparse["contenders"]["synfast"]["summary"]
    assert s["out_apparent"] == sparse["source"]["apparent"]
    assert s["out_allocated"] < s["out_apparent"]


def test_wrong_copy_is_reported_wrong(bench_run) -> None:
    proc, out, _ = bench_run
    doc = json.loads((out / "latest.json").read_text())
    for ds_name, ds in doc["datasets"].items():
        broken = ds["contenders"]["broken"]
        assert {r["status"] for r in broken["runs"]} == {"wrong"}, ds_name
        assert broken["summary"]["status"] == "WRONG"
        assert broken["summary"]["win"] is False
    env_detail = doc["datasets"]["lmdb-b"]["contenders"]["broken"]["summary"]["detail"]
    assert "mdb_dump -a differs" in env_detail
    assert "bytes differ" in doc["datasets"]["sparse"]["contenders"]["broken"]["summary"]["detail"]
    wrong_rows = [ln for ln in proc.stdout.splitlines() if ln.startswith("| broken ")]
    assert len(wrong_rows) == 2 and all("WRONG" in ln for ln in wrong_rows)
    for line in proc.stdout.splitlines():
        if line.startswith("Faster than cp -a and correct:"):
            assert "broken" not in line


def test_chart_or_note(bench_run) -> None:
    _, out, _ = bench_run
    try:
        import matplotlib  # noqa: F401
    except ImportError:
        assert not (out / "latest.png").exists()
    else:
        assert (out / "latest.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_second_run_reuses_the_cached_datasets(bench_run, tmp_path: Path) -> None:
    _, _, cache = bench_run
    before = sorted(p.name for p in cache.iterdir() if p.name.startswith("sparse-"))
    proc = subprocess.run(
        [sys.executable, "-m", "bench", "--scale", "0.0005", "--only", "sparse",
         "--contenders", "cp-a", "--runs", "1", "--warmup", "0", "--no-chart",
         "--out", os.fspath(tmp_path), "--cache", os.fspath(cache), "--min-free-gib", "0",
         "--unsteady"],
        cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert "building dataset" not in proc.stderr
    assert sorted(p.name for p in cache.iterdir() if p.name.startswith("sparse-")) == before
    doc = json.loads((tmp_path / "latest.json").read_text())
    assert doc["datasets"]["sparse"]["build_seconds"] == 0.0
