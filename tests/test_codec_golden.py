"""Golden bytes written by hand from the RFC 6940 layouts (§6.3.2-§6.3.4, §7.4.1, §10.4) and
our private ApplyReq/ApplyAns (docs/wire.md §7), field by field; the encoder must produce exactly
these and the decoder must read them back."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from overlay.codec import CodecError, decode_header, decode_message, encode_message
from overlay.messages import (
    ApplyAns,
    ApplyReq,
    ChordUpdateType,
    ForwardingHeader,
    Message,
    NodeDestination,
    ResourceDestination,
    StoredData,
    StoreKindData,
    StoreReq,
    UpdateReq,
)


def hexbytes(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields))


RES = 0x000102030405060708090A0B0C0D0E0F
N_PRED = 0x11111111111111111111111111111111
N_SUCC1 = 0x22222222222222222222222222222222
N_SUCC2 = 0x33333333333333333333333333333333
N_VIA = 0x44444444444444444444444444444444
N_DEST = 0x55555555555555555555555555555555

EMPTY_SECURITY_BLOCK = (
    "0000"  # certificates list<0..2^16-1>: 0 bytes
    "00"  # signature hash_algorithm: none
    "00"  # signature signature_algorithm: anonymous
    "01"  # SignerIdentity type: cert_hash(1) (our unsigned placeholder)
    "0002"  # SignerIdentity length
    "00"  # hash_alg: none
    "00"  # certificate_hash<0..255>: empty
    "0000"  # signature_value opaque<0..2^16-1>: empty
)

STORE_REQ_BYTES = hexbytes(
    # --- forwarding header (38 bytes) ---
    "d2454c4f",  # relo_token
    "01020304",  # overlay
    "0001",  # configuration_sequence
    "0a",  # version
    "64",  # ttl = 100
    "c0000000",  # fragment: unfragmented, last
    "00000099",  # length = 153, the whole message
    "1122334455667788",  # transaction_id
    "00000000",  # max_response_length
    "0000",  # via_list_length
    "0013",  # destination_list_length = 19
    "0000",  # options_length
    # --- destination list ---
    "02",  # Destination type: resource
    "11",  # Destination length = 17 (ResourceId with its own length byte)
    "10",  # ResourceId length = 16
    "000102030405060708090a0b0c0d0e0f",  # ResourceId
    # --- MessageContents ---
    "0007",  # message_code: store_req
    "0000004b",  # message_body length = 75
    "10",  # StoreReq.resource: ResourceId length 16
    "000102030405060708090a0b0c0d0e0f",  # ResourceId
    "00",  # replica_number
    "00000035",  # kind_data list length = 53 bytes
    "f0000001",  # StoreKindData.kind = SIP-BINDING
    "0000000000000000",  # generation_counter
    "00000025",  # values list length = 37 bytes
    "00000021",  # StoredData.length = 33
    "0000018bcfe56800",  # storage_time = 1700000000000 ms
    "00000e10",  # lifetime = 3600 s
    "0002",  # DictionaryEntry.key length
    "6b31",  # key "k1"
    "01",  # DataValue.exists = true
    "00000003",  # DataValue.value length
    "616263",  # value "abc"
    "00",  # Signature hash_algorithm
    "00",  # signature_algorithm
    "01",  # SignerIdentity type cert_hash (placeholder)
    "0002",  # SignerIdentity length
    "00",  # hash_alg: none
    "00",  # certificate_hash: empty
    "0000",  # signature_value length
    "00000000",  # extensions list length
    # --- SecurityBlock ---
    EMPTY_SECURITY_BLOCK,
)

STORE_REQ = Message(
    ForwardingHeader(
        overlay=0x01020304,
        transaction_id=0x1122334455667788,
        destination_list=(ResourceDestination(RES),),
    ),
    StoreReq(
        RES,
        0,
        (
            StoreKindData(
                0xF0000001,
                0,
                (
                    StoredData(
                        storage_time=1_700_000_000_000, lifetime=3600, key=b"k1", value=b"abc"
                    ),
                ),
            ),
        ),
    ),
)

UPDATE_REQ_BYTES = hexbytes(
    # --- forwarding header ---
    "d2454c4f",  # relo_token
    "a1b2c3d4",  # overlay
    "0002",  # configuration_sequence
    "0a",  # version
    "63",  # ttl = 99
    "c0000000",  # fragment
    "00000098",  # length = 152
    "0000000000000001",  # transaction_id
    "00000000",  # max_response_length
    "0012",  # via_list_length = 18
    "0012",  # destination_list_length = 18
    "0000",  # options_length
    "01",  # via[0] Destination type: node
    "10",  # Destination length = 16
    "44444444444444444444444444444444",  # NodeId
    "01",  # destination[0] Destination type: node
    "10",  # Destination length = 16
    "55555555555555555555555555555555",  # NodeId
    # --- MessageContents ---
    "0013",  # message_code: update_req
    "00000039",  # message_body length = 57
    "0000003c",  # ChordUpdate.uptime = 60 s
    "02",  # ChordUpdate.type = neighbors
    "0010",  # predecessors list length = 16 bytes
    "11111111111111111111111111111111",  # predecessor
    "0020",  # successors list length = 32 bytes
    "22222222222222222222222222222222",  # successor 1
    "33333333333333333333333333333333",  # successor 2
    "00000000",  # extensions
    # --- SecurityBlock ---
    EMPTY_SECURITY_BLOCK,
)

UPDATE_REQ = Message(
    ForwardingHeader(
        overlay=0xA1B2C3D4,
        transaction_id=1,
        via_list=(NodeDestination(N_VIA),),
        destination_list=(NodeDestination(N_DEST),),
        ttl=99,
        configuration_sequence=2,
    ),
    UpdateReq(60, ChordUpdateType.NEIGHBORS, (N_PRED,), (N_SUCC1, N_SUCC2)),
)

APPLY_REQ_BYTES = hexbytes(
    # --- forwarding header (38 bytes) ---
    "d2454c4f",  # relo_token
    "01020304",  # overlay
    "0001",  # configuration_sequence
    "0a",  # version
    "64",  # ttl = 100
    "c0000000",  # fragment: unfragmented, last
    "00000073",  # length = 115, the whole message
    "1122334455667788",  # transaction_id
    "00000000",  # max_response_length
    "0000",  # via_list_length
    "0013",  # destination_list_length = 19
    "0000",  # options_length
    # --- destination list ---
    "02",  # Destination type: resource
    "11",  # Destination length = 17
    "10",  # ResourceId length = 16
    "000102030405060708090a0b0c0d0e0f",  # ResourceId
    # --- MessageContents ---
    "8001",  # message_code: apply_req (private)
    "00000025",  # message_body length = 37
    "10",  # ApplyReq.resource: ResourceId length 16
    "000102030405060708090a0b0c0d0e0f",  # ResourceId
    "f0000001",  # kind = SIP-BINDING
    "0000000000000007",  # generation: must be 7 now
    "00000004",  # operation length
    "81a16301",  # operation (msgpack {"c": 1}, opaque to the overlay)
    "00000000",  # extensions list length
    # --- SecurityBlock ---
    EMPTY_SECURITY_BLOCK,
)

APPLY_REQ = Message(
    ForwardingHeader(
        overlay=0x01020304,
        transaction_id=0x1122334455667788,
        destination_list=(ResourceDestination(RES),),
    ),
    ApplyReq(RES, 0xF0000001, 7, b"\x81\xa1c\x01"),
)

APPLY_ANS_BYTES = hexbytes(
    # --- forwarding header (38 bytes) ---
    "d2454c4f",  # relo_token
    "01020304",  # overlay
    "0001",  # configuration_sequence
    "0a",  # version
    "64",  # ttl = 100
    "c0000000",  # fragment
    "000000c7",  # length = 199
    "1122334455667788",  # transaction_id (the request's)
    "00000000",  # max_response_length
    "0000",  # via_list_length
    "0012",  # destination_list_length = 18
    "0000",  # options_length
    "01",  # destination[0] Destination type: node
    "10",  # Destination length = 16
    "44444444444444444444444444444444",  # NodeId of the requester
    # --- MessageContents ---
    "8002",  # message_code: apply_ans (private)
    "0000007a",  # message_body length = 122
    "f0000001",  # kind = SIP-BINDING
    "0000000000000008",  # generation after the change
    "0020",  # replicas list length = 32 bytes
    "22222222222222222222222222222222",  # replica 1
    "33333333333333333333333333333333",  # replica 2
    "00000048",  # values list length = 72 bytes
    "00000021",  # StoredData.length = 33
    "0000018bcfe56800",  # storage_time = 1700000000000 ms
    "00000e10",  # lifetime = 3600 s
    "0002",  # DictionaryEntry.key length
    "6b31",  # key "k1"
    "01",  # DataValue.exists = true
    "00000003",  # DataValue.value length
    "616263",  # value "abc"
    "00",  # Signature hash_algorithm
    "00",  # signature_algorithm
    "01",  # SignerIdentity type cert_hash (placeholder)
    "0002",  # SignerIdentity length
    "00",  # hash_alg: none
    "00",  # certificate_hash: empty
    "0000",  # signature_value length
    "0000001f",  # StoredData.length = 31
    "0000018bcfe569f4",  # storage_time = 1700000000500 ms
    "0000003c",  # lifetime = 60 s
    "0002",  # DictionaryEntry.key length
    "6b32",  # key "k2"
    "01",  # DataValue.exists = true
    "00000001",  # DataValue.value length
    "78",  # value "x"
    "00",  # Signature hash_algorithm
    "00",  # signature_algorithm
    "01",  # SignerIdentity type cert_hash (placeholder)
    "0002",  # SignerIdentity length
    "00",  # hash_alg: none
    "00",  # certificate_hash: empty
    "0000",  # signature_value length
    "00000000",  # extensions list length
    # --- SecurityBlock ---
    EMPTY_SECURITY_BLOCK,
)

APPLY_ANS = Message(
    ForwardingHeader(
        overlay=0x01020304,
        transaction_id=0x1122334455667788,
        destination_list=(NodeDestination(N_VIA),),
    ),
    ApplyAns(
        0xF0000001,
        8,
        (N_SUCC1, N_SUCC2),
        (
            StoredData(storage_time=1_700_000_000_000, lifetime=3600, key=b"k1", value=b"abc"),
            StoredData(storage_time=1_700_000_000_500, lifetime=60, key=b"k2", value=b"x"),
        ),
    ),
)


@pytest.mark.parametrize(
    ("msg", "golden"),
    [
        (STORE_REQ, STORE_REQ_BYTES),
        (UPDATE_REQ, UPDATE_REQ_BYTES),
        (APPLY_REQ, APPLY_REQ_BYTES),
        (APPLY_ANS, APPLY_ANS_BYTES),
    ],
    ids=["store_req", "update_req_neighbors", "apply_req", "apply_ans"],
)
def test_golden(msg: Message, golden: bytes) -> None:
    assert len(golden) == int.from_bytes(golden[16:20], "big")
    assert encode_message(msg).hex() == golden.hex()
    assert decode_message(golden) == msg
    assert decode_header(golden) == msg.header


def test_golden_rejects_each_broken_length() -> None:
    """Bumping the message length, the body length or the StoredData length by one must fail."""
    for offset, value in (
        (19, 153),
        (38 + 19 + 2 + 3, 75),
        (38 + 19 + 6 + 17 + 1 + 4 + 12 + 4 + 3, 33),
    ):
        assert STORE_REQ_BYTES[offset] == value
        broken = bytearray(STORE_REQ_BYTES)
        broken[offset] += 1
        with pytest.raises(CodecError):
            decode_message(bytes(broken))


# Offsets into the golden ApplyReq/ApplyAns: 38-byte header + destination list, then the
# message_code (2) and body length (4).
APPLY_REQ_BODY = 38 + 19 + 6
APPLY_ANS_BODY = 38 + 18 + 6


@pytest.mark.parametrize(
    ("golden", "offset", "value"),
    [
        (APPLY_REQ_BYTES, APPLY_REQ_BODY - 1, 0x25),  # body length
        (APPLY_REQ_BYTES, APPLY_REQ_BODY, 0x10),  # ResourceId length
        (APPLY_REQ_BYTES, APPLY_REQ_BODY + 17 + 12 + 3, 4),  # operation length
        (APPLY_ANS_BYTES, APPLY_ANS_BODY - 1, 0x7A),  # body length
        (APPLY_ANS_BYTES, APPLY_ANS_BODY + 12 + 1, 0x20),  # replicas length
        (APPLY_ANS_BYTES, APPLY_ANS_BODY + 12 + 34 + 3, 0x48),  # values length
        (APPLY_ANS_BYTES, APPLY_ANS_BODY + 12 + 34 + 4 + 3, 0x21),  # first StoredData length
        (APPLY_ANS_BYTES, APPLY_ANS_BODY + 12 + 34 + 4 + 37 + 3, 0x1F),  # second one
    ],
)
@pytest.mark.parametrize("delta", [-1, 1])
def test_apply_golden_rejects_each_broken_length(
    golden: bytes, offset: int, value: int, delta: int
) -> None:
    """Every length inside the ApplyReq/ApplyAns body, one too short or one too long, fails."""
    assert golden[offset] == value
    broken = bytearray(golden)
    broken[offset] += delta
    with pytest.raises(CodecError):
        decode_message(bytes(broken))


def test_apply_codes_are_the_private_pair() -> None:
    assert APPLY_REQ_BYTES[APPLY_REQ_BODY - 6 : APPLY_REQ_BODY - 4] == b"\x80\x01"
    assert APPLY_ANS_BYTES[APPLY_ANS_BODY - 6 : APPLY_ANS_BODY - 4] == b"\x80\x02"
    assert APPLY_REQ.is_request and not APPLY_ANS.is_request
    assert APPLY_ANS.code == APPLY_REQ.code + 1


DOC = Path(__file__).resolve().parent.parent / "docs" / "wire.md"


def _doc_example(name: str) -> bytes:
    """The hex of the worked example marked ``<!-- golden: name -->`` in docs/wire.md: the first
    word of each line of the code block that follows; the rest of the line is commentary."""
    text = DOC.read_text(encoding="utf-8")
    match = re.search(rf"<!-- golden: {name} -->\s*```[^\n]*\n(.*?)```", text, re.S)
    assert match, f"docs/wire.md has no worked example {name}"
    words = [line.split()[0] for line in match.group(1).splitlines() if line.strip()]
    return bytes.fromhex("".join(words))


@pytest.mark.parametrize(
    ("name", "golden"),
    [("apply_req", APPLY_REQ_BYTES), ("apply_ans", APPLY_ANS_BYTES)],
)
def test_docs_worked_examples_are_the_golden_bytes(name: str, golden: bytes) -> None:
    assert _doc_example(name).hex() == golden.hex()
