"""How ``auto`` picks an engine for one environment, from cheap facts.

The facts come from the snapshot's database records and a sample of the first
entries of each database (:func:`engine_facts`); the rule (:func:`choose_engine`)
keeps the rebuild where it is predicted to leave out enough pages, else picks
by the environment's overflow values.  The measurements behind the thresholds
are in docs/internals.md ("How auto chooses").
"""

from __future__ import annotations

import os
from typing import Any

from synfast.lmdb.snapshot import Snapshot, open_snapshot

# The ``auto`` rule's thresholds; see choose_engine() and docs/internals.md ("How auto chooses")
# for the measurements behind them.
AUTO_MIN_REBUILD_SAVING = 0.10


# An already compact environment goes to LMDB's compacting copy when it has at
# most this many overflow pages per entry (each overflow value costs that copy a
# hand-off between its threads: about 37 us each on dataset Ac, against 0.27 us
# per entry that it saves over a rebuild on dataset C; break-even near 0.7%).
AUTO_COMPACT_MAX_OVERFLOW = 0.005


AUTO_SAMPLE_ENTRIES = 2000


def engine_facts(snapshot: Snapshot, sample: int = AUTO_SAMPLE_ENTRIES) -> dict[str, Any]:
    """The cheap facts the ``auto`` rule looks at, from the database records of
    ``snapshot`` and the first ``sample`` entries of each database.

    ``total_pages`` is the environment's used extent (last page + 1), which a
    raw copy writes in full; ``db_pages`` the pages its databases' trees hold;
    ``free_fraction`` the rest over the extent.  ``rebuild_pages`` predicts a
    rebuild's output: overflow pages as they are, and leaf pages as full as
    appends make them, from the leaf room of the sampled entries (DUPSORT
    databases are counted as they are: no saving is claimed for them).
    ``rebuild_saving`` is the predicted share of ``total_pages`` a rebuild
    leaves out.
    """
    stats = snapshot.stats(sample)
    dbs = [stats["main"], *stats["named"].values()]
    psize = stats["page_size"]
    total = stats["last_pgno"] + 1
    used = sum(d["branch_pages"] + d["leaf_pages"] + d["overflow_pages"] for d in dbs) + 2
    predicted = 2
    for d in dbs:
        pages = d["branch_pages"] + d["leaf_pages"] + d["overflow_pages"]
        if d["sampled_entries"] == 0 or d["leaf_pages"] == 0:
            predicted += pages
            continue
        mean_node = d["sampled_node_bytes"] / d["sampled_entries"]
        # A full page still ends with a gap where the next node did not fit:
        # about half a node, weighted by size (E[X^2] / 2E[X]).  Without this
        # the prediction for dataset B was 0.92 GB against 1.04 GB written.
        gap = d["sampled_node_sq"] / (2 * d["sampled_node_bytes"])
        room = max(psize - 16 - gap, (psize - 16) / 2)
        leaf = -(-int(d["entries"] * mean_node) // int(room))
        ratio = min(1.0, leaf / d["leaf_pages"])
        predicted += min(leaf, d["leaf_pages"]) + int(d["branch_pages"] * ratio + 0.999)
        predicted += d["overflow_pages"]
    free = max(total - used, 0)
    return {
        "total_pages": total,
        "db_pages": used,
        "free_pages": free,
        "free_fraction": free / total if total else 0.0,
        "overflow_pages": sum(d["overflow_pages"] for d in dbs),
        "entries": sum(d["entries"] for d in dbs),
        "named_databases": len(stats["named"]),
        "page_size": psize,
        "rebuild_pages": predicted,
        "rebuild_saving": 1 - predicted / total if total else 0.0,
    }


def choose_engine(source: str | os.PathLike[str] | Snapshot) -> str:
    """Pick the engine for ``auto`` in ``synfast copy``: ``"rebuild"`` or ``"compact"``.

    ``source`` is an environment's path or a begun :class:`Snapshot` of it
    (pass the snapshot when you hold one: opening the environment a second
    time in this process would drop the snapshot's locks when it is closed).

    Rule: ``rebuild`` when it is predicted to leave out at least
    AUTO_MIN_REBUILD_SAVING (10%) of the pages a raw copy would write (free
    pages, and leaf pages left part full by random inserts).  Otherwise the
    environment is already compact and every engine writes the same pages;
    then ``compact`` when it has few overflow values (at most
    AUTO_COMPACT_MAX_OVERFLOW overflow pages per entry), else ``rebuild``.
    ``raw`` is never chosen: it was the slower of the two on both compact
    datasets.

    Measured with bench/lmdb_engines.py (steady memory, medians of 3):
    dataset A (overflow-heavy, deletes): predicted saving 27.9%, rebuild
    1.96 GB in 2.49 s against raw's 2.72 GB in 4.20 s and compact's 2.25 GB
    in 9.96 s; dataset B (small values, random inserts, 4% free pages):
    predicted saving 33.2%, rebuild 1.04 GB against 1.55 GB raw.  Compact
    datasets: C (B rebuilt; no overflow pages) compact 1.01 s, rebuild 1.53,
    raw 1.69; Ac (A rebuilt; 0.5 overflow pages per entry) rebuild 1.54 s,
    raw 2.89, compact 8.38.  Free pages alone would get B wrong.
    """
    if isinstance(source, Snapshot):
        facts = engine_facts(source)
    else:
        snap = open_snapshot(source)
        try:
            facts = engine_facts(snap)
        finally:
            snap.close()
    return _rule(facts)


def _rule(facts: dict[str, Any]) -> str:
    if facts["rebuild_saving"] >= AUTO_MIN_REBUILD_SAVING:
        return "rebuild"
    if facts["overflow_pages"] <= AUTO_COMPACT_MAX_OVERFLOW * facts["entries"]:
        return "compact"
    return "rebuild"
