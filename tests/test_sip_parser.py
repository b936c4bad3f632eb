"""SIP message parsing and serialization, datagram and stream framing."""

from __future__ import annotations

import pytest

from p2preg.sip import LocalRegistrar, Source
from p2preg.sip.core import Drop, Respond, SipCore
from p2preg.sip.headers import (
    HeaderError,
    parse_name_addr,
    parse_params,
    parse_qvalue,
    parse_via,
    split_list,
    unquote,
)
from p2preg.sip.message import Headers, SipParseError, SipRequest, SipResponse
from p2preg.sip.parser import (
    MAX_MESSAGE_BYTES,
    Frame,
    FramingError,
    KeepAlive,
    StreamFramer,
    parse_message,
)


def msg(*lines: str, body: bytes = b"") -> bytes:
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


REGISTER = msg(
    "REGISTER sip:example.com SIP/2.0",
    "Via: SIP/2.0/UDP 192.0.2.1:5060;branch=z9hG4bK1;rport",
    "From: <sip:alice@example.com>;tag=a1",
    "To: <sip:alice@example.com>",
    "Call-ID: c1@192.0.2.1",
    "CSeq: 1 REGISTER",
    "Max-Forwards: 70",
    "Contact: <sip:alice@192.0.2.1:5060>",
    "Content-Length: 0",
)


def request(data: bytes, *, datagram: bool = True) -> SipRequest:
    m = parse_message(data, datagram=datagram)
    assert isinstance(m, SipRequest)
    return m


def test_compact_forms_and_case_insensitive_names() -> None:
    m = request(
        msg(
            "INVITE sip:bob@example.com SIP/2.0",
            "v: SIP/2.0/UDP h;branch=z9hG4bK2",
            "f: <sip:a@x>;tag=1",
            "t: sip:bob@example.com",
            "i: cid",
            "CSEQ: 2 INVITE",
            "m: <sip:a@h>",
            "c: application/sdp",
            "k: path",
            "s: hello",
            "e: gzip",
            "o: presence",
            "r: <sip:c@x>",
            "u: dialog",
            "l: 3",
            body=b"abc",
        )
    )
    h = m.headers
    for key in (
        "via",
        "from",
        "to",
        "call-id",
        "contact",
        "content-type",
        "supported",
        "subject",
        "content-encoding",
        "event",
        "refer-to",
        "allow-events",
    ):
        assert key in h, key
    assert m.cseq().number == 2 and m.call_id() == "cid" and m.body == b"abc"
    assert dict(h)["Content-Length"] == "3"


def test_folding_joins_continuation_lines() -> None:
    m = request(
        msg(
            "OPTIONS sip:bob@example.com SIP/2.0",
            "Via: SIP/2.0/UDP h",
            "\t;branch=z9hG4bK3",
            "From: <sip:a@x>",
            "  ;tag=1",
            "To:",
            " sip:bob@example.com",
            "Call-ID: x",
            "CSeq: 1",
            "   OPTIONS",
            "Accept: a/b,",
            "        c/d",
        )
    )
    assert m.top_via().branch == "z9hG4bK3"
    assert m.from_().tag == "1"
    assert m.to().uri_text == "sip:bob@example.com"
    assert m.cseq().method == "OPTIONS"
    assert m.headers.values("accept") == ["a/b", "c/d"]


def test_multi_values_split_outside_quotes_and_brackets() -> None:
    assert split_list('"a, b" <sip:x@y;p=1,2>, <sip:z@w>') == [
        '"a, b" <sip:x@y;p=1,2>',
        "<sip:z@w>",
    ]
    assert split_list(r'"quote \" , still" <sip:a@b>, c') == [r'"quote \" , still" <sip:a@b>', "c"]
    m = request(
        msg(
            "REGISTER sip:example.com SIP/2.0",
            "Via: SIP/2.0/UDP a;branch=z9hG4bK1, SIP/2.0/TCP b:5070;branch=z9hG4bK2",
            "Via: SIP/2.0/UDP c",
            'Contact: <sip:a@x>;q=0.1, "Joe, Jr" <sip:b@x>',
            "Contact: sip:c@x",
        )
    )
    assert [v.host for v in m.vias()] == ["a", "b", "c"]
    contacts = m.contacts()
    assert not isinstance(contacts, str)
    assert [c.uri_text for c in contacts] == ["sip:a@x", "sip:b@x", "sip:c@x"]
    assert contacts[1].display == '"Joe, Jr"'


def test_quoted_strings_with_escapes() -> None:
    na = parse_name_addr(r'"Mr \"X\" \\ Y" <sip:x@y>;tag=1')
    assert na.display is not None and unquote(na.display) == r'Mr "X" \ Y'
    with pytest.raises(HeaderError):
        parse_name_addr('"unterminated <sip:x@y>')
    params = parse_params(';a="semi;colon" ; b = c ;flag')
    assert params == (("a", '"semi;colon"'), ("b", "c"), ("flag", None))


def test_name_addr_and_addr_spec() -> None:
    bare = parse_name_addr("sip:x@y;tag=5")
    assert bare.uri_text == "sip:x@y" and bare.tag == "5" and bare.display is None
    angle = parse_name_addr("<sip:x@y;lr>;tag=5")
    assert angle.uri_text == "sip:x@y;lr" and angle.tag == "5"
    tokens = parse_name_addr("Alice Smith <sips:alice@example.com>")
    assert tokens.display == "Alice Smith"
    nospace = parse_name_addr("caller<sip:caller@example.com>;tag=323")
    assert nospace.display == "caller"
    for bad in (
        "Bell, Alexander <sip:a@b>",
        "< sip:a@b >",
        "sip:a@b?x=y",
        "<sip:a@b",
        "<sip:a@b>;;",
        '"x" sip:a@b',
        "",
    ):
        with pytest.raises(HeaderError):
            parse_name_addr(bad)


def test_via_parsing() -> None:
    via = parse_via("SIP / 2.0 / udp [2001:db8::1]:5062 ; branch=z9hG4bKx;rport;received=10.0.0.1")
    assert via.transport == "UDP" and via.host == "[2001:db8::1]" and via.port == 5062
    assert via.branch == "z9hG4bKx" and via.has_rport and via.bare_host == "2001:db8::1"
    assert parse_via("SIP/2.0/TCP h").params == ()
    # the compact fast path and the general LWS-tolerant scanner agree
    for compact, spaced in [
        (
            "SIP/2.0/UDP h.example.com:5060;branch=z9hG4bKx;rport;received=[::1]",
            "SIP / 2.0 / UDP  h.example.com : 5060 ; branch = z9hG4bKx ;rport; received=[::1]",
        ),
        ("SIP/2.0/tls [2001:db8::1];maddr=1.2.3.4", "SIP/2.0/tls   [2001:db8::1]  ;maddr=1.2.3.4"),
    ]:
        assert parse_via(compact) == parse_via(spaced)
    for bad in (
        "SIP/2.0/UDP h:99999",
        "SIP/2.0/UDP h;=x",
        'SIP/2.0/UDP h;a="q"x',
        "SIP/2.0/UDP h:5x",
    ):
        with pytest.raises(HeaderError):
            parse_via(bad)
    for bad in ("SIP/2.0/UDP", "SIP/2.0 h", "HTTP/1.1/TCP h", "SIP/2.0/UDP h:x", "SIP/2.0/UDP h;;"):
        with pytest.raises(HeaderError):
            parse_via(bad)


def test_qvalue() -> None:
    assert parse_qvalue("0.5") == 0.5 and parse_qvalue("1") == 1.0 and parse_qvalue("1.000") == 1.0
    for bad in ("1.5", "2", "0.1234", "x", "-0.1", ".5"):
        with pytest.raises(HeaderError):
            parse_qvalue(bad)


def test_ipv6_in_headers_and_request_uri() -> None:
    m = request(
        msg(
            "REGISTER sip:[2001:db8::10]:5070 SIP/2.0",
            "Via: SIP/2.0/UDP [2001:db8::9:1]:5060;received=2001:db8::9:255;branch=z9hG4bKa",
            "From: <sip:u@[2001:db8::1]>;tag=1",
            "To: sip:u@[2001:db8::1]",
            "Call-ID: c",
            "CSeq: 1 REGISTER",
            "Contact: <sip:u@[2001:db8::1]:5090;transport=tcp>",
        )
    )
    assert m.top_via().sent_by == "[2001:db8::9:1]:5060"
    assert m.top_via().params[0] == ("received", "2001:db8::9:255")


def test_start_lines() -> None:
    for bad, status in [
        (b"INVITE  sip:a@b SIP/2.0", 400),
        (b"INVITE sip:a@b SIP/2.0 ", 400),
        (b"INVITE sip:a@b", 400),
        (b"INVITE sip:a@b SIP/3.0", 505),
        (b"INVITE sip:a@b HTTP/1.1", 400),
        (b"IN(VITE sip:a@b SIP/2.0", 400),
    ]:
        with pytest.raises(SipParseError) as info:
            parse_message(bad + b"\r\nVia: SIP/2.0/UDP h\r\n\r\n")
        assert info.value.status == status, bad
        assert info.value.can_respond
    resp = parse_message(b"SIP/2.0 180 Ringing\r\nVia: SIP/2.0/UDP h\r\nContent-Length: 0\r\n\r\n")
    assert isinstance(resp, SipResponse) and resp.status == 180 and resp.reason == "Ringing"
    with pytest.raises(SipParseError) as info:
        parse_message(b"SIP/2.0 99 Low\r\nVia: SIP/2.0/UDP h\r\n\r\n")
    assert not info.value.can_respond


def test_body_framing_on_datagrams() -> None:
    head = "OPTIONS sip:a@b SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bK1\r\n"
    # missing Content-Length on UDP: the rest of the datagram
    assert request((head + "\r\nhello").encode()).body == b"hello"
    # extra octets after Content-Length: ignored
    assert request((head + "Content-Length: 2\r\n\r\nhello").encode()).body == b"he"
    # binary body, bare CR/LF and NUL kept exactly
    body = b"\x00\r\n\n\r\xff"
    assert request((head + f"l: {len(body)}\r\n\r\n").encode() + body).body == body
    for cl, reason in [
        ("99", "Content-Length larger than message"),
        ("-1", "Invalid Content-Length"),
        ("1x", "Invalid Content-Length"),
    ]:
        with pytest.raises(SipParseError) as info:
            parse_message((head + f"Content-Length: {cl}\r\n\r\nhello").encode())
        assert info.value.status == 400 and info.value.reason == reason
    with pytest.raises(SipParseError) as info:
        parse_message((head + "Content-Length: 1\r\nl: 2\r\n\r\nhello").encode())
    assert info.value.reason == "Conflicting Content-Length"


def test_limits() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(REGISTER + b"x" * MAX_MESSAGE_BYTES)
    assert info.value.status == 513 and not info.value.can_respond
    many = "OPTIONS sip:a@b SIP/2.0\r\n" + "X-A: 1\r\n" * 300 + "\r\n"
    with pytest.raises(SipParseError):
        parse_message(many.encode())


def test_bare_lf_messages_are_tolerated_but_mixed_endings_are_not() -> None:
    lf = REGISTER.replace(b"\r\n", b"\n")
    assert request(lf).cseq().number == 1
    mixed = REGISTER.replace(b"CSeq: 1 REGISTER\r\n", b"CSeq: 1 REGISTER\nX: y\r\n")
    with pytest.raises(SipParseError) as info:
        parse_message(mixed)
    assert info.value.status == 400 and info.value.can_respond


def test_header_line_without_colon() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(REGISTER.replace(b"Max-Forwards: 70", b"Max-Forwards 70"))
    assert info.value.reason == "Malformed header line" and info.value.can_respond


def test_serialize_round_trip() -> None:
    m = request(REGISTER)
    again = request(m.to_bytes())
    assert list(again.headers) == list(m.headers)
    assert again.method == "REGISTER" and again.uri == "sip:example.com"
    built = SipRequest(
        "OPTIONS",
        "sip:x@y",
        Headers.of(("v", "SIP/2.0/UDP h;branch=z9hG4bKq"), ("Call-ID", "z")),
        b"body",
    )
    wire = built.to_bytes()
    assert wire.startswith(b"OPTIONS sip:x@y SIP/2.0\r\nVia: SIP/2.0/UDP h;branch=z9hG4bKq\r\n")
    assert wire.endswith(b"Content-Length: 4\r\n\r\nbody")


# --- stream framing ------------------------------------------------------------------


def test_framer_splits_by_content_length_across_chunks() -> None:
    two = REGISTER + msg("OPTIONS sip:a@b SIP/2.0", "Via: SIP/2.0/TCP h", "l: 5", body=b"hello")
    framer = StreamFramer()
    events: list[object] = []
    for i in range(0, len(two), 7):
        events += framer.feed(two[i : i + 7])
    assert events == [Frame(REGISTER), Frame(two[len(REGISTER) :])]
    assert framer.pending_bytes == 0
    frame = events[1]
    assert isinstance(frame, Frame)
    assert request(frame.data, datagram=False).body == b"hello"


def test_framer_keepalive_and_leading_crlf() -> None:
    framer = StreamFramer()
    assert framer.feed(b"\r\n") == []
    assert framer.feed(b"\r\n") == [KeepAlive()]
    assert framer.feed(b"\r\n\r\n\r\n\r\n") == [KeepAlive(), KeepAlive()]
    # a lone CRLF before a message is skipped (RFC 3261 §7.5)
    assert framer.feed(b"\r\n" + REGISTER) == [Frame(REGISTER)]


def test_framer_missing_content_length_fails_with_the_head() -> None:
    framer = StreamFramer()
    data = REGISTER.replace(b"Content-Length: 0\r\n", b"")
    (event,) = framer.feed(data)
    assert isinstance(event, FramingError)
    assert (event.status, event.reason) == (400, "Missing Content-Length")
    assert framer.failed and framer.feed(REGISTER) == []
    step = SipCore().reject_framing(event, Source("192.0.2.1", 40000, "TCP"), 0.0)
    assert isinstance(step, Respond) and step.status == 400
    assert b"SIP/2.0 400 Missing Content-Length\r\n" in step.data


def test_framer_limits() -> None:
    framer = StreamFramer(max_header_bytes=100)
    (event,) = framer.feed(b"X" * 101)
    assert isinstance(event, FramingError) and event.head == b""
    assert isinstance(SipCore().reject_framing(event, Source("h", 1, "TCP"), 0.0), Drop)
    framer = StreamFramer(max_message_bytes=1000)
    (event,) = framer.feed(REGISTER.replace(b"Content-Length: 0", b"Content-Length: 5000"))
    assert isinstance(event, FramingError) and event.status == 513
    framer = StreamFramer()
    (event,) = framer.feed(REGISTER.replace(b"Content-Length: 0", b"Content-Length: -5"))
    assert isinstance(event, FramingError) and event.reason == "Invalid Content-Length"


def test_stream_parse_requires_content_length() -> None:
    with pytest.raises(SipParseError) as info:
        parse_message(REGISTER.replace(b"Content-Length: 0\r\n", b""), datagram=False)
    assert info.value.reason == "Missing Content-Length"


def test_clerr_over_a_stream_waits_for_more_data() -> None:
    data = REGISTER.replace(b"Content-Length: 0", b"Content-Length: 9999") + b"short"
    framer = StreamFramer()
    assert framer.feed(data) == []
    assert framer.pending_bytes == len(data)  # the transport times this out and closes


def test_keepalive_datagrams_are_dropped() -> None:
    registrar = LocalRegistrar()
    for data in (b"\r\n\r\n", b"\r\n", b"\x00\x00\x00\x00", b""):
        assert registrar.handle(data, Source("192.0.2.1", 5060), 0.0) is None
