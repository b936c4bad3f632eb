"""Fuzzing the SIP parser and the whole pure pipeline with hypothesis.

Invariants: parse_message raises nothing but SipParseError; the pipeline never raises
and never answers 500 (which would mean a bug caught by its safety net); every answer
is itself a well-formed response; the stream framer never raises. About 24k cases.
"""

from __future__ import annotations

import pathlib

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from p2preg.sip import LocalRegistrar, Source, StreamFramer, parse_message
from p2preg.sip.core import Drop, Respond, SipCore
from p2preg.sip.message import SipParseError, SipRequest, SipResponse
from p2preg.sip.parser import Frame, FramingError

CORPUS = pathlib.Path("/work/shared/sip-torture")
SEEDS = sorted(p.read_bytes() for p in CORPUS.rglob("*.dat"))
SRC = Source("192.0.2.50", 5060, "UDP")
NOW = 1_700_000_000.0


def fuzz(n: int) -> settings:
    return settings(
        max_examples=n,
        deadline=None,
        database=None,
        derandomize=True,
        suppress_health_check=list(HealthCheck),
    )


# Fragments that stress the grammar: separators, quoting, escapes, folding, IPv6.
TOKENS = [
    b",",
    b";",
    b'"',
    b"\\",
    b"<",
    b">",
    b":",
    b"=",
    b"%",
    b"%0",
    b"%00",
    b"[",
    b"]",
    b"*",
    b"\r\n",
    b"\r\n ",
    b"\n",
    b"\r",
    b"\x00",
    b" ",
    b"\t",
    b"@",
    b"?",
    b"&",
    b"sip:",
    b"sips:",
    b"tel:",
    b"[::1]",
    b";branch=z9hG4bK",
    b";expires=",
    b";q=",
    b"Contact: *\r\n",
    b"Content-Length: 99999\r\n",
    b"l: -1\r\n",
    b"Expires: 0\r\n",
    b"\xff\xfe",
    b"\xc3\xa9",
    b"99999999999999999999",
]


def check_pipeline(data: bytes, registrar: LocalRegistrar) -> None:
    try:
        message = parse_message(data)
    except SipParseError:
        pass
    else:
        assert isinstance(message, SipRequest | SipResponse)
    result = registrar.handle(data, SRC, NOW)
    if result is not None:
        assert isinstance(result, Respond)
        assert result.status != 500, result.data[:200]
        reply = parse_message(result.data)
        assert isinstance(reply, SipResponse) and reply.status == result.status


def check_stream(data: bytes, cut: int) -> None:
    core = SipCore()
    framer = StreamFramer()
    for chunk in (data[:cut], data[cut:]):
        for event in framer.feed(chunk):
            if isinstance(event, Frame):
                step = core.receive(
                    event.data, Source("192.0.2.50", 40000, "TCP"), NOW, stream=True
                )
                assert not (isinstance(step, Respond) and step.status == 500)
            elif isinstance(event, FramingError):
                step = core.reject_framing(event, Source("192.0.2.50", 40000, "TCP"), NOW)
                assert isinstance(step, Respond | Drop)


@st.composite
def mutated(draw: st.DrawFn) -> bytes:
    data = bytearray(draw(st.sampled_from(SEEDS)))
    for _ in range(draw(st.integers(1, 6))):
        kind = draw(st.integers(0, 5))
        pos = draw(st.integers(0, len(data)))
        if kind == 0 and data:  # flip a byte
            pos = min(pos, len(data) - 1)
            data[pos] = draw(st.integers(0, 255))
        elif kind == 1:  # insert a grammar fragment
            data[pos:pos] = draw(st.sampled_from(TOKENS))
        elif kind == 2:  # delete a range
            data[pos : pos + draw(st.integers(1, 40))] = b""
        elif kind == 3:  # duplicate a range (repeated headers, params)
            end = min(len(data), pos + draw(st.integers(1, 80)))
            data[pos:pos] = data[pos:end]
        elif kind == 4:  # truncate
            del data[pos:]
        else:  # random bytes
            data[pos:pos] = draw(st.binary(min_size=1, max_size=8))
    return bytes(data)


@fuzz(8000)
@given(st.binary(max_size=1500))
def test_random_bytes(data: bytes) -> None:
    check_pipeline(data, LocalRegistrar())
    check_stream(data, len(data) // 2)


@fuzz(8000)
@given(st.binary(max_size=600).map(lambda b: b"REGISTER sip:example.com SIP/2.0\r\n" + b))
def test_random_bytes_after_a_start_line(data: bytes) -> None:
    check_pipeline(data, LocalRegistrar())


@fuzz(9000)
@given(mutated(), st.integers(0, 2000))
def test_mutated_torture_messages(data: bytes, cut: int) -> None:
    registrar = LocalRegistrar()
    check_pipeline(data, registrar)
    check_pipeline(data, registrar)  # again: the transaction cache path
    check_stream(data, min(cut, len(data)))
