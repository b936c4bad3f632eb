"""Store and fetch a DEBUG-KV value through the overlay: what ``p2preg put/get`` and tests use.

The request goes to the peer responsible for ``resource_id(name)`` through the node's one
ring client (``p2preg.ring_client``): served here when this node is responsible, else routed;
retried with its backoff while the answer says "not now"; past the deadline the caller gets
``RingUnavailable``, and a refusal for good is ``KvRefused``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Final

from overlay.ids import resource_id
from overlay.messages import (
    ErrorCode,
    FetchAns,
    FetchReq,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreReq,
)
from p2preg.kinds import DEBUG_KV, DEBUG_KV_KEY, DEBUG_KV_MAX_VALUE
from p2preg.ring_client import RingClient, RingConflict, RingRefused, RingUnavailable

DEFAULT_LIFETIME: Final = 86_400  # s
MAX_LIFETIME: Final = 0xFFFFFFFF  # the wire's uint32
KvRefused = RingRefused  # the responsible peer refused for good (too large, unknown kind...)

__all__ = ["GetResult", "KvClient", "KvRefused", "PutResult", "RingUnavailable"]


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


class KvClient:
    def __init__(self, ring: RingClient) -> None:
        self.ring = ring
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

        def body() -> StoreReq:
            nonlocal storage_time
            storage_time = self.ring.storage_clock.next()  # a retry needs a later time
            sd = StoredData(storage_time, lifetime, DEBUG_KV_KEY, value)
            return StoreReq(rid, 0, (StoreKindData(DEBUG_KV, 0, (sd,)),))

        attempts = 0
        while True:  # a clock tie with another writer (Data_Too_Old): again, a moment later
            try:
                answered = await self.ring.call(body, StoreAns)
                break
            except RingConflict:
                attempts += 1
                if attempts >= 3:
                    self.counters["puts_failed"] += 1
                    raise RingUnavailable("the value kept being overwritten") from None
            except Exception:
                self.counters["puts_failed"] += 1
                raise
        self.counters["retries"] += answered.attempts - 1
        kr = next((r for r in answered.body.kind_responses if r.kind == DEBUG_KV), None)
        return PutResult(
            name=name,
            resource=rid,
            responsible=answered.responder,
            replicas=kr.replicas if kr else (),
            generation=kr.generation_counter if kr else 0,
            storage_time=storage_time,
            lifetime=lifetime,
            attempts=answered.attempts + attempts,
        )

    async def get(self, name: str) -> GetResult:
        rid = resource_id(name)
        self.counters["gets"] += 1
        req = FetchReq(rid, (StoredDataSpecifier(DEBUG_KV, 0, (DEBUG_KV_KEY,)),))
        try:
            answered = await self.ring.call(lambda: req, FetchAns)
        except Exception:
            self.counters["gets_failed"] += 1
            raise
        self.counters["retries"] += answered.attempts - 1
        found: StoredData | None = None
        generation = 0
        for kr in answered.body.kind_responses:
            if kr.kind != DEBUG_KV:
                continue
            generation = kr.generation
            for sd in kr.values:
                if sd.key == DEBUG_KV_KEY and sd.exists:
                    found = sd
        return GetResult(
            name=name,
            resource=rid,
            responsible=answered.responder,
            value=found.value if found else None,
            storage_time=found.storage_time if found else None,
            lifetime=found.lifetime if found else None,
            generation=generation,
            attempts=answered.attempts,
        )
