"""Check a backup against its manifest, entry by entry.

The manifest must be there and complete; every directory, file, symlink and
environment data file must exist with its type, size, mode (and for symlinks
target) and, when the backup was made with checksums, the same canonical
checksum, with the algorithm the manifest names (:mod:`synfast.backup.checksum`);
nothing may be there that the manifest does not list; and every environment
must open read-only and survive a full walk of every database with the entry
counts of the manifest.

An environment is opened with MDB_NOLOCK (it is our private copy: no lock file
is created inside the backup), and only when its data file matched the
manifest: LMDB trusts its pages, and a damaged file could crash the process.
When no checksum vouched for the data file (``--no-checksum``, or a backup
made without checksums), "matched" means only "has the right size", so the
walk runs in a forked child: a damaged file that makes LMDB crash or abort is
then reported as damaged instead of taking verify down with it.
"""

from __future__ import annotations

import contextlib
import os
import stat
import time
from concurrent.futures import as_completed
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synfast import workers
from synfast.backup import checksum as cks
from synfast.backup import manifest
from synfast.backup.manifest import ManifestError
from synfast.files import small
from synfast.lmdb import env as lmdbenv

_TYPES = {"dir": stat.S_ISDIR, "file": stat.S_ISREG, "env": stat.S_ISREG,
          "symlink": stat.S_ISLNK}


@dataclass(frozen=True)
class Problem:
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message}"


@dataclass
class VerifyReport:
    backup: Path
    problems: list[Problem] = field(default_factory=list)
    files_checked: int = 0
    checksums_checked: int = 0
    environments_checked: int = 0
    entries_walked: int = 0
    seconds: float = 0.0

    @property
    def ok(self) -> bool:
        return not self.problems

    def as_dict(self) -> dict:
        return {"ok": self.ok, "backup": str(self.backup),
                "problems": [{"path": p.path, "message": p.message} for p in self.problems],
                "files_checked": self.files_checked,
                "checksums_checked": self.checksums_checked,
                "environments_checked": self.environments_checked,
                "entries_walked": self.entries_walked, "seconds": round(self.seconds, 6)}


def verify(backup: str | os.PathLike[str], *, checksums: bool = True,
           jobs: int | None = None, record: bool = True) -> VerifyReport:
    """Verify the backup directory ``backup``; problems are returned, not raised.

    ``checksums=False`` skips reading file contents (sizes, modes and the
    environment walks are still checked).  With ``record`` the outcome is
    written to ``.synfast/verified.json`` (for ``synfast list``) when the
    backup is writable.
    """
    t0 = time.monotonic()
    b = Path(os.path.abspath(backup))
    report = VerifyReport(b)
    try:
        doc = manifest.read(b)
    except ManifestError as err:
        report.problems.append(Problem(err.path or str(b), f"{err.message}"
                                       + (f" ({err.hint})" if err.hint else "")))
        report.seconds = time.monotonic() - t0
        return report
    algorithm = doc.get("checksum")
    use_checksums = checksums and algorithm in cks.ALGORITHMS
    check = _Checker(b, report)
    if checksums and algorithm is not None and algorithm not in cks.ALGORITHMS:
        check.problem(manifest.META_DIR + "/" + manifest.MANIFEST,
                      f"names the checksum {algorithm!r}, which this synfast does not know "
                      "(contents not checked; use a newer synfast)")
    check.algorithm = algorithm if use_checksums else None
    check.entries(doc["entries"], use_checksums)
    check.checksums_and_walks(doc["environments"], workers.default_workers(jobs))
    check.unlisted()
    if record:
        # A read-only backup can still be verified: recording is best effort.
        with contextlib.suppress(Exception):
            manifest.write_json_durably(b / manifest.META_DIR / manifest.VERIFIED, {
                "time": manifest.iso(time.time()), "ok": report.ok,
                "problems": len(report.problems), "checksums": use_checksums}, fsync=False)
    report.seconds = time.monotonic() - t0
    return report


class _Checker:
    """The checks of one verify, in order; each adds problems to the report."""

    def __init__(self, b: Path, report: VerifyReport) -> None:
        self.b, self.report = b, report
        self.listed: set[str] = set()
        self.bad_data: set[str] = set()
        self.to_hash: list[dict] = []
        self.env_files: set[str] = set()
        self.algorithm: str | None = None

    def problem(self, rel: str, message: str) -> None:
        self.report.problems.append(Problem(str(self.b / rel) if rel else str(self.b), message))

    def entries(self, entries: list[dict], use_checksums: bool) -> None:
        """Every listed entry exists with its type, mode, size and target."""
        for e in entries:
            rel, kind = e["path"], e["type"]
            self.listed.add(rel)
            path = self.b / rel if rel else self.b
            try:
                st = os.lstat(path)
            except FileNotFoundError:
                self.problem(rel, f"missing ({kind} listed in the manifest)")
                self.bad_data.add(rel)
                continue
            except OSError as err:
                self.problem(rel, f"cannot be read: {err.strerror}")
                self.bad_data.add(rel)
                continue
            is_kind = _TYPES.get(kind)
            if is_kind is None or not is_kind(st.st_mode):
                self.problem(rel, f"is not a {kind} as the manifest says")
                self.bad_data.add(rel)
                continue
            if kind != "symlink" and stat.S_IMODE(st.st_mode) != e["mode"]:
                self.problem(rel, f"mode {stat.S_IMODE(st.st_mode):04o}, the manifest says "
                             f"{e['mode']:04o}")
            if kind == "symlink":
                target = os.readlink(path)
                if target != e.get("target"):
                    self.problem(rel, f"points to {target!r}, the manifest says "
                                 f"{e.get('target')!r}")
            elif kind in ("file", "env"):
                self.report.files_checked += 1
                if st.st_size != e.get("size"):
                    self.problem(rel, f"size {st.st_size}, the manifest says {e.get('size')}")
                    self.bad_data.add(rel)
                elif use_checksums and e.get("checksum"):
                    self.to_hash.append(e)

    def checksums_and_walks(self, envs: list[dict], threads: int) -> None:
        """Every file whose size matched has the manifest's checksum (largest
        first; small files in batches per directory, read whole), and every
        environment opens and walks with the manifest's counts.

        An environment is walked in this process only once its data file's
        checksum matched (LMDB trusts its pages), and then at once, by the
        worker that hashed it, beside the hashing of the other files.  One
        that no checksum vouched for is walked afterwards in a forked child.
        Problems are reported files first, then environments in the
        manifest's order.

        One task per file or batch, walk included, and the results taken as
        they complete (``as_completed`` waits on every future once): waiting
        again on all pending futures after each completion took time in the
        square of the number of files (docs/bench/many-envs.md)."""
        def digest(item: dict | list[dict]) -> list[tuple[dict, str | OSError]]:
            if isinstance(item, list):
                d = self.b / item[0]["path"].rpartition("/")[0]
                names = [e["path"].rpartition("/")[2] for e in item]
                try:
                    got = cks.checksum_small_files(d, names, self.algorithm)  # type: ignore[arg-type]
                except OSError as err:
                    return [(e, err) for e in item]
                return list(zip(item, got, strict=True))
            try:
                return [(item, cks.checksum_file(self.b / item["path"], self.algorithm))]  # type: ignore[arg-type]
            except OSError as err:
                return [(item, err)]

        by_data = {env["data"]: env for env in envs}
        self.env_files.update(by_data)

        def check(item: dict | list[dict]) -> list[tuple[dict, str | OSError, Any]]:
            """Hash ``item``, then walk every environment whose data file matched."""
            out = []
            for e, got in digest(item):
                walked = (_walk_env(self.b, by_data[e["path"]], False)
                          if got == e["checksum"] and e["path"] in by_data else None)
                out.append((e, got, walked))
            return out
        large = [e for e in self.to_hash if e.get("size", 0) > small.SMALL_MAX]
        large.sort(key=lambda e: -e.get("size", 0))
        work: list[dict | list[dict]] = [*large, *small.batches(
            [e for e in self.to_hash if e.get("size", 0) <= small.SMALL_MAX],
            rel=lambda e: e["path"], size=lambda e: e.get("size", 0))]
        walks: dict[str, Any] = {}
        pool = workers.executor(threads, "synfast-verify")
        try:
            for future in as_completed([pool.submit(check, item) for item in work]):
                for e, got, walked in future.result():
                    self.report.checksums_checked += 1
                    if isinstance(got, OSError):
                        self.problem(e["path"], f"cannot be read: {got.strerror or got}")
                        self.bad_data.add(e["path"])
                    elif got != e["checksum"]:
                        self.problem(e["path"], "content differs from the manifest "
                                     "(checksum mismatch)")
                        self.bad_data.add(e["path"])
                    elif walked is not None:
                        walks[e["path"]] = walked
        finally:
            pool.shutdown(wait=True, cancel_futures=True)
        for env in envs:
            if env["data"] in self.bad_data:
                self.problem(env["path"], "environment not opened: its data file does "
                             "not match the manifest")
                continue
            walked = walks.get(env["data"])
            _judge_env(env, walked if walked is not None else _walk_env(self.b, env, True),
                       self.report, self.problem)

    def unlisted(self) -> None:
        """Anything present that the manifest does not list is a problem."""
        for dirpath, dirnames, filenames in os.walk(self.b):
            rel_dir = os.path.relpath(dirpath, self.b)
            rel_dir = "" if rel_dir == "." else rel_dir
            if rel_dir == "":
                dirnames[:] = [d for d in dirnames if d != manifest.META_DIR]
            for name in sorted(dirnames + filenames):
                rel = f"{rel_dir}/{name}" if rel_dir else name
                if rel in self.listed:
                    continue
                if name == "lock.mdb" and f"{rel_dir}/data.mdb" in self.env_files:
                    continue   # LMDB made it when someone opened the copy
                if name.endswith("-lock") and rel[:-5] in self.env_files:
                    continue
                self.problem(rel, "is not in the manifest")


def _walk_isolated(path: str, subdir: bool) -> dict:
    """``synfast.lmdb.env.walk`` in a forked child.  Its result, or its LmdbError or
    OSError, comes back through a pipe; a child killed by a signal (LMDB
    crashing, or aborting on a failed assertion, on a damaged file) raises
    :class:`EnvCrashed`."""
    import pickle
    import signal

    rfd, wfd = os.pipe()
    pid = os.fork()
    if pid == 0:   # the child: never returns
        code = 0
        try:
            os.close(rfd)
            null = os.open(os.devnull, os.O_WRONLY)
            os.dup2(null, 2)    # LMDB's assertion message is ours to word
            try:
                out: Any = lmdbenv.walk(path, subdir, nolock=True, full=True)
            except (lmdbenv.LmdbError, OSError) as err:
                out = err
            with os.fdopen(wfd, "wb") as w:
                pickle.dump(out, w)
        except BaseException:
            code = 1
        finally:
            os._exit(code)
    os.close(wfd)
    with os.fdopen(rfd, "rb") as r:
        data = r.read()
    _, status = os.waitpid(pid, 0)
    if os.WIFSIGNALED(status):
        raise EnvCrashed(signal.Signals(os.WTERMSIG(status)).name)
    if os.WEXITSTATUS(status) != 0 or not data:
        raise EnvCrashed(f"exit status {os.WEXITSTATUS(status)}")
    out = pickle.loads(data)
    if isinstance(out, BaseException):
        raise out
    return out


class EnvCrashed(Exception):
    """Walking an environment killed the child process that walked it."""


def _walk_env(b: Path, env: dict, isolate: bool) -> dict | str:
    """Walk one environment of the backup (in a forked child when
    ``isolate``): the walk's counts, or the line saying why it failed."""
    subdir = env.get("layout") == "directory"
    rel = env["path"]
    path = os.fspath(b / rel if rel else b)
    try:
        return (_walk_isolated(path, subdir) if isolate
                else lmdbenv.walk(path, subdir, nolock=True, full=True))
    except EnvCrashed as err:
        return (f"environment is damaged: reading it crashed LMDB ({err}); "
                "restore from another backup")
    except lmdbenv.LmdbError as err:
        return f"environment does not open or walk: {err.operation}: {err.message}"
    except OSError as err:
        return f"environment cannot be read: {err.strerror}"


def _judge_env(env: dict, walked: dict | str, report: VerifyReport, problem) -> None:
    """Compare one environment's walk with its manifest record."""
    rel = env["path"]
    if isinstance(walked, str):
        problem(rel, walked)
        return
    report.environments_checked += 1
    named = walked["named"]
    report.entries_walked += walked["main"]["entries"] + sum(d["entries"] for d in
                                                             named.values())
    # As the backup counts them: the main database's records of named
    # databases are not entries.
    total = walked["main"]["entries"] - len(named) + sum(d["entries"] for d in named.values())
    if total != env.get("entries"):
        problem(rel, f"holds {total} entries in all, the manifest says {env.get('entries')}")
    if walked["main"]["entries"] != env.get("main_entries"):
        problem(rel, f"main database holds {walked['main']['entries']} entries, the manifest "
                f"says {env.get('main_entries')}")
    want = env.get("databases", {})
    for name, count in sorted(want.items()):
        if name not in named:
            problem(rel, f"database {name!r} is missing")
        elif named[name]["entries"] != count:
            problem(rel, f"database {name!r} holds {named[name]['entries']} entries, the "
                    f"manifest says {count}")
    for name in sorted(set(named) - set(want)):
        problem(rel, f"database {name!r} is not in the manifest")
