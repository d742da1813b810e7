"""The Typer application object and the global options every command shares."""

from __future__ import annotations

import typer

from synfast import __version__


class State:
    """What the global options set for the command that runs (a plain class:
    importing ``dataclasses`` would cost every command a few milliseconds)."""

    debug: bool = False


state = State()

app = typer.Typer(
    name="synfast",
    help="Fast, safe copies and backups of LMDB environments and sparse files.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    # Plain help: rendering it with rich costs ~80 ms of imports on every --help.
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"synfast {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Print the version and exit."
    ),
    debug: bool = typer.Option(
        False, "--debug", help="Show tracebacks instead of one-line errors."),
) -> None:
    """Fast, safe copies and backups of LMDB environments and sparse files.

    Exit codes: 0 done, 1 failed, 2 bad usage, 130 interrupted (Ctrl-C), 143 terminated
    (SIGTERM); an interrupted command leaves nothing half-made behind.
    """
    state.debug = debug
