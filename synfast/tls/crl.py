"""Revocation: each CA's CRL, written, extended, read and checked for use.

A CA's CRL is ``crls/CA.crl`` (written here) or ``cas/CA.crl`` (copied in); it
counts only when the CA's key signed it.  :func:`gen_crl` (re)issues it keeping
its entries, :func:`revoke` adds a certificate the CA issued, and both replace
the file atomically, the one file of a certdir that is ever replaced.  The
readers serve the other modules: :func:`is_revoked` for reports,
:func:`usable_crl` for a listener (an out-of-date CRL would make OpenSSL reject
every client, so it is refused up front) and :func:`revoked_serials` for the
client check made after each handshake.
"""

from __future__ import annotations

import datetime as _dt
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization

from synfast.tls.layout import DEFAULT_DAYS, CertError, validate_name
from synfast.tls.store import CertStore
from synfast.tls.x509 import common_name, load_crl_file, signed_by, utc_now

__all__ = ["gen_crl", "is_revoked", "load_crl", "revoke", "revoked_serials", "usable_crl"]


def load_crl(store: CertStore, ca: str, ca_cert: x509.Certificate
             ) -> x509.CertificateRevocationList | None:
    """The CRL of ``ca``, or None when it has none; refuse one its key did not sign."""
    path = store.crl_path(ca)
    if path is None:
        return None
    crl = load_crl_file(path)
    if not crl.is_signature_valid(ca_cert.public_key()):
        raise CertError(path, f"CRL is not signed by CA {ca}", "remove it and run --crl again")
    return crl


def _write_crl(store: CertStore, ca: str, ca_cert, ca_key, revoked: list, days: int) -> Path:
    now = utc_now()
    b = (x509.CertificateRevocationListBuilder()
         .issuer_name(ca_cert.subject)
         .last_update(now)
         .next_update(now + _dt.timedelta(days=days))
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
             ca_cert.public_key()), critical=False))
    for r in revoked:
        b = b.add_revoked_certificate(r)
    crl = b.sign(ca_key, hashes.SHA256())
    path = store.path / "crls" / f"{ca}.crl"
    store.write_replacing(path, crl.public_bytes(serialization.Encoding.PEM))
    return path


def gen_crl(store: CertStore, ca: str, *, days: int = DEFAULT_DAYS) -> Path:
    """(Re)issue the CRL of ``ca`` as ``crls/CA.crl``, keeping its revoked entries."""
    ca_cert, ca_key = store.load_ca(validate_name(ca))
    old = load_crl(store, ca, ca_cert)
    return _write_crl(store, ca, ca_cert, ca_key, list(old) if old is not None else [], days)


def revoke(store: CertStore, ca: str, kind: str, name: str, *,
           days: int = DEFAULT_DAYS) -> Path:
    """Revoke certificate ``kind/name`` in the CRL of ``ca`` (which must have issued it)."""
    ca_cert, ca_key = store.load_ca(validate_name(ca))
    cert = store.load_cert(kind, name)
    if cert.issuer != ca_cert.subject or not signed_by(cert, ca_cert):
        raise CertError(store.cert_path(kind, name), f"was not issued by CA {ca}",
                        "revoke it as the CA that signed it")
    old = load_crl(store, ca, ca_cert)
    entries = list(old) if old is not None else []
    if not any(r.serial_number == cert.serial_number for r in entries):
        entries.append(x509.RevokedCertificateBuilder()
                       .serial_number(cert.serial_number)
                       .revocation_date(utc_now()).build())
    return _write_crl(store, ca, ca_cert, ca_key, entries, days)


def is_revoked(store: CertStore, cert: x509.Certificate, ca: str) -> bool | None:
    """True/False by the CRL of ``ca``; None when that CA has no CRL."""
    ca_cert = store.load_cert("ca", ca)
    crl = load_crl(store, ca, ca_cert)
    if crl is None:
        return None
    return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None


def usable_crl(store: CertStore, ca: str) -> Path | None:
    """The CA's CRL if it has one; refuse one that is forged or out of date.

    OpenSSL would reject every client once a CRL expires, with a message that
    names neither the CRL nor the fix; saying so when the listener starts is kinder.
    """
    path = store.crl_path(ca)
    if path is None:
        return None
    ca_cert = store.load_cert("ca", ca)
    crl = load_crl(store, ca, ca_cert)
    if crl is not None and crl.next_update_utc is not None \
            and crl.next_update_utc < _dt.datetime.now(_dt.UTC):
        raise CertError(path, f"the CRL of CA {ca} is out of date",
                        f"reissue it with `synfast easycert --crl {ca}`")
    return path


def revoked_serials(store: CertStore, cas: list[str]) -> frozenset[tuple[str | None, int]]:
    """``(issuer CN, serial)`` of every certificate revoked by the CRLs of ``cas``."""
    out: set[tuple[str | None, int]] = set()
    for ca in cas:
        if store.crl_path(ca) is None:
            continue
        ca_cert = store.load_cert("ca", ca)
        crl = load_crl(store, ca, ca_cert)
        if crl is None:
            continue
        issuer = common_name(ca_cert.subject)
        out.update((issuer, r.serial_number) for r in crl)
    return frozenset(out)
