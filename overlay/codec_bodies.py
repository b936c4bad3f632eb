"""RELOAD message bodies (RFC 6940 §6.4, §7.4, §10; docs/wire.md §5-§8): encoders and
decoders. ``overlay.codec`` is the public face; import from there."""

from __future__ import annotations

import ipaddress
import struct
from collections.abc import Callable, Iterable
from typing import Any, Final

from overlay.codec_base import (
    EMPTY_SIGNATURE_BYTES,
    EMPTY_SIGNATURE_LEN,
    U16,
    U32,
    CodecError,
    Reader,
    boolean,
    encode_destination,
    encode_signature,
    id_bytes,
    id_list,
    opaque,
    read_destination,
    read_signature,
    reader_for,
    resource_bytes,
)
from overlay.messages import (
    EMPTY_SIGNATURE,
    ApplyAns,
    ApplyReq,
    AttachAns,
    AttachReq,
    CandType,
    ChordUpdateType,
    ErrorResponse,
    FetchAns,
    FetchKindResponse,
    FetchReq,
    IceCandidate,
    IceExtension,
    IpAddressPort,
    JoinAns,
    JoinReq,
    LeaveAns,
    LeaveReq,
    MessageBody,
    MessageCode,
    PingAns,
    PingReq,
    ProbeAns,
    ProbeInformation,
    ProbeReq,
    RawBody,
    RouteQueryAns,
    RouteQueryReq,
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

_STORED_HEAD: Final = struct.Struct("!IQI")  # length, storage_time, lifetime
_KIND_GEN: Final = struct.Struct("!IQ")
_PING_ANS: Final = struct.Struct("!QQ")
_UPDATE_HEAD: Final = struct.Struct("!IB")
_CAND_MID: Final = struct.Struct("!IB")  # priority, type
_IP4: Final = struct.Struct("!BB4sH")
_IP6: Final = struct.Struct("!BB16sH")
_ERROR_HEAD: Final = struct.Struct("!H")
_NO_KEYS: Final = b"\x00\x02\x00\x00"  # a specifier's model<2> holding an empty keys<2>
_STORED_MIN: Final = _STORED_HEAD.size + 2  # up to and including the key's length
_BATCH_ANSWER_HEAD: Final = struct.Struct("!HI")  # code, length of the body that follows
_STORE_ANS_CODE: Final = int(MessageCode.STORE_ANS)
_ERROR_CODE: Final = int(MessageCode.ERROR)


# --- bodies: encoders --------------------------------------------------------------------


def _enc_probe_req(b: ProbeReq) -> bytes:
    return opaque(bytes(b.requested_info), 1, "ProbeReq requested_info")


def _enc_probe_info(p: ProbeInformation) -> bytes:
    if 1 <= p.type <= 3:
        if not isinstance(p.value, int):
            raise CodecError(f"probe information type {p.type}: value must be a uint32")
        return bytes((p.type, 4)) + U32.pack(p.value)
    if not isinstance(p.value, bytes | bytearray):
        raise CodecError(f"probe information type {p.type}: value must be bytes")
    return bytes((p.type,)) + opaque(p.value, 1, f"probe information type {p.type}")


def _enc_probe_ans(b: ProbeAns) -> bytes:
    return opaque(b"".join([_enc_probe_info(p) for p in b.probe_info]), 2, "ProbeAns")


def _enc_addr(a: IpAddressPort, what: str) -> bytes:
    try:
        ip = ipaddress.ip_address(a.host)
    except ValueError:
        raise CodecError(f"{what}: {a.host!r} is not an IP address") from None
    if ip.version == 4:
        return _IP4.pack(1, 6, ip.packed, a.port)
    return _IP6.pack(2, 18, ip.packed, a.port)


def _enc_candidate(c: IceCandidate) -> bytes:
    parts = [
        _enc_addr(c.addr_port, "candidate address"),
        bytes((c.overlay_link,)),
        opaque(c.foundation, 1, "candidate foundation"),
        _CAND_MID.pack(c.priority, c.type),
    ]
    if c.type == CandType.HOST:
        if c.rel_addr_port is not None:
            raise CodecError("host candidate: must not carry rel_addr_port")
    elif c.rel_addr_port is None:
        raise CodecError(f"candidate type {c.type}: needs rel_addr_port")
    else:
        parts.append(_enc_addr(c.rel_addr_port, "candidate rel_addr_port"))
    ext = b"".join(
        [
            opaque(e.name, 2, "ICE extension name") + opaque(e.value, 2, "ICE extension value")
            for e in c.extensions
        ]
    )
    parts.append(opaque(ext, 2, "ICE extensions"))
    return b"".join(parts)


def _enc_attach(b: AttachReq | AttachAns) -> bytes:
    cands = b"".join([_enc_candidate(c) for c in b.candidates])
    return b"".join(
        [
            opaque(b.ufrag, 1, "attach ufrag"),
            opaque(b.password, 1, "attach password"),
            opaque(b.role, 1, "attach role"),
            opaque(cands, 2, "attach candidates"),
            boolean(b.send_update),
        ]
    )


def _enc_stored(s: StoredData) -> bytes:
    key = opaque(s.key, 2, "dictionary key")
    value = opaque(s.value, 4, "data value")
    sig = EMPTY_SIGNATURE_BYTES if s.signature is EMPTY_SIGNATURE else encode_signature(s.signature)
    head = _STORED_HEAD.pack(13 + len(key) + len(value) + len(sig), s.storage_time, s.lifetime)
    return b"".join((head, key, boolean(s.exists), value, sig))


def _enc_stored_list(values: Iterable[StoredData]) -> bytes:
    return opaque(b"".join([_enc_stored(s) for s in values]), 4, "stored data values")


def _enc_store_req(b: StoreReq) -> bytes:
    kinds = b"".join(
        [
            _KIND_GEN.pack(k.kind, k.generation_counter) + _enc_stored_list(k.values)
            for k in b.kind_data
        ]
    )
    return b"".join(
        [
            resource_bytes(b.resource, "StoreReq resource"),
            bytes((b.replica_number,)),
            opaque(kinds, 4, "StoreReq kind_data"),
        ]
    )


def _enc_store_ans(b: StoreAns) -> bytes:
    resp = b"".join(
        [
            _KIND_GEN.pack(k.kind, k.generation_counter) + id_list(k.replicas, "replicas")
            for k in b.kind_responses
        ]
    )
    return opaque(resp, 2, "StoreAns kind_responses")


def _enc_specifier(s: StoredDataSpecifier) -> bytes:
    if not s.keys:
        return _KIND_GEN.pack(s.kind, s.generation) + _NO_KEYS
    keys = b"".join([opaque(k, 2, "dictionary key") for k in s.keys])
    model = opaque(keys, 2, "specifier keys")
    return _KIND_GEN.pack(s.kind, s.generation) + opaque(model, 2, "specifier")


def _enc_fetch_req(b: FetchReq) -> bytes:
    specs = b"".join([_enc_specifier(s) for s in b.specifiers])
    return resource_bytes(b.resource, "FetchReq resource") + opaque(specs, 2, "FetchReq specifiers")


def _enc_fetch_ans(b: FetchAns) -> bytes:
    resp = b"".join(
        [
            _KIND_GEN.pack(k.kind, k.generation) + _enc_stored_list(k.values)
            for k in b.kind_responses
        ]
    )
    return opaque(resp, 4, "FetchAns kind_responses")


def _enc_apply_req(b: ApplyReq) -> bytes:
    return b"".join(
        (
            resource_bytes(b.resource, "ApplyReq resource"),
            _KIND_GEN.pack(b.kind, b.generation),
            opaque(b.operation, 4, "ApplyReq operation"),
        )
    )


def _enc_apply_ans(b: ApplyAns) -> bytes:
    return b"".join(
        (
            _KIND_GEN.pack(b.kind, b.generation),
            id_list(b.replicas, "ApplyAns replicas"),
            _enc_stored_list(b.values),
        )
    )


def _enc_store_batch_req(b: StoreBatchReq) -> bytes:
    parts = []
    for i, store in enumerate(b.stores):
        if type(store) is not StoreReq:
            raise CodecError(
                f"StoreBatchReq: store {i} is a {type(store).__name__}, not a StoreReq"
            )
        parts.append(opaque(_enc_store_req(store), 4, "StoreBatchReq store"))
    return opaque(b"".join(parts), 4, "StoreBatchReq stores")


def _enc_batch_answer(a: StoreAns | ErrorResponse) -> bytes:
    if type(a) is StoreAns:
        code, body = _STORE_ANS_CODE, _enc_store_ans(a)
    elif type(a) is ErrorResponse:
        code, body = _ERROR_CODE, _enc_error(a)
    else:
        raise CodecError(f"StoreBatchAns: an answer is a {type(a).__name__}, not StoreAns or Error")
    # Both bodies are far below 2^32 bytes (their lists have 2-byte lengths).
    return _BATCH_ANSWER_HEAD.pack(code, len(body)) + body


def _enc_store_batch_ans(b: StoreBatchAns) -> bytes:
    answers = b"".join([_enc_batch_answer(a) for a in b.answers])
    return opaque(answers, 4, "StoreBatchAns answers")


def _enc_error(b: ErrorResponse) -> bytes:
    return _ERROR_HEAD.pack(b.error_code) + opaque(b.info, 2, "error info")


def _enc_join_req(b: JoinReq) -> bytes:
    return id_bytes(b.joining_peer_id, "JoinReq joining_peer_id") + opaque(
        b.overlay_specific, 2, "JoinReq overlay_specific"
    )


def _enc_leave_req(b: LeaveReq) -> bytes:
    data = bytes((b.leave_type,)) + id_list(b.node_ids, "LeaveReq node ids")
    return id_bytes(b.leaving_peer_id, "LeaveReq leaving_peer_id") + opaque(
        data, 2, "LeaveReq data"
    )


def _enc_update_req(b: UpdateReq) -> bytes:
    head = _UPDATE_HEAD.pack(b.uptime, b.update_type)
    if b.update_type == ChordUpdateType.PEER_READY:
        if b.predecessors or b.successors or b.fingers:
            raise CodecError("UpdateReq peer_ready: carries no node ids")
        return head
    lists = id_list(b.predecessors, "predecessors") + id_list(b.successors, "successors")
    if b.update_type == ChordUpdateType.NEIGHBORS:
        if b.fingers:
            raise CodecError("UpdateReq neighbors: carries no fingers")
        return head + lists
    if b.update_type == ChordUpdateType.FULL:
        return head + lists + id_list(b.fingers, "fingers")
    raise CodecError(f"UpdateReq: unknown update type {b.update_type}")


def _enc_route_query_req(b: RouteQueryReq) -> bytes:
    return (
        boolean(b.send_update)
        + encode_destination(b.destination)
        + opaque(b.overlay_specific, 2, "RouteQueryReq overlay_specific")
    )


_ENCODERS: Final[dict[type[Any], Callable[[Any], bytes]]] = {
    ProbeReq: _enc_probe_req,
    ProbeAns: _enc_probe_ans,
    AttachReq: _enc_attach,
    AttachAns: _enc_attach,
    StoreReq: _enc_store_req,
    StoreAns: _enc_store_ans,
    FetchReq: _enc_fetch_req,
    FetchAns: _enc_fetch_ans,
    JoinReq: _enc_join_req,
    JoinAns: lambda b: opaque(b.overlay_specific, 2, "JoinAns overlay_specific"),
    LeaveReq: _enc_leave_req,
    LeaveAns: lambda b: b"",
    UpdateReq: _enc_update_req,
    UpdateAns: lambda b: b"",
    RouteQueryReq: _enc_route_query_req,
    RouteQueryAns: lambda b: id_bytes(b.next_peer, "RouteQueryAns next_peer"),
    PingReq: lambda b: opaque(b.padding, 2, "PingReq padding"),
    PingAns: lambda b: _PING_ANS.pack(b.response_id, b.time),
    ApplyReq: _enc_apply_req,
    ApplyAns: _enc_apply_ans,
    StoreBatchReq: _enc_store_batch_req,
    StoreBatchAns: _enc_store_batch_ans,
    ErrorResponse: _enc_error,
}
# type -> (plain int code, encoder): one lookup per message, no IntEnum conversion
_CODED_ENCODERS: Final = {cls: (int(cls.CODE), enc) for cls, enc in _ENCODERS.items()}


def encode_body(body: MessageBody) -> tuple[int, bytes]:
    """(message_code, body bytes)."""
    coded = _CODED_ENCODERS.get(type(body))
    if coded is None:
        if isinstance(body, RawBody):
            if not 0 <= body.code <= 0xFFFF:
                raise CodecError(f"raw body: message code {body.code} is not a uint16")
            return body.code, bytes(body.data)
        raise CodecError(f"not a message body: {body!r}")
    code, encoder = coded
    try:
        return code, encoder(body)
    except (struct.error, OverflowError, ValueError, TypeError) as exc:
        if isinstance(exc, CodecError):
            raise
        raise CodecError(f"{type(body).__name__}: cannot encode: {exc}") from None


# --- bodies: decoders --------------------------------------------------------------------


def _dec_probe_req(r: Reader, code: int) -> ProbeReq:
    return ProbeReq(tuple(r.opaque(1, "requested_info")))


def _dec_probe_ans(r: Reader, code: int) -> ProbeAns:
    lst = r.sub(2, "probe_info")
    out = []
    while lst.pos < lst.end:
        ptype = lst.u8("probe information type")
        value = lst.opaque(1, f"probe information {ptype}")
        if 1 <= ptype <= 3:
            if len(value) != 4:
                raise CodecError(f"{lst.where}: probe information {ptype} is not 4 bytes")
            out.append(ProbeInformation(ptype, int.from_bytes(value, "big")))
        else:
            out.append(ProbeInformation(ptype, value))
    return ProbeAns(tuple(out))


def _dec_addr(r: Reader, what: str) -> IpAddressPort:
    pos = r.take(2, what)
    atype, n = r.buf[pos], r.buf[pos + 1]
    if atype == 1 and n == 6:
        pos = r.take(6, f"{what} IPv4")
        host = str(ipaddress.IPv4Address(r.buf[pos : pos + 4]))
    elif atype == 2 and n == 18:
        pos = r.take(18, f"{what} IPv6")
        host = str(ipaddress.IPv6Address(r.buf[pos : pos + 16]))
    else:
        raise CodecError(f"{r.where}: {what} has address type {atype} with length {n}")
    port: int = U16.unpack_from(r.buf, pos + n - 2)[0]
    return IpAddressPort(host, port)


def _dec_candidate(r: Reader) -> IceCandidate:
    addr = _dec_addr(r, "candidate address")
    link = r.u8("overlay_link")
    foundation = r.opaque(1, "foundation")
    pos = r.take(_CAND_MID.size, "priority and type")
    priority, ctype = _CAND_MID.unpack_from(r.buf, pos)
    rel = None if ctype == CandType.HOST else _dec_addr(r, "rel_addr_port")
    lst = r.sub(2, "ICE extensions")
    ext = []
    while lst.pos < lst.end:
        ext.append(IceExtension(lst.opaque(2, "extension name"), lst.opaque(2, "extension value")))
    return IceCandidate(addr, link, foundation, priority, ctype, rel, tuple(ext))


def _dec_attach(r: Reader, code: int) -> AttachReq | AttachAns:
    ufrag = r.opaque(1, "ufrag")
    password = r.opaque(1, "password")
    role = r.opaque(1, "role")
    lst = r.sub(2, "candidates")
    cands = []
    while lst.pos < lst.end:
        cands.append(_dec_candidate(lst))
    send_update = r.boolean("send_update")
    cls = AttachReq if code == MessageCode.ATTACH_REQ else AttachAns
    return cls(ufrag, password, role, tuple(cands), send_update)


def _dec_stored(r: Reader) -> StoredData:
    buf, pos, end = r.buf, r.pos, r.end
    if end - pos >= _STORED_MIN:
        # One pass over a well-formed entry with the unsigned placeholder signature; any
        # length that does not line up exactly goes to the checked path below instead.
        length, storage_time, lifetime = _STORED_HEAD.unpack_from(buf, pos)
        stop = pos + 4 + length
        key_at = pos + 18
        key_end = key_at + U16.unpack_from(buf, pos + 16)[0]
        if stop <= end and key_end + 5 <= stop:
            exists = buf[key_end]
            value_at = key_end + 5
            value_end = value_at + U32.unpack_from(buf, key_end + 1)[0]
            if (
                exists <= 1
                and value_end + EMPTY_SIGNATURE_LEN == stop
                and buf[value_end:stop] == EMPTY_SIGNATURE_BYTES
            ):
                r.pos = stop
                return StoredData(
                    storage_time,
                    lifetime,
                    buf[key_at:key_end],
                    buf[value_at:value_end],
                    exists == 1,
                    EMPTY_SIGNATURE,
                )
    s = r.sub(4, "stored data")
    storage_time = s.u64("storage_time")
    lifetime = s.u32("lifetime")
    key = s.opaque(2, "dictionary key")
    exists = s.boolean("exists")
    value = s.opaque(4, "data value")
    signature = read_signature(s)
    s.done()
    return StoredData(storage_time, lifetime, key, value, exists, signature)


def _dec_stored_list(r: Reader) -> tuple[StoredData, ...]:
    lst = r.sub(4, "values")
    out = []
    while lst.pos < lst.end:
        out.append(_dec_stored(lst))
    return tuple(out)


def _kind_gen(r: Reader) -> tuple[int, int]:
    pos = r.take(_KIND_GEN.size, "kind and generation")
    kind, gen = _KIND_GEN.unpack_from(r.buf, pos)
    return kind, gen


def _dec_store_req(r: Reader, code: int) -> StoreReq:
    resource = r.resource_id("resource")
    replica = r.u8("replica_number")
    lst = r.sub(4, "kind_data")
    kinds = []
    while lst.pos < lst.end:
        kind, gen = _kind_gen(lst)
        kinds.append(StoreKindData(kind, gen, _dec_stored_list(lst)))
    return StoreReq(resource, replica, tuple(kinds))


def _dec_store_ans(r: Reader, code: int) -> StoreAns:
    lst = r.sub(2, "kind_responses")
    out = []
    while lst.pos < lst.end:
        kind, gen = _kind_gen(lst)
        out.append(StoreKindResponse(kind, gen, lst.node_ids("replicas")))
    return StoreAns(tuple(out))


def _dec_fetch_req(r: Reader, code: int) -> FetchReq:
    resource = r.resource_id("resource")
    lst = r.sub(2, "specifiers")
    out = []
    while lst.pos < lst.end:
        buf, pos = lst.buf, lst.pos
        if lst.end - pos >= 16 and buf[pos + 12 : pos + 16] == _NO_KEYS:
            # A specifier for every key: kind, generation and an empty key list.
            kind, gen = _KIND_GEN.unpack_from(buf, pos)
            lst.pos = pos + 16
            out.append(StoredDataSpecifier(kind, gen))
            continue
        kind, gen = _kind_gen(lst)
        model = lst.sub(2, "specifier")
        keys_list = model.sub(2, "keys")
        model.done()
        keys = []
        while keys_list.pos < keys_list.end:
            keys.append(keys_list.opaque(2, "dictionary key"))
        out.append(StoredDataSpecifier(kind, gen, tuple(keys)))
    return FetchReq(resource, tuple(out))


def _dec_fetch_ans(r: Reader, code: int) -> FetchAns:
    lst = r.sub(4, "kind_responses")
    out = []
    while lst.pos < lst.end:
        kind, gen = _kind_gen(lst)
        out.append(FetchKindResponse(kind, gen, _dec_stored_list(lst)))
    return FetchAns(tuple(out))


def _dec_apply_req(r: Reader, code: int) -> ApplyReq:
    resource = r.resource_id("resource")
    kind, gen = _kind_gen(r)
    return ApplyReq(resource, kind, gen, r.opaque(4, "operation"))


def _dec_apply_ans(r: Reader, code: int) -> ApplyAns:
    kind, gen = _kind_gen(r)
    replicas = r.node_ids("replicas")
    return ApplyAns(kind, gen, replicas, _dec_stored_list(r))


def _dec_store_batch_req(r: Reader, code: int) -> StoreBatchReq:
    # Every store takes at least its 4-byte length from the list, so the number of stores is
    # bounded by the bytes present; each must use up exactly the length it declares.
    lst = r.sub(4, "stores")
    out: list[StoreReq] = []
    while lst.pos < lst.end:
        store = lst.sub(4, f"store {len(out)}")
        out.append(_dec_store_req(store, MessageCode.STORE_REQ))
        store.done()
    return StoreBatchReq(tuple(out))


def _dec_store_batch_ans(r: Reader, code: int) -> StoreBatchAns:
    # As for the request: at least 6 bytes per answer, each using up exactly its length.
    lst = r.sub(4, "answers")
    out: list[StoreAns | ErrorResponse] = []
    while lst.pos < lst.end:
        what = f"answer {len(out)}"
        pos = lst.take(2, f"{what} code")
        answer_code = U16.unpack_from(lst.buf, pos)[0]
        body = lst.sub(4, what)
        if answer_code == _STORE_ANS_CODE:
            out.append(_dec_store_ans(body, answer_code))
        elif answer_code == _ERROR_CODE:
            out.append(_dec_error(body, answer_code))
        else:
            raise CodecError(
                f"{lst.where}: {what} has code {answer_code:#06x}, not StoreAns or Error"
            )
        body.done()
    return StoreBatchAns(tuple(out))


def _dec_join_req(r: Reader, code: int) -> JoinReq:
    return JoinReq(r.node_id("joining_peer_id"), r.opaque(2, "overlay_specific"))


def _dec_leave_req(r: Reader, code: int) -> LeaveReq:
    peer = r.node_id("leaving_peer_id")
    data = r.sub(2, "leave data")
    leave_type = data.u8("leave type")
    if leave_type not in (1, 2):
        raise CodecError(f"{data.where}: unknown leave type {leave_type}")
    ids = data.node_ids("node ids")
    data.done()
    return LeaveReq(peer, leave_type, ids)


def _dec_update_req(r: Reader, code: int) -> UpdateReq:
    uptime = r.u32("uptime")
    utype = r.u8("update type")
    if utype == ChordUpdateType.PEER_READY:
        return UpdateReq(uptime, utype)
    if utype not in (ChordUpdateType.NEIGHBORS, ChordUpdateType.FULL):
        raise CodecError(f"{r.where}: unknown update type {utype}")
    preds = r.node_ids("predecessors")
    succs = r.node_ids("successors")
    fingers = r.node_ids("fingers") if utype == ChordUpdateType.FULL else ()
    return UpdateReq(uptime, utype, preds, succs, fingers)


def _dec_route_query_req(r: Reader, code: int) -> RouteQueryReq:
    send_update = r.boolean("send_update")
    dest = read_destination(r, "destination")
    return RouteQueryReq(send_update, dest, r.opaque(2, "overlay_specific"))


def _dec_ping_ans(r: Reader, code: int) -> PingAns:
    pos = r.take(_PING_ANS.size, "response_id and time")
    response_id, time = _PING_ANS.unpack_from(r.buf, pos)
    return PingAns(response_id, time)


def _dec_error(r: Reader, code: int) -> ErrorResponse:
    return ErrorResponse(r.u16("error_code"), r.opaque(2, "error_info"))


_DECODERS: Final[dict[int, Callable[[Reader, int], MessageBody]]] = {
    MessageCode.PROBE_REQ: _dec_probe_req,
    MessageCode.PROBE_ANS: _dec_probe_ans,
    MessageCode.ATTACH_REQ: _dec_attach,
    MessageCode.ATTACH_ANS: _dec_attach,
    MessageCode.STORE_REQ: _dec_store_req,
    MessageCode.STORE_ANS: _dec_store_ans,
    MessageCode.FETCH_REQ: _dec_fetch_req,
    MessageCode.FETCH_ANS: _dec_fetch_ans,
    MessageCode.JOIN_REQ: _dec_join_req,
    MessageCode.JOIN_ANS: lambda r, c: JoinAns(r.opaque(2, "overlay_specific")),
    MessageCode.LEAVE_REQ: _dec_leave_req,
    MessageCode.LEAVE_ANS: lambda r, c: LeaveAns(),
    MessageCode.UPDATE_REQ: _dec_update_req,
    MessageCode.UPDATE_ANS: lambda r, c: UpdateAns(),
    MessageCode.ROUTE_QUERY_REQ: _dec_route_query_req,
    MessageCode.ROUTE_QUERY_ANS: lambda r, c: RouteQueryAns(r.node_id("next_peer")),
    MessageCode.PING_REQ: lambda r, c: PingReq(r.opaque(2, "padding")),
    MessageCode.PING_ANS: _dec_ping_ans,
    MessageCode.APPLY_REQ: _dec_apply_req,
    MessageCode.APPLY_ANS: _dec_apply_ans,
    MessageCode.STORE_BATCH_REQ: _dec_store_batch_req,
    MessageCode.STORE_BATCH_ANS: _dec_store_batch_ans,
    MessageCode.ERROR: _dec_error,
}


_BODY_WHERE: Final = {int(c): f"{c.name} body" for c in MessageCode}


def body_where(code: int) -> str:
    """How error messages name the body of a message with this code."""
    return _BODY_WHERE.get(code) or f"code {code:#06x} body"


def read_body(r: Reader, code: int) -> MessageBody:
    decoder = _DECODERS.get(code)
    if decoder is None:
        return RawBody(code, r.buf[r.pos : r.end])
    body = decoder(r, code)
    r.done()
    return body


def decode_body(code: int, data: bytes) -> MessageBody:
    """The body of a message with ``code``; codes we do not model come back as ``RawBody``."""
    return read_body(reader_for(data, body_where(code)), code)
