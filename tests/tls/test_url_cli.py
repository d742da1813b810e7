"""``synfast url parse|check|probe|serve`` as users run them; ``url serve`` runs as a real
process, talked to by ``openssl s_client`` and by ``synfast url probe``."""

from __future__ import annotations

import json
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tls.conftest import OPENSSL, one_error_line, run


def test_url_parse_and_check(certdir: Path, capsys) -> None:
    code, out, _ = run(capsys, "url", "parse", "ssl://visi:s3cret@[::1]/?hostname=h1.vertex.link")
    info = json.loads(out)
    assert code == 0 and "s3cret" not in out
    assert (info["host"], info["port"], info["password"]) == ("::1", 27492, "****")
    code, _, err = run(capsys, "url", "parse", "ssl://visi:s3cret@host:70000")
    assert code == 1 and "s3cret" not in err and "above 65535" in one_error_line(err)
    code, out, _ = run(capsys, "url", "check", "--certdir", str(certdir), "--listen",
                       "ssl://0.0.0.0:0/?hostname=h1.vertex.link&ca=vertex")
    assert code == 0, out
    code, out, err = run(capsys, "url", "check", "--certdir", str(certdir), "--listen",
                         "ssl://0.0.0.0:0/?hostname=h1.vertex.link,h9&ca=vertex")
    assert code == 1 and "h9" in one_error_line(err)
    code, out, _ = run(capsys, "url", "check", "--certdir", str(certdir), "--json",
                       "ssl://visi@h1.vertex.link/")
    data = json.loads(out)
    assert code == 0 and data["ok"]
    assert any(c["check"].startswith("users/visi@vertex.link") for c in data["checks"])
    code, _, err = run(capsys, "url", "check", "--certdir", str(certdir),
                       "ssl://h1.vertex.link/?certname=ghost")
    assert code == 1 and "ghost" in one_error_line(err)


class Serve:
    """``synfast url serve`` as a real process on a free port."""

    def __init__(self, certdir: Path, url: str, count: int) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "synfast", "url", "serve", "--certdir", str(certdir),
             "--count", str(count), "--timeout", "5", url],
            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
        first = self.proc.stdout.readline()
        assert first.startswith("listening on "), first + self.proc.stderr.read()
        self.port = int(first.rsplit(":", 1)[1])

    def finish(self) -> list[str]:
        try:
            out, _ = self.proc.communicate(timeout=15)
        finally:
            self.proc.kill()
        return out.splitlines()


def s_client(port: int, certdir: Path, *extra: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [OPENSSL, "s_client", "-connect", f"127.0.0.1:{port}", "-servername", "h1.vertex.link",
         "-verify_hostname", "h1.vertex.link", "-verify_return_error", "-ign_eof",
         "-CAfile", str(certdir / "cas/vertex.crt"), *extra],
        input="", capture_output=True, text=True, timeout=20)


def test_openssl_s_client_against_url_serve(certdir: Path) -> None:
    srv = Serve(certdir, "ssl://127.0.0.1:0/?hostname=h1.vertex.link&ca=vertex", count=2)
    user = certdir / "users/visi@vertex.link"
    good = s_client(srv.port, certdir, "-cert", f"{user}.crt", "-key", f"{user}.key")
    assert "client-cert: visi@vertex.link" in good.stdout
    assert "Verify return code: 0 (ok)" in good.stdout
    bare = s_client(srv.port, certdir)
    assert "client-cert:" not in bare.stdout
    lines = srv.finish()
    assert lines[0].startswith("accepted ") and "client=visi@vertex.link" in lines[0]
    assert lines[1].startswith("rejected ")


def test_url_probe_against_url_serve(certdir: Path, capsys) -> None:
    srv = Serve(certdir, "ssl://127.0.0.1:0/?hostname=h1.vertex.link&ca=vertex", count=4)
    base = f"127.0.0.1:{srv.port}/?hostname=h1.vertex.link"
    code, out, _ = run(capsys, "url", "probe", "--certdir", str(certdir), "--timeout", "5",
                       "--json", f"ssl://visi@{base}")
    res = json.loads(out)
    assert code == 0 and res["ok"] and res["answer"] == "client-cert: visi@vertex.link"
    assert res["chain"][0]["subject"] == "h1.vertex.link" and res["tls_version"]
    code, out, err = run(capsys, "url", "probe", "--certdir", str(certdir), "--timeout", "5",
                         f"ssl://{base}")
    assert code == 1 and "rejected" in one_error_line(err)
    code, out, err = run(capsys, "url", "probe", "--certdir", str(certdir), "--timeout", "5",
                         f"ssl://127.0.0.1:{srv.port}/?hostname=wrong.name")
    assert code == 1 and "verification: FAILED" in out
    assert "chain[0] (peer): CN=h1.vertex.link" in out  # shown although not trusted
    srv.finish()


def test_url_probe_of_a_user_without_certificate(certdir: Path, capsys) -> None:
    """One line naming the user, the names and directory searched and the command that
    makes the certificate; exit 1; and nothing reaches the server: ``url serve`` logs
    every connection, and with ``--count 1`` the first one would be its last."""
    srv = Serve(certdir, "ssl://127.0.0.1:0/?hostname=h1.vertex.link&ca=vertex", count=1)
    url = f"ssl://bob@127.0.0.1:{srv.port}/?hostname=h1.vertex.link"
    fix = f"synfast easycert --certdir {shlex.quote(str(certdir))} bob@h1.vertex.link " \
        "--signas vertex"
    for extra in ([], ["--json"]):
        code, out, err = run(capsys, "url", "probe", "--certdir", str(certdir),
                             "--timeout", "5", *extra, url)
        assert (code, out) == (1, "")
        assert one_error_line(err) == (
            f"synfast: error: {certdir / 'users'}: no client certificate for user bob: looked "
            "for bob@h1.vertex.link, bob@vertex.link, bob@link (make it with "
            f"`{fix}`; or name another one with ?certname=NAME)")
    # `url check` fails the same way, with the same words
    code, out, err = run(capsys, "url", "check", "--certdir", str(certdir), url)
    assert code == 1 and f"FAIL  client certificate: {certdir / 'users'}: no client" in out
    assert f"`{fix}`" in one_error_line(err)
    # the command, run as printed (with a quicker key), is the fix
    argv = shlex.split(fix)
    assert argv[0] == "synfast"
    assert run(capsys, *argv[1:], "--key-type", "ecdsa-p256")[0] == 0
    code, out, err = run(capsys, "url", "probe", "--certdir", str(certdir), "--timeout", "5",
                         url)
    assert code == 0 and "server said: client-cert: bob@h1.vertex.link" in out, err
    (line,) = srv.finish()
    assert line.startswith("accepted ") and "client=bob@h1.vertex.link" in line


@pytest.mark.parametrize("argv", [["certs", "list"], ["certs", "verify"], ["url", "parse"],
                                  ["url", "check"], ["url", "probe"], ["url", "serve"]])
def test_every_help_page_renders(capsys, argv) -> None:
    code, out, err = run(capsys, *argv, "--help")
    assert code == 0 and "Usage:" in out and err == ""
