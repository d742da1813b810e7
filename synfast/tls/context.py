"""TLS contexts for ``ssl://`` URLs, with the policy Synapse peers expect.

A URL plus a certdir becomes an :class:`ssl.SSLContext`: :func:`server_context`
for a listener (``hosts/NAME.crt|key`` for each ``hostname``, one per name by SNI;
``ca=`` requires client certificates of that CA and loads its CRL) and
:func:`client_context` for a client (trust the certdir's CAs, or only the
``certhash`` pin; present the user certificate named by ``certname`` or found
for ``USER@HOSTNAME`` or a parent domain, and refuse, before any connection
exists, a URL that asks for a user certificate the certdir does not have).  The
policy is docs/reference/synapse-compat.md ("TLS policy"): TLS 1.2 at least,
ECDHE/DHE key exchange only (never RSA key transport, so a stolen key does not
decrypt recorded traffic), renegotiation off, server names checked by OpenSSL
against the certificate (no DNS involved), trust from the certdir's CAs.

Two checks OpenSSL cannot express as context settings are made right after each
handshake by the socket classes of :class:`ClientContext`: the ``certhash`` pin
and, on a client, the CRL of the CA that issued the server's certificate.  They
live on the context so that every socket made with it is checked, not only the
ones made by :func:`synfast.tls.probe.connect`.

:func:`server_context` and :func:`client_context` refuse a URL that is not
``ssl://``; :func:`make_server_context` and :func:`make_client_context` build the
same contexts for any scheme (what :mod:`synfast.tls.probe` has always used).
"""

from __future__ import annotations

import hmac
import shlex
import ssl

from synfast.tls.crl import revoked_serials, usable_crl
from synfast.tls.layout import CertError
from synfast.tls.store import CertDirLike, CertStore, as_store
from synfast.tls.url import (
    TlsUrl,
    UrlError,
    as_url,
    normalize_certhash,
    require_ssl,
    server_hostname,
)
from synfast.tls.x509 import key_matches

__all__ = [
    "CIPHERS",
    "ClientContext",
    "client_context",
    "make_client_context",
    "make_server_context",
    "server_context",
]

#: TLS 1.2 suites with forward secrecy and AEAD only; TLS 1.3 suites all qualify.
CIPHERS = "ECDHE+AESGCM:ECDHE+CHACHA20:DHE+AESGCM:DHE+CHACHA20:!aNULL:!eNULL:!PSK:!SRP"


def _harden(ctx: ssl.SSLContext) -> None:
    ctx.minimum_version = ssl.TLSVersion.TLSv1_2
    ctx.options |= ssl.OP_NO_COMPRESSION | ssl.OP_NO_RENEGOTIATION
    ctx.set_ciphers(CIPHERS)


def _quoted(cd: CertStore) -> str:
    """The certdir as a shell word, for the commands that error messages suggest."""
    return shlex.quote(str(cd.path))


def _load_pair(ctx: ssl.SSLContext, cd: CertStore, kind: str, name: str) -> None:
    """Load ``kind/name`` .crt and .key into ``ctx`` after checking they belong together."""
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


def server_context(url: str | TlsUrl, certdir: CertDirLike = None) -> ssl.SSLContext:
    """The :class:`ssl.SSLContext` of a listener on ``url``.

    Presents ``hosts/NAME.crt|key`` for ``hostname`` (else HOST); a comma list
    serves one certificate per name by SNI (the first is the default);
    ``ca=NAME`` requires client certificates issued by that CA and honours its
    CRL when the certdir has one.
    """
    u = as_url(url)
    require_ssl(u)
    return make_server_context(u, certdir)


def make_server_context(u: TlsUrl, certdir: CertDirLike = None) -> ssl.SSLContext:
    """:func:`server_context` without refusing a scheme other than ``ssl``."""
    cd = as_store(certdir)
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
                            f"make it with `synfast easycert --certdir {_quoted(cd)} --ca {ca}`"
                            " or import it")
        crlfile = usable_crl(cd, ca)

    for name in names:  # every missing file named, with its fix, before anything binds
        cd.host_cert_for(name)

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


def client_context(url: str | TlsUrl, certdir: CertDirLike = None) -> ClientContext:
    """The :class:`ssl.SSLContext` of a client connecting to ``url``.

    Trusts the CAs of the certdir (or, with ``certhash``, only the server
    certificate with that SHA-256 fingerprint, checked on every handshake made
    with this context); presents the user certificate named by ``certname`` or
    found for ``USER@HOSTNAME`` or a parent domain.  A URL that asks for a user
    certificate (``certname``, or a user without a password) that the certdir
    lacks raises :class:`~synfast.tls.layout.CertError` naming the names looked
    for and the ``synfast easycert`` command that makes it: as with Synapse's
    client, it is never sent without one.  Wrap sockets with
    ``server_hostname=server_hostname(url)`` so the name is checked against
    ``hostname`` (else HOST); :func:`synfast.tls.probe.connect` does it for you.
    """
    u = as_url(url)
    require_ssl(u)
    return make_client_context(u, certdir)


def make_client_context(u: TlsUrl, certdir: CertDirLike = None, *,
                        verify: bool = True) -> ClientContext:
    """:func:`client_context` for any scheme; ``verify=False`` is for probes only."""
    cd = as_store(certdir)
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
                            "import the server's CA with `synfast easycert --certdir "
                            f"{_quoted(cd)} --importfile cas CA.crt`, or pin it with ?certhash=")
        for name in cas:
            try:
                ctx.load_verify_locations(cafile=str(cd.cert_path("ca", name)))
            except ssl.SSLError as err:
                raise CertError(cd.cert_path("ca", name), f"not a usable CA certificate: {err}",
                                "remove or replace it") from None
        ctx.verify_flags |= ssl.VERIFY_X509_PARTIAL_CHAIN
        ctx.revoked = revoked_serials(cd, cas)
    # Before any socket exists: a URL that asks for a user certificate the certdir
    # lacks is refused here, as Synapse refuses it, never sent without one.
    name = cd.user_cert_for(u)
    if name is not None:
        _load_pair(ctx, cd, "user", name)
        ctx.certname = name
    return ctx
