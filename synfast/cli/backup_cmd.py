"""``synfast backup | restore | verify | prune | list``: the nightly job and its tools."""

from __future__ import annotations

import typer

from synfast.cli._app import app


@app.command("backup")
def backup_command(
    src: str = typer.Argument(..., metavar="SRC", help="The service directory to back up."),
    dst: str = typer.Argument(
        ..., metavar="DST", help="The backup's directory (must not exist); strftime fields such as "
        "%Y%m%d are expanded."),
    lmdb_engine: str = typer.Option(
        "auto", "--lmdb-engine", metavar="ENGINE",
        help="How environments are copied: auto (pages where DST shares blocks with SRC, "
        "else rebuild; every snapshot begun together), rebuild, pages, compact or raw."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0,
                             help="Parallel copies, largest first (0: one per core, at most 4)."),
    exclude: list[str] = typer.Option(
        [], "--exclude", metavar="GLOB",
        help="Leave out relative paths matching GLOB (a GLOB without / matches names). "
        "Repeatable."),
    include_tmp: bool = typer.Option(
        False, "--include-tmp", help="Also copy tmp/ and backups/ directories (skipped by "
        "default at any depth)."),
    no_fsync: bool = typer.Option(False, "--no-fsync", help="Do not fsync files and "
                                  "directories (faster, not durable)."),
    no_checksum: bool = typer.Option(False, "--no-checksum",
                                     help="Do not record BLAKE2b checksums in the manifest."),
    bwlimit: float = typer.Option(None, "--bwlimit", metavar="MB/S", min=0.001,
                                  help="Limit the copy rate (10^6 bytes per second)."),
    ionice: str = typer.Option(None, "--ionice", metavar="CLASS",
                               help="Lower the I/O priority: idle or low."),
    no_drop_cache: bool = typer.Option(
        False, "--no-drop-cache", help="Keep the backup's pages in the page cache (by default "
        "they are dropped after each file)."),
    clean_partial: bool = typer.Option(
        False, "--clean-partial", help="Remove unfinished backups (*.partial) beside DST."),
    pre_cmd: str = typer.Option(None, "--pre-cmd", metavar="CMD",
                                help="Shell command to run first (e.g. freeze the service)."),
    post_cmd: str = typer.Option(
        None, "--post-cmd", metavar="CMD",
        help="Shell command to run at the end, even when the backup fails (e.g. resume)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary at the end."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Print nothing but warnings and errors."),
) -> None:
    """Back up a live service directory: every LMDB environment as a consistent
    snapshot, other files sparse-safe, atomically (DST.partial, then DST).

    Exit codes: 0 done, 1 failed, 2 bad usage, 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM); an interrupted command leaves nothing half-made behind.
    """
    from synfast.backup.options import BackupOptions
    from synfast.backup.run import backup
    from synfast.cli._render import print_json, size, warn
    from synfast.cli.progress import Reporter

    reporter = Reporter(quiet=quiet or json_out)
    try:
        options = BackupOptions(
            lmdb_engine=lmdb_engine, jobs=jobs or None, exclude=tuple(exclude),
            include_tmp=include_tmp, fsync=not no_fsync, checksum=not no_checksum,
            bwlimit=bwlimit, ionice=ionice, drop_cache=not no_drop_cache,
            clean_partial=clean_partial, pre_cmd=pre_cmd, post_cmd=post_cmd)
        report = backup(src, dst, options, progress=reporter)
    finally:
        reporter.close()
    for p in report.stale_partials:
        warn(f"{p.path}: unfinished backup (started {p.started and p.as_dict()['started']}); "
             "remove it with --clean-partial or synfast prune")
    for p in report.removed_partials:
        warn(f"{p}: removed unfinished backup")
    if not quiet:
        for rel, kind in report.skipped:
            warn(f"{report.source / rel}: skipped {kind}")
    if json_out:
        print_json(report.as_dict())
    elif not quiet:
        t = report.manifest["totals"]
        snaps = report.manifest["snapshots"]
        typer.echo(
            f"backup {report.destination}: {t['files']} files, {t['environments']} LMDB "
            f"environments ({t['entries']} entries), {t['symlinks']} symlinks, "
            f"{t['skipped']} skipped, {t['excluded']} excluded in {report.seconds:.2f} s; "
            f"apparent {size(t['apparent_bytes'])}, allocated {size(t['allocated_bytes'])}; "
            f"snapshot spread {snaps['spread_seconds']:.6f} s")


@app.command("verify")
def verify_command(
    backup: str = typer.Argument(..., metavar="BACKUP",
                                 help="A backup directory made by synfast backup."),
    no_checksum: bool = typer.Option(False, "--no-checksum",
                                     help="Skip reading contents (sizes, modes, walks only)."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Parallel checksums."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
) -> None:
    """Check a backup against its manifest: files, sizes, modes, checksums, and a
    full walk of every LMDB environment. One line per problem; exit 1 if any."""
    from synfast.backup.verify import verify
    from synfast.cli._render import print_json

    report = verify(backup, checksums=not no_checksum, jobs=jobs or None)
    if json_out:
        print_json(report.as_dict())
    else:
        for p in report.problems:
            typer.echo(str(p))
        if not quiet:
            status = "OK" if report.ok else f"FAILED ({len(report.problems)} problems)"
            typer.echo(f"verify {report.backup}: {status}: {report.files_checked} files, "
                       f"{report.checksums_checked} checksums, {report.environments_checked} "
                       f"environments ({report.entries_walked} entries walked) in "
                       f"{report.seconds:.2f} s", err=not report.ok)
    if not report.ok:
        raise typer.Exit(1)


@app.command("restore")
def restore_command(
    backup: str = typer.Argument(..., metavar="BACKUP",
                                 help="A backup directory made by synfast backup."),
    service_dir: str = typer.Argument(..., metavar="SERVICEDIR", help="Where the service lives."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not verify the backup first."),
    force: bool = typer.Option(False, "--force", help="Restore even while a process has an "
                               "environment of SERVICEDIR open (destroys a running service)."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Parallel copies."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary."),
) -> None:
    """Restore a backup as SERVICEDIR; an existing SERVICEDIR is moved aside to
    SERVICEDIR.old-YYYYmmddTHHMMSS."""
    from synfast.backup.restore import restore
    from synfast.cli._render import print_json

    report = restore(backup, service_dir, verify=not no_verify, force=force,
                         jobs=jobs or None)
    if json_out:
        print_json(report.as_dict())
        return
    typer.echo(f"restored {report.backup} into {report.service_dir}: {report.files} files, "
               f"{report.environments} LMDB environments in {report.seconds:.2f} s"
               + ("" if report.verified else " (not verified)"))
    if report.moved_aside:
        typer.echo(f"the previous directory is now {report.moved_aside}")
    typer.echo(f"start the service again, e.g.: python -m synapse.servers.cortex "
               f"{report.service_dir}")


@app.command("list")
def list_command(
    root: str = typer.Argument(..., metavar="ROOT", help="The directory holding the backups."),
    prefix: str = typer.Option("", "--prefix", help="Only backups whose name starts so."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
) -> None:
    """List the complete backups under ROOT, oldest first."""
    from synfast.backup import manifest, retention
    from synfast.cli._render import print_json, size, table

    backups = retention.list_backups(root, prefix=prefix)
    if json_out:
        print_json([b.as_dict() for b in backups])
        return
    rows = []
    for b in backups:
        v = b.verified
        verified = "no" if v is None else (("yes " if v.get("ok") else "FAILED ")
                                           + str(v.get("time", ""))[:19])
        rows.append([b.name, manifest.iso(b.time)[:19], b.source, str(b.files),
                     str(b.environments), size(b.size_on_disk), verified])
    typer.echo(table(["name", "time (UTC)", "source", "files", "envs", "on disk", "verified"],
                     rows, right={3, 4, 5}))


@app.command("prune")
def prune_command(
    root: str = typer.Argument(..., metavar="ROOT", help="The directory holding the backups."),
    keep_last: int = typer.Option(0, "--keep-last", min=0, help="Keep the N newest."),
    keep_daily: int = typer.Option(0, "--keep-daily", min=0,
                                   help="Keep the newest of each of the last D days."),
    keep_weekly: int = typer.Option(0, "--keep-weekly", min=0,
                                    help="Keep the newest of each of the last W weeks."),
    keep_monthly: int = typer.Option(0, "--keep-monthly", min=0,
                                     help="Keep the newest of each of the last M months."),
    prefix: str = typer.Option("", "--prefix", help="Only backups whose name starts so."),
    dry_run: bool = typer.Option(False, "--dry-run", "-n", help="Only print what would go."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary."),
) -> None:
    """Remove complete synfast backups (by their manifest time) that no --keep-*
    rule keeps, and unfinished backups older than a day. Nothing else is touched."""
    from synfast.backup import manifest, retention
    from synfast.cli._render import print_json

    report = retention.prune(root, keep_last=keep_last, keep_daily=keep_daily,
                             keep_weekly=keep_weekly, keep_monthly=keep_monthly, prefix=prefix,
                             dry_run=dry_run)
    if json_out:
        print_json(report.as_dict())
        return
    verb = "would remove" if dry_run else "removed"
    for b, reasons in report.kept:
        typer.echo(f"keep    {b.name}  {manifest.iso(b.time)[:19]}  ({', '.join(reasons)})")
    for b in report.removed:
        typer.echo(f"{verb}  {b.name}  {manifest.iso(b.time)[:19]}")
    for p in report.partials_removed:
        typer.echo(f"{verb}  {p.path.name}  (unfinished backup)")
    for p, why in report.partials_kept:
        typer.echo(f"keep    {p.path.name}  (unfinished backup: {why})")
