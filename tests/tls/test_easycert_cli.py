"""``synfast easycert`` as users run it: Synapse's command lines and outputs, refusals,
and errors as one line.

Commands run in-process through ``synfast.cli.main`` (fast) and, where a real process
matters (file permissions as another user), as subprocesses with timeouts.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.tls.conftest import OPENSSL, one_error_line, run, tree

EC = ["--key-type", "ecdsa-p256"]
RSA = ["--key-type", "rsa2048"]


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


def test_help_lists_the_synapse_flags(capsys) -> None:
    code, out, _ = run(capsys, "easycert", "--help")
    for flag in ("--certdir", "--importfile", "--ca", "--crl", "--p12", "--code", "--server",
                 "--server-sans", "--csr", "--sign-csr", "--signas", "--revokeas", "--days",
                 "--key-type", "--sans"):
        assert flag in out
    assert "RSA" in out and code == 0
