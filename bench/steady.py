"""Keep the benchmark machine's memory steady while contenders are measured.

The project's machines are virtual machines whose kernel hands every freed page
back to the host at once (virtio-balloon free page reporting; this kernel's
``page_reporting`` module has ``min_free_ms`` = 0).  A page handed back must be
faulted in again by the host the next time the guest uses it, and that cost
lands, as system time, on whichever process next allocates page cache.  Found
with ``perf``: after a 2 GB O_DIRECT write was deleted, ``cp -a`` of dataset A
spent 83% of its time in ``copy_folio_from_iter_atomic`` and took 4.7-13.5 s
of system time instead of 0.9-1.6 s.  Every contender deletes its output, so
the next one paid for it at random: that was most of the noise in our figures.

:func:`steady_memory` (root only; a no-op elsewhere) asks the kernel to keep
freed pages for ``hold_ms`` before reporting them, lets more of them wait, and
touches the free memory once so that the host backs it; the original settings
come back on exit.  It also drops the clean page cache first, so that there is
free memory to touch.  It changes how soon memory returns to the host, nothing
that a contender does.
"""

from __future__ import annotations

import mmap
import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

PARAMS = Path("/sys/module/page_reporting/parameters")
MAP_POPULATE = getattr(mmap, "MAP_POPULATE", 0x8000)


def drop_page_cache(level: int = 1) -> None:
    """sync, then drop the clean page cache (1), or dentries and inodes too (3).
    Root only: raises OSError otherwise."""
    os.sync()
    Path("/proc/sys/vm/drop_caches").write_text(f"{level}\n")


def _free_bytes() -> int:
    with open("/proc/meminfo") as f:
        for line in f:
            if line.startswith("MemFree:"):
                return int(line.split()[1]) * 1024
    return 0


def prefault(leave: int = 3 << 30, most: int | None = None) -> int:
    """Touch all free memory but ``leave`` bytes (at most ``most`` bytes) once,
    then free it again; returns the bytes touched.  The host backs what it
    touches at about 0.3 GB/s here: 20 GiB took 66 s."""
    n = _free_bytes() - leave
    if most is not None:
        n = min(n, most)
    if n <= 0:
        return 0
    m = mmap.mmap(-1, n, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS | MAP_POPULATE)
    m.close()
    return n


@contextmanager
def steady_memory(enabled: bool = True, hold_ms: int = 100_000,
                  waiting_mib: int = 16_384, drop_caches: bool = True,
                  prefault_most: int | None = None) -> Iterator[str]:
    """Delay free page reporting while the body runs; yields what was done.
    ``prefault_most`` bounds the memory touched first, for runs that need
    little of it (a quick run at a small scale)."""
    if not enabled or os.geteuid() != 0 or not (PARAMS / "min_free_ms").exists():
        yield "memory settings unchanged"
        return
    saved: dict[str, str] = {}
    for name, value in (("min_free_ms", hold_ms), ("max_waiting_mib", waiting_mib)):
        p = PARAMS / name
        try:
            old = p.read_text().strip()
            p.write_text(f"{value}\n")
        except OSError:
            continue
        saved[name] = old
    try:
        if drop_caches:
            # Free the clean page cache while freed pages are held, so that
            # there is free memory to prefault and no contender pays for
            # reclaiming another's pages (the benchmarks warm their sources up).
            drop_page_cache()
        touched = prefault(most=prefault_most)
        yield (f"free page reporting held for {hold_ms} ms "
               f"(was {saved.get('min_free_ms')}); page cache dropped: {drop_caches}; "
               f"{touched / 2**30:.1f} GiB prefaulted")
    finally:
        for name, old in saved.items():
            with suppress(OSError):
                (PARAMS / name).write_text(f"{old}\n")
