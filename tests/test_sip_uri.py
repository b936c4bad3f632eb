"""URI parsing, RFC 3261 §19.1.4 comparison and AOR canonicalisation."""

from __future__ import annotations

import pytest

from p2preg.sip.uri import (
    OtherUri,
    SipUri,
    TelUri,
    UriError,
    aor_resource_name,
    canonical_aor,
    canonical_uri_key,
    parse_sip_uri,
    parse_uri,
    uri_equal,
)

# RFC 3261 §19.1.4, the "equivalent" list.
EQUAL = [
    ("sip:%61lice@atlanta.com;transport=TCP", "sip:alice@AtLanTa.CoM;Transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;newparam=5"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com;security=on"),
    ("sip:carol@chicago.com;newparam=5", "sip:carol@chicago.com;security=on"),
    (
        "sip:biloxi.com;transport=tcp;method=REGISTER?to=sip:bob%40biloxi.com",
        "sip:biloxi.com;method=REGISTER;transport=tcp?to=sip:bob%40biloxi.com",
    ),
    (
        "sip:alice@atlanta.com?subject=project%20x&priority=urgent",
        "sip:alice@atlanta.com?priority=urgent&subject=project%20x",
    ),
]

# ... and the "not equivalent" list.
NOT_EQUAL = [
    ("SIP:ALICE@AtLanTa.CoM;Transport=udp", "sip:alice@AtLanTa.CoM;Transport=UDP"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:5060"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com;transport=udp"),
    ("sip:bob@biloxi.com", "sip:bob@biloxi.com:6000;transport=tcp"),
    ("sip:carol@chicago.com", "sip:carol@chicago.com?Subject=next%20meeting"),
    ("sip:bob@phone21.boxesbybob.com", "sip:bob@192.0.2.4"),
    ("sip:carol@chicago.com;security=on", "sip:carol@chicago.com;security=off"),
]


@pytest.mark.parametrize(("a", "b"), EQUAL)
def test_rfc3261_equal(a: str, b: str) -> None:
    assert uri_equal(parse_uri(a), parse_uri(b))
    assert uri_equal(parse_uri(b), parse_uri(a))


@pytest.mark.parametrize(("a", "b"), NOT_EQUAL)
def test_rfc3261_not_equal(a: str, b: str) -> None:
    assert not uri_equal(parse_uri(a), parse_uri(b))
    assert not uri_equal(parse_uri(b), parse_uri(a))


def test_more_comparison_rules() -> None:
    # sip and sips never match; maddr/ttl/user/method must match when present in either
    assert not uri_equal(parse_uri("sip:a@x.com"), parse_uri("sips:a@x.com"))
    assert not uri_equal(parse_uri("sip:a@x.com"), parse_uri("sip:a@x.com;maddr=1.2.3.4"))
    assert not uri_equal(parse_uri("sip:a@x.com;user=phone"), parse_uri("sip:a@x.com"))
    assert not uri_equal(
        parse_uri("sip:a@x.com;method=INVITE"), parse_uri("sip:a@x.com;method=invite")
    )
    assert uri_equal(parse_uri("sip:a@x.com;ttl=5"), parse_uri("sip:a@X.COM;TTL=5"))
    assert not uri_equal(parse_uri("sip:a:pw@x.com"), parse_uri("sip:a@x.com"))
    # escaped and unescaped forms of an unreserved character are the same
    assert uri_equal(parse_uri("sip:%41lice@x.com"), parse_uri("sip:Alice@x.com"))
    assert not uri_equal(parse_uri("sip:%00@x.com"), parse_uri("sip:%00%00@x.com"))
    assert uri_equal(parse_uri("tel:+1-201-555-0123"), parse_uri("tel:+12015550123"))
    assert not uri_equal(parse_uri("tel:+12015550123"), parse_uri("sip:+12015550123@x.com"))


def test_parse_components() -> None:
    uri = parse_sip_uri("sips:Alice:secret@Example.COM:5071;transport=TCP;lr?Subject=hi&x=1")
    assert uri.scheme == "sips" and uri.user == "Alice" and uri.password == "secret"
    assert uri.host == "example.com" and uri.port == 5071
    assert uri.params == (("transport", "TCP"), ("lr", None))
    assert uri.headers == (("Subject", "hi"), ("x", "1"))
    assert uri.param("lr") == "" and uri.param("nope") is None
    assert str(uri) == "sips:Alice:secret@Example.COM:5071;transport=TCP;lr?Subject=hi&x=1"


def test_ipv6_references() -> None:
    uri = parse_sip_uri("sip:[2001:DB8::10]:5070")
    assert uri.host == "[2001:db8::10]" and uri.port == 5070 and uri.host_is_ip
    uri = parse_sip_uri("sip:user@[2001:db8::10:5070]")
    assert uri.host == "[2001:db8::10:5070]" and uri.port is None
    # RFC 5118 §4.10: the three-colon form from RFC 3261's ABNF is tolerated
    assert parse_sip_uri("sip:user@[2001:db8:::192.0.2.1]").host == "[2001:db8:::192.0.2.1]"
    assert parse_sip_uri("sip:1.2.3.4").host_is_ip
    assert not parse_sip_uri("sip:host.example").host_is_ip


@pytest.mark.parametrize(
    "text",
    [
        "sip:2001:db8::10",  # RFC 5118 §4.2: IPv6 without brackets
        "<sip:user@example.com>",
        "sip:user@example.com;",
        "sip:user@exa mple.com",
        "sip:user@[2001:db8::1",
        "sip:user@host:99999",
        "sip:@host",
        "sip:user@host?novalue",
        "1sip:x",
        ":x",
        "sip:",
        "tel:",
        "nobody knows:x y",
    ],
)
def test_malformed(text: str) -> None:
    with pytest.raises(UriError):
        parse_uri(text)


def test_other_schemes_are_opaque() -> None:
    assert parse_uri("nobodyKnowsThisScheme:totallyopaquecontent") == OtherUri(
        "nobodyknowsthisscheme", "totallyopaquecontent"
    )
    assert isinstance(parse_uri("soap.beep://192.0.2.103:3002"), OtherUri)
    tel = parse_uri("tel:+1-201-555-0123;phone-context=example.com")
    assert isinstance(tel, TelUri) and tel.number == "+1-201-555-0123"


def test_canonical_aor() -> None:
    def aor(text: str) -> str:
        return canonical_aor(parse_sip_uri(text))

    assert aor("SIP:Alice@Example.COM:5060;transport=tcp?x=y") == "sip:Alice@example.com"
    assert aor("sips:bob@example.com:5061") == "sips:bob@example.com"
    assert aor("sip:bob@example.com:5070") == "sip:bob@example.com:5070"
    assert aor("sip:%61lice%40x@example.com") == "sip:alice%40x@example.com"
    assert aor("sip:al%2aice@example.com") == "sip:al*ice@example.com"
    assert aor("sip:%7euser@example.com") == "sip:~user@example.com"
    assert aor("sip:null-%00-null@example.com") == "sip:null-%00-null@example.com"
    assert aor("sip:x:pw@example.com") == "sip:x@example.com"
    assert aor_resource_name("sip:alice@example.com") == "alice@example.com"
    assert aor_resource_name("sips:alice@example.com:5070") == "alice@example.com:5070"


def test_canonical_key_follows_equality_where_params_agree() -> None:
    a = parse_uri("sip:%61lice@atlanta.com;transport=TCP;foo=Bar")
    b = parse_uri("sip:alice@AtLanTa.CoM;Foo=bar;Transport=tcp")
    assert canonical_uri_key(a) == canonical_uri_key(b)
    c = parse_uri("sip:alice@atlanta.com;rinstance=1")
    d = parse_uri("sip:alice@atlanta.com;rinstance=2")
    assert canonical_uri_key(c) != canonical_uri_key(d)
    e = parse_uri("sip:alice@atlanta.com?b=2&A=1")
    f = parse_uri("sip:alice@atlanta.com?a=1&b=2")
    assert canonical_uri_key(e) == canonical_uri_key(f)


def test_sipuri_equality_dataclass_ignores_raw() -> None:
    assert parse_uri("sip:a@b.com") == SipUri("sip", "a", None, "b.com", None)
