"""``synfast scan PATH``."""

from __future__ import annotations

import typer

from synfast.cli._app import app


@app.command("scan")
def scan_command(
    path: str = typer.Argument(..., metavar="PATH", help="File or directory to scan."),
    json_out: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
    exclude: list[str] = typer.Option([], "--exclude", metavar="GLOB",
                                      help="Leave out paths matching GLOB. Repeatable."),
) -> None:
    """Show what files and LMDB environments really hold on disk.

    For each file: apparent size, allocated size, data bytes and extent count; for
    each LMDB environment: map size against the part in use. Safe on a live
    service: no environment is opened.
    """
    from synfast.cli._render import print_json, size, table
    from synfast.copy.scan import scan

    report = scan(path, exclude=tuple(exclude))
    if json_out:
        print_json(report.as_dict())
        return
    rows = [[e.path, e.kind, size(e.apparent), size(e.allocated), size(e.data_bytes),
             str(e.extents), size(e.map_size), size(e.used_size)] for e in report.entries]
    t = report.totals()
    rows.append([f"total ({t['files']} files, {t['environments']} environments)", "",
                 size(t["apparent"]), size(t["allocated"]), size(t["data_bytes"]),
                 str(t["extents"]), size(t["map_size"]), size(t["used_size"])])
    typer.echo(table(["path", "kind", "apparent", "allocated", "data", "extents", "map size",
                      "used"], rows, right={2, 3, 4, 5, 6, 7}))
    for rel, kind in report.skipped:
        typer.echo(f"skipped {kind}: {rel}")
