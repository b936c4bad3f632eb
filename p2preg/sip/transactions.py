"""Server transaction memory: replay the final response to a retransmitted request.

RFC 3261 §17.2: a retransmission (same top-Via branch, sent-by, method and CSeq) must
get the same final response and must not be applied twice. We keep the last final
response per transaction for Timer F/J (64*T1 = 32 s), measured with the ``now`` the
caller passes. Entries are inserted in time order, so expiry and the size bound both
drop from the front of one ordered dict.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass
from enum import Enum
from typing import NamedTuple

from p2preg.sip.message import SipParseError, SipRequest

MAGIC_COOKIE = "z9hG4bK"
TRANSACTION_LIFETIME = 32.0


class TransactionKey(NamedTuple):
    # A named tuple rather than a frozen dataclass: each request hashes its key several
    # times in the cache, and a tuple hashes in C.
    branch: str
    sent_by: str
    method: str
    cseq: int
    # RFC 2543 clients (no magic cookie) are matched on dialog identifiers too (§17.2.3).
    legacy: tuple[str, str] | None = None


def transaction_key(request: SipRequest) -> TransactionKey:
    """The key of a request whose Via and CSeq parse; raises SipParseError otherwise."""
    via = request.top_via()
    cseq = request.cseq()
    branch = via.branch or ""
    method = "INVITE" if request.method == "ACK" else request.method
    legacy: tuple[str, str] | None = None
    if not branch.startswith(MAGIC_COOKIE) or len(branch) == len(MAGIC_COOKIE):
        call_id = request.headers.get("call-id") or ""
        from_value = request.headers.get("from") or ""
        legacy = (call_id, from_value)
    return TransactionKey(branch, via.sent_by.lower(), method, cseq.number, legacy)


class Status(Enum):
    NEW = "new"  # not seen: process it
    PENDING = "pending"  # being processed: drop the retransmission
    REPLAY = "replay"  # answered: send ``response`` again


@dataclass(frozen=True, slots=True)
class Lookup:
    status: Status
    response: bytes | None = None
    status_code: int | None = None


_PENDING = Lookup(Status.PENDING)
_NEW = Lookup(Status.NEW)


@dataclass(slots=True)
class _Entry:
    expires: float
    response: bytes | None
    status_code: int | None


class TransactionCache:
    def __init__(self, max_entries: int = 65536, lifetime: float = TRANSACTION_LIFETIME) -> None:
        if max_entries < 1:
            raise ValueError("max_entries must be positive")
        self.max_entries = max_entries
        self.lifetime = lifetime
        self._entries: OrderedDict[TransactionKey, _Entry] = OrderedDict()

    def __len__(self) -> int:
        return len(self._entries)

    def begin(self, key: TransactionKey, now: float) -> Lookup:
        """Look a request up; a NEW one is recorded as pending until :meth:`finish`."""
        self._expire(now)
        entry = self._entries.get(key)
        if entry is not None:
            if entry.response is None:
                return _PENDING
            return Lookup(Status.REPLAY, entry.response, entry.status_code)
        self._insert(key, _Entry(now + self.lifetime, None, None))
        return _NEW

    def finish(self, key: TransactionKey, response: bytes, status_code: int, now: float) -> None:
        entry = self._entries.get(key)
        if entry is None:
            self._insert(key, _Entry(now + self.lifetime, response, status_code))
            return
        # Moved to the end with its new expiry, so the dict stays in expiry order.
        entry.expires = now + self.lifetime
        entry.response = response
        entry.status_code = status_code
        self._entries.move_to_end(key)

    def forget(self, key: TransactionKey) -> None:
        self._entries.pop(key, None)

    def get(self, key: TransactionKey, now: float) -> Lookup | None:
        self._expire(now)
        entry = self._entries.get(key)
        if entry is None:
            return None
        if entry.response is None:
            return _PENDING
        return Lookup(Status.REPLAY, entry.response, entry.status_code)

    def _insert(self, key: TransactionKey, entry: _Entry) -> None:
        self._entries[key] = entry
        while len(self._entries) > self.max_entries:
            self._entries.popitem(last=False)

    def _expire(self, now: float) -> None:
        entries = self._entries
        while entries:
            key, entry = next(iter(entries.items()))
            if entry.expires > now:
                break
            del entries[key]


__all__ = [
    "TRANSACTION_LIFETIME",
    "Lookup",
    "SipParseError",
    "Status",
    "TransactionCache",
    "TransactionKey",
    "transaction_key",
]
