"""Telepath URLs: parsing, formatting and masking, without ``ssl`` or ``cryptography``.

A Synapse deployment names every listener and every connection with a URL such
as ``ssl://visi@cortex.vertex.link:27492/?certname=visi`` (form and query keys in
docs/reference/synapse-compat.md, "Telepath URLs").  This module parses and formats those URLs
(:func:`parse`, :meth:`TlsUrl.format`, :func:`sanitize`) and reads what an
``ssl://`` URL asks of TLS (:func:`server_hostname`, :func:`client_cert_candidates`,
:func:`normalize_certhash`).  It imports neither ``ssl`` nor ``cryptography``,
directly or through another module, so ``synfast url parse`` starts fast; the
contexts a URL describes are made by :mod:`synfast.tls.context`.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass, field
from typing import Any

from synfast.errors import SynfastError

__all__ = [
    "DEFAULT_PORT",
    "TlsUrl",
    "UrlError",
    "as_url",
    "client_cert_candidates",
    "normalize_certhash",
    "parse",
    "require_ssl",
    "sanitize",
    "server_hostname",
]

#: Default port of ``tcp://`` and ``ssl://`` telepath URLs.
DEFAULT_PORT = 27492
_PORTED = ("tcp", "ssl")
_MASK = "****"
_HEX = "0123456789abcdefABCDEF"
_SCHEME_CHARS = set("abcdefghijklmnopqrstuvwxyz0123456789+.-")
_HOST_CHARS = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._")
# RFC 3986 unreserved plus the sub-delims that do not end a component.
_USER_SAFE = set("abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789-._~!$'()*+,;=")
_QUERY_SAFE = (_USER_SAFE | set(":@/?")) - set("&+=")
_PATH_SAFE = _USER_SAFE | set(":@/%")


class UrlError(SynfastError):
    """A URL that cannot be parsed, or that cannot be used the way it is asked to."""

    exit_code = 1


def _bad(text: str, problem: str, hint: str = "") -> UrlError:
    return UrlError(None, f"bad URL {_shown(text)!r}: {problem}",
                    hint or "write SCHEME://[USER[:PASSWD]@]HOST[:PORT][/PATH][?KEY=VALUE&...]")


def _shown(text: str) -> str:
    """The text of a bad URL as it may be shown: masked if it might hold a password."""
    return _mask_text(text) if isinstance(text, str) else repr(text)


def _mask_text(text: str) -> str:
    """Mask a password in text that may not parse, erring on masking too much.

    A password sits between the first ':' of the user part and the last '@'
    before the host; masking from the first ':' after the scheme to the last
    '@' of the whole text covers it in every case.
    """
    scheme, sep, rest = text.partition("://")
    if not sep:
        scheme, rest = "", text
    at = rest.rfind("@")
    colon = rest.find(":")
    if at < 0 or colon < 0 or colon > at:
        return text
    return f"{scheme}{sep}{rest[:colon + 1]}{_MASK}{rest[at:]}"


def _pct_decode(text: str, part: str, whole: str) -> str:
    """Strict percent-decoding: every ``%`` starts two hex digits, the result is UTF-8."""
    if "%" not in text:
        return text
    out = bytearray()
    i = 0
    while i < len(text):
        c = text[i]
        if c == "%":
            pair = text[i + 1:i + 3]
            if len(pair) != 2 or pair[0] not in _HEX or pair[1] not in _HEX:
                raise _bad(whole, f"bad percent escape in the {part}",
                           "write a literal % as %25")
            out.append(int(pair, 16))
            i += 3
        else:
            out += c.encode("utf-8")
            i += 1
    try:
        return out.decode("utf-8")
    except UnicodeDecodeError:
        raise _bad(whole, f"the {part} does not decode to UTF-8") from None


def _pct_encode(text: str, safe: set[str]) -> str:
    return "".join(c if c in safe else "".join(f"%{b:02X}" for b in c.encode("utf-8"))
                   for c in text)


@dataclass(frozen=True)
class TlsUrl:
    """A parsed telepath URL.  ``port`` is None only for schemes without one."""

    scheme: str
    host: str
    port: int | None = None
    user: str | None = None
    password: str | None = field(default=None, repr=False)
    path: str = ""
    query: dict[str, str] = field(default_factory=dict, hash=False)

    @property
    def is_ipv6(self) -> bool:
        return ":" in self.host

    def hostnames(self) -> list[str]:
        """The names from ``hostname=`` (a comma list on a listener), else HOST."""
        raw = self.query.get("hostname")
        if raw is None:
            return [self.host] if self.host else []
        return [n.strip() for n in raw.split(",") if n.strip()]

    def format(self, *, mask_password: bool = False) -> str:
        """The URL as text; :func:`parse` gives this object back."""
        out = f"{self.scheme}://"
        if self.user is not None:
            out += _pct_encode(self.user, _USER_SAFE)
            if self.password is not None:
                out += ":" + (_MASK if mask_password else _pct_encode(self.password, _USER_SAFE))
            out += "@"
        host = f"[{self.host}]" if self.is_ipv6 else self.host
        out += host
        if self.port is not None and not (self.scheme in _PORTED and self.port == DEFAULT_PORT):
            out += f":{self.port}"
        out += self.path
        if self.query:
            out += "?" + "&".join(f"{_pct_encode(k, _QUERY_SAFE)}={_pct_encode(v, _QUERY_SAFE)}"
                                  for k, v in self.query.items())
        return out

    def __str__(self) -> str:
        return self.format(mask_password=True)

    def as_dict(self, *, mask_password: bool = True) -> dict[str, Any]:
        """A JSON-ready view; the password is masked unless asked otherwise."""
        pw = self.password
        if pw is not None and mask_password:
            pw = _MASK
        return {"url": self.format(mask_password=mask_password), "scheme": self.scheme,
                "user": self.user, "password": pw, "host": self.host, "port": self.port,
                "path": self.path, "query": dict(self.query)}


def parse(text: str) -> TlsUrl:
    """Parse ``SCHEME://[USER[:PASSWD]@]HOST[:PORT][/PATH][?KEY=VALUE&...]``.

    Any text either parses or raises :class:`UrlError` naming what is wrong;
    nothing else escapes.  USER, PASSWD and query values are percent-decoded;
    the port defaults to 27492 for ``tcp`` and ``ssl``; IPv6 hosts are written
    ``[addr]:port`` or, without a port, bare.
    """
    if not isinstance(text, str):
        raise UrlError(None, f"a URL must be text, not {type(text).__name__}")
    if not text:
        raise _bad(text, "it is empty")
    for c in text:
        if ord(c) <= 0x20 or ord(c) == 0x7F:
            raise _bad(text, "it contains a space or a control character",
                       "percent-encode it (%20 for a space)")
    scheme, sep, rest = text.partition("://")
    if not sep:
        raise _bad(text, "no SCHEME:// at the start", "e.g. ssl://host:27492/")
    scheme = scheme.lower()
    if not scheme or not scheme[0].isascii() or not scheme[0].isalpha() \
            or any(c not in _SCHEME_CHARS for c in scheme):
        raise _bad(text, f"bad scheme {scheme!r}", "use tcp, ssl, unix, cell or aha")
    if "#" in rest:
        raise _bad(text, "a '#' fragment is not part of a telepath URL",
                   "percent-encode a '#' in a password as %23")
    rest, qsep, qtext = rest.partition("?")
    slash = rest.find("/")
    netloc, path = (rest, "") if slash < 0 else (rest[:slash], rest[slash:])
    for c in path:
        if c not in _PATH_SAFE and c.isascii():
            raise _bad(text, f"character {c!r} is not allowed in the path", "percent-encode it")
    if "%" in path:
        _pct_decode(path, "path", text)
    user = password = None
    if "@" in netloc:
        userinfo, _, netloc = netloc.rpartition("@")
        u, psep, p = userinfo.partition(":")
        user = _pct_decode(u, "user", text)
        password = _pct_decode(p, "password", text) if psep else None
        if not user:
            raise _bad(text, "the user before '@' is empty")
    host, port = _split_hostport(netloc, text, scheme in _PORTED)
    if port is None and scheme in _PORTED:
        port = DEFAULT_PORT
    if not host and scheme in _PORTED:
        raise _bad(text, "no host", f"a {scheme}:// URL needs a host, e.g. {scheme}://0.0.0.0/")
    query: dict[str, str] = {}
    if qsep and qtext:
        for item in qtext.split("&"):
            if not item:
                continue
            k, _, v = item.partition("=")
            k = _pct_decode(k.replace("+", " "), "query", text)
            v = _pct_decode(v.replace("+", " "), "query", text)
            if not k:
                raise _bad(text, f"query item {item!r} has no key")
            query[k] = v
    return TlsUrl(scheme, host, port, user, password, path, query)


def _split_hostport(netloc: str, text: str, strict: bool) -> tuple[str, int | None]:
    if netloc.startswith("["):
        end = netloc.find("]")
        if end < 0:
            raise _bad(text, "'[' without ']' around an IPv6 address")
        host, tail = netloc[1:end], netloc[end + 1:]
        _check_ipv6(host, text)
        if not tail:
            return host, None
        if not tail.startswith(":"):
            raise _bad(text, f"unexpected {tail!r} after ']'")
        return host, _port(tail[1:], text)
    if netloc.count(":") > 1:  # a bare IPv6 address, which cannot carry a port
        _check_ipv6(netloc, text)
        return netloc, None
    host, psep, ptext = netloc.partition(":")
    if "]" in host:
        raise _bad(text, "']' without '['")
    for c in host:
        if c not in _HOST_CHARS:
            raise _bad(text, f"character {c!r} is not allowed in a host name",
                       "host names are letters, digits, '-', '_' and '.'")
    if strict and (".." in host or host.startswith(".")):
        raise _bad(text, f"host {host!r} has an empty label")
    return host, (_port(ptext, text) if psep else None)


def _check_ipv6(host: str, text: str) -> None:
    addr, _, zone = host.partition("%")
    try:
        ipaddress.IPv6Address(addr)
    except ValueError:
        raise _bad(text, f"{host!r} is not an IPv6 address") from None
    if "%" in host and (not zone or any(c not in _HOST_CHARS for c in zone)):
        raise _bad(text, f"bad IPv6 zone in {host!r}")


def _port(ptext: str, text: str) -> int:
    if not ptext:
        raise _bad(text, "':' without a port number")
    if not ptext.isascii() or not ptext.isdigit() or len(ptext) > 5:
        raise _bad(text, f"port {ptext!r} is not a number", "use 0 to 65535")
    port = int(ptext)
    if port > 65535:
        raise _bad(text, f"port {port} is above 65535")
    return port


def sanitize(url: str | TlsUrl) -> str:
    """The URL as it may be shown to people or logged: the password becomes ``****``.

    Text that does not parse is masked too, by the same rule (everything between
    the first ``:`` of the user part and the last ``@`` before the host), so an
    error message never repeats a password.
    """
    if isinstance(url, TlsUrl):
        return url.format(mask_password=True)
    try:
        return parse(url).format(mask_password=True)
    except UrlError:
        return _mask_text(url)


def as_url(url: str | TlsUrl) -> TlsUrl:
    """``url`` parsed, unless it is a :class:`TlsUrl` already."""
    return url if isinstance(url, TlsUrl) else parse(url)


def require_ssl(u: TlsUrl) -> None:
    """Refuse a URL that is not ``ssl://`` where a TLS context is asked for."""
    if u.scheme != "ssl":
        raise UrlError(None, f"{u}: a TLS context needs an ssl:// URL, not {u.scheme}://",
                       "use ssl://HOST:PORT/")


def server_hostname(url: str | TlsUrl) -> str:
    """The name a client checks the server's certificate against (``hostname`` or HOST)."""
    u = as_url(url)
    names = u.hostnames()
    if len(names) != 1:
        raise UrlError(None, f"{u}: a client URL takes one hostname, not {len(names)}",
                       "a comma list of names is for listeners")
    return names[0]


def client_cert_candidates(url: str | TlsUrl) -> list[str]:
    """The user certificate names a client URL may present, in the order tried.

    ``certname`` if given; else, for a user with no password, ``USER@HOSTNAME``
    then ``USER@`` each parent domain (an IP address has no parents); else none.
    """
    u = as_url(url)
    if "certname" in u.query:
        return [u.query["certname"]]
    if u.user is None or u.password is not None:
        return []
    host = server_hostname(u)
    try:
        ipaddress.ip_address(host.partition("%")[0])
        return [f"{u.user}@{host}"]
    except ValueError:
        pass
    labels = host.split(".")
    return [f"{u.user}@{'.'.join(labels[i:])}" for i in range(len(labels)) if labels[i]]


def normalize_certhash(value: str) -> str:
    """Lowercase hex without separators; 64 digits or an error."""
    h = value.replace(":", "").strip().lower()
    if len(h) != 64 or any(c not in "0123456789abcdef" for c in h):
        raise UrlError(None, f"certhash={value!r} is not a SHA-256 fingerprint",
                       "give 64 hex digits, e.g. from `synfast url probe` or "
                       "`openssl x509 -noout -fingerprint -sha256`")
    return h
