"""``synfast easycert``: Synapse's easycert command line, flag for flag."""

from __future__ import annotations

import sys
from typing import Annotated

import typer

from synfast.cli._app import app


@app.command("easycert")
def easycert_command(
    name: Annotated[str, typer.Argument(
        metavar="NAME",
        help="Common name of the certificate (the CSR file to sign with --sign-csr, the file "
        "to import with --importfile, the CA with --crl).", show_default=False)],
    certdir: Annotated[str | None, typer.Option(
        "--certdir", metavar="DIR",
        help="Directory for certs/keys (default: $SYN_CERT_DIR, else ~/.syn/certs).")] = None,
    importfile: Annotated[str | None, typer.Option(
        "--importfile", metavar="{cas,hosts,users}",
        help="Copy the file NAME (.crt, .key or .p12) into that directory of the certdir.")
    ] = None,
    ca: Annotated[bool, typer.Option("--ca", help="Make a CA certificate (CA/CRL signer).")
                  ] = False,
    crl: Annotated[bool, typer.Option("--crl", help="(Re)issue the CRL of the CA NAME.")
                   ] = False,
    p12: Annotated[bool, typer.Option(
        "--p12", help="Bundle user NAME's key, cert and CA cert as users/NAME.p12.")] = False,
    code: Annotated[bool, typer.Option("--code", help="Make a code-signing certificate.")
                    ] = False,
    server: Annotated[bool, typer.Option("--server", help="Make a server (host) certificate.")
                      ] = False,
    server_sans: Annotated[str | None, typer.Option(
        "--server-sans", metavar="SANS",
        help="Extra subject alternative names of a server cert: DNS:x,email:y,URI:z.")] = None,
    csr: Annotated[bool, typer.Option(
        "--csr", help="Make a key and a certificate signing request instead of a cert.")
    ] = False,
    sign_csr: Annotated[bool, typer.Option(
        "--sign-csr", help="Sign the CSR file NAME (needs --signas; --server for a host).")
    ] = False,
    signas: Annotated[str | None, typer.Option(
        "--signas", metavar="CA", help="Sign with the certdir's CA of that name.")] = None,
    revokeas: Annotated[str | None, typer.Option(
        "--revokeas", metavar="CA",
        help="Revoke certificate NAME (user; --server, --ca, --code for others) in the CRL "
        "of CA.")] = None,
    days: Annotated[int, typer.Option(
        "--days", min=1, help="Validity in days of a new certificate or CRL.")] = 3650,
    key_type: Annotated[str, typer.Option(
        "--key-type", metavar="TYPE",
        help="rsa4096 (default), rsa2048 or ecdsa-p256. Keep RSA for CAs that Synapse "
        "peers must verify: they accept RSA CAs only.")] = "rsa4096",
    sans: Annotated[str | None, typer.Option(
        "--sans", metavar="SANS",
        help="Subject alternative names for user (or server) certs: DNS:x,email:y,URI:z.")
    ] = None,
) -> None:
    """Make CA, host, user and code-signing certificates (drop-in for Synapse's easycert).

    Prints `key saved: PATH`, `cert saved: PATH`, `csr saved: PATH` and
    `client cert saved: PATH`. Nothing is ever overwritten: an existing file
    prints `file exists: PATH` on stdout and exits 1, with nothing written.
    Keys are written 0600 in 0700 directories.

    Examples: `synfast easycert --ca vertex`;
    `synfast easycert --server cortex.vertex.link --signas vertex`;
    `synfast easycert --signas vertex visi@vertex.link`;
    `synfast easycert --p12 visi@vertex.link`;
    `synfast easycert --sign-csr --server --signas vertex path/to/host.csr`.
    """
    from synfast.tls import easycert
    from synfast.tls.layout import CertFileExists

    request = easycert.Request(
        name, certdir=certdir, importfile=importfile, ca=ca, crl=crl, p12=p12, code=code,
        server=server, server_sans=server_sans, csr=csr, sign_csr=sign_csr, signas=signas,
        revokeas=revokeas, days=days, key_type=key_type, sans=sans)
    try:
        lines = easycert.run(request)
    except CertFileExists as err:
        # easycert's own words, on stdout as easycert prints them.
        typer.echo(f"file exists: {err.path}")
        sys.stdout.flush()
        raise typer.Exit(1) from None
    for line in lines:
        typer.echo(line)
