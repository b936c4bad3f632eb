"""Conformance against Wireshark's reload dissector: the RELOAD decoder written by others.

Every message code we send is encoded by our codec, wrapped in a link-framing DATA header, turned
into a TCP capture with text2pcap and decoded by tshark. Our private kinds are declared to
tshark as dictionary kinds so that it decodes the stored entries too.
"""

from __future__ import annotations

import dataclasses
import datetime
import hashlib
import shutil
import struct
import subprocess
from pathlib import Path

import pytest
from codec_samples import messages
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID

from overlay.codec import decode_message, encode_body, encode_message
from overlay.messages import (
    EMPTY_SIGNATURE,
    ApplyAns,
    FetchAns,
    FetchReq,
    GenericCertificate,
    Message,
    MessageBody,
    MessageCode,
    RawBody,
    SecurityBlock,
    Signature,
    SignerIdentityType,
    StoreBatchReq,
    StoredData,
    StoreReq,
)

TSHARK = shutil.which("tshark")
TEXT2PCAP = shutil.which("text2pcap")
pytestmark = pytest.mark.skipif(
    TSHARK is None or TEXT2PCAP is None, reason="tshark/text2pcap (wireshark) not installed"
)

PORT = 6084
PI_ERROR = 0x00800000  # Wireshark's expert severity "error"
KINDS = ('"4026531841","SIP-BINDING","DICTIONARY"', '"4026531842","SIP-CREDENTIAL","DICTIONARY"')
# Every code a p2preg peer sends (Stat and AppAttach are only carried, never produced).
SENT_CODES = {
    int(c)
    for c in MessageCode
    if c
    not in (
        MessageCode.STAT_REQ,
        MessageCode.STAT_ANS,
        MessageCode.APP_ATTACH_REQ,
        MessageCode.APP_ATTACH_ANS,
    )
}


def _certificate() -> bytes:
    key = ec.generate_private_key(ec.SECP256R1())
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "p2preg test peer")])
    now = datetime.datetime(2024, 1, 1, tzinfo=datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(key.public_key())
        .serial_number(1)
        .not_valid_before(now)
        .not_valid_after(now + datetime.timedelta(days=1))
        .sign(key, hashes.SHA256())
    )
    return cert.public_bytes(serialization.Encoding.DER)


def _resign(body: MessageBody, sig: Signature) -> MessageBody:
    def values(vs: tuple[StoredData, ...]) -> tuple[StoredData, ...]:
        return tuple(dataclasses.replace(v, signature=sig) for v in vs)

    if isinstance(body, StoreReq):
        store = tuple(dataclasses.replace(k, values=values(k.values)) for k in body.kind_data)
        return dataclasses.replace(body, kind_data=store)
    if isinstance(body, StoreBatchReq):
        stores = tuple(_resign(s, sig) for s in body.stores)
        return dataclasses.replace(body, stores=stores)  # type: ignore[arg-type]
    if isinstance(body, FetchAns):
        fetch = tuple(dataclasses.replace(k, values=values(k.values)) for k in body.kind_responses)
        return dataclasses.replace(body, kind_responses=fetch)
    if isinstance(body, ApplyAns):
        return dataclasses.replace(body, values=values(body.values))
    return body


def _keyless(body: MessageBody) -> MessageBody:
    if isinstance(body, FetchReq):
        specs = tuple(dataclasses.replace(s, keys=()) for s in body.specifiers)
        return dataclasses.replace(body, specifiers=specs)
    return body


def _sample(signed: bool) -> list[Message]:
    """One message per sent body variant, signed the way peer security will sign them, or with
    the placeholder signature (identity type none) we send until then."""
    if signed:
        der = _certificate()
        cert_hash = hashlib.sha256(der).digest()
        sig = Signature(4, 1, SignerIdentityType.CERT_HASH, b"\x04\x20" + cert_hash, b"\x5a" * 64)
        security = SecurityBlock((GenericCertificate(0, der),), sig)
    else:
        sig, security = EMPTY_SIGNATURE, SecurityBlock()
    return [
        dataclasses.replace(m, body=_resign(m.body, sig), security=security)
        for m in messages(rich=True)
        if not isinstance(m.body, RawBody)
    ]


def _frame(sequence: int, message: bytes) -> bytes:
    # Link framing DATA (WIRE.md §1), built here since the framing module is not under test.
    return struct.pack("!BI", 0x80, sequence) + len(message).to_bytes(3, "big") + message


def _capture(tmp_path: Path, msgs: list[Message]) -> Path:
    """A TCP capture of ``msgs``, one link-framing DATA frame each."""
    lines = []
    for seq, msg in enumerate(msgs):
        data = encode_message(msg)
        assert decode_message(data) == msg
        frame = _frame(seq, data)
        for off in range(0, len(frame), 16):
            lines.append(f"{off:06x} " + frame[off : off + 16].hex(" "))
        lines.append("")
    hexdump, pcap = tmp_path / "frames.txt", tmp_path / "frames.pcapng"
    hexdump.write_text("\n".join(lines) + "\n")
    assert TEXT2PCAP is not None
    subprocess.run(
        [TEXT2PCAP, "-q", "-T", f"40000,{PORT}", str(hexdump), str(pcap)],
        check=True,
        capture_output=True,
        timeout=60,
    )
    return pcap


def _fields(pcap: Path, names: tuple[str, ...], *, kinds: bool = True) -> list[list[str]]:
    """tshark's values of the fields ``names`` per frame, all occurrences joined by '|'."""
    assert TSHARK is not None
    cmd = [TSHARK, "-n", "-r", str(pcap), "-d", f"tcp.port=={PORT},reload-framing"]
    for kind in KINDS if kinds else ():
        cmd += ["-o", f"uat:reload_kindids:{kind}"]
    cmd += ["-T", "fields", "-E", "aggregator=|", "-E", "occurrence=a"]
    for name in names:
        cmd += ["-e", name]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    width = len(names)
    return [(line.split("\t") + [""] * width)[:width] for line in proc.stdout.splitlines()]


def _dissect(
    tmp_path: Path, msgs: list[Message], *, kinds: bool = True, min_severity: int = PI_ERROR
) -> list[tuple[int, list[int], list[str], str]]:
    """(frame number, message codes, expert messages of at least ``min_severity``, malformed)
    per frame."""
    names = (
        "frame.number",
        "reload.message.code",
        "_ws.expert.severity",
        "_ws.expert.message",
        "_ws.malformed",
    )
    rows = []
    for number, codes, severities, texts, malformed in _fields(
        _capture(tmp_path, msgs), names, kinds=kinds
    ):
        sev = [int(s, 0) for s in severities.split("|") if s]
        msg_texts = texts.split("|") if texts else []
        errors = [t for s, t in zip(sev, msg_texts, strict=False) if s >= min_severity]
        if len(sev) != len(msg_texts):  # keep every item even if a message held a '|'
            errors = [texts] if any(s >= min_severity for s in sev) else []
        rows.append((int(number), [int(c, 0) for c in codes.split("|") if c], errors, malformed))
    assert len(rows) == len(msgs), rows
    return rows


def test_every_sent_code_decodes_cleanly_in_wireshark(tmp_path: Path) -> None:
    msgs = [dataclasses.replace(m, body=_keyless(m.body)) for m in _sample(signed=True)]
    assert {m.code for m in msgs} == SENT_CODES
    rows = _dissect(tmp_path, msgs, min_severity=0)  # not even a comment or a note
    problems = [
        (n, codes, errors, malformed) for n, codes, errors, malformed in rows if errors or malformed
    ]
    assert problems == []
    seen = [codes for _, codes, _, _ in rows]
    assert seen == [[m.code] for m in msgs]


PRIVATE_PAIRS = [
    (MessageCode.APPLY_REQ, MessageCode.APPLY_ANS),
    (MessageCode.STORE_BATCH_REQ, MessageCode.STORE_BATCH_ANS),
]


@pytest.mark.parametrize("pair", PRIVATE_PAIRS, ids=lambda p: p[0].name.removesuffix("_REQ"))
def test_private_pair_is_carried_as_an_opaque_body(
    tmp_path: Path, pair: tuple[MessageCode, MessageCode]
) -> None:
    """Wireshark 4.0 knows nothing of our private codes (0x8001/0x8002, 0x8003/0x8004): it must
    show them as message codes with nothing to report, read the body length we sent, and find
    the security block right behind the body (the signature value it shows is the one we signed
    with)."""
    msgs = [m for m in _sample(signed=True) if m.code in pair]
    assert {m.code for m in msgs} == set(pair)
    rows = _dissect(tmp_path, msgs, min_severity=0)
    assert [(codes, errors, malformed) for _, codes, errors, malformed in rows] == [
        ([m.code], [], "") for m in msgs
    ]
    names = ("reload.message.code", "reload.length.32", "reload.opaque.data")
    seen = _fields(tmp_path / "frames.pcapng", names)
    for msg, (code, lengths, opaques) in zip(msgs, seen, strict=True):
        assert int(code, 0) == msg.code
        body_length = len(encode_body(msg.body)[1])
        # uint32 lengths in order: ..., message_body, extensions, ...
        assert str(body_length) in lengths.split("|"), (lengths, body_length)
        assert opaques.split("|")[-1] == msg.security.signature.value.hex()


def test_fetch_keys_only_trip_the_dissector_key_offset_bug(tmp_path: Path) -> None:
    """Wireshark 4.0 reads every DictionaryKey of a StoredDataSpecifier at the specifier's own
    start (the kind id) instead of at the key, so a FetchReq naming keys of a kind declared as a
    dictionary shows "Computed length > max_field length" there. Without the kind declared it
    does not look inside the specifier and must be clean; with it, that item is the only one."""
    msgs = [m for m in _sample(signed=True) if isinstance(m.body, FetchReq)]
    assert msgs and any(s.keys for s in msgs[0].body.specifiers)  # type: ignore[union-attr]
    for number, codes, errors, malformed in _dissect(tmp_path, msgs, kinds=False):
        assert (codes, errors, malformed) == ([MessageCode.FETCH_REQ], [], ""), number
    for number, _, errors, malformed in _dissect(tmp_path, msgs, kinds=True):
        assert not malformed, number
        assert set(errors) == {"Computed length > max_field length"}, (number, errors)


def test_placeholder_signature_decodes_cleanly(tmp_path: Path) -> None:
    """Wireshark 4.0 decodes no SignerIdentityValue but cert_hash/cert_hash_node_id and reports
    identity type none(3) as "Unknown identity type" (an error-level expert item), so the
    placeholder we send until peer security lands is an empty cert_hash identity: nothing may be
    malformed and no error may show."""
    msgs = [dataclasses.replace(m, body=_keyless(m.body)) for m in _sample(signed=False)]
    rows = _dissect(tmp_path, msgs)
    assert [codes for _, codes, _, _ in rows] == [[m.code] for m in msgs]
    for number, _, errors, malformed in rows:
        assert not malformed, number
        assert errors == [], (number, errors)
