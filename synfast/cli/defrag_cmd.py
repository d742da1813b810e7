"""``synfast defrag``: rebuild a stopped service's environments in place."""

from __future__ import annotations

import typer

from synfast.cli._app import app


@app.command("defrag")
def defrag_command(
    service_dir: str = typer.Argument(..., metavar="SERVICEDIR",
                                      help="The stopped service's directory."),
    dry_run: bool = typer.Option(
        False, "--dry-run", "-n", help="Only predict, per environment, the size after and the "
        "saving (safe beside a running service)."),
    min_saving: float = typer.Option(
        10.0, "--min-saving", metavar="PCT", min=0, max=99,
        help="Leave alone environments a rebuild is predicted to shrink by less than PCT%."),
    no_keep: bool = typer.Option(
        False, "--no-keep", help="Do not keep the old data files under "
        "SERVICEDIR.defrag-old-YYYYmmddTHHMMSS/."),
    pre_cmd: str = typer.Option(None, "--pre-cmd", metavar="CMD",
                                help="Shell command to run first (e.g. stop the service)."),
    post_cmd: str = typer.Option(
        None, "--post-cmd", metavar="CMD",
        help="Shell command to run at the end, even on failure (e.g. start the service)."),
    json_out: bool = typer.Option(False, "--json", help="Print one JSON summary."),
    metrics_file: str = typer.Option(
        None, "--metrics-file", metavar="PATH",
        help="Write Prometheus metrics of this run to PATH (atomically)."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="Print only warnings and errors."),
) -> None:
    """Rebuild every LMDB environment of a stopped service in place, one at a time,
    each checked before it is swapped in: the Synapse guide's "restore from a cold
    backup" in one command. Refused while any environment is open.

    Exit codes: 0 done, 1 failed (environments done so far stay rebuilt), 2 bad usage,
    130 interrupted (Ctrl-C), 143 terminated (SIGTERM), 129 hung up (SIGHUP).
    """
    import os

    from synfast.backup import metrics
    from synfast.backup.defrag import defrag
    from synfast.cli._render import print_json, size, table
    from synfast.cli.progress import Reporter

    metrics.check_path(metrics_file)
    labels = {"source": os.path.abspath(service_dir)}
    reporter = Reporter(quiet=quiet or json_out or dry_run, label="defrag")
    with metrics.recording(None if dry_run else metrics_file, "defrag", labels) as run:
        try:
            report = defrag(service_dir, min_saving=min_saving / 100, dry_run=dry_run,
                            keep=not no_keep, pre_cmd=pre_cmd, post_cmd=post_cmd,
                            progress=reporter)
        finally:
            reporter.close()
        run.values = metrics.defrag_values(report)
    if json_out:
        print_json(report.as_dict())
        return
    if quiet:
        return
    rows = []
    for e in report.environments:
        after = e.after if e.after is not None else e.predicted
        what = {"rebuild": "would rebuild", "rebuilt": "rebuilt",
                "skip": f"left alone ({e.reason})"}[e.action]
        rows.append([e.rel or ".", size(e.allocated), size(after), f"{e.saving:.0%}", what])
    typer.echo(table(["environment", "now", "after" + (" (predicted)" if dry_run else ""),
                      "predicted saving", ""], rows, right={1, 2, 3}))
    d = report.as_dict()
    before = d["allocated_before_bytes"]
    after = d["predicted_after_bytes" if dry_run else "allocated_after_bytes"]
    for p in report.leftovers_removed:
        typer.echo(f"removed {p}, left by an interrupted defrag")
    if dry_run:
        typer.echo(f"{len(report.to_rebuild)} of {len(report.environments)} environments "
                   f"would be rebuilt: {size(before)} now, about {size(after)} after "
                   f"(saving {size(before - after)}), in about "
                   f"{max(report.expected_seconds, 0.1):.1f} s")
        return
    typer.echo(f"defrag {report.service}: {len(report.rebuilt)} of {len(report.environments)} "
               f"environments rebuilt in {report.seconds:.2f} s; {size(before)} -> "
               f"{size(after)}")
    if report.old_dir is not None:
        typer.echo(f"the old data files are in {report.old_dir}; remove it once the service "
                   "runs well on the new ones (or pass --no-keep next time)")
