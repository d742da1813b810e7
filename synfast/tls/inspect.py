"""Inspection: what a certdir holds, and whether a certificate is fit for use.

:func:`inventory` lists every certificate with its state (expiry, key present
and matching, revoked) for ``synfast certs list``.  :func:`verify` checks one
certificate as a peer would, plus what only the certdir knows: its chain up to
a CA of the certdir (signatures, CA flags, dates), its own dates, its key, the
usage its kind needs, the SAN of a host, and revocation by every CA on the
chain that has a CRL.  Each step is a :class:`Check` of a :class:`VerifyReport`.
"""

from __future__ import annotations

import datetime as _dt
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.x509.oid import ExtendedKeyUsageOID

from synfast.tls.crl import is_revoked
from synfast.tls.layout import KINDS, SOON_DAYS, CertError, kind_dir, kind_name, validate_name
from synfast.tls.store import CertStore
from synfast.tls.x509 import (
    common_name,
    extension,
    fingerprint,
    is_ca,
    key_matches,
    load_cert_file,
    load_key_file,
    signed_by,
    utc_now,
)

__all__ = ["CertInfo", "Check", "VerifyReport", "inventory", "locate", "verify"]

_MAX_CHAIN = 8


@dataclass
class Check:
    """One verification step: what was checked, whether it passed, and the detail."""

    what: str
    ok: bool
    detail: str = ""
    warning: bool = False

    def as_dict(self) -> dict:
        return {"check": self.what, "ok": self.ok, "detail": self.detail,
                "warning": self.warning}


@dataclass
class VerifyReport:
    """The outcome of :func:`verify`; ``ok`` is False when any check failed."""

    kind: str
    name: str
    path: Path
    checks: list[Check] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(c.ok for c in self.checks)

    @property
    def problems(self) -> list[Check]:
        return [c for c in self.checks if not c.ok]

    def add(self, what: str, ok: bool, detail: str = "", warning: bool = False) -> bool:
        self.checks.append(Check(what, ok, detail, warning))
        return ok


@dataclass
class CertInfo:
    """One row of ``certs list``."""

    kind: str
    name: str
    path: Path
    subject: str | None
    issuer: str | None
    not_after: _dt.datetime | None
    days_left: int | None
    key_present: bool
    key_matches: bool | None
    status: str  # ok, expiring, expired, revoked, not-yet-valid, unreadable
    error: str = ""

    def as_dict(self) -> dict:
        return {
            "kind": self.kind, "name": self.name, "path": str(self.path),
            "subject": self.subject, "issuer": self.issuer,
            "not_after": self.not_after.isoformat() if self.not_after else None,
            "days_left": self.days_left, "key_present": self.key_present,
            "key_matches": self.key_matches, "status": self.status, "error": self.error,
        }


# -- inventory -------------------------------------------------------------------

def inventory(store: CertStore, *, now: _dt.datetime | None = None) -> list[CertInfo]:
    """Every certificate of the certdir with its state, CAs first."""
    now = now or utc_now()
    rows = []
    for kind in KINDS:
        for name in store.names(kind):
            rows.append(_info(store, kind, name, now))
    return rows


def _info(store: CertStore, kind: str, name: str, now: _dt.datetime) -> CertInfo:
    path = store.path / kind_dir(kind) / f"{name}.crt"
    keyp = path.with_suffix(".key")
    try:
        validate_name(name)
        cert = load_cert_file(path)
    except CertError as err:
        return CertInfo(kind, name, path, None, None, None, None, keyp.is_file(), None,
                        "unreadable", err.message)
    matches = None
    if keyp.is_file():
        try:
            matches = key_matches(load_key_file(keyp), cert)
        except CertError:
            matches = False
    not_after = cert.not_valid_after_utc
    days_left = (not_after - now).days
    if now < cert.not_valid_before_utc:
        status = "not-yet-valid"
    elif now > not_after:
        status = "expired"
    elif days_left < SOON_DAYS:
        status = "expiring"
    else:
        status = "ok"
    issuer = store.find_issuer(cert) if cert.issuer != cert.subject else name
    if issuer is not None and issuer != name:
        try:
            if is_revoked(store, cert, issuer):
                status = "revoked"
        except CertError:
            pass
    return CertInfo(kind, name, path, common_name(cert.subject),
                    common_name(cert.issuer), not_after, days_left, keyp.is_file(),
                    matches, status)


# -- verification ----------------------------------------------------------------

def locate(store: CertStore, name: str, kind: str | None = None) -> str:
    """The kind of certificate ``name``, searching all kinds when ``kind`` is None."""
    validate_name(name)
    if kind is not None:
        kind = kind_name(kind)
        if not store.cert_path(kind, name).is_file():
            raise CertError(store.cert_path(kind, name), "no such certificate",
                            "see `synfast certs list`")
        return kind
    found = [k for k in KINDS if store.cert_path(k, name).is_file()]
    if not found:
        raise CertError(store.path, f"no certificate named {name!r}",
                        "see `synfast certs list`")
    if len(found) > 1:
        raise CertError(store.path, f"{name!r} is a certificate of several kinds: "
                        f"{', '.join(found)}", "choose one with --kind")
    return found[0]


def verify(store: CertStore, name: str, kind: str | None = None, *,
           now: _dt.datetime | None = None, need_key: bool | None = None) -> VerifyReport:
    """Check a certificate as a peer would, plus what only the certdir knows.

    Chain up to a CA of the certdir (signatures, CA flags, dates), its own
    dates, its key, the usage its kind needs, and revocation by every CA on
    the chain that has a CRL.  A missing key is a problem for everything but
    a CA, which may be a trust anchor imported without one.
    """
    now = now or utc_now()
    kind = locate(store, name, kind)
    path = store.cert_path(kind, name)
    rep = VerifyReport(kind, name, path)
    try:
        cert = load_cert_file(path)
    except CertError as err:
        rep.add("readable", False, err.message)
        return rep
    rep.add("readable", True, f"CN={common_name(cert.subject)}, sha256 {fingerprint(cert)}")
    cn = common_name(cert.subject)
    rep.add("name", cn == name, f"common name is {cn!r}")
    _check_dates(rep, "dates", cert, now)
    keyp = store.key_path(kind, name)
    if need_key is None:
        need_key = kind != "ca"
    if keyp.is_file():
        try:
            ok = key_matches(load_key_file(keyp), cert)
            rep.add("key", ok, f"{keyp} {'matches' if ok else 'does NOT match'}")
        except CertError as err:
            rep.add("key", False, f"{keyp}: {err.message}")
    else:
        rep.add("key", not need_key, f"{keyp} missing", warning=not need_key)
    _check_usage(rep, kind, name, cert)
    _check_chain(store, rep, cert, now)
    return rep


def _check_chain(store: CertStore, rep: VerifyReport, cert: x509.Certificate, now) -> None:
    current, seen = cert, set()
    for _ in range(_MAX_CHAIN):
        if current.issuer == current.subject and signed_by(current, current):
            anchor = common_name(current.subject)
            in_dir = anchor is not None and (store.path / "cas" / f"{anchor}.crt").is_file()
            if current is cert and rep.kind != "ca":
                rep.add("chain", False, "self-signed, not issued by a CA")
                return
            rep.add("chain", in_dir, f"ends at CA {anchor}" + ("" if in_dir else
                    " which is not in cas/"))
            return
        ca = store.find_issuer(current)
        if ca is None:
            rep.add("chain", False, f"issuer {common_name(current.issuer)!r} is not a CA "
                    "of the certdir (or its signature does not verify)")
            return
        if ca in seen:
            rep.add("chain", False, f"loop at CA {ca}")
            return
        seen.add(ca)
        ca_cert = store.load_cert("ca", ca)
        if not is_ca(ca_cert):
            rep.add("chain", False, f"issuer {ca} is not marked as a CA")
            return
        _check_dates(rep, f"CA {ca} dates", ca_cert, now)
        _check_revocation(store, rep, current, ca)
        current = ca_cert
    rep.add("chain", False, "chain too long")


def _check_revocation(store: CertStore, rep: VerifyReport, cert: x509.Certificate,
                      ca: str) -> None:
    try:
        revoked = is_revoked(store, cert, ca)
    except CertError as err:
        rep.add(f"revocation by {ca}", False, err.message)
        return
    if revoked is None:
        rep.add(f"revocation by {ca}", True, "no CRL", warning=False)
    else:
        rep.add(f"revocation by {ca}", not revoked, "REVOKED" if revoked else "not revoked")


def _check_dates(rep: VerifyReport, what: str, cert: x509.Certificate, now) -> None:
    nb, na = cert.not_valid_before_utc, cert.not_valid_after_utc
    if now < nb:
        rep.add(what, False, f"not valid before {nb:%Y-%m-%d %H:%M} UTC")
    elif now > na:
        rep.add(what, False, f"EXPIRED on {na:%Y-%m-%d %H:%M} UTC")
    else:
        left = (na - now).days
        rep.add(what, True, f"valid until {na:%Y-%m-%d}, {left} days left",
                warning=left < SOON_DAYS)


def _check_usage(rep: VerifyReport, kind: str, name: str, cert: x509.Certificate) -> None:
    bc = extension(cert, x509.BasicConstraints)
    eku = extension(cert, x509.ExtendedKeyUsage)
    if kind == "ca":
        rep.add("usage", bool(bc and bc.ca), "BasicConstraints ca=True" if bc and bc.ca
                else "not marked as a CA (BasicConstraints)")
        return
    if bc is not None and bc.ca:
        rep.add("usage", False, "a CA certificate in place of a leaf")
        return
    want = {"host": ExtendedKeyUsageOID.SERVER_AUTH, "user": ExtendedKeyUsageOID.CLIENT_AUTH,
            "code": ExtendedKeyUsageOID.CODE_SIGNING}[kind]
    label = {"host": "serverAuth", "user": "clientAuth", "code": "codeSigning"}[kind]
    ok = eku is None or want in eku
    rep.add("usage", ok, f"extended key usage {'allows' if ok else 'lacks'} {label}")
    if kind == "host":
        san = extension(cert, x509.SubjectAlternativeName)
        dns = san.get_values_for_type(x509.DNSName) if san is not None else []
        rep.add("SAN", name in dns, f"DNS names: {', '.join(dns) or 'none'}")
