"""Helpers shared by the tls tests: the ``openssl`` command as an independent
verifier, the CLI run in-process, and a certdir made with the CLI."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from synfast.cli import main

OPENSSL = "/usr/bin/openssl"


def openssl(*args: str, input: bytes | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([OPENSSL, *args], capture_output=True, input=input, timeout=30)


def x509_text(path: Path) -> str:
    proc = openssl("x509", "-in", str(path), "-noout", "-text")
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.decode()


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


def one_error_line(err: str) -> str:
    lines = err.splitlines()
    assert len(lines) == 1 and lines[0].startswith("synfast: error: "), err
    return lines[0]


@pytest.fixture
def certdir(tmp_path, capsys) -> Path:
    """A certdir with CA vertex, host h1.vertex.link and user visi@vertex.link."""
    ec, rsa = ["--key-type", "ecdsa-p256"], ["--key-type", "rsa2048"]
    d = tmp_path / "certs"
    assert run(capsys, "easycert", "--certdir", str(d), "--ca", "vertex", *rsa)[0] == 0
    assert run(capsys, "easycert", "--certdir", str(d), "--server", "h1.vertex.link",
               "--signas", "vertex", *ec)[0] == 0
    assert run(capsys, "easycert", "--certdir", str(d), "--signas", "vertex",
               "visi@vertex.link", *ec)[0] == 0
    return d
