"""Revocation (CRLs) and ``verify``/``inventory`` reports on a certdir, with ``openssl``
agreeing on revocation."""

from __future__ import annotations

import datetime as dt
import os

import pytest

from synfast.tls.certdir import CertDir
from synfast.tls.layout import CertError
from tests.tls.conftest import openssl

EC = {"key_type": "ecdsa-p256"}


def test_revocation_shows_in_the_crl_and_in_verify(tmp_path) -> None:
    c = CertDir(tmp_path)
    c.ca("ca", key_type="rsa2048")
    c.user("u1", signas="ca", **EC)
    c.user("u2", signas="ca", **EC)
    assert c.verify("u1").ok
    crl = c.revoke("ca", "user", "u1")
    assert crl == tmp_path / "crls/ca.crl"
    serial = c.load_cert("user", "u1").serial_number
    proc = openssl("crl", "-in", str(crl), "-CAfile", str(c.cert_path("ca", "ca")),
                   "-noout", "-text")
    assert proc.returncode == 0, proc.stderr
    assert f"{serial:X}" in proc.stdout.decode().replace(":", "").upper()
    rep = c.verify("u1")
    assert not rep.ok and any("REVOKED" in p.detail for p in rep.problems)
    assert c.verify("u2").ok
    # openssl agrees when asked to check the CRL
    both = tmp_path / "ca+crl.pem"
    both.write_bytes(c.cert_path("ca", "ca").read_bytes() + crl.read_bytes())
    assert openssl("verify", "-crl_check", "-CAfile", str(both),
                   str(c.cert_path("user", "u1"))).returncode != 0
    assert openssl("verify", "-crl_check", "-CAfile", str(both),
                   str(c.cert_path("user", "u2"))).returncode == 0
    # reissuing keeps the entry; revoking by a CA that did not sign is refused
    c.gen_crl("ca")
    assert not c.verify("u1").ok
    c.ca("ca2", key_type="rsa2048")
    with pytest.raises(CertError, match="not issued by CA ca2"):
        c.revoke("ca2", "user", "u2")


def test_verify_reports_expiry_key_mismatch_and_usage(tmp_path) -> None:
    c = CertDir(tmp_path)
    c.ca("ca", key_type="rsa2048")
    past = dt.datetime.now(dt.UTC) - dt.timedelta(days=30)
    c.host("old", signas="ca", valid_from=past, days=10, **EC)
    rep = c.verify("old")
    assert [p.what for p in rep.problems] == ["dates"]
    assert [r.status for r in c.inventory() if r.name == "old"] == ["expired"]
    c.host("soon", signas="ca", days=5, **EC)
    assert [r.status for r in c.inventory() if r.name == "soon"] == ["expiring"]
    c.user("swap", signas="ca", **EC)
    os.replace(c.key_path("host", "soon"), c.key_path("user", "swap"))
    rep = c.verify("swap")
    assert [p.what for p in rep.problems] == ["key"]
    row = next(r for r in c.inventory() if r.name == "swap")
    assert row.key_present and row.key_matches is False
    # a user cert put where a host cert belongs lacks serverAuth and the SAN
    c.user("misplaced", signas="ca", **EC)
    os.replace(c.cert_path("user", "misplaced"), c.cert_path("host", "misplaced"))
    os.replace(c.key_path("user", "misplaced"), c.key_path("host", "misplaced"))
    assert {p.what for p in c.verify("misplaced", "host").problems} == {"usage", "SAN"}
    # self-signed user: no chain to a CA
    c.user("selfie", **EC)
    assert [p.what for p in c.verify("selfie").problems] == ["chain"]
