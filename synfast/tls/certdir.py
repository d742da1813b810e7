"""The certdir: keys, certificates, CSRs, CRLs and PKCS#12 bundles in Synapse's layout.

A certdir is what Synapse services and their clients read their TLS material
from (``cas/``, ``hosts/``, ``users/``, ``code/``, ``crls/``; a file is named after
the certificate's common name).  Everything made here must load where a cert made
by Synapse's ``easycert`` would, so the certificate profiles follow
``shared/docs/synapse-compat.md``.  Where easycert was careless, this module is
not: names are validated so that none can escape the certdir, every file is
written under a temporary name and linked into place (an existing file is never
replaced, except a CRL, whose whole point is to be updated), private keys are
created with mode 0600 in 0700 directories, and a CA signs only with a key that
matches its certificate.

The API is small on purpose::

    cd = CertDir("/tmp/certs")
    cd.ca("vertex")                                  # cas/vertex.crt|key
    cd.host("cortex.vertex.link", signas="vertex")   # hosts/...
    cd.user("visi@vertex.link", signas="vertex")     # users/...
    cd.p12("visi@vertex.link")                       # users/...p12
    cd.revoke("vertex", "user", "visi@vertex.link")  # crls/vertex.crl

Each maker returns the list of :class:`Saved` files, which the CLI prints as
``key saved: PATH`` lines.  Only RSA and P-256 keys are made; RSA 4096 stays the
default because Synapse peers verify chains of RSA CAs only.

``cryptography`` is imported at module level here: this module is only ever
imported inside the commands and API functions that need it, never by
``synfast --help``.
"""

from __future__ import annotations

import datetime as _dt
import errno
import os
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.exceptions import UnsupportedAlgorithm as UnsupportedAlgorithmError
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.serialization import pkcs12
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from synfast.errors import SynfastError, convert_error
from synfast.files.durable import write_all_or_none, write_atomic

__all__ = [
    "CertDir",
    "CertError",
    "CertFileExists",
    "CertInfo",
    "Check",
    "KEY_TYPES",
    "KINDS",
    "Saved",
    "VerifyReport",
    "default_certdir",
    "kind_dir",
    "parse_sans",
    "validate_name",
]

#: Certificate kinds and the certdir subdirectory each lives in.
KINDS: dict[str, str] = {"ca": "cas", "host": "hosts", "user": "users", "code": "code"}
_DIR_KIND = {v: k for k, v in KINDS.items()}
#: Key types synfast can make; the first is the default.
KEY_TYPES = ("rsa4096", "rsa2048", "ecdsa-p256")
DEFAULT_DAYS = 3650
#: Certificates expiring sooner than this are marked by ``certs list``.
SOON_DAYS = 30
_MAX_CHAIN = 8
#: How to fix the OS errors a certdir meets (for :func:`synfast.errors.convert_error`).
CERTDIR_HINTS: dict[int, str] = {
    errno.EACCES: "check the certdir's permissions, or choose another with --certdir",
    errno.EPERM: "check the certdir's permissions, or choose another with --certdir",
    errno.EROFS: "the certdir is on a read-only filesystem; choose another with --certdir",
    errno.ENOTDIR: "a component of the certdir path is not a directory",
    errno.ENOSPC: "the filesystem is full",
    errno.ENOENT: "check the path",
}


class CertError(SynfastError):
    """A certdir operation that cannot be done as asked."""


class CertFileExists(CertError):
    """A file would be overwritten; easycert reports it as ``file exists: PATH``."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        super().__init__(path, "file exists", "remove it first if you really mean to replace it")


@dataclass(frozen=True)
class Saved:
    """One file written: ``label`` is easycert's word for it (``key``, ``cert``...)."""

    label: str
    path: Path

    def line(self) -> str:
        return f"{self.label} saved: {self.path}"


def default_certdir() -> Path:
    """``$SYN_CERT_DIR`` if set, else ``~/.syn/certs``, as Synapse resolves it."""
    env = os.environ.get("SYN_CERT_DIR")
    return Path(env).expanduser() if env else Path("~/.syn/certs").expanduser()


def kind_dir(kind: str) -> str:
    """Map ``ca|host|user|code`` (or the directory name itself) to the subdirectory."""
    if kind in KINDS:
        return KINDS[kind]
    if kind in _DIR_KIND:
        return kind
    raise CertError(None, f"unknown certificate kind {kind!r}", "use one of ca, host, user, code")


def _kind(kind: str) -> str:
    return _DIR_KIND[kind_dir(kind)]


def validate_name(name: str) -> str:
    """Check a certificate name before it becomes a file name, and return it.

    Names become ``<dir>/<name>.crt``, so anything that could leave the directory
    (``/``, ``.``, ``..``), hide from tools (leading ``-`` looks like an option) or
    break the one-line output (control characters) is refused here.
    """
    if not isinstance(name, str):
        raise CertError(None, "a certificate name must be text")
    try:
        size = len(name.encode("utf-8"))
    except UnicodeEncodeError:
        raise CertError(None, f"name {name!r} is not valid UTF-8") from None
    hint = "use 1 to 64 bytes of UTF-8 without '/', NUL, control characters or a leading '-'"
    if not 1 <= size <= 64:
        raise CertError(None, f"name {name!r} is {size} bytes long", hint)
    if "/" in name or "\x00" in name:
        raise CertError(None, f"name {name!r} contains '/' or NUL", hint)
    if name in (".", ".."):
        raise CertError(None, f"name {name!r} is not allowed", hint)
    if name.startswith("-"):
        raise CertError(None, f"name {name!r} starts with '-'", hint)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise CertError(None, f"name {name!r} contains a control character", hint)
    return name


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


def _now() -> _dt.datetime:
    return _dt.datetime.now(_dt.UTC).replace(microsecond=0)


def _gen_key(key_type: str):
    if key_type == "rsa4096":
        return rsa.generate_private_key(public_exponent=65537, key_size=4096)
    if key_type == "rsa2048":
        return rsa.generate_private_key(public_exponent=65537, key_size=2048)
    if key_type == "ecdsa-p256":
        return ec.generate_private_key(ec.SECP256R1())
    raise CertError(None, f"unknown key type {key_type!r}", f"use one of {', '.join(KEY_TYPES)}")


def _key_pem(key) -> bytes:
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


def common_name(name: x509.Name) -> str | None:
    attrs = name.get_attributes_for_oid(NameOID.COMMON_NAME)
    if not attrs:
        return None
    value = attrs[0].value
    return value if isinstance(value, str) else value.decode("utf-8", "replace")


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the DER certificate, lowercase hex: what ``certhash=`` pins."""
    return cert.fingerprint(hashes.SHA256()).hex()


def _ext(cert: x509.Certificate | x509.CertificateSigningRequest, cls):
    try:
        return cert.extensions.get_extension_for_class(cls).value
    except x509.ExtensionNotFound:
        return None


def _write_error(err: OSError, paths: list[Path]) -> CertError:
    """Word a failed write naming what the user knows: the file being written, or
    its directory when no temporary name could be made there."""
    if isinstance(err, FileExistsError) and err.filename is not None \
            and Path(os.fsdecode(err.filename)) in paths:
        return CertFileExists(err.filename)
    if err.filename2 is not None:       # a rename: the final name is the second
        where = Path(os.fsdecode(err.filename2))
    elif err.filename is not None:      # a temporary name stands for its directory
        where = Path(os.fsdecode(err.filename))
        if where not in paths and where.parent in {p.parent for p in paths}:
            where = where.parent
    else:                               # a write or fsync of the data
        where = paths[0]
    return convert_error(err, where, cls=CertError, hints=CERTDIR_HINTS)


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
    """The outcome of :meth:`CertDir.verify`; ``ok`` is False when any check failed."""

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


class CertDir:
    """A certdir on disk.  Nothing is created until something is written."""

    def __init__(self, path: str | os.PathLike[str] | None = None) -> None:
        self.path = Path(path).expanduser() if path is not None else default_certdir()

    def __repr__(self) -> str:
        return f"CertDir({str(self.path)!r})"

    # -- paths -------------------------------------------------------------
    def file(self, kind: str, name: str, ext: str) -> Path:
        """``<certdir>/<kind dir>/<name>.<ext>`` after validating the name."""
        return self.path / kind_dir(kind) / f"{validate_name(name)}.{ext}"

    def cert_path(self, kind: str, name: str) -> Path:
        return self.file(kind, name, "crt")

    def key_path(self, kind: str, name: str) -> Path:
        return self.file(kind, name, "key")

    def crl_paths(self, ca: str) -> list[Path]:
        """Where a CA's CRL may be: ``crls/CA.crl`` (written here) or ``cas/CA.crl``."""
        validate_name(ca)
        return [self.path / "crls" / f"{ca}.crl", self.path / "cas" / f"{ca}.crl"]

    def crl_path(self, ca: str) -> Path | None:
        """The CRL of ``ca`` that exists, or None."""
        for p in self.crl_paths(ca):
            if p.is_file():
                return p
        return None

    def names(self, kind: str) -> list[str]:
        d = self.path / kind_dir(kind)
        try:
            return sorted(p.name[:-4] for p in d.iterdir()
                          if p.name.endswith(".crt") and p.is_file())
        except FileNotFoundError:
            return []
        except OSError as err:
            raise convert_error(err, d, cls=CertError, hints=CERTDIR_HINTS) from None

    # -- loading -----------------------------------------------------------
    def load_cert(self, kind: str, name: str) -> x509.Certificate:
        return load_cert_file(self.cert_path(kind, name), kind=_kind(kind), name=name)

    def load_key(self, kind: str, name: str):
        return load_key_file(self.key_path(kind, name), kind=_kind(kind), name=name)

    def load_ca(self, name: str) -> tuple[x509.Certificate, object]:
        """A CA's certificate and key, refusing a key that is not the certificate's."""
        cert = self.load_cert("ca", name)
        key = self.load_key("ca", name)
        if not key_matches(key, cert):
            raise CertError(self.key_path("ca", name),
                            f"key does not match the certificate of CA {name}",
                            "restore the CA's own key; a CA can only sign with its key")
        if not _is_ca(cert):
            raise CertError(self.cert_path("ca", name), f"{name} is not a CA certificate",
                            "its BasicConstraints does not say ca=True")
        return cert, key

    def find_issuer(self, cert: x509.Certificate) -> str | None:
        """The name of the certdir CA that signed ``cert``, or None."""
        issuer = common_name(cert.issuer)
        candidates = []
        if issuer:
            try:
                validate_name(issuer)
                candidates.append(issuer)
            except CertError:
                pass
        candidates += [n for n in self.names("ca") if n not in candidates]
        for name in candidates:
            path = self.path / "cas" / f"{name}.crt"
            if not path.is_file():
                continue
            try:
                ca = load_cert_file(path)
            except CertError:
                continue
            if ca.subject == cert.issuer and _signed_by(cert, ca):
                return name
        return None

    # -- writing -----------------------------------------------------------
    def _ensure_dir(self, kind: str) -> Path:
        sub = self.path / kind
        try:
            if not self.path.is_dir():
                self.path.parent.mkdir(parents=True, exist_ok=True)
                self.path.mkdir(mode=0o700, exist_ok=True)
            sub.mkdir(mode=0o700, exist_ok=True)
        except FileExistsError:
            raise CertError(sub, "exists and is not a directory",
                            "choose another --certdir") from None
        except OSError as err:
            raise convert_error(err, err.filename or sub, cls=CertError,
                                hints=CERTDIR_HINTS) from None
        return sub

    def _commit(self, files: Sequence[tuple[Path, bytes, int]]) -> None:
        """Write every file under its final name, or none of them.

        :func:`~synfast.files.durable.write_all_or_none` writes each under a
        temporary name with its mode from the start, fsyncs it and places it
        without replacing anything, so a file that appeared meanwhile is never
        replaced.
        """
        for path, _, _ in files:
            self._ensure_dir(path.parent.name)
        try:
            write_all_or_none(files, replace=False)
        except OSError as err:
            raise _write_error(err, [path for path, _, _ in files]) from None

    def _replace(self, path: Path, data: bytes, mode: int = 0o644) -> None:
        """Atomically replace ``path`` (only for CRLs, which exist to be updated)."""
        self._ensure_dir(path.parent.name)
        try:
            if path.is_dir() and not path.is_symlink():  # a file replaces no directory
                raise IsADirectoryError(errno.EISDIR, os.strerror(errno.EISDIR), str(path))
            write_atomic(path, data, mode=mode, replace=True)
        except OSError as err:
            raise _write_error(err, [path]) from None

    # -- making certificates -----------------------------------------------
    def _build(self, kind: str, name: str, pub, *, signas: str | None, sans: Iterable,
               days: int, valid_from: _dt.datetime | None, self_key=None) -> x509.Certificate:
        if days < 1:
            raise CertError(None, f"--days must be at least 1, not {days}")
        start = valid_from or _now()
        subject = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)])
        if signas is not None:
            ca_cert, ca_key = self.load_ca(validate_name(signas))
            issuer, sign_key = ca_cert.subject, ca_key
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key())
        else:
            issuer, sign_key = subject, self_key
            aki = x509.AuthorityKeyIdentifier.from_issuer_public_key(pub)
        b = (x509.CertificateBuilder()
             .subject_name(subject).issuer_name(issuer).public_key(pub)
             .serial_number(x509.random_serial_number())
             .not_valid_before(start)
             .not_valid_after(start + _dt.timedelta(days=days))
             .add_extension(x509.SubjectKeyIdentifier.from_public_key(pub), critical=False)
             .add_extension(aki, critical=False))
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

    def _make(self, kind: str, name: str, *, signas: str | None, sans, days: int,
              key_type: str, valid_from: _dt.datetime | None) -> list[Saved]:
        validate_name(name)
        sans = parse_sans(sans)
        if kind == "ca" and sans:
            raise CertError(None, "a CA certificate takes no subject alternative names")
        keyp, crtp = self.key_path(kind, name), self.cert_path(kind, name)
        for p in (keyp, crtp):  # before paying for a key
            if os.path.lexists(p):
                raise CertFileExists(p)
        if signas is not None:
            self.load_ca(validate_name(signas))  # fail fast, before the key
        key = _gen_key(key_type)
        cert = self._build(kind, name, key.public_key(), signas=signas, sans=sans, days=days,
                           valid_from=valid_from, self_key=key)
        self._commit([(keyp, _key_pem(key), 0o600),
                      (crtp, cert.public_bytes(serialization.Encoding.PEM), 0o644)])
        return [Saved("key", keyp), Saved("cert", crtp)]

    def ca(self, name: str, *, signas: str | None = None, days: int = DEFAULT_DAYS,
           key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a CA: self-signed, or signed by the certdir CA ``signas``."""
        return self._make("ca", name, signas=signas, sans=None, days=days,
                          key_type=key_type, valid_from=valid_from)

    def host(self, name: str, *, signas: str | None = None, sans=None, days: int = DEFAULT_DAYS,
             key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a server certificate with SAN ``DNS:name`` plus ``sans``."""
        return self._make("host", name, signas=signas, sans=sans, days=days,
                          key_type=key_type, valid_from=valid_from)

    def user(self, name: str, *, signas: str | None = None, sans=None, days: int = DEFAULT_DAYS,
             key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a client certificate (``clientAuth``), the user's TLS identity."""
        return self._make("user", name, signas=signas, sans=sans, days=days,
                          key_type=key_type, valid_from=valid_from)

    def code(self, name: str, *, signas: str | None = None, days: int = DEFAULT_DAYS,
             key_type: str = "rsa4096", valid_from: _dt.datetime | None = None) -> list[Saved]:
        """Make a code-signing certificate."""
        return self._make("code", name, signas=signas, sans=None, days=days,
                          key_type=key_type, valid_from=valid_from)

    def csr(self, kind: str, name: str, *, key_type: str = "rsa4096", sans=None) -> list[Saved]:
        """Make a key and a CSR for it (to be signed elsewhere), saved side by side."""
        kind = _kind(kind)
        if kind == "ca":
            raise CertError(None, "a CSR for a CA certificate is not supported",
                            "make the CA here with --ca, optionally --signas another CA")
        validate_name(name)
        sans = parse_sans(sans)
        keyp, csrp = self.key_path(kind, name), self.file(kind, name, "csr")
        for p in (keyp, csrp):
            if os.path.lexists(p):
                raise CertFileExists(p)
        key = _gen_key(key_type)
        b = (x509.CertificateSigningRequestBuilder()
             .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, name)]))
             .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True))
        if sans:
            b = b.add_extension(x509.SubjectAlternativeName(sans), critical=False)
        req = b.sign(key, hashes.SHA256())
        self._commit([(keyp, _key_pem(key), 0o600),
                      (csrp, req.public_bytes(serialization.Encoding.PEM), 0o644)])
        return [Saved("key", keyp), Saved("csr", csrp)]

    def sign_csr(self, kind: str, csr_path: str | os.PathLike[str], signas: str, *,
                 days: int = DEFAULT_DAYS, sans=None) -> list[Saved]:
        """Sign a CSR file as CA ``signas``; the certificate takes the CSR's CN as name.

        Only the subject and public key are taken from the request: the profile
        (usages, SANs) is the one of ``kind``, so a request cannot ask for more.
        SANs that the request carries are kept for host and user certificates.
        """
        kind = _kind(kind)
        if kind == "ca":
            raise CertError(None, "signing a CSR as a CA certificate is not supported")
        path = Path(csr_path)
        try:
            data = path.read_bytes()
        except FileNotFoundError:
            raise CertError(path, "csr not found", "give the path of a .csr file") from None
        except OSError as err:
            raise convert_error(err, path, cls=CertError, hints=CERTDIR_HINTS) from None
        try:
            req = (x509.load_pem_x509_csr(data) if b"-----BEGIN" in data
                   else x509.load_der_x509_csr(data))
        except ValueError:
            raise CertError(path, "not a PEM or DER certificate signing request") from None
        if not req.is_signature_valid:
            raise CertError(path, "the CSR's signature does not verify", "the request is corrupt")
        name = common_name(req.subject)
        if name is None:
            raise CertError(path, "the CSR has no common name")
        validate_name(name)
        extra = parse_sans(sans)
        req_sans = _ext(req, x509.SubjectAlternativeName)
        if req_sans is not None and kind in ("host", "user"):
            extra += [g for g in req_sans if isinstance(
                g, x509.DNSName | x509.RFC822Name | x509.UniformResourceIdentifier)]
        crtp = self.cert_path(kind, name)
        if os.path.lexists(crtp):
            raise CertFileExists(crtp)
        cert = self._build(kind, name, req.public_key(), signas=signas, sans=extra,
                           days=days, valid_from=None)
        self._commit([(crtp, cert.public_bytes(serialization.Encoding.PEM), 0o644)])
        return [Saved("cert", crtp)]

    def p12(self, name: str) -> list[Saved]:
        """Bundle a user's key, certificate and CA certificate as ``users/NAME.p12``.

        Unencrypted, like easycert's, so browsers and tools import it without a
        prompt; it is a private key, so it is written 0600.
        """
        cert = self.load_cert("user", name)
        key = self.load_key("user", name)
        if not key_matches(key, cert):
            raise CertError(self.key_path("user", name), "key does not match the certificate",
                            "make the user certificate again")
        cas = []
        ca_name = self.find_issuer(cert)
        if ca_name is not None:
            cas.append(self.load_cert("ca", ca_name))
        elif cert.issuer != cert.subject:
            raise CertError(self.cert_path("user", name),
                            f"the issuing CA {common_name(cert.issuer)!r} is not in the certdir",
                            "import the CA certificate with --importfile cas")
        p12p = self.file("user", name, "p12")
        if os.path.lexists(p12p):
            raise CertFileExists(p12p)
        data = pkcs12.serialize_key_and_certificates(
            name.encode("utf-8"), key, cert, cas, serialization.NoEncryption())
        self._commit([(p12p, data, 0o600)])
        return [Saved("client cert", p12p)]

    def import_file(self, kind: str, src: str | os.PathLike[str]) -> Path:
        """Copy a ``.crt``, ``.key`` or ``.p12`` file into ``cas/``, ``hosts/`` or ``users/``."""
        sub = kind_dir(kind)
        if sub not in ("cas", "hosts", "users"):
            raise CertError(None, f"cannot import into {sub}", "use cas, hosts or users")
        src = Path(src)
        if not src.is_file():
            raise CertError(src, "file does not exist", "check the path")
        stem, dot, ext = src.name.rpartition(".")
        if not dot or ext not in ("crt", "key", "p12"):
            raise CertError(src, "only .crt, .key and .p12 files can be imported")
        validate_name(stem)
        try:
            data = src.read_bytes()
        except OSError as err:
            raise convert_error(err, src, cls=CertError, hints=CERTDIR_HINTS) from None
        if ext == "crt":
            load_cert_bytes(data, src)
        elif ext == "key":
            load_key_bytes(data, src)
        dest = self.path / sub / src.name
        self._commit([(dest, data, 0o644 if ext == "crt" else 0o600)])
        return dest

    # -- revocation --------------------------------------------------------
    def _load_crl(self, ca: str, ca_cert: x509.Certificate):
        path = self.crl_path(ca)
        if path is None:
            return None
        crl = load_crl_file(path)
        if not crl.is_signature_valid(ca_cert.public_key()):
            raise CertError(path, f"CRL is not signed by CA {ca}", "remove it and run --crl again")
        return crl

    def _write_crl(self, ca: str, ca_cert, ca_key, revoked: list, days: int) -> Path:
        now = _now()
        b = (x509.CertificateRevocationListBuilder()
             .issuer_name(ca_cert.subject)
             .last_update(now)
             .next_update(now + _dt.timedelta(days=days))
             .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(
                 ca_cert.public_key()), critical=False))
        for r in revoked:
            b = b.add_revoked_certificate(r)
        crl = b.sign(ca_key, hashes.SHA256())
        path = self.path / "crls" / f"{ca}.crl"
        self._replace(path, crl.public_bytes(serialization.Encoding.PEM))
        return path

    def gen_crl(self, ca: str, *, days: int = DEFAULT_DAYS) -> Path:
        """(Re)issue the CRL of ``ca`` as ``crls/CA.crl``, keeping its revoked entries."""
        ca_cert, ca_key = self.load_ca(validate_name(ca))
        old = self._load_crl(ca, ca_cert)
        return self._write_crl(ca, ca_cert, ca_key, list(old) if old is not None else [], days)

    def revoke(self, ca: str, kind: str, name: str, *, days: int = DEFAULT_DAYS) -> Path:
        """Revoke certificate ``kind/name`` in the CRL of ``ca`` (which must have issued it)."""
        ca_cert, ca_key = self.load_ca(validate_name(ca))
        cert = self.load_cert(kind, name)
        if cert.issuer != ca_cert.subject or not _signed_by(cert, ca_cert):
            raise CertError(self.cert_path(kind, name), f"was not issued by CA {ca}",
                            "revoke it as the CA that signed it")
        old = self._load_crl(ca, ca_cert)
        entries = list(old) if old is not None else []
        if not any(r.serial_number == cert.serial_number for r in entries):
            entries.append(x509.RevokedCertificateBuilder()
                           .serial_number(cert.serial_number)
                           .revocation_date(_now()).build())
        return self._write_crl(ca, ca_cert, ca_key, entries, days)

    def is_revoked(self, cert: x509.Certificate, ca: str) -> bool | None:
        """True/False by the CRL of ``ca``; None when that CA has no CRL."""
        ca_cert = self.load_cert("ca", ca)
        crl = self._load_crl(ca, ca_cert)
        if crl is None:
            return None
        return crl.get_revoked_certificate_by_serial_number(cert.serial_number) is not None

    # -- inspection --------------------------------------------------------
    def inventory(self, *, now: _dt.datetime | None = None) -> list[CertInfo]:
        """Every certificate of the certdir with its state, CAs first."""
        now = now or _now()
        rows = []
        for kind in KINDS:
            for name in self.names(kind):
                rows.append(self._info(kind, name, now))
        return rows

    def _info(self, kind: str, name: str, now: _dt.datetime) -> CertInfo:
        path = self.path / kind_dir(kind) / f"{name}.crt"
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
        issuer = self.find_issuer(cert) if cert.issuer != cert.subject else name
        if issuer is not None and issuer != name:
            try:
                if self.is_revoked(cert, issuer):
                    status = "revoked"
            except CertError:
                pass
        return CertInfo(kind, name, path, common_name(cert.subject),
                        common_name(cert.issuer), not_after, days_left, keyp.is_file(),
                        matches, status)

    def locate(self, name: str, kind: str | None = None) -> str:
        """The kind of certificate ``name``, searching all kinds when ``kind`` is None."""
        validate_name(name)
        if kind is not None:
            kind = _kind(kind)
            if not self.cert_path(kind, name).is_file():
                raise CertError(self.cert_path(kind, name), "no such certificate",
                                "see `synfast certs list`")
            return kind
        found = [k for k in KINDS if self.cert_path(k, name).is_file()]
        if not found:
            raise CertError(self.path, f"no certificate named {name!r}",
                            "see `synfast certs list`")
        if len(found) > 1:
            raise CertError(self.path, f"{name!r} is a certificate of several kinds: "
                            f"{', '.join(found)}", "choose one with --kind")
        return found[0]

    def verify(self, name: str, kind: str | None = None, *,
               now: _dt.datetime | None = None, need_key: bool | None = None) -> VerifyReport:
        """Check a certificate as a peer would, plus what only the certdir knows.

        Chain up to a CA of the certdir (signatures, CA flags, dates), its own
        dates, its key, the usage its kind needs, and revocation by every CA on
        the chain that has a CRL.  A missing key is a problem for everything but
        a CA, which may be a trust anchor imported without one.
        """
        now = now or _now()
        kind = self.locate(name, kind)
        path = self.cert_path(kind, name)
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
        keyp = self.key_path(kind, name)
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
        self._check_chain(rep, cert, now)
        return rep

    def _check_chain(self, rep: VerifyReport, cert: x509.Certificate, now) -> None:
        current, seen = cert, set()
        for _ in range(_MAX_CHAIN):
            if current.issuer == current.subject and _signed_by(current, current):
                anchor = common_name(current.subject)
                in_dir = anchor is not None and (self.path / "cas" / f"{anchor}.crt").is_file()
                if current is cert and rep.kind != "ca":
                    rep.add("chain", False, "self-signed, not issued by a CA",
                            )
                    return
                rep.add("chain", in_dir, f"ends at CA {anchor}" + ("" if in_dir else
                        " which is not in cas/"))
                return
            ca = self.find_issuer(current)
            if ca is None:
                rep.add("chain", False, f"issuer {common_name(current.issuer)!r} is not a CA "
                        "of the certdir (or its signature does not verify)")
                return
            if ca in seen:
                rep.add("chain", False, f"loop at CA {ca}")
                return
            seen.add(ca)
            ca_cert = self.load_cert("ca", ca)
            if not _is_ca(ca_cert):
                rep.add("chain", False, f"issuer {ca} is not marked as a CA")
                return
            _check_dates(rep, f"CA {ca} dates", ca_cert, now)
            try:
                revoked = self.is_revoked(current, ca)
            except CertError as err:
                rep.add(f"revocation by {ca}", False, err.message)
            else:
                if revoked is None:
                    rep.add(f"revocation by {ca}", True, "no CRL", warning=False)
                else:
                    rep.add(f"revocation by {ca}", not revoked,
                            "REVOKED" if revoked else "not revoked")
            current = ca_cert
        rep.add("chain", False, "chain too long")


def _key_usage(*, digital_signature: bool = False, key_encipherment: bool = False,
               key_cert_sign: bool = False, crl_sign: bool = False) -> x509.KeyUsage:
    return x509.KeyUsage(
        digital_signature=digital_signature, content_commitment=False,
        key_encipherment=key_encipherment, data_encipherment=False, key_agreement=False,
        key_cert_sign=key_cert_sign, crl_sign=crl_sign, encipher_only=False,
        decipher_only=False)


def _is_ca(cert: x509.Certificate) -> bool:
    bc = _ext(cert, x509.BasicConstraints)
    return bool(bc is not None and bc.ca)


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    try:
        cert.verify_directly_issued_by(issuer)
    except (ValueError, TypeError, InvalidSignature):
        return False
    return True


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
    bc = _ext(cert, x509.BasicConstraints)
    eku = _ext(cert, x509.ExtendedKeyUsage)
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
        san = _ext(cert, x509.SubjectAlternativeName)
        dns = san.get_values_for_type(x509.DNSName) if san is not None else []
        rep.add("SAN", name in dns, f"DNS names: {', '.join(dns) or 'none'}")


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


def _read(path: Path, what: str, kind: str | None, name: str | None) -> bytes:
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
    return load_cert_bytes(_read(Path(path), "certificate", kind, name), path)


def load_key_file(path: str | os.PathLike[str], *, kind: str | None = None,
                  name: str | None = None):
    return load_key_bytes(_read(Path(path), "private key", kind, name), path)


def load_crl_file(path: str | os.PathLike[str]) -> x509.CertificateRevocationList:
    data = _read(Path(path), "CRL", None, None)
    try:
        if b"-----BEGIN" in data:
            return x509.load_pem_x509_crl(data)
        return x509.load_der_x509_crl(data)
    except ValueError:
        raise CertError(path, "not a valid PEM or DER CRL", "the file is corrupt") from None

