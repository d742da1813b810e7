"""A backup written as one POSIX pax tar stream, never staged on disk.

``backup_stream(SRC, fd)`` makes the same backup as :func:`synfast.backup.run.backup`
and writes it to ``fd`` (a pipe, a file, borg's stdin) as a tar stream
(members built by :mod:`synfast.backup.tarformat`):

1. walk the source as a backup does; run ``--pre-cmd``;
2. begin every environment's snapshot together (the ``pages`` engine, which
   ``auto`` means here), or, for ``rebuild``/``compact``/``raw``, copy one
   environment at a time into ``--scratch`` and stream that copy;
3. write the directories, then every file and environment in the walk's order:
   a file's data extents are read once, straight into the stream, and hashed
   as they pass (:class:`~synfast.backup.checksum.StreamChecksum`); a file with
   holes is a sparse member, and its holes are never read.  An environment's
   member is its snapshot page for page: the runs of pages in use, read from
   the source's data file at their offsets, with the snapshot's own meta pages
   in front, free pages as holes;
4. symlinks, then ``.synfast/manifest.json`` as the last member, then the end
   of the archive.  A stream cut short holds no manifest, and no reader of
   synfast's takes it for a backup.

:mod:`synfast.backup.export` streams an existing backup directory the same way.
"""

from __future__ import annotations

import errno
import os
import stat
import time
from array import array
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from synfast.backup import hooks, locks, manifest
from synfast.backup import tarformat as tf
from synfast.backup.options import BackupOptions
from synfast.backup.pacing import set_ionice
from synfast.backup.tarwriter import MemberWriter, Sink, file_runs
from synfast.copy.walk import Entry, Plan
from synfast.errors import CopyFailed, CorruptEnvironment, SynfastError, UsageError, convert_error
from synfast.files import durable
from synfast.files.sparse import source_stat
from synfast.lmdb import env as lmdbenv
from synfast.lmdb.engines import EnvironmentCopier
from synfast.lmdb.meta import snapshot_meta_pages
from synfast.lmdb.pages import MERGE_PAGES_COPY, snapshot_plan
from synfast.lmdb.snapshot import Snapshot, begin_together, open_snapshot

ProgressFn = Callable[[str, dict], None]


@dataclass
class StreamReport:
    """What a streamed backup did; ``manifest`` is the manifest as streamed."""

    source: Path
    destination: str
    manifest: dict = field(default_factory=dict)
    excluded: list[str] = field(default_factory=list)
    changed: list[str] = field(default_factory=list)
    bytes_streamed: int = 0
    seconds: float = 0.0

    def as_dict(self) -> dict:
        m = self.manifest
        return {"ok": True, "source": str(self.source), "destination": self.destination,
                "seconds": round(self.seconds, 6), "bytes_streamed": self.bytes_streamed,
                "totals": m.get("totals", {}), "snapshots": m.get("snapshots", {}),
                "environments": [{k: e[k] for k in ("path", "engine", "txnid", "snapshot_time",
                                                     "entries", "bytes_written")}
                                 for e in m.get("environments", [])],
                "skipped": m.get("skipped", []), "excluded": self.excluded,
                "changed_while_read": self.changed}


def _owner(st: os.stat_result) -> dict:
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns}


def _env_runs(plan: dict) -> list[tuple[int, int]]:
    """The snapshot's runs of pages in use as (offset, length), the two meta
    pages included."""
    flat = array("q")
    flat.frombytes(plan["ranges"])
    runs = list(zip(flat[0::2], flat[1::2], strict=True))
    meta_end = 2 * plan["page_size"]
    if not runs or runs[0][0] > meta_end:
        runs.insert(0, (0, meta_end))
    elif runs[0][0] > 0:
        runs[0] = (0, runs[0][0] + runs[0][1])
    elif runs[0][1] < meta_end:
        runs[0] = (0, meta_end)
    return runs


class _Streamer:
    """One streamed backup: the plan's entries written as members, their
    records kept for the manifest."""

    def __init__(self, the_plan: Plan, writer: MemberWriter, opts: BackupOptions,
                 scratch: Path | None, label: str, progress: ProgressFn | None) -> None:
        self.plan, self.w, self.opts, self.scratch = the_plan, writer, opts, scratch
        self.label, self.progress = label, progress
        self.records: dict[str, dict] = {}
        self.env_records: dict[str, dict] = {}
        self.vanished: list[str] = []
        self.changed: list[str] = []
        self.snapshots: dict[str, Snapshot] = {}
        self.copier: EnvironmentCopier | None = None
        self.times: list[float] = []

    def begin(self, envs: list[Entry]) -> None:
        """Begin the snapshots the engine streams from, all together."""
        engine = self.opts.lmdb_engine
        if engine in ("auto", "pages"):
            for e in envs:
                assert e.env is not None
                lmdbenv.require_reader_slot(e.env)
            try:
                for e in envs:
                    assert e.env is not None
                    self.snapshots[e.rel] = open_snapshot(e.env, begin=False)
                if envs:
                    t, bound = begin_together([self.snapshots[e.rel] for e in envs])
                    self.times += [t, bound]
            except BaseException:
                self.close()
                raise
            return
        self.copier = EnvironmentCopier(engine, together=True, writeback=False,
                                        destination=None, reflink="never")
        self.copier.prepare([(e.rel, e.env) for e in envs if e.env is not None])
        if self.copier.snapshot_time is not None:
            self.times += [self.copier.snapshot_time, self.copier.snapshot_bound or 0.0]

    def close(self) -> None:
        for snap in self.snapshots.values():
            snap.close()
        self.snapshots.clear()
        if self.copier is not None:
            self.copier.close()

    def run(self) -> None:
        entries = self.plan.entries
        if self.progress:
            work = [e for e in entries if e.kind in ("file", "env")]
            self.progress("plan", {"bytes": sum(e.weight for e in work), "items": len(work),
                                   "environments": sum(1 for e in work if e.kind == "env")})
        for e in entries:
            if e.kind == "dir" and e.rel:
                self.w.directory(e.rel, e.st)
        for e in entries:
            if e.kind == "env":
                self.env(e)
            elif e.kind == "file":
                self.file(e)
        for e in entries:
            if e.kind == "symlink":
                target = os.readlink(self.plan.source / e.rel)
                self.w.symlink(e.rel, target, e.st)
                self.records[e.rel] = {"path": e.rel, "type": "symlink", "size": e.st.st_size,
                                       "allocated": 0, **_owner(e.st), "target": target}
            elif e.kind == "dir":
                self.records[e.rel] = {"path": e.rel, "type": "dir", **_owner(e.st)}

    def file(self, e: Entry) -> None:
        path = self.plan.source / e.rel
        try:
            fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        except FileNotFoundError:
            self.vanished.append(e.rel)
            return
        except OSError as err:
            if err.errno == errno.ELOOP:            # replaced by a symlink meanwhile
                self.vanished.append(e.rel)
                return
            raise convert_error(err, path) from err
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                self.vanished.append(e.rel)
                return
            runs = file_runs(fd, st.st_size)
            digest, short = self.w.file(e.rel, fd, st, runs, st.st_size)
            after = os.fstat(fd)
        except OSError as err:
            raise convert_error(err, path) from err
        finally:
            os.close(fd)
        if short or (after.st_size, after.st_mtime_ns) != (st.st_size, st.st_mtime_ns):
            self.changed.append(e.rel)
        self.records[e.rel] = {"path": e.rel, "type": "file", "size": st.st_size,
                               "allocated": sum(n for _, n in runs), **_owner(st),
                               "checksum": digest}
        self.done(e, st.st_size)

    def env(self, e: Entry) -> None:
        assert e.env is not None
        snap = self.snapshots.pop(e.rel, None)
        if snap is None:
            return self.env_from_scratch(e)
        source = e.env.data_path
        try:
            data_st = os.stat(source)
            stats = snap.stats()
            plan = snapshot_plan(snap, MERGE_PAGES_COPY, source)
            runs = _env_runs(plan)
            psize = plan["page_size"]
            size = max(os.fstat(snap.fileno()).st_size, (plan["last_pgno"] + 1) * psize)
            overlay = snapshot_meta_pages(plan["meta"], psize)
            try:
                digest, short = self.w.file(e.rel, snap.fileno(), data_st, runs, size, overlay)
            except OSError as err:
                raise convert_error(err, source) from err
        finally:
            snap.close()
        if short:
            raise CorruptEnvironment(source, "the data file ended before the snapshot's last "
                                     "page", "the environment is damaged; check it with mdb_stat")
        written = sum(n for _, n in runs)
        dbs = {name.decode("utf-8", "surrogateescape"): d["entries"]
               for name, d in stats["named"].items()}
        self.env_record(e, data_st, "pages", plan["page_size"], plan["map_size"], plan["txnid"],
                        written, stats["main"]["entries"], dbs)
        self.records[e.rel] = {"path": e.rel, "type": "env", "size": size, "allocated": written,
                               **_owner(data_st), "checksum": digest}
        self.done(e, written)
        return None

    def env_from_scratch(self, e: Entry) -> None:
        """Copy the environment with a staging engine into ``--scratch``, stream
        the copy, remove it."""
        assert e.env is not None and self.copier is not None and self.scratch is not None
        out = self.scratch / f"synfast-stream-{os.getpid()}-{len(self.records)}.mdb"
        try:
            try:
                r = self.copier.copy(e.rel, e.env, out, out, mode=0o600)
            except SynfastError as err:
                if _no_space(err):
                    raise CopyFailed(self.scratch, f"has no room for a copy of {e.env.path} "
                                     "(--scratch)", "give --scratch a directory with room for "
                                     "the largest environment, or stream with --lmdb-engine "
                                     "pages") from err
                raise
            counts = lmdbenv.walk(out, False, nolock=True, full=False)
            fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC)
            try:
                st = os.fstat(fd)
                data_st = os.stat(e.env.data_path)
                runs = file_runs(fd, st.st_size)
                digest, _ = self.w.file(e.rel, fd, data_st, runs, st.st_size)
            finally:
                os.close(fd)
        finally:
            durable.remove_path(out)
        dbs = {name: d["entries"] for name, d in counts["named"].items()}
        self.env_record(e, data_st, r.engine, r.page_size, r.map_size, r.txnid,
                        r.bytes_written, counts["main"]["entries"], dbs,
                        exact=(r.txnid_exact, r.txnid_min, r.txnid_max), when=r.snapshot_time)
        self.records[e.rel] = {"path": e.rel, "type": "env", "size": st.st_size,
                               "allocated": st.st_blocks * 512, **_owner(data_st),
                               "checksum": digest}
        self.done(e, r.bytes_written)

    def env_record(self, e: Entry, data_st: os.stat_result, engine: str, page_size: int,
                   map_size: int, txnid: int, written: int, main_entries: int,
                   dbs: dict[str, int], exact: tuple[bool, int, int] | None = None,
                   when: float | None = None) -> None:
        assert e.env is not None
        exact_, lo, hi = exact or (True, txnid, txnid)
        snap_time = when if when else (self.times[0] if self.times else time.time())
        if when:
            self.times.append(when)
        self.env_records[e.rel] = {
            "path": e.rel[: -len("/data.mdb")] if e.env.subdir else e.rel, "data": e.rel,
            "layout": "directory" if e.env.subdir else "file", "engine": engine,
            "page_size": page_size, "map_size": map_size, "txnid": txnid,
            "txnid_exact": exact_, "txnid_min": lo, "txnid_max": hi,
            "snapshot_time": manifest.iso(snap_time), "bytes_written": written,
            "named_databases": len(dbs), "main_entries": main_entries, "databases": dbs,
            "entries": main_entries - len(dbs) + sum(dbs.values()),
            "source_apparent": data_st.st_size, "source_allocated": data_st.st_blocks * 512}

    def done(self, e: Entry, written: int) -> None:
        if self.progress:
            self.progress("item", {"path": e.rel, "bytes": e.weight, "kind": e.kind,
                                   "written": written})


def _no_space(err: SynfastError) -> bool:
    """Whether ``err`` is a full disk (or an exhausted quota)."""
    return err.errno in (errno.ENOSPC, errno.EDQUOT)


def _check_scratch(opts: BackupOptions, scratch: str | os.PathLike[str] | None) -> Path | None:
    """The scratch directory a staging engine needs, checked."""
    if opts.lmdb_engine in ("auto", "pages"):
        return None
    if scratch is None:
        raise UsageError(None, f"--lmdb-engine {opts.lmdb_engine} writes each environment to "
                         "disk before streaming it",
                         "give --scratch DIR (room for the largest environment), or use "
                         "--lmdb-engine pages")
    path = Path(os.path.abspath(scratch))
    if not path.is_dir():
        raise UsageError(path, "is not a directory (--scratch)", "create it first")
    return path


def backup_stream(source: str | os.PathLike[str], fd: int,
                  options: BackupOptions | None = None, *, label: str = "-",
                  scratch: str | os.PathLike[str] | None = None,
                  progress: ProgressFn | None = None) -> StreamReport:
    """Back up the service directory ``source`` as a tar stream written to ``fd``
    (see the module docstring).  ``label`` names the stream in errors and in the
    manifest's ``destination``.  Raises a :class:`SynfastError` on any failure;
    the stream then holds no manifest."""
    from synfast.backup.run import _skipped_record, _walk, check_descriptors

    opts = (options or BackupOptions()).check()
    started = time.time()
    t0 = time.monotonic()
    src = Path(os.path.abspath(source))
    if src.is_symlink():
        src = Path(os.path.realpath(src))
    if not stat.S_ISDIR(source_stat(src, follow=True).st_mode):
        raise UsageError(src, "is not a directory", "give the service's directory")
    from synfast.backup.run import _check_excludes

    _check_excludes(src, opts.exclude)
    scratch_dir = _check_scratch(opts, scratch)
    if opts.ionice:
        set_ionice(opts.ionice)
    report = StreamReport(src, label)
    sink = Sink(fd, label)
    note = {"pid": os.getpid(), "destination": label, "started": manifest.iso(started)}
    with locks.source_lock(src, note, opts.wait), hooks.around(opts.pre_cmd, opts.post_cmd):
        the_plan, report.excluded = _walk(src, opts.exclude, opts.skip_dirs)
        check_descriptors(the_plan, opts)
        writer = MemberWriter(sink, opts.algorithm)
        s = _Streamer(the_plan, writer, opts, scratch_dir, label, progress)
        try:
            s.begin(the_plan.of_kind("env"))
            s.run()
        finally:
            s.close()
            writer.close()
        skipped = [(e.rel, e.special) for e in the_plan.of_kind("special")]
        skipped += [(rel, "file removed during the backup") for rel in sorted(s.vanished)]
        work = [e for e in the_plan.entries if e.kind in ("file", "env")]
        doc = manifest.document(
            source=src, destination=label, started=started, opts=opts, records=s.records,
            env_records=s.env_records, together=bool(s.times), times=s.times,
            skipped=[_skipped_record(p, t) for p, t in skipped], excluded=report.excluded,
            directories=len(the_plan.of_kind("dir")), work=work)
        doc["stream"] = {"format": "pax", "changed_while_read": sorted(s.changed)}
        _finish(s.w, doc)
        report.manifest, report.changed = doc, sorted(s.changed)
    report.bytes_streamed = sink.bytes
    report.seconds = time.monotonic() - t0
    return report


def _finish(w: MemberWriter, doc: dict) -> None:
    """The manifest as the last member, then the end of the archive."""
    w.sink.write(tf.header(manifest.META_DIR + "/", tf.DIR, mode=0o755, uid=os.getuid(),
                           gid=os.getgid(), mtime_ns=time.time_ns()))

    data = (manifest.dumps(doc) + "\n").encode()
    w.small(f"{manifest.META_DIR}/{manifest.MANIFEST}", data)
    w.sink.write(tf.END)
