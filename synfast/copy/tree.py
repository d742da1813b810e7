"""Copy a file, an environment or a whole service directory, safely.

A copy is planned first (walk the source, classify every entry by content),
then executed: directories made, files and environments copied in parallel,
largest first, then metadata applied from the leaves up.  Everything is built
under a hidden temporary name beside the destination and renamed into place
only when complete, so an interrupted copy never leaves a partial tree (or
file) under the final name.
"""

from __future__ import annotations

import fnmatch
import os
import stat
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from synfast.errors import (
    DestinationExists,
    SourceMissing,
    SynfastError,
    UnsupportedFileType,
    UsageError,
    convert_error,
)
from synfast.files import durable
from synfast.files import sparse as files
from synfast.lmdb import env as lmdbenv

Kind = Literal["dir", "file", "env", "symlink", "special"]
T = TypeVar("T")

#: LMDB engines of ``synfast copy``; see :class:`_EnvEngines`.
ENGINES = ("auto", "rebuild", "compact", "raw")


@dataclass
class Entry:
    """One thing found in the source.

    ``rel`` is relative to the source root ("" for the root itself).  For an
    ``env`` entry ``env`` says where LMDB opens it; its copy is written to
    ``rel`` (a single-file env) or ``rel/data.mdb`` (a directory env, whose
    directory is a separate ``dir`` entry).
    """

    rel: str
    kind: Kind
    st: os.stat_result
    env: lmdbenv.EnvLocation | None = None
    special: str = ""

    @property
    def weight(self) -> int:
        return self.st.st_blocks * 512 if self.kind in ("file", "env") else 0


@dataclass
class Plan:
    source: Path
    entries: list[Entry] = field(default_factory=list)

    def of_kind(self, kind: Kind) -> list[Entry]:
        return [e for e in self.entries if e.kind == kind]


def _special_name(mode: int) -> str:
    if stat.S_ISSOCK(mode):
        return "socket"
    if stat.S_ISFIFO(mode):
        return "fifo"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    return "special file"


def _join(rel: str, name: str) -> str:
    return f"{rel}/{name}" if rel else name


def _excluded(rel: str, patterns: tuple[str, ...]) -> bool:
    name = rel.rsplit("/", 1)[-1]
    return any(fnmatch.fnmatchcase(rel, p) or fnmatch.fnmatchcase(name, p) for p in patterns)


def plan(source: str | os.PathLike[str], *, exclude: tuple[str, ...] = ()) -> Plan:
    """Walk ``source`` without following symlinks and classify every entry.

    LMDB environments are recognised by content (see :mod:`synfast.lmdb.env`);
    their lock files are left out.  Raises on a source that is missing, of an
    unsupported type, or that holds a damaged environment.
    """
    src = Path(source)
    try:
        st = os.lstat(src)
    except FileNotFoundError as err:
        raise SourceMissing(src, "does not exist", "check the path") from err
    except OSError as err:
        raise convert_error(err, src) from err
    if stat.S_ISDIR(st.st_mode):
        return walk_tree(src, excluded=(lambda rel: _excluded(rel, exclude)) if exclude else None)
    result = Plan(src)
    if stat.S_ISREG(st.st_mode):
        loc = lmdbenv.locate(src)
        if loc is not None and loc.subdir:
            # A data.mdb given on its own: copy its environment, through the
            # directory's lock file, into a single data file.
            result.entries.append(Entry("", "env", os.stat(loc.data_path), loc))
        else:
            result.entries.append(Entry("", "env" if loc else "file", st, loc))
    elif stat.S_ISLNK(st.st_mode):
        result.entries.append(Entry("", "symlink", st))
    else:
        raise UnsupportedFileType(
            src, f"is a {_special_name(st.st_mode)}; only regular files, directories and "
            "symlinks can be copied", "give a file or directory")
    return result


def walk_tree(root: Path, *, excluded: Callable[[str], bool] | None = None,
              skip_dirs: frozenset[str] = frozenset(), vanished_ok: bool = False,
              left_out: list[str] | None = None) -> Plan:
    """Classify everything under the directory ``root``, depth first, without
    following symlinks.

    ``excluded(rel)`` leaves a path out; so does ``skip_dirs`` for directories
    of those names at any depth; what is left out is appended to ``left_out``.
    With ``vanished_ok`` an entry removed between the listing and its stat (a
    live service's scratch file) is passed over instead of failing the walk.
    """
    out = Plan(root)
    stack: list[tuple[Path, str, os.stat_result]] = [(root, "", os.lstat(root))]
    while stack:
        path, rel, st = stack.pop()
        out.entries.append(Entry(rel, "dir", st))
        env = lmdbenv.check_environment_dir(path)
        skip: set[str] = set()
        if env is not None:
            out.entries.append(Entry(_join(rel, "data.mdb"), "env", os.stat(env.data_path), env))
            skip = {"data.mdb", "lock.mdb"}
        try:
            with os.scandir(path) as it:
                children = sorted(it, key=lambda c: c.name)
        except OSError as err:
            raise convert_error(err, path) from err
        subdirs: list[tuple[Path, str, os.stat_result]] = []
        singles: set[str] = set()
        pending: list[Entry] = []
        for child in children:
            if child.name in skip:
                continue
            crel = _join(rel, child.name)
            if excluded is not None and excluded(crel):
                if left_out is not None:
                    left_out.append(crel)
                continue
            try:
                cst = child.stat(follow_symlinks=False)
            except FileNotFoundError:
                if vanished_ok:
                    continue
                raise
            mode = cst.st_mode
            if stat.S_ISDIR(mode):
                if child.name in skip_dirs:
                    if left_out is not None:
                        left_out.append(crel)
                    continue
                subdirs.append((Path(child.path), crel, cst))
            elif stat.S_ISLNK(mode):
                pending.append(Entry(crel, "symlink", cst))
            elif stat.S_ISREG(mode):
                loc = None
                if cst.st_size >= lmdbenv.MIN_ENV_FILE and lmdbenv.read_meta(child.path):
                    loc = lmdbenv.EnvLocation(Path(child.path), False)
                    singles.add(child.name + "-lock")
                pending.append(Entry(crel, "env" if loc else "file", cst, loc))
            else:
                pending.append(Entry(crel, "special", cst, special=_special_name(mode)))
        # A single-file environment's lock file is named after it: leave it out.
        out.entries.extend(e for e in pending
                           if e.kind != "file" or e.rel.rsplit("/", 1)[-1] not in singles)
        stack.extend(reversed(subdirs))
    return out


@dataclass
class CopyReport:
    """Everything a copy did, for people (the CLI) and for scripts (``--json``)."""

    source: Path
    destination: Path
    files: list[files.FileCopyResult] = field(default_factory=list)
    environments: list[lmdbenv.EnvCopyResult] = field(default_factory=list)
    directories: int = 0
    symlinks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    source_apparent: int = 0
    source_allocated: int = 0
    copy_apparent: int = 0
    copy_allocated: int = 0

    def as_dict(self) -> dict:
        return {
            "source": str(self.source),
            "destination": str(self.destination),
            "files": len(self.files),
            "environments": len(self.environments),
            "directories": self.directories,
            "symlinks": self.symlinks,
            "skipped": [{"path": p, "type": t} for p, t in self.skipped],
            "seconds": round(self.seconds, 6),
            "source_apparent": self.source_apparent,
            "source_allocated": self.source_allocated,
            "copy_apparent": self.copy_apparent,
            "copy_allocated": self.copy_allocated,
            "data_bytes": sum(f.data_bytes for f in self.files),
            "methods": sorted({f.method for f in self.files}),
            "environment_copies": [
                {"path": str(e.source), "engine": e.engine, "txnid": e.txnid,
                 "txnid_exact": e.txnid_exact, "page_size": e.page_size,
                 "last_pgno": e.last_pgno, "bytes_written": e.bytes_written}
                for e in self.environments
            ],
        }


def _inside(child: Path, parent: Path) -> bool:
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    parent = dst.parent
    if not parent.is_dir():
        raise SourceMissing(parent, "does not exist (the destination's parent directory)",
                            "create it first")
    real_src = src.resolve()
    real_dst = parent.resolve() / dst.name
    if real_dst == real_src:
        raise UsageError(dst, "is the source itself", "choose another destination")
    if os.path.isdir(src) and not os.path.islink(src) and _inside(real_dst, real_src):
        raise UsageError(dst, f"is inside the source {src}", "choose a destination outside it")
    if os.path.lexists(dst) and not force:
        raise DestinationExists(dst, "already exists",
                                "pass --force to replace it, or choose a new name")


def copy(
    source: str | os.PathLike[str],
    destination: str | os.PathLike[str],
    *,
    reflink: str = "auto",
    sparse: str = "auto",
    lmdb_engine: str = "auto",
    force: bool = False,
    jobs: int | None = None,
    fsync: bool = False,
    exclude: tuple[str, ...] = (),
    copy_file_range: str = "auto",
    preserve: bool = True,
) -> CopyReport:
    """Copy a file, an LMDB environment or a directory tree to ``destination``.

    Sparse files stay sparse; every LMDB environment found (by content) is
    copied through LMDB as a consistent snapshot; symlinks are copied as links;
    sockets, FIFOs and devices are skipped and listed in the report.  Mode,
    times and (as root) ownership are kept.  ``destination`` is the exact name
    of the copy; an existing one is refused unless ``force``.
    """
    files.check_modes(reflink, sparse, copy_file_range)
    if lmdb_engine not in ENGINES:
        raise UsageError(None, f"--lmdb-engine takes {', '.join(ENGINES)}, "
                         f"not {lmdb_engine!r}")
    started = time.monotonic()
    src, dst = Path(source), Path(os.path.abspath(destination))
    the_plan = plan(src, exclude=exclude)
    _check_destination(src, dst, force)
    report = CopyReport(src, dst)
    root = the_plan.entries[0]
    is_tree = root.kind == "dir"
    tmp = durable.temp_sibling(dst, directory=is_tree)
    try:
        _execute(the_plan, tmp, report, reflink=reflink, sparse=sparse, engine=lmdb_engine,
                 jobs=jobs, fsync=fsync, cfr=copy_file_range, preserve=preserve)
        if fsync:
            durable.fsync_dir(dst.parent)
        files.place_copy(tmp, dst, force=force)
        if fsync:
            durable.fsync_dir(dst.parent)
    except BaseException:
        durable.remove_path(tmp)
        raise
    report.seconds = time.monotonic() - started
    return report


def _target(tmp: Path, rel: str) -> Path:
    return tmp / rel if rel else tmp


def _execute(the_plan: Plan, tmp: Path, report: CopyReport, *, reflink: str, sparse: str,
             engine: str, jobs: int | None, fsync: bool, cfr: str,
             preserve: bool) -> None:
    src = the_plan.source
    dirs = the_plan.of_kind("dir")
    for d in dirs:
        if d.rel:
            os.mkdir(tmp / d.rel, 0o700)
    report.directories = len(dirs)

    def source_of(e: Entry) -> Path:
        return src / e.rel if e.rel else src

    def do_file(e: Entry) -> None:
        result = files.copy_file_new(source_of(e), _target(tmp, e.rel), e.st, reflink=reflink,
                                     sparse=sparse, copy_file_range=cfr,
                                     preserve=preserve, fsync=fsync,
                                     display_dst=_target(report.destination, e.rel))
        report.files.append(result)

    envs = _EnvEngines(engine)

    def do_env(e: Entry) -> None:
        out = _target(tmp, e.rel)
        result = envs.copy(e, out, _target(report.destination, e.rel))
        if preserve or fsync:
            fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if preserve:
                    files.apply_metadata(fd, e.st)
                if fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        report.environments.append(result)

    work = [e for e in the_plan.entries if e.kind in ("file", "env")]
    work.sort(key=lambda e: e.weight, reverse=True)
    workers = max(1, jobs or min(4, os.cpu_count() or 1))
    try:
        envs.prepare([e for e in work if e.kind == "env"])
        run_all(lambda e: (do_env if e.kind == "env" else do_file)(e), work, workers,
                "synfast-copy", serial=lambda e: e.kind == "file" and e.weight < SMALL_FILE)
    finally:
        envs.close()

    for e in the_plan.of_kind("symlink"):
        link = _target(tmp, e.rel)
        if not e.rel and os.path.lexists(link):
            os.unlink(link)
        os.symlink(os.readlink(source_of(e)), link)
        if preserve:
            files.apply_metadata(link, e.st)
        report.symlinks += 1

    for e in the_plan.of_kind("special"):
        report.skipped.append((e.rel, e.special))

    # Directories last, deepest first: writing into a directory changes its mtime.
    for d in sorted(dirs, key=lambda d: d.rel.count("/") + (1 if d.rel else 0), reverse=True):
        target = _target(tmp, d.rel)
        if preserve:
            files.apply_metadata(target, d.st)
        else:
            os.chmod(target, stat.S_IMODE(d.st.st_mode) | 0o700)
        if fsync:
            durable.fsync_dir(target)

    for e in work:
        report.source_apparent += e.st.st_size
        report.source_allocated += e.st.st_blocks * 512
    for r in report.files:
        cst = os.lstat(r.destination)
        report.copy_apparent += cst.st_size
        report.copy_allocated += cst.st_blocks * 512
    for r in report.environments:
        cst = os.lstat(r.destination)
        report.copy_apparent += cst.st_size
        report.copy_allocated += cst.st_blocks * 512
    # Results name the temporary tree; report the final names instead.
    report.files = [_renamed(r, tmp, report.destination) for r in report.files]
    report.environments = [_renamed(r, tmp, report.destination) for r in report.environments]


def run_all(fn: Callable[[T], object], items: list[T], workers: int, name: str,
            serial: Callable[[T], bool] | None = None,
            cancel: threading.Event | None = None) -> None:
    """Call ``fn`` on every item, ``workers`` at a time (in order when one).  The
    first failure cancels what has not started, waits for what has, and is
    raised.  An exception in the calling thread (Ctrl-C) sets ``cancel``, for
    workers that check it, before waiting for them.

    Items for which ``serial`` is true are done one after another by a single
    worker, beside the others: for small files, two threads creating files side
    by side measured slower than one (50,000 files of up to 16 KiB on ext4:
    15.1 s against 12.7 s, twice the CPU), since both spend their time in
    Python, passing the GIL, and in the filesystem's allocator locks."""
    if serial is not None and workers > 1:
        alone = [i for i in items if serial(i)]
        if len(alone) > 1:
            rest: list = [i for i in items if not serial(i)]

            def in_turn(_: object) -> None:
                for item in alone:
                    fn(item)

            # The batch starts first, beside the largest of the rest.
            return run_all(lambda i: in_turn(i) if i is _SERIAL else fn(i),
                           [_SERIAL, *rest], workers, name, cancel=cancel)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            fn(item)
        return
    # Imported here: concurrent.futures brings logging, 10 ms of start-up that a
    # one-file copy does not need.
    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    with ThreadPoolExecutor(max_workers=workers, thread_name_prefix=name) as pool:
        try:
            # Ctrl-C may land while items are still being submitted, too.
            futures = [pool.submit(fn, item) for item in items]
            while True:
                # In slices: the kernel may deliver SIGINT to a worker thread,
                # and then nothing wakes a main thread blocked for good, so
                # Python's handler (KeyboardInterrupt) would never run.
                done, pending = wait(futures, timeout=0.25, return_when=FIRST_EXCEPTION)
                if not pending or any(f.exception() is not None for f in done):
                    break
        except BaseException:
            if cancel is not None:
                cancel.set()
            pool.shutdown(wait=False, cancel_futures=True)
            raise
        for f in pending:
            f.cancel()
        for f in futures:
            if f.done() and not f.cancelled() and f.exception() is not None:
                raise f.exception()  # type: ignore[misc]


#: Stands for the batch of serial items in :func:`run_all`'s work list.
_SERIAL = object()

#: Files below this many bytes on disk are copied one after another (see run_all).
SMALL_FILE = 1 << 20


class _EnvEngines:
    """Where the LMDB engines plug into a copy.

    ``compact`` and ``raw`` copy each environment with ``mdb_env_copyfd2``,
    which takes its own snapshot when the copy starts.  ``rebuild`` and
    ``auto`` open every environment and begin all their read transactions
    back to back before anything is copied (:func:`synfast.lmdb.engines.open_snapshots`),
    so the environments of a tree reflect one moment; ``auto`` then keeps the
    rebuild where :func:`synfast.lmdb.engines.choose_engine` predicts it saves at
    least 10% of the pages, and copies the rest raw (those take a fresh
    snapshot when their copy starts).
    """

    def __init__(self, engine: str) -> None:
        self.engine = engine
        self.snapshots: dict[str, object] = {}
        self.chosen: dict[str, str] = {}

    def prepare(self, envs: list[Entry]) -> None:
        for e in envs:
            self.chosen[e.rel] = self.engine
        if self.engine not in ("rebuild", "auto") or not envs:
            return
        from synfast.lmdb import engines

        snaps = engines.open_snapshots([e.env.path for e in envs if e.env is not None])
        for e, snap in zip(envs, snaps, strict=True):
            self.snapshots[e.rel] = snap
            self.chosen[e.rel] = "rebuild"
        if self.engine == "auto":
            for e in envs:
                choice = engines.choose_engine(self.snapshots[e.rel])
                if choice != "rebuild":
                    self.chosen[e.rel] = choice
                    self.snapshots.pop(e.rel).close()

    def close(self) -> None:
        for snap in self.snapshots.values():
            snap.close()
        self.snapshots.clear()

    def copy(self, e: Entry, out: Path, display: Path) -> lmdbenv.EnvCopyResult:
        assert e.env is not None
        snap = self.snapshots.pop(e.rel, None)
        if snap is None:
            return lmdbenv.copy_environment(e.env, out, engine=self.chosen[e.rel],
                                            mode=e.st.st_mode, display_dst=display)

        from synfast.lmdb.engines import rebuild_data_file

        data_st = os.stat(e.env.data_path)
        raw = rebuild_data_file(snap, out, display, e.env.data_path)
        meta = lmdbenv.read_meta(out)
        return lmdbenv.EnvCopyResult(
            source=e.env.path, destination=out, engine="rebuild", page_size=raw["page_size"],
            map_size=raw["map_size"], last_pgno=meta.last_pgno if meta else 0,
            txnid=raw["txnid"], txnid_exact=True, txnid_min=raw["txnid"],
            txnid_max=raw["txnid"], bytes_written=raw["bytes_written"],
            source_allocated=data_st.st_blocks * 512, source_apparent=data_st.st_size,
        )


def _renamed(result, tmp: Path, dst: Path):
    rel = os.path.relpath(result.destination, tmp)
    final = dst if rel == "." else dst / rel
    return type(result)(**{**result.__dict__, "destination": final})


__all__ = ["CopyReport", "Entry", "Plan", "copy", "plan", "SynfastError"]
