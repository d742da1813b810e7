"""``synfast copy SRC DST``."""

from __future__ import annotations

import typer

from synfast.cli._app import app

_MODES = "never, auto or always"


@app.command("copy")
def copy_command(
    src: str = typer.Argument(..., metavar="SRC",
                              help="File, LMDB environment or directory to copy."),
    dst: str = typer.Argument(..., metavar="DST", help="Exact path of the copy (must not exist)."),
    reflink: str = typer.Option(
        "auto", "--reflink", metavar="WHEN",
        help=f"Share blocks with the source (FICLONE): {_MODES}. As cp."),
    sparse: str = typer.Option(
        "auto", "--sparse", metavar="WHEN",
        help=f"Holes: auto keeps the source's, always also punches zero blocks, never "
        f"writes every byte. As cp. ({_MODES})"),
    copy_file_range: str = typer.Option(
        "auto", "--copy-file-range", metavar="WHEN",
        help="Move data with copy_file_range instead of splice: auto uses it only for a "
        f"server-side copy on NFS, SMB or Ceph, never with --reflink=never. ({_MODES})"),
    lmdb_engine: str = typer.Option(
        "auto", "--lmdb-engine", metavar="ENGINE",
        help="How LMDB environments are copied: rebuild (native, in key order, smallest "
        "output), pages (page for page, numbers kept, free pages as holes, blocks shared "
        "on reflink filesystems), compact or raw (mdb_env_copyfd2 with or without "
        "compaction), or auto (pages where DST shares blocks with SRC; else rebuild where "
        "it saves 10% or more, else compact, or rebuild when there are many overflow "
        "values)."),
    force: bool = typer.Option(False, "--force", "-f", help="Replace an existing DST."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0,
                             help="Parallel copies (0: one per core, at most 4)."),
    fsync: bool = typer.Option(False, "--fsync", help="fsync every file and directory."),
    exclude: list[str] = typer.Option(
        [], "--exclude", metavar="GLOB",
        help="Leave out paths matching GLOB (relative path or name). Repeatable."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON summary."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Print nothing but warnings and errors."),
) -> None:
    """Copy a file or a directory tree, sparse-safe and LMDB-safe.

    Sparse files stay sparse. LMDB environments (found by content) are copied as
    consistent snapshots through LMDB, without their lock files, even while a
    service writes to them. Symlinks are copied as symlinks; sockets, FIFOs and
    devices are skipped with a warning. Mode, times and (as root) owners are kept.
    The copy is built under a hidden temporary name and renamed into place.
    """
    from synfast.cli._render import print_json, size, warn
    from synfast.copy import tree

    report = tree.copy(src, dst, reflink=reflink, sparse=sparse, lmdb_engine=lmdb_engine,
                       copy_file_range=copy_file_range,
                       force=force, jobs=jobs or None, fsync=fsync, exclude=tuple(exclude))
    for rel, kind in report.skipped:
        warn(f"{report.source / rel if rel else report.source}: skipped {kind}")
    if json_out:
        print_json(report.as_dict())
    elif not quiet:
        typer.echo(
            f"copied {report.file_count} files, {len(report.environments)} LMDB environments, "
            f"{report.symlinks} symlinks into {report.destination} in {report.seconds:.2f} s: "
            f"apparent {size(report.copy_apparent)}, allocated {size(report.copy_allocated)} "
            f"(source: apparent {size(report.source_apparent)}, "
            f"allocated {size(report.source_allocated)})"
        )
