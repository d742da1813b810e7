"""TLS contexts, connections, probes and a test listener for ``ssl://`` URLs.

This is the ``ssl``-importing half of :mod:`synfast.tls.url`; it is loaded only
when a context is actually needed.  The policy is the one Synapse peers apply
(``shared/docs/synapse-compat.md``): TLS 1.2 at least, ECDHE/DHE key exchange
only (never RSA key transport, so a stolen key does not decrypt recorded
traffic), renegotiation off, server names checked by OpenSSL against the
certificate (no DNS involved), trust from the certdir's CAs.

Two checks OpenSSL cannot express as context settings are made right after each
handshake by the socket classes of :class:`ClientContext`: the ``certhash`` pin
and, on a client, the CRL of the CA that issued the server's certificate.  They
live on the context so that every socket made with it is checked, not only the
ones made by :func:`connect`.
"""

from __future__ import annotations

import hmac
import os
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from synfast.tls.certdir import CertDir
from synfast.tls.crl import revoked_serials, usable_crl
from synfast.tls.layout import CertError
from synfast.tls.url import TlsUrl, UrlError, client_cert_candidates, server_hostname

#: TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites all qualify.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"


def _certdir(certdir: str | os.PathLike[str] | CertDir | None) -> CertDir:
    return certdir if isinstance(certdir, CertDir) else CertDir(certdir)


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(CIPHERS)


def _load_pair(ctx: ssl.SSLContext, cd: CertDir, kind: str, name: str) -> None:
    """Load ``kind/name`` .crt and .key into ``ctx`` after checking they belong together."""
    from synfast.tls.x509 import key_matches

    cert = cd.load_cert(kind, name)
    key = cd.load_key(kind, name)
    if not key_matches(key, cert):
        raise CertError(cd.key_path(kind, name), "the key does not match the certificate",
                        "make the certificate and key again")
    try:
        ctx.load_cert_chain(cd.cert_path(kind, name), cd.key_path(kind, name))
    except ssl.SSLError as err:
        raise CertError(cd.cert_path(kind, name), f"TLS cannot load it: {err.reason or err}",
                        "check the certificate and key files") from None


def server_context(u: TlsUrl, certdir: str | os.PathLike[str] | CertDir | None = None
                   ) -> ssl.SSLContext:
    """See :func:`synfast.tls.url.server_context`."""
    cd = _certdir(certdir)
    names = u.hostnames()
    if not names:
        raise UrlError(None, f"{u}: no host name to serve", "add ?hostname=NAME")
    ca = u.query.get("ca")
    cafile = crlfile = None
    if ca is not None:
        if not ca:
            raise UrlError(None, f"{u}: ca= is empty", "name a CA of the certdir: ?ca=NAME")
        cafile = cd.cert_path("ca", ca)
        if not cafile.is_file():
            raise CertError(cafile, f"CA {ca!r} given by ca= is not in the certdir",
                            f"make it with `synfast easycert --ca {ca}` or import it")
        crlfile = usable_crl(cd, ca)

    def make(name: str) -> ssl.SSLContext:
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        _harden(ctx)
        ctx.options |= ssl.OP_CIPHER_SERVER_PREFERENCE
        _load_pair(ctx, cd, "host", name)
        if cafile is not None:
            ctx.verify_mode = ssl.CERT_REQUIRED
            ctx.load_verify_locations(cafile=str(cafile))
            # The named CA is the trust anchor even when another CA signed it.
            ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
            if crlfile is not None:
                ctx.load_verify_locations(cafile=str(crlfile))
                ctx.verify_flags |= ssl.VERIFY_CRL_CHECK_LEAF
        return ctx

    contexts = {name: make(name) for name in names}
    primary = contexts[names[0]]
    if len(contexts) > 1:
        def pick(sslobj: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            if server_name is not None:
                chosen = contexts.get(server_name.lower()) or contexts.get(server_name)
                if chosen is not None:
                    sslobj.context = chosen
            return None

        primary.sni_callback = pick
    return primary


def _check_after_handshake(sock: ssl.SSLSocket | ssl.SSLObject) -> None:
    ctx = sock.context
    if not isinstance(ctx, ClientContext):
        return
    if ctx.certhash is not None:
        der = sock.getpeercert(binary_form=True)
        import hashlib

        got = hashlib.sha256(der or b"").hexdigest()
        if not hmac.compare_digest(got, ctx.certhash):
            err = ssl.SSLCertVerificationError(
                f"certificate pin mismatch: server presented sha256 {got}, "
                f"certhash wants {ctx.certhash}")
            err.verify_message = "certhash mismatch"
            raise err
        return
    if ctx.revoked:
        peer = sock.getpeercert() or {}
        issuer = dict(x[0] for x in peer.get("issuer", ()) if x).get("commonName")
        serial = peer.get("serialNumber")
        if serial is not None and (issuer, int(serial, 16)) in ctx.revoked:
            err = ssl.SSLCertVerificationError(
                f"certificate revoked: the CRL of CA {issuer} lists serial {serial}")
            err.verify_message = "certificate revoked"
            raise err


class _CheckedSocket(ssl.SSLSocket):
    def do_handshake(self, block: bool = False) -> None:
        super().do_handshake(block)
        try:
            _check_after_handshake(self)
        except ssl.SSLError:
            self.close()
            raise


class _CheckedObject(ssl.SSLObject):
    def do_handshake(self) -> None:
        super().do_handshake()
        _check_after_handshake(self)


class ClientContext(ssl.SSLContext):
    """A client :class:`ssl.SSLContext` that also checks the pin and CRLs after each handshake."""

    sslsocket_class = _CheckedSocket
    sslobject_class = _CheckedObject
    certhash: str | None = None
    revoked: frozenset[tuple[str | None, int]] = frozenset()
    #: The user certificate presented, if any (for reports).
    certname: str | None = None


def normalize_certhash(value: str) -> str:
    """Lowercase hex without separators; 64 digits or an error."""
    h = value.replace(":", "").strip().lower()
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise UrlError(None, f"certhash={value!r} is not a SHA-256 fingerprint",
                       "give 64 hex digits, e.g. from `synfast url probe` or "
                       "`openssl x509 -noout -fingerprint -sha256`")
    return h


def client_context(u: TlsUrl, certdir: str | os.PathLike[str] | CertDir | None = None,
                   *, verify: bool = True) -> ClientContext:
    """See :func:`synfast.tls.url.client_context`.  ``verify=False`` is for probes only."""
    cd = _certdir(certdir)
    server_hostname(u)  # one name, or an error now rather than at connect time
    ctx = ClientContext(ssl.PROTOCOL_TLS_CLIENT)
    _harden(ctx)
    if not verify:
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    elif "certhash" in u.query:
        ctx.certhash = normalize_certhash(u.query["certhash"])
        ctx.check_hostname = False
        ctx.verify_mode = ssl.CERT_NONE
    else:
        cas = cd.names("ca")
        if not cas:
            raise CertError(cd.path / "cas", "no CA certificate to trust the server by",
                            "import the server's CA with `synfast easycert --importfile cas "
                            "CA.crt`, or pin it with ?certhash=")
        for name in cas:
            try:
                ctx.load_verify_locations(cafile=str(cd.cert_path("ca", name)))
            except ssl.SSLError as err:
                raise CertError(cd.cert_path("ca", name), f"not a usable CA certificate: {err}",
                                "remove or replace it") from None
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.revoked = revoked_serials(cd, cas)
    names = client_cert_candidates(u)
    explicit = "certname" in u.query
    for name in names:
        try:
            crt, key = cd.cert_path("user", name), cd.key_path("user", name)
        except CertError:
            if explicit:
                raise
            continue
        if crt.is_file() and key.is_file():
            _load_pair(ctx, cd, "user", name)
            ctx.certname = name
            break
        if explicit:
            missing = crt if not crt.is_file() else key
            raise CertError(missing, f"certname={name}: {missing.name} not found",
                            f"make it with `synfast easycert --signas CA {name}`")
    return ctx


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(url: str | TlsUrl, certdir: str | os.PathLike[str] | CertDir | None = None, *,
            timeout: float = 10.0, context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    """Open a TLS connection to ``url`` with its client policy; the caller closes it."""
    from synfast.tls.url import _as_url

    u = _as_url(url)
    ctx = context or client_context(u, certdir)
    name = server_hostname(u)
    raw = socket.create_connection((u.host, u.port), timeout=timeout)
    try:
        return ctx.wrap_socket(raw, server_hostname=name)
    except BaseException:
        raw.close()
        raise


@dataclass
class PeerCert:
    subject: str | None
    issuer: str | None
    not_after: str
    days_left: int
    sha256: str
    sans: list[str]
    source: str  # "peer" for what the server sent, "certdir" for the CA found locally

    def as_dict(self) -> dict[str, Any]:
        return dict(self.__dict__)


@dataclass
class ProbeResult:
    """What :func:`probe` saw.  ``ok`` means handshake and verification both passed."""

    url: str
    address: str
    ok: bool = False
    verified: bool = False
    verify_error: str = ""
    error: str = ""
    tls_version: str | None = None
    cipher: str | None = None
    client_cert: str | None = None
    answer: str | None = None
    chain: list[PeerCert] = field(default_factory=list)
    seconds: float = 0.0

    def as_dict(self) -> dict[str, Any]:
        d = dict(self.__dict__)
        d["chain"] = [c.as_dict() for c in self.chain]
        return d


def _peer_chain(der: bytes | None, cd: CertDir) -> list[PeerCert]:
    import datetime as dt

    from cryptography import x509

    from synfast.tls.x509 import common_name, fingerprint

    if not der:
        return []
    now = dt.datetime.now(dt.UTC)
    cert = x509.load_der_x509_certificate(der)
    out = []
    source = "peer"
    for _ in range(8):
        try:
            san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
            sans = [f"DNS:{n}" for n in san.get_values_for_type(x509.DNSName)]
        except x509.ExtensionNotFound:
            sans = []
        out.append(PeerCert(common_name(cert.subject), common_name(cert.issuer),
                            cert.not_valid_after_utc.isoformat(),
                            (cert.not_valid_after_utc - now).days, fingerprint(cert), sans,
                            source))
        if cert.issuer == cert.subject:
            break
        ca = cd.find_issuer(cert) if cd.path.is_dir() else None
        if ca is None:
            break
        cert = cd.load_cert("ca", ca)
        source = "certdir"
    return out


def probe(u: TlsUrl, certdir: str | os.PathLike[str] | CertDir | None = None, *,
          timeout: float = 10.0) -> ProbeResult:
    """Connect, handshake with the URL's client policy, and describe the peer.

    When verification fails the probe connects a second time without verifying,
    to show what the server presents.  After the handshake it waits briefly for
    the server's first words: under TLS 1.3 a server rejects a client
    certificate only after the client thinks the handshake is done.
    """
    cd = _certdir(certdir)
    res = ProbeResult(url=str(u), address=f"{u.host}:{u.port}")
    start = time.monotonic()
    ctx = client_context(u, cd)
    res.client_cert = ctx.certname
    sock = None
    try:
        sock = connect(u, cd, timeout=timeout, context=ctx)
        res.verified = True
    except ssl.SSLCertVerificationError as err:
        res.verify_error = getattr(err, "verify_message", None) or str(err)
        res.error = f"certificate verification failed: {res.verify_error}"
    except ssl.SSLError as err:
        res.error = f"TLS handshake failed: {err.reason or err}"
    except TimeoutError:
        res.error = f"timed out after {timeout:g} s"
    except OSError as err:
        res.error = f"cannot connect to {res.address}: {err.strerror or err}"
    if sock is None and res.verify_error:
        loose = client_context(u, cd, verify=False)
        try:
            sock = connect(u, cd, timeout=timeout, context=loose)
        except (OSError, ssl.SSLError):
            sock = None
    if sock is not None:
        try:
            res.tls_version = sock.version()
            c = sock.cipher()
            res.cipher = c[0] if c else None
            res.chain = _peer_chain(sock.getpeercert(binary_form=True), cd)
            if res.verified:
                sock.settimeout(min(timeout, 2.0))
                try:
                    data = sock.recv(4096)
                    res.answer = data.decode("utf-8", "replace").strip() or None
                except TimeoutError:
                    pass
                except ssl.SSLError as err:
                    res.error = f"the server rejected the connection: {err.reason or err}"
                except OSError as err:
                    res.error = f"the server closed the connection: {err.strerror or err}"
        finally:
            sock.close()
    res.ok = res.verified and not res.error
    res.seconds = round(time.monotonic() - start, 3)
    return res


@dataclass
class ServeEvent:
    """One connection seen by :func:`serve`."""

    peer: str
    ok: bool
    client: str | None = None
    tls_version: str | None = None
    cipher: str | None = None
    error: str = ""

    def line(self) -> str:
        if self.ok:
            return (f"accepted {self.peer} client={self.client or '-'} "
                    f"{self.tls_version} {self.cipher}")
        return f"rejected {self.peer}: {self.error}"


def _peer_name(conn: ssl.SSLSocket) -> str | None:
    cert = conn.getpeercert()
    if not cert:
        return None
    for rdn in cert.get("subject", ()):
        for key, value in rdn:
            if key == "commonName":
                return value
    return None


def serve(url: str | TlsUrl, certdir: str | os.PathLike[str] | CertDir | None = None, *,
          count: int | None = None, handshake_timeout: float = 10.0,
          on_listen: Callable[[str, int], None] | None = None,
          on_event: Callable[[ServeEvent], None] | None = None) -> list[ServeEvent]:
    """Listen on ``url`` with its server policy and answer each client with its name.

    Every connection gets one line, ``client-cert: NAME`` (or ``client-cert: none``),
    then is closed, so that an operator can see from the client side which
    identity the server saw.  Connections are handled one at a time, each
    handshake bounded by ``handshake_timeout``.  Stops after ``count``
    connections (good or bad) when given.
    """
    from synfast.tls.url import _as_url

    u = _as_url(url)
    ctx = server_context(u, certdir)
    events: list[ServeEvent] = []
    host = u.host
    with socket.socket(_family(host), socket.SOCK_STREAM) as lsock:
        lsock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            lsock.bind((host, u.port))
        except OSError as err:
            raise UrlError(None, f"{u}: cannot listen on {host}:{u.port}: "
                           f"{(err.strerror or str(err)).lower()}",
                           "choose another port, or port 0 for any free one") from None
        lsock.listen(16)
        bound = lsock.getsockname()
        if on_listen is not None:
            on_listen(bound[0], bound[1])
        while count is None or len(events) < count:
            raw, addr = lsock.accept()
            peer = f"{addr[0]}:{addr[1]}"
            raw.settimeout(handshake_timeout)
            try:
                conn = ctx.wrap_socket(raw, server_side=True)
            except ssl.SSLError as err:
                ev = ServeEvent(peer, False, error=f"TLS handshake failed: {err.reason or err}")
                raw.close()
            except OSError as err:
                ev = ServeEvent(peer, False, error=str(err.strerror or err))
                raw.close()
            else:
                name = _peer_name(conn)
                c = conn.cipher()
                ev = ServeEvent(peer, True, name, conn.version(), c[0] if c else None)
                try:
                    conn.sendall(f"client-cert: {name or 'none'}\n".encode())
                except OSError as err:
                    # Under TLS 1.3 a client that dislikes us says so only now.
                    reason = getattr(err, "reason", None) or err
                    ev.ok, ev.error = False, f"client aborted: {reason}"
                finally:
                    conn.close()
            events.append(ev)
            if on_event is not None:
                on_event(ev)
    return events
