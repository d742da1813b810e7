"""Small rendering helpers shared by the commands (sizes, JSON, warnings)."""

from __future__ import annotations

import sys


def size(n: float | None) -> str:
    """Human-readable bytes with binary units, as ``du -h`` and ``ls -lh`` print them
    (the one size formatter: tables, summaries and progress lines all use it)."""
    if n is None:
        return "-"
    value = float(n)
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if abs(value) < 1024 or unit == "TiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{n} B"


def print_json(obj: object) -> None:
    import json  # only for --json: 3 ms of start-up otherwise

    json.dump(obj, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def warn(message: str) -> None:
    print(f"synfast: warning: {message}", file=sys.stderr)


def fail(where: object, message: str) -> None:
    """The one error line of a command that reports several problems itself
    (the rest of its output went to stdout); the caller then exits 1."""
    print(f"synfast: error: {where}: {message}", file=sys.stderr)


def check_line(ok: bool, warning: bool, what: str, detail: str) -> str:
    """One line of a list of checks: ``ok``, ``warn`` or ``FAIL``, what, detail."""
    mark = "ok  " if ok and not warning else "warn" if ok else "FAIL"
    return f"{mark}  {what}: {detail}"


def table(headers: list[str], rows: list[list[str]], right: set[int] | None = None) -> str:
    """Plain aligned columns, like ``df`` prints: readable on a terminal, greppable
    in a log, and independent of the terminal's width."""
    right = right if right is not None else set(range(1, len(headers)))
    widths = [len(h) for h in headers]
    for row in rows:
        for i, cell in enumerate(row):
            widths[i] = max(widths[i], len(cell))

    def line(cells: list[str]) -> str:
        out = [c.rjust(widths[i]) if i in right else c.ljust(widths[i])
               for i, c in enumerate(cells)]
        return "  ".join(out).rstrip()

    return "\n".join([line(headers), *(line(r) for r in rows)])
