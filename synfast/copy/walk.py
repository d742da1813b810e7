"""Walking a source and classifying what it holds, before anything is copied.

A copy, a scan and a backup all start with a plan: the source is walked depth
first without following symlinks, and every entry is classified by content as
a directory, a regular file, an LMDB environment (a directory holding a
``data.mdb`` with an LMDB meta page, or a single data file that starts with
one; see :mod:`synfast.lmdb.meta`), a symlink, or something special (socket,
FIFO, device) that is never copied.  An environment's lock file is left out.
A damaged environment (a ``data.mdb`` that is not one, or a ``*.lmdb``
directory without one) stops the walk: copying it as plain files would hide
the damage.
"""

from __future__ import annotations

import fnmatch
import os
import stat
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypeVar

from synfast.errors import UnsupportedFileType, convert_error
from synfast.files.sparse import source_stat
from synfast.lmdb import meta as lmdbmeta

T = TypeVar("T")

Kind = Literal["dir", "file", "env", "symlink", "special"]


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
    env: lmdbmeta.EnvLocation | None = None
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


def matches(rel: str, patterns: Iterable[str]) -> bool:
    """Whether the relative path ``rel`` matches one of the ``--exclude``
    globs: a glob is matched against the whole relative path, and a glob
    without ``/`` also against the last name (``*.log``, ``cache``).  Leading
    and trailing slashes are ignored (``tmp/`` is ``tmp``)."""
    name = rel.rsplit("/", 1)[-1]
    for p in patterns:
        p = p.strip("/")
        if fnmatch.fnmatchcase(rel, p) or ("/" not in p and fnmatch.fnmatchcase(name, p)):
            return True
    return False


def inside(child: Path, parent: Path) -> bool:
    """Whether the path ``child`` is ``parent`` or lies under it (lexically:
    resolve both first when symlinks matter)."""
    try:
        child.relative_to(parent)
        return True
    except ValueError:
        return False


def deepest_first(dirs: Iterable[T], rel: Callable[[T], str] = lambda d: d.rel) -> list[T]:
    """Directories ordered for their metadata to be applied last: deepest first,
    the root ("") last (creating an entry in a directory changes its mtime).
    ``rel`` gives a directory's relative path (plan entries by default)."""
    return sorted(dirs, key=lambda d: rel(d).count("/") + (1 if rel(d) else 0), reverse=True)


def plan(source: str | os.PathLike[str], *, exclude: tuple[str, ...] = ()) -> Plan:
    """Walk ``source`` without following symlinks and classify every entry.

    LMDB environments are recognised by content (see :mod:`synfast.lmdb.meta`);
    their lock files are left out.  Raises on a source that is missing, of an
    unsupported type, or that holds a damaged environment.
    """
    src = Path(source)
    st = source_stat(src)
    if stat.S_ISDIR(st.st_mode):
        return walk_tree(src, excluded=(lambda rel: matches(rel, exclude)) if exclude else None)
    result = Plan(src)
    if stat.S_ISREG(st.st_mode):
        loc = lmdbmeta.locate(src)
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
        env = lmdbmeta.check_environment_dir(path)
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
                if cst.st_size >= lmdbmeta.MIN_ENV_FILE and lmdbmeta.read_meta(child.path):
                    loc = lmdbmeta.EnvLocation(Path(child.path), False)
                    singles.add(child.name + "-lock")
                pending.append(Entry(crel, "env" if loc else "file", cst, loc))
            else:
                pending.append(Entry(crel, "special", cst, special=_special_name(mode)))
        # A single-file environment's lock file is named after it: leave it out.
        out.entries.extend(e for e in pending
                           if e.kind != "file" or e.rel.rsplit("/", 1)[-1] not in singles)
        stack.extend(reversed(subdirs))
    return out
