"""The ``synfast`` command line: a thin Typer face on the synfast API.

Command modules register themselves on :data:`app` when imported.  They import
the API (and anything heavy) inside the command functions, so ``synfast --help``
and quick commands start fast.
"""

from __future__ import annotations

import sys

# Each import registers its commands on `app`, in the order `--help` lists them.
from synfast.cli._app import app, state
from synfast.cli import copy_cmd as _copy_cmd  # noqa: E402,F401,I001
from synfast.cli import scan_cmd as _scan_cmd  # noqa: E402,F401
from synfast.cli import backup_cmd as _backup_cmd  # noqa: E402,F401
from synfast.cli import easycert_cmd as _easycert_cmd  # noqa: E402,F401
from synfast.cli import certs_cmd as _certs_cmd  # noqa: E402,F401
from synfast.cli import url_cmd as _url_cmd  # noqa: E402,F401

__all__ = ["app", "main"]


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script and of ``python -m synfast``.

    A :class:`~synfast.errors.SynfastError` becomes one line on stderr and its exit
    code; ``--debug`` lets the traceback through instead.
    """
    from synfast.errors import SynfastError

    try:
        app(args=argv, prog_name="synfast")
    except SynfastError as err:
        if state.debug:
            raise
        print(f"synfast: error: {err}", file=sys.stderr)
        sys.exit(err.exit_code)
    except KeyboardInterrupt:
        if state.debug:
            raise
        print("synfast: interrupted", file=sys.stderr)
        sys.exit(130)
    except OSError as err:
        if state.debug:
            raise
        from synfast.errors import from_oserror

        print(f"synfast: error: {from_oserror(err)}", file=sys.stderr)
        sys.exit(1)
