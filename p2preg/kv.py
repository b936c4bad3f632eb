"""Store and fetch a DEBUG-KV value through the overlay: what ``p2preg put/get`` and tests use.

The request is routed to the peer responsible for ``resource_id(name)`` like any RELOAD Store or
Fetch; nothing here looks at the local store. A store refused for a passing reason (the range is
changing hands, a generation race, a clock tie) or not answered in time is tried again a bounded
number of times with short back-off; past the deadline the caller gets ``RingUnavailable``.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Final

from overlay.ids import resource_id
from overlay.messages import (
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchReq,
    Message,
    MessageBody,
    NodeDestination,
    ResourceDestination,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from overlay.runtime import OverlayRequestError, OverlayRuntime
from p2preg.kinds import DEBUG_KV, DEBUG_KV_KEY, DEBUG_KV_MAX_VALUE

DEFAULT_LIFETIME: Final = 86_400  # s
MAX_LIFETIME: Final = 0xFFFFFFFF  # the wire's uint32
DEFAULT_DEADLINE: Final = 10.0  # s for the whole operation, retries included
ATTEMPT_TIMEOUT: Final = 4.0  # s per attempt: longer than a retransmission round trip
MAX_ATTEMPTS: Final = 8
BACKOFF_FIRST: Final = 0.05  # s, doubled after each attempt
BACKOFF_MAX: Final = 1.0

# Errors that say "never" rather than "not now". Everything else is retried: In_Progress (the
# range is being handed over), Forbidden (the peer that got it is not, or no longer,
# responsible), Request_Timeout (no replica answered), generation races, Data_Too_Old.
PERMANENT: Final = frozenset(
    {
        ErrorCode.DATA_TOO_LARGE,
        ErrorCode.UNKNOWN_KIND,
        ErrorCode.MESSAGE_TOO_LARGE,
        ErrorCode.INCOMPATIBLE_WITH_OVERLAY,
        ErrorCode.INVALID_MESSAGE,
    }
)


class RingUnavailable(Exception):
    """The ring did not answer (in time, or with anything but passing errors)."""


class KvRefused(Exception):
    """The responsible peer refused for good (too large, unknown kind...)."""

    def __init__(self, code: int, text: str) -> None:
        super().__init__(f"{_code_name(code)}: {text}")
        self.code = code
        self.text = text


@dataclass(frozen=True, slots=True)
class PutResult:
    name: str
    resource: int
    responsible: int | None  # the peer that answered, i.e. the one responsible for the name
    replicas: tuple[int, ...]  # the replicas that acknowledged the copy
    generation: int
    storage_time: int  # ms since the epoch
    lifetime: int  # s
    attempts: int


@dataclass(frozen=True, slots=True)
class GetResult:
    name: str
    resource: int
    responsible: int | None
    value: bytes | None  # None: nothing (live) stored under the name
    storage_time: int | None
    lifetime: int | None
    generation: int
    attempts: int


def _code_name(code: int) -> str:
    try:
        return ErrorCode(code).name
    except ValueError:
        return f"error {code}"


def _responder(answer: Message) -> int | None:
    via = answer.header.via_list
    return via[0].node_id if via and isinstance(via[0], NodeDestination) else None


def now_ms() -> int:
    """Storage times, expiries and the store's idea of "now" are wall-clock ms (RFC 6940)."""
    return int(time.time() * 1000)


class StorageClock:
    """Storage times in ms of wall-clock time, strictly increasing within this process, so two
    quick stores of one name never tie (a tie with a different value is Data_Too_Old)."""

    def __init__(self, clock: Callable[[], float] = time.time) -> None:
        self._clock = clock
        self._last = 0

    def next(self) -> int:
        self._last = max(int(self._clock() * 1000), self._last + 1)
        return self._last


class KvClient:
    def __init__(
        self,
        rt: OverlayRuntime,
        *,
        deadline: float = DEFAULT_DEADLINE,
        attempt_timeout: float = ATTEMPT_TIMEOUT,
        clock: StorageClock | None = None,
    ) -> None:
        self.rt = rt
        self.deadline = deadline
        self.attempt_timeout = attempt_timeout
        self.clock = clock or StorageClock()
        self.counters: dict[str, int] = {
            "puts": 0,
            "puts_failed": 0,
            "gets": 0,
            "gets_failed": 0,
            "retries": 0,
        }

    async def put(self, name: str, value: bytes, lifetime: int = DEFAULT_LIFETIME) -> PutResult:
        if len(value) > DEBUG_KV_MAX_VALUE:
            raise KvRefused(ErrorCode.DATA_TOO_LARGE, f"value exceeds {DEBUG_KV_MAX_VALUE} bytes")
        if not 0 < lifetime <= MAX_LIFETIME:
            raise ValueError(f"lifetime must be 1..{MAX_LIFETIME} s")
        rid = resource_id(name)
        self.counters["puts"] += 1
        storage_time = 0

        def body() -> MessageBody:
            nonlocal storage_time
            storage_time = self.clock.next()  # a retry after Data_Too_Old needs a later time
            sd = StoredData(storage_time, lifetime, DEBUG_KV_KEY, value)
            return StoreReq(rid, 0, (StoreKindData(DEBUG_KV, 0, (sd,)),))

        try:
            answer, attempts = await self._ask(rid, body, StoreAns)
        except Exception:
            self.counters["puts_failed"] += 1
            raise
        assert isinstance(answer.body, StoreAns)
        responses = answer.body.kind_responses
        kr = next((r for r in responses if r.kind == DEBUG_KV), None)
        return PutResult(
            name=name,
            resource=rid,
            responsible=_responder(answer),
            replicas=kr.replicas if kr else (),
            generation=kr.generation_counter if kr else 0,
            storage_time=storage_time,
            lifetime=lifetime,
            attempts=attempts,
        )

    async def get(self, name: str) -> GetResult:
        rid = resource_id(name)
        self.counters["gets"] += 1
        req = FetchReq(rid, (StoredDataSpecifier(DEBUG_KV, 0, (DEBUG_KV_KEY,)),))
        try:
            answer, attempts = await self._ask(rid, lambda: req, FetchAns)
        except Exception:
            self.counters["gets_failed"] += 1
            raise
        assert isinstance(answer.body, FetchAns)
        found: StoredData | None = None
        generation = 0
        for kr in answer.body.kind_responses:
            if kr.kind != DEBUG_KV:
                continue
            generation = kr.generation
            for sd in kr.values:
                if sd.key == DEBUG_KV_KEY and sd.exists:
                    found = sd
        return GetResult(
            name=name,
            resource=rid,
            responsible=_responder(answer),
            value=found.value if found else None,
            storage_time=found.storage_time if found else None,
            lifetime=found.lifetime if found else None,
            generation=generation,
            attempts=attempts,
        )

    async def _ask(
        self, rid: int, make_body: Callable[[], MessageBody], want: type
    ) -> tuple[Message, int]:
        loop = asyncio.get_running_loop()
        give_up = loop.time() + self.deadline
        backoff = BACKOFF_FIRST
        last = "no attempt made"
        for attempt in range(1, MAX_ATTEMPTS + 1):
            remaining = give_up - loop.time()
            if remaining <= 0:
                break
            if attempt > 1:
                self.counters["retries"] += 1
            try:
                answer = await self.rt.request(
                    [ResourceDestination(rid)],
                    make_body(),
                    timeout=min(self.attempt_timeout, remaining),
                )
            except OverlayRequestError as exc:
                last = f"no answer: {exc.reason}"
            except RuntimeError as exc:  # the runtime is not started or already closed
                raise RingUnavailable(str(exc)) from None
            else:
                body = answer.body
                if isinstance(body, want):
                    return answer, attempt
                if isinstance(body, ErrorResponse):
                    if body.error_code in PERMANENT:
                        raise KvRefused(body.error_code, body.text)
                    last = f"{_code_name(body.error_code)}: {body.text}"
                else:
                    last = f"unexpected answer {type(body).__name__}"
            pause = min(backoff, give_up - loop.time())
            if pause > 0:
                await asyncio.sleep(pause)
            backoff = min(backoff * 2, BACKOFF_MAX)
        raise RingUnavailable(
            f"the ring did not answer in {self.deadline:g} s ({attempt} attempts); last: {last}"
        )
