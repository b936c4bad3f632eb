"""The anti-entropy exchange carried in ordinary FetchReq/FetchAns of ``ANTI_ENTROPY_KIND``.

A query is a dictionary key of that kind:

- digest: ``0x01 ‖ lo (16) ‖ hi (16) ‖ buckets (u16)`` — the answer holds one StoredData whose
  value is the concatenated 16-byte hash of every bucket of (lo, hi];
- bucket: ``0x02 ‖ lo ‖ hi ‖ buckets ‖ index (u16) [‖ after]`` — the answer holds the records
  of that bucket, one StoredData each, its dictionary key being the record's identity
  ``resource (16) ‖ kind (u32) ‖ dictionary key``; with ``after`` (a record identity) only
  those that come after it in ring order.

A bucket answer stops at about ``PAGE_BYTES`` (a bucket can hold tens of thousands of
records: one answer for all of them once outgrew the frame limit). For each query it did not
finish, it ends with a continuation: a StoredData with storage_time 0, lifetime 0 and no
value whose key is the query to send next. No record has storage_time 0.

Both decode in Wireshark as plain Fetch messages.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from typing import Final

from overlay.ids import ID_BYTES, id_from_bytes, id_to_bytes
from overlay.messages import StoredData

DIGEST: Final = 1
BUCKET: Final = 2
MAX_BUCKETS: Final = 4096
HASH_BYTES: Final = 16
_U16: Final = struct.Struct(">H")
_KIND: Final = struct.Struct(">I")
_QUERY_BYTES: Final = 1 + 2 * ID_BYTES + 2


# What one bucket answer carries, at most (a quarter of the default frame limit, so that the
# estimate below may be rough).
PAGE_BYTES: Final = 256 * 1024
# A StoredData's encoding beyond its key and value (times, lengths, exists, signature).
ENTRY_OVERHEAD: Final = 64


@dataclass(frozen=True, slots=True)
class Query:
    type: int
    lo: int
    hi: int
    buckets: int
    index: int = 0
    after: bytes | None = None  # bucket queries: resume after this record identity

    def resumed(self, after: bytes) -> bytes:
        """The bucket query that asks for the records after ``after``."""
        return bucket_query(self.lo, self.hi, self.buckets, self.index, after)


def _range(lo: int, hi: int, buckets: int) -> bytes:
    return id_to_bytes(lo) + id_to_bytes(hi) + _U16.pack(buckets)


def digest_query(lo: int, hi: int, buckets: int) -> bytes:
    return bytes([DIGEST]) + _range(lo, hi, buckets)


def bucket_query(lo: int, hi: int, buckets: int, index: int, after: bytes | None = None) -> bytes:
    key = bytes([BUCKET]) + _range(lo, hi, buckets) + _U16.pack(index)
    return key if after is None else key + after


def parse_query(key: bytes) -> Query:
    """Raises ValueError on anything malformed."""
    if len(key) < _QUERY_BYTES or key[0] not in (DIGEST, BUCKET):
        raise ValueError("not an anti-entropy query")
    lo = id_from_bytes(key[1 : 1 + ID_BYTES])
    hi = id_from_bytes(key[1 + ID_BYTES : 1 + 2 * ID_BYTES])
    buckets = _U16.unpack_from(key, 1 + 2 * ID_BYTES)[0]
    if not 1 <= buckets <= MAX_BUCKETS:
        raise ValueError(f"bucket count {buckets} out of range")
    if key[0] == DIGEST:
        if len(key) != _QUERY_BYTES:
            raise ValueError("bad digest query length")
        return Query(DIGEST, lo, hi, buckets)
    if len(key) < _QUERY_BYTES + 2:
        raise ValueError("bad bucket query length")
    index = _U16.unpack_from(key, _QUERY_BYTES)[0]
    if index >= buckets:
        raise ValueError(f"bucket index {index} out of range")
    after = bytes(key[_QUERY_BYTES + 2 :]) or None
    if after is not None and len(after) < ID_BYTES + _KIND.size:
        raise ValueError("bucket cursor shorter than a record identity")
    return Query(BUCKET, lo, hi, buckets, index, after)


def continuation(next_query: bytes) -> StoredData:
    return StoredData(0, 0, next_query, b"", False)


def is_continuation(entry: StoredData) -> bool:
    return entry.storage_time == 0 and entry.lifetime == 0 and not entry.value


def record_key(resource: int, kind: int, key: bytes) -> bytes:
    return id_to_bytes(resource) + _KIND.pack(kind) + key


def parse_record_key(data: bytes) -> tuple[int, int, bytes]:
    if len(data) < ID_BYTES + _KIND.size:
        raise ValueError("record identity too short")
    return (
        id_from_bytes(data[:ID_BYTES]),
        _KIND.unpack_from(data, ID_BYTES)[0],
        bytes(data[ID_BYTES + _KIND.size :]),
    )
