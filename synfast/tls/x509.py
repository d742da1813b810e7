"""X.509 material: loading, keys, names, and the certificate profiles of Synapse.

Everything here works on bytes, files and ``cryptography`` objects, not on a
certdir: loading PEM or DER certificates, keys, CRLs and CSRs (each failure one
:class:`~synfast.tls.layout.CertError` naming the file), making keys, comparing
a key with a certificate, reading names and fingerprints, and building
certificates and CSRs with the profiles of docs/reference/synapse-compat.md
(subject CN=NAME, random serial, SHA-256; per kind its BasicConstraints,
KeyUsage, ExtendedKeyUsage and SubjectAlternativeName).

``cryptography`` is imported at module level: this module, and every module
that imports it, is loaded only by the commands and API functions that need it.
"""

from __future__ import annotations

import datetime as _dt
import os
from collections.abc import Iterable, Sequence
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedAlgorithmError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from synfast.errors import convert_error
from synfast.tls.layout import CERTDIR_HINTS, KEY_TYPES, CertError

__all__ = [
    "build_certificate",
    "build_csr",
    "common_name",
    "extension",
    "fingerprint",
    "generate_key",
    "is_ca",
    "key_matches",
    "key_pem",
    "load_cert_bytes",
    "load_cert_file",
    "load_crl_file",
    "load_csr_bytes",
    "load_key_bytes",
    "load_key_file",
    "parse_sans",
    "read_file",
    "signed_by",
    "utc_now",
]


def utc_now() -> _dt.datetime:
    """Now in UTC, to the second (certificates carry no fractions)."""
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


# -- keys ----------------------------------------------------------------------

def generate_key(key_type: str):
    """A new private key of one of :data:`~synfast.tls.layout.KEY_TYPES`."""
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise CertError(None, f"unknown key type {key_type!r}", f"use one of {', '.join(KEY_TYPES)}")


def key_pem(key) -> bytes:
    """The key as unencrypted PEM in the traditional OpenSSL form, as Synapse writes it."""
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.TraditionalOpenSSL,
        serialization.NoEncryption(),
    )


def _spki(pub) -> bytes:
    return pub.public_bytes(serialization.Encoding.DER,
                            serialization.PublicFormat.SubjectPublicKeyInfo)


def key_matches(key, cert: x509.Certificate) -> bool:
    """True when ``key`` is the private half of ``cert``'s public key."""
    return _spki(key.public_key()) == _spki(cert.public_key())


# -- reading certificates ---------------------------------------------------------

def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: what ``certhash=`` pins."""
    return cert.fingerprint(hashes.SHA256()).hex()


def extension(cert: x509.Certificate | x509.CertificateSigningRequest, cls):
    """The value of ``cert``'s extension of class ``cls``, or None."""
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def is_ca(cert: x509.Certificate) -> bool:
    bc = extension(cert, x509.BasicConstraints)
    return bool(bc is not None and bc.ca)


def signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    """True when ``issuer``'s key signed ``cert`` (and the names chain)."""
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


# -- profiles --------------------------------------------------------------------

def parse_sans(text: str | Sequence[str] | None) -> list[x509.GeneralName]:
    """Parse easycert's ``DNS:x,email:y,URI:z`` list into general names.

    Only the three forms Synapse accepts are accepted; anything else is an error
    rather than a silently dropped name.
    """
    if text is None:
        return []
    items = text.split(",") if isinstance(text, str) else list(text)
    out: list[x509.GeneralName] = []
    for raw in items:
        item = raw.strip()
        if not item:
            continue
        kind, sep, value = item.partition(":")
        if not sep or not value:
            raise CertError(None, f"bad subject alternative name {item!r}",
                            "write DNS:name, email:address or URI:uri, comma separated")
        low = kind.lower()
        if low == "dns":
            out.append(x509.DNSName(value))
        elif low == "email":
            out.append(x509.RFC822Name(value))
        elif low == "uri":
            out.append(x509.UniformResourceIdentifier(value))
        else:
            raise CertError(None, f"unsupported subject alternative name type {kind!r}",
                            "only DNS:, email: and URI: are allowed")
    return out


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False,
        decipher_only=False)


def _cn(name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])


def build_certificate(kind: str, name: str, pub, sign_key, *,
                      issuer: x509.Certificate | None, sans: Iterable,
                      start: _dt.datetime, days: int) -> x509.Certificate:
    """The certificate of ``kind`` (ca, host, user, code) for ``name`` and key ``pub``.

    Signed with ``sign_key`` as ``issuer``, or self-signed when ``issuer`` is
    None; valid from ``start`` for ``days``.  A host always carries ``DNS:name``
    first in its SAN, then ``sans``; a user carries ``sans`` when given.
    """
    subject = _cn(name)
    issuer_name = issuer.subject if issuer is not None else subject
    issuer_pub = issuer.public_key() if issuer is not None else pub
    b = (x509.CertificateBuilder()
         .subject_name(subject).issuer_name(issuer_name).public_key(pub)
         .serial_number(x509.random_serial_number())
         .not_valid_before(start)
         .not_valid_after(start + _dt.timedelta(days=days))
         .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
         .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_pub),
                        critical=False))
    if kind == "ca":
        b = (b.add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=False)
             .add_extension(_key_usage(key_cert_sign=True, crl_sign=True,
                                       digital_signature=True), critical=False))
    else:
        b = b.add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=False)
    if kind == "host":
        b = (b.add_extension(_key_usage(digital_signature=True, key_encipherment=True),
                             critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]),
                            critical=False))
        names = [x509.DNSName(name)] + [s for s in sans if s != x509.DNSName(name)]
        b = b.add_extension(x509.SubjectAlternativeName(names), critical=False)
    elif kind == "user":
        b = (b.add_extension(_key_usage(digital_signature=True), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CLIENT_AUTH]),
                            critical=False))
        sans = list(sans)
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    elif kind == "code":
        b = (b.add_extension(_key_usage(digital_signature=True), critical=False)
             .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.CODE_SIGNING]),
                            critical=False))
    return b.sign(sign_key, hashes.SHA256())


def build_csr(name: str, key, sans: list[x509.GeneralName]) -> x509.CertificateSigningRequest:
    """A CSR for ``key`` with subject CN=NAME, BasicConstraints ca=False (critical)."""
    b = (x509.CertificateSigningRequestBuilder()
         .subject_name(_cn(name))
         .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
    if sans:
        b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
    return b.sign(key, hashes.SHA256())


# -- loading ---------------------------------------------------------------------

def load_cert_bytes(data: bytes, path: str | os.PathLike[str] | None = None) -> x509.Certificate:
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_certificate(data)
        return x509.load_der_x509_certificate(data)
    except ValueError:
        raise CertError(path, "not a valid PEM or DER certificate",
                        "the file is corrupt or is not a certificate") from None


def load_key_bytes(data: bytes, path: str | os.PathLike[str] | None = None):
    try:
        if b"-----BEGIN" in data:
            key = serialization.load_pem_private_key(data, password=None)
        else:
            key = serialization.load_der_private_key(data, password=None)
    except TypeError:
        raise CertError(path, "the private key is encrypted",
                        "decrypt it with `openssl pkey` first") from None
    except (ValueError, UnsupportedAlgorithmError):
        raise CertError(path, "not a valid PEM or DER private key",
                        "the file is corrupt or is not a key") from None
    return key


def load_csr_bytes(data: bytes, path: str | os.PathLike[str] | None = None
                   ) -> x509.CertificateSigningRequest:
    try:
        return (x509.load_pem_x509_csr(data) if b"-----BEGIN" in data
                else x509.load_der_x509_csr(data))
    except ValueError:
        raise CertError(path, "not a PEM or DER certificate signing request") from None


def read_file(path: Path, what: str, kind: str | None, name: str | None) -> bytes:
    """The bytes of ``path``; a missing file of certdir ``kind/name`` says how to make it."""
    try:
        return Path(path).read_bytes()
    except FileNotFoundError:
        hint = "check the name and --certdir"
        if kind and name:
            flag = {"ca": "--ca ", "host": "--server ", "user": "", "code": "--code "}[kind]
            hint = f"make it with `synfast easycert {flag}{name}`"
        raise CertError(path, f"{what} not found", hint) from None
    except OSError as err:
        raise convert_error(err, path, cls=CertError, hints=CERTDIR_HINTS) from None


def load_cert_file(path: str | os.PathLike[str], *, kind: str | None = None,
                   name: str | None = None) -> x509.Certificate:
    return load_cert_bytes(read_file(Path(path), "certificate", kind, name), path)


def load_key_file(path: str | os.PathLike[str], *, kind: str | None = None,
                  name: str | None = None):
    return load_key_bytes(read_file(Path(path), "private key", kind, name), path)


def load_crl_file(path: str | os.PathLike[str]) -> x509.CertificateRevocationList:
    data = read_file(Path(path), "CRL", None, None)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CertError(path, "not a valid PEM or DER CRL", "the file is corrupt") from None
