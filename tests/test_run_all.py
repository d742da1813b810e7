"""tree.run_all: the parallel loop that copy, backup and restore share."""

from __future__ import annotations

import threading
import time

import pytest

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
