"""Golden bytes written by hand from the RFC 6940 layouts (§6.3.2-§6.3.4, §7.4.1, §10.4) and
our private ApplyReq/ApplyAns (docs/wire.md §7) and StoreBatchReq/StoreBatchAns (§8), field by
field; the encoder must produce exactly
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
    ErrorCode,
    ErrorResponse,
    ForwardingHeader,
    Message,
    NodeDestination,
    ResourceDestination,
    StoreAns,
    StoreBatchAns,
    StoreBatchReq,
    StoredData,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UpdateReq,
)


def hexbytes(*fields: str) -> bytes:
    return bytes.fromhex("".join(fields))


RES = 0x000102030405060708090A0B0C0D0E0F
RES2 = 0xF0F1F2F3F4F5F6F7F8F9FAFBFCFDFEFF
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


STORE_BATCH_REQ_BYTES = hexbytes(
    # --- forwarding header (38 bytes) ---
    "d2454c4f",  # relo_token
    "01020304",  # overlay
    "0001",  # configuration_sequence
    "0a",  # version
    "64",  # ttl = 100
    "c0000000",  # fragment: unfragmented, last
    "000000ec",  # length = 236, the whole message
    "99aabbccddeeff00",  # transaction_id
    "00000000",  # max_response_length
    "0000",  # via_list_length
    "0012",  # destination_list_length = 18
    "0000",  # options_length
    "01",  # destination[0] Destination type: node
    "10",  # Destination length = 16
    "22222222222222222222222222222222",  # NodeId of the first successor
    # --- MessageContents ---
    "8003",  # message_code: store_batch_req (private)
    "0000009f",  # message_body length = 159
    "0000009b",  # stores list length = 155 bytes
    # stores[0]: 75 bytes, a StoreReq body
    "0000004b",  # store length = 75
    "10",  # StoreReq.resource: ResourceId length 16
    "000102030405060708090a0b0c0d0e0f",  # ResourceId
    "01",  # replica_number = 1
    "00000035",  # kind_data list length = 53 bytes
    "f0000001",  # StoreKindData.kind = SIP-BINDING
    "0000000000000008",  # generation_counter = 8
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
    # stores[1]: 72 bytes, a StoreReq body
    "00000048",  # store length = 72
    "10",  # StoreReq.resource: ResourceId length 16
    "f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff",  # ResourceId
    "02",  # replica_number = 2
    "00000032",  # kind_data list length = 50 bytes
    "f0000001",  # StoreKindData.kind = SIP-BINDING
    "0000000000000003",  # generation_counter = 3
    "00000022",  # values list length = 34 bytes
    "0000001e",  # StoredData.length = 30
    "0000018bcfe569f4",  # storage_time = 1700000000500 ms
    "0000003c",  # lifetime = 60 s
    "0002",  # DictionaryEntry.key length
    "6b32",  # key "k2"
    "00",  # DataValue.exists = false: a removal
    "00000000",  # DataValue.value length: empty
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

STORE_BATCH_REQ = Message(
    ForwardingHeader(
        overlay=0x01020304,
        transaction_id=0x99AABBCCDDEEFF00,
        destination_list=(NodeDestination(N_SUCC1),),
    ),
    StoreBatchReq(
        stores=(
            StoreReq(
                RES,
                1,
                (
                    StoreKindData(
                        0xF0000001,
                        8,
                        (StoredData(1_700_000_000_000, 3600, b"k1", b"abc"),),
                    ),
                ),
            ),
            StoreReq(
                RES2,
                2,
                (
                    StoreKindData(
                        0xF0000001,
                        3,
                        (StoredData(1_700_000_000_500, 60, b"k2", b"", exists=False),),
                    ),
                ),
            ),
        )
    ),
)

STORE_BATCH_ANS_BYTES = hexbytes(
    # --- forwarding header (38 bytes) ---
    "d2454c4f",  # relo_token
    "01020304",  # overlay
    "0001",  # configuration_sequence
    "0a",  # version
    "64",  # ttl = 100
    "c0000000",  # fragment
    "00000078",  # length = 120
    "99aabbccddeeff00",  # transaction_id (the request's)
    "00000000",  # max_response_length
    "0000",  # via_list_length
    "0012",  # destination_list_length = 18
    "0000",  # options_length
    "01",  # destination[0] Destination type: node
    "10",  # Destination length = 16
    "11111111111111111111111111111111",  # NodeId of the responsible peer that sent the copies
    # --- MessageContents ---
    "8004",  # message_code: store_batch_ans (private)
    "0000002b",  # message_body length = 43
    "00000027",  # answers list length = 39 bytes
    # answers[0]: the first store's StoreAns
    "0008",  # code: store_ans
    "00000010",  # answer length = 16
    "000e",  # StoreAns kind_responses list length = 14 bytes
    "f0000001",  # StoreKindResponse.kind = SIP-BINDING
    "0000000000000008",  # generation_counter = 8
    "0000",  # replicas list length: none (a replica has no replicas of its own)
    # answers[1]: the second store refused
    "ffff",  # code: error
    "0000000b",  # answer length = 11
    "0009",  # ErrorResponse.error_code = Error_Data_Too_Old
    "0007",  # error_info length
    "746f6f206f6c64",  # error_info "too old"
    "00000000",  # extensions list length
    # --- SecurityBlock ---
    EMPTY_SECURITY_BLOCK,
)

STORE_BATCH_ANS = Message(
    ForwardingHeader(
        overlay=0x01020304,
        transaction_id=0x99AABBCCDDEEFF00,
        destination_list=(NodeDestination(N_PRED),),
    ),
    StoreBatchAns(
        answers=(
            StoreAns((StoreKindResponse(0xF0000001, 8),)),
            ErrorResponse(ErrorCode.DATA_TOO_OLD, b"too old"),
        )
    ),
)


@pytest.mark.parametrize(
    ("msg", "golden"),
    [
        (STORE_REQ, STORE_REQ_BYTES),
        (UPDATE_REQ, UPDATE_REQ_BYTES),
        (APPLY_REQ, APPLY_REQ_BYTES),
        (APPLY_ANS, APPLY_ANS_BYTES),
        (STORE_BATCH_REQ, STORE_BATCH_REQ_BYTES),
        (STORE_BATCH_ANS, STORE_BATCH_ANS_BYTES),
    ],
    ids=[
        "store_req",
        "update_req_neighbors",
        "apply_req",
        "apply_ans",
        "store_batch_req",
        "store_batch_ans",
    ],
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


# Offsets into the golden StoreBatchReq/StoreBatchAns: 38-byte header + one node destination,
# then the message_code (2) and body length (4).
BATCH_REQ_BODY = 38 + 18 + 6
BATCH_ANS_BODY = 38 + 18 + 6
BATCH_STORE_0 = BATCH_REQ_BODY + 4  # the first store's length
BATCH_STORE_1 = BATCH_STORE_0 + 4 + 75  # the second one's
BATCH_ANSWER_0 = BATCH_ANS_BODY + 4  # the first answer's code
BATCH_ANSWER_1 = BATCH_ANSWER_0 + 6 + 16  # the second one's


@pytest.mark.parametrize(
    ("golden", "offset", "value"),
    [
        (STORE_BATCH_REQ_BYTES, BATCH_REQ_BODY - 1, 0x9F),  # body length
        (STORE_BATCH_REQ_BYTES, BATCH_REQ_BODY + 3, 0x9B),  # stores list length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_0 + 3, 0x4B),  # first store's length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_0 + 4, 0x10),  # its ResourceId length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_0 + 4 + 18 + 3, 0x35),  # its kind_data length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_0 + 4 + 22 + 12 + 3, 0x25),  # its values length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_0 + 4 + 22 + 16 + 3, 0x21),  # its StoredData length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_1 + 3, 0x48),  # second store's length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_1 + 4 + 18 + 3, 0x32),  # its kind_data length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_1 + 4 + 22 + 12 + 3, 0x22),  # its values length
        (STORE_BATCH_REQ_BYTES, BATCH_STORE_1 + 4 + 22 + 16 + 3, 0x1E),  # its StoredData length
        (STORE_BATCH_ANS_BYTES, BATCH_ANS_BODY - 1, 0x2B),  # body length
        (STORE_BATCH_ANS_BYTES, BATCH_ANS_BODY + 3, 0x27),  # answers list length
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_0 + 1, 0x08),  # first answer's code
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_0 + 5, 0x10),  # its length
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_0 + 7, 0x0E),  # its kind_responses length
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_0 + 6 + 15, 0x00),  # its replicas length
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_1 + 1, 0xFF),  # second answer's code
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_1 + 5, 0x0B),  # its length
        (STORE_BATCH_ANS_BYTES, BATCH_ANSWER_1 + 6 + 3, 0x07),  # its error_info length
    ],
)
@pytest.mark.parametrize("delta", [-1, 1])
def test_store_batch_golden_rejects_each_broken_length(
    golden: bytes, offset: int, value: int, delta: int
) -> None:
    """Every length inside the StoreBatchReq/StoreBatchAns body, and each answer's code, one too
    small or one too large, fails."""
    assert golden[offset] == value
    broken = bytearray(golden)
    broken[offset] = (value + delta) % 256
    with pytest.raises(CodecError):
        decode_message(bytes(broken))


def test_store_batch_codes_are_the_private_pair() -> None:
    assert STORE_BATCH_REQ_BYTES[BATCH_REQ_BODY - 6 : BATCH_REQ_BODY - 4] == b"\x80\x03"
    assert STORE_BATCH_ANS_BYTES[BATCH_ANS_BODY - 6 : BATCH_ANS_BODY - 4] == b"\x80\x04"
    assert STORE_BATCH_REQ.is_request and not STORE_BATCH_ANS.is_request
    assert STORE_BATCH_ANS.code == STORE_BATCH_REQ.code + 1


def test_store_batch_golden_elements_are_the_single_messages_bodies() -> None:
    """Each store in the golden StoreBatchReq is byte for byte the body of the StoreReq message
    that would have carried it alone, and each answer the body of its own StoreAns or Error."""
    assert isinstance(STORE_BATCH_REQ.body, StoreBatchReq)
    offset = BATCH_STORE_0
    for store in STORE_BATCH_REQ.body.stores:
        alone = encode_message(Message(STORE_BATCH_REQ.header, store))
        body = alone[38 + 18 + 6 : -15]
        assert STORE_BATCH_REQ_BYTES[offset : offset + 4] == len(body).to_bytes(4, "big")
        assert STORE_BATCH_REQ_BYTES[offset + 4 : offset + 4 + len(body)] == body
        offset += 4 + len(body)
    assert offset == len(STORE_BATCH_REQ_BYTES) - 15
    # The first store alone is the golden StoreReq above but for replica number and generation.
    first = STORE_BATCH_REQ_BYTES[BATCH_STORE_0 + 4 : BATCH_STORE_1]
    single = STORE_REQ_BYTES[38 + 19 + 6 : -15]
    assert len(first) == len(single) == 75
    assert [i for i in range(75) if first[i] != single[i]] == [17, 33]
    assert isinstance(STORE_BATCH_ANS.body, StoreBatchAns)
    offset = BATCH_ANSWER_0
    for answer in STORE_BATCH_ANS.body.answers:
        alone = encode_message(Message(STORE_BATCH_ANS.header, answer))
        code_and_length, body = alone[38 + 18 : 38 + 18 + 6], alone[38 + 18 + 6 : -15]
        assert STORE_BATCH_ANS_BYTES[offset : offset + 6] == code_and_length
        assert STORE_BATCH_ANS_BYTES[offset + 6 : offset + 6 + len(body)] == body
        offset += 6 + len(body)
    assert offset == len(STORE_BATCH_ANS_BYTES) - 15


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
    [
        ("apply_req", APPLY_REQ_BYTES),
        ("apply_ans", APPLY_ANS_BYTES),
        ("store_batch_req", STORE_BATCH_REQ_BYTES),
        ("store_batch_ans", STORE_BATCH_ANS_BYTES),
    ],
)
def test_docs_worked_examples_are_the_golden_bytes(name: str, golden: bytes) -> None:
    assert _doc_example(name).hex() == golden.hex()
