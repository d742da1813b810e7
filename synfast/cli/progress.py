"""Progress of a backup for people: a rich progress bar on a terminal, plain
log lines on stdout otherwise (cron mail, systemd journal), nothing with ``quiet``.

The backup calls the reporter with events (``plan`` once, ``item`` after each
file or environment); the reporter only renders.  Bytes are the source's
allocated bytes, the estimate of the work, since apparent sizes of sparse
environments mean nothing.
"""

from __future__ import annotations

import sys
import time
from typing import Any

from synfast.cli._render import size


class Reporter:
    """Callable progress sink for :func:`synfast.backup.run.backup`."""

    #: Plain log lines name every environment and the files at least this large
    #: (a line per small file would bury the log).
    LOG_MIN = 64 << 20

    def __init__(self, *, quiet: bool = False, tty: bool | None = None,
                 log_to_stderr: bool = False, label: str = "backup") -> None:
        self.quiet = quiet
        self.label = label
        #: a backup streamed to stdout logs to stderr
        self.log_file = sys.stderr if log_to_stderr else None
        self.tty = sys.stderr.isatty() if tty is None else tty
        self.total = 0
        self.done = 0
        self.items = 0
        self.count = 0
        self.t0 = time.monotonic()
        self._bar: Any = None
        self._task: Any = None

    def __call__(self, event: str, data: dict) -> None:
        if self.quiet:
            return
        if event == "plan":
            self.total, self.items = data["bytes"], data["items"]
            if self.tty:
                from rich.console import Console
                from rich.progress import (
                    BarColumn,
                    DownloadColumn,
                    Progress,
                    TextColumn,
                    TimeRemainingColumn,
                    TransferSpeedColumn,
                )

                self._bar = Progress(
                    TextColumn(f"[bold]{self.label}"), BarColumn(),
                    DownloadColumn(binary_units=True),
                    TransferSpeedColumn(), TimeRemainingColumn(),
                    TextColumn("{task.fields[item]}"),
                    console=Console(file=sys.stderr), transient=True)
                from synfast.workers import signals_blocked

                with signals_blocked():     # its refresh thread must not take Ctrl-C
                    self._bar.start()
                self._task = self._bar.add_task(self.label, total=max(self.total, 1), item="")
            elif self.label == "defrag":
                self._log(f"plan: {self.items} environments to rebuild, about "
                          f"{size(self.total)} to write")
            else:
                self._log(f"plan: {self.items} files and environments, "
                          f"{size(self.total)} allocated, {data['environments']} environments")
        elif event == "item":
            self.done += data["bytes"]
            self.count += data.get("count", 1)
            if self._bar is not None:
                self._bar.update(self._task, completed=self.done, item=data["path"])
            elif not self.tty and (data["kind"] == "env" or data["bytes"] >= self.LOG_MIN):
                elapsed = max(time.monotonic() - self.t0, 1e-6)
                self._log(f"[{self.count}/{self.items}] {data['kind']} {data['path']} "
                          f"({size(data['bytes'])}; {size(self.done)} of {size(self.total)}, "
                          f"{size(self.done / elapsed)}/s)")

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None

    def _log(self, line: str) -> None:
        # Log lines are the command's normal output (stdout, unless stdout
        # carries the stream); warnings and errors go to stderr.
        print(f"synfast: {line}", file=self.log_file or sys.stdout, flush=True)
