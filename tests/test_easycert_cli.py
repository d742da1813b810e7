"""``synfast easycert``, ``synfast certs`` and ``synfast url`` as users run them.

Commands run in-process through ``synfast.cli.main`` (fast) and, where a real
process matters (a listener, ``openssl s_client`` talking to it, file
permissions as another user), as subprocesses with timeouts.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from synfast.cli import main

OPENSSL = "/usr/bin/openssl"
EC = ["--key-type", "ecdsa-p256"]
RSA = ["--key-type", "rsa2048"]


def run(capsys, *argv: str) -> tuple[int, str, str]:
    """Run the CLI in-process; return (exit code, stdout, stderr)."""
    code = 0
    try:
        main(list(argv))
    except SystemExit as exc:
        code = exc.code if isinstance(exc.code, int) else (0 if exc.code is None else 1)
    out, err = capsys.readouterr()
    return code, out, err


def tree(path: Path) -> dict[str, bytes]:
    return {str(p.relative_to(path)): p.read_bytes() for p in sorted(path.rglob("*"))
            if p.is_file()} if path.exists() else {}


@pytest.fixture
def certdir(tmp_path, capsys) -> Path:
    """A certdir with CA vertex, host h1.vertex.link and user visi@vertex.link."""
    d = tmp_path / "certs"
    assert run(capsys, "easycert", "--certdir", str(d), "--ca", "vertex", *RSA)[0] == 0
    assert run(capsys, "easycert", "--certdir", str(d), "--server", "h1.vertex.link",
               "--signas", "vertex", *EC)[0] == 0
    assert run(capsys, "easycert", "--certdir", str(d), "--signas", "vertex",
               "visi@vertex.link", *EC)[0] == 0
    return d


def test_synapse_command_lines_and_outputs(tmp_path, capsys) -> None:
    d = str(tmp_path / "c")
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--ca", "vertex", *RSA)
    assert code == 0
    assert out.splitlines() == [f"key saved: {d}/cas/vertex.key", f"cert saved: {d}/cas/vertex.crt"]
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--server", "cortex.vertex.link",
                       "--signas", "vertex", "--server-sans", "DNS:c2.vertex.link", *EC)
    assert out.splitlines() == [f"key saved: {d}/hosts/cortex.vertex.link.key",
                                f"cert saved: {d}/hosts/cortex.vertex.link.crt"]
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--csr", "--server", "new.vertex.link",
                       *EC)
    assert out.splitlines() == [f"key saved: {d}/hosts/new.vertex.link.key",
                                f"csr saved: {d}/hosts/new.vertex.link.csr"]
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--sign-csr", "--server", "--signas",
                       "vertex", f"{d}/hosts/new.vertex.link.csr")
    assert (code, out) == (0, f"cert saved: {d}/hosts/new.vertex.link.crt\n")
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--signas", "vertex", "visi", *EC,
                       "--sans", "email:visi@vertex.link")
    assert out.splitlines()[1] == f"cert saved: {d}/users/visi.crt"
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--p12", "visi")
    assert (code, out) == (0, f"client cert saved: {d}/users/visi.p12\n")
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--code", "--signas", "vertex",
                       "release", *EC)
    assert out.splitlines()[1] == f"cert saved: {d}/code/release.crt"
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--crl", "vertex")
    assert (code, out) == (0, f"CRL saved: {d}/crls/vertex.crl\n")
    code, out, _ = run(capsys, "easycert", "--certdir", d, "--revokeas", "vertex", "visi")
    assert (code, out) == (0, "Certificate revoked: visi\nCRL updated: vertex\n")
    # every issued certificate verifies with openssl against the CA
    for crt in ("hosts/cortex.vertex.link.crt", "hosts/new.vertex.link.crt", "users/visi.crt",
                "code/release.crt"):
        proc = subprocess.run([OPENSSL, "verify", "-CAfile", f"{d}/cas/vertex.crt",
                               f"{d}/{crt}"], capture_output=True, timeout=30)
        assert proc.returncode == 0, proc.stderr
    text = subprocess.run([OPENSSL, "x509", "-in", f"{d}/users/visi.crt", "-noout", "-text"],
                          capture_output=True, text=True, timeout=30).stdout
    assert "email:visi@vertex.link" in text


def test_syn_cert_dir_is_the_default(tmp_path, capsys, monkeypatch) -> None:
    monkeypatch.setenv("SYN_CERT_DIR", str(tmp_path / "env"))
    code, out, _ = run(capsys, "easycert", "--ca", "envca", *RSA)
    assert code == 0 and (tmp_path / "env/cas/envca.crt").is_file()


def test_file_exists_exits_1_and_writes_nothing(certdir: Path, capsys) -> None:
    before = tree(certdir)
    code, out, err = run(capsys, "easycert", "--certdir", str(certdir), "--ca", "vertex", *RSA)
    assert (code, out, err) == (1, f"file exists: {certdir}/cas/vertex.key\n", "")
    assert tree(certdir) == before


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("synfast: error: "), err
    return lines[0]


@pytest.mark.parametrize("argv, words", [
    (["--signas", "nope", "someone"], "nope.crt: certificate not found"),
    (["--server", "a/b", "--signas", "vertex"], "contains '/'"),
    (["--server", "..", "--signas", "vertex"], "not allowed"),
    (["--sign-csr", "--signas", "vertex", "missing.csr"], "csr not found"),
    (["--server", "x", "--server-sans", "IP:1.2.3.4", "--signas", "vertex"], "IP"),
    (["--p12", "nobody"], "nobody.crt: certificate not found"),
    (["--revokeas", "nope", "visi@vertex.link"], "nope.crt"),
])
def test_bad_input_one_line_exit_1_nothing_written(certdir: Path, capsys, argv, words) -> None:
    before = tree(certdir)
    code, out, err = run(capsys, "easycert", "--certdir", str(certdir), *argv, *EC)
    assert code == 1 and out == ""
    assert words in one_error_line(err)
    assert tree(certdir) == before


def test_missing_ca_key_and_corrupt_pem(certdir: Path, capsys) -> None:
    (certdir / "cas/vertex.key").rename(certdir / "vertex.key.aside")
    before = tree(certdir)
    code, _, err = run(capsys, "easycert", "--certdir", str(certdir), "--signas", "vertex",
                       "u2", *EC)
    assert code == 1 and "vertex.key: private key not found" in one_error_line(err)
    assert tree(certdir) == before
    (certdir / "vertex.key.aside").rename(certdir / "cas/vertex.key")
    crt = certdir / "cas/vertex.crt"
    crt.write_bytes(crt.read_bytes()[:200])  # truncated PEM
    before = tree(certdir)
    code, _, err = run(capsys, "easycert", "--certdir", str(certdir), "--signas", "vertex",
                       "u3", *EC)
    assert code == 1 and "not a valid PEM or DER certificate" in one_error_line(err)
    assert tree(certdir) == before


def test_certdir_not_writable(tmp_path, capsys) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    code, _, err = run(capsys, "easycert", "--certdir", str(blocker), "--ca", "x", *RSA)
    assert code == 1 and "not a directory" in one_error_line(err)
    assert blocker.read_text() == "not a directory"


@pytest.mark.skipif(shutil.which("setpriv") is None, reason="setpriv (util-linux) is missing")
def test_certdir_read_only_for_the_user(certdir: Path) -> None:
    # Root would write anyway; without the permission-override capabilities
    # the modes apply to root as to anyone.
    os.chmod(certdir / "cas", 0o555)
    before = tree(certdir)
    proc = subprocess.run(
        ["setpriv", "--bounding-set=-dac_override,-dac_read_search,-fowner", sys.executable,
         "-m", "synfast", "easycert", "--certdir", str(certdir), "--ca", "y", *RSA],
        capture_output=True, text=True, timeout=60)
    os.chmod(certdir / "cas", 0o700)
    assert proc.returncode == 1, proc.stderr
    assert "permission denied" in one_error_line(proc.stderr)
    assert tree(certdir) == before


def test_certs_list_and_verify(certdir: Path, capsys) -> None:
    code, out, _ = run(capsys, "certs", "list", "--certdir", str(certdir), "--json")
    rows = {(r["kind"], r["name"]): r for r in json.loads(out)["certificates"]}
    assert set(rows) == {("ca", "vertex"), ("host", "h1.vertex.link"),
                         ("user", "visi@vertex.link")}
    assert all(r["key_matches"] and r["status"] == "ok" and r["days_left"] >= 3649
               for r in rows.values())
    assert rows[("host", "h1.vertex.link")]["issuer"] == "vertex"
    code, out, _ = run(capsys, "certs", "list", "--certdir", str(certdir))
    assert out.splitlines()[0].split()[:3] == ["KIND", "NAME", "ISSUER"]
    code, out, _ = run(capsys, "certs", "verify", "visi@vertex.link", "--certdir", str(certdir))
    assert code == 0 and out.splitlines()[-1] == "user visi@vertex.link: OK"
    run(capsys, "easycert", "--certdir", str(certdir), "--revokeas", "vertex", "visi@vertex.link")
    code, out, err = run(capsys, "certs", "verify", "visi@vertex.link", "--certdir", str(certdir))
    assert code == 1 and "REVOKED" in one_error_line(err)
    code, out, _ = run(capsys, "certs", "list", "--certdir", str(certdir), "--json")
    assert {r["name"]: r["status"] for r in json.loads(out)["certificates"]}[
        "visi@vertex.link"] == "revoked"
    code, _, err = run(capsys, "certs", "verify", "ghost", "--certdir", str(certdir))
    assert code == 1 and "no certificate named 'ghost'" in one_error_line(err)


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


def test_help_lists_the_synapse_flags(capsys) -> None:
    code, out, _ = run(capsys, "easycert", "--help")
    for flag in ("--certdir", "--importfile", "--ca", "--crl", "--p12", "--code", "--server",
                 "--server-sans", "--csr", "--sign-csr", "--signas", "--revokeas", "--days",
                 "--key-type", "--sans"):
        assert flag in out
    assert "RSA" in out and code == 0


@pytest.mark.parametrize("argv", [["certs", "list"], ["certs", "verify"], ["url", "parse"],
                                  ["url", "check"], ["url", "probe"], ["url", "serve"]])
def test_every_help_page_renders(capsys, argv) -> None:
    code, out, err = run(capsys, *argv, "--help")
    assert code == 0 and "Usage:" in out and err == ""
