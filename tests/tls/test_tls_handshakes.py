"""Real TLS handshakes over loopback, built from URLs and a certdir.

Every handshake here is a real one between :func:`synfast.tls.probe.serve` in a
thread and :func:`synfast.tls.probe.connect`, both built from URLs and a certdir
made by :class:`synfast.tls.certdir.CertDir`; nothing is mocked.  Network waits are
bounded by timeouts and the server threads are daemons.
"""

from __future__ import annotations

import datetime as dt
import socket
import ssl
import threading

import pytest
from cryptography.hazmat.primitives.serialization import Encoding

from synfast.tls.certdir import CertDir
from synfast.tls.context import client_context, server_context
from synfast.tls.layout import CertError
from synfast.tls.probe import ServeEvent, connect, probe, serve
from synfast.tls.url import UrlError
from synfast.tls.x509 import fingerprint, load_cert_file

TIMEOUT = 5.0
H1, H2 = "h1.vertex.link", "h2.vertex.link"


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
    """``serve`` in a daemon thread on a free loopback port."""

    def __init__(self, url: str, cd: CertDir, count: int = 1) -> None:
        self.events: list[ServeEvent] = []
        self.error: BaseException | None = None
        ready = threading.Event()
        self.port = 0

        def listening(_host: str, port: int) -> None:
            self.port = port
            ready.set()

        def run() -> None:
            try:
                serve(url, cd, count=count, handshake_timeout=TIMEOUT, on_listen=listening,
                      on_event=self.events.append)
            except BaseException as err:  # reported by the test
                self.error = err
                ready.set()

        self.thread = threading.Thread(target=run, daemon=True)
        self.thread.start()
        assert ready.wait(TIMEOUT), "server did not start"
        if self.error:
            raise self.error

    def join(self) -> list[ServeEvent]:
        self.thread.join(TIMEOUT)
        assert not self.thread.is_alive(), "server did not finish"
        return self.events


def talk(url: str, cd: CertDir) -> tuple[str, ssl.SSLSocket | None, dict]:
    """Connect, read the server's line; return it with the TLS facts."""
    with connect(url, cd, timeout=TIMEOUT) as s:
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


# -- a URL that asks for a client certificate the certdir does not have ----------------

def never_accepted() -> socket.socket:
    """A loopback listener nobody accepts on: any TCP connection made to it waits in its
    backlog, where a non-blocking ``accept`` finds it."""
    lsock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    lsock.bind(("127.0.0.1", 0))
    lsock.listen(8)
    lsock.setblocking(False)
    return lsock


def connections_waiting(lsock: socket.socket) -> int:
    n = 0
    while True:
        try:
            conn, _ = lsock.accept()
        except BlockingIOError:
            return n
        conn.close()
        n += 1


def test_user_without_certificate_is_refused_before_any_connection(cd: CertDir) -> None:
    with never_accepted() as lsock:
        port = lsock.getsockname()[1]
        url = f"ssl://bob@127.0.0.1:{port}/?hostname={H1}"
        for attempt in (lambda: client_context(url, cd), lambda: connect(url, cd, timeout=1),
                        lambda: probe(url, cd, timeout=1)):
            with pytest.raises(CertError) as exc:
                attempt()
            text = str(exc.value)
            assert "\n" not in text
            assert text.startswith(f"{cd.path / 'users'}: no client certificate for user bob: "
                                   f"looked for bob@{H1}, bob@vertex.link, bob@link (")
            # two CAs with their keys here: the command says which to choose from
            assert (f"`synfast easycert --certdir {cd.path} bob@{H1} --signas CA`, CA being "
                    "whichever of other, vertex the server trusts") in text
        assert connections_waiting(lsock) == 0
        # the check itself: a plain connection is seen
        socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT).close()
        assert connections_waiting(lsock) == 1


def test_user_without_certificate_never_reaches_a_real_server(cd: CertDir) -> None:
    # serve handles one connection and stops: had bob's attempts connected, the one
    # event would be bob's rejection and visi's connection would find no server.
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}&ca=vertex", cd, count=1)
    base = f"127.0.0.1:{srv.port}/?hostname={H1}"
    with pytest.raises(CertError, match="no client certificate for user bob"):
        probe(f"ssl://bob@{base}", cd, timeout=TIMEOUT)
    with pytest.raises(CertError, match="no client certificate for user bob"):
        talk(f"ssl://bob@{base}", cd)
    # a parent domain's certificate is still the one: visi@vertex.link for h1.vertex.link
    assert talk(f"ssl://visi@{base}", cd)[0] == "client-cert: visi@vertex.link\n"
    (ev,) = srv.join()
    assert ev.ok and ev.client == "visi@vertex.link"


def test_urls_asking_for_no_certificate_still_connect_without_one(cd: CertDir) -> None:
    srv = Server(f"ssl://127.0.0.1:0/?hostname={H1}", cd, count=2)
    base = f"127.0.0.1:{srv.port}/?hostname={H1}"
    assert talk(f"ssl://{base}", cd)[0] == "client-cert: none\n"          # no user
    assert talk(f"ssl://bob:pw@{base}", cd)[0] == "client-cert: none\n"   # a password
    assert [(e.ok, e.client) for e in srv.join()] == [(True, None)] * 2


def test_missing_user_certificate_says_how_to_make_it(tmp_path) -> None:
    own = CertDir(tmp_path / "c")
    url = "ssl://bob@h.example.org/?certhash=" + "0" * 64
    # no CA key here: a request to be signed elsewhere, then an import
    with pytest.raises(CertError) as exc:
        client_context(url, own)
    assert (f"`synfast easycert --certdir {own.path} --csr bob@h.example.org`, have "
            "users/bob@h.example.org.csr signed by the CA the server trusts, then import the "
            f"certificate with `synfast easycert --certdir {own.path} --importfile users "
            "bob@h.example.org.crt`") in str(exc.value)
    # one CA key: the command that makes it
    own.ca("ca", key_type="ecdsa-p256")
    with pytest.raises(CertError) as exc:
        client_context(url, own)
    assert f"`synfast easycert --certdir {own.path} bob@h.example.org --signas ca`" \
        in str(exc.value)
    # a key waiting for its certificate is not made again: its CSR is signed
    own.csr("user", "bob@h.example.org", key_type="ecdsa-p256")
    with pytest.raises(CertError) as exc:
        client_context(url, own)
    csr = own.path / "users/bob@h.example.org.csr"
    assert f"`synfast easycert --certdir {own.path} --sign-csr --signas ca {csr}`" \
        in str(exc.value)
    # a certificate without its key names the key
    own.sign_csr("user", csr, "ca")
    (own.path / "users/bob@h.example.org.key").rename(tmp_path / "bob.key")
    with pytest.raises(CertError, match=r"users/bob@h\.example\.org\.key: users/bob@h\.example"
                       r"\.org\.crt is here but not its private key \(import the key with"):
        client_context(url, own)
    (tmp_path / "bob.key").rename(own.path / "users/bob@h.example.org.key")
    assert client_context(url, own).certname == "bob@h.example.org"
    # certname= is exact, and says the same
    with pytest.raises(CertError, match=r"certname=ghost: ghost\.crt not found \(make it with "
                       r"`synfast easycert --certdir \S+ ghost --signas ca`\)"):
        client_context(url + "&certname=ghost", own)


def test_listener_without_host_certificate_says_how_to_make_it(cd: CertDir) -> None:
    with pytest.raises(CertError) as exc:
        server_context("ssl://127.0.0.1:0/?hostname=nope.vertex.link", cd)
    assert str(exc.value).startswith(f"{cd.path / 'hosts/nope.vertex.link.crt'}: hostname=")
    assert (f"`synfast easycert --certdir {cd.path} --server nope.vertex.link --signas CA`"
            in str(exc.value))
