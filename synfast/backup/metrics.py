"""Prometheus metrics of a backup, verify or prune, for node_exporter's textfile
collector (``--metrics-file PATH``).

Nobody watches nightly backups until a restore is needed; what is watched is a
metric.  Each run of a command rewrites one file, atomically (a temporary
sibling, then a rename: the collector never reads half a file), in the text
exposition format: ``synfast_<command>_<name>{source="...",root="..."} value``.

Every run records its start (``last_attempt_timestamp_seconds``), its result
(``last_attempt_success`` 1 or 0, ``last_attempt_exit_code``) and duration.
``last_success_timestamp_seconds`` is the start of the last run that
succeeded: a failed run carries it over from the file it replaces, so "no
success for 26 hours" can be alerted on from one file.  The figures of the work
(bytes, files, environments, problems) are written when the run got that far:
a run that failed before has none.  One file holds one command's metrics for
one source or root: give each its own file (the collector reads every
``*.prom`` in its directory).
"""

from __future__ import annotations

import contextlib
import math
import os
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from synfast.errors import SynfastError, convert_error
from synfast.files import durable

PREFIX = "synfast"

#: What each figure means, for the ``# HELP`` lines (name without the prefix).
HELP = {
    "last_attempt_timestamp_seconds": "Start of the last run (Unix time).",
    "last_attempt_success": "1 if the last run succeeded, else 0.",
    "last_attempt_exit_code": "Exit code of the last run.",
    "last_success_timestamp_seconds": "Start of the last run that succeeded (Unix time).",
    "duration_seconds": "Wall time of the last run.",
    "read_bytes": "Bytes of data read from the source (holes are never read).",
    "written_bytes": "Bytes written: allocated in the backup, or streamed.",
    "stored_bytes": "Bytes the backup adds to its store (on disk, or borg's deduplicated size).",
    "environments": "LMDB environments.",
    "files": "Regular files.",
    "skipped_entries": "Entries left out (sockets, FIFOs, devices, files removed meanwhile).",
    "entries": "Entries in the LMDB environments.",
    "problems": "Problems found (0 when the backup is intact).",
    "checksums": "Checksums compared.",
    "kept_backups": "Complete backups kept.",
    "removed_backups": "Complete backups removed.",
    "removed_partials": "Unfinished backups removed.",
    "rebuilt_environments": "LMDB environments rebuilt.",
    "skipped_environments": "LMDB environments left alone (predicted saving too small).",
    "before_bytes": "Bytes allocated by the environments before.",
    "after_bytes": "Bytes allocated by the environments after.",
}

_LINE = re.compile(r'^([a-zA-Z_:][a-zA-Z0-9_:]*)(\{.*\})?\s+(\S+)(?:\s+\S+)?\s*$')


@dataclass
class Run:
    """One run being recorded: the body sets ``values`` (and ``failed`` for a
    run that ended normally but found problems)."""

    command: str
    labels: dict[str, str]
    started: float = field(default_factory=time.time)
    values: dict[str, float] = field(default_factory=dict)
    failed: bool = False


def escape(value: str) -> str:
    """A label value as the text format writes it."""
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def render(run: Run, *, exit_code: int, duration: float,
           last_success: float | None) -> str:
    """The file's text for ``run``."""
    labels = ",".join(f'{k}="{escape(v)}"' for k, v in run.labels.items())
    values: dict[str, float] = {
        "last_attempt_timestamp_seconds": run.started,
        "last_attempt_success": 1.0 if exit_code == 0 else 0.0,
        "last_attempt_exit_code": float(exit_code),
        "duration_seconds": duration,
    }
    if last_success is not None:
        values["last_success_timestamp_seconds"] = last_success
    values.update(run.values)
    out = []
    for name, value in values.items():
        full = f"{PREFIX}_{run.command}_{name}"
        out.append(f"# HELP {full} {HELP.get(name, name)}")
        out.append(f"# TYPE {full} gauge")
        out.append(f"{full}{{{labels}}} {_number(value)}")
    return "\n".join(out) + "\n"


def _number(value: float) -> str:
    if math.isfinite(value) and value == int(value) and abs(value) < 2**53:
        return str(int(value))
    return repr(float(value))


def previous_success(path: Path, run: Run) -> float | None:
    """``last_success_timestamp_seconds`` of the same command and labels in the
    file being replaced, if it holds one (anything unreadable counts as none)."""
    want = f"{PREFIX}_{run.command}_last_success_timestamp_seconds"
    labels = "{" + ",".join(f'{k}="{escape(v)}"' for k, v in run.labels.items()) + "}"
    try:
        with open(path, encoding="utf-8", errors="replace") as f:
            text = f.read(1 << 20)
    except OSError:
        return None
    for line in text.splitlines():
        m = _LINE.match(line)
        if m and m.group(1) == want and (m.group(2) or "{}") == labels:
            with contextlib.suppress(ValueError):
                value = float(m.group(3))
                if math.isfinite(value):
                    return value
    return None


def _exit_code(err: BaseException | None, failed: bool) -> int:
    if err is None:
        return 1 if failed else 0
    code = getattr(err, "exit_code", None)
    if isinstance(code, int):
        return code
    return 130 if isinstance(err, KeyboardInterrupt) else 1


def write(path: str | os.PathLike[str], run: Run, *, exit_code: int, duration: float) -> None:
    """Write the metrics of ``run`` to ``path`` whole, replacing what was there."""
    p = Path(path)
    last = run.started if exit_code == 0 else previous_success(p, run)
    text = render(run, exit_code=exit_code, duration=duration, last_success=last)
    try:
        durable.write_atomic(p, text.encode(), mode=0o644, replace=True, fsync=False)
    except OSError as err:
        raise convert_error(err, p) from err


@contextlib.contextmanager
def recording(path: str | os.PathLike[str] | None, command: str,
              labels: dict[str, str]) -> Iterator[Run]:
    """Record the body as one run of ``command`` in ``path`` (nothing when None),
    however it ends.  A metrics file that cannot be written fails a run that
    succeeded; after a failure, the run's own error is the one raised."""
    run = Run(command, labels)
    t0 = time.monotonic()
    if path is None:
        yield run
        return
    try:
        yield run
    except BaseException as err:
        with contextlib.suppress(SynfastError):
            write(path, run, exit_code=_exit_code(err, run.failed),
                  duration=time.monotonic() - t0)
        raise
    write(path, run, exit_code=_exit_code(None, run.failed), duration=time.monotonic() - t0)


def check_path(path: str | os.PathLike[str] | None) -> None:
    """Refuse, before any work, a metrics file whose directory does not exist."""
    if path is None:
        return
    parent = Path(os.path.abspath(path)).parent
    if not parent.is_dir():
        raise SynfastError(parent, "does not exist (the --metrics-file directory)",
                           "create it, or point --metrics-file into node_exporter's "
                           "textfile directory")


# -- the labels and figures of each command -----------------------------------

def _root(target: str) -> str:
    """The ``root`` label of a backup's place: its directory as given (before
    strftime fields are expanded, so that one nightly job keeps one series),
    ``-`` for a stream, ``borg:REPO`` for borg."""
    if target == "-":
        return "-"
    if target.startswith("borg:"):
        return target.split("::", 1)[0]
    return os.path.dirname(os.path.abspath(target))


def backup_labels(source: str, destination: str) -> dict[str, str]:
    """``source`` and ``root`` (see :func:`_root`) of a backup."""
    return {"source": os.path.abspath(source), "root": _root(destination)}


def verify_labels(backup: str) -> dict[str, str]:
    """``source`` (from the backup's manifest, when it can be read) and ``root``."""
    from synfast.backup import manifest

    source = ""
    if backup != "-" and not backup.startswith("borg:") and os.path.isdir(backup):
        with contextlib.suppress(SynfastError, OSError, ValueError, KeyError, TypeError):
            source = str(manifest.read(backup)["source"])
    return {"source": source, "root": _root(backup)}


def backup_values(totals: dict, *, written: int | None = None,
                  stored: int | None = None) -> dict[str, float]:
    """A backup's figures from its manifest's totals; ``written`` and ``stored``
    default to the allocated bytes of the backup's files."""
    alloc = int(totals.get("allocated_bytes", 0))
    return {
        "read_bytes": float(totals.get("source_allocated_bytes", 0)),
        "written_bytes": float(alloc if written is None else written),
        "stored_bytes": float(alloc if stored is None else stored),
        "environments": float(totals.get("environments", 0)),
        "files": float(totals.get("files", 0)),
        "skipped_entries": float(totals.get("skipped", 0)),
        "entries": float(totals.get("entries", 0)),
    }


def verify_values(report: Any) -> dict[str, float]:
    """A verify's figures from its :class:`~synfast.backup.verify.VerifyReport`."""
    return {"problems": float(len(report.problems)), "files": float(report.files_checked),
            "checksums": float(report.checksums_checked),
            "environments": float(report.environments_checked),
            "entries": float(report.entries_walked)}


def prune_values(report: Any) -> dict[str, float]:
    """A prune's figures from its :class:`~synfast.backup.retention.PruneReport`."""
    return {"kept_backups": float(len(report.kept)),
            "removed_backups": float(len(report.removed)),
            "removed_partials": float(len(report.partials_removed))}


def defrag_values(report: Any) -> dict[str, float]:
    """A defrag's figures from its :class:`~synfast.backup.defrag.DefragReport`."""
    d = report.as_dict()
    return {"rebuilt_environments": float(len(report.rebuilt)),
            "skipped_environments": float(sum(1 for e in report.environments
                                              if e.action == "skip")),
            "before_bytes": float(d["allocated_before_bytes"]),
            "after_bytes": float(d.get("allocated_after_bytes", 0))}
