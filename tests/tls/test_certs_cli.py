"""``synfast certs list|verify`` on a certdir made by ``synfast easycert``."""

from __future__ import annotations

import json
from pathlib import Path

from tests.tls.conftest import one_error_line, run


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
