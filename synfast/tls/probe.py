"""Talking TLS to a URL: connect, probe a server, and serve a small test listener.

:func:`connect` opens a connection with a URL's client policy
(:func:`synfast.tls.context.client_context`).  :func:`probe` connects, handshakes
and describes the peer: TLS version, cipher, the server's certificate and its
chain as the certdir sees it, the verification result, and the server's first
words (when verification fails it connects once more without verifying, only
to show what the server presents).  :func:`serve` listens with a URL's server
policy and answers every client with one line naming the identity it saw, to
test a deployment end to end.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from cryptography import x509

from synfast.tls.context import make_client_context, make_server_context
from synfast.tls.store import CertDirLike, CertStore, as_store
from synfast.tls.url import TlsUrl, UrlError, as_url, require_ssl, server_hostname
from synfast.tls.x509 import common_name, fingerprint

__all__ = ["PeerCert", "ProbeResult", "ServeEvent", "connect", "probe", "serve"]


def _family(host: str) -> socket.AddressFamily:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def connect(url: str | TlsUrl, certdir: CertDirLike = None, *, timeout: float = 10.0,
            context: ssl.SSLContext | None = None) -> ssl.SSLSocket:
    """Open a TLS connection to ``url`` with its client policy; the caller closes it.

    The context is made before the socket, so a URL asking for a user
    certificate the certdir lacks raises :class:`~synfast.tls.layout.CertError`
    without touching the network.
    """
    u = as_url(url)
    ctx = context or make_client_context(u, certdir)
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


def _peer_chain(der: bytes | None, cd: CertStore) -> list[PeerCert]:
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


def probe(url: str | TlsUrl, certdir: CertDirLike = None, *,
          timeout: float = 10.0) -> ProbeResult:
    """Connect, handshake with the URL's client policy, and describe the peer.

    When verification fails the probe connects a second time without verifying,
    to show what the server presents.  After the handshake it waits briefly for
    the server's first words: under TLS 1.3 a server rejects a client
    certificate only after the client thinks the handshake is done.

    What is wrong before any connection, the URL or the certdir (a user
    certificate the URL asks for and the certdir lacks, no CA to trust), raises
    a :class:`~synfast.errors.SynfastError` instead of being reported in the
    result: there is no peer to describe, and the error says how to fix it.
    """
    u = as_url(url)
    require_ssl(u)
    cd = as_store(certdir)
    res = ProbeResult(url=str(u), address=f"{u.host}:{u.port}")
    start = time.monotonic()
    ctx = make_client_context(u, cd)
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
        loose = make_client_context(u, cd, verify=False)
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


def serve(url: str | TlsUrl, certdir: CertDirLike = None, *,
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
    u = as_url(url)
    ctx = make_server_context(u, certdir)
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
