"""Certificate names (what may become a file name) and where the certdir is."""

from __future__ import annotations

import pytest

from synfast.tls.certdir import CertDir
from synfast.tls.layout import CertError, validate_name


@pytest.mark.parametrize("name", ["", "a/b", "..", ".", "-rf", "x\x00y", "x\ny", "é" * 33])
def test_bad_names_are_refused(name: str) -> None:
    with pytest.raises(CertError):
        validate_name(name)


@pytest.mark.parametrize("name", ["a", "visi@vertex.link", "é" * 32, "x" * 64, "a..b"])
def test_good_names(name: str) -> None:
    assert validate_name(name) == name


def test_default_certdir_honours_syn_cert_dir(monkeypatch, tmp_path) -> None:
    monkeypatch.setenv("SYN_CERT_DIR", str(tmp_path / "env"))
    assert CertDir().path == tmp_path / "env"
    monkeypatch.delenv("SYN_CERT_DIR")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert CertDir().path == tmp_path / "home/.syn/certs"
