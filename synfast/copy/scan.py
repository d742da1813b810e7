"""What a service directory really holds: apparent versus allocated size, data
extents, and for each LMDB environment its map size against the part in use.

Scanning reads only metadata, extent maps and LMDB meta pages: it never opens
an environment through LMDB, so it creates no lock file and takes no reader
slot, and it is safe on a live service.
"""

from __future__ import annotations

import os
from dataclasses import asdict, dataclass, field
from pathlib import Path

from synfast.copy.walk import plan
from synfast.files.sparse import usage
from synfast.lmdb.meta import read_meta


@dataclass
class ScanEntry:
    path: str
    kind: str  # "file" or "env"
    apparent: int
    allocated: int
    data_bytes: int
    extents: int
    map_size: int | None = None
    used_size: int | None = None
    page_size: int | None = None
    txnid: int | None = None


@dataclass
class ScanReport:
    root: Path
    entries: list[ScanEntry] = field(default_factory=list)
    skipped: list[tuple[str, str]] = field(default_factory=list)
    symlinks: int = 0
    directories: int = 0

    def totals(self) -> dict[str, int]:
        envs = [e for e in self.entries if e.kind == "env"]
        return {
            "files": sum(1 for e in self.entries if e.kind == "file"),
            "environments": len(envs),
            "apparent": sum(e.apparent for e in self.entries),
            "allocated": sum(e.allocated for e in self.entries),
            "data_bytes": sum(e.data_bytes for e in self.entries),
            "extents": sum(e.extents for e in self.entries),
            "map_size": sum(e.map_size or 0 for e in envs),
            "used_size": sum(e.used_size or 0 for e in envs),
        }

    def as_dict(self) -> dict:
        return {
            "root": str(self.root),
            "entries": [asdict(e) for e in self.entries],
            "skipped": [{"path": p, "type": t} for p, t in self.skipped],
            "symlinks": self.symlinks,
            "directories": self.directories,
            "totals": self.totals(),
        }


def scan(path: str | os.PathLike[str], *, exclude: tuple[str, ...] = ()) -> ScanReport:
    """Scan a file or directory tree; see the module docstring."""
    the_plan = plan(path, exclude=exclude)
    report = ScanReport(Path(path))
    for e in the_plan.entries:
        full = report.root / e.rel if e.rel else report.root
        if e.kind == "dir":
            report.directories += 1
        elif e.kind == "symlink":
            report.symlinks += 1
        elif e.kind == "special":
            report.skipped.append((e.rel, e.special))
        else:
            data_path = e.env.data_path if e.env else full
            use = usage(data_path)
            entry = ScanEntry(e.rel or full.name, e.kind, use.apparent, use.allocated,
                              use.data_bytes, use.extents)
            if e.env is not None:
                meta = read_meta(data_path)
                if meta is not None:
                    entry.map_size = meta.map_size
                    entry.used_size = meta.used_size
                    entry.page_size = meta.page_size
                    entry.txnid = meta.txnid
                if e.env.subdir:
                    entry.path = os.path.dirname(e.rel) or str(e.env.path)
            report.entries.append(entry)
    return report
