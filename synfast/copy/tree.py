"""Copy a file, an environment or a whole service directory, safely.

A copy is planned first (:mod:`synfast.copy.walk`: walk the source, classify
every entry by content), then executed: directories made, the snapshots of the
LMDB environments begun together (:class:`synfast.lmdb.engines.EnvironmentCopier`),
files and environments copied in parallel, largest first (files under
:data:`SMALL_FILE` one after another by one worker, the small dense ones in
batches per directory: :mod:`synfast.files.small`), symlinks made, then
metadata applied from the leaves up.  Everything is built under a hidden
temporary name beside the destination and renamed into place only when
complete (:mod:`synfast.files.durable`), so an interrupted copy never leaves a
partial tree (or file) under the final name.
"""

from __future__ import annotations

import os
import stat
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

from synfast import workers
from synfast.copy.walk import Entry, Plan, deepest_first, inside, plan
from synfast.errors import DestinationExists, SourceMissing, UsageError
from synfast.files import durable, small
from synfast.files import sparse as files
from synfast.lmdb import check_engine

if TYPE_CHECKING:
    from synfast.lmdb.engines import EnvironmentCopier
    from synfast.lmdb.env import EnvCopyResult

#: Files below this many bytes on disk are copied one after another by one
#: worker (see :func:`synfast.workers.run_all`).
SMALL_FILE = 1 << 20


@dataclass
class CopyReport:
    """Everything a copy did, for people (the CLI) and for scripts (``--json``).

    ``files`` lists the files copied one by one; the small dense files copied
    in batches (:mod:`synfast.files.small`) are only counted, in
    ``batched_files`` and ``batched_bytes``: a result object per file costs a
    tree of tiny files a sixth of its time.
    """

    source: Path
    destination: Path
    files: list[files.FileCopyResult] = field(default_factory=list)
    batched_files: int = 0
    batched_bytes: int = 0
    environments: list[EnvCopyResult] = field(default_factory=list)
    directories: int = 0
    symlinks: int = 0
    skipped: list[tuple[str, str]] = field(default_factory=list)
    seconds: float = 0.0
    source_apparent: int = 0
    source_allocated: int = 0
    copy_apparent: int = 0
    copy_allocated: int = 0

    @property
    def file_count(self) -> int:
        """Regular files copied, one by one or in batches."""
        return len(self.files) + self.batched_files

    def as_dict(self) -> dict:
        return {
            "source": str(self.source),
            "destination": str(self.destination),
            "files": self.file_count,
            "environments": len(self.environments),
            "directories": self.directories,
            "symlinks": self.symlinks,
            "skipped": [{"path": p, "type": t} for p, t in self.skipped],
            "seconds": round(self.seconds, 6),
            "source_apparent": self.source_apparent,
            "source_allocated": self.source_allocated,
            "copy_apparent": self.copy_apparent,
            "copy_allocated": self.copy_allocated,
            "data_bytes": sum(f.data_bytes for f in self.files) + self.batched_bytes,
            "methods": sorted({f.method for f in self.files}
                              | ({"read-write"} if self.batched_bytes else set())),
            "environment_copies": [
                {"path": str(e.source), "engine": e.engine, "txnid": e.txnid,
                 "txnid_exact": e.txnid_exact, "page_size": e.page_size,
                 "last_pgno": e.last_pgno, "bytes_written": e.bytes_written}
                for e in self.environments
            ],
        }


def _check_destination(src: Path, dst: Path, force: bool) -> None:
    parent = dst.parent
    if not parent.is_dir():
        raise SourceMissing(parent, "does not exist (the destination's parent directory)",
                            "create it first")
    real_src = src.resolve()
    real_dst = parent.resolve() / dst.name
    if real_dst == real_src:
        raise UsageError(dst, "is the source itself", "choose another destination")
    if os.path.isdir(src) and not os.path.islink(src) and inside(real_dst, real_src):
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
    check_engine(lmdb_engine)
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
        durable.remove_unfinished(tmp)
        raise
    report.seconds = time.monotonic() - started
    return report


def work_items(work: list[Entry], batchable: Callable[[Entry], bool],
               ) -> list[Entry | list[Entry]]:
    """The files and environments of a copy or backup as its workers take
    them: one by one, except the entries ``batchable`` picks, which come as
    batches (lists) of one directory (:func:`synfast.files.small.batches`)."""
    by_rel = {e.rel: e for e in work if batchable(e)}
    return [*(e for e in work if e.rel not in by_rel),
            *([by_rel[rel] for rel, _ in b]
              for b in small.batches([(e.rel, e.st) for e in by_rel.values()]))]


def dispatch(item: Entry | list[Entry], *, batch: Callable[[list[Entry]], None],
             env: Callable[[Entry], None], file: Callable[[Entry], None]) -> None:
    """Hand one work item of :func:`work_items` to what copies its kind."""
    if isinstance(item, list):
        batch(item)
    elif item.kind == "env":
        env(item)
    else:
        file(item)


def is_serial(item: Entry | list[Entry]) -> bool:
    """Whether a work item goes to the single worker of small things
    (:func:`synfast.workers.run_all`): a batch, or a file under
    :data:`SMALL_FILE`."""
    return isinstance(item, list) or (item.kind == "file" and item.weight < SMALL_FILE)


def _target(tmp: Path, rel: str) -> Path:
    return tmp / rel if rel else tmp


class _Copier:
    """One copy being executed into the temporary ``tmp``."""

    def __init__(self, the_plan: Plan, tmp: Path, report: CopyReport, *, reflink: str,
                 sparse: str, engine: str, fsync: bool, cfr: str, preserve: bool) -> None:
        self.src = the_plan.source
        self.plan, self.tmp, self.report = the_plan, tmp, report
        self.reflink, self.sparse, self.cfr = reflink, sparse, cfr
        self.fsync, self.preserve = fsync, preserve
        self.engine = engine
        # Made when the plan holds an environment: a copy of plain files does
        # not load the LMDB engines (about 9 ms of every such command's start).
        self.envs: EnvironmentCopier | None = None
        # What the copies made in batches allocate (each batch reports it).
        self.batched_allocated = 0

    def source_of(self, e: Entry) -> Path:
        return self.src / e.rel if e.rel else self.src

    def do_file(self, e: Entry) -> None:
        result = files.copy_file_new(
            self.source_of(e), _target(self.tmp, e.rel), e.st, reflink=self.reflink,
            sparse=self.sparse, copy_file_range=self.cfr, preserve=self.preserve,
            fsync=self.fsync, display_dst=_target(self.report.destination, e.rel))
        self.report.files.append(result)

    def do_batch(self, batch: list[Entry]) -> None:
        """Copy a batch of small dense files of one directory; files changed
        since the plan go through :meth:`do_file`, which words the change."""
        by_rel = {e.rel: e for e in batch}
        copied, left = small.copy_batch(
            self.src, self.tmp, [(e.rel, e.st) for e in batch], preserve=self.preserve,
            fsync=self.fsync, display_root=self.report.destination)
        self.report.batched_files += len(copied)
        self.report.batched_bytes += sum(c.st.st_size for c in copied)
        self.batched_allocated += sum(c.allocated for c in copied)
        for rel, _ in left:
            self.do_file(by_rel[rel])

    def do_env(self, e: Entry) -> None:
        assert e.env is not None and self.envs is not None
        out = _target(self.tmp, e.rel)
        result = self.envs.copy(e.rel, e.env, out, _target(self.report.destination, e.rel),
                                mode=e.st.st_mode)
        if self.preserve or self.fsync:
            fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
            try:
                if self.preserve:
                    files.apply_metadata(fd, e.st)
                if self.fsync:
                    os.fsync(fd)
            finally:
                os.close(fd)
        self.report.environments.append(result)

    def copy_contents(self, jobs: int | None) -> list[Entry]:
        """Copy every file and environment, largest first; return them."""
        work = [e for e in self.plan.entries if e.kind in ("file", "env")]
        work.sort(key=lambda e: e.weight, reverse=True)

        def batchable(e: Entry) -> bool:
            # The root itself (a copy of one file) has no directory to batch in.
            return e.kind == "file" and e.rel != "" and small.qualifies(
                e.st, reflink=self.reflink, sparse=self.sparse, copy_file_range=self.cfr)

        items = work_items(work, batchable)

        def do(item: Entry | list[Entry]) -> None:
            dispatch(item, batch=self.do_batch, env=self.do_env, file=self.do_file)

        envs = [(e.rel, e.env) for e in work if e.env is not None]
        if envs:
            from synfast.lmdb.engines import EnvironmentCopier

            self.envs = EnvironmentCopier(self.engine, together=False, destination=self.tmp,
                                          reflink=self.reflink)
        try:
            if self.envs is not None:
                self.envs.prepare(envs)
            workers.run_all(do, items, workers.default_workers(jobs), "synfast-copy",
                            serial=is_serial, cancel=workers.Cancel())
        finally:
            if self.envs is not None:
                self.envs.close()
        return work

    def copy_links(self) -> None:
        for e in self.plan.of_kind("symlink"):
            link = _target(self.tmp, e.rel)
            if not e.rel and os.path.lexists(link):
                os.unlink(link)
            os.symlink(os.readlink(self.source_of(e)), link)
            if self.preserve:
                files.apply_metadata(link, e.st)
            self.report.symlinks += 1

    def finish_dirs(self, dirs: list[Entry]) -> None:
        for d in deepest_first(dirs):
            target = _target(self.tmp, d.rel)
            if self.preserve:
                files.apply_metadata(target, d.st)
            else:
                os.chmod(target, stat.S_IMODE(d.st.st_mode) | 0o700)
            if self.fsync:
                durable.fsync_dir(target)


def _execute(the_plan: Plan, tmp: Path, report: CopyReport, *, jobs: int | None,
             **options: object) -> None:
    copier = _Copier(the_plan, tmp, report, **options)  # type: ignore[arg-type]
    dirs = the_plan.of_kind("dir")
    for d in dirs:
        if d.rel:
            os.mkdir(tmp / d.rel, 0o700)
    report.directories = len(dirs)
    work = copier.copy_contents(jobs)
    copier.copy_links()
    report.skipped.extend((e.rel, e.special) for e in the_plan.of_kind("special"))
    copier.finish_dirs(dirs)
    for e in work:
        report.source_apparent += e.st.st_size
        report.source_allocated += e.st.st_blocks * 512
    report.copy_apparent = report.batched_bytes
    report.copy_allocated = copier.batched_allocated
    # Results of the general path name the temporary tree: look at the copies
    # there, and report their final names instead.
    tmp_prefix = len(str(tmp))
    final = str(report.destination)

    def looked_at(r):
        name = str(r.destination)
        cst = os.lstat(name)
        report.copy_apparent += cst.st_size
        report.copy_allocated += cst.st_blocks * 512
        return type(r)(**{**r.__dict__, "destination": Path(final + name[tmp_prefix:])})

    report.files = [looked_at(r) for r in report.files]
    report.environments = [looked_at(r) for r in report.environments]


__all__ = ["SMALL_FILE", "CopyReport", "copy", "dispatch", "is_serial", "work_items"]
