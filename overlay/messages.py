"""Typed RELOAD messages (RFC 6940 §6.3, §6.4, §7, §10; our subset in docs/wire.md).

These are plain values: the codec (``overlay.codec``) turns them into bytes and
back, the Chord state machine and the storage layer produce and consume them.
Node-IDs and Resource-IDs are ints (see ``overlay.ids``); opaque fields are bytes.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field
from enum import IntEnum
from typing import ClassVar

RELO_TOKEN = 0xD2454C4F
RELOAD_VERSION = 0x0A
UNFRAGMENTED = 0xC0000000
INITIAL_TTL = 100


def overlay_hash(name: str) -> int:
    """The forwarding header's overlay field: low 32 bits of SHA-1(overlay name)."""
    return int.from_bytes(hashlib.sha1(name.encode("utf-8")).digest()[-4:], "big")


class MessageCode(IntEnum):
    PROBE_REQ = 0x01
    PROBE_ANS = 0x02
    ATTACH_REQ = 0x03
    ATTACH_ANS = 0x04
    STORE_REQ = 0x07
    STORE_ANS = 0x08
    FETCH_REQ = 0x09
    FETCH_ANS = 0x0A
    JOIN_REQ = 0x0F
    JOIN_ANS = 0x10
    LEAVE_REQ = 0x11
    LEAVE_ANS = 0x12
    UPDATE_REQ = 0x13
    UPDATE_ANS = 0x14
    ROUTE_QUERY_REQ = 0x15
    ROUTE_QUERY_ANS = 0x16
    PING_REQ = 0x17
    PING_ANS = 0x18
    STAT_REQ = 0x19
    STAT_ANS = 0x1A
    APP_ATTACH_REQ = 0x1D
    APP_ATTACH_ANS = 0x1E
    # Private codes (outside the IANA-registered ones): "the owner decides" (docs/wire.md §7).
    APPLY_REQ = 0x8001
    APPLY_ANS = 0x8002
    # Replica copies for one successor in one message (docs/wire.md §8).
    STORE_BATCH_REQ = 0x8003
    STORE_BATCH_ANS = 0x8004
    ERROR = 0xFFFF


def is_request_code(code: int) -> bool:
    """Requests have odd codes; answers are request + 1; 0xFFFF is an error answer."""
    return code != MessageCode.ERROR and code % 2 == 1


class ErrorCode(IntEnum):
    FORBIDDEN = 2
    NOT_FOUND = 3
    REQUEST_TIMEOUT = 4
    GENERATION_COUNTER_TOO_LOW = 5
    INCOMPATIBLE_WITH_OVERLAY = 6
    UNSUPPORTED_FORWARDING_OPTION = 7
    DATA_TOO_LARGE = 8
    DATA_TOO_OLD = 9
    TTL_EXCEEDED = 10
    MESSAGE_TOO_LARGE = 11
    UNKNOWN_KIND = 12
    UNKNOWN_EXTENSION = 13
    RESPONSE_TOO_LARGE = 14
    CONFIG_TOO_OLD = 15
    CONFIG_TOO_NEW = 16
    IN_PROGRESS = 17
    INVALID_MESSAGE = 20


class DestinationType(IntEnum):
    NODE = 1
    RESOURCE = 2
    OPAQUE = 3


# --- destinations (§6.3.2.2) ------------------------------------------------


@dataclass(frozen=True, slots=True)
class NodeDestination:
    node_id: int


@dataclass(frozen=True, slots=True)
class ResourceDestination:
    resource_id: int


@dataclass(frozen=True, slots=True)
class OpaqueDestination:
    """type 3 opaque id, or (compressed=True) the 2-byte compressed form whose first byte has the
    high bit set; ``data`` then holds both bytes."""

    data: bytes
    compressed: bool = False


Destination = NodeDestination | ResourceDestination | OpaqueDestination


@dataclass(frozen=True, slots=True)
class ForwardingOption:
    type: int
    flags: int
    data: bytes

    # §6.3.2.3 flag bits: 0x01 forward-critical, 0x02 destination-critical, 0x04 response-copy
    FORWARD_CRITICAL: ClassVar[int] = 0x01
    DESTINATION_CRITICAL: ClassVar[int] = 0x02


@dataclass(frozen=True, slots=True)
class ForwardingHeader:
    overlay: int
    transaction_id: int
    via_list: tuple[Destination, ...] = ()
    destination_list: tuple[Destination, ...] = ()
    options: tuple[ForwardingOption, ...] = ()
    ttl: int = INITIAL_TTL
    configuration_sequence: int = 1
    version: int = RELOAD_VERSION
    fragment: int = UNFRAGMENTED
    max_response_length: int = 0


# --- security block (§6.3.4) ---------------------------------------------


class SignerIdentityType(IntEnum):
    CERT_HASH = 1
    CERT_HASH_NODE_ID = 2
    NONE = 3


@dataclass(frozen=True, slots=True)
class GenericCertificate:
    type: int
    certificate: bytes


@dataclass(frozen=True, slots=True)
class Signature:
    hash_algorithm: int = 0
    signature_algorithm: int = 0
    identity_type: int = SignerIdentityType.NONE
    identity: bytes = b""  # the raw SignerIdentityValue bytes
    value: bytes = b""


# Until peer security lands we sign nothing. The obvious placeholder is identity type none(3), but
# Wireshark 4.0 reports none(3) as an "Unknown identity type" error on every frame, so the
# placeholder is a cert_hash identity with hash algorithm none and an empty hash: the same
# "no signer" meaning, and it decodes cleanly.
EMPTY_SIGNATURE = Signature(
    identity_type=SignerIdentityType.CERT_HASH,
    identity=b"\x00\x00",  # HashAlgorithm none(0), certificate_hash<0..255> empty
)


@dataclass(frozen=True, slots=True)
class SecurityBlock:
    certificates: tuple[GenericCertificate, ...] = ()
    signature: Signature = EMPTY_SIGNATURE


EMPTY_SECURITY = SecurityBlock()


@dataclass(frozen=True, slots=True)
class MessageExtension:
    type: int
    critical: bool
    contents: bytes


# --- bodies -------------------------------------------------------------
# Each body class names its message code; ``Message.code`` reads it from the body.


class ProbeInformationType(IntEnum):
    RESPONSIBLE_SET = 1
    NUM_RESOURCES = 2
    UPTIME = 3
    EXP_PROBE = 4


@dataclass(frozen=True, slots=True)
class ProbeInformation:
    """type 1..3 carry a uint32 ``value``; type 4 (exp-probe) carries raw bytes (≤ 255)."""

    type: int
    value: int | bytes


@dataclass(frozen=True, slots=True)
class ProbeReq:
    CODE: ClassVar[MessageCode] = MessageCode.PROBE_REQ
    requested_info: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class ProbeAns:
    CODE: ClassVar[MessageCode] = MessageCode.PROBE_ANS
    probe_info: tuple[ProbeInformation, ...] = ()


class OverlayLinkType(IntEnum):
    DTLS_UDP_SR = 1
    DTLS_UDP_SR_NO_ICE = 3
    TLS_TCP_FH_NO_ICE = 4


class CandType(IntEnum):
    HOST = 1
    SRFLX = 2
    PRFLX = 3  # reserved in RFC 6940, kept for decoding
    RELAY = 4


@dataclass(frozen=True, slots=True)
class IpAddressPort:
    """An IPv4 or IPv6 address (text form) and port."""

    host: str
    port: int


@dataclass(frozen=True, slots=True)
class IceExtension:
    name: bytes
    value: bytes


@dataclass(frozen=True, slots=True)
class IceCandidate:
    addr_port: IpAddressPort
    overlay_link: int = OverlayLinkType.TLS_TCP_FH_NO_ICE
    foundation: bytes = b"1"
    priority: int = 1
    type: int = CandType.HOST
    rel_addr_port: IpAddressPort | None = None  # present for every type but host
    extensions: tuple[IceExtension, ...] = ()


@dataclass(frozen=True, slots=True)
class AttachReq:
    CODE: ClassVar[MessageCode] = MessageCode.ATTACH_REQ
    ufrag: bytes = b""
    password: bytes = b""
    role: bytes = b"passive"
    candidates: tuple[IceCandidate, ...] = ()
    send_update: bool = False


@dataclass(frozen=True, slots=True)
class AttachAns:
    CODE: ClassVar[MessageCode] = MessageCode.ATTACH_ANS
    ufrag: bytes = b""
    password: bytes = b""
    role: bytes = b"active"
    candidates: tuple[IceCandidate, ...] = ()
    send_update: bool = False


@dataclass(frozen=True, slots=True)
class JoinReq:
    CODE: ClassVar[MessageCode] = MessageCode.JOIN_REQ
    joining_peer_id: int
    overlay_specific: bytes = b""


@dataclass(frozen=True, slots=True)
class JoinAns:
    CODE: ClassVar[MessageCode] = MessageCode.JOIN_ANS
    overlay_specific: bytes = b""


class ChordLeaveType(IntEnum):
    FROM_SUCC = 1
    FROM_PRED = 2


@dataclass(frozen=True, slots=True)
class LeaveReq:
    """RFC 6940 §10.8: to each predecessor the leaving peer sends type FROM_SUCC (it is their
    successor) with its successor list; to each successor, FROM_PRED with its predecessors."""

    CODE: ClassVar[MessageCode] = MessageCode.LEAVE_REQ
    leaving_peer_id: int
    leave_type: int = ChordLeaveType.FROM_SUCC
    node_ids: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class LeaveAns:
    CODE: ClassVar[MessageCode] = MessageCode.LEAVE_ANS


class ChordUpdateType(IntEnum):
    PEER_READY = 1
    NEIGHBORS = 2
    FULL = 3


@dataclass(frozen=True, slots=True)
class UpdateReq:
    CODE: ClassVar[MessageCode] = MessageCode.UPDATE_REQ
    uptime: int
    update_type: int = ChordUpdateType.NEIGHBORS
    predecessors: tuple[int, ...] = ()
    successors: tuple[int, ...] = ()
    fingers: tuple[int, ...] = ()  # only with FULL


@dataclass(frozen=True, slots=True)
class UpdateAns:
    CODE: ClassVar[MessageCode] = MessageCode.UPDATE_ANS


@dataclass(frozen=True, slots=True)
class RouteQueryReq:
    CODE: ClassVar[MessageCode] = MessageCode.ROUTE_QUERY_REQ
    send_update: bool
    destination: Destination
    overlay_specific: bytes = b""


@dataclass(frozen=True, slots=True)
class RouteQueryAns:
    CODE: ClassVar[MessageCode] = MessageCode.ROUTE_QUERY_ANS
    next_peer: int


@dataclass(frozen=True, slots=True)
class PingReq:
    CODE: ClassVar[MessageCode] = MessageCode.PING_REQ
    padding: bytes = b""


@dataclass(frozen=True, slots=True)
class PingAns:
    CODE: ClassVar[MessageCode] = MessageCode.PING_ANS
    response_id: int
    time: int  # ms


# --- storage (§7; our kinds all use the dictionary data model) ---------------


@dataclass(frozen=True, slots=True)
class StoredData:
    """One dictionary entry with its metadata. ``exists=False`` removes the key."""

    storage_time: int  # ms
    lifetime: int  # s
    key: bytes
    value: bytes
    exists: bool = True
    signature: Signature = EMPTY_SIGNATURE


@dataclass(frozen=True, slots=True)
class StoreKindData:
    kind: int
    generation_counter: int
    values: tuple[StoredData, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreReq:
    CODE: ClassVar[MessageCode] = MessageCode.STORE_REQ
    resource: int
    replica_number: int
    kind_data: tuple[StoreKindData, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreKindResponse:
    kind: int
    generation_counter: int
    replicas: tuple[int, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreAns:
    CODE: ClassVar[MessageCode] = MessageCode.STORE_ANS
    kind_responses: tuple[StoreKindResponse, ...] = ()


@dataclass(frozen=True, slots=True)
class StoredDataSpecifier:
    """Which entries of one kind to fetch; no keys = every key (dictionary model)."""

    kind: int
    generation: int = 0
    keys: tuple[bytes, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchReq:
    CODE: ClassVar[MessageCode] = MessageCode.FETCH_REQ
    resource: int
    specifiers: tuple[StoredDataSpecifier, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchKindResponse:
    kind: int
    generation: int
    values: tuple[StoredData, ...] = ()


@dataclass(frozen=True, slots=True)
class FetchAns:
    CODE: ClassVar[MessageCode] = MessageCode.FETCH_ANS
    kind_responses: tuple[FetchKindResponse, ...] = ()


# --- the owner decides (private codes 0x8001/0x8002, docs/wire.md §7) -----------------------


@dataclass(frozen=True, slots=True)
class ApplyReq:
    """Sent to the peer responsible for ``resource``: apply ``operation`` (opaque to the overlay,
    interpreted by the owner-side rules of ``kind``) to the owner's own copy, atomically.
    ``generation`` 0 is unconditional; otherwise it must equal the current generation, as for an
    original Store."""

    CODE: ClassVar[MessageCode] = MessageCode.APPLY_REQ
    resource: int
    kind: int
    generation: int
    operation: bytes


@dataclass(frozen=True, slots=True)
class ApplyAns:
    """The outcome of an ApplyReq: the kind's generation after the change, the replicas that
    acknowledged it, and every live value of the kind at the resource after the change."""

    CODE: ClassVar[MessageCode] = MessageCode.APPLY_ANS
    kind: int
    generation: int
    replicas: tuple[int, ...] = ()
    values: tuple[StoredData, ...] = ()


# --- batched replica copies (private codes 0x8003/0x8004, docs/wire.md §8) ---------------------


@dataclass(frozen=True, slots=True)
class StoreBatchReq:
    """Several StoreReqs for one peer in one message, each carried exactly as a StoreReq
    message's body; the receiver handles each as if it had come on its own, in order."""

    CODE: ClassVar[MessageCode] = MessageCode.STORE_BATCH_REQ
    stores: tuple[StoreReq, ...] = ()


@dataclass(frozen=True, slots=True)
class StoreBatchAns:
    """One answer per store of the StoreBatchReq, in the same order: the StoreAns the store
    would have had on its own, or the ErrorResponse that refused it."""

    CODE: ClassVar[MessageCode] = MessageCode.STORE_BATCH_ANS
    answers: tuple[StoreAns | ErrorResponse, ...] = ()


@dataclass(frozen=True, slots=True)
class ErrorResponse:
    CODE: ClassVar[MessageCode] = MessageCode.ERROR
    error_code: int
    info: bytes = b""

    @property
    def text(self) -> str:
        return self.info.decode("utf-8", errors="replace")


@dataclass(frozen=True, slots=True)
class RawBody:
    """A message we carry but do not model (Stat, AppAttach, unknown codes)."""

    code: int
    data: bytes = b""

    @property
    def CODE(self) -> int:  # mirrors the ClassVar of the modelled bodies
        return self.code


MessageBody = (
    ProbeReq
    | ProbeAns
    | AttachReq
    | AttachAns
    | StoreReq
    | StoreAns
    | FetchReq
    | FetchAns
    | JoinReq
    | JoinAns
    | LeaveReq
    | LeaveAns
    | UpdateReq
    | UpdateAns
    | RouteQueryReq
    | RouteQueryAns
    | PingReq
    | PingAns
    | ApplyReq
    | ApplyAns
    | StoreBatchReq
    | StoreBatchAns
    | ErrorResponse
    | RawBody
)


@dataclass(frozen=True, slots=True)
class Message:
    header: ForwardingHeader
    body: MessageBody
    extensions: tuple[MessageExtension, ...] = ()
    security: SecurityBlock = field(default=EMPTY_SECURITY)

    @property
    def code(self) -> int:
        return int(self.body.CODE)

    @property
    def is_request(self) -> bool:
        return is_request_code(self.code)

    @property
    def transaction_id(self) -> int:
        return self.header.transaction_id
