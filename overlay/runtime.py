"""The asyncio runtime that drives the sans-I/O ChordPeer with real sockets and real time.

It owns the link layer, decodes what arrives, feeds the peer, executes what the peer asks
for (``take_actions``) and calls ``tick`` at the peer's deadlines. Every clock read of the
overlay happens here, so the peer itself stays deterministic and simulable.

With a ``backend`` (a ``storage.RecordStore``) the peer gets a ``Replicator`` that serves
Store/Fetch and keeps the copies. Durability barrier: the store is opened without a flush per
commit (LMDB ``sync=False``); with ``durability="sync"`` the runtime holds back every batch of
actions produced after a write (answers, replica stores, handoffs) until ``backend.flush()``
has run on a worker thread, and everything that comes in during that flush waits for the next
one. So no StoreAns leaves before its data is on disk, and the stores that arrive while the
disk is busy share one fsync (group commit). ``durability="async"`` skips the flush: a killed
process loses nothing (the OS has the pages), a power loss may lose the last writes.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import ssl
import struct
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

from overlay.actions import (
    Action,
    Address,
    AppRequest,
    Dropped,
    Event,
    Flush,
    LocalAnswer,
    NeighborsChanged,
    PeerLost,
    PeerState,
    RequestCompleted,
    RequestFailed,
    Send,
    StateChanged,
)
from overlay.chord import ChordPeer, PeerView
from overlay.codec import (
    HEADER_SIZE,
    CodecError,
    decode_header,
    decode_message,
    encode_message,
    oversized_answer,
)
from overlay.config import ChordConfig
from overlay.core import OverlayCore
from overlay.messages import (
    ApplyReq,
    Destination,
    ErrorCode,
    ErrorResponse,
    FetchReq,
    ForwardingHeader,
    Message,
    MessageBody,
    MessageCode,
    NodeDestination,
    StoreReq,
    is_request_code,
    overlay_hash,
)
from overlay.operations import KindOperation
from overlay.replication import Replicator
from overlay.replication_backend import RecordBackend, ReplicationConfig
from overlay.transport import Link, LinkConfig, LinkLayer, LinkStats

log = logging.getLogger("p2preg.overlay")

AppHandler = Callable[[Message], Awaitable[MessageBody]]
T = TypeVar("T")
_LIST_LENGTHS = struct.Struct("!HHH")  # via, destination, options lengths at header offset 32


class OverlayRequestError(Exception):
    """A request of ours got no answer (RequestFailed, timeout, or the runtime closed)."""

    def __init__(self, reason: str) -> None:
        super().__init__(reason)
        self.reason = reason


def _time_out(future: asyncio.Future[T], timeout: float) -> None:
    if not future.done():
        future.set_exception(OverlayRequestError(f"no answer within {timeout} s"))


def _short(node_id: int) -> str:
    return f"{node_id:032x}"[:8]


_COUNTER_KEYS: dict[tuple[str, int], str] = {}  # at most 2 x 65,536 (the code is 16 bits)


def _code_name(code: int) -> str:
    try:
        return MessageCode(code).name
    except ValueError:
        return f"code_{code:#06x}"


def _raw_message_code(data: bytes, header: ForwardingHeader) -> int | None:
    """The message code of a message whose header parsed but whose rest did not."""
    if len(data) < HEADER_SIZE:
        return None
    lists = sum(_LIST_LENGTHS.unpack_from(data, HEADER_SIZE - _LIST_LENGTHS.size))
    offset = HEADER_SIZE + lists
    if len(data) < offset + 2:
        return None
    return int.from_bytes(data[offset : offset + 2], "big")


class OverlayRuntime:
    def __init__(
        self,
        *,
        node_id: int,
        config: ChordConfig,
        host: str,
        port: int,
        rng: random.Random | None = None,
        ssl_context: ssl.SSLContext | None = None,
        client_ssl_context: ssl.SSLContext | None = None,
        exp_probe: Callable[[], dict[str, object]] | None = None,
        num_resources: Callable[[], int] | None = None,
        app_handler: AppHandler | None = None,
        clock: Callable[[], float] = time.monotonic,
        link_config: LinkConfig | None = None,
        backend: RecordBackend | None = None,
        durability: str = "sync",
        replication: ReplicationConfig | None = None,
        operations: Mapping[int, KindOperation] | None = None,
    ) -> None:
        if durability not in ("sync", "async"):
            raise ValueError(f"durability must be 'sync' or 'async', got {durability!r}")
        self._backend = backend
        self._durable = durability == "sync" and backend is not None
        self._replication = replication
        self._operations = operations
        self._held: list[Action] = []  # actions waiting for a flush
        self._flush_needed = False
        self._flusher: asyncio.Task[None] | None = None
        self._flush_pool: ThreadPoolExecutor | None = None
        self._node_id = node_id
        self._config = config
        self._rng = rng or random.Random()
        self._exp_probe = exp_probe
        self._num_resources = num_resources
        self._app_handler = app_handler
        self._clock = clock
        self._overlay = overlay_hash(config.overlay_name)
        self._links = LinkLayer(
            host,
            port,
            on_message=self._on_payload,
            on_link_failed=self._on_link_failed,
            ssl_context=ssl_context,
            client_ssl_context=client_ssl_context,
            config=link_config,
        )
        self._core: OverlayCore | None = None
        self._address: Address | None = None
        self._listeners: list[Callable[[Event], None]] = []
        self._requests: dict[int, asyncio.Future[Message]] = {}
        self._local: dict[int, asyncio.Future[LocalAnswer]] = {}  # data requests of call()
        self._next_token = 0
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer: asyncio.Task[None] | None = None
        self._wake = asyncio.Event()
        self._sleeping_until: float | None = None
        self._state_changed = asyncio.Event()
        self._closed = False
        self._counters: dict[str, int] = {
            "decode_errors": 0,
            "wrong_overlay": 0,
            "encode_errors": 0,
            "oversized": 0,
            "link_failures": 0,
            "dropped": 0,
            "app_requests": 0,
            "app_errors": 0,
            "requests_completed": 0,
            "requests_failed": 0,
            "peer_errors": 0,
            "fsyncs": 0,
            "flush_errors": 0,
        }

    # --- properties -------------------------------------------------------------
    @property
    def node_id(self) -> int:
        return self._node_id

    @property
    def address(self) -> Address:
        if self._address is None:
            raise RuntimeError("the runtime is not started")
        return self._address

    @property
    def core(self) -> OverlayCore:
        if self._core is None:
            raise RuntimeError("the runtime is not started")
        return self._core

    @property
    def peer(self) -> ChordPeer:
        return self.core.peer

    @property
    def state(self) -> PeerState:
        return self._core.state if self._core is not None else PeerState.INIT

    @property
    def counters(self) -> dict[str, int]:
        """Messages sent/received per code name, decode errors, link failures…; the link
        layer's own counters are included with a ``link.`` prefix."""
        merged = dict(self._counters)
        merged.update({f"link.{k}": v for k, v in self._links.counters.items()})
        replicator = self.replicator
        if replicator is not None:
            merged.update({f"replication.{k}": v for k, v in replicator.counters.items()})
        return merged

    @property
    def replicator(self) -> Replicator | None:
        """The data plane when a backend was given (counts, counters)."""
        return self._core.replicator if self._core is not None else None

    @property
    def links(self) -> LinkLayer:
        return self._links

    def link_stats(self) -> list[LinkStats]:
        return self._links.stats()

    def view(self) -> PeerView:
        return self.core.view(self._clock())

    def next_hop(self, destination: Destination) -> int | None:
        """The peer a request to ``destination`` goes to next; None when this one answers."""
        return self.core.peer.next_hop(destination)

    def is_responsible(self, resource: int) -> bool:
        """Whether this peer, joined, answers for ``resource`` now."""
        return self.state is PeerState.JOINED and self.core.peer.is_responsible(resource)

    def add_listener(self, cb: Callable[[Event], None]) -> None:
        self._listeners.append(cb)

    # --- lifecycle -------------------------------------------------------------
    async def start(self, bootstrap: Sequence[Address] = ()) -> Address:
        """Bind, then create the peer (it needs the bound address) and start or join."""
        self._address = await self._links.start()
        now = self._clock()
        self._core = OverlayCore(
            self._node_id,
            self._address,
            self._config,
            self._rng,
            now=now,
            backend=self._backend,
            replication=self._replication,
            operations=self._operations,
            epoch_offset=time.time() - now,
            exp_probe=self._exp_probe,
            num_resources=self._num_resources,
        )
        self._timer = asyncio.create_task(self._timer_loop(), name=f"chord-{_short(self._node_id)}")
        self._call(lambda core, now: core.start(now, tuple(bootstrap)))
        log.info("node %s listening on %s", _short(self._node_id), self._address)
        return self._address

    async def wait_state(self, state: PeerState, timeout: float) -> None:
        """Return once the peer is in ``state``; TimeoutError after ``timeout`` seconds."""
        async with asyncio.timeout(timeout):
            while self.state is not state:
                self._state_changed.clear()
                await self._state_changed.wait()

    async def request(
        self,
        destinations: Sequence[Destination],
        body: MessageBody,
        timeout: float | None = None,
    ) -> Message:
        """Originate a request and return its answer (which may carry an ErrorResponse)."""
        if self._closed:
            raise OverlayRequestError("runtime closed")
        core = self.core
        future: asyncio.Future[Message] = asyncio.get_running_loop().create_future()
        transaction_id = core.request(tuple(destinations), body, self._clock())
        self._requests[transaction_id] = future
        self._drain()
        return await self._within(future, timeout, lambda: self._requests.pop(transaction_id, None))

    @staticmethod
    async def _within(
        future: asyncio.Future[T], timeout: float | None, forget: Callable[[], object]
    ) -> T:
        # A timer on the future itself: wait_for + shield would cost two more tasks each time.
        timer = (
            None
            if timeout is None
            else asyncio.get_running_loop().call_later(timeout, _time_out, future, timeout)
        )
        try:
            return await future
        finally:
            if timer is not None:
                timer.cancel()
            forget()

    async def ask(self, body: StoreReq | FetchReq | ApplyReq, timeout: float) -> MessageBody:
        """The answer's body of :meth:`call`."""
        return (await self.call(body, timeout)).body

    async def call(self, body: StoreReq | FetchReq | ApplyReq, timeout: float) -> LocalAnswer:
        """One Store, Fetch or Apply at ``body.resource``: the answer (which may be an
        ErrorResponse, Request_Timeout when the ring gave up on it) and the peer that gave
        it. When this node is responsible for the resource it is served here with no overlay
        message, under the same rules (replica copies, and the flush before the answer in
        sync durability); otherwise it goes through the ring. OverlayRequestError when no
        answer came within ``timeout`` s."""
        if self._closed:
            raise OverlayRequestError("runtime closed")
        core = self.core
        token = self._next_token
        self._next_token += 1
        future: asyncio.Future[LocalAnswer] = asyncio.get_running_loop().create_future()
        self._local[token] = future
        core.submit(token, body, self._clock())
        self._drain()
        return await self._within(future, timeout, lambda: self._local.pop(token, None))

    async def leave(self, timeout: float = 10.0) -> None:
        """Graceful: the peer tells its neighbours, we wait for LEFT, then close sockets."""
        if self._core is not None and not self._closed:
            if self.state not in (PeerState.LEAVING, PeerState.LEFT):
                self._call(lambda core, now: core.leave(now))
            try:
                await self.wait_state(PeerState.LEFT, timeout)
            except TimeoutError:
                log.warning("node %s: leave not finished in %s s", _short(self._node_id), timeout)
        await self._shutdown(flush=True)

    async def close(self) -> None:
        """Abrupt stop: no leave, sockets reset, our pending requests fail."""
        await self._shutdown(flush=False)

    async def _shutdown(self, *, flush: bool) -> None:
        if self._closed:
            return
        self._closed = True
        tasks = [t for t in (self._timer, self._flusher, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError):
                await task
        await self._links.close(flush=flush)
        self._held.clear()
        if self._flush_pool is not None:
            self._flush_pool.shutdown(wait=True)
        closed = OverlayRequestError("runtime closed")
        for future in self._requests.values():
            if not future.done():
                future.set_exception(closed)
        for local in self._local.values():
            if not local.done():
                local.set_exception(closed)
        self._requests.clear()
        self._local.clear()

    # --- feeding the peer -------------------------------------------------------
    def _call(self, fn: Callable[[OverlayCore, float], object]) -> None:
        if self._core is None or self._closed:
            return
        try:
            fn(self._core, self._clock())
        except Exception:
            # A peer bug on one input must not take the node down; it is loud in the log.
            self._counters["peer_errors"] += 1
            log.exception("ChordPeer failed")
        self._drain()

    def _on_payload(self, link: Link, data: bytes) -> None:
        if self._core is None or self._closed:
            return
        try:
            message = decode_message(data)
        except CodecError as err:
            self._undecodable(link, data, err)
            return
        header = message.header
        if header.via_list and isinstance(header.via_list[-1], NodeDestination):
            # Every sender puts itself last in the via list: that names the link's far end.
            self._links.bind_node(link, header.via_list[-1].node_id)
        self._count("received", message.code)
        if header.overlay != self._overlay:
            self._counters["wrong_overlay"] += 1
            if message.is_request:
                self._answer_on(
                    link,
                    header,
                    ErrorCode.INCOMPATIBLE_WITH_OVERLAY,
                    f"overlay {header.overlay:#010x} is not {self._overlay:#010x}",
                )
            return
        self._call(lambda core, now: core.receive(message, now))

    def _undecodable(self, link: Link, data: bytes, err: CodecError) -> None:
        self._counters["decode_errors"] += 1
        try:
            header = decode_header(data)
        except CodecError:
            log.debug("dropping undecodable frame on %r: %s", link, err)
            return
        code = _raw_message_code(data, header)
        log.debug("undecodable message (code %s) on %r: %s", code, link, err)
        if code is not None and is_request_code(code):
            self._answer_on(link, header, ErrorCode.INVALID_MESSAGE, str(err))

    def _answer_on(self, link: Link, request: ForwardingHeader, code: int, info: str) -> None:
        """An error answer sent straight back on the link the request came in on."""
        header = ForwardingHeader(
            overlay=request.overlay,
            transaction_id=request.transaction_id,
            destination_list=tuple(reversed(request.via_list)),
            via_list=(NodeDestination(self._node_id),),
            ttl=self._config.initial_ttl,
        )
        answer = Message(header, ErrorResponse(code, info.encode("utf-8")[:0xFFFF]))
        try:
            self._links.send_on(link, encode_message(answer))
        except (CodecError, ValueError) as err:
            self._counters["encode_errors"] += 1
            log.warning("cannot send error answer: %s", err)
            return
        self._count("sent", answer.code)

    def _on_link_failed(self, node_id: int | None, address: Address | None) -> None:
        self._counters["link_failures"] += 1
        self._call(lambda core, now: core.link_failed(node_id, address, now))

    # --- executing the peer's actions -------------------------------------------
    def _drain(self) -> None:
        core = self._core
        if core is None:
            return
        actions = core.take_actions()
        if actions:
            if self._flusher is not None:
                self._held.extend(actions)  # behind a barrier already: keep the order
            else:
                barrier = _first_flush(actions) if self._durable else None
                if barrier is None:
                    self._execute(actions)
                else:
                    self._execute(actions[:barrier])
                    self._held = actions[barrier:]
                    self._flusher = asyncio.create_task(self._flush_loop())
        self._rearm()

    def _execute(self, actions: list[Action]) -> None:
        for action in actions:
            if isinstance(action, Send):
                self._send(action)
            elif not isinstance(action, Flush):
                self._event(action)

    async def _flush_loop(self) -> None:
        """At a barrier: flush, then release what waited for it; again for barriers that came
        in meanwhile. One flush covers every barrier present when it starts: their writes were
        made (on this thread) before they were queued."""
        backend = self._backend
        assert backend is not None
        if self._flush_pool is None:
            self._flush_pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lmdb-flush")
        loop = asyncio.get_running_loop()
        try:
            while self._held and not self._closed:
                held, self._held = self._held, []
                barrier = _first_flush(held)
                if barrier is None:
                    self._execute(held)
                    continue
                self._execute(held[:barrier])
                try:
                    await loop.run_in_executor(self._flush_pool, backend.flush)
                except Exception:
                    # Not durable: these answers must not go out claiming it.
                    self._counters["flush_errors"] += 1
                    log.exception("flushing the record store failed; answers dropped")
                    continue
                self._counters["fsyncs"] += 1
                self._execute(held[barrier:])
        finally:
            self._flusher = None
            self._rearm()

    def _send(self, action: Send) -> None:
        message = action.message
        try:
            data = encode_message(message)
            limit = self._links.config.max_payload
            if len(data) > limit:
                # Our fault, not the next hop's: it must not be declared dead for it.
                self._counters["oversized"] += 1
                log.warning(
                    "%s of %d bytes exceeds the %d-byte frame limit",
                    _code_name(message.code),
                    len(data),
                    limit,
                )
                stand_in = oversized_answer(message, len(data), limit)
                if stand_in is None:
                    return
                message = stand_in
                data = encode_message(message)
            self._links.send(action.next_hop, action.address, data)
        except (CodecError, ValueError) as err:
            self._counters["encode_errors"] += 1
            log.warning("cannot send %s: %s", _code_name(message.code), err)
            return
        self._count("sent", message.code)

    def _event(self, event: Event) -> None:
        if isinstance(event, AppRequest):
            self._counters["app_requests"] += 1
            self._spawn(self._serve(event.message))
        elif isinstance(event, RequestCompleted):
            self._counters["requests_completed"] += 1
            future = self._requests.get(event.transaction_id)
            if future is not None and not future.done():
                future.set_result(event.response)
        elif isinstance(event, LocalAnswer):
            local = self._local.get(event.token)
            if local is not None and not local.done():
                local.set_result(event)
            return  # ours alone: not for listeners
        elif isinstance(event, RequestFailed):
            self._counters["requests_failed"] += 1
            future = self._requests.get(event.transaction_id)
            if future is not None and not future.done():
                future.set_exception(OverlayRequestError(event.reason))
        elif isinstance(event, StateChanged):
            log.info("node %s: state %s", _short(self._node_id), event.state.value)
            self._state_changed.set()
        elif isinstance(event, NeighborsChanged):
            log.info(
                "node %s: predecessors [%s] successors [%s]",
                _short(self._node_id),
                " ".join(_short(p) for p in event.predecessors),
                " ".join(_short(s) for s in event.successors),
            )
        elif isinstance(event, PeerLost):
            log.warning(
                "node %s: lost neighbour %s at %s (%s)",
                _short(self._node_id),
                _short(event.node_id),
                event.address or "unknown address",
                event.reason.value,
            )
        elif isinstance(event, Dropped):
            self._counters["dropped"] += 1
            log.debug("node %s dropped a message: %s", _short(self._node_id), event.reason)
        for listener in self._listeners:
            try:
                listener(event)
            except Exception:
                log.exception("event listener failed")

    def _spawn(self, coro: Coroutine[object, object, None]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _serve(self, request: Message) -> None:
        body: MessageBody
        if self._app_handler is None:
            body = ErrorResponse(ErrorCode.FORBIDDEN, b"no application handler")
        else:
            try:
                body = await self._app_handler(request)
            except Exception as err:
                self._counters["app_errors"] += 1
                log.exception("application handler failed on %s", _code_name(request.code))
                body = ErrorResponse(ErrorCode.INVALID_MESSAGE, f"handler failed: {err}".encode())
        self._call(lambda core, now: core.respond(request, body, now))

    def _count(self, direction: str, code: int) -> None:
        # Once per message sent or received: the counter names are made once per code.
        key = _COUNTER_KEYS.get((direction, code))
        if key is None:
            key = _COUNTER_KEYS[(direction, code)] = f"{direction}.{_code_name(code)}"
        self._counters[key] = self._counters.get(key, 0) + 1

    # --- timers -------------------------------------------------------------------
    def _rearm(self) -> None:
        """Wake the timer loop if the peer now wants to be ticked earlier than planned."""
        if self._core is None:
            return
        deadline = self._core.next_deadline()
        if deadline is not None and (
            self._sleeping_until is None or deadline < self._sleeping_until
        ):
            self._wake.set()

    async def _timer_loop(self) -> None:
        core = self.core
        while not self._closed:
            deadline = core.next_deadline()
            now = self._clock()
            if deadline is not None and deadline <= now:
                self._sleeping_until = None
                self._call(lambda core, now: core.tick(now))
                # Yield so a long backlog of deadlines does not starve the sockets.
                await asyncio.sleep(0)
                continue
            self._sleeping_until = deadline
            self._wake.clear()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(
                    self._wake.wait(), None if deadline is None else deadline - now
                )


def _first_flush(actions: list[Action]) -> int | None:
    for i, action in enumerate(actions):
        if isinstance(action, Flush):
            return i
    return None
