"""TLS URLs: the parser (with hypothesis), and real handshakes over loopback.

Every handshake here is a real one between :func:`synfast.tls.context.serve` in a
thread and :func:`synfast.tls.context.connect`, both built from URLs and a certdir
made by :class:`synfast.tls.certdir.CertDir`; nothing is mocked.  Network waits are
bounded by timeouts and the server threads are daemons.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import socket
import ssl
import threading

import pytest
from cryptography.hazmat.primitives.serialization import Encoding
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.tls import context as certs_tls
from synfast.tls.certdir import CertDir, CertError, fingerprint, load_cert_file
from synfast.tls.url import (
    DEFAULT_PORT,
    TlsUrl,
    UrlError,
    client_cert_candidates,
    client_context,
    parse,
    sanitize,
    server_context,
)

TIMEOUT = 5.0
H1, H2 = "h1.vertex.link", "h2.vertex.link"


# -- the parser ----------------------------------------------------------------

def test_parse_full_url() -> None:
    u = parse("ssl://visi:p%40ss%3Aw0rd@cortex.vertex.link:4443/cortex?hostname=a,b&ca=vertex")
    assert (u.scheme, u.user, u.password) == ("ssl", "visi", "p@ss:w0rd")
    assert (u.host, u.port, u.path) == ("cortex.vertex.link", 4443, "/cortex")
    assert u.query == {"hostname": "a,b", "ca": "vertex"}
    assert u.hostnames() == ["a", "b"]


@pytest.mark.parametrize("text, host, port", [
    ("tcp://1.2.3.4", "1.2.3.4", DEFAULT_PORT),
    ("ssl://[::1]:99/", "::1", 99),
    ("ssl://[fe80::1%eth0]", "fe80::1%eth0", DEFAULT_PORT),
    ("ssl://::1", "::1", DEFAULT_PORT),
    ("ssl://2001:db8::7", "2001:db8::7", DEFAULT_PORT),
    ("SSL://Host", "Host", DEFAULT_PORT),
    ("ssl://0.0.0.0:0/", "0.0.0.0", 0),
    ("unix:///run/cortex/sock", "", None),
])
def test_parse_hosts_and_ports(text: str, host: str, port: int | None) -> None:
    u = parse(text)
    assert (u.host, u.port) == (host, port)
    assert parse(u.format()) == u


@pytest.mark.parametrize("text, words", [
    ("", "empty"),
    ("cortex:27492", "SCHEME://"),
    ("ssl://host:99999", "above 65535"),
    ("ssl://host:", "without a port"),
    ("ssl://host:12a", "not a number"),
    ("ssl://[::1", "without ']'"),
    ("ssl://[nope]:1", "not an IPv6"),
    ("ssl://ho st/", "space"),
    ("ssl://host/#frag", "fragment"),
    ("ssl://u:p%zz@host", "percent escape"),
    ("ssl://u:%ff@host", "UTF-8"),
    ("ssl://:pw@host", "user"),
    ("ssl://", "no host"),
    ("ssl://ho$t", "not allowed in a host"),
    ("1ssl://host", "bad scheme"),
    ("ssl://h?=x", "no key"),
])
def test_parse_errors_name_the_problem(text: str, words: str) -> None:
    with pytest.raises(UrlError) as exc:
        parse(text)
    assert words in str(exc.value)


def test_errors_never_show_the_password() -> None:
    with pytest.raises(UrlError) as exc:
        parse("ssl://visi:hunter2@host:99999/")
    assert "hunter2" not in str(exc.value)
    assert "****" in str(exc.value)


@given(st.text(max_size=80))
@settings(max_examples=400, deadline=None)
def test_parse_never_crashes(text: str) -> None:
    try:
        u = parse(text)
    except UrlError:
        return
    assert isinstance(u, TlsUrl)
    assert parse(u.format()) == u


@given(st.text(alphabet=st.characters(blacklist_categories=("Cs",)), max_size=60))
@settings(max_examples=300, deadline=None)
def test_parse_never_crashes_on_url_shaped_text(rest: str) -> None:
    for text in (f"ssl://{rest}", f"ssl://u:{rest}@h", f"tcp://[{rest}]:1"):
        with contextlib.suppress(UrlError):
            parse(text)


_label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,10}[a-z0-9])?", fullmatch=True)
_hosts = st.one_of(
    st.lists(_label, min_size=1, max_size=4).map(".".join),
    st.ip_addresses(v=4).map(str),
    st.ip_addresses(v=6).map(str),
)
_free_text = st.text(alphabet=st.characters(blacklist_categories=("Cs",)), min_size=1,
                     max_size=20)
_query = st.dictionaries(st.text(alphabet="abcdefghijklmnopqrstuvwxyz_", min_size=1, max_size=8),
                         _free_text, max_size=3)


@st.composite
def urls(draw) -> TlsUrl:
    scheme = draw(st.sampled_from(["ssl", "tcp"]))
    user = draw(st.none() | _free_text)
    password = draw(st.none() | _free_text) if user is not None else None
    port = draw(st.integers(0, 65535))
    path = draw(st.sampled_from(["", "/", "/cortex", "/a/b"]))
    return TlsUrl(scheme, draw(_hosts), port, user, password, path, draw(_query))


@given(urls())
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_format_parse_round_trip(u: TlsUrl) -> None:
    assert parse(u.format()) == u


@given(urls(), _free_text)
@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
def test_sanitize_masks_the_password(u: TlsUrl, secret: str) -> None:
    u = TlsUrl(u.scheme, u.host, u.port, u.user or "visi", secret, u.path, {})
    text = u.format()
    shown = sanitize(text)
    back = parse(shown)
    assert back.password == "****"
    assert (back.user, back.host, back.port) == (u.user, u.host, u.port)
    # the userinfo part is the user and the mask, nothing of the secret
    encoded_user = text.split("://", 1)[1].partition(":")[0]
    assert shown.split("://", 1)[1].rpartition("@")[0] == f"{encoded_user}:****"
    assert sanitize(u) == shown


@given(st.text(max_size=60), st.text(min_size=4, max_size=20,
                                     alphabet="abcdefghijklmnopqrstuvwxyz0123456789"))
@settings(max_examples=200, deadline=None)
def test_sanitize_masks_even_unparseable_text(junk: str, secret: str) -> None:
    text = f"ssl://visi:{secret}@{junk}"
    assert secret not in sanitize(text).split("@")[0]


def test_client_cert_candidates_walk_up_the_domain() -> None:
    assert client_cert_candidates("ssl://visi@cortex.vertex.link") == [
        "visi@cortex.vertex.link", "visi@vertex.link", "visi@link"]
    assert client_cert_candidates("ssl://visi@127.0.0.1/?hostname=a.b") == ["visi@a.b", "visi@b"]
    assert client_cert_candidates("ssl://visi:pw@cortex.vertex.link") == []
    assert client_cert_candidates("ssl://visi@h/?certname=bob") == ["bob"]
    assert client_cert_candidates("ssl://127.0.0.1") == []


# -- real handshakes -----------------------------------------------------------

@pytest.fixture(scope="module")
def cd(tmp_path_factory) -> CertDir:
    """One certdir for all handshake tests: two CAs, hosts, users, a revoked user."""
    cdir = CertDir(tmp_path_factory.mktemp("certdir"))
    ec = {"key_type": "ecdsa-p256"}
    cdir.ca("vertex", key_type="rsa2048")
    cdir.ca("other", key_type="rsa2048")
    cdir.host(H1, signas="vertex", **ec)
    cdir.host(H2, signas="vertex", **ec)
    cdir.host("old.vertex.link", signas="vertex",
              valid_from=dt.datetime.now(dt.UTC) - dt.timedelta(days=20), days=10, **ec)
    cdir.user("visi@vertex.link", signas="vertex", **ec)
    cdir.user("mallory@vertex.link", signas="other", **ec)
    cdir.user("gone@vertex.link", signas="vertex", **ec)
    cdir.revoke("vertex", "user", "gone@vertex.link")
    return cdir


class Server:
    """``certs_tls.serve`` in a daemon thread on a free loopback port."""

    def __init__(self, url: str, cd: CertDir, count: int = 1) -> None:
        self.events: list[certs_tls.ServeEvent] = []
        self.error: BaseException | None = None
        ready = threading.Event()
        self.port = 0

        def listening(_host: str, port: int) -> None:
            self.port = port
            ready.set()

        def run() -> None:
            try:
                certs_tls.serve(url, cd, count=count, handshake_timeout=TIMEOUT,
                                on_listen=listening, on_event=self.events.append)
            except BaseException as err:  # reported by the test
                self.error = err
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(TIMEOUT), "server did not start"
        if self.error:
            raise self.error

    def join(self) -> list[certs_tls.ServeEvent]:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "server did not finish"
        return self.events


def talk(url: str, cd: CertDir) -> tuple[str, ssl.SSLSocket | None, dict]:
    """Connect, read the server's line; return it with the TLS facts."""
    with certs_tls.connect(url, cd, timeout=TIMEOUT) as s:
        facts = {"version": s.version(), "cipher": s.cipher()[0],
                 "peer": s.getpeercert(binary_form=True)}
        data = b""
        while not data.endswith(b"\n"):
            chunk = s.recv(100)
            if not chunk:
                break
            data += chunk
        return data.decode(), None, facts


def rejected(url: str, cd: CertDir) -> BaseException:
    """The handshake (or, under TLS 1.3, the first read) must fail."""
    with pytest.raises((ssl.SSLError, ConnectionError)) as exc:
        line, _, _ = talk(url, cd)
        if not line:  # the server closed without a word: also a refusal
            raise ConnectionError("closed without an answer")
    return exc.value


def test_server_only_tls(cd: CertDir) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}", cd)
    line, _, facts = talk(f"ssl://127.0.0.1:{srv.port}/?hostname={H1}", cd)
    assert line == "client-cert: none\n"
    assert facts["version"] in ("TLSv1.2", "TLSv1.3")
    peer = load_cert_file(cd.cert_path("host", H1))
    assert facts["peer"] == peer.public_bytes(Encoding.DER)
    (ev,) = srv.join()
    assert ev.ok and ev.client is None


def test_mutual_tls_user_found_by_domain_walk(cd: CertDir) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}&ca=vertex", cd, count=2)
    line, _, _ = talk(f"ssl://visi@127.0.0.1:{srv.port}/?hostname={H1}", cd)
    assert line == "client-cert: visi@vertex.link\n"
    line, _, _ = talk(f"ssl://127.0.0.1:{srv.port}/?hostname={H1}&certname=visi@vertex.link",
                      cd)
    assert line == "client-cert: visi@vertex.link\n"
    assert [e.client for e in srv.join()] == ["visi@vertex.link"] * 2


@pytest.mark.parametrize("client", [
    "",                                   # no certificate at all
    "certname=mallory@vertex.link&",      # issued by another CA
    "certname=gone@vertex.link&",         # revoked in vertex's CRL
])
def test_mutual_tls_refuses_bad_clients(cd: CertDir, client: str) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}&ca=vertex", cd)
    rejected(f"ssl://127.0.0.1:{srv.port}/?{client}hostname={H1}", cd)
    (ev,) = srv.join()
    assert not ev.ok and ev.client is None


def test_sni_serves_one_certificate_per_name(cd: CertDir) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1},{H2}", cd, count=2)
    for name in (H2, H1):
        _, _, facts = talk(f"ssl://127.0.0.1:{srv.port}/?hostname={name}", cd)
        want = load_cert_file(cd.cert_path("host", name))
        assert fingerprint(load_der(facts["peer"])) == fingerprint(want)
    assert all(e.ok for e in srv.join())


def load_der(der: bytes):
    from cryptography import x509

    return x509.load_der_x509_certificate(der)


def test_certhash_pins_the_server(cd: CertDir) -> None:
    good = fingerprint(load_cert_file(cd.cert_path("host", H1)))
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}", cd, count=2)
    # the pin replaces CA and name checks: a name the cert does not carry is fine
    line, _, _ = talk(f"ssl://127.0.0.1:{srv.port}/?hostname=whatever&certhash={good}", cd)
    assert line == "client-cert: none\n"
    bad = ("0" if good[0] != "0" else "1") + good[1:]
    with pytest.raises(ssl.SSLCertVerificationError, match="pin mismatch"):
        talk(f"ssl://127.0.0.1:{srv.port}/?hostname={H1}&certhash={bad}", cd)
    assert srv.join()[0].ok


def test_certhash_must_be_sha256_hex(cd: CertDir) -> None:
    with pytest.raises(UrlError, match="SHA-256"):
        client_context("ssl://h/?certhash=abc", cd.path)


def test_wrong_hostname_fails(cd: CertDir) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}", cd)
    with pytest.raises(ssl.SSLCertVerificationError, match="Hostname mismatch"):
        talk(f"ssl://127.0.0.1:{srv.port}/?hostname={H2}", cd)
    srv.join()


def test_expired_server_certificate_fails(cd: CertDir) -> None:
    srv = Server("ssl://127.0.0.1:0/?hostname=old.vertex.link", cd)
    with pytest.raises(ssl.SSLCertVerificationError, match="expired"):
        talk(f"ssl://127.0.0.1:{srv.port}/?hostname=old.vertex.link", cd)
    srv.join()


def test_client_honours_the_crl_of_the_server_ca(cd: CertDir, tmp_path) -> None:
    # A certdir of its own, so the revocation does not touch the shared one.
    own = CertDir(tmp_path / "c")
    own.ca("ca", key_type="rsa2048")
    own.host("srv", signas="ca", key_type="ecdsa-p256")
    srv = Server("ssl://127.0.0.1:0/?hostname=srv", own, count=2)
    assert talk(f"ssl://127.0.0.1:{srv.port}/?hostname=srv", own)[0] == "client-cert: none\n"
    own.revoke("ca", "host", "srv")
    with pytest.raises(ssl.SSLCertVerificationError, match="revoked"):
        talk(f"ssl://127.0.0.1:{srv.port}/?hostname=srv", own)
    srv.join()


@pytest.mark.filterwarnings("ignore:ssl.TLSVersion:DeprecationWarning")
@pytest.mark.parametrize("limit", ["old-tls", "rsa-kx"])
def test_server_policy_refuses_weak_clients(cd: CertDir, limit: str) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}", cd)
    ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    ctx.check_hostname = False
    ctx.verify_mode = ssl.CERT_NONE
    if limit == "old-tls":
        ctx.set_ciphers("ALL:@SECLEVEL=0")
        ctx.minimum_version = ssl.TLSVersion.TLSv1
        ctx.maximum_version = ssl.TLSVersion.TLSv1_1
    else:  # TLS 1.2 with RSA key transport only
        ctx.maximum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_ciphers("AES128-GCM-SHA256:AES256-GCM-SHA384")
    with socket.create_connection(("127.0.0.1", srv.port), timeout=TIMEOUT) as raw, \
            pytest.raises(ssl.SSLError):
        ctx.wrap_socket(raw, server_hostname=H1)
    (ev,) = srv.join()
    assert not ev.ok


def test_contexts_have_the_policy(cd: CertDir) -> None:
    s = server_context(f"ssl://0.0.0.0/?hostname={H1}&ca=vertex", cd.path)
    assert s.minimum_version == ssl.TLSVersion.TLSv1_2
    assert s.options & ssl.OP_NO_RENEGOTIATION
    assert s.verify_mode == ssl.CERT_REQUIRED
    assert s.verify_flags & ssl.VERIFY_CRL_CHECK_LEAF  # vertex has a CRL
    kx = {d.split("Kx=")[1].split()[0] for d in (c["description"] for c in s.get_ciphers())}
    assert kx and kx <= {"ECDH", "DH", "any"}, kx
    c = client_context(f"ssl://{H1}", cd.path)
    assert c.minimum_version == ssl.TLSVersion.TLSv1_2 and c.check_hostname


def test_context_errors_name_the_missing_file(cd: CertDir, tmp_path) -> None:
    with pytest.raises(CertError, match="nope.crt"):
        server_context("ssl://0.0.0.0/?hostname=nope", cd.path)
    with pytest.raises(CertError, match="CA 'nobody'"):
        server_context(f"ssl://0.0.0.0/?hostname={H1}&ca=nobody", cd.path)
    with pytest.raises(CertError, match="no CA certificate"):
        client_context("ssl://h1/", tmp_path / "empty")
    with pytest.raises(CertError, match="ghost"):
        client_context(f"ssl://{H1}/?certname=ghost", cd.path)
    with pytest.raises(UrlError, match="ssl://"):
        server_context("tcp://0.0.0.0/", cd.path)
    with pytest.raises(CertError, match="'/'"):
        server_context("ssl://0.0.0.0/?hostname=../../etc/x", cd.path)
