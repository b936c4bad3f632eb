"""RFC 4475 and RFC 5118 torture messages through the pure SIP pipeline.

Each file in /work/shared/sip-torture/INDEX.tsv is fed, as one UDP datagram, to the same
pipeline the node runs (``LocalRegistrar`` = ``SipCore`` over an in-memory binding table)
and the response code is checked against EXPECTED, written out here from INDEX.tsv's
expected_server_behaviour column (None = no response is sent).

Choices where INDEX.tsv allows more than one answer or names another role:
- Requests that are well formed and addressed to a user get what our redirect server
  gives with no binding stored: 480 (REGISTRAR.md "Lookups"). That covers invut and sdp01,
  whose 415/406 INDEX.tsv names for an endpoint (UAS that would consume the body); a
  redirect server never reads the body and its 3xx/4xx carry none.
- Unknown extension methods (intmeth, esc02, mismatch02) get 501 as INDEX.tsv says;
  known methods we do not serve (BYE) get 405 with Allow, as REGISTRAR.md says.
- zeromf: an OPTIONS to a user is one we redirect, so Max-Forwards: 0 is 483.
- extra/test.dat (no expectation in RFC 4475): it has no Via, so nothing can be sent.
- rfc5118/ipv6-in-sdp and mult-ip-in-sdp: the archive's Content-Length exceeds the
  datagram, which is a 400 exactly like clerr.dat; their rfc5118_wire/ versions (length
  corrected) are accepted.
- REGISTERs whose Request-URI is an IP literal (RFC 5118) are accepted for the To domain.
"""

from __future__ import annotations

import csv
import pathlib

import pytest

from p2preg.sip import LocalRegistrar, Source, parse_message
from p2preg.sip.message import SipParseError, SipRequest, SipResponse
from p2preg.sip.uri import SipUri

CORPUS = pathlib.Path("/work/shared/sip-torture")
NOW = 1_700_000_000.0
SOURCE = Source("192.0.2.99", 5060, "UDP")

EXPECTED: dict[str, int | None] = {
    # RFC 4475 §3.1.1: valid messages
    "wsinv.dat": 480,
    "intmeth.dat": 501,
    "esc01.dat": 480,
    "escnull.dat": 200,
    "esc02.dat": 501,
    "lwsdisp.dat": 480,
    "longreq.dat": 480,
    "dblreq.dat": 200,
    "semiuri.dat": 480,
    "transports.dat": 480,
    "mpart01.dat": 480,
    "unreason.dat": None,
    "noreason.dat": None,
    # §3.1.2: invalid messages
    "badinv01.dat": 400,
    "clerr.dat": 400,
    "ncl.dat": 400,
    "scalar02.dat": 400,
    "scalarlg.dat": None,
    "quotbal.dat": 400,
    "ltgtruri.dat": 400,
    "lwsruri.dat": 400,
    "lwsstart.dat": 400,
    "trws.dat": 400,
    "escruri.dat": 400,
    "baddate.dat": 480,
    "regbadct.dat": 400,
    "badaspec.dat": 400,
    "baddn.dat": 400,
    "badvers.dat": 505,
    "mismatch01.dat": 400,
    "mismatch02.dat": 501,
    "bigcode.dat": None,
    # §3.2, §3.3, §3.4
    "badbranch.dat": 480,
    "insuf.dat": 400,
    "unkscm.dat": 416,
    "novelsc.dat": 416,
    "unksm2.dat": 400,
    "bext01.dat": 420,
    "invut.dat": 480,
    "regaut01.dat": 200,
    "multi01.dat": 400,
    "mcl01.dat": 400,
    "bcast.dat": None,
    "zeromf.dat": 483,
    "cparam01.dat": 200,
    "cparam02.dat": 200,
    "regescrt.dat": 200,
    "sdp01.dat": 480,
    "inv2543.dat": 480,
    "extra/test.dat": None,
    # RFC 5118 §4 (archive bytes: bare LF)
    "rfc5118/ipv6-good.dat": 200,
    "rfc5118/ipv6-bad.dat": 400,
    "rfc5118/port-ambiguous.dat": 200,
    "rfc5118/port-unambiguous.dat": 200,
    "rfc5118/via-received-param-with-delim.dat": 405,
    "rfc5118/via-received-param-no-delim.dat": 200,
    "rfc5118/ipv6-in-sdp.dat": 400,
    "rfc5118/mult-ip-in-header.dat": 405,
    "rfc5118/mult-ip-in-sdp.dat": 400,
    "rfc5118/ipv4-mapped-ipv6.dat": 480,
    "rfc5118/ipv6-bug-abnf-3-colons.dat": 480,
    "rfc5118/ipv6-correct-abnf-2-colons.dat": 480,
}
WIRE_EXPECTED: dict[str, int | None] = {
    **{
        name.replace("rfc5118/", "rfc5118_wire/"): code
        for name, code in EXPECTED.items()
        if name.startswith("rfc5118/")
    },
    "rfc5118_wire/ipv6-in-sdp.dat": 480,
    "rfc5118_wire/mult-ip-in-sdp.dat": 480,
}
ALL = {**EXPECTED, **WIRE_EXPECTED}


def status_of(data: bytes | None) -> int | None:
    if data is None:
        return None
    start = data.split(b"\r\n", 1)[0].split(b" ")
    assert start[0] == b"SIP/2.0"
    return int(start[1])


def test_table_covers_index() -> None:
    with (CORPUS / "INDEX.tsv").open(newline="") as f:
        listed = {row["file"] for row in csv.DictReader(f, delimiter="\t")}
    assert listed == set(EXPECTED)
    assert len(EXPECTED) == 62
    for name in ALL:
        assert (CORPUS / name).is_file(), name


@pytest.mark.parametrize("name", sorted(ALL))
def test_verdict(name: str) -> None:
    registrar = LocalRegistrar()
    result = registrar.handle((CORPUS / name).read_bytes(), SOURCE, NOW)
    assert status_of(result.data if result else None) == ALL[name]
    if result is not None:
        # Whatever we send must itself be a well-formed response.
        reply = parse_message(result.data)
        assert isinstance(reply, SipResponse)
        assert reply.status == ALL[name]


@pytest.mark.parametrize("name", sorted(n for n, code in ALL.items() if code == 400))
def test_400_reason_names_the_problem(name: str) -> None:
    result = LocalRegistrar().handle((CORPUS / name).read_bytes(), SOURCE, NOW)
    assert result is not None
    reason = result.data.split(b"\r\n", 1)[0].split(b" ", 2)[2]
    assert reason != b"Bad Request" and len(reason) > 8


def response(name: str) -> SipResponse:
    result = LocalRegistrar().handle((CORPUS / name).read_bytes(), SOURCE, NOW)
    assert result is not None
    reply = parse_message(result.data)
    assert isinstance(reply, SipResponse)
    return reply


def contacts(reply: SipResponse) -> list[str]:
    return reply.headers.values("contact")


def test_wsinv_is_parsed_as_the_rfc_describes() -> None:
    msg = parse_message((CORPUS / "wsinv.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    assert msg.max_forwards() == 68
    assert msg.cseq().number == 9 and msg.cseq().method == "INVITE"
    assert len(msg.body) == 150
    vias = msg.vias()
    assert [v.transport for v in vias] == ["UDP", "TCP", "UDP"]
    assert vias[1].branch == "z9hG4bK9ikj8" and vias[2].host == "192.168.255.111"
    assert msg.headers.get("subject") == ""
    assert msg.headers.get("unknownheaderwithunusualvalue") == ";;,,;;,;"
    assert msg.from_().display == '"J Rosenberg \\\\\\""'
    assert msg.to().tag == "1918181833n"
    contact = msg.contacts()
    assert not isinstance(contact, str)
    assert contact[0].param("q") == "0.33" and contact[0].param("newparam") == "newvalue"


def test_esc02_method_is_not_register_and_has_two_contacts() -> None:
    msg = parse_message((CORPUS / "esc02.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    assert msg.method == "RE%47IST%45R"
    assert len(msg.headers.values("contact")) == 2
    assert msg.headers.get("c%6fntact") is not None


def test_escnull_registers_two_distinct_contacts_without_truncation() -> None:
    reply = response("escnull.dat")
    assert sorted(contacts(reply)) == [
        "<sip:%00%00@host5.example.com>;expires=3600",
        "<sip:%00@host5.example.com>;expires=3600",
    ]
    registrar = LocalRegistrar()
    registrar.handle((CORPUS / "escnull.dat").read_bytes(), SOURCE, NOW)
    assert set(registrar.store) == {"null-%00-null@example.com"}


def test_cparam_header_param_versus_uri_param() -> None:
    assert contacts(response("cparam01.dat")) == [
        "<sip:+19725552222@gw1.example.net>;unknownparam;expires=3600"
    ]
    assert contacts(response("cparam02.dat")) == [
        "<sip:+19725552222@gw1.example.net;unknownparam>;expires=3600"
    ]


def test_regescrt_keeps_the_escaped_route_header() -> None:
    assert contacts(response("regescrt.dat")) == [
        "<sip:user@example.com?Route=%3Csip:sip.example.com%3E>;expires=3600"
    ]
    registrar = LocalRegistrar()
    registrar.handle((CORPUS / "regescrt.dat").read_bytes(), SOURCE, NOW)
    (binding,) = registrar.bindings("user@example.com")
    assert binding.uri == "sip:user@example.com?Route=%3Csip:sip.example.com%3E"


def test_dblreq_ignores_trailing_octets() -> None:
    msg = parse_message((CORPUS / "dblreq.dat").read_bytes())
    assert isinstance(msg, SipRequest) and msg.method == "REGISTER" and msg.body == b""


def test_mpart01_body_is_binary_safe() -> None:
    msg = parse_message((CORPUS / "mpart01.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    assert len(msg.body) == 553 and b"\x00" in msg.body


def test_inv2543_body_is_the_rest_of_the_datagram() -> None:
    data = (CORPUS / "inv2543.dat").read_bytes()
    msg = parse_message(data)
    assert isinstance(msg, SipRequest)
    assert msg.body and data.endswith(msg.body)


def test_semiuri_user_part() -> None:
    msg = parse_message((CORPUS / "semiuri.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    uri = msg.request_uri()
    assert isinstance(uri, SipUri)
    assert uri.user == "user;par=u%40example.net" and uri.host == "example.com"


def test_bext01_lists_unsupported_require_tags() -> None:
    reply = response("bext01.dat")
    assert reply.headers.values("unsupported") == [
        "nothingSupportsThis",
        "nothingSupportsThisEither",
    ]


def test_unknown_methods_list_allow() -> None:
    for name in ("intmeth.dat", "rfc5118/mult-ip-in-header.dat"):
        assert "REGISTER" in (response(name).headers.get("allow") or "")


def test_rfc5118_ipv6_references() -> None:
    msg = parse_message((CORPUS / "rfc5118_wire/port-ambiguous.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    uri = msg.request_uri()
    assert isinstance(uri, SipUri) and uri.host == "[2001:db8::10:5070]" and uri.port is None
    msg = parse_message((CORPUS / "rfc5118_wire/port-unambiguous.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    uri = msg.request_uri()
    assert isinstance(uri, SipUri) and uri.host == "[2001:db8::10]" and uri.port == 5070
    msg = parse_message((CORPUS / "rfc5118/mult-ip-in-header.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    vias = msg.vias()
    assert [(v.host, v.port) for v in vias] == [
        ("[2001:db8::9:1]", 6050),
        ("192.0.2.1", None),
        ("[2001:db8::9:255]", None),
    ]
    msg = parse_message((CORPUS / "rfc5118/via-received-param-with-delim.dat").read_bytes())
    assert isinstance(msg, SipRequest)
    assert msg.top_via().params[0] == ("received", "[2001:db8::9:255]")


def test_responses_are_dropped_not_answered() -> None:
    for name in ("unreason.dat", "noreason.dat", "bcast.dat"):
        msg = parse_message((CORPUS / name).read_bytes())
        assert isinstance(msg, SipResponse)
    assert parse_message((CORPUS / "noreason.dat").read_bytes()).reason == ""  # type: ignore[union-attr]
    for name in ("scalarlg.dat", "bigcode.dat"):
        with pytest.raises(SipParseError) as info:
            msg = parse_message((CORPUS / name).read_bytes())
            assert isinstance(msg, SipResponse)
            msg.cseq()
        assert not info.value.can_respond
