"""Sample RELOAD messages covering every body type, shared by the codec tests."""

from __future__ import annotations

from overlay.messages import (
    ApplyAns,
    ApplyReq,
    AttachAns,
    AttachReq,
    CandType,
    ChordLeaveType,
    ChordUpdateType,
    ErrorCode,
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
    overlay_hash,
)

SIP_BINDING = 0xF0000001
SIP_CREDENTIAL = 0xF0000002
N1 = 0x0123456789ABCDEF0123456789ABCDEF
N2 = 0xFEDCBA9876543210FEDCBA9876543210
N3 = 0x00000000000000000000000000000001
R1 = 0x8E1F8D6C2A8D4E5B9C0D1E2F30415263
R2 = 0x0F1E2D3C4B5A69788796A5B4C3D2E1F0

CANDIDATES = (
    IceCandidate(IpAddressPort("127.0.0.1", 6084)),
    IceCandidate(IpAddressPort("2001:db8::17", 443), foundation=b"v6", priority=0x7E0000FF),
    IceCandidate(
        IpAddressPort("198.51.100.7", 50000),
        foundation=b"srflx-1",
        priority=1694498815,
        type=CandType.SRFLX,
        rel_addr_port=IpAddressPort("10.0.0.7", 6084),
        extensions=(IceExtension(b"name", b"value"),),
    ),
)

ENTRY = StoredData(
    storage_time=1_700_000_000_123,
    lifetime=3600,
    key=b"<sip:alice@192.0.2.1>",
    value=b"\x83\xa7contact\xb5sip:alice@192.0.2.1:5060",
)
REMOVED = StoredData(
    storage_time=1_700_000_001_000, lifetime=60, key=b"gone", value=b"", exists=False
)
SIGNED = StoredData(
    storage_time=5,
    lifetime=6,
    key=b"k",
    value=b"v",
    signature=Signature(4, 1, 1, b"\x04\x20" + bytes(32), b"\x55" * 64),
)

# An operation as the owner-side registrar rules might carry it (msgpack); opaque to the codec.
OPERATION = b"\x84\xa3aor\xb1alice@example.com\xa4cseq\x2a\xa7call-id\xa3c-1\xa1c\x90"


def bodies() -> list[MessageBody]:
    """At least one of every body type, with the variants that take different code paths."""
    return [
        ProbeReq((1, 2, 3, 4)),
        ProbeAns(
            (
                ProbeInformation(1, 250_000_000),
                ProbeInformation(2, 17),
                ProbeInformation(3, 86_400),
                ProbeInformation(4, b"\x82\xa3sip\xaf127.0.0.1:5060"),
            )
        ),
        AttachReq(b"uf", b"pw", b"passive", CANDIDATES, send_update=True),
        AttachAns(b"", b"", b"active", CANDIDATES[:1], send_update=False),
        StoreReq(
            R1,
            0,
            (
                StoreKindData(SIP_BINDING, 7, (ENTRY, REMOVED, SIGNED)),
                StoreKindData(SIP_CREDENTIAL, 0, (ENTRY,)),
                StoreKindData(SIP_CREDENTIAL + 1, 0, ()),
            ),
        ),
        StoreAns(
            (StoreKindResponse(SIP_BINDING, 8, (N1, N2)), StoreKindResponse(SIP_CREDENTIAL, 1))
        ),
        FetchReq(
            R1,
            (
                StoredDataSpecifier(SIP_BINDING, 0, ()),
                StoredDataSpecifier(SIP_CREDENTIAL, 3, (b"example.com", b"")),
            ),
        ),
        FetchAns(
            (
                FetchKindResponse(SIP_BINDING, 8, (ENTRY, REMOVED)),
                FetchKindResponse(SIP_CREDENTIAL, 0, ()),
            )
        ),
        JoinReq(N1, b"chord"),
        JoinAns(b""),
        LeaveReq(N1, ChordLeaveType.FROM_SUCC, (N2, N3)),
        LeaveReq(N1, ChordLeaveType.FROM_PRED, ()),
        LeaveAns(),
        UpdateReq(12, ChordUpdateType.PEER_READY),
        UpdateReq(34, ChordUpdateType.NEIGHBORS, (N1,), (N2, N3)),
        UpdateReq(56, ChordUpdateType.FULL, (N1, N2), (N3,), (N1, N2, N3)),
        UpdateAns(),
        RouteQueryReq(True, ResourceDestination(R1), b"x"),
        RouteQueryReq(False, NodeDestination(N2)),
        RouteQueryAns(N3),
        PingReq(b"\x00" * 40),
        PingAns(0x1122334455667788, 1_700_000_000_000),
        ApplyReq(R1, SIP_BINDING, 0, OPERATION),
        ApplyReq(R1, SIP_CREDENTIAL, 0xFFFFFFFFFFFFFFFF, b""),
        ApplyAns(SIP_BINDING, 9, (N1, N2), (ENTRY, SIGNED)),
        ApplyAns(SIP_CREDENTIAL, 0),
        StoreBatchReq(
            (
                StoreReq(R1, 1, (StoreKindData(SIP_BINDING, 9, (ENTRY, REMOVED, SIGNED)),)),
                StoreReq(R2, 2, (StoreKindData(SIP_CREDENTIAL, 4, (ENTRY,)),)),
                StoreReq(R1, 1),
            )
        ),
        StoreBatchReq(()),
        StoreBatchAns(
            (
                StoreAns((StoreKindResponse(SIP_BINDING, 9),)),
                ErrorResponse(ErrorCode.DATA_TOO_OLD, b"storage_time older than stored"),
                StoreAns(),
                ErrorResponse(ErrorCode.GENERATION_COUNTER_TOO_LOW),
            )
        ),
        StoreBatchAns(()),
        ErrorResponse(ErrorCode.INVALID_MESSAGE, "bad length ✓".encode()),
        ErrorResponse(ErrorCode.NOT_FOUND),
        RawBody(0x19, b"stat request"),
        RawBody(0x1E, b""),
        RawBody(0x7777, b"\x01\x02"),
    ]


def header(tid: int = 0x0102030405060708, *, rich: bool = True) -> ForwardingHeader:
    if not rich:
        return ForwardingHeader(
            overlay=overlay_hash("p2preg.test"),
            transaction_id=tid,
            destination_list=(NodeDestination(N2),),
        )
    return ForwardingHeader(
        overlay=overlay_hash("p2preg.test"),
        transaction_id=tid,
        via_list=(NodeDestination(N1), OpaqueDestination(b"\x80\x01", compressed=True)),
        destination_list=(
            NodeDestination(N2),
            OpaqueDestination(b"opaque-id"),
            OpaqueDestination(b"\xff\xfe", compressed=True),
            ResourceDestination(R1),
        ),
        options=(ForwardingOption(0x7F, 0, b"opt"), ForwardingOption(0x80, 0x01, b"")),
        ttl=99,
        configuration_sequence=3,
    )


def messages(*, rich: bool = True) -> list[Message]:
    out = []
    for i, body in enumerate(bodies()):
        extensions: tuple[MessageExtension, ...] = ()
        security = SecurityBlock()
        if rich and i % 3 == 0:
            extensions = (MessageExtension(0xF00D, False, b"ext"), MessageExtension(2, True, b""))
            security = SecurityBlock(
                (GenericCertificate(0, b"\x30\x03\x02\x01\x01"),),
                Signature(4, 1, 1, b"\x04\x20" + bytes(range(32)), b"\xaa" * 16),
            )
        out.append(Message(header(1000 + i, rich=rich), body, extensions, security))
    return out
