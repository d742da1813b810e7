"""Threads that never take the process's signals, and the pool that runs the work.

Linux delivers a process-directed signal (SIGINT from Ctrl-C, SIGTERM from
systemd or Kubernetes) to any one thread that does not block it.  Python runs
its handlers only in the main thread: when the kernel picks a worker, a main
thread blocked in a long wait is never woken, and Ctrl-C seems ignored.  So
every thread synfast starts blocks SIGINT and SIGTERM from its first
instruction: a new thread inherits its creator's signal mask, and threads are
only ever created inside :func:`signals_blocked` (by :func:`start_thread`, by
the executors of :func:`executor`, and around libraries that start threads of
their own).  The kernel then always delivers those signals to the main thread.

Cancellation lives here too.  :func:`run_all` runs items on a pool; when the
main thread is interrupted (``KeyboardInterrupt``, or
:class:`synfast.errors.Terminated` for SIGTERM) or an item fails, it sets the
run's :class:`Cancel`, and workers that check it (between items, between chunks
of a paced copy, inside a test hook's pause) stop with :class:`Cancelled`
instead of finishing work nobody wants.

A stop signal is also noted (:func:`note_stop`): Python drops an exception
that a signal handler raises while the main thread runs a finalizer
(``__del__``, a weakref callback), so the long waits here look at the note as
well, and a signal is never lost.

``concurrent.futures`` is imported only when a pool is needed: it brings
``logging``, 10 ms of start-up that a one-file copy does not need.
"""

from __future__ import annotations

import functools
import os
import signal
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING, Any, TypeVar

if TYPE_CHECKING:
    from concurrent.futures import ThreadPoolExecutor

T = TypeVar("T")

#: The signals that must reach the main thread (the command line turns SIGTERM
#: and SIGHUP into :class:`synfast.errors.Terminated`).
SIGNALS = frozenset({signal.SIGINT, signal.SIGTERM, signal.SIGHUP})

#: The stop signal the process received, once one did (see :func:`note_stop`).
_STOPPED_BY: int | None = None
#: How often the long waits look at that note, in seconds.
STOP_POLL = 1.0


def note_stop(signum: int) -> None:
    """Note that ``signum`` (SIGTERM, SIGHUP) asked the process to stop; the
    handler that calls this raises :class:`~synfast.errors.Terminated` too."""
    global _STOPPED_BY
    _STOPPED_BY = signum


def check_stop() -> None:
    """Raise :class:`~synfast.errors.Terminated` if a stop signal was noted."""
    if _STOPPED_BY is not None:
        from synfast.errors import Terminated

        raise Terminated(_STOPPED_BY)


class Cancelled(Exception):
    """A worker stopped because its run was cancelled."""


class Cancel:
    """The cancellation of one run: set once, checked by every worker."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def set(self) -> None:
        self._event.set()

    def is_set(self) -> bool:
        return self._event.is_set()

    def check(self) -> None:
        """Raise :class:`Cancelled` if the run is cancelled."""
        if self._event.is_set():
            raise Cancelled()

    def sleep(self, seconds: float) -> None:
        """Sleep ``seconds``, or raise :class:`Cancelled` as soon as the run is
        cancelled (or :class:`~synfast.errors.Terminated` once a stop signal
        was noted)."""
        end = time.monotonic() + seconds
        while True:
            left = end - time.monotonic()
            if self._event.wait(max(0.0, min(left, STOP_POLL))):
                raise Cancelled()
            check_stop()
            if left <= STOP_POLL:
                return


@contextmanager
def signals_blocked() -> Iterator[None]:
    """Block SIGINT, SIGTERM and SIGHUP in the calling thread for the body, so
    that a thread started in it inherits them blocked, or so that a cleanup is
    not itself cut short.  A signal that arrives
    meanwhile stays pending and is delivered when the body ends."""
    old = signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)
    try:
        yield
    finally:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)


def start_thread(target: Callable[..., object], name: str, *args: Any) -> threading.Thread:
    """Start a daemon thread that never receives SIGINT, SIGTERM or SIGHUP."""
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    with signals_blocked():
        thread.start()
    return thread


@functools.cache
def _executor_class() -> type[ThreadPoolExecutor]:
    from concurrent.futures import ThreadPoolExecutor

    class SignalSafeExecutor(ThreadPoolExecutor):
        """A ThreadPoolExecutor whose threads (started in ``submit``) never
        receive SIGINT or SIGTERM."""

        def submit(self, fn, /, *args, **kwargs):  # type: ignore[no-untyped-def]
            with signals_blocked():
                return super().submit(fn, *args, **kwargs)

    return SignalSafeExecutor


def executor(workers: int, name: str) -> ThreadPoolExecutor:
    """A thread pool of ``workers`` threads named ``name`` that never receive
    SIGINT or SIGTERM."""
    return _executor_class()(max_workers=workers, thread_name_prefix=name)


_SHARED_LOCK = threading.Lock()
_SHARED: ThreadPoolExecutor | None = None


def shared_executor() -> ThreadPoolExecutor:
    """One process-wide pool with a thread per core, for work that releases the
    GIL and should use every core even when it is the last job left (hashing)."""
    global _SHARED
    with _SHARED_LOCK:
        if _SHARED is None:
            _SHARED = executor(os.cpu_count() or 1, "synfast-shared")
        return _SHARED


def default_workers(jobs: int | None) -> int:
    """``jobs`` when given, else one worker per core, at most four (beyond four,
    parallel copies on one disk only compete for it)."""
    return max(1, jobs or min(4, os.cpu_count() or 1))


def run_all(fn: Callable[[T], object], items: list[T], workers: int, name: str, *,
            serial: Callable[[T], bool] | None = None, cancel: Cancel | None = None) -> None:
    """Call ``fn`` on every item, ``workers`` at a time (in order when one).

    The first failure cancels what has not started, sets ``cancel``, waits for
    what has, and is raised.  An exception in the calling thread (Ctrl-C,
    SIGTERM) sets ``cancel`` too, for workers that check it, and is raised
    without waiting for them.

    Items for which ``serial`` is true are done one after another by a single
    worker, beside the others: for small files, two threads creating files side
    by side measured slower than one (50,000 files of up to 16 KiB on ext4:
    15.1 s against 12.7 s, twice the CPU), since both spend their time in
    Python, passing the GIL, and in the filesystem's allocator locks."""
    if serial is not None and workers > 1:
        alone = [i for i in items if serial(i)]
        if len(alone) > 1:
            rest: list = [i for i in items if not serial(i)]

            def in_turn() -> None:
                for item in alone:
                    if cancel is not None:
                        cancel.check()
                    fn(item)

            # The batch starts first, beside the largest of the rest.
            return run_all(lambda i: in_turn() if i is _SERIAL else fn(i),
                           [_SERIAL, *rest], workers, name, cancel=cancel)
    if workers <= 1 or len(items) <= 1:
        for item in items:
            if cancel is not None:
                cancel.check()
            fn(item)
        return
    from concurrent.futures import FIRST_EXCEPTION, wait

    pool = executor(workers, name)
    try:
        futures = [pool.submit(fn, item) for item in items]
        while True:
            _, pending = wait(futures, timeout=STOP_POLL, return_when=FIRST_EXCEPTION)
            failed = next((f for f in futures if f.done() and not f.cancelled()
                           and f.exception() is not None), None)
            if failed is not None or not pending:
                break
            check_stop()
    except BaseException:
        if cancel is not None:
            cancel.set()
        pool.shutdown(wait=False, cancel_futures=True)
        raise
    if failed is not None:
        if cancel is not None:
            cancel.set()
        for f in pending:
            f.cancel()
    pool.shutdown(wait=True)
    if failed is not None:
        raise failed.exception()  # type: ignore[misc]


#: Stands for the batch of serial items in :func:`run_all`'s work list.
_SERIAL = object()
