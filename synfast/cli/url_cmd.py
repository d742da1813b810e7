"""``synfast url parse|check|probe|serve``: telepath URLs and the TLS they mean."""

from __future__ import annotations

from typing import Annotated

import typer

from synfast.cli._app import app

url_app = typer.Typer(
    help="Parse, check, probe and serve telepath ssl:// URLs.", no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(url_app, name="url")

_Url = Annotated[str, typer.Argument(
    metavar="URL",
    help="A telepath URL, SCHEME://USER:PASSWD@HOST:PORT/PATH?KEY=VALUE&... (only SCHEME "
    "and HOST are required).", show_default=False)]
_CertDirOpt = Annotated[str | None, typer.Option(
    "--certdir", metavar="DIR", help="Certdir (default: $SYN_CERT_DIR, else ~/.syn/certs).")]


@url_app.command("parse")
def parse_command(url: _Url) -> None:
    """Print the parts of URL as JSON (scheme, user, password masked, host, port with
    27492 the default for tcp and ssl, path, query)."""
    import json

    from synfast.tls.url import parse

    typer.echo(json.dumps(parse(url).as_dict(), indent=2))


@url_app.command("check")
def check_command(
    url: _Url,
    listen: Annotated[bool, typer.Option(
        "--listen", help="Check URL as a listener's (default: as a client's).")] = False,
    certdir: _CertDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Which certdir files URL would use and whether each is fine; exit 1 on any problem."""
    from synfast.cli._render import check_line, fail, print_json
    from synfast.tls.check import check

    u, checks = check(url, certdir, listen=listen)
    ok = all(c.ok for c in checks)
    if json_out:
        print_json({"url": str(u), "listen": listen, "ok": ok,
                    "checks": [c.as_dict() for c in checks]})
    else:
        for c in checks:
            typer.echo(check_line(c.ok, c.warning, c.what, c.detail))
        typer.echo(f"{u}: {'OK' if ok else 'PROBLEMS'}")
    if not ok:
        bad = "; ".join(f"{c.what}: {c.detail}" for c in checks if not c.ok)
        fail(u, bad)
        raise typer.Exit(1)


@url_app.command("probe")
def probe_command(
    url: _Url,
    certdir: _CertDirOpt = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds to wait for the connection and handshake.")] = 10.0,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Connect to URL, handshake, and show the peer's chain, TLS version, cipher and the
    verification result. Exit 1 when the connection or verification fails, or, before
    connecting, when URL asks for a client certificate (a user without a password, or
    certname=) that the certdir does not have: the error names the command that makes it."""
    from synfast.cli._render import fail, print_json
    from synfast.tls.probe import probe

    res = probe(url, certdir, timeout=timeout)
    if json_out:
        print_json(res.as_dict())
    else:
        typer.echo(f"address: {res.address}")
        typer.echo(f"tls: {res.tls_version or '-'} {res.cipher or ''}".rstrip())
        typer.echo(f"client certificate: {res.client_cert or 'none'}")
        for i, c in enumerate(res.chain):
            typer.echo(f"chain[{i}] ({c.source}): CN={c.subject} issuer={c.issuer} "
                       f"not-after={c.not_after[:10]} ({c.days_left} days) sha256={c.sha256}"
                       + (f" sans={','.join(c.sans)}" if c.sans else ""))
        if res.answer:
            typer.echo(f"server said: {res.answer}")
        typer.echo(f"verification: {'ok' if res.verified else 'FAILED'}"
                   + (f" ({res.verify_error})" if res.verify_error else ""))
    if not res.ok:
        fail(res.url, res.error)
        raise typer.Exit(1)


@url_app.command("serve")
def serve_command(
    url: _Url,
    certdir: _CertDirOpt = None,
    count: Annotated[int | None, typer.Option(
        "--count", min=1, help="Stop after this many connections (default: run until ^C).")
    ] = None,
    timeout: Annotated[float, typer.Option(
        "--timeout", min=0.1, help="Seconds allowed for each client's handshake.")] = 10.0,
) -> None:
    """A small TLS listener with URL's policy (hostname=, ca=, CRLs) that answers every
    client with one line, `client-cert: NAME` (or `none`), to test a deployment end to end.

    Port 0 picks a free port; the first line printed is `listening on HOST:PORT`.
    """
    import sys

    from synfast.tls.probe import serve

    def listening(host: str, port: int) -> None:
        typer.echo(f"listening on {host}:{port}")
        sys.stdout.flush()

    def event(ev) -> None:
        typer.echo(ev.line())
        sys.stdout.flush()

    serve(url, certdir, count=count, handshake_timeout=timeout, on_listen=listening,
          on_event=event)
