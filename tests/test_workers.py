"""synfast.workers: the pool that copy, backup, restore and verify share, its
cancellation, and threads that leave SIGINT and SIGTERM to the main thread."""

from __future__ import annotations

import signal
import threading
import time

import pytest

from synfast import workers
from synfast.workers import run_all


def test_serial_items_run_one_after_another_in_one_thread_beside_the_rest() -> None:
    lock = threading.Lock()
    running: set[int] = set()
    overlap, threads, done = [], {}, []

    def fn(i: int) -> None:
        with lock:
            if i < 100 and any(j < 100 for j in running):
                overlap.append(i)
            running.add(i)
            threads.setdefault(i < 100, set()).add(threading.get_ident())
        time.sleep(0.002)
        with lock:
            running.discard(i)
            done.append(i)

    items = list(range(20)) + [100, 101, 102]
    run_all(fn, items, 3, "t", serial=lambda i: i < 100)
    assert sorted(done) == items
    assert overlap == []                       # no two small items at once
    assert len(threads[True]) == 1             # and all in one thread
    assert [i for i in done if i < 100] == list(range(20))   # in their order


def test_a_failure_in_the_serial_batch_stops_it_and_is_raised() -> None:
    seen = []

    def fn(i: int) -> None:
        seen.append(i)
        if i == 3:
            raise ValueError("boom")

    with pytest.raises(ValueError, match="boom"):
        run_all(fn, list(range(8)) + [50], 2, "t", serial=lambda i: i < 10)
    assert 4 not in seen


def _blocked_here() -> set[int]:
    return set(signal.pthread_sigmask(signal.SIG_BLOCK, []))


def test_threads_started_by_synfast_never_take_sigint_or_sigterm() -> None:
    # The kernel delivers a process signal to any thread that does not block
    # it; only the main thread may be such a thread.
    seen: list[set[int]] = []
    workers.start_thread(lambda: seen.append(_blocked_here()), "t").join()
    pool = workers.executor(2, "t")
    try:
        seen += [f.result() for f in [pool.submit(_blocked_here) for _ in range(4)]]
    finally:
        pool.shutdown()
    seen.append(workers.shared_executor().submit(_blocked_here).result())
    got: list[set[int]] = []
    workers.run_all(lambda _: got.append(_blocked_here()), list(range(6)), 3, "t")
    seen += got
    assert len(seen) == 12
    for mask in seen:
        assert {signal.SIGINT, signal.SIGTERM} <= mask
    # ... and the thread that started them is left as it was.
    assert signal.SIGINT not in _blocked_here()


def test_a_failure_cancels_the_items_still_running() -> None:
    cancel = workers.Cancel()
    stopped = []

    def fn(i: int) -> None:
        if i == 0:
            time.sleep(0.05)
            raise ValueError("first")
        try:
            cancel.sleep(30)
        except workers.Cancelled:
            stopped.append(i)
            raise

    started = time.monotonic()
    with pytest.raises(ValueError, match="first"):
        workers.run_all(fn, [0, 1], 2, "t", cancel=cancel)
    assert stopped == [1] and cancel.is_set()
    assert time.monotonic() - started < 20


def test_a_stop_signal_whose_exception_was_lost_still_stops_a_backup(tmp_path) -> None:
    """Python drops an exception raised by a signal handler while the main
    thread runs a finalizer.  Here the handler only notes the signal (as if its
    exception had been dropped); the backup, held in the middle of a file by
    the test hook, must still stop, raise Terminated and leave no partial."""
    import os
    import subprocess
    import sys

    from synfast.backup import hooks
    from tests.backup.service import service
    from tests.conftest import write_layout

    svc = service(tmp_path)
    write_layout(svc / "blob", 8 << 20, [(0, os.urandom(4 << 20))])
    dst = tmp_path / "bk"
    child = f"""
import os, signal, threading
from synfast import workers
from synfast.backup.run import backup
from synfast.errors import Terminated
signal.signal(signal.SIGTERM, lambda signum, frame: workers.note_stop(signum))
threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGTERM)).start()
try:
    backup({str(svc)!r}, {str(dst)!r})
except Terminated as err:
    print("terminated", err.signum)
"""
    env = {**os.environ, hooks.PAUSE_ENV: "mid-file", "PYTHONFAULTHANDLER": "1"}
    proc = subprocess.run([sys.executable, "-c", child], capture_output=True, text=True,
                          env=env, timeout=120)
    assert proc.stdout.strip() == f"terminated {signal.SIGTERM}", proc.stderr
    assert "paused at mid-file" in proc.stderr
    assert not dst.exists() and not (tmp_path / "bk.partial").exists()
