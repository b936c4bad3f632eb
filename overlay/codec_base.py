"""Primitives of the RELOAD codec: the bounded reader, opaque/list/id encoders, and the
structures shared by headers and bodies (destinations, forwarding options, signatures,
security blocks). ``overlay.codec`` is the public face; import from there."""

from __future__ import annotations

import struct
from collections.abc import Iterable
from typing import Final

from overlay.messages import (
    EMPTY_SECURITY,
    EMPTY_SIGNATURE,
    Destination,
    DestinationType,
    ForwardingOption,
    GenericCertificate,
    NodeDestination,
    OpaqueDestination,
    ResourceDestination,
    SecurityBlock,
    Signature,
)


class CodecError(ValueError):
    """Bytes that are not a valid message, or a value that cannot be encoded."""


U16: Final = struct.Struct("!H")
U32: Final = struct.Struct("!I")
U64: Final = struct.Struct("!Q")
_OPTION: Final = struct.Struct("!BBH")
_SIG_HEAD: Final = struct.Struct("!BBBH")  # hash_alg, sig_alg, identity type, identity length

# unpackers of 1-, 2- and 4-byte length prefixes; 3-byte ones go through int.from_bytes
_LENGTH_UNPACK: Final = (
    None,
    struct.Struct("!B").unpack_from,
    U16.unpack_from,
    None,
    U32.unpack_from,
)

ID_BYTES: Final = 16
_RING: Final = 1 << 128
_NODE_DEST_PREFIX: Final = b"\x01\x10"
_RESOURCE_DEST_PREFIX: Final = b"\x02\x11\x10"
_FALSE_TRUE: Final = (b"\x00", b"\x01")


# --- decoding primitives ---------------------------------------------------------------


class Reader:
    """A bounded cursor over the message's bytes. ``where`` names the structure for error
    messages; it is put together from the parent chain only when an error needs it.

    The buffer is ``bytes``, not a memoryview: a slice of bytes is already the ``bytes`` the
    message values hold, where a memoryview slice needs a second object and a copy."""

    __slots__ = ("buf", "end", "label", "parent", "pos")

    def __init__(
        self, buf: bytes, pos: int, end: int, label: str, parent: Reader | None = None
    ) -> None:
        self.buf = buf
        self.pos = pos
        self.end = end
        self.label = label
        self.parent = parent

    @property
    def where(self) -> str:
        if self.parent is None:
            return self.label
        return f"{self.parent.where}: {self.label}"

    @where.setter
    def where(self, label: str) -> None:
        self.label = label
        self.parent = None

    def take(self, n: int, what: str) -> int:
        pos = self.pos
        if n > self.end - pos:
            raise CodecError(f"{self.where}: {what} needs {n} bytes, {self.end - pos} remain")
        self.pos = pos + n
        return pos

    def u8(self, what: str) -> int:
        return self.buf[self.take(1, what)]

    def u16(self, what: str) -> int:
        value: int = U16.unpack_from(self.buf, self.take(2, what))[0]
        return value

    def u32(self, what: str) -> int:
        value: int = U32.unpack_from(self.buf, self.take(4, what))[0]
        return value

    def u64(self, what: str) -> int:
        value: int = U64.unpack_from(self.buf, self.take(8, what))[0]
        return value

    def boolean(self, what: str) -> bool:
        value = self.u8(what)
        if value > 1:
            raise CodecError(f"{self.where}: Boolean {what} is {value}, not 0 or 1")
        return value == 1

    def length(self, width: int, what: str) -> int:
        """Read a ``width``-byte length prefix and check it against what remains."""
        pos, left = self.pos, self.end - self.pos
        if width > left:
            raise CodecError(f"{self.where}: {what} length needs {width} bytes, {left} remain")
        unpack = _LENGTH_UNPACK[width]
        n: int = (
            unpack(self.buf, pos)[0]
            if unpack is not None
            else int.from_bytes(self.buf[pos : pos + 3], "big")
        )
        left -= width
        if n > left:
            raise CodecError(f"{self.where}: {what} length {n} exceeds message ({left} left)")
        self.pos = pos + width
        return n

    def opaque(self, width: int, what: str) -> bytes:
        n = self.length(width, what)
        pos = self.pos
        self.pos = pos + n
        return self.buf[pos : pos + n]

    def sub(self, width: int, what: str) -> Reader:
        """The structure or list behind a ``width``-byte length prefix, as its own reader."""
        n = self.length(width, what)
        pos = self.pos
        self.pos = pos + n
        return Reader(self.buf, pos, pos + n, what, self)

    def node_id(self, what: str) -> int:
        pos = self.take(ID_BYTES, what)
        return int.from_bytes(self.buf[pos : pos + ID_BYTES], "big")

    def node_ids(self, what: str) -> tuple[int, ...]:
        """NodeId list<0..2^16-1>."""
        n = self.length(2, what)
        if n % ID_BYTES:
            raise CodecError(f"{self.where}: {what} length {n} is not a multiple of 16")
        buf, pos = self.buf, self.pos
        self.pos = pos + n
        return tuple(
            int.from_bytes(buf[i : i + ID_BYTES], "big") for i in range(pos, pos + n, ID_BYTES)
        )

    def resource_id(self, what: str) -> int:
        n = self.length(1, what)
        if n != ID_BYTES:
            raise CodecError(f"{self.where}: {what} is {n} bytes, we only accept 16")
        pos = self.pos
        self.pos = pos + n
        return int.from_bytes(self.buf[pos : pos + n], "big")

    @property
    def more(self) -> bool:
        return self.pos < self.end

    def done(self) -> None:
        if self.pos != self.end:
            raise CodecError(f"{self.where}: {self.end - self.pos} trailing bytes")


def reader_for(data: bytes | bytearray | memoryview, where: str) -> Reader:
    # Frames arrive as bytes; anything else is copied once so every slice is bytes.
    buf = data if type(data) is bytes else memoryview(data).tobytes()
    return Reader(buf, 0, len(buf), where)


# --- encoding primitives ---------------------------------------------------------------

_OPAQUE_LIMIT: Final = {1: 0xFF, 2: 0xFFFF, 3: 0xFFFFFF, 4: 0xFFFFFFFF}


def opaque(data: bytes, width: int, what: str) -> bytes:
    n = len(data)
    if n > _OPAQUE_LIMIT[width]:
        raise CodecError(f"{what}: {n} bytes exceed opaque<0..{_OPAQUE_LIMIT[width]}>")
    return n.to_bytes(width, "big") + bytes(data)


def id_bytes(value: int, what: str) -> bytes:
    if not 0 <= value < _RING:
        raise CodecError(f"{what}: {value} is not a 128-bit id")
    return value.to_bytes(ID_BYTES, "big")


def id_list(values: Iterable[int], what: str) -> bytes:
    return opaque(b"".join([id_bytes(v, what) for v in values]), 2, what)


def resource_bytes(value: int, what: str) -> bytes:
    return b"\x10" + id_bytes(value, what)


def boolean(value: bool) -> bytes:
    return _FALSE_TRUE[1 if value else 0]


# --- destinations, options, security block -------------------------------------------------


def encode_destination(d: Destination) -> bytes:
    """node ``01 10 id``, resource ``02 11 10 id``, opaque ``03 n+1 n data`` (§6.3.2.2: the
    opaque id is itself an opaque<0..255>, as the resource id is), compressed = its 2 bytes."""
    if isinstance(d, NodeDestination):
        return _NODE_DEST_PREFIX + id_bytes(d.node_id, "node destination")
    if isinstance(d, ResourceDestination):
        return _RESOURCE_DEST_PREFIX + id_bytes(d.resource_id, "resource destination")
    if isinstance(d, OpaqueDestination):
        data = d.data
        if d.compressed:
            if len(data) != 2 or not data[0] & 0x80:
                raise CodecError("compressed destination: must be 2 bytes, first with high bit")
            return bytes(data)
        if len(data) > 254:
            raise CodecError(f"opaque destination: {len(data)} bytes exceed 254")
        return bytes((DestinationType.OPAQUE, len(data) + 1, len(data))) + bytes(data)
    raise CodecError(f"not a destination: {d!r}")


def encode_destination_list(dests: tuple[Destination, ...], what: str) -> bytes:
    """The concatenated destinations of a via or destination list (at most 65535 bytes)."""
    if len(dests) == 1:
        data = encode_destination(dests[0])
    else:
        data = b"".join([encode_destination(d) for d in dests])
    if len(data) > 0xFFFF:
        raise CodecError(f"forwarding header: {what} is {len(data)} bytes, over 65535")
    return data


def read_destination(r: Reader, what: str) -> Destination:
    # The two forms every routed message carries are read in one step; any other form, or
    # anything broken, takes the checked path below.
    buf, pos = r.buf, r.pos
    left = r.end - pos
    if left >= 18 and buf[pos] == 1 and buf[pos + 1] == ID_BYTES:
        r.pos = pos + 18
        return NodeDestination(int.from_bytes(buf[pos + 2 : pos + 18], "big"))
    if left >= 19 and buf[pos] == 2 and buf[pos + 1] == 17 and buf[pos + 2] == ID_BYTES:
        r.pos = pos + 19
        return ResourceDestination(int.from_bytes(buf[pos + 3 : pos + 19], "big"))
    kind = r.u8(what)
    if kind & 0x80:
        pos = r.take(1, "compressed id")
        return OpaqueDestination(bytes((kind, r.buf[pos])), compressed=True)
    inner = r.sub(1, what)
    if kind == 1:
        dest: Destination = NodeDestination(inner.node_id("node id"))
    elif kind == 2:
        dest = ResourceDestination(inner.resource_id("resource id"))
    elif kind == 3:
        dest = OpaqueDestination(inner.opaque(1, "opaque id"))
    else:
        raise CodecError(f"{r.where}: {what} has unknown type {kind}")
    inner.done()
    return dest


def decode_destination(data: bytes) -> Destination:
    """Exactly one encoded Destination."""
    r = reader_for(data, "destination")
    d = read_destination(r, "destination")
    r.done()
    return d


def read_destination_list(r: Reader, what: str) -> tuple[Destination, ...]:
    out = []
    while r.pos < r.end:
        out.append(read_destination(r, what))
    return tuple(out)


def encode_option(o: ForwardingOption) -> bytes:
    if len(o.data) > 0xFFFF:
        raise CodecError(f"forwarding option {o.type}: {len(o.data)} bytes exceed 65535")
    return _OPTION.pack(o.type, o.flags, len(o.data)) + bytes(o.data)


def read_options(r: Reader) -> tuple[ForwardingOption, ...]:
    out = []
    while r.pos < r.end:
        pos = r.take(_OPTION.size, "option")
        otype, flags, n = _OPTION.unpack_from(r.buf, pos)
        pos = r.take(n, f"option {otype} data")
        out.append(ForwardingOption(otype, flags, r.buf[pos : pos + n]))
    return tuple(out)


def encode_signature(s: Signature) -> bytes:
    if s is EMPTY_SIGNATURE:
        return EMPTY_SIGNATURE_BYTES
    return _encode_signature(s)


def _encode_signature(s: Signature) -> bytes:
    if len(s.identity) > 0xFFFF:
        raise CodecError(f"signature: identity of {len(s.identity)} bytes exceeds 65535")
    head = _SIG_HEAD.pack(s.hash_algorithm, s.signature_algorithm, s.identity_type, len(s.identity))
    return head + bytes(s.identity) + opaque(s.value, 2, "signature value")


def read_signature(r: Reader) -> Signature:
    pos = r.pos
    end = pos + EMPTY_SIGNATURE_LEN
    if end <= r.end and r.buf[pos:end] == EMPTY_SIGNATURE_BYTES:
        # The unsigned placeholder on every message and stored value: one comparison, and
        # the shared (immutable, equal) instance instead of a new one.
        r.pos = end
        return EMPTY_SIGNATURE
    pos = r.take(_SIG_HEAD.size, "signature")
    hash_alg, sig_alg, id_type, n = _SIG_HEAD.unpack_from(r.buf, pos)
    pos = r.take(n, "signer identity")
    identity = r.buf[pos : pos + n]
    value = r.opaque(2, "signature value")
    return Signature(hash_alg, sig_alg, id_type, identity, value)


def encode_security(s: SecurityBlock) -> bytes:
    if s is EMPTY_SECURITY:
        return EMPTY_SECURITY_BYTES
    certs = b"".join(
        [bytes((c.type,)) + opaque(c.certificate, 2, "certificate") for c in s.certificates]
    )
    return opaque(certs, 2, "certificates") + encode_signature(s.signature)


def read_security(r: Reader) -> SecurityBlock:
    pos = r.pos
    end = pos + _EMPTY_SECURITY_LEN
    if end <= r.end and r.buf[pos:end] == EMPTY_SECURITY_BYTES:
        r.pos = end
        return EMPTY_SECURITY
    lst = r.sub(2, "certificates")
    certs = []
    while lst.pos < lst.end:
        ctype = lst.u8("certificate type")
        certs.append(GenericCertificate(ctype, lst.opaque(2, "certificate")))
    return SecurityBlock(tuple(certs), read_signature(r))


# Encoded once by the general encoder; the fast paths above compare against these bytes.
EMPTY_SIGNATURE_BYTES: Final = _encode_signature(EMPTY_SIGNATURE)
EMPTY_SIGNATURE_LEN: Final = len(EMPTY_SIGNATURE_BYTES)
EMPTY_SECURITY_BYTES: Final = opaque(b"", 2, "certificates") + EMPTY_SIGNATURE_BYTES
_EMPTY_SECURITY_LEN: Final = len(EMPTY_SECURITY_BYTES)
