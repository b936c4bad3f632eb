"""Golden bytes written by hand from the RFC 6940 layouts (§6.3.2-§6.3.4, §7.4.1, §10.4),
field by field; the encoder must produce exactly these and the decoder must read them back."""

from __future__ import annotations

import pytest

from overlay.codec import CodecError, decode_header, decode_message, encode_message
from overlay.messages import (
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


@pytest.mark.parametrize(
    ("msg", "golden"),
    [(STORE_REQ, STORE_REQ_BYTES), (UPDATE_REQ, UPDATE_REQ_BYTES)],
    ids=["store_req", "update_req_neighbors"],
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
