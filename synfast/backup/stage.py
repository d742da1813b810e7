"""The copy stage of a backup: everything between ``DST.partial`` made and the
manifest written.

1. The marker ``.synfast/partial.json`` is written first, so a backup killed
   from here on leaves a directory recognisably ours.
2. Directories are made (0700 while being filled).
3. The snapshots of every LMDB environment are begun together
   (:class:`synfast.lmdb.engines.EnvironmentCopier` in its ``together`` mode).
4. Files and environments are copied in parallel, largest first (small files
   one after another by one worker).  Each output is then finished in one
   pass: metadata applied, writeback started, checksum computed from the page
   cache, fsynced, its pages dropped (an output of at most 1 MiB, such as a
   small environment, is left to step 5 like the batched files).  Small dense
   files are copied in batches per directory (:mod:`synfast.files.small`) and
   hashed from the bytes read, with no fsync each: step 5 makes them durable.
   Every environment copy is opened and counted, so a copy that LMDB cannot
   read fails the backup, not the restore.
   A regular file the service changes meanwhile is copied again (up to
   :data:`FILE_ATTEMPTS` times); one it removes, or replaces with something
   that is not a regular file, is left out and listed.
5. Symlinks are made, then directory metadata applied deepest first; then
   (:func:`synfast.backup.run`) one syncfs of the destination's filesystem
   makes every file and name durable, while the manifest is built.
6. The manifest is written last (:func:`synfast.backup.manifest.write_json_durably`).
"""

from __future__ import annotations

import os
import stat
import threading
import time
from collections.abc import Callable
from pathlib import Path

from synfast import workers
from synfast.backup import checksum as cks
from synfast.backup import hooks, manifest
from synfast.backup.options import BackupOptions
from synfast.backup.pacing import Throttle, copy_file_chunked
from synfast.copy.tree import dispatch, is_serial, work_items
from synfast.copy.walk import Entry, Plan, deepest_first
from synfast.errors import CopyFailed, SourceChanged, SynfastError
from synfast.files import durable, small
from synfast.files import sparse as files
from synfast.lmdb import env as lmdbenv
from synfast.lmdb.engines import EnvironmentCopier

#: How often a regular file that changes while it is copied is tried.
FILE_ATTEMPTS = 3

ProgressFn = Callable[[str, dict], None]


class Stage:
    """One backup's copy into the partial directory ``tmp``; :meth:`run` does it
    and returns the manifest's entries, environments and skipped files."""

    def __init__(self, the_plan: Plan, tmp: Path, destination: Path, opts: BackupOptions,
                 cancel: workers.Cancel, progress: ProgressFn | None) -> None:
        self.plan, self.src, self.tmp, self.destination = the_plan, the_plan.source, tmp, \
            destination
        self.opts, self.cancel, self.progress = opts, cancel, progress
        self.throttle = Throttle(opts.bwlimit * 1e6, cancel) if opts.bwlimit else None
        self.copier = EnvironmentCopier(opts.lmdb_engine, together=True, writeback=True,
                                        destination=tmp, reflink=opts.reflink)
        self.records: dict[str, dict] = {}
        self.env_records: dict[str, dict] = {}
        self.vanished: list[str] = []
        self.lock = threading.Lock()
        self.checksum_seconds = 0.0
        self.mid_file_hook = hooks.pause_wanted("mid-file")

    # -- the stage ---------------------------------------------------------
    def run(self, started: float) -> list[Entry]:
        """Copy everything (steps 1 to 5 of the module docstring); return the
        files and environments planned."""
        meta = self.tmp / manifest.META_DIR
        os.mkdir(meta, 0o755)
        manifest.write_json_durably(meta / manifest.PARTIAL_MARKER, {
            "pid": os.getpid(), "host": manifest.hostname(), "started": manifest.iso(started),
            "source": str(self.src), "destination": str(self.destination)},
            fsync=self.opts.fsync)
        hooks.pause_point("partial-created", self.cancel)
        dirs = self.plan.of_kind("dir")
        for d in dirs:
            if d.rel:
                os.mkdir(self.tmp / d.rel, 0o700)
        work = [e for e in self.plan.entries if e.kind in ("file", "env")]
        work.sort(key=lambda e: e.weight, reverse=True)
        envs = [e for e in work if e.kind == "env"]
        if self.progress:
            self.progress("plan", {"bytes": sum(e.weight for e in work), "items": len(work),
                                   "environments": len(envs)})
        try:
            self.copier.prepare([(e.rel, e.env) for e in envs if e.env is not None])
            hooks.pause_point("snapshots-taken", self.cancel)
            workers.run_all(self.do_item, self.items(work),
                            workers.default_workers(self.opts.jobs), "synfast-bk",
                            serial=is_serial, cancel=self.cancel)
        finally:
            self.copier.close()
        self.copy_links()
        for d in dirs:
            self.records[d.rel] = {"path": d.rel, "type": "dir", **_owner(d.st)}
        for d in deepest_first(dirs):
            target = self.tmp / d.rel if d.rel else self.tmp
            files.apply_metadata(target, d.st)
        return work

    @property
    def skipped(self) -> list[tuple[str, str]]:
        """What was not copied: special files, and files removed meanwhile."""
        out = [(e.rel, e.special) for e in self.plan.of_kind("special")]
        return out + [(rel, "file removed during the backup") for rel in sorted(self.vanished)]

    @property
    def snapshot_times(self) -> list[float]:
        """Every environment's snapshot time, and the bound of snapshots begun together."""
        times = [manifest.parse_iso(e["snapshot_time"]) for e in self.env_records.values()]
        if self.copier.snapshot_bound is not None and times:
            times.append(self.copier.snapshot_bound)
        return times

    # -- one item ----------------------------------------------------------
    def items(self, work: list[Entry]) -> list[Entry | list[Entry]]:
        """The work as the workers take it: environments and larger files one
        by one, small dense files in batches (lists) per directory.  Pacing and
        the mid-file pause point need the general path."""
        def batchable(e: Entry) -> bool:
            return (e.kind == "file" and self.throttle is None and not self.mid_file_hook
                    and small.qualifies(e.st, reflink=self.opts.reflink))

        return work_items(work, batchable)

    def do_item(self, item: Entry | list[Entry]) -> None:
        dispatch(item, batch=self.do_batch, env=self.do_env, file=self.do_file)

    def do_batch(self, batch: list[Entry]) -> None:
        """Copy a batch of small dense files of one directory and hash them
        from the bytes read; files changed or removed since the plan go through
        :meth:`do_file`, which copies them again or lists them."""
        self.cancel.check()
        copied, left = small.copy_batch(
            self.src, self.tmp, [(e.rel, e.st) for e in batch], preserve=True,
            keep_data=bool(self.opts.algorithm), display_root=self.destination)
        c0 = time.monotonic()
        digests: list[str | None] = (
            cks.checksum_contents([c.data for c in copied], self.opts.algorithm)  # type: ignore[misc]
            if self.opts.algorithm else [None] * len(copied))
        c1 = time.monotonic()
        recs = {c.rel: {"path": c.rel, "type": "file", "size": c.st.st_size,
                        "allocated": c.allocated, **_owner(c.st), "checksum": d}
                for c, d in zip(copied, digests, strict=True)}
        with self.lock:
            self.records.update(recs)
            self.checksum_seconds += c1 - c0
        if self.progress and copied:
            self.progress("item", {"path": copied[0].rel.rpartition("/")[0] + "/",
                                   "bytes": sum(c.st.st_blocks * 512 for c in copied),
                                   "kind": "files", "count": len(copied),
                                   "written": sum(c.st.st_size for c in copied)})
        by_rel = {e.rel: e for e in batch}
        for rel, _ in left:
            self.do_file(by_rel[rel])

    def do_file(self, e: Entry) -> None:
        """Copy a regular file; a file the service changes while we copy it is
        copied again (it may be a log being appended to), and only a file that
        keeps changing fails.  One removed meanwhile, or replaced with something
        that is not a regular file, is left out and listed."""
        for attempt in range(FILE_ATTEMPTS):
            try:
                return self.copy_file(e)
            except SynfastError as err:
                try:
                    st: os.stat_result | None = os.lstat(self.src / e.rel)
                except FileNotFoundError:
                    st = None
                except OSError:
                    raise err from None
                if st is None or not stat.S_ISREG(st.st_mode):
                    with self.lock:
                        self.vanished.append(e.rel)
                    return None
                if not isinstance(err, SourceChanged) or attempt == FILE_ATTEMPTS - 1:
                    raise
                e.st = st

    def copy_file(self, e: Entry) -> None:
        self.cancel.check()
        out = self.tmp / e.rel
        display = self.destination / e.rel
        if self.throttle is not None or self.mid_file_hook:
            def on_chunk(done: int) -> None:
                if self.mid_file_hook and done < e.st.st_size:
                    hooks.pause_point("mid-file", self.cancel)

            written = copy_file_chunked(self.src / e.rel, out, e.st, throttle=self.throttle,
                                        cancel=self.cancel, display_dst=display,
                                        on_chunk=on_chunk)
        else:
            r = files.copy_file_new(self.src / e.rel, out, e.st, reflink=self.opts.reflink,
                                    sparse="auto", preserve=False, fsync=False,
                                    display_dst=display)
            written = r.bytes_written + r.bytes_cloned
        self.finish(e, out, written)

    def do_env(self, e: Entry) -> None:
        """Copy an environment, then open the copy and count its entries."""
        assert e.env is not None
        self.cancel.check()
        out = self.tmp / e.rel
        display = self.destination / e.rel
        r = self.copier.copy(e.rel, e.env, out, display, mode=0o600)
        if self.throttle is not None:
            self.throttle.consume(r.bytes_written)
        try:
            counts = lmdbenv.walk(out, False, nolock=True, full=False)
        except lmdbenv.LmdbError as err:
            raise CopyFailed(display, f"the copy does not open: {err.message}",
                             "report this as a bug; the source may be damaged") from err
        dbs = {name: d["entries"] for name, d in counts["named"].items()}
        rec = {"path": e.rel[: -len("/data.mdb")] if e.env.subdir else e.rel, "data": e.rel,
               "layout": "directory" if e.env.subdir else "file", "engine": r.engine,
               "page_size": r.page_size, "map_size": r.map_size, "txnid": r.txnid,
               "txnid_exact": r.txnid_exact, "txnid_min": r.txnid_min,
               "txnid_max": r.txnid_max, "snapshot_time": manifest.iso(r.snapshot_time),
               "bytes_written": r.bytes_written, "named_databases": len(dbs),
               "main_entries": counts["main"]["entries"], "databases": dbs,
               "entries": counts["main"]["entries"] - len(dbs) + sum(dbs.values()),
               "source_apparent": e.st.st_size, "source_allocated": e.st.st_blocks * 512}
        with self.lock:
            self.env_records[e.rel] = rec
        self.finish(e, out, r.bytes_written)

    def finish(self, e: Entry, out: Path, written: int) -> None:
        """Metadata, checksum, fsync and page dropping of one output, in one open."""
        fd = os.open(out, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW)
        try:
            files.apply_metadata(fd, e.st)
            ost = os.fstat(fd)
            # An output as small as a batched file is made durable like one, by
            # the syncfs after the last file (run._build): an fsync each is a
            # journal commit per environment of a service of thousands.
            alone = ost.st_size > small.SMALL_MAX
            if self.opts.fsync and alone:
                # Writeback runs while the checksum reads the pages from the
                # cache; the fsync after it then has little left to wait for.
                durable.start_writeback(fd)
            c0 = time.monotonic()
            digest = cks.checksum_fd(fd, self.opts.algorithm) if self.opts.algorithm else None
            c1 = time.monotonic()
            if self.opts.fsync and alone:
                os.fsync(fd)
            if self.opts.drop_cache and alone:
                durable.drop_cache(fd)
        finally:
            os.close(fd)
        rec = {"path": e.rel, "type": e.kind, "size": ost.st_size,
               "allocated": ost.st_blocks * 512, **_owner(e.st), "checksum": digest}
        with self.lock:
            self.records[e.rel] = rec
            self.checksum_seconds += c1 - c0
        if self.progress:
            self.progress("item", {"path": e.rel, "bytes": e.weight, "kind": e.kind,
                                   "written": written})

    def copy_links(self) -> None:
        for e in self.plan.of_kind("symlink"):
            target = os.readlink(self.src / e.rel)
            os.symlink(target, self.tmp / e.rel)
            files.apply_metadata(self.tmp / e.rel, e.st)
            self.records[e.rel] = {"path": e.rel, "type": "symlink", "size": e.st.st_size,
                                   "allocated": 0, **_owner(e.st), "target": target}


def _owner(st: os.stat_result) -> dict:
    """Mode, owner and mtime as the manifest records them for every entry."""
    return {"mode": stat.S_IMODE(st.st_mode), "uid": st.st_uid, "gid": st.st_gid,
            "mtime_ns": st.st_mtime_ns}
