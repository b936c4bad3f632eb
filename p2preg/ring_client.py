"""The one client of the ring that the node's applications (the SIP registrar, the kv debug
API, the operator's unregister) use to Store, Fetch and Apply at a resource.

One table says what each RELOAD answer means (:func:`verdict`), one backoff with a deadline
retries what may succeed later, and one storage clock numbers what this node writes:

- an answer of the expected kind: done;
- ``RETRY``: Error_In_Progress (the range is being handed over), Error_Forbidden "not
  responsible" (the ring is moving), Error_Not_Found, Error_Request_Timeout (no replica
  answered, or the ring gave up on the request) and no answer at all;
- ``CONFLICT``: Error_Generation_Counter_Too_Low and Error_Data_Too_Old (someone else wrote
  since we read, or in the same millisecond): the caller decides again (:class:`RingConflict`);
- ``REFUSED``: the kind's own rules said no (Error_Forbidden "refused: …", see
  ``overlay.operations``): :class:`RingRefused` with ``refused=True``;
- ``PERMANENT``: anything else (too large, unknown kind, malformed): :class:`RingRefused`.

Past the deadline :class:`RingUnavailable` (a SIP front answers 503 + Retry-After).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from enum import StrEnum
from typing import Final, Generic, Protocol, TypeVar

from overlay.actions import LocalAnswer
from overlay.messages import (
    ApplyReq,
    ErrorCode,
    ErrorResponse,
    FetchReq,
    MessageBody,
    StoreReq,
)
from overlay.operations import REFUSED_PREFIX
from overlay.runtime import OverlayRequestError

DataRequest = StoreReq | FetchReq | ApplyReq
T = TypeVar("T")

DEFAULT_DEADLINE: Final = 5.0  # s for one call, retries included
ATTEMPT_TIMEOUT: Final = 2.0  # s per attempt: a retransmission round trip and then some
BACKOFF_FIRST: Final = 0.05  # s, doubled after each attempt
BACKOFF_MAX: Final = 0.5


class Verdict(StrEnum):
    DONE = "done"
    RETRY = "retry"
    CONFLICT = "conflict"
    REFUSED = "refused"
    PERMANENT = "permanent"


RETRY_CODES: Final = frozenset(
    {
        ErrorCode.IN_PROGRESS,
        ErrorCode.FORBIDDEN,
        ErrorCode.NOT_FOUND,
        ErrorCode.REQUEST_TIMEOUT,
    }
)
CONFLICT_CODES: Final = frozenset({ErrorCode.GENERATION_COUNTER_TOO_LOW, ErrorCode.DATA_TOO_OLD})


def verdict(body: MessageBody, want: type) -> Verdict:
    if isinstance(body, want):
        return Verdict.DONE
    if not isinstance(body, ErrorResponse):
        return Verdict.PERMANENT
    code = body.error_code
    if code == ErrorCode.FORBIDDEN and body.text.startswith(REFUSED_PREFIX):
        return Verdict.REFUSED
    if code in RETRY_CODES:
        return Verdict.RETRY
    if code in CONFLICT_CODES:
        return Verdict.CONFLICT
    return Verdict.PERMANENT


class RingUnavailable(Exception):
    """The ring gave no usable answer before the deadline."""


class RingConflict(Exception):
    """Someone else wrote the resource since we read it: read and decide again."""


class RingRefused(Exception):
    """A refusal for good: ``refused`` when the kind's rules said no (``text`` then holds
    their reason, e.g. "400 Invalid CSeq"), else the RELOAD error (too large, unknown kind…)."""

    def __init__(self, code: int, text: str, *, refused: bool = False) -> None:
        super().__init__(f"{_code_name(code)}: {text}")
        self.code = code
        self.text = text[len(REFUSED_PREFIX) :] if refused else text
        self.refused = refused


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error {code}"


class Caller(Protocol):
    """What the client needs of ``OverlayRuntime``."""

    async def call(self, body: DataRequest, timeout: float) -> LocalAnswer: ...


@dataclass(frozen=True, slots=True)
class Answered(Generic[T]):
    body: T
    responder: int | None  # the peer that answered
    attempts: int


@dataclass
class RingStats:
    calls: int = 0
    retries: int = 0
    conflicts: int = 0
    failures: int = 0


def now_ms() -> int:
    """Storage times, expiries and the store's idea of "now" are wall-clock ms (RFC 6940)."""
    return int(time.time() * 1000)


class StorageClock:
    """Storage times in ms of wall-clock time, strictly increasing within this process, so two
    quick writes of one entry never tie (a tie with a different value is Data_Too_Old)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(int(self._clock() * 1000), self._last + 1)
        return self._last


class RingClient:
    def __init__(
        self,
        caller: Caller,
        *,
        deadline: float = DEFAULT_DEADLINE,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        storage_clock: StorageClock | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._caller = caller
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.storage_clock = storage_clock or StorageClock()
        self._clock = clock
        self.stats = RingStats()

    async def call(
        self,
        make_body: Callable[[], DataRequest],
        want: type[T],
        *,
        until: float | None = None,
    ) -> Answered[T]:
        """Send ``make_body()`` (made again for each attempt: a retry may need a later storage
        time) until an answer of type ``want`` comes or the deadline (``until``, on this
        client's clock; default now + ``deadline``) passes."""
        self.stats.calls += 1
        give_up = self._clock() + self.deadline if until is None else until
        backoff = BACKOFF_FIRST
        last = "no attempt made"
        attempts = 0
        while True:
            left = give_up - self._clock()
            if left <= 0:
                self.stats.failures += 1
                raise RingUnavailable(f"no usable answer in time ({attempts} attempts): {last}")
            attempts += 1
            if attempts > 1:
                self.stats.retries += 1
            try:
                answer = await self._caller.call(make_body(), min(self.attempt_timeout, left))
            except OverlayRequestError as exc:
                last = f"no answer: {exc.reason}"
            else:
                body = answer.body
                found = verdict(body, want)
                if found is Verdict.DONE:
                    return Answered(body, answer.responder, attempts)  # type: ignore[arg-type]
                assert isinstance(body, ErrorResponse) or found is Verdict.PERMANENT
                code = body.error_code if isinstance(body, ErrorResponse) else 0
                text = body.text if isinstance(body, ErrorResponse) else type(body).__name__
                if found is Verdict.CONFLICT:
                    self.stats.conflicts += 1
                    raise RingConflict(text)
                if found is not Verdict.RETRY:
                    raise RingRefused(code, text, refused=found is Verdict.REFUSED)
                last = f"{_code_name(code)}: {text}"
            pause = min(backoff, give_up - self._clock())
            if pause > 0:
                await asyncio.sleep(pause)
            backoff = min(backoff * 2, BACKOFF_MAX)
