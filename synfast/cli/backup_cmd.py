"""``synfast backup | restore | verify | prune | list``: the nightly job and its tools."""

from __future__ import annotations

import os

import typer

from synfast.cli._app import app


@app.command("backup")
def backup_command(
    src: str = typer.Argument(..., metavar="SRC", help="The service directory to back up."),
    dst: str = typer.Argument(
        ..., metavar="DST", help="The backup's directory (must not exist; strftime fields such "
        "as %Y%m%d are expanded), - for a tar stream on stdout, or borg:REPO::ARCHIVE."),
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
                                     help="Do not record checksums in the manifest."),
    checksum_name: str = typer.Option(
        "xxh3", "--checksum", metavar="NAME",
        help="The checksum: xxh3 (XXH3-128, finds damage; the default) or sha256 "
        "(cryptographic, for manifests that are signed or published)."),
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
    scratch: str = typer.Option(
        None, "--scratch", metavar="DIR",
        help="For a stream with --lmdb-engine rebuild, compact or raw: where each environment "
        "is copied before it is streamed (room for the largest one)."),
    chunker_params: str = typer.Option(
        None, "--chunker-params", metavar="PARAMS",
        help="For borg: its --chunker-params (default fixed,16384: 4 LMDB pages)."),
    compression: str = typer.Option(None, "--compression", metavar="SPEC",
                                    help="For borg: its --compression (default lz4)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary at the end "
                                  "(on stderr when the backup is streamed to stdout)."),
    quiet: bool = typer.Option(False, "--quiet", "-q",
                               help="Print nothing but warnings and errors."),
    metrics_file: str = typer.Option(
        None, "--metrics-file", metavar="PATH",
        help="Write Prometheus metrics of this run to PATH (atomically; for node_exporter's "
        "textfile collector)."),
    wait: float = typer.Option(
        None, "--wait", metavar="SECONDS", min=0,
        help="Wait up to SECONDS for a running backup of SRC (or a prune of DST's directory) "
        "instead of failing with exit code 75."),
) -> None:
    """Back up a live service directory: every LMDB environment as a consistent
    snapshot, other files sparse-safe, atomically (DST.partial, then DST), or as
    one tar stream on stdout (DST -) whose last member is the manifest.

    One backup of a source runs at a time. Exit codes: 0 done, 1 failed, 2 bad usage,
    75 busy (a backup of SRC or a prune of DST's directory is running), 130 interrupted
    (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP); an interrupted command leaves
    nothing half-made behind.
    """
    from synfast.backup import metrics
    from synfast.backup.options import BackupOptions
    from synfast.backup.run import backup
    from synfast.cli._render import print_json, size, warn
    from synfast.cli.progress import Reporter

    metrics.check_path(metrics_file)
    reporter = Reporter(quiet=quiet or json_out, log_to_stderr=dst == "-")
    with metrics.recording(metrics_file, "backup", metrics.backup_labels(src, dst)) as run:
        try:
            options = BackupOptions(
                lmdb_engine=lmdb_engine, jobs=jobs or None, exclude=tuple(exclude),
                include_tmp=include_tmp, fsync=not no_fsync, checksum=not no_checksum,
                checksum_algorithm=checksum_name,
                bwlimit=bwlimit, ionice=ionice, drop_cache=not no_drop_cache,
                clean_partial=clean_partial, pre_cmd=pre_cmd, post_cmd=post_cmd, wait=wait)
            if dst == "-":
                return _stream_backup(src, options, scratch, reporter, json_out, quiet, run)
            from synfast.backup import borg

            if borg.is_borg(dst):
                return _borg_backup(src, borg.parse(dst, archive=True), options, scratch,
                                    reporter, json_out, quiet, chunker_params, compression, run)
            report = backup(src, dst, options, progress=reporter)
        finally:
            reporter.close()
        run.values = metrics.backup_values(report.manifest["totals"])
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


def _stream_backup(src: str, options: object, scratch: str | None, reporter: object,
                   json_out: bool, quiet: bool, run: object) -> None:
    """``backup SRC -``: the stream on stdout, everything said on stderr."""
    import json
    import sys

    from synfast.backup.stream import backup_stream
    from synfast.cli._render import size, warn
    from synfast.errors import UsageError

    if sys.stdout.isatty():
        raise UsageError(None, "will not write a tar stream to a terminal",
                         "redirect stdout to a file or pipe it into a program")
    sys.stdout.flush()
    report = backup_stream(src, sys.stdout.fileno(), options, scratch=scratch,  # type: ignore[arg-type]
                           progress=reporter)  # type: ignore[arg-type]
    from synfast.backup import metrics

    run.values = metrics.backup_values(  # type: ignore[attr-defined]
        report.manifest["totals"], written=report.bytes_streamed, stored=report.bytes_streamed)
    for rel in report.changed:
        warn(f"{report.source / rel}: changed while it was read; streamed as read")
    if json_out:
        print(json.dumps(report.as_dict(), indent=2), file=sys.stderr)
    elif not quiet:
        t = report.manifest["totals"]
        typer.echo(f"backup {src} streamed to stdout: {t['files']} files, {t['environments']} "
                   f"LMDB environments ({t['entries']} entries), {t['symlinks']} symlinks in "
                   f"{report.seconds:.2f} s; {size(report.bytes_streamed)} streamed", err=True)


def _borg_backup(src: str, target: object, options: object, scratch: str | None,
                 reporter: object, json_out: bool, quiet: bool, chunker_params: str | None,
                 compression: str | None, run: object) -> None:
    """``backup SRC borg:REPO::ARCHIVE``: the stream into borg import-tar."""
    from synfast.backup import borg
    from synfast.cli._render import print_json, size, warn

    report, stats = borg.backup_to_borg(
        src, target, options, scratch=scratch, progress=reporter,  # type: ignore[arg-type]
        chunker_params=chunker_params or borg.CHUNKER_PARAMS,
        compression=compression or borg.COMPRESSION)
    from synfast.backup import metrics

    run.values = metrics.backup_values(  # type: ignore[attr-defined]
        report.manifest["totals"], written=report.bytes_streamed,
        stored=int(stats.get("deduplicated_size") or 0))
    for rel in report.changed:
        warn(f"{report.source / rel}: changed while it was read; streamed as read")
    if json_out:
        print_json({**report.as_dict(), "borg": stats})
    elif not quiet:
        t = report.manifest["totals"]
        typer.echo(f"backup {target}: {t['files']} files, {t['environments']} LMDB "
                   f"environments ({t['entries']} entries) in {report.seconds:.2f} s; "
                   f"streamed {size(report.bytes_streamed)}; borg: original "
                   f"{size(stats.get('original_size'))}, compressed "
                   f"{size(stats.get('compressed_size'))}, deduplicated "
                   f"{size(stats.get('deduplicated_size'))}")


@app.command("export")
def export_command(
    backup: str = typer.Argument(..., metavar="BACKUP",
                                 help="A backup directory made by synfast backup."),
    out: str = typer.Argument(..., metavar="OUT", help="- for stdout, or a new tar file."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only errors."),
) -> None:
    """Stream a local backup as the tar stream backup SRC - writes (e.g. local every
    night, then off-site); every checksum is checked as it passes."""
    import sys

    from synfast.backup.export import export_stream
    from synfast.cli._render import size
    from synfast.errors import DestinationExists, UsageError
    from synfast.files import durable

    if out == "-":
        if sys.stdout.isatty():
            raise UsageError(None, "will not write a tar stream to a terminal",
                             "redirect stdout to a file or pipe it into a program")
        sys.stdout.flush()
        report = export_stream(backup, sys.stdout.fileno())
    else:
        if os.path.lexists(out):
            raise DestinationExists(out, "already exists", "choose a new name")
        tmp = durable.temp_sibling(out)
        with durable.new_file(tmp, 0o600, display=out) as fd:
            report = export_stream(backup, fd, label=out)
            os.fsync(fd)
        try:
            durable.place(tmp, out)
        except FileExistsError as err:
            durable.remove_path(tmp)
            raise DestinationExists(out, "appeared while it was written",
                                    "choose a new name") from err
    if not quiet:
        typer.echo(f"exported {report.source} to {'stdout' if out == '-' else out}: "
                   f"{size(report.bytes_streamed)} in {report.seconds:.2f} s", err=True)


def _is_stream(source: str) -> bool:
    """``-`` or a regular file: a tar stream rather than a backup directory."""
    return source == "-" or os.path.isfile(source)


@app.command("verify")
def verify_command(
    backup: str = typer.Argument(..., metavar="BACKUP",
                                 help="A backup directory made by synfast backup, a tar file "
                                 "of one, - for a stream on stdin, or borg:REPO::ARCHIVE."),
    no_checksum: bool = typer.Option(False, "--no-checksum",
                                     help="Skip reading contents (sizes, modes, walks only)."),
    scratch: str = typer.Option(None, "--scratch", metavar="DIR",
                                help="Where a stream is extracted to be checked (default: "
                                "the system's temporary directory); removed after."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Parallel checksums."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON object."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only problems."),
    metrics_file: str = typer.Option(
        None, "--metrics-file", metavar="PATH",
        help="Write Prometheus metrics of this run to PATH (atomically)."),
) -> None:
    """Check a backup against its manifest: files, sizes, modes, checksums, and a
    full walk of every LMDB environment. One line per problem; exit 1 if any."""
    from synfast.backup import borg, metrics
    from synfast.backup.verify import verify
    from synfast.cli._render import print_json

    metrics.check_path(metrics_file)
    with metrics.recording(metrics_file, "verify", metrics.verify_labels(backup)) as run:
        if borg.is_borg(backup):
            from synfast.backup import unstream

            target = borg.parse(backup, archive=True)
            report = borg.read_archive(target, lambda f: unstream.verify_stream(
                f, str(target), scratch=scratch))
        elif _is_stream(backup):
            from synfast.backup import unstream

            with unstream.open_stream(backup) as f:
                report = unstream.verify_stream(f, unstream.stream_label(backup),
                                                scratch=scratch)
        else:
            report = verify(backup, checksums=not no_checksum, jobs=jobs or None)
        run.values, run.failed = metrics.verify_values(report), not report.ok
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
                                 help="A backup directory made by synfast backup, a tar file "
                                 "of one, - for a stream on stdin, or borg:REPO::ARCHIVE."),
    service_dir: str = typer.Argument(..., metavar="SERVICEDIR", help="Where the service lives."),
    no_verify: bool = typer.Option(False, "--no-verify", help="Do not verify the backup first."),
    force: bool = typer.Option(False, "--force", help="Restore even while a process has an "
                               "environment of SERVICEDIR open (destroys a running service)."),
    jobs: int = typer.Option(0, "--jobs", "-j", min=0, help="Parallel copies."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary."),
) -> None:
    """Restore a backup as SERVICEDIR; an existing SERVICEDIR is moved aside to
    SERVICEDIR.old-YYYYmmddTHHMMSS."""
    from synfast.backup import borg
    from synfast.backup.restore import restore, restore_stream
    from synfast.cli._render import print_json

    if borg.is_borg(backup):
        target = borg.parse(backup, archive=True)
        report = borg.read_archive(target, lambda f: restore_stream(
            f, str(target), service_dir, force=force))
    elif _is_stream(backup):
        from synfast.backup import unstream

        with unstream.open_stream(backup) as f:
            report = restore_stream(f, unstream.stream_label(backup), service_dir, force=force)
    else:
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
    root: str = typer.Argument(..., metavar="ROOT", help="The directory holding the backups, "
                               "or borg:REPO."),
    prefix: str = typer.Option("", "--prefix", help="Only backups whose name starts so."),
    json_out: bool = typer.Option(False, "--json", help="Print a JSON array."),
    max_age: str = typer.Option(
        None, "--max-age", metavar="DURATION",
        help="Health check: exit 1 with one line when the newest complete backup is older "
        "than DURATION (26h, 2d, 90m), else 0 and one line."),
    verified: bool = typer.Option(
        False, "--verified", help="With --max-age: the newest backup must also have passed "
        "synfast verify."),
) -> None:
    """List the complete backups under ROOT (or the synfast archives of
    borg:REPO), oldest first."""
    from synfast.backup import borg, manifest, retention
    from synfast.cli._render import print_json, size, table

    if max_age is not None or verified:
        return _health(root, prefix, max_age, verified, json_out)
    if borg.is_borg(root):
        archives = borg.list_archives(borg.parse(root, archive=False))
        if json_out:
            print_json(archives)
        else:
            typer.echo(table(["name", "time", "state"],
                             [[a["name"], str(a["time"])[:19], "complete" if a["complete"]
                               else "unfinished (borg delete it)"] for a in archives],
                             right=set()))
        return
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


def _health(root: str, prefix: str, max_age: str | None, verified: bool,
            json_out: bool) -> None:
    """``list --max-age``: one line, exit 1 when the newest backup is stale."""
    from synfast.backup import borg, retention
    from synfast.cli._render import print_json
    from synfast.errors import UsageError

    if max_age is None:
        raise UsageError(None, "--verified goes with --max-age", "add --max-age 26h, say")
    limit = retention.parse_duration(max_age)
    if borg.is_borg(root):
        backups = borg.backup_infos(borg.parse(root, archive=False), prefix=prefix)
    else:
        backups = retention.list_backups(root, prefix=prefix, sizes=False)
    answer = retention.freshness(backups, root, max_age=limit, verified=verified)
    if json_out:
        print_json({"ok": answer.ok, "message": answer.line,
                    "newest": answer.newest.as_dict() if answer.newest else None})
    else:
        typer.echo(answer.line, err=not answer.ok)
    if not answer.ok:
        raise typer.Exit(1)


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
    metrics_file: str = typer.Option(
        None, "--metrics-file", metavar="PATH",
        help="Write Prometheus metrics of this run to PATH (atomically)."),
    wait: float = typer.Option(
        None, "--wait", metavar="SECONDS", min=0,
        help="Wait up to SECONDS for backups running into ROOT instead of failing with "
        "exit code 75."),
) -> None:
    """Remove complete synfast backups (by their manifest time) that no --keep-*
    rule keeps, and unfinished backups older than a day. Nothing else is touched.
    A prune never runs beside a backup into ROOT."""
    import os

    from synfast.backup import manifest, metrics, retention
    from synfast.cli._render import print_json

    metrics.check_path(metrics_file)
    with metrics.recording(metrics_file, "prune", {"root": os.path.abspath(root)}) as run:
        report = retention.prune(root, keep_last=keep_last, keep_daily=keep_daily,
                                 keep_weekly=keep_weekly, keep_monthly=keep_monthly,
                                 prefix=prefix, dry_run=dry_run, wait=wait)
        run.values = metrics.prune_values(report)
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
