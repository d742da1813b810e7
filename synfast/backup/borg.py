"""borg as the store of synfast backups: deduplicated, encrypted, compressed, off-site.

synfast keeps no repository format of its own.  ``synfast backup SRC
borg:REPO::ARCHIVE`` pipes the backup stream (:mod:`synfast.backup.stream`)
into ``borg import-tar``, which chunks each member on its own.  With the
``pages`` engine every LMDB page keeps its number from night to night, so
fixed-size chunks aligned to the pages (:data:`CHUNKER_PARAMS`) find everything
that did not change; docs/bench/offsite.md has the measurements that chose
the chunk size and the compression.

- The archive exists only if the stream ended with its manifest: on any failure
  borg is stopped (SIGTERM) before its input ends, so it commits nothing,
  and checkpoints are never written.  The stream is imported as
  ``ARCHIVE.synfast-partial`` and renamed once borg has committed it: borg
  commits a tar that ends at a member boundary as if it were whole, so a
  synfast killed outright leaves at most an archive under that name, which
  ``synfast list`` reports as unfinished, never as a backup.
- Restores and verifies read ``borg export-tar`` through
  :mod:`synfast.backup.unstream`, with every check a stream gets.
- borg's own environment gives the passphrase (``BORG_PASSPHRASE``,
  ``BORG_PASSCOMMAND``) and the remote (``BORG_RSH``); synfast never asks.
- borg's failures (no repository, wrong passphrase, lock held, full disk)
  become one :class:`BorgError` line naming the repository.
- Archives made by synfast carry the comment :data:`COMMENT`, which is how
  ``synfast list borg:REPO`` tells them from others; retention is borg's own
  ``borg prune``.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import subprocess
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import IO, Any

from synfast.backup.retention import BackupInfo
from synfast.errors import SynfastError, UsageError

PREFIX = "borg:"

#: Fixed 16 KiB chunks: 4 LMDB pages of 4 KiB, aligned to them.  Chosen by
#: bench/offsite.py (docs/bench/offsite.md): a night that rewrote 0.2% of the
#: entries added 4.3% (4 KiB chunks: 2.2%, at twice the import time and borg
#: memory and a larger index to upload; 64 KiB: 13%; borg's default: 85%).
CHUNKER_PARAMS = "fixed,16384"
#: lz4: nearly free in CPU; zstd,3 stored 8% less at 1.5 times the import time.
COMPRESSION = "lz4"
#: The archive's name while the stream is imported; renamed to the asked name
#: only once borg has committed a stream that ended with its manifest.
PARTIAL = ".synfast-partial"
#: The comment of every archive synfast writes.
COMMENT = "synfast-backup v1"
#: Never write a checkpoint archive: a stream that did not end is not a backup.
NO_CHECKPOINTS = str(10 ** 9)


class BorgError(SynfastError):
    """borg failed, or is missing."""


@dataclass
class BorgTarget:
    """``borg:REPO`` or ``borg:REPO::ARCHIVE``."""

    repo: str
    archive: str | None

    def __str__(self) -> str:
        return PREFIX + self.repo + (f"::{self.archive}" if self.archive else "")

    @property
    def borg_name(self) -> str:
        """What borg's command line calls it."""
        return self.repo + (f"::{self.archive}" if self.archive else "")


def is_borg(text: str) -> bool:
    return text.startswith(PREFIX)


def parse(text: str, *, archive: bool | None, when: float | None = None) -> BorgTarget:
    """Parse ``borg:REPO[::ARCHIVE]``; ``archive`` True requires an archive name,
    False forbids one.  strftime fields in the archive name are expanded."""
    body = text[len(PREFIX):]
    repo, sep, name = body.rpartition("::") if "::" in body else (body, "", "")
    if not repo:
        raise UsageError(None, f"{text!r} names no repository", "write borg:REPO::ARCHIVE")
    if archive and not name:
        raise UsageError(None, f"{text!r} names no archive", "write borg:REPO::ARCHIVE, "
                         "e.g. borg:/backups/repo::cortex-%Y%m%dT%H%M%S")
    if archive is False and sep:
        raise UsageError(None, f"{text!r} names an archive", "give the repository: borg:REPO")
    if name and "%" in name:
        name = time.strftime(name, time.localtime(when if when is not None else time.time()))
    if name and ("/" in name or name.startswith("-")):
        raise UsageError(None, f"archive name {name!r} is not one borg accepts",
                         "use letters, digits, - _ . : only")
    return BorgTarget(repo, name or None)


def _borg() -> str:
    path = shutil.which("borg")
    if path is None:
        raise BorgError(None, "borg is not installed", "install borgbackup (e.g. apt-get "
                        "install borgbackup)")
    return path


def _env() -> dict[str, str]:
    env = dict(os.environ)
    # never a question on the terminal in the middle of a nightly job
    env.setdefault("BORG_RELOCATED_REPO_ACCESS_IS_OK", "no")
    env.setdefault("BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK", "no")
    env.setdefault("BORG_EXIT_CODES", "legacy")
    return env


#: borg's messages, and what synfast says instead (matched in order).
_MESSAGES: list[tuple[tuple[str, ...], str, str]] = [
    (("passphrase supplied in", "is incorrect"), "the passphrase is wrong",
     "check BORG_PASSPHRASE or BORG_PASSCOMMAND"),
    (("Failed to create/acquire the lock",), "is locked by another borg process",
     "wait for it, or, if none runs, remove the stale lock with borg break-lock"),
    (("lock.exclusive", "timeout"), "is locked by another borg process",
     "wait for it, or, if none runs, remove the stale lock with borg break-lock"),
    (("Archive", "does not exist"), "holds no such archive", "list them with synfast list "
     "borg:REPO"),
    (("Repository", "does not exist"), "is not a borg repository (it does not exist)",
     "create it with borg init, or check the path"),
    (("is not a valid repository",), "is not a borg repository",
     "create it with borg init, or check the path"),
    (("No space left on device",), "ran out of space (No space left on device)",
     "free space where the repository lives; the archive was not created"),
    (("Archive", "already exists"), "already holds an archive of that name",
     "choose another archive name (strftime fields such as %Y%m%dT%H%M%S help)"),
    (("passphrase", "BORG_PASSPHRASE"), "needs a passphrase",
     "set BORG_PASSPHRASE or BORG_PASSCOMMAND in the environment"),
]


def _error(target: BorgTarget, what: str, rc: int, stderr: str) -> BorgError:
    """borg's failure as one line naming the repository."""
    text = " ".join(stderr.split())
    for needles, message, hint in _MESSAGES:
        if all(n in text for n in needles):
            if message == "holds no such archive" and target.archive:
                message = f"holds no archive {target.archive!r}"
            return BorgError(f"{PREFIX}{target.repo}", message, hint)
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit code {rc}"
    return BorgError(f"{PREFIX}{target.repo}", f"borg {what} failed: {last}",
                     "run the borg command by hand for details")


class _Drain(threading.Thread):
    """Reads one of borg's output pipes to its end, so borg never blocks on it."""

    def __init__(self, pipe: IO[bytes]) -> None:
        super().__init__(daemon=True)
        self.pipe, self.data = pipe, b""

    def run(self) -> None:
        self.data = self.pipe.read()


def backup_to_borg(source: str | os.PathLike[str], target: BorgTarget, options: Any = None,
                   *, chunker_params: str = CHUNKER_PARAMS, compression: str = COMPRESSION,
                   scratch: str | os.PathLike[str] | None = None,
                   progress: Any = None) -> tuple[Any, dict]:
    """Back up ``source`` into the archive ``target`` with ``borg import-tar``.
    Returns the stream's report and borg's statistics (``original_size``,
    ``compressed_size``, ``deduplicated_size``, ``nfiles``, ``duration``)."""
    from synfast.backup.stream import backup_stream
    from synfast.backup.tarwriter import StreamBroken

    assert target.archive is not None
    partial = BorgTarget(target.repo, target.archive + PARTIAL)
    cmd = [_borg(), "import-tar", "--json", "--chunker-params", chunker_params,
           "--compression", compression, "--comment", COMMENT,
           "--checkpoint-interval", NO_CHECKPOINTS, "--lock-wait", "5",
           partial.borg_name, "-"]
    proc = subprocess.Popen(cmd, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=_env(), start_new_session=True)
    assert proc.stdin is not None and proc.stdout is not None and proc.stderr is not None
    out, err = _Drain(proc.stdout), _Drain(proc.stderr)
    out.start()
    err.start()
    try:
        report = backup_stream(source, proc.stdin.fileno(), options, label=str(target),
                               scratch=scratch, progress=progress)
    except BaseException as exc:
        # borg must not see the end of its input: it would commit the archive.
        borg_failed = proc.poll() is not None or isinstance(exc, StreamBroken)
        _interrupt(proc)
        _close(proc.stdin)
        out.join()
        err.join()
        if borg_failed:
            # borg went first (no repository, wrong passphrase...): its reason
            raise _error(target, "import-tar", proc.returncode or 1,
                         err.data.decode(errors="replace")) from exc
        raise
    _close(proc.stdin)
    rc = proc.wait()
    out.join()
    err.join()
    if rc != 0:
        raise _error(target, "import-tar", rc, err.data.decode(errors="replace"))
    try:
        stats = json.loads(out.data)["archive"]["stats"]
    except (ValueError, KeyError, TypeError):
        stats = {}
    _rename(partial, target)
    return report, stats


def _rename(partial: BorgTarget, target: BorgTarget) -> None:
    """Give the committed archive its final name; if that fails, remove it."""
    assert target.archive is not None
    proc = subprocess.run([_borg(), "rename", "--lock-wait", "30", partial.borg_name,
                           target.archive], capture_output=True, env=_env())
    if proc.returncode != 0:
        failure = _error(target, "rename", proc.returncode, proc.stderr.decode(errors="replace"))
        subprocess.run([_borg(), "delete", "--lock-wait", "30", partial.borg_name],
                       capture_output=True, env=_env())
        raise failure


def _close(pipe: IO[bytes]) -> None:
    with contextlib.suppress(OSError):
        pipe.close()


def _interrupt(proc: subprocess.Popen) -> None:
    """Stop borg without letting it commit: SIGTERM (borg rolls the repository
    back and releases its lock; SIGINT would ask it for a checkpoint first,
    which waits for input that never comes), then SIGKILL if it does not go."""
    if proc.poll() is not None:
        return
    try:
        os.killpg(proc.pid, signal.SIGTERM)
    except ProcessLookupError:
        return
    try:
        proc.wait(timeout=60)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


def export_tar(target: BorgTarget) -> subprocess.Popen:
    """``borg export-tar REPO::ARCHIVE -``, its stdout the stream to read; call
    :func:`finish_export` after reading it."""
    assert target.archive is not None
    return subprocess.Popen([_borg(), "export-tar", "--lock-wait", "5", target.borg_name, "-"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(),
                            start_new_session=True)


def read_archive(target: BorgTarget, use: Any) -> Any:
    """Call ``use(stream)`` on the tar stream of the archive ``target``; borg's
    failure (which also makes the stream end early) is reported as borg's."""
    proc = export_tar(target)
    assert proc.stdout is not None and proc.stderr is not None
    err = _Drain(proc.stderr)
    err.start()
    try:
        result = use(proc.stdout)
    except BaseException as exc:
        _interrupt(proc)
        err.join()
        if proc.returncode not in (0, None, -signal.SIGTERM):
            raise _error(target, "export-tar", proc.returncode,
                         err.data.decode(errors="replace")) from exc
        raise
    finally:
        _close(proc.stdout)
    rc = proc.wait()
    err.join()
    if rc != 0:
        raise _error(target, "export-tar", rc, err.data.decode(errors="replace"))
    return result


def list_archives(target: BorgTarget) -> list[dict]:
    """The archives of the repository that synfast made, oldest first: ``name``,
    ``time`` (ISO, local as borg prints it), ``id``, and ``complete`` (False for
    one left under its partial name by a synfast that was killed)."""
    proc = subprocess.run([_borg(), "list", "--json", "--lock-wait", "5", "--format",
                           "{comment}", target.repo], capture_output=True, env=_env())
    if proc.returncode != 0:
        raise _error(target, "list", proc.returncode, proc.stderr.decode(errors="replace"))
    try:
        archives = json.loads(proc.stdout)["archives"]
    except (ValueError, KeyError, TypeError) as err:
        raise BorgError(f"{PREFIX}{target.repo}", "borg list printed no archive list",
                        "run borg list by hand") from err
    return [{"name": a["name"], "time": a.get("time") or a.get("start"), "id": a.get("id"),
             "complete": not a["name"].endswith(PARTIAL)}
            for a in archives
            if a.get("comment") == COMMENT and not a["name"].endswith(".checkpoint")]


def backup_infos(target: BorgTarget, *, prefix: str = "") -> list[BackupInfo]:
    """The complete synfast archives of the repository as backups (oldest first),
    for ``list --max-age``.  borg keeps no record of ``synfast verify``: an
    archive counts as not verified."""
    import datetime

    out = []
    for a in list_archives(target):
        if not a["complete"] or not a["name"].startswith(prefix):
            continue
        try:
            when = datetime.datetime.fromisoformat(str(a["time"])).timestamp()
        except ValueError:
            continue
        out.append(BackupInfo(a["name"], Path(target.repo), when, "", 0, 0, None, None))
    out.sort(key=lambda b: (b.time, b.name))
    return out
