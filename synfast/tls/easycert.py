"""Synapse's ``easycert`` command, flag for flag, as one request to the certdir.

``easycert`` chooses what to do from a set of flags (``--ca``, ``--server``,
``--csr``, ``--sign-csr``, ``--p12``, ``--crl``, ``--revokeas``,
``--importfile`` ...); :func:`run` makes the same choice, in easycert's order of
precedence, and returns the lines easycert prints (``key saved: PATH`` ...), so
that ``synfast easycert`` only parses flags and prints.  An existing file
raises :class:`~synfast.tls.layout.CertFileExists`, which easycert reports as
``file exists: PATH`` on stdout.
"""

from __future__ import annotations

from dataclasses import dataclass

from synfast.errors import UsageError
from synfast.tls.certdir import CertDir
from synfast.tls.layout import DEFAULT_DAYS, KEY_TYPES

#: The certdir directories ``--importfile`` copies into.
IMPORT_DIRS = ("cas", "hosts", "users")


@dataclass
class Request:
    """One easycert invocation: ``name`` and the flags, as easycert names them."""

    name: str
    certdir: str | None = None
    importfile: str | None = None
    ca: bool = False
    crl: bool = False
    p12: bool = False
    code: bool = False
    server: bool = False
    server_sans: str | None = None
    csr: bool = False
    sign_csr: bool = False
    signas: str | None = None
    revokeas: str | None = None
    days: int = DEFAULT_DAYS
    key_type: str = KEY_TYPES[0]
    sans: str | None = None

    def check(self) -> None:
        """Refuse flag values that cannot work (exit code 2)."""
        if self.key_type not in KEY_TYPES:
            raise UsageError(None, f"--key-type {self.key_type!r} is not one of "
                             f"{', '.join(KEY_TYPES)}")
        if self.importfile is not None and self.importfile not in IMPORT_DIRS:
            raise UsageError(None, f"--importfile {self.importfile!r} is not one of "
                             f"{', '.join(IMPORT_DIRS)}")
        if self.sign_csr and self.signas is None:
            raise UsageError(None, "--sign-csr requires --signas", "name the CA that signs")


def run(req: Request) -> list[str]:
    """Do what easycert does for ``req``; return the lines it prints."""
    req.check()
    cd = CertDir(req.certdir)
    name, days, key_type = req.name, req.days, req.key_type
    host_sans = ",".join(s for s in (req.server_sans, req.sans) if s) or None
    if req.crl:
        return [f"CRL saved: {cd.gen_crl(name, days=days)}"]
    if req.revokeas is not None:
        kind = "code" if req.code else "host" if req.server else "ca" if req.ca else "user"
        cd.revoke(req.revokeas, kind, name, days=days)
        return [f"Certificate revoked: {name}", f"CRL updated: {req.revokeas}"]
    if req.importfile is not None:
        return [f"copied {name} to {cd.import_file(req.importfile, name)}"]
    if req.p12:
        saved = cd.p12(name)
    elif req.sign_csr:
        kind = "host" if req.server else "code" if req.code else "user"
        saved = cd.sign_csr(kind, name, req.signas or "", days=days,
                            sans=host_sans if kind == "host" else req.sans)
    elif req.csr:
        if req.ca:
            raise UsageError(None, "a CSR for a CA certificate is not supported",
                             "make the CA here with --ca, optionally --signas another CA")
        kind = "host" if req.server else "user"
        saved = cd.csr(kind, name, key_type=key_type,
                       sans=host_sans if kind == "host" else req.sans)
    elif req.ca:
        saved = cd.ca(name, signas=req.signas, days=days, key_type=key_type)
    elif req.server:
        saved = cd.host(name, signas=req.signas, sans=host_sans, days=days, key_type=key_type)
    elif req.code:
        saved = cd.code(name, signas=req.signas, days=days, key_type=key_type)
    else:
        saved = cd.user(name, signas=req.signas, sans=req.sans, days=days, key_type=key_type)
    return [s.line() for s in saved]
