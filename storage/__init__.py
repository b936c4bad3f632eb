"""LMDB storage of overlay records: atomic RELOAD Stores, fetches, ring-range scans, expiry,
and group commit. No sockets and no SIP here; the overlay drives it."""

from overlay.replication_backend import RecordBackend
from storage.commit import GroupCommitter
from storage.errors import StorageFull, StoreError
from storage.record import Durability, KindLimits, Record, Role, StoreOutcome
from storage.store import RecordStore

__all__ = [
    "Durability",
    "GroupCommitter",
    "KindLimits",
    "Record",
    "RecordStore",
    "Role",
    "StorageFull",
    "StoreError",
    "StoreOutcome",
    "as_backend",
]


def as_backend(store: RecordStore) -> RecordBackend:
    """The store as the overlay's replicator sees it (and a type check that it fits)."""
    return store
