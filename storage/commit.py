"""Group commit: concurrent stores share one LMDB commit, and none is answered before it.

A disk flush costs milliseconds whatever it carries, so while one batch is being committed
the stores that arrive queue up and go together in the next one. Every write runs on one
dedicated thread: the event loop never waits on a flush, and LMDB sees a single writer.
"""

from __future__ import annotations

import asyncio
import functools
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from typing import Final, TypeVar

from overlay.messages import StoreReq
from storage.errors import StoreError
from storage.record import Role, StoreOutcome
from storage.store import RecordStore

T = TypeVar("T")

DEFAULT_MAX_BATCH: Final = 1024


@dataclass(frozen=True, slots=True)
class _Queued:
    req: StoreReq
    now_ms: int
    role: Role
    future: asyncio.Future[StoreOutcome]


class GroupCommitter:
    """The asyncio face of a ``RecordStore`` for writes.

    ``store`` resolves only after the commit that carries it has returned (in sync durability:
    is on disk); ``StoreOutcome.commit_seq`` names that commit. A refused store raises its
    ``StoreError`` and leaves the others of its batch untouched. A caller cancelled while
    waiting does not withdraw its store: it may still be applied.
    """

    def __init__(self, store: RecordStore, *, max_batch: int = DEFAULT_MAX_BATCH) -> None:
        if max_batch < 1:
            raise ValueError(f"max_batch must be at least 1, got {max_batch}")
        self.record_store = store
        self.max_batch = max_batch
        self.commits = 0  # batches committed
        self.stores = 0  # stores that rode on them, refused ones included
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb-writer")
        self._queue: list[_Queued] = []
        self._worker: asyncio.Task[None] | None = None
        self._closed = False

    async def store(self, req: StoreReq, now_ms: int, role: Role) -> StoreOutcome:
        if self._closed:
            raise RuntimeError("the group committer is closed")
        loop = asyncio.get_running_loop()
        future: asyncio.Future[StoreOutcome] = loop.create_future()
        self._queue.append(_Queued(req, now_ms, role, future))
        if self._worker is None or self._worker.done():
            self._worker = loop.create_task(self._drain())
        return await future

    async def run(self, fn: Callable[..., T], *args: object) -> T:
        """Run another write (sweep, set_role_range, delete_range...) on the writer thread,
        in turn with the batches, so it never blocks the event loop or races them."""
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, functools.partial(fn, *args))

    async def _drain(self) -> None:
        loop = asyncio.get_running_loop()
        while self._queue:
            batch = self._queue[: self.max_batch]
            del self._queue[: self.max_batch]
            items = [(q.req, q.now_ms, q.role) for q in batch]
            try:
                results = await loop.run_in_executor(
                    self._executor, self.record_store.apply_batch, items
                )
            except Exception as exc:  # StorageFull or a fault of LMDB: every caller hears of it
                for q in batch:
                    if not q.future.done():
                        q.future.set_exception(exc)
                continue
            self.commits += 1
            self.stores += len(batch)
            for q, result in zip(batch, results, strict=True):
                if q.future.done():
                    continue  # the caller gave up waiting
                if isinstance(result, StoreError):
                    q.future.set_exception(result)
                else:
                    q.future.set_result(result)

    async def close(self) -> None:
        """Finish what is queued, then stop the writer thread. The store stays open."""
        self._closed = True
        if self._worker is not None:
            await self._worker
        await asyncio.get_running_loop().run_in_executor(None, self._executor.shutdown)
