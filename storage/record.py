"""Records as the store holds them, their on-disk encoding, and ring ranges as key ranges.

A record key is Resource-ID (16 bytes, big-endian) ‖ Kind-ID (4) ‖ dictionary key, so the
byte order of keys is the ring order of resources: a ring interval is one key range, or two
when it wraps past zero.
"""

from __future__ import annotations

import hashlib
import struct
from bisect import bisect_left
from collections.abc import Iterator
from dataclasses import dataclass
from enum import StrEnum
from typing import Any, Final

import msgpack

from overlay.ids import ID_BYTES, MASK, RING, cw_distance, id_from_bytes, id_to_bytes
from overlay.messages import (
    EMPTY_SIGNATURE,
    Signature,
    StoreAns,
    StoredData,
    StoreKindResponse,
)
from overlay.replication_backend import Role as Role

KIND: Final = struct.Struct(">I")
U64: Final = struct.Struct(">Q")
PREFIX_BYTES: Final = ID_BYTES + KIND.size  # resource ‖ kind
MAX_U64: Final = (1 << 64) - 1


class Durability(StrEnum):
    SYNC = "sync"
    ASYNC = "async"


@dataclass(frozen=True, slots=True)
class KindLimits:
    """What one kind accepts. Entry count is per (resource, kind): the bindings of one AOR."""

    max_value_bytes: int = 64 * 1024
    max_entries: int = 1000
    max_key_bytes: int = 0xFFFF  # the wire's DictionaryKey limit


@dataclass(frozen=True, slots=True)
class Record:
    resource: int
    kind: int
    key: bytes  # the dictionary key
    storage_time: int  # ms, set by the storing client
    lifetime: int  # s
    expiry_ms: int  # storage_time + lifetime: the same on every copy, whoever holds it
    exists: bool  # False: a tombstone, kept until expiry so an older copy cannot resurrect it
    value: bytes
    signature: Signature
    role: Role

    @property
    def store_key(self) -> bytes:
        """The LMDB key; what ``RecordStore.set_role_keys`` takes."""
        return id_to_bytes(self.resource) + KIND.pack(self.kind) + self.key

    def stored_data(self) -> StoredData:
        return StoredData(
            storage_time=self.storage_time,
            lifetime=self.lifetime,
            key=self.key,
            value=self.value,
            exists=self.exists,
            signature=self.signature,
        )


@dataclass(frozen=True, slots=True)
class StoreOutcome:
    """A committed store: the generation of each kind after it, in request order."""

    generations: tuple[tuple[int, int], ...]  # (kind, generation)
    changed: int  # entries written; older or identical copies a replica ignored are not counted
    commit_seq: int  # the commit that made it durable; compare with RecordStore.committed_seq

    def store_ans(self, replicas: tuple[int, ...] = ()) -> StoreAns:
        return StoreAns(tuple(StoreKindResponse(k, g, replicas) for k, g in self.generations))


def expiry_of(storage_time: int, lifetime: int) -> int:
    # RFC 6940 counts the lifetime from receipt; counting it from storage_time instead makes
    # the expiry identical on the primary and every replica, and a handoff does not extend it.
    return min(storage_time + lifetime * 1000, MAX_U64)


def encode_signature(sig: Signature) -> list[Any] | None:
    if sig == EMPTY_SIGNATURE:
        return None  # the unsigned placeholder costs nothing on disk
    return [sig.hash_algorithm, sig.signature_algorithm, sig.identity_type, sig.identity, sig.value]


def decode_signature(raw: list[Any] | None) -> Signature:
    if raw is None:
        return EMPTY_SIGNATURE
    return Signature(raw[0], raw[1], raw[2], raw[3], raw[4])


def pack_value(sd: StoredData, expiry_ms: int, role: Role) -> bytes:
    return msgpack.packb(
        [
            sd.storage_time,
            sd.lifetime,
            expiry_ms,
            sd.exists,
            sd.value,
            encode_signature(sd.signature),
            int(role),
        ]
    )


def unpack_value(raw: bytes) -> list[Any]:
    """[storage_time, lifetime, expiry_ms, exists, value, signature, role]."""
    fields: list[Any] = msgpack.unpackb(raw)
    return fields


# indices into an unpacked value
ST, LIFETIME, EXPIRY, EXISTS, VALUE, SIG, ROLE = range(7)


def record_from(store_key: bytes, raw: bytes) -> Record:
    f = unpack_value(raw)
    return Record(
        resource=id_from_bytes(store_key[:ID_BYTES]),
        kind=KIND.unpack_from(store_key, ID_BYTES)[0],
        key=bytes(store_key[PREFIX_BYTES:]),
        storage_time=f[ST],
        lifetime=f[LIFETIME],
        expiry_ms=f[EXPIRY],
        exists=f[EXISTS],
        value=f[VALUE],
        signature=decode_signature(f[SIG]),
        role=Role(f[ROLE]),
    )


def with_role(raw: bytes, role: Role) -> bytes:
    f = unpack_value(raw)
    f[ROLE] = int(role)
    return msgpack.packb(f)


def prefix(resource: int, kind: int) -> bytes:
    return id_to_bytes(resource) + KIND.pack(kind)


def expiry_key(expiry_ms: int, store_key: bytes) -> bytes:
    return U64.pack(expiry_ms) + store_key


# --- ring intervals as key ranges -------------------------------------------------------


def key_segments(lo: int, hi: int) -> list[tuple[bytes, bytes | None]]:
    """Key ranges [start, end) covering the resources in the ring interval (lo, hi], in ring
    order from lo. ``end`` None means to the last key. (lo, lo] is the whole ring."""
    lo &= MASK
    hi &= MASK
    if lo == hi == MASK:
        return [(b"", None)]
    if lo < hi:
        return [(id_to_bytes(lo + 1), None if hi == MASK else id_to_bytes(hi + 1))]
    segments: list[tuple[bytes, bytes | None]] = []
    if lo != MASK:
        segments.append((id_to_bytes(lo + 1), None))
    segments.append((b"", id_to_bytes(hi + 1)))
    return segments


# The ring is cut into 2**FINE_BITS fine buckets by the top bits of the Resource-ID. The store
# keeps an XOR of its records' hashes per fine bucket up to date as it writes, so that the
# digest of a range costs a pass over those sums, not a scan of the range's records.
FINE_BITS: Final = 16
FINE_COUNT: Final = 1 << FINE_BITS
FINE_SPAN: Final = 1 << (128 - FINE_BITS)  # ids per fine bucket


def fine_bucket(resource: int) -> int:
    return (resource & MASK) >> (128 - FINE_BITS)


@dataclass(frozen=True, slots=True)
class Pieces:
    """(lo, hi] cut at fine-bucket boundaries into ``count`` pieces: piece j is
    (lo + end(j-1), lo + end(j)] with end(-1) = 0."""

    lo: int
    first: int  # end of piece 0, as a clockwise distance from lo
    count: int
    span: int

    def end(self, j: int) -> int:
        return self.span if j >= self.count - 1 else self.first + j * FINE_SPAN

    def start(self, j: int) -> int:
        return 0 if j == 0 else self.end(j - 1)

    def whole(self, j: int) -> bool:
        """Piece j is a whole fine bucket (else a part of one, at an end of the range)."""
        return self.end(j) - self.start(j) == FINE_SPAN

    def fine(self, j: int) -> int:
        return fine_bucket(self.lo + self.end(j))


def pieces(lo: int, hi: int) -> Pieces:
    span = cw_distance(lo, hi) or RING
    first = ((FINE_SPAN - 1 - lo) % FINE_SPAN) or FINE_SPAN
    count = 1 if span <= first else 1 + -(-(span - first) // FINE_SPAN)
    return Pieces(lo & MASK, min(first, span), count, span)


def bucket_slices(lo: int, hi: int, buckets: int) -> tuple[Pieces, list[tuple[int, int]]]:
    """The pieces of (lo, hi] and, per bucket, the range [a, b) of piece indices it holds:
    ``buckets`` runs of whole pieces as equal as can be (some empty when there are fewer
    pieces than buckets)."""
    if buckets < 1:
        raise ValueError(f"buckets must be at least 1, got {buckets}")
    p = pieces(lo, hi)
    n = p.count
    return p, [(i * n // buckets, (i + 1) * n // buckets) for i in range(buckets)]


def bucket_bounds(lo: int, hi: int, buckets: int) -> list[int]:
    """Upper bounds, as clockwise distances from lo, of ``buckets`` slices of (lo, hi] cut at
    fine-bucket boundaries (where the digest's running sums are kept)."""
    p, slices = bucket_slices(lo, hi, buckets)
    bounds: list[int] = []
    previous = 0
    for a, b in slices:
        previous = p.end(b - 1) if b > a else previous
        bounds.append(previous)
    return bounds


def record_hash(store_key: bytes, storage_time: int, exists: bool) -> int:
    """What one record adds (XOR) to its fine bucket's sum: roles and expiry do not count, so
    a primary and its replica agree when they hold the same data."""
    h = hashlib.blake2b(
        store_key + U64.pack(storage_time) + (b"\x01" if exists else b"\x00"), digest_size=16
    )
    return int.from_bytes(h.digest(), "big")


def bucket_range(lo: int, hi: int, buckets: int, index: int) -> tuple[int, int]:
    """The ring interval (a, b] of bucket ``index`` of (lo, hi] split in ``buckets``."""
    if not 0 <= index < buckets:
        raise ValueError(f"bucket index must be 0..{buckets - 1}, got {index}")
    bounds = bucket_bounds(lo, hi, buckets)
    start = 0 if index == 0 else bounds[index - 1]
    return (lo + start) & MASK, (lo + bounds[index]) & MASK


def bucket_of(lo: int, bounds: list[int], resource: int) -> int:
    """Which bucket a resource inside (lo, hi] falls in; ``bounds`` from ``bucket_bounds``."""
    return bisect_left(bounds, cw_distance(lo, resource) or RING)


def iter_buckets(lo: int, hi: int, buckets: int) -> Iterator[tuple[int, int]]:
    for i in range(buckets):
        yield bucket_range(lo, hi, buckets, i)
