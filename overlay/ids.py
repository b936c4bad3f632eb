"""128-bit identifiers and ring arithmetic (RFC 6940 §10.2).

Ids are plain ``int`` in memory: ring arithmetic on ints is cheap and the
simulator runs millions of comparisons. They become 16 big-endian bytes only
on the wire.
"""

from __future__ import annotations

import hashlib

ID_BITS = 128
ID_BYTES = ID_BITS // 8
RING = 1 << ID_BITS
MASK = RING - 1

NodeId = int
ResourceId = int


def resource_id(name: str | bytes) -> ResourceId:
    """Resource-ID of a resource name: the first 16 bytes of its SHA-1."""
    data = name.encode("utf-8") if isinstance(name, str) else name
    return int.from_bytes(hashlib.sha1(data).digest()[:ID_BYTES], "big")


def id_to_bytes(value: int) -> bytes:
    return (value & MASK).to_bytes(ID_BYTES, "big")


def id_from_bytes(data: bytes) -> int:
    return int.from_bytes(data, "big")


def id_hex(value: int) -> str:
    return f"{value & MASK:032x}"


def parse_id(text: str) -> int:
    """Parse a 32-digit hex id; raises ValueError with a readable message."""
    cleaned = text.strip().lower().removeprefix("0x")
    if len(cleaned) != 2 * ID_BYTES:
        raise ValueError(f"node id must be {2 * ID_BYTES} hex digits, got {len(cleaned)}")
    try:
        return int(cleaned, 16)
    except ValueError:
        raise ValueError(f"node id is not hexadecimal: {text!r}") from None


def cw_distance(a: int, b: int) -> int:
    """Clockwise distance from a to b: how far b lies after a on the ring."""
    return (b - a) & MASK


def in_open_closed(x: int, a: int, b: int) -> bool:
    """x in (a, b] on the ring. (a, a] is the whole ring (a single peer owns everything)."""
    if a == b:
        return True
    return 0 < cw_distance(a, x) <= cw_distance(a, b)


def in_open(x: int, a: int, b: int) -> bool:
    """x in (a, b) on the ring. (a, a) is the whole ring except a."""
    if a == b:
        return x != a
    return 0 < cw_distance(a, x) < cw_distance(a, b)


def add(a: int, b: int) -> int:
    return (a + b) & MASK


def finger_target(node: int, index: int) -> int:
    """Target of finger ``index`` (1..128): node + 2^(128-index); finger 1 is half way round."""
    if not 1 <= index <= ID_BITS:
        raise ValueError(f"finger index must be 1..{ID_BITS}, got {index}")
    return add(node, 1 << (ID_BITS - index))


def share_ppb(predecessor: int, node: int) -> int:
    """Parts per billion of the ring that (predecessor, node] covers."""
    span = cw_distance(predecessor, node) or RING
    return span * 1_000_000_000 // RING
