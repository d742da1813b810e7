"""Making certificates, keys, CSRs and p12 bundles, checked by the ``openssl`` command as an
independent verifier."""

from __future__ import annotations

import datetime as dt
import os
import stat

import pytest

from synfast.tls.certdir import CertDir
from synfast.tls.layout import CertError, CertFileExists
from tests.tls.conftest import openssl, x509_text

EC = {"key_type": "ecdsa-p256"}


@pytest.fixture(scope="module")
def cd(tmp_path_factory) -> CertDir:
    c = CertDir(tmp_path_factory.mktemp("certdir"))
    c.ca("vertex", key_type="rsa2048")
    c.ca("sub", signas="vertex", key_type="rsa2048")
    c.ca("other", key_type="rsa2048")
    c.host("cortex.vertex.link", signas="vertex", sans="DNS:alt.vertex.link,email:a@b.c", **EC)
    c.user("visi@vertex.link", signas="vertex", **EC)
    c.user("leaf@vertex.link", signas="sub", **EC)
    c.code("signer", signas="vertex", **EC)
    c.user("stranger", signas="other", **EC)
    return c


@pytest.mark.parametrize("kind, name, anchor", [
    ("host", "cortex.vertex.link", "vertex"),
    ("user", "visi@vertex.link", "vertex"),
    ("code", "signer", "vertex"),
    ("ca", "sub", "vertex"),
    ("user", "stranger", "other"),
])
def test_openssl_verifies_every_issued_cert(cd: CertDir, kind, name, anchor) -> None:
    proc = openssl("verify", "-CAfile", str(cd.cert_path("ca", anchor)),
                   str(cd.cert_path(kind, name)))
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.decode().strip().endswith(": OK")


def test_openssl_verifies_through_an_intermediate_ca(cd: CertDir) -> None:
    proc = openssl("verify", "-CAfile", str(cd.cert_path("ca", "vertex")),
                   "-untrusted", str(cd.cert_path("ca", "sub")),
                   str(cd.cert_path("user", "leaf@vertex.link")))
    assert proc.returncode == 0, proc.stderr


def test_openssl_rejects_a_cert_from_another_ca(cd: CertDir) -> None:
    proc = openssl("verify", "-CAfile", str(cd.cert_path("ca", "vertex")),
                   str(cd.cert_path("user", "stranger")))
    assert proc.returncode != 0


def test_profiles_as_openssl_reads_them(cd: CertDir) -> None:
    ca = x509_text(cd.cert_path("ca", "vertex"))
    assert "CA:TRUE" in ca and "Subject: CN = vertex" in ca and "Issuer: CN = vertex" in ca
    assert "sha256WithRSAEncryption" in ca
    host = x509_text(cd.cert_path("host", "cortex.vertex.link"))
    assert "CA:FALSE" in host and "TLS Web Server Authentication" in host
    assert "Digital Signature, Key Encipherment" in host
    assert "DNS:cortex.vertex.link, DNS:alt.vertex.link, email:a@b.c" in host
    assert "Issuer: CN = vertex" in host
    user = x509_text(cd.cert_path("user", "visi@vertex.link"))
    assert "TLS Web Client Authentication" in user and "CA:FALSE" in user
    assert "Subject Alternative Name" not in user
    code = x509_text(cd.cert_path("code", "signer"))
    assert "Code Signing" in code


def test_validity_is_ten_years_by_default(cd: CertDir) -> None:
    cert = cd.load_cert("ca", "vertex")
    span = cert.not_valid_after_utc - cert.not_valid_before_utc
    assert span == dt.timedelta(days=3650)


def test_default_key_is_rsa4096_in_traditional_pem(tmp_path) -> None:
    c = CertDir(tmp_path)
    saved = c.ca("big")  # the one 4096-bit key of this file
    assert [s.line() for s in saved] == [f"key saved: {tmp_path}/cas/big.key",
                                         f"cert saved: {tmp_path}/cas/big.crt"]
    key = (tmp_path / "cas/big.key").read_text()
    assert key.startswith("-----BEGIN RSA PRIVATE KEY-----")
    text = x509_text(tmp_path / "cas/big.crt")
    assert "Public-Key: (4096 bit)" in text and "Exponent: 65537" in text


def test_modes_keys_0600_dirs_0700(cd: CertDir) -> None:
    assert stat.S_IMODE(os.stat(cd.path / "hosts").st_mode) == 0o700
    assert stat.S_IMODE(os.stat(cd.key_path("host", "cortex.vertex.link")).st_mode) == 0o600
    assert not [p for p in cd.path.rglob("*") if p.name.startswith(".")], "temp files left"


def test_p12_is_read_by_openssl(cd: CertDir) -> None:
    (saved,) = cd.p12("visi@vertex.link")
    assert saved.line() == f"client cert saved: {cd.path}/users/visi@vertex.link.p12"
    assert stat.S_IMODE(os.stat(saved.path).st_mode) == 0o600
    proc = openssl("pkcs12", "-in", str(saved.path), "-nodes", "-passin", "pass:", "-info")
    out = proc.stdout.decode()
    assert proc.returncode == 0, proc.stderr
    assert "friendlyName: visi@vertex.link" in out
    assert "subject=CN = visi@vertex.link" in out and "subject=CN = vertex" in out
    assert "PRIVATE KEY-----" in out
    with pytest.raises(CertFileExists):
        cd.p12("visi@vertex.link")


def test_csr_verifies_and_a_foreign_csr_gets_signed(cd: CertDir, tmp_path) -> None:
    saved = cd.csr("host", "pending.vertex.link", **EC)
    assert [s.label for s in saved] == ["key", "csr"]
    csr = cd.path / "hosts/pending.vertex.link.csr"
    proc = openssl("req", "-in", str(csr), "-noout", "-verify", "-text")
    assert proc.returncode == 0, proc.stderr
    assert "CN = pending.vertex.link" in proc.stdout.decode()
    assert "CA:FALSE" in proc.stdout.decode() and "critical" in proc.stdout.decode()
    # a CSR made by openssl itself, signed by us as a host cert
    key, req = tmp_path / "o.key", tmp_path / "o.csr"
    proc = openssl("req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                   "-nodes", "-keyout", str(key), "-out", str(req), "-subj", "/CN=made.by.openssl")
    assert proc.returncode == 0, proc.stderr
    (saved,) = cd.sign_csr("host", req, "vertex")
    assert saved.path == cd.cert_path("host", "made.by.openssl")
    text = x509_text(saved.path)
    assert "TLS Web Server Authentication" in text and "DNS:made.by.openssl" in text
    assert openssl("verify", "-CAfile", str(cd.cert_path("ca", "vertex")),
                   str(saved.path)).returncode == 0
    # and the openssl key matches the signed certificate
    a = openssl("pkey", "-in", str(key), "-pubout").stdout
    b = openssl("x509", "-in", str(saved.path), "-noout", "-pubkey").stdout
    assert a == b


def test_a_ca_signs_only_with_its_own_key(tmp_path) -> None:
    c = CertDir(tmp_path)
    c.ca("a", key_type="rsa2048")
    c.ca("b", key_type="rsa2048")
    os.replace(c.key_path("ca", "b"), c.key_path("ca", "a"))
    with pytest.raises(CertError, match="does not match the certificate of CA a"):
        c.user("x", signas="a", **EC)
    assert not c.cert_path("user", "x").exists() and not c.key_path("user", "x").exists()


def test_existing_files_are_never_replaced(tmp_path) -> None:
    c = CertDir(tmp_path)
    c.ca("ca", key_type="rsa2048")
    before = c.cert_path("ca", "ca").read_bytes()
    with pytest.raises(CertFileExists) as exc:
        c.ca("ca", key_type="rsa2048")
    assert exc.value.path == str(c.key_path("ca", "ca"))
    assert c.cert_path("ca", "ca").read_bytes() == before
    # only the cert exists: still refused, and no key is left behind
    c.host("h", signas="ca", **EC)
    c.key_path("host", "h").unlink()
    with pytest.raises(CertFileExists):
        c.host("h", signas="ca", **EC)
    assert not c.key_path("host", "h").exists()


def test_import_copies_and_checks(tmp_path) -> None:
    src = CertDir(tmp_path / "src")
    src.ca("theirs", key_type="rsa2048")
    dst = CertDir(tmp_path / "dst")
    dest = dst.import_file("cas", src.cert_path("ca", "theirs"))
    assert dest.read_bytes() == src.cert_path("ca", "theirs").read_bytes()
    with pytest.raises(CertFileExists):
        dst.import_file("cas", src.cert_path("ca", "theirs"))
    bad = tmp_path / "bad.crt"
    bad.write_text("-----BEGIN CERTIFICATE-----\nnot base64\n-----END CERTIFICATE-----\n")
    with pytest.raises(CertError, match="not a valid PEM"):
        dst.import_file("cas", bad)
    assert not (dst.path / "cas/bad.crt").exists()
    other = tmp_path / "x.pem"
    other.write_text("x")
    with pytest.raises(CertError, match="only .crt"):
        dst.import_file("cas", other)
