"""The ``synfast`` command line: a thin Typer face on the synfast API.

Command modules register themselves on the Typer app when imported.  They
import the API (and anything heavy) inside the command functions, and
:func:`main` imports only the module of the command being run (all of them
for ``--help`` or an unknown name), so quick commands start fast: building
every command's parameters costs Typer about 20 ms per invocation.
"""

from __future__ import annotations

import copy
import importlib
import os
import sys
from typing import TYPE_CHECKING, TypeVar

T = TypeVar("T", bound=BaseException)

if TYPE_CHECKING:
    import typer
    import typer.models

__all__ = ["app", "main", "COMMANDS"]

#: Each command name and the module that registers it, in the order ``--help`` lists them.
COMMANDS: dict[str, str] = {
    "copy": "copy_cmd", "scan": "scan_cmd", "backup": "backup_cmd", "export": "backup_cmd",
    "verify": "backup_cmd",
    "restore": "backup_cmd", "list": "backup_cmd", "prune": "backup_cmd",
    "defrag": "defrag_cmd",
    "easycert": "easycert_cmd", "certs": "certs_cmd", "url": "url_cmd",
}


def load_commands(argv: list[str] | None = None) -> typer.Typer:
    """Register the command that ``argv`` names, or every command when it names
    none of them; return the app.  Global options are flags, so the first word
    that is not an option is the command."""
    from synfast.cli._app import app

    name = next((a for a in argv if not a.startswith("-")), None) if argv is not None else None
    wanted = [COMMANDS[name]] if name in COMMANDS else list(dict.fromkeys(COMMANDS.values()))
    for module in wanted:
        importlib.import_module(f"synfast.cli.{module}")
    return app


def for_line(app: typer.Typer, words: list[str]) -> typer.Typer:
    """A shallow copy of ``app`` that holds only what the command line ``words``
    reaches: the command they name, with all its options, or, when they name
    none (``synfast --help``, ``synfast url``), every command with its name and
    help alone.  Typer builds a command's options from its function's signature
    when it runs the app (about a millisecond each); ``--help`` would build them
    all to print one line per command.  The apps themselves are left whole."""
    lean = copy.copy(app)
    at = next((i for i, w in enumerate(words) if not w.startswith("-")), None)
    name = words[at] if at is not None else None
    rest = words[at + 1:] if at is not None else []
    named = [c for c in app.registered_commands if name is not None and c.name == name]
    groups = [g for g in app.registered_groups if name is not None and g.name == name]
    if named or groups:
        lean.registered_commands = named
        lean.registered_groups = [_group(g, for_line(g.typer_instance, rest)) for g in groups]
    else:
        lean.registered_commands = [_listed(c) for c in app.registered_commands]
        lean.registered_groups = [_group(g, _empty(g.typer_instance))
                                  for g in app.registered_groups]
    return lean


def _group(info: typer.models.TyperInfo, app: typer.Typer) -> typer.models.TyperInfo:
    lean = copy.copy(info)
    lean.typer_instance = app
    return lean


def _empty(app: typer.Typer | None) -> typer.Typer:
    """A group as a list of commands shows it: its help, no commands."""
    lean = copy.copy(app)
    lean.registered_commands, lean.registered_groups = [], []
    return lean


def _listed(info: typer.models.CommandInfo) -> typer.models.CommandInfo:
    """A command as a list of commands shows it: its name and help, no options."""
    def listed() -> None:  # pragma: no cover - the line named no command to run
        raise AssertionError("a listed command is never run")

    assert info.callback is not None
    listed.__doc__, listed.__name__ = info.callback.__doc__, info.callback.__name__
    lean = copy.copy(info)
    lean.callback = listed
    return lean


def __getattr__(name: str) -> object:
    # ``synfast.cli.app`` for programs that embed the CLI: every command registered.
    if name == "app":
        return load_commands()
    raise AttributeError(name)


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m synfast``.

    A :class:`~synfast.errors.SynfastError` becomes one line on stderr and its exit
    code; ``--debug`` lets the traceback through instead.  Ctrl-C exits 130 and
    SIGTERM 143, each after whatever was being built is removed (SIGTERM is
    raised as :class:`synfast.errors.Terminated`, a ``KeyboardInterrupt``).  Run as a program
    (``argv`` None), it ends with ``os._exit`` once the output is flushed:
    tearing the interpreter down (every module of Typer and the API) takes
    25 ms that the work is done without.  Every file is closed and every worker
    thread joined by then.
    """
    from synfast.limits import raise_open_files

    # Like Go programs: the soft limit on open files (1,024 under systemd) up
    # to the hard one, for services with thousands of environments.
    raise_open_files()
    if argv is not None:
        _run(argv)
        return
    _terminate_as_interrupt()
    try:
        _run(sys.argv[1:])
        code = 0
    except SystemExit as done:
        code = _exit_code(done.code)
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except OSError:  # a closed pipe: nothing left to say
        code = code or 1
    os._exit(code)


def _terminate_as_interrupt() -> None:
    """SIGTERM and SIGHUP raise :class:`~synfast.errors.Terminated` in the main
    thread, as Ctrl-C raises ``KeyboardInterrupt``: what is being built is
    removed, and the process exits 143 (SIGTERM) or 129 (SIGHUP)."""
    import signal

    from synfast import workers
    from synfast.errors import Terminated

    def handler(signum: int, _frame: object) -> None:
        workers.note_stop(signum)
        raise Terminated(signum)

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGHUP, handler)


def _caused_by(err: BaseException, kind: type[T]) -> T | None:
    seen: BaseException | None = err
    while seen is not None:
        if isinstance(seen, kind):
            return seen
        seen = seen.__cause__ or seen.__context__
    return None


def _exit_code(code: object) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code
    print(code, file=sys.stderr)
    return 1


def _run(args: list[str]) -> None:
    from synfast.cli._app import state
    from synfast.errors import SynfastError
    from synfast.errors import Terminated

    try:
        for_line(load_commands(args), args)(args=args, prog_name="synfast")
    except SystemExit as done:
        # Typer turns KeyboardInterrupt into exit code 130; SIGTERM's is 143.
        term = _caused_by(done, Terminated) if done.code == 130 else None
        if term is not None:
            sys.exit(term.exit_code)
        raise
    except SynfastError as err:
        if state.debug:
            raise
        print(f"synfast: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except Terminated as term:
        if state.debug:
            raise
        print("synfast: terminated", file=sys.stderr)
        sys.exit(term.exit_code)
    except KeyboardInterrupt:
        if state.debug:
            raise
        print("synfast: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if state.debug:
            raise
        from synfast.errors import convert_error

        print(f"synfast: error: {convert_error(err)}", file=sys.stderr)
        sys.exit(1)
