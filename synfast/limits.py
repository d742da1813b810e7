"""The process's limit on open files, raised once and checked before big work.

A service directory can hold thousands of LMDB environments, and a backup
opens every one of them at once (their snapshots are begun together), two
descriptors each.  systemd gives services a soft limit of 1,024 open files and a
hard limit of 524,288; like Go programs, the command line raises the soft limit
to the hard one as it starts (:func:`raise_open_files`).  When even the hard
limit cannot hold what one moment needs, :func:`require_descriptors` says so
before anything is written, instead of failing halfway with EMFILE.
"""

from __future__ import annotations

import os
import resource

from synfast.errors import SynfastError

#: Descriptors kept free for everything but the environments: the pool's
#: files being copied, checksums, the manifest, the interpreter's own.
RESERVED_DESCRIPTORS = 64


def raise_open_files() -> int:
    """Raise the soft RLIMIT_NOFILE to the hard limit; return the soft limit now."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    target = hard
    if hard == resource.RLIM_INFINITY:
        # An unlimited hard limit still stops at the kernel's fs.nr_open.
        try:
            with open("/proc/sys/fs/nr_open") as f:
                target = int(f.read())
        except (OSError, ValueError):
            return soft
    if soft == resource.RLIM_INFINITY or soft >= target:
        return soft
    try:
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))
    except (ValueError, OSError):
        return soft
    return target


def open_files_limit() -> int:
    """The soft RLIMIT_NOFILE (what ``open`` fails against)."""
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return soft if soft != resource.RLIM_INFINITY else 1 << 30


def open_descriptors() -> int:
    """How many descriptors this process has open now."""
    try:
        return len(os.listdir("/proc/self/fd")) - 1  # less the one listing the directory
    except OSError:
        return 16


def require_descriptors(needed: int, what: str, fix: str) -> None:
    """Refuse, with one line naming the numbers and ``fix``, when ``needed``
    more descriptors (plus a reserve) cannot be open together under the limit."""
    limit = open_files_limit()
    total = needed + open_descriptors() + RESERVED_DESCRIPTORS
    if total > limit:
        raise SynfastError(None, f"{what} needs about {total} open files at once, and this "
                         f"process may open {limit} (RLIMIT_NOFILE)", fix)
