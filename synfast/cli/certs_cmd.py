"""``synfast certs list|verify``: what a certdir holds, and whether a cert is fit for use."""

from __future__ import annotations

from typing import Annotated

import typer

from synfast.cli._app import app

certs_app = typer.Typer(
    help="Inspect the certificates of a certdir.", no_args_is_help=True,
    rich_markup_mode=None,
    context_settings={"help_option_names": ["-h", "--help"]})
app.add_typer(certs_app, name="certs")

_CertDirOpt = Annotated[str | None, typer.Option(
    "--certdir", metavar="DIR", help="Certdir (default: $SYN_CERT_DIR, else ~/.syn/certs).")]


@certs_app.command("list")
def list_command(
    certdir: _CertDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Every certificate: kind, name, issuer, expiry and days left, key present and matching.

    Expired, soon-expiring (under 30 days) and revoked certificates are marked.
    """
    from synfast.cli._render import print_json, table
    from synfast.tls.certdir import CertDir

    cd = CertDir(certdir)
    rows = cd.inventory()
    if json_out:
        print_json({"certdir": str(cd.path), "certificates": [r.as_dict() for r in rows]})
        return
    if not rows:
        typer.echo(f"no certificates in {cd.path}")
        return

    def yn(v: bool | None) -> str:
        return "-" if v is None else "yes" if v else "NO"

    marks = {"ok": "", "expiring": "EXPIRING", "expired": "EXPIRED", "revoked": "REVOKED",
             "not-yet-valid": "NOT YET VALID", "unreadable": "UNREADABLE"}
    out = [[r.kind, r.name, r.issuer or "-",
            r.not_after.strftime("%Y-%m-%d") if r.not_after else "-",
            str(r.days_left) if r.days_left is not None else "-",
            "yes" if r.key_present else "no", yn(r.key_matches),
            marks.get(r.status, r.status) + (f" {r.error}" if r.error else "")] for r in rows]
    typer.echo(table(["KIND", "NAME", "ISSUER", "NOT AFTER", "DAYS", "KEY", "MATCHES", "STATUS"],
                     out, right={4}))


@certs_app.command("verify")
def verify_command(
    name: Annotated[str, typer.Argument(metavar="NAME", help="Certificate name.",
                                        show_default=False)],
    kind: Annotated[str | None, typer.Option(
        "--kind", metavar="KIND", help="ca, host, user or code (needed when NAME is several).")
    ] = None,
    certdir: _CertDirOpt = None,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON.")] = False,
) -> None:
    """Check a certificate: chain to a CA of the certdir, dates, key, usage, revocation.

    Exits 1 with the reasons when any check fails.
    """
    from synfast.cli._render import check_line, fail, print_json
    from synfast.tls.certdir import CertDir

    rep = CertDir(certdir).verify(name, kind)
    if json_out:
        print_json({"kind": rep.kind, "name": rep.name, "path": str(rep.path), "ok": rep.ok,
                    "checks": [c.as_dict() for c in rep.checks]})
    else:
        for c in rep.checks:
            typer.echo(check_line(c.ok, c.warning, c.what, c.detail))
        typer.echo(f"{rep.kind} {rep.name}: {'OK' if rep.ok else 'FAILED'}")
    if not rep.ok:
        reasons = "; ".join(f"{c.what}: {c.detail}" for c in rep.problems)
        fail(rep.path, reasons)
        raise typer.Exit(1)
