"""``url check``: which certdir files a URL would use, and whether each is fit for it.

As a listener's URL: the host certificate of each ``hostname`` (verified as
:func:`synfast.tls.inspect.verify` does), the ``ca=`` CA and its CRL (present,
signed by the CA, not out of date).  As a client's: the server name, the CAs to
trust or the ``certhash`` pin, and the user certificate the client would present
(missing when the URL asks for one: a failure, as the connection would fail).
Nothing here makes a TLS context, so ``ssl`` is not imported.
"""

from __future__ import annotations

from synfast.tls.crl import usable_crl
from synfast.tls.inspect import Check, verify
from synfast.tls.layout import CertError, kind_dir
from synfast.tls.store import CertDirLike, CertStore, as_store
from synfast.tls.url import (
    TlsUrl,
    UrlError,
    as_url,
    normalize_certhash,
    require_ssl,
    server_hostname,
)

__all__ = ["check"]


def check(url: str | TlsUrl, certdir: CertDirLike = None, *,
          listen: bool = False) -> tuple[TlsUrl, list[Check]]:
    """Which certdir files ``url`` would use, and whether each is fit for it.

    Returns the parsed URL and a list of :class:`synfast.tls.inspect.Check`; the URL
    is usable when every check is ok.  ``listen`` checks it as a listener's URL
    (host certificates, the ``ca=`` CA and its CRL), otherwise as a client's
    (the CAs to trust or the pin, the user certificate to present).
    """
    u = as_url(url)
    require_ssl(u)
    store = as_store(certdir)
    return u, (_listener_checks(u, store) if listen else _client_checks(u, store))


def _report(store: CertStore, kind: str, name: str) -> list[Check]:
    """The checks of :func:`verify` on ``kind/name``, each named after its file."""
    try:
        rep = verify(store, name, kind)
    except CertError as err:
        return [Check(f"{kind} {name}", False, str(err))]
    return [Check(f"{kind_dir(kind)}/{name}: {c.what}", c.ok, c.detail, c.warning)
            for c in rep.checks]


def _listener_checks(u: TlsUrl, store: CertStore) -> list[Check]:
    checks: list[Check] = []
    names = u.hostnames()
    if not names:
        checks.append(Check("hostname", False, "no host name to serve"))
    for name in names:
        checks += _report(store, "host", name)
    ca = u.query.get("ca")
    if ca is None:
        checks.append(Check("client certificates", True, "not required (no ca=)",
                            warning=True))
        return checks
    checks += _report(store, "ca", ca)
    try:
        crl = store.crl_path(ca)
        if crl is None:
            checks.append(Check(f"CRL of {ca}", True, "none; nothing is revoked", warning=True))
        else:
            usable_crl(store, ca)
            checks.append(Check(f"CRL of {ca}", True, str(crl)))
    except CertError as err:
        checks.append(Check(f"CRL of {ca}", False, str(err)))
    return checks


def _client_checks(u: TlsUrl, store: CertStore) -> list[Check]:
    checks: list[Check] = []
    try:
        name = server_hostname(u)
        checks.append(Check("server name", True, f"the server certificate must name {name}"))
    except UrlError as err:
        checks.append(Check("server name", False, err.message))
    if "certhash" in u.query:
        try:
            pin = normalize_certhash(u.query["certhash"])
            checks.append(Check("certhash", True, f"server pinned to sha256 {pin}"))
        except UrlError as err:
            checks.append(Check("certhash", False, err.message))
    else:
        cas = store.names("ca")
        checks.append(Check("trusted CAs", bool(cas), ", ".join(cas) if cas
                            else f"no CA certificate in {store.path / 'cas'}"))
    checks += _client_cert_checks(u, store)
    return checks


def _client_cert_checks(u: TlsUrl, store: CertStore) -> list[Check]:
    """The user certificate the client would present, found as a connection finds it
    (:meth:`CertStore.user_cert_for`): one the URL asks for and the certdir lacks is a
    failure with the same words, since the connection would be refused the same way."""
    try:
        name = store.user_cert_for(u)
    except (CertError, UrlError) as err:
        return [Check("client certificate", False, str(err))]
    if name is None:
        return [Check("client certificate", True,
                      "none presented (no certname=, and no user without a password)",
                      warning=True)]
    return _report(store, "user", name)
