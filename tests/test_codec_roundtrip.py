"""Every message body round-trips through the codec, by example and by hypothesis."""

from __future__ import annotations

import dataclasses
import typing

import pytest
from codec_samples import N1, N2, bodies, header, messages
from hypothesis import given, settings
from hypothesis import strategies as st

from overlay.codec import (
    CodecError,
    decode_body,
    decode_destination,
    decode_header,
    decode_message,
    encode_body,
    encode_destination,
    encode_message,
)
from overlay.messages import (
    ApplyAns,
    ApplyReq,
    AttachAns,
    AttachReq,
    CandType,
    ChordUpdateType,
    Destination,
    ErrorResponse,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    ForwardingHeader,
    ForwardingOption,
    GenericCertificate,
    IceCandidate,
    IceExtension,
    IpAddressPort,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    MessageCode,
    MessageExtension,
    NodeDestination,
    OpaqueDestination,
    PingAns,
    PingReq,
    ProbeAns,
    ProbeInformation,
    ProbeReq,
    RawBody,
    ResourceDestination,
    RouteQueryAns,
    RouteQueryReq,
    SecurityBlock,
    Signature,
    StoreAns,
    StoreBatchAns,
    StoreBatchReq,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UpdateAns,
    UpdateReq,
)

ALL_BODY_TYPES = set(typing.get_args(MessageBody))


def test_samples_cover_every_body_type_and_variant() -> None:
    samples = bodies()
    assert {type(b) for b in samples} == ALL_BODY_TYPES
    updates = {b.update_type for b in samples if isinstance(b, UpdateReq)}
    assert updates == set(ChordUpdateType)
    assert {b.leave_type for b in samples if isinstance(b, LeaveReq)} == {1, 2}
    probe = next(b for b in samples if isinstance(b, ProbeAns))
    assert {p.type for p in probe.probe_info} == {1, 2, 3, 4}
    attach = next(b for b in samples if isinstance(b, AttachReq))
    hosts = [c.addr_port.host for c in attach.candidates]
    assert any(":" in h for h in hosts) and any("." in h for h in hosts)
    assert any(c.type == CandType.SRFLX and c.rel_addr_port for c in attach.candidates)
    store = next(b for b in samples if isinstance(b, StoreReq))
    assert len(store.kind_data) >= 2 and len(store.kind_data[0].values) >= 2
    assert any(not v.exists for k in store.kind_data for v in k.values)
    applies = [b for b in samples if isinstance(b, ApplyReq)]
    assert {b.generation == 0 for b in applies} == {True, False}
    assert {b.operation == b"" for b in applies} == {True, False}
    answers = [b for b in samples if isinstance(b, ApplyAns)]
    assert any(b.replicas and b.values for b in answers)
    assert any(not b.replicas and not b.values for b in answers)
    batches = [b for b in samples if isinstance(b, StoreBatchReq)]
    assert any(
        len(b.stores) >= 2 and {s.replica_number for s in b.stores} == {1, 2} for b in batches
    )
    assert any(s.kind_data == () for b in batches for s in b.stores)
    assert any(b.stores == () for b in batches)
    batch_answers = [b for b in samples if isinstance(b, StoreBatchAns)]
    kinds = [type(a) for b in batch_answers for a in b.answers]
    assert kinds.count(StoreAns) >= 2 and kinds.count(ErrorResponse) >= 2
    assert any(
        isinstance(a, StoreAns) and not a.kind_responses for b in batch_answers for a in b.answers
    )
    assert any(b.answers == () for b in batch_answers)


@pytest.mark.parametrize("msg", messages(rich=True), ids=lambda m: type(m.body).__name__)
def test_message_roundtrip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert decode_header(data) == msg.header
    code, body = encode_body(msg.body)
    assert code == msg.code
    assert decode_body(code, body) == msg.body
    assert int.from_bytes(data[16:20], "big") == len(data)


@pytest.mark.parametrize("msg", messages(rich=False), ids=lambda m: type(m.body).__name__)
def test_plain_message_roundtrip(msg: Message) -> None:
    assert decode_message(encode_message(msg)) == msg


def test_header_decodes_when_body_is_garbage() -> None:
    msg = messages(rich=True)[4]
    data = bytearray(encode_message(msg))
    assert isinstance(msg.body, StoreReq)
    lists = sum(int.from_bytes(data[i : i + 2], "big") for i in (32, 34, 36))
    body_start = 38 + lists + 2 + 4  # after message_code and the body's length
    assert data[body_start] == 16  # the ResourceId's length byte
    data[body_start] = 5
    with pytest.raises(CodecError, match="resource"):
        decode_message(bytes(data))
    assert decode_header(bytes(data)) == msg.header


def test_destination_roundtrip_and_forms() -> None:
    node, res = NodeDestination(N1), ResourceDestination(N2)
    assert encode_destination(node) == b"\x01\x10" + N1.to_bytes(16, "big")
    assert encode_destination(res) == b"\x02\x11\x10" + N2.to_bytes(16, "big")
    assert encode_destination(OpaqueDestination(b"ab")) == b"\x03\x03\x02ab"
    comp = OpaqueDestination(b"\x81\x02", compressed=True)
    assert encode_destination(comp) == b"\x81\x02"
    for d in (node, res, comp, OpaqueDestination(b""), OpaqueDestination(b"x" * 254)):
        assert decode_destination(encode_destination(d)) == d


@pytest.mark.parametrize(
    "bad",
    [
        b"\x02\x10" + bytes(16),  # resource id must carry its own length byte
        b"\x02\x09\x08" + bytes(8),  # 8-byte resource id
        b"\x01\x0f" + bytes(15),  # short node id
        b"\x04\x00",  # unknown type
        b"\x81",  # half a compressed id
        b"\x03\x02\x05x",  # opaque id longer than its destination
    ],
)
def test_bad_destinations(bad: bytes) -> None:
    with pytest.raises(CodecError):
        decode_destination(bad)


@pytest.mark.parametrize(
    "body",
    [
        ErrorResponse(3, b"x" * 70000),
        PingReq(b"\x00" * 65536),
        ProbeAns((ProbeInformation(1, b"four"),)),
        ProbeAns((ProbeInformation(2, 1 << 32),)),
        ProbeAns((ProbeInformation(4, 5),)),
        AttachReq(candidates=(IceCandidate(IpAddressPort("localhost", 1)),)),
        AttachReq(candidates=(IceCandidate(IpAddressPort("::1", 70000)),)),
        AttachReq(candidates=(IceCandidate(IpAddressPort("::1", 1), type=CandType.RELAY),)),
        AttachReq(
            candidates=(
                IceCandidate(IpAddressPort("::1", 1), rel_addr_port=IpAddressPort("::1", 2)),
            )
        ),
        AttachReq(ufrag=b"u" * 256),
        UpdateReq(1, ChordUpdateType.PEER_READY, (N1,)),
        UpdateReq(1, ChordUpdateType.NEIGHBORS, fingers=(N1,)),
        UpdateReq(1, 9),
        UpdateReq(-1),
        JoinReq(1 << 128),
        StoreReq(-1, 0),
        StoreReq(1, 256),
        FetchReq(1, (StoredDataSpecifier(1 << 32),)),
        RouteQueryReq(True, OpaqueDestination(b"\x01\x02", compressed=True)),
        RouteQueryReq(True, OpaqueDestination(b"x" * 255)),
        RawBody(0x10000),
        ApplyReq(-1, 1, 0, b""),
        ApplyReq(1 << 128, 1, 0, b""),
        ApplyReq(1, 1 << 32, 0, b""),
        ApplyReq(1, 1, 1 << 64, b""),
        ApplyReq(1, 1, -1, b""),
        ApplyAns(-1, 0),
        ApplyAns(1, 1 << 64),
        ApplyAns(1, 0, (1 << 128,)),
        ApplyAns(1, 0, (N1,) * 4096),  # 65536 bytes of replicas: over the 2-byte prefix
        ApplyAns(1, 0, (), (StoredData(1 << 64, 0, b"k", b"v"),)),
        ApplyAns(1, 0, (), (StoredData(0, 0, b"k" * 65536, b"v"),)),
        StoreBatchReq((StoreReq(1, 1), StoreReq(1 << 128, 1))),
        StoreBatchReq((StoreReq(1, 256),)),
        StoreBatchReq((StoreReq(1, 1, (StoreKindData(1 << 32, 0),)),)),
        StoreBatchReq((StoreAns(),)),  # type: ignore[arg-type]
        StoreBatchReq((FetchReq(1),)),  # type: ignore[arg-type]
        StoreBatchAns((StoreAns(), ErrorResponse(1 << 16))),
        StoreBatchAns((ErrorResponse(1, b"x" * 65536),)),
        StoreBatchAns((StoreAns((StoreKindResponse(1, 0, (-1,)),)),)),
        StoreBatchAns((StoreReq(1, 1),)),  # type: ignore[arg-type]
        StoreBatchAns((RawBody(8, b"\x00\x00"),)),  # type: ignore[arg-type]
        StoreBatchAns((FetchAns(),)),  # type: ignore[arg-type]
    ],
)
def test_encoding_invalid_values_raises_codec_error(body: MessageBody) -> None:
    with pytest.raises(CodecError):
        encode_body(body)


def test_invalid_header_values() -> None:
    base = messages(rich=False)[0]
    for hdr in (
        dataclasses.replace(base.header, ttl=256),
        dataclasses.replace(base.header, transaction_id=-1),
        dataclasses.replace(base.header, via_list=(NodeDestination(N1),) * 3700),
        dataclasses.replace(base.header, options=(ForwardingOption(1, 0, b"x" * 65536),)),
    ):
        with pytest.raises(CodecError):
            encode_message(dataclasses.replace(base, header=hdr))
    sec = SecurityBlock(signature=Signature(identity=b"x" * 65536))
    with pytest.raises(CodecError):
        encode_message(dataclasses.replace(base, security=sec))


def test_unknown_codes_decode_raw() -> None:
    for code in (MessageCode.STAT_REQ, MessageCode.STAT_ANS, 0x1D, 0x1E, 0x42, 0xFFFE):
        assert decode_body(code, b"\x00\x01") == RawBody(code, b"\x00\x01")


def test_apply_pair_codes_and_body_layout() -> None:
    """ApplyReq/ApplyAns are the private request/answer pair 0x8001/0x8002, and their bodies
    start the way docs/wire.md §7 says (resource as in StoreReq; kind and generation first)."""
    req = ApplyReq(N2, 0xF0000001, 0, b"op")
    ans = ApplyAns(0xF0000001, 3, (N1,), ())
    assert (ApplyReq.CODE, ApplyAns.CODE) == (0x8001, 0x8002)
    code, data = encode_body(req)
    assert code == 0x8001
    assert data == (
        b"\x10"
        + N2.to_bytes(16, "big")
        + bytes.fromhex("f0000001" + "00" * 8)
        + b"\x00\x00\x00\x02op"
    )
    assert data[:17] == encode_body(StoreReq(N2, 0))[1][:17]
    code, data = encode_body(ans)
    assert code == 0x8002
    assert data == (
        bytes.fromhex("f0000001" + "0000000000000003" + "0010")
        + N1.to_bytes(16, "big")
        + b"\x00\x00\x00\x00"
    )


def test_apply_ans_values_are_encoded_as_in_fetch_ans() -> None:
    values = (
        StoredData(1, 2, b"k", b"v"),
        StoredData(3, 4, b"", b"", exists=False, signature=Signature(4, 1, 1, b"\x04\x00", b"s")),
    )
    fetch = encode_body(FetchAns((FetchKindResponse(7, 9, values),)))[1]
    apply = encode_body(ApplyAns(7, 9, (), values))[1]
    # FetchAns = list length(4) | kind(4) generation(8) values<4>; ApplyAns puts an (empty)
    # replicas list between the generation and the same values list.
    assert fetch[4:16] == apply[:12]
    assert apply[12:14] == b"\x00\x00"
    assert fetch[16:] == apply[14:]


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (0x8001, b""),
        (0x8001, b"\x10" + bytes(16) + bytes(12)),  # no operation length
        (0x8001, b"\x08" + bytes(8) + bytes(12) + bytes(4)),  # 8-byte resource id
        (0x8001, b"\x10" + bytes(16) + bytes(12) + b"\x00\x00\x00\x02x"),  # short operation
        (0x8001, b"\x10" + bytes(16) + bytes(12) + bytes(4) + b"!"),  # trailing byte
        (0x8002, bytes(12)),  # no replicas, no values
        (0x8002, bytes(12) + b"\x00\x0f" + bytes(15) + bytes(4)),  # replicas not 16-byte ids
        (0x8002, bytes(12) + bytes(2) + b"\x00\x00\x00\x01" + b"\x00"),  # value of 1 byte
        (0x8002, bytes(12) + bytes(2) + bytes(4) + b"!"),  # trailing byte
        (0x8002, bytes(12) + bytes(2) + b"\xff\xff\xff\xff"),  # values of 4 GiB
    ],
    ids=lambda v: f"{v:#06x}" if isinstance(v, int) else f"{len(v)}B",
)
def test_apply_bodies_reject_malformed(code: int, data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_body(code, data)


def test_store_batch_pair_codes_and_body_layout() -> None:
    """StoreBatchReq/StoreBatchAns are the private pair 0x8003/0x8004 and their bodies are laid
    out as docs/wire.md §8 says: a uint32 byte count of the list, then each store as a StoreReq
    message's body behind a uint32 length, each answer as its message code, a uint32 length and
    the StoreAns or ErrorResponse message's body."""
    assert (StoreBatchReq.CODE, StoreBatchAns.CODE) == (0x8003, 0x8004)
    assert MessageCode.STORE_BATCH_REQ + 1 == MessageCode.STORE_BATCH_ANS
    stores = (
        StoreReq(N1, 1, (StoreKindData(7, 3, (StoredData(1, 2, b"k", b"v"),)),)),
        StoreReq(N2, 2),
    )
    code, data = encode_body(StoreBatchReq(stores))
    assert code == 0x8003
    one, two = (encode_body(s)[1] for s in stores)
    assert data == (
        (8 + len(one) + len(two)).to_bytes(4, "big")
        + len(one).to_bytes(4, "big")
        + one
        + len(two).to_bytes(4, "big")
        + two
    )
    assert two == b"\x10" + N2.to_bytes(16, "big") + b"\x02" + b"\x00\x00\x00\x00"
    answers = (StoreAns((StoreKindResponse(7, 4),)), ErrorResponse(9, b"old"))
    code, data = encode_body(StoreBatchAns(answers))
    assert code == 0x8004
    assert data == bytes.fromhex(
        "00000023"  # answers: 35 bytes
        "0008"  # answer 0: StoreAns
        "00000010"  # its length: 16
        "000e"  # kind_responses: 14 bytes
        "00000007"  # kind 7
        "0000000000000004"  # generation 4
        "0000"  # replicas: none
        "ffff"  # answer 1: ErrorResponse
        "00000007"  # its length: 7
        "0009"  # Data_Too_Old
        "0003"  # info length
        "6f6c64"  # info "old"
    )
    assert data[10:26] == encode_body(answers[0])[1]
    assert data[32:] == encode_body(answers[1])[1]
    assert encode_body(StoreBatchReq(())) == (0x8003, b"\x00\x00\x00\x00")
    assert encode_body(StoreBatchAns(())) == (0x8004, b"\x00\x00\x00\x00")
    assert decode_body(0x8003, b"\x00\x00\x00\x00") == StoreBatchReq(())
    assert decode_body(0x8004, b"\x00\x00\x00\x00") == StoreBatchAns(())


_STORE = b"\x10" + bytes(16) + b"\x01" + bytes(4)  # StoreReq body: resource, replica 1, no kinds
_STORE_ANS = b"\x00\x08\x00\x00\x00\x02\x00\x00"  # code, length 2, no kind responses
_ERROR = b"\xff\xff\x00\x00\x00\x04\x00\x03\x00\x00"  # code, length 4, Not_Found, no info


def _u32(n: int) -> bytes:
    return n.to_bytes(4, "big")


@pytest.mark.parametrize(
    ("code", "data"),
    [
        (0x8003, b""),
        (0x8003, b"\x00\x00\x00"),  # half a list length
        (0x8003, _u32(1) + b"\x00"),  # one byte of a store length
        (0x8003, _u32(4) + _u32(0)),  # an empty store: not a StoreReq body
        (0x8003, _u32(8) + _u32(0) * 2),  # empty stores counted in the list
        (0x8003, _u32(27) + _u32(23) + _STORE + b"!"),  # a store with a trailing byte
        (0x8003, _u32(26) + _u32(21) + _STORE),  # a store one byte shorter than its body
        (0x8003, _u32(26) + _u32(23) + _STORE),  # one byte longer: past the list
        (0x8003, _u32(27) + _u32(22) + _STORE + b"!"),  # a stray byte in the list
        (0x8003, _u32(26) + _u32(22) + _STORE + b"!"),  # a trailing byte after the list
        (0x8003, _u32(0xFFFFFFFF) + _u32(22) + _STORE),  # list of 4 GiB
        (0x8003, _u32(26) + _u32(0xFFFFFFFF) + _STORE),  # store of 4 GiB
        (0x8003, _u32(26) + _u32(22) + b"\x08" + _STORE[1:]),  # 8-byte resource id
        (0x8003, _u32(26) + _u32(22) + _STORE[:-4] + _u32(1)),  # kind_data past the store
        (0x8004, b""),
        (0x8004, _u32(1) + b"\x00"),  # one byte of an answer code
        (0x8004, _u32(2) + b"\x00\x08"),  # a code with no length
        (0x8004, _u32(6) + b"\x00\x08" + _u32(0)),  # an empty StoreAns body
        (0x8004, _u32(6) + b"\xff\xff" + _u32(0)),  # an empty ErrorResponse body
        (0x8004, _u32(8) + b"\x00\x07" + _STORE_ANS[2:]),  # code 7: not an answer
        (0x8004, _u32(8) + b"\x00\x0a" + _STORE_ANS[2:]),  # FetchAns: not allowed
        (0x8004, _u32(8) + b"\x80\x04" + _STORE_ANS[2:]),  # a batch answer inside a batch
        (0x8004, _u32(8) + b"\xff\xfe" + _STORE_ANS[2:]),  # almost an error
        (0x8004, _u32(8) + b"\x00\x08\x00\x00\x00\x03\x00\x00"),  # StoreAns length past list
        (0x8004, _u32(9) + b"\x00\x08\x00\x00\x00\x03\x00\x00!"),  # StoreAns with trailing byte
        (0x8004, _u32(10) + _ERROR[:-1] + b"\x01"),  # info longer than the error
        (0x8004, _u32(11) + _ERROR[:5] + b"\x05" + _ERROR[6:] + b"!"),  # error with trailing byte
        (0x8004, _u32(8) + _STORE_ANS[:-2] + b"\x00\x10"),  # kind responses past the answer
        (0x8004, _u32(8) + _STORE_ANS + b"!"),  # trailing byte after the list
        (0x8004, _u32(9) + _STORE_ANS + b"!"),  # a stray byte in the list
        (0x8004, _u32(0xFFFFFFFF) + _STORE_ANS),  # list of 4 GiB
        (0x8004, _u32(8) + b"\x00\x08" + _u32(0xFFFFFFFF) + b"\x00\x00"),  # answer of 4 GiB
    ],
    ids=lambda v: f"{v:#06x}" if isinstance(v, int) else v.hex() if len(v) < 40 else f"{len(v)}B",
)
def test_store_batch_bodies_reject_malformed(code: int, data: bytes) -> None:
    with pytest.raises(CodecError):
        decode_body(code, data)


def test_store_batch_minimal_elements_decode() -> None:
    """The smallest legal elements the malformed cases above are built from do decode: the
    failures there come from the one thing each case breaks."""
    assert decode_body(0x8003, _u32(26) + _u32(22) + _STORE) == StoreBatchReq((StoreReq(0, 1),))
    both = decode_body(0x8004, _u32(18) + _STORE_ANS + _ERROR)
    assert both == StoreBatchAns((StoreAns(), ErrorResponse(3)))
    many = decode_body(0x8004, _u32(8 * 1000) + _STORE_ANS * 1000)
    assert isinstance(many, StoreBatchAns) and many.answers == (StoreAns(),) * 1000


def test_empty_answers_reject_trailing_bytes() -> None:
    assert decode_body(MessageCode.LEAVE_ANS, b"") == LeaveAns()
    assert decode_body(MessageCode.UPDATE_ANS, b"") == UpdateAns()
    for code in (MessageCode.LEAVE_ANS, MessageCode.UPDATE_ANS, MessageCode.PING_ANS):
        with pytest.raises(CodecError, match=r"trailing|needs"):
            decode_body(code, b"\x00" * 17)


# --- hypothesis ----------------------------------------------------------------------

ids = st.integers(0, (1 << 128) - 1)
u8, u16, u32, u64 = (st.integers(0, (1 << n) - 1) for n in (8, 16, 32, 64))
small = st.binary(max_size=40)
id_tuples = st.lists(ids, max_size=5).map(tuple)

destinations: st.SearchStrategy[Destination] = st.one_of(
    ids.map(NodeDestination),
    ids.map(ResourceDestination),
    st.binary(max_size=254).map(OpaqueDestination),
    st.tuples(st.integers(0x80, 0xFF), u8).map(
        lambda t: OpaqueDestination(bytes(t), compressed=True)
    ),
)
headers = st.builds(
    ForwardingHeader,
    overlay=u32,
    transaction_id=u64,
    via_list=st.lists(destinations, max_size=4).map(tuple),
    destination_list=st.lists(destinations, max_size=4).map(tuple),
    options=st.lists(st.builds(ForwardingOption, u8, u8, small), max_size=3).map(tuple),
    ttl=u8,
    configuration_sequence=u16,
    version=u8,
    fragment=u32,
    max_response_length=u32,
)
signatures = st.builds(Signature, u8, u8, u8, small, small)
addresses = st.one_of(st.ip_addresses(v=4).map(str), st.ip_addresses(v=6).map(str)).flatmap(
    lambda h: u16.map(lambda p: IpAddressPort(h, p))
)


@st.composite
def candidates(draw: st.DrawFn) -> IceCandidate:
    ctype = draw(st.sampled_from([1, 2, 3, 4]))
    return IceCandidate(
        addr_port=draw(addresses),
        overlay_link=draw(u8),
        foundation=draw(small),
        priority=draw(u32),
        type=ctype,
        rel_addr_port=None if ctype == CandType.HOST else draw(addresses),
        extensions=tuple(draw(st.lists(st.builds(IceExtension, small, small), max_size=2))),
    )


@st.composite
def updates(draw: st.DrawFn) -> UpdateReq:
    utype = draw(st.sampled_from([1, 2, 3]))
    if utype == 1:
        return UpdateReq(draw(u32), utype)
    fingers = draw(id_tuples) if utype == 3 else ()
    return UpdateReq(draw(u32), utype, draw(id_tuples), draw(id_tuples), fingers)


stored = st.builds(StoredData, u64, u32, small, small, st.booleans(), signatures)
stored_tuple = st.lists(stored, max_size=3).map(tuple)
probe_infos = st.one_of(
    st.builds(ProbeInformation, st.integers(1, 3), u32),
    st.builds(ProbeInformation, st.integers(4, 255), small),
    st.builds(ProbeInformation, st.just(0), small),
)
store_reqs = st.builds(
    StoreReq, ids, u8, st.lists(st.builds(StoreKindData, u32, u64, stored_tuple)).map(tuple)
)
store_answers = st.builds(
    StoreAns, st.lists(st.builds(StoreKindResponse, u32, u64, id_tuples)).map(tuple)
)
error_answers = st.builds(ErrorResponse, u16, small)
batch_answers: st.SearchStrategy[StoreAns | ErrorResponse] = st.one_of(store_answers, error_answers)
attach_args = {
    "ufrag": small,
    "password": small,
    "role": small,
    "candidates": st.lists(candidates(), max_size=3).map(tuple),
    "send_update": st.booleans(),
}
any_body: st.SearchStrategy[MessageBody] = st.one_of(
    st.builds(ProbeReq, st.lists(u8, max_size=10).map(tuple)),
    st.builds(ProbeAns, st.lists(probe_infos, max_size=5).map(tuple)),
    st.builds(AttachReq, **attach_args),
    st.builds(AttachAns, **attach_args),
    store_reqs,
    store_answers,
    st.builds(
        FetchReq,
        ids,
        st.lists(
            st.builds(StoredDataSpecifier, u32, u64, st.lists(small, max_size=3).map(tuple))
        ).map(tuple),
    ),
    st.builds(FetchAns, st.lists(st.builds(FetchKindResponse, u32, u64, stored_tuple)).map(tuple)),
    st.builds(JoinReq, ids, small),
    st.builds(JoinAns, small),
    st.builds(LeaveReq, ids, st.sampled_from([1, 2]), id_tuples),
    st.just(LeaveAns()),
    updates(),
    st.just(UpdateAns()),
    st.builds(RouteQueryReq, st.booleans(), destinations, small),
    st.builds(RouteQueryAns, ids),
    st.builds(PingReq, small),
    st.builds(PingAns, u64, u64),
    st.builds(ApplyReq, ids, u32, u64, st.binary(max_size=200)),
    st.builds(ApplyAns, u32, u64, id_tuples, stored_tuple),
    st.builds(StoreBatchReq, st.lists(store_reqs, max_size=4).map(tuple)),
    st.builds(StoreBatchAns, st.lists(batch_answers, max_size=5).map(tuple)),
    error_answers,
    st.builds(RawBody, st.sampled_from([0x19, 0x1A, 0x1D, 0x1E, 0x05, 0x1234]), small),
)

any_message = st.builds(
    Message,
    headers,
    any_body,
    st.lists(st.builds(MessageExtension, u16, st.booleans(), small), max_size=2).map(tuple),
    st.builds(
        SecurityBlock,
        st.lists(st.builds(GenericCertificate, u8, small), max_size=2).map(tuple),
        signatures,
    ),
)


@settings(max_examples=400, deadline=None)
@given(any_message)
def test_hypothesis_roundtrip(msg: Message) -> None:
    data = encode_message(msg)
    assert decode_message(data) == msg
    assert decode_header(data) == msg.header
    code, body = encode_body(msg.body)
    assert decode_body(code, body) == msg.body


@settings(max_examples=200, deadline=None)
@given(destinations)
def test_hypothesis_destination_roundtrip(d: Destination) -> None:
    assert decode_destination(encode_destination(d)) == d


def test_header_sample_is_rich() -> None:
    h = header()
    assert len(h.via_list) >= 2 and len(h.destination_list) >= 4 and h.options
    kinds = {type(d) for d in h.via_list + h.destination_list}
    assert kinds == {NodeDestination, ResourceDestination, OpaqueDestination}
    assert any(isinstance(d, OpaqueDestination) and d.compressed for d in h.destination_list)
