"""The SIP hot path's shortcuts give the answers the general code gives.

The parser remembers header names, the URI parser has a regex fast path and a cache,
typed header views are cached on the message, the transaction cache updates entries in
place; each must be invisible except in time.
"""

from __future__ import annotations

import hashlib
import re
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from p2preg.sip import parser
from p2preg.sip.message import Headers, SipParseError, SipRequest
from p2preg.sip.parser import parse_message
from p2preg.sip.responses import to_tag
from p2preg.sip.transactions import Status, TransactionCache, TransactionKey
from p2preg.sip.uri import SipUri, UriError, _parse_sip, _parse_sip_general, parse_uri

ROOT = Path(__file__).resolve().parent.parent

REGISTER = (
    "REGISTER sip:example.com SIP/2.0\r\n"
    "Via: SIP/2.0/UDP 127.0.0.1:5071;branch=z9hG4bK-1-1-0;rport\r\n"
    "Max-Forwards: 70\r\n"
    "From: <sip:bench1@example.com>;tag=1SIPpTag01\r\n"
    "To: <sip:bench1@example.com>\r\n"
    "Call-ID: 1-1@127.0.0.1\r\n"
    "CSeq: 1 REGISTER\r\n"
    "Contact: <sip:bench1@127.0.0.1:5071;transport=UDP>\r\n"
    "Expires: 3600\r\n"
    "Content-Length: 0\r\n\r\n"
)


def request(text: str) -> SipRequest:
    message = parse_message(text.encode())
    assert isinstance(message, SipRequest)
    return message


# --- URIs -------------------------------------------------------------------------------

URI_PIECES = st.sampled_from(
    [*"abZ09-_.!~*'()&=+$,;?/%:@[]", "%41", "%2e", "example.com", "1.2.3.4", "[::1]",
     "5060", "65535", "65536", "99999", "transport=udp", "lr", "é", " "]
)  # fmt: skip


def _outcome(parse: object, rest: str) -> tuple[str, str] | SipUri:
    assert callable(parse)
    try:
        uri = parse("sip", rest, "sip:" + rest)
    except UriError as exc:
        return ("error", str(exc))
    assert isinstance(uri, SipUri)
    return uri


@settings(max_examples=3000, deadline=None)
@given(st.lists(URI_PIECES, max_size=12).map("".join))
def test_sip_uri_fast_path_agrees_with_general_parser(rest: str) -> None:
    fast = _outcome(_parse_sip, rest)
    general = _outcome(_parse_sip_general, rest)
    assert fast == general
    if isinstance(fast, SipUri):
        assert isinstance(general, SipUri)
        assert fast.raw == general.raw


@pytest.mark.parametrize(
    "rest",
    [
        "bench5@127.0.0.1:5071;transport=UDP",
        "example.com",
        "Alice@Atlanta.COM;Transport=TCP;lr",
        "a;b@c",  # '@' after a ';': the user is "a;b"
        "example.com;x=a@b",  # ... also when the ';' comes first
        "a@b:65536",
        "a@b;",
        "a@b?x=1",
        "a:pw@b",
    ],
)
def test_sip_uri_fast_path_examples(rest: str) -> None:
    assert _outcome(_parse_sip, rest) == _outcome(_parse_sip_general, rest)


def test_uri_cache_returns_equal_values_and_never_caches_errors() -> None:
    first = parse_uri("sip:carol@chicago.com")
    assert parse_uri("sip:carol@chicago.com") == first
    assert str(parse_uri("sip:carol@chicago.com")) == "sip:carol@chicago.com"
    for _ in range(2):
        with pytest.raises(UriError, match="malformed URI user part"):
            parse_uri("sip:@chicago.com")


# --- header lines -------------------------------------------------------------------------


def test_remembered_name_without_colon_is_still_malformed() -> None:
    request(REGISTER)  # "Via" and friends are now remembered
    broken = REGISTER.replace("Max-Forwards: 70\r\n", "Via\r\n")
    with pytest.raises(SipParseError) as info:
        parse_message(broken.encode())
    assert (info.value.status, info.value.reason) == (400, "Malformed header line")


def test_folded_line_joins_the_previous_field_even_when_it_looks_like_a_name() -> None:
    request(REGISTER)
    folded = REGISTER.replace(
        "To: <sip:bench1@example.com>\r\n", "To: <sip:bench1@\r\n Via: x>\r\n"
    )
    message = request(folded)
    assert message.headers.get("to") == "<sip:bench1@ Via: x>"
    assert message.headers.count("via") == 1


def test_blank_before_colon_and_compact_forms() -> None:
    text = REGISTER.replace("Call-ID:", "Call-ID :").replace("Contact:", "m:")
    for _ in range(2):  # the second time through the remembered names
        message = request(text)
        assert message.call_id() == "1-1@127.0.0.1"
        assert ("Call-ID", "1-1@127.0.0.1") in list(message.headers)
        assert ("Contact", "<sip:bench1@127.0.0.1:5071;transport=UDP>") in list(message.headers)


def test_name_table_stays_bounded() -> None:
    for i in range(parser._NAME_CACHE_SIZE + 100):
        text = REGISTER.replace("Expires:", f"X-Name-{i}: 1\r\nExpires:")
        assert request(text).headers.get(f"x-name-{i}") == "1"
    assert len(parser._NAMES) <= parser._NAME_CACHE_SIZE
    long_name = "X-" + "a" * 60
    assert (
        request(REGISTER.replace("Expires:", f"{long_name}: 2\r\nExpires:")).headers.get(
            long_name.lower()
        )
        == "2"
    )
    assert long_name not in parser._NAMES


# --- typed views ----------------------------------------------------------------------------


def test_typed_views_are_cached_and_errors_are_not() -> None:
    message = request(REGISTER)
    assert message.top_via() is message.vias()[0]
    assert message.cseq() is message.cseq()
    assert message.to() is message.to()
    assert message.option_tags("require") == []
    bad = request(REGISTER.replace("CSeq: 1 REGISTER", "CSeq: x REGISTER"))
    for _ in range(2):
        with pytest.raises(SipParseError, match="Malformed CSeq"):
            bad.cseq()


def test_expires_and_max_forwards_absent_or_present() -> None:
    message = request(REGISTER.replace("Expires: 3600\r\n", "").replace("Max-Forwards: 70\r\n", ""))
    assert message.expires() is None and message.max_forwards() is None
    message = request(REGISTER.replace("Max-Forwards: 70", "Max-Forwards: 0"))
    assert message.max_forwards() == 0 and message.max_forwards() == 0
    assert message.expires() == 3600


# --- responses and transactions -----------------------------------------------------------------


def test_to_tag_is_the_same_digest_as_before() -> None:
    headers = request(REGISTER).headers
    # The digest as first defined, field by field: tags must survive an upgrade.
    h = hashlib.blake2s(digest_size=8)
    for key in ("call-id", "from", "cseq"):
        h.update((headers.get(key) or "").encode())
        h.update(b"\x00")
    h.update((headers.get_all("via")[0]).encode())
    assert to_tag(headers) == h.hexdigest()
    assert to_tag(Headers()) == hashlib.blake2s(b"\x00\x00\x00", digest_size=8).hexdigest()


def test_finished_transaction_moves_to_the_back_of_the_expiry_order() -> None:
    cache = TransactionCache(lifetime=10.0)
    first = TransactionKey("z9hG4bK1", "h:5060", "REGISTER", 1)
    second = TransactionKey("z9hG4bK2", "h:5060", "REGISTER", 1)
    assert cache.begin(first, 0.0).status is Status.NEW
    assert cache.begin(second, 1.0).status is Status.NEW
    cache.finish(first, b"r1", 200, 5.0)  # expires at 15 now, after second (11)
    assert cache.get(second, 11.5) is None
    found = cache.get(first, 11.5)
    assert found is not None and found.status is Status.REPLAY and found.response == b"r1"
    assert cache.get(first, 15.0) is None
    cache.finish(first, b"late", 500, 20.0)  # unknown key: recorded as answered
    replay = cache.begin(first, 21.0)
    assert (replay.status, replay.response, replay.status_code) == (Status.REPLAY, b"late", 500)


# --- the micro-benchmark runs ---------------------------------------------------------------


def test_bench_script_runs() -> None:
    out = subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "bench_sip_parse.py"), "--requests", "300",
         "--repeat", "1"],
        capture_output=True, text=True, timeout=120, check=True,
    ).stdout  # fmt: skip
    assert re.search(r"^core: median [0-9.]+ µs/REGISTER", out, re.M), out
    assert re.search(r"^full: median [0-9.]+ µs/REGISTER", out, re.M), out
