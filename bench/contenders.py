"""The contenders: every way a user might copy a file, an LMDB environment or a
service directory, each run as its own process (``argv``) so that the
harness measures what a user waits for, interpreter start-up and imports
included.

Contenders written in Python (shutil, py-lmdb, the Synapse-style baseline,
the deliberately broken test contender) are small drivers at the bottom of
this file, run as ``python bench/contenders.py DRIVER SRC DST``: they import
only the standard library and ``lmdb``, nothing of the harness.

Which synfast variants exist is detected at run time, because other issues
add engines and commands while this harness is in use: an engine or command
that is not there yet is simply not a contender.
"""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

# Environment variables that add contenders.
SYNAPSE_ENV = "SYNFAST_BENCH_SYNAPSE_PYTHON"   # a Python that has Synapse installed
BROKEN_ENV = "SYNFAST_BENCH_BROKEN"            # "1": add the test-only wrong contender

FILE, ENV, TREE = "file", "env", "tree"
ALL = frozenset({FILE, ENV, TREE})


@dataclass(frozen=True)
class Contender:
    """One way of copying.  ``space`` says how much room its output takes, so
    that the harness can refuse a run that would fill the disk: "sparse"
    (about the source's allocated size), "dense" (the full apparent size) or
    "dense-files" (dense for plain files, compacted for environments)."""

    name: str
    kinds: frozenset[str]
    argv: Callable[[Path, Path, str], list[str]]
    space: str = "sparse"
    needs_envs: bool = False      # only where the dataset holds LMDB environments
    note: str = ""

    def applies(self, kind: str, has_envs: bool) -> bool:
        return kind in self.kinds and (has_envs or not self.needs_envs)


def _driver(name: str) -> Callable[[Path, Path, str], list[str]]:
    return lambda s, d, k: [sys.executable, os.fspath(HERE / "contenders.py"), name,
                            os.fspath(s), os.fspath(d)]


def _synfast_cmd() -> list[str]:
    exe = Path(sys.executable).with_name("synfast")
    return [os.fspath(exe)] if exe.exists() else [sys.executable, "-m", "synfast"]


def _synfast_help(*args: str) -> str | None:
    """The help text of a synfast command, or None when it does not exist."""
    r = subprocess.run([*_synfast_cmd(), *args, "--help"], capture_output=True, text=True,
                       env=dict(os.environ, COLUMNS="200", NO_COLOR="1"), cwd=ROOT)
    return r.stdout if r.returncode == 0 else None


def _synfast_copy(*opts: str) -> Callable[[Path, Path, str], list[str]]:
    return lambda s, d, k: [*_synfast_cmd(), "copy", "-q", *opts, os.fspath(s), os.fspath(d)]


def _mkdir_then(*cmd: str) -> Callable[[Path, Path, str], list[str]]:
    """Tools that want an existing output directory (mdb_copy): the mkdir is
    part of the measured process, as it would be in a user's script."""
    return lambda s, d, k: ["sh", "-c", 'mkdir -- "$1" && shift && exec "$@"', "sh",
                            os.fspath(d), *cmd, os.fspath(s), os.fspath(d)]


def _rsync(s: Path, d: Path, kind: str) -> list[str]:
    # A trailing slash copies a directory's contents into d (d is created).
    src = os.fspath(s) + ("/" if kind != FILE else "")
    return ["rsync", "-aS", src, os.fspath(d)]


def available() -> list[Contender]:
    """Every contender this machine can run, in the order the table shows them."""
    out: list[Contender] = []
    engines = ["compact", "raw"]
    cli_engines = _engine_choices(_synfast_help("copy") or "")
    engines += sorted(cli_engines)
    out.append(Contender("synfast", ALL, _synfast_copy(),
                         note="synfast copy, default options"))
    for engine in engines:
        out.append(Contender(f"synfast:{engine}", frozenset({ENV, TREE}),
                             _synfast_copy("--lmdb-engine", engine), needs_envs=True,
                             note=f"synfast copy --lmdb-engine {engine}"))
    if "rebuild" not in cli_engines and _has_rebuild_engine():
        out.append(Contender("synfast:rebuild", frozenset({ENV}), _driver("synfast-rebuild"),
                             note="synfast.lmdb.snapshot.rebuild_environment (no CLI option yet)"))
    out.append(Contender("synfast:sparse-always", frozenset({FILE}),
                         _synfast_copy("--sparse", "always"),
                         note="synfast copy --sparse always (also punches zero blocks)"))
    out.append(Contender("synfast:j1", frozenset({TREE}), _synfast_copy("--jobs", "1"),
                         note="synfast copy --jobs 1"))
    if _synfast_help("backup") is not None:
        out.append(Contender("synfast-backup", frozenset({TREE}),
                             lambda s, d, k: [*_synfast_cmd(), "backup", "-q", os.fspath(s),
                                              os.fspath(d)],
                             note="synfast backup, defaults (fsync, checksums, drops the "
                             "backup's pages from the cache)"))
        out.append(Contender("synfast-backup:nofsync", frozenset({TREE}),
                             lambda s, d, k: [*_synfast_cmd(), "backup", "-q", "--no-fsync",
                                              "--no-checksum", os.fspath(s), os.fspath(d)],
                             note="synfast backup --no-fsync --no-checksum (like cp: not "
                             "durable when it returns)"))
    out.append(Contender("cp-a", ALL, lambda s, d, k: ["cp", "-a", os.fspath(s), os.fspath(d)],
                         note="cp -a (sparse=auto; the baseline)"))
    out.append(Contender("cp-a-nosparse", ALL,
                         lambda s, d, k: ["cp", "-a", "--sparse=never", os.fspath(s),
                                          os.fspath(d)],
                         space="dense", note="cp -a --sparse=never"))
    if shutil.which("rsync"):
        out.append(Contender("rsync-aS", ALL, _rsync, note="rsync -aS"))
    out.append(Contender("shutil", ALL, _driver("shutil"), space="dense",
                         note="shutil.copyfile / shutil.copytree"))
    if shutil.which("mdb_copy"):
        out.append(Contender("mdb_copy-c", frozenset({ENV}), _mkdir_then("mdb_copy", "-c"),
                             note="mdb_copy -c (compacting)"))
        out.append(Contender("mdb_copy", frozenset({ENV}), _mkdir_then("mdb_copy"),
                             note="mdb_copy (raw)"))
    out.append(Contender("py-lmdb-compact", frozenset({ENV}), _driver("py-lmdb-compact"),
                         note="py-lmdb Environment.copy(compact=True)"))
    out.append(Contender("synapse-style", frozenset({TREE}), _driver("synapse-style"),
                         space="dense-files",
                         note="py-lmdb compact copy per environment + shutil.copy for the rest"))
    synapse = os.environ.get(SYNAPSE_ENV)
    if synapse:
        out.append(Contender("synapse-backup", frozenset({TREE}), space="dense-files",
                             argv=lambda s, d, k: [synapse, "-m", "synapse.tools.backup",
                                                   os.fspath(s), os.fspath(d)],
                             needs_envs=True, note=f"Synapse's backup tool ({synapse})"))
    if os.environ.get(BROKEN_ENV) == "1":
        out.append(Contender("broken", ALL, _driver("broken"),
                             note="TEST ONLY: cp -a, then one byte or entry changed"))
    return out


def _engine_choices(help_text: str) -> set[str]:
    """The optional engines (rebuild, auto) that --lmdb-engine's help names."""
    lines = help_text.splitlines()
    for i, line in enumerate(lines):
        if "--lmdb-engine" in line:
            text = line.split("--lmdb-engine", 1)[1]
            for more in lines[i + 1:]:
                if " --" in more or " -" in more.split("  ")[0]:
                    break
                text += more
            return {e for e in ("rebuild", "auto") if e in text}
    return set()


def _has_rebuild_engine() -> bool:
    r = subprocess.run([sys.executable, "-c",
                        "from synfast.lmdb.snapshot import rebuild_environment"],
                       capture_output=True, cwd=ROOT)
    return r.returncode == 0


# ----------------------------------------------------------------- drivers
# Run in the child process: keep imports inside the functions.

def drive_shutil(src: str, dst: str) -> None:
    """What a Python programmer writes first: copytree (copy2 per file) or copyfile."""
    if os.path.isdir(src):
        shutil.copytree(src, dst)
    else:
        shutil.copyfile(src, dst)


def drive_py_lmdb_compact(src: str, dst: str) -> None:
    """py-lmdb's compacting copy of one environment (what Synapse does per env)."""
    import lmdb

    env = lmdb.open(src, readonly=True, max_dbs=0)
    try:
        os.mkdir(dst)
        env.copy(dst, compact=True)
    finally:
        env.close()


def drive_synapse_style(src: str, dst: str) -> None:
    """The Synapse backup approach, re-written from its description: walk the
    tree; an environment (a directory with data.mdb) is copied with py-lmdb's
    compacting copy, one after the other; every other file with shutil.copy;
    sockets and other special files are skipped."""
    import lmdb

    for top, _dirs, files in os.walk(src):
        rel = os.path.relpath(top, src)
        out = os.path.normpath(os.path.join(dst, rel))
        os.makedirs(out, exist_ok=True)
        if "data.mdb" in files:
            env = lmdb.open(top, readonly=True, max_dbs=0)
            try:
                env.copy(out, compact=True)
            finally:
                env.close()
            files = [f for f in files if f not in ("data.mdb", "lock.mdb")]
        for f in files:
            p = os.path.join(top, f)
            if stat.S_ISREG(os.lstat(p).st_mode):
                shutil.copy(p, os.path.join(out, f))


def drive_synfast_rebuild(src: str, dst: str) -> None:
    """The issue-5 rebuild engine through its Python API (used while the CLI
    has no --lmdb-engine rebuild)."""
    from synfast.lmdb.snapshot import rebuild_environment

    rebuild_environment(src, dst)


def drive_broken(src: str, dst: str) -> None:
    """TEST ONLY: a fast, plausible, wrong copy, so the test can show that the
    harness reports a wrong answer as WRONG.  cp -a, then: in an environment
    one entry is deleted; elsewhere one byte of the first non-empty file flips."""
    subprocess.run(["cp", "-a", src, dst], check=True)
    if os.path.isfile(os.path.join(dst, "data.mdb")):
        _drop_one_entry(dst)
        return
    target = dst
    if os.path.isdir(dst):
        candidates = []
        for top, dirs, files in os.walk(dst):
            dirs.sort()
            if "data.mdb" in files:
                continue
            candidates += [os.path.join(top, f) for f in sorted(files)
                           if os.path.isfile(os.path.join(top, f))
                           and os.path.getsize(os.path.join(top, f)) > 0]
        target = candidates[0]
    with open(target, "r+b") as f:
        try:
            pos = os.lseek(f.fileno(), 0, os.SEEK_DATA)
        except OSError:
            pos = 0
        f.seek(pos)
        byte = f.read(1)
        f.seek(pos)
        f.write(bytes([byte[0] ^ 0xFF]))


def _drop_one_entry(env_dir: str) -> None:
    import lmdb

    env = lmdb.open(env_dir, max_dbs=64)
    try:
        with env.begin() as txn:
            names = [k for k, _ in txn.cursor()]
        for name in names:
            try:
                db = env.open_db(name, create=False)
            except lmdb.Error:
                continue
            with env.begin(write=True, db=db) as txn:
                cur = txn.cursor()
                if cur.first():
                    cur.delete()
                    return
    finally:
        env.close()


DRIVERS = {
    "shutil": drive_shutil,
    "py-lmdb-compact": drive_py_lmdb_compact,
    "synapse-style": drive_synapse_style,
    "synfast-rebuild": drive_synfast_rebuild,
    "broken": drive_broken,
}

if __name__ == "__main__":
    # Run as a script, only bench/ is on sys.path; the repo root holds synfast
    # (which may not be installed in this interpreter, only importable from it).
    sys.path.insert(1, os.fspath(ROOT))
    DRIVERS[sys.argv[1]](sys.argv[2], sys.argv[3])
