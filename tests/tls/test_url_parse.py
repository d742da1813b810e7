"""Telepath URLs: parsing, formatting and masking passwords (with hypothesis), and the
client certificate names a URL implies."""

from __future__ import annotations

import contextlib

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from synfast.tls.url import (
    DEFAULT_PORT,
    TlsUrl,
    UrlError,
    client_cert_candidates,
    parse,
    sanitize,
)


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
