"""What the replicator needs from a record store, as an interface: overlay never imports storage.

The node (and the simulator's tests) pass a ``storage.RecordStore``; ``storage`` takes ``Role``
and ``StoreRejected`` from here so that its classes satisfy these types exactly.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Final, Protocol

from overlay.config import MIN_PERIOD, check_seconds
from overlay.messages import (
    FetchKindResponse,
    Signature,
    StoredData,
    StoredDataSpecifier,
    StoreReq,
)

# A private-use Kind-ID that never holds data: FetchReqs of it carry the anti-entropy
# exchange (digests and bucket contents) as ordinary RELOAD messages.
ANTI_ENTROPY_KIND: Final = 0xF00000FE


class Role(IntEnum):
    """Why this peer holds a record: it is responsible for it, or keeps a copy for one who is."""

    PRIMARY = 1
    REPLICA = 2


class StoreRejected(Exception):
    """A store refused as a whole; ``code`` and ``info`` make the RELOAD ErrorResponse (for
    Generation_Counter_Too_Low ``info`` is the encoded StoreAns with the current counters)."""

    code: int
    info: bytes


class StoreResult(Protocol):
    @property
    def generations(self) -> tuple[tuple[int, int], ...]: ...

    @property
    def changed(self) -> int: ...


class StoredRecord(Protocol):
    @property
    def resource(self) -> int: ...

    @property
    def kind(self) -> int: ...

    @property
    def key(self) -> bytes: ...

    @property
    def storage_time(self) -> int: ...

    @property
    def lifetime(self) -> int: ...

    @property
    def exists(self) -> bool: ...

    @property
    def value(self) -> bytes: ...

    @property
    def signature(self) -> Signature: ...

    @property
    def role(self) -> Role: ...

    def stored_data(self) -> StoredData: ...


class RecordBackend(Protocol):
    """The ``storage.RecordStore`` methods the replicator uses (see their docstrings there).
    Every time is in ms since the epoch; ranges are ring intervals (lo, hi]."""

    def apply_store(self, req: StoreReq, now_ms: int, role: Role) -> StoreResult: ...

    def apply_batch(
        self, items: Sequence[tuple[StoreReq, int, Role]]
    ) -> Sequence[StoreResult | StoreRejected]: ...

    def fetch(
        self, resource: int, specifiers: Iterable[StoredDataSpecifier], now_ms: int
    ) -> tuple[FetchKindResponse, ...]: ...

    def generation(self, resource: int, kind: int) -> int: ...

    def records_for(self, resource: int, now_ms: int | None = None) -> Sequence[StoredRecord]: ...

    def store_reqs(
        self,
        lo_exclusive: int,
        hi_inclusive: int,
        now_ms: int,
        replica_number: int,
        role: Role | None = None,
        *,
        max_values: int = 256,
    ) -> Iterator[StoreReq]: ...

    def scan_range(
        self,
        lo_exclusive: int,
        hi_inclusive: int,
        now_ms: int,
        role: Role | None = None,
        *,
        include_tombstones: bool = True,
    ) -> Iterator[StoredRecord]: ...

    def set_role_range(self, lo_exclusive: int, hi_inclusive: int, role: Role) -> int: ...

    def delete_range(
        self, lo_exclusive: int, hi_inclusive: int, *, role: Role | None = None
    ) -> int: ...

    def count(self, role: Role | None = None, *, now_ms: int | None = None) -> int: ...

    def digest(
        self, lo_exclusive: int, hi_inclusive: int, buckets: int, now_ms: int
    ) -> list[bytes]: ...

    def records_in_bucket(
        self, lo_exclusive: int, hi_inclusive: int, buckets: int, index: int, now_ms: int
    ) -> Sequence[StoredRecord]: ...

    def bucket_page(
        self,
        lo_exclusive: int,
        hi_inclusive: int,
        buckets: int,
        index: int,
        now_ms: int,
        after: bytes | None = None,
    ) -> Iterator[StoredRecord]: ...

    def sweep(self, now_ms: int, limit: int = 1000) -> int: ...

    def flush(self) -> None: ...

    def close(self) -> None: ...


@dataclass(frozen=True, slots=True)
class ReplicationConfig:
    replicas: int = 2  # copies besides the primary, on successors 1..replicas
    replica_timeout: float = 1.5  # s an original store waits for its replicas' answers
    handoff_timeout: float = 10.0  # s a join admission or a leave waits for its handoff
    settle: float = 0.3  # s of quiet after a neighbour change before roles are re-evaluated
    max_in_flight: int = 64  # bulk Stores (handoff, repair) outstanding at once
    batch_values: int = 256  # entries per bulk StoreReq (one resource each, per RFC 6940)
    anti_entropy_interval: float = 30.0
    anti_entropy_buckets: int = 256
    buckets_per_pull: int = 8
    garbage_interval: float = 15.0  # s between checks for records we should no longer hold
    garbage_quiet: float = 10.0  # s without neighbour change before garbage is handed off
    sweep_interval: float = 10.0
    sweep_limit: int = 1000  # expired records removed per sweep step

    def __post_init__(self) -> None:
        if self.replicas < 0:
            raise ValueError("replicas must be >= 0")
        for name in (
            "replica_timeout",
            "handoff_timeout",
            "anti_entropy_interval",
            "garbage_interval",
            "sweep_interval",
        ):
            check_seconds(name, getattr(self, name), minimum=MIN_PERIOD)
        for name in ("settle", "garbage_quiet"):
            check_seconds(name, getattr(self, name), minimum=0.0)
        if self.anti_entropy_buckets < 1 or self.max_in_flight < 1:
            raise ValueError("anti_entropy_buckets and max_in_flight must be at least 1")
