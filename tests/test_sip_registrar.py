"""Registrar, redirect and transaction rules (RFC 3261 §10.3, §8.3, §17.2) through the
pure pipeline, with an in-memory binding table standing in for the overlay."""

from __future__ import annotations

import itertools

import pytest

from p2preg.sip import LocalRegistrar, RegistrarConfig, Source
from p2preg.sip.binding import Binding, decode_binding, encode_binding
from p2preg.sip.core import Drop, NeedRegister, Respond, SipCore
from p2preg.sip.message import SipResponse
from p2preg.sip.parser import parse_message
from p2preg.sip.registrar import register
from p2preg.sip.transactions import TransactionCache
from p2preg.sip.uri import parse_uri, uri_equal

NOW = 1_700_000_000.0
SRC = Source("192.0.2.10", 5060, "UDP")
AOR = "alice@example.com"
_branches = itertools.count()


def sip_register(
    *contacts: str,
    call_id: str = "call-1",
    cseq: int = 1,
    expires: int | None = None,
    to: str = "sip:alice@example.com",
    ruri: str = "sip:example.com",
    branch: str | None = None,
    extra: tuple[str, ...] = (),
) -> bytes:
    lines = [
        f"REGISTER {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.10:5060;branch={branch or f'z9hG4bK{next(_branches)}'}",
        "From: <sip:alice@example.com>;tag=ft",
        f"To: <{to}>",
        f"Call-ID: {call_id}",
        f"CSeq: {cseq} REGISTER",
        "Max-Forwards: 70",
    ]
    lines += [f"Contact: {c}" for c in contacts]
    if expires is not None:
        lines.append(f"Expires: {expires}")
    lines += list(extra)
    lines.append("Content-Length: 0")
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def send(reg: LocalRegistrar, data: bytes, now: float = NOW) -> SipResponse:
    result = reg.handle(data, SRC, now)
    assert result is not None
    reply = parse_message(result.data)
    assert isinstance(reply, SipResponse)
    return reply


def contacts(reply: SipResponse) -> dict[str, str]:
    out = {}
    for value in reply.headers.values("contact"):
        uri = value[1 : value.index(">")]
        out[uri] = value
    return out


def expires_of(reply: SipResponse) -> dict[str, int]:
    out = {}
    for value in reply.headers.values("contact"):
        uri = value[1 : value.index(">")]
        out[uri] = int(value.rsplit(";expires=", 1)[1])
    return out


def stored(reg: LocalRegistrar) -> dict[str, Binding]:
    return {b.uri: b for b in reg.bindings(AOR)}


def test_register_then_query_returns_bindings_with_date_and_to_tag() -> None:
    reg = LocalRegistrar()
    reply = send(reg, sip_register("<sip:alice@192.0.2.10:5060>;q=0.7", expires=1800))
    assert reply.status == 200
    assert reply.headers.get("date") == "Tue, 14 Nov 2023 22:13:20 GMT"
    assert reply.to().tag
    assert contacts(reply) == {
        "sip:alice@192.0.2.10:5060": "<sip:alice@192.0.2.10:5060>;q=0.7;expires=1800"
    }
    b = stored(reg)["sip:alice@192.0.2.10:5060"]
    assert (b.aor, b.call_id, b.cseq, b.q, b.expires_at) == (
        "sip:alice@example.com",
        "call-1",
        1,
        "0.7",
        NOW + 1800,
    )
    assert (b.source_host, b.source_port, b.transport) == ("192.0.2.10", 5060, "UDP")
    # a REGISTER without Contact is a query: same bindings, remaining time, nothing changes
    before = dict(reg.store)
    reply = send(reg, sip_register(call_id="other", cseq=1), NOW + 100)
    assert reply.status == 200 and expires_of(reply) == {"sip:alice@192.0.2.10:5060": 1700}
    assert reg.store == before


def test_wildcard_removes_every_binding() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>", "<sip:a@h2>"))
    assert len(stored(reg)) == 2
    reply = send(reg, sip_register("*", cseq=2, expires=0))
    assert reply.status == 200 and contacts(reply) == {}
    assert reg.store == {}


@pytest.mark.parametrize(
    ("contact_lines", "expires"),
    [
        (("*",), None),  # no Expires header
        (("*",), 3600),  # Expires not 0
        (("*", "<sip:a@h1>"), 0),  # not alone
        (("*, <sip:a@h1>",), 0),
        (("*;expires=0",), 0),
    ],
)
def test_wildcard_misuse_is_400(contact_lines: tuple[str, ...], expires: int | None) -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>"))
    reply = send(reg, sip_register(*contact_lines, cseq=2, expires=expires))
    assert reply.status == 400
    assert set(stored(reg)) == {"sip:a@h1"}


def test_wildcard_obeys_the_cseq_rule() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>", cseq=5))
    reply = send(reg, sip_register("*", cseq=5, expires=0))
    assert (reply.status, reply.reason) == (400, "Invalid CSeq")
    assert set(stored(reg)) == {"sip:a@h1"}


def test_per_contact_expires_wins_over_header() -> None:
    reg = LocalRegistrar()
    reply = send(reg, sip_register("<sip:a@h1>;expires=120", "<sip:a@h2>", expires=600))
    assert expires_of(reply) == {"sip:a@h1": 120, "sip:a@h2": 600}
    reply = send(reg, sip_register("<sip:a@h3>", cseq=2))
    assert expires_of(reply)["sip:a@h3"] == 3600  # default
    reply = send(reg, sip_register("<sip:a@h4>", cseq=3, expires=10**12))
    assert expires_of(reply)["sip:a@h4"] == 86400  # lowered to max
    reply = send(reg, sip_register("<sip:a@h2>;expires=0", cseq=4, expires=600))
    assert "sip:a@h2" not in contacts(reply)
    assert set(stored(reg)) == {"sip:a@h1", "sip:a@h3", "sip:a@h4"}


def test_min_expires_mode_defaults_to_clamp() -> None:
    # Like Kamailio: a REGISTER shorter than min_expires (sipsak sends Expires: 15) is granted
    # min_expires instead of refused.
    assert RegistrarConfig().min_expires_mode == "clamp"
    reply = send(LocalRegistrar(), sip_register("<sip:a@h1>;expires=15"))
    assert reply.status == 200 and expires_of(reply) == {"sip:a@h1": 60}


def test_interval_too_brief_423_with_min_expires() -> None:
    reg = LocalRegistrar(RegistrarConfig(min_expires_mode="423"))
    reply = send(reg, sip_register("<sip:a@h1>;expires=30"))
    assert reply.status == 423 and reply.headers.get("min-expires") == "60"
    assert reg.store == {}
    reply = send(reg, sip_register("<sip:a@h1>", expires=59))
    assert reply.status == 423


def test_interval_too_brief_clamp_mode() -> None:
    reg = LocalRegistrar(RegistrarConfig(min_expires=120, min_expires_mode="clamp"))
    reply = send(reg, sip_register("<sip:a@h1>;expires=30"))
    assert reply.status == 200 and expires_of(reply) == {"sip:a@h1": 120}


@pytest.mark.parametrize("bad", ["abc", "-5", "1.5"])
def test_non_numeric_expires_is_400(bad: str) -> None:
    reg = LocalRegistrar()
    assert send(reg, sip_register(f"<sip:a@h1>;expires={bad}")).status == 400
    assert send(reg, sip_register("<sip:a@h1>", extra=(f"Expires: {bad}",))).status == 400
    assert reg.store == {}


def test_lower_or_equal_cseq_same_call_id_is_400_and_changes_nothing() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>", "<sip:a@h2>", cseq=10, expires=600))
    before = dict(reg.store[AOR])
    for cseq in (9, 10):
        reply = send(reg, sip_register("<sip:a@h1>;expires=0", "<sip:a@h3>", cseq=cseq))
        assert (reply.status, reply.reason) == (400, "Invalid CSeq")
        assert reg.store[AOR] == before
    reply = send(reg, sip_register("<sip:a@h1>", cseq=11, expires=900))
    assert reply.status == 200 and expires_of(reply)["sip:a@h1"] == 900


def test_new_call_id_replaces_even_with_lower_cseq() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>", cseq=10, expires=600))
    reply = send(reg, sip_register("<sip:a@h1>", call_id="call-2", cseq=1, expires=900))
    assert reply.status == 200 and expires_of(reply) == {"sip:a@h1": 900}
    b = stored(reg)["sip:a@h1"]
    assert (b.call_id, b.cseq) == ("call-2", 1)


def test_contact_matching_uses_uri_equality() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:%61@H1.example.com;transport=TCP>", cseq=1))
    reply = send(reg, sip_register("<sip:a@h1.example.com;transport=tcp;ob>", cseq=2))
    assert list(contacts(reply)) == ["sip:a@h1.example.com;transport=tcp;ob"]
    assert len(reg.store[AOR]) == 1


def test_outbound_instance_and_reg_id_key_the_binding() -> None:
    reg = LocalRegistrar()
    inst = '"<urn:uuid:00000000-0000-1000-8000-000A95A0E128>"'
    send(reg, sip_register(f"<sip:a@10.0.0.1:5060>;+sip.instance={inst};reg-id=1", cseq=1))
    reply = send(
        reg,
        sip_register(
            f"<sip:a@10.0.0.1:41000>;+sip.instance={inst};reg-id=1",
            cseq=2,
            extra=("Supported: outbound, path", "Path: <sip:edge.example.com;lr>"),
        ),
    )
    assert reply.status == 200
    assert list(contacts(reply)) == ["sip:a@10.0.0.1:41000"]
    assert reply.headers.get("require") == "outbound"
    assert reply.headers.values("path") == ["<sip:edge.example.com;lr>"]
    (key,) = reg.store[AOR]
    assert key == f"{inst};reg-id=1"
    b = stored(reg)["sip:a@10.0.0.1:41000"]
    assert b.instance == inst and b.reg_id == 1 and b.path == ("<sip:edge.example.com;lr>",)


def test_path_not_echoed_without_supported_path() -> None:
    reg = LocalRegistrar()
    reply = send(reg, sip_register("<sip:a@h1>", extra=("Path: <sip:edge;lr>",)))
    assert reply.status == 200 and reply.headers.get("path") is None
    assert stored(reg)["sip:a@h1"].path == ("<sip:edge;lr>",)


def test_max_contacts_503_with_retry_after() -> None:
    reg = LocalRegistrar(RegistrarConfig(max_contacts=2, retry_after=7))
    send(reg, sip_register("<sip:a@h1>", "<sip:a@h2>"))
    reply = send(reg, sip_register("<sip:a@h3>", cseq=2))
    assert reply.status == 503 and reply.headers.get("retry-after") == "7"
    assert set(stored(reg)) == {"sip:a@h1", "sip:a@h2"}
    # replacing one while adding one keeps the count: allowed
    reply = send(reg, sip_register("<sip:a@h1>;expires=0", "<sip:a@h3>", cseq=3))
    assert reply.status == 200 and set(contacts(reply)) == {"sip:a@h2", "sip:a@h3"}


def test_max_contacts_evict_oldest() -> None:
    reg = LocalRegistrar(RegistrarConfig(max_contacts=2, max_contacts_mode="evict"))
    send(reg, sip_register("<sip:a@h1>"), NOW)
    send(reg, sip_register("<sip:a@h2>", cseq=2), NOW + 1)
    reply = send(reg, sip_register("<sip:a@h3>", cseq=3), NOW + 2)
    assert reply.status == 200 and set(contacts(reply)) == {"sip:a@h2", "sip:a@h3"}
    assert set(stored(reg)) == {"sip:a@h2", "sip:a@h3"}


def test_expiry_removes_a_binding() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>;expires=60", "<sip:a@h2>;expires=3600"))
    reply = send(reg, sip_register(call_id="q"), NOW + 61)
    assert set(contacts(reply)) == {"sip:a@h2"}
    lookup = sip_invite()
    assert set(contacts(send(reg, lookup, NOW + 61))) == {"sip:a@h2"}
    # the next change purges the expired entry from the store
    send(reg, sip_register("<sip:a@h3>", cseq=2), NOW + 62)
    assert set(stored(reg)) == {"sip:a@h2", "sip:a@h3"}
    # and the sweeper does it too
    assert reg.sweep(NOW + 4000) == 2 and reg.store == {}
    assert send(reg, sip_invite(), NOW + 4000).status == 480


def test_domain_rules() -> None:
    reg = LocalRegistrar(RegistrarConfig(domains=("example.com",)))
    assert send(reg, sip_register("<sip:a@h1>", ruri="sip:other.org")).status == 403
    assert send(reg, sip_register("<sip:a@h1>", to="sip:alice@other.org")).status == 404
    assert send(reg, sip_register("<sip:a@h1>", to="sip:alice@EXAMPLE.com:5060")).status == 200
    # AOR domain must be the Request-URI's even when any domain is served
    any_reg = LocalRegistrar()
    assert send(any_reg, sip_register("<sip:a@h1>", to="sip:alice@other.org")).status == 404
    # an IP-literal Request-URI names the registrar itself
    reply = send(any_reg, sip_register("<sip:a@h1>", ruri="sip:192.0.2.1"))
    assert reply.status == 200
    assert send(any_reg, sip_register("<sip:a@h1>", to="tel:+123")).status == 400
    assert send(reg, sip_invite("sip:bob@other.org")).status == 404


def test_aor_is_canonicalised() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@h1>", to="sip:%61lice@Example.COM:5060;user=ip"))
    assert set(reg.store) == {AOR}
    assert stored(reg)["sip:a@h1"].aor == "sip:alice@example.com"


def test_require_unknown_420_but_path_and_outbound_ok() -> None:
    reg = LocalRegistrar()
    reply = send(reg, sip_register("<sip:a@h1>", extra=("Require: path, gizmo, widget",)))
    assert reply.status == 420 and reply.headers.get("unsupported") == "gizmo, widget"
    assert send(reg, sip_register("<sip:a@h1>", extra=("Require: path, outbound",))).status == 200


def test_malformed_mandatory_headers() -> None:
    reg = LocalRegistrar()
    good = sip_register("<sip:a@h1>")
    for old, new in [
        (b"Call-ID: call-1\r\n", b""),
        (b"CSeq: 1 REGISTER", b"CSeq: 1 INVITE"),
        (b"CSeq: 1 REGISTER", b"CSeq: x REGISTER"),
        (b"From: <sip:alice@example.com>;tag=ft\r\n", b""),
        (b"To: <sip:alice@example.com>\r\n", b""),
        (b"Contact: <sip:a@h1>", b"Contact: <sip:a@h1>;q=7"),
        (b"Contact: <sip:a@h1>", b"Contact: <sip:a@h1"),
        (b"Contact: <sip:a@h1>", "Contact: <sip:a@h1>;q=0.\u00b2".encode()),
        (b"Contact: <sip:a@h1>", "Contact: <sip:a@h1>;reg-id=\u00b2".encode()),
    ]:
        data = good.replace(old, new)
        assert data != good
        assert send(reg, data).status == 400, new
    assert reg.store == {}
    no_via = good.replace(good.split(b"\r\n")[1] + b"\r\n", b"")
    assert reg.handle(no_via, SRC, NOW) is None


# --- lookups ----------------------------------------------------------------------------


def sip_invite(
    ruri: str = "sip:alice@example.com", method: str = "INVITE", extra: tuple[str, ...] = ()
) -> bytes:
    lines = [
        f"{method} {ruri} SIP/2.0",
        f"Via: SIP/2.0/UDP 192.0.2.20;branch=z9hG4bKinv{next(_branches)};rport",
        "From: <sip:bob@example.org>;tag=b1",
        f"To: <{ruri}>",
        "Call-ID: inv-1",
        f"CSeq: 1 {method}",
        "Max-Forwards: 70",
        *extra,
        "Content-Length: 0",
    ]
    return ("\r\n".join(lines) + "\r\n\r\n").encode()


def test_lookup_302_ordered_by_q_with_expires() -> None:
    reg = LocalRegistrar()
    send(reg, sip_register("<sip:a@low>;q=0.1", "<sip:a@high>;q=0.9", "<sip:a@none>", expires=600))
    for method in ("INVITE", "MESSAGE", "SUBSCRIBE", "OPTIONS"):
        reply = send(reg, sip_invite(method=method), NOW + 10)
        assert (reply.status, reply.reason) == (302, "Moved Temporarily")
        assert reply.headers.values("contact") == [
            "<sip:a@none>;expires=590",
            "<sip:a@high>;q=0.9;expires=590",
            "<sip:a@low>;q=0.1;expires=590",
        ]
        assert reply.to().tag


def test_lookup_480_404_483() -> None:
    reg = LocalRegistrar(RegistrarConfig(domains=("example.com",)))
    assert send(reg, sip_invite()).status == 480
    assert send(reg, sip_invite("sip:alice@elsewhere.net")).status == 404
    zero = sip_invite().replace(b"Max-Forwards: 70", b"Max-Forwards: 0")
    assert send(reg, zero).status == 483


def test_options_to_the_node_cancel_and_unknown_methods() -> None:
    reg = LocalRegistrar()
    reply = send(reg, sip_invite("sip:192.0.2.1:5060", method="OPTIONS"))
    assert reply.status == 200
    assert "REGISTER" in (reply.headers.get("allow") or "")
    assert reply.headers.get("supported") == "path, outbound"
    assert reply.headers.get("accept") is not None
    assert send(reg, sip_invite(method="CANCEL")).status == 200
    reply = send(reg, sip_invite(method="BYE"))
    assert reply.status == 405 and reply.headers.get("allow")
    reply = send(reg, sip_invite(method="FROBNICATE"))
    assert reply.status == 501 and reply.headers.get("allow")
    assert reg.handle(sip_invite(method="ACK"), SRC, NOW) is None


def test_responses_carry_received_and_rport() -> None:
    reg = LocalRegistrar()
    result = reg.handle(sip_invite(), Source("203.0.113.5", 40123), NOW)
    assert result is not None and result.dest == ("203.0.113.5", 40123)
    reply = parse_message(result.data)
    assert isinstance(reply, SipResponse)
    assert reply.top_via().params[-2:] == (("received", "203.0.113.5"), ("rport", "40123"))
    # without rport: received only when the sent-by differs, reply to the sent-by port
    result = reg.handle(sip_register("<sip:a@h1>"), Source("203.0.113.5", 40123), NOW)
    assert result is not None and result.dest == ("203.0.113.5", 5060)
    assert b";received=203.0.113.5\r\n" in result.data


# --- transactions ------------------------------------------------------------------------


def test_retransmission_gets_identical_response_and_is_not_applied_twice() -> None:
    reg = LocalRegistrar()
    first = sip_register("<sip:a@h1>", cseq=1, branch="z9hG4bKretx")
    r1 = reg.handle(first, SRC, NOW)
    assert r1 is not None and not r1.replayed
    # a later REGISTER changes the bindings; the retransmission of the first must not
    send(reg, sip_register("<sip:a@h2>", cseq=2))
    r2 = reg.handle(first, SRC, NOW + 5)
    assert r2 is not None and r2.replayed and r2.data == r1.data
    assert set(stored(reg)) == {"sip:a@h1", "sip:a@h2"}
    # after Timer J (32 s) it is a new request, and the lower CSeq is refused
    r3 = reg.handle(first, SRC, NOW + 40)
    assert r3 is not None and not r3.replayed
    assert parse_message(r3.data).status == 400  # type: ignore[union-attr]


def test_retransmission_while_pending_is_dropped() -> None:
    core = SipCore()
    data = sip_register("<sip:a@h1>", branch="z9hG4bKpend")
    step = core.receive(data, SRC, NOW)
    assert isinstance(step, NeedRegister)
    assert isinstance(core.receive(data, SRC, NOW + 0.5), Drop)
    decision = core.decide_register(step, [], NOW + 1)
    final = core.respond(step, decision.reply, NOW + 1)
    again = core.receive(data, SRC, NOW + 2)
    assert isinstance(again, Respond) and again.data == final.data


def test_same_branch_different_method_or_cseq_is_a_new_transaction() -> None:
    reg = LocalRegistrar()
    a = sip_register("<sip:a@h1>", cseq=1, branch="z9hG4bKsame")
    b = sip_register("<sip:a@h2>", cseq=2, branch="z9hG4bKsame")
    assert send(reg, a).status == 200
    assert set(contacts(send(reg, b))) == {"sip:a@h1", "sip:a@h2"}


def test_transaction_cache_is_bounded() -> None:
    core = SipCore(cache=TransactionCache(max_entries=3))
    for i in range(10):
        core.receive(sip_invite(method="CANCEL"), SRC, NOW + i * 0.001)
        assert len(core.cache) <= 3


def test_ack_is_absorbed() -> None:
    reg = LocalRegistrar()
    send(reg, sip_invite("sip:nobody@example.com"))
    ack = sip_invite("sip:nobody@example.com", method="ACK")
    assert reg.handle(ack, SRC, NOW) is None


# --- pure functions and the stored form ----------------------------------------------


def test_register_pure_function_and_binding_round_trip() -> None:
    request = parse_message(
        sip_register('<sip:a@h1;transport=tcp>;q=0.5;+sip.instance="<urn:x>";reg-id=2')
    )
    decision = register(request, [], NOW, RegistrarConfig(), SRC)  # type: ignore[arg-type]
    assert decision.reply.status == 200 and decision.changed
    (b,) = decision.upserts
    assert decode_binding(encode_binding(b)) == b
    assert b.describe(NOW)["expires_in"] == 3600
    assert uri_equal(parse_uri(b.uri), parse_uri("sip:a@H1;transport=TCP"))
    again = register(request, decision.bindings, NOW, RegistrarConfig(), SRC)  # type: ignore[arg-type]
    assert again.reply.status == 400 and not again.changed
    with pytest.raises(ValueError):
        decode_binding(b"\x93\x01\x02\x03")
    with pytest.raises(ValueError):
        decode_binding(b"\xc1")


def test_binding_encoding_survives_non_utf8_user_agent() -> None:
    reg = LocalRegistrar()
    data = sip_register("<sip:a@h1>", extra=("User-Agent: caf\xe9",)).replace(
        b"caf\xc3\xa9", b"caf\xe9"
    )
    assert send(reg, data).status == 200
    assert stored(reg)["sip:a@h1"].user_agent == "caf\udce9"
