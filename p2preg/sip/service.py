"""The SIP front end of a node: transports + the sans-I/O core + bindings in the overlay.

Every message goes through ``SipCore.receive``. What needs no bindings (errors, OPTIONS
to the node, CANCEL, replayed retransmissions) is answered on the spot. A REGISTER or a
lookup becomes a task: fetch the AOR's bindings through the overlay, decide, store
(REGISTER), respond. At most ``max_in_flight`` such tasks run at once; past that bound a
request is answered 503 + Retry-After right away, so overload costs one parse and one
small response instead of an unbounded queue (REGISTRAR.md "Overload").

Node wiring::

    sip = SipService(runtime, registrar_config, host, port, max_in_flight=1000)
    bound_host, bound_port = await sip.start()
    ...
    await sip.stop()          # before runtime.leave()
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import random
import time
from collections.abc import Callable, Iterator
from typing import Any

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import Metric

from p2preg.ring_client import Caller, RingClient
from p2preg.sip.bindings_store import (
    OverlayBindings,
    OverlayUnavailable,
    RegisterRefused,
    StoreRefused,
)
from p2preg.sip.core import Drop, NeedLookup, NeedRegister, Respond, SipCore
from p2preg.sip.metrics import Histogram, counter, gauge
from p2preg.sip.parser import FramingError
from p2preg.sip.registrar import RegistrarConfig
from p2preg.sip.responses import Reply, Source
from p2preg.sip.transport import Responder, SipTransports, StreamLimits

log = logging.getLogger("p2preg.sip")

DEFAULT_MAX_IN_FLIGHT = 1000
_INTERNAL_ERROR = Reply(500, "Server Internal Error")


class SipService:
    def __init__(
        self,
        runtime: Caller,
        registrar_config: RegistrarConfig | None,
        host: str,
        port: int,
        *,
        max_in_flight: int = DEFAULT_MAX_IN_FLIGHT,
        overlay_deadline: float = 5.0,
        overlay_request_timeout: float = 2.0,
        conflict_retries: int = 5,
        limits: StreamLimits | None = None,
        wall_clock: Callable[[], float] = time.time,
        clock: Callable[[], float] = time.monotonic,
        ring: RingClient | None = None,
    ) -> None:
        """``ring``: the node's one ring client (else one of its own over ``runtime``)."""
        if max_in_flight < 1:
            raise ValueError("max_in_flight must be at least 1")
        self.core = SipCore(registrar_config)
        if ring is None:
            ring = RingClient(
                runtime,
                deadline=overlay_deadline,
                attempt_timeout=overlay_request_timeout,
                clock=clock,
            )
        self.bindings = OverlayBindings(ring, conflict_retries=conflict_retries, clock=clock)
        self.max_in_flight = max_in_flight
        self.transports = SipTransports(self, host, port, limits=limits, clock=clock)
        self._wall = wall_clock
        # Numbers each REGISTER's operation (RegisterOp.op_id): unpredictable, not secret.
        self._op_ids = random.Random()
        self._clock = clock
        self._tasks: set[asyncio.Task[None]] = set()
        self._stopping = False
        self.in_flight = 0
        self.requests: dict[str, int] = {}
        self.responses: dict[tuple[str, int], int] = {}
        self.overload_rejections = 0
        self.retransmissions = 0
        self.dropped = 0
        self.register_latency = Histogram(
            "p2preg_sip_register_duration_seconds",
            "REGISTER from receipt to final response, overlay fetch and store included",
        )
        self.lookup_latency = Histogram(
            "p2preg_sip_lookup_duration_seconds",
            "Redirect lookups (INVITE, OPTIONS … to an AOR) from receipt to final response",
        )

    # --- life cycle ---------------------------------------------------------------------

    @property
    def address(self) -> tuple[str, int] | None:
        return self.transports.address

    async def start(self) -> tuple[str, int]:
        """Bind UDP and TCP on the same port (port 0: any free one); returns it."""
        address = await self.transports.start()
        log.info("SIP listening on %s:%s (UDP and TCP)", *address)
        return address

    async def stop(self) -> None:
        """Close the sockets; requests still waiting on the overlay get no answer (the
        client retransmits to another node)."""
        self._stopping = True
        await self.transports.stop()
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        for task in tasks:
            with contextlib.suppress(asyncio.CancelledError, Exception):
                await task

    async def wait_idle(self, timeout: float) -> None:
        """Wait until no overlay-backed request is in flight (tests, graceful stop)."""
        async with asyncio.timeout(timeout):
            while self._tasks:
                await asyncio.wait(list(self._tasks))

    # --- the Receiver interface of the transports ---------------------------------------

    def on_message(
        self, data: bytes, source: Source, responder: Responder, *, stream: bool
    ) -> None:
        received = self._clock()
        now = self._wall()
        step = self.core.receive(data, source, now, stream=stream)
        if isinstance(step, Respond):
            if step.method is not None:
                self._count_request(step.method)
            if step.replayed:
                self.retransmissions += 1
            self._send(responder, step)
            return
        if isinstance(step, Drop):
            self.dropped += 1
            return
        self._count_request(step.request.method)
        if self.in_flight >= self.max_in_flight or self._stopping:
            self.overload_rejections += 1
            self._send(responder, self.core.respond(step, self.core.unavailable(), now))
            return
        self.in_flight += 1
        if isinstance(step, NeedRegister):
            coro = self._register(step, responder, received)
        else:
            coro = self._lookup(step, responder, received)
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    def on_framing_error(self, error: FramingError, source: Source, responder: Responder) -> None:
        step = self.core.reject_framing(error, source, self._wall())
        if isinstance(step, Respond):
            self._send(responder, step)
        else:
            self.dropped += 1

    # --- overlay-backed requests ---------------------------------------------------------

    async def _register(self, need: NeedRegister, responder: Responder, received: float) -> None:
        core = self.core
        reply: Reply
        try:
            if need.plan.is_query:  # nothing to apply: one Fetch
                state = await self.bindings.fetch(need.plan.resource_name)
                now = self._wall()
                live = [b for b in state.bindings.values() if b.live(now)]
                reply = core.register_reply(need, 200, live, now)
            else:
                op = core.register_op(need, self._op_ids.getrandbits(64))
                bindings = await self.bindings.register(need.plan.resource_name, op)
                reply = core.register_reply(need, 200, bindings, self._wall())
        except RegisterRefused as exc:
            reply = core.register_reply(need, exc.status, (), self._wall())
        except OverlayUnavailable as exc:
            log.info("REGISTER %s: 503, %s", need.plan.aor, exc)
            reply = core.unavailable()
        except StoreRefused as exc:
            log.warning("REGISTER %s: 500, %s", need.plan.aor, exc)
            reply = _INTERNAL_ERROR
        except asyncio.CancelledError:
            core.abandon(need)
            raise
        except Exception:
            log.exception("REGISTER %s failed", need.plan.aor)
            reply = _INTERNAL_ERROR
        finally:
            self.in_flight -= 1
        self._send(responder, core.respond(need, reply, self._wall()))
        self.register_latency.observe(self._clock() - received)

    async def _lookup(self, need: NeedLookup, responder: Responder, received: float) -> None:
        core = self.core
        reply: Reply
        try:
            state = await self.bindings.fetch(need.plan.resource_name)
            reply = core.decide_lookup(need, state.bindings.values(), self._wall())
        except OverlayUnavailable as exc:
            log.info("%s %s: 503, %s", need.request.method, need.plan.aor, exc)
            reply = core.unavailable()
        except StoreRefused as exc:
            log.warning("%s %s: 500, %s", need.request.method, need.plan.aor, exc)
            reply = _INTERNAL_ERROR
        except asyncio.CancelledError:
            core.abandon(need)
            raise
        except Exception:
            log.exception("%s %s failed", need.request.method, need.plan.aor)
            reply = _INTERNAL_ERROR
        finally:
            self.in_flight -= 1
        self._send(responder, core.respond(need, reply, self._wall()))
        self.lookup_latency.observe(self._clock() - received)

    def _send(self, responder: Responder, step: Respond) -> None:
        key = (step.method or "unknown", step.status)
        self.responses[key] = self.responses.get(key, 0) + 1
        responder.send(step.data, step.dest)

    def _count_request(self, method: str) -> None:
        # Methods are tokens a client chooses: keep the label set bounded.
        label = method if method in _METHOD_LABELS else "other"
        self.requests[label] = self.requests.get(label, 0) + 1

    # --- metrics --------------------------------------------------------------------------

    def metrics(self) -> dict[str, Any]:
        stats = self.bindings.stats
        return {
            "requests": dict(self.requests),
            "responses": {f"{m} {c}": n for (m, c), n in self.responses.items()},
            "in_flight": self.in_flight,
            "max_in_flight": self.max_in_flight,
            "overload_rejections": self.overload_rejections,
            "retransmissions": self.retransmissions,
            "dropped": self.dropped,
            "register_count": self.register_latency.count,
            "register_p50_s": self.register_latency.quantile(0.5),
            "register_p99_s": self.register_latency.quantile(0.99),
            "overlay_fetches": stats.fetches,
            "overlay_stores": stats.stores,
            "generation_conflicts": stats.conflicts,
            "overlay_retries": stats.retries,
            "overlay_failures": stats.failures,
            "transport": dict(self.transports.counters),
            "tcp_connections": len(self.transports.connections),
        }

    def collect(self) -> Iterator[Metric]:
        """The front end's metric families for GET /metrics (no AOR ever appears as a label).
        A ``prometheus_client`` collector: register the service in a CollectorRegistry."""
        stats = self.bindings.stats
        t = self.transports.counters
        yield counter(
            "p2preg_sip_requests_total",
            "SIP requests received, by method (methods outside RFC 3261 and its extensions "
            "count as other)",
            {(m,): n for m, n in self.requests.items()},
            ["method"],
        )
        yield counter(
            "p2preg_sip_responses_total",
            "SIP responses sent, by request method and status code",
            {(m, str(c)): n for (m, c), n in self.responses.items()},
            ["method", "code"],
        )
        yield self.register_latency.family()
        yield self.lookup_latency.family()
        yield stats.fetch_latency.family()
        yield stats.store_latency.family()
        yield counter(
            "p2preg_sip_overload_rejections_total",
            "Requests answered 503 because max_in_flight overlay-backed requests were running",
            self.overload_rejections,
        )
        yield counter(
            "p2preg_sip_retransmissions_total",
            "Retransmitted requests answered from the transaction cache",
            self.retransmissions,
        )
        yield counter(
            "p2preg_sip_dropped_total",
            "Messages dropped without a response (unparseable, responses, ACKs, keepalives)",
            self.dropped,
        )
        yield counter(
            "p2preg_sip_generation_conflicts_total",
            "Conditional stores refused with Generation_Counter_Too_Low (then retried)",
            stats.conflicts,
        )
        yield counter(
            "p2preg_sip_overlay_retries_total",
            "Overlay requests retried after a timeout or a transient error",
            stats.retries,
        )
        yield counter(
            "p2preg_sip_overlay_failures_total",
            "Overlay operations given up (answered 503)",
            stats.failures,
        )
        yield counter(
            "p2preg_sip_tcp_connections_total", "TCP connections accepted", t["tcp_accepted"]
        )
        yield counter(
            "p2preg_sip_tcp_closed_total",
            "TCP connections closed by us, by reason",
            {
                ("limit",): t["tcp_rejected"],
                ("framing",): t["tcp_framing_errors"],
                ("half_open",): t["tcp_closed_half_open"],
                ("idle",): t["tcp_closed_idle"],
                ("slow_reader",): t["tcp_slow_readers"],
            },
            ["reason"],
        )
        yield gauge(
            "p2preg_sip_in_flight", "Overlay-backed SIP requests in progress", self.in_flight
        )
        yield gauge(
            "p2preg_sip_tcp_connections",
            "Open SIP TCP connections",
            len(self.transports.connections),
        )

    def prometheus_lines(self) -> list[str]:
        """The Prometheus text of this service's families alone (tests, debugging)."""
        registry = CollectorRegistry(auto_describe=False)
        registry.register(self)
        return generate_latest(registry).decode().splitlines()


_METHOD_LABELS = frozenset(
    {
        "REGISTER",
        "INVITE",
        "ACK",
        "CANCEL",
        "OPTIONS",
        "MESSAGE",
        "SUBSCRIBE",
        "REFER",
        "BYE",
        "PRACK",
        "UPDATE",
        "INFO",
        "NOTIFY",
        "PUBLISH",
    }
)
