"""The sans-I/O SIP pipeline: bytes in, a step out (REGISTRAR.md, RFC 3261 §8.2).

The node drives it like this::

    step = core.receive(data, source, now)          # or receive(..., stream=True)
    Respond  -> send step.data (UDP: to step.dest; streams: on the connection)
    Drop     -> nothing to send
    NeedRegister -> fetch the bindings of step.plan.resource_name, then
                    decision = core.decide_register(step, bindings, now)
                    store decision.upserts / decision.removals (if decision.changed)
                    send core.respond(step, decision.reply, now)
                    (on overlay failure: core.respond(step, core.unavailable(), now))
    NeedLookup   -> fetch, then core.respond(step, core.decide_lookup(step, bindings, now), now)

``core.respond`` records the final response in the transaction cache, so a
retransmission replays those exact bytes and is never applied twice.
:class:`LocalRegistrar` is the same pipeline over an in-memory binding table.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from p2preg.sip.binding import Binding, decode_binding, encode_binding
from p2preg.sip.message import SipParseError, SipRequest, SipResponse
from p2preg.sip.parser import FramingError, parse_message
from p2preg.sip.register_op import RegisterOp
from p2preg.sip.registrar import (
    ALLOW_HEADER,
    ALLOWED_METHODS,
    KNOWN_METHODS,
    LOOKUP_METHODS,
    SUPPORTED_OPTIONS,
    LookupPlan,
    RegisterDecision,
    RegisterPlan,
    RegistrarConfig,
    decide_lookup,
    decide_register,
    options_reply,
    plan_lookup,
    plan_register,
    register_op,
    register_reply,
)
from p2preg.sip.responses import Reply, Source, build_response, response_destination
from p2preg.sip.transactions import Status, TransactionCache, TransactionKey, transaction_key
from p2preg.sip.uri import SipUri


@dataclass(frozen=True, slots=True)
class Respond:
    data: bytes
    dest: tuple[str, int]  # for UDP; stream transports answer on the connection
    status: int
    method: str | None  # None when the request could not be parsed that far
    replayed: bool = False


@dataclass(frozen=True, slots=True)
class Drop:
    reason: str


@dataclass(frozen=True, slots=True)
class NeedRegister:
    request: SipRequest
    plan: RegisterPlan
    source: Source
    txn: TransactionKey


@dataclass(frozen=True, slots=True)
class NeedLookup:
    request: SipRequest
    plan: LookupPlan
    source: Source
    txn: TransactionKey


Step = Respond | Drop | NeedRegister | NeedLookup
Need = NeedRegister | NeedLookup

# Only a datagram starting with one of these can be a keepalive (all CR, LF, NUL).
_KEEPALIVE_STARTS = (b"", b"\r", b"\n", b"\x00")


class SipCore:
    def __init__(
        self, config: RegistrarConfig | None = None, cache: TransactionCache | None = None
    ) -> None:
        self.config = config or RegistrarConfig()
        self.cache = cache if cache is not None else TransactionCache()

    # --- entry points ---------------------------------------------------------------

    def receive(self, data: bytes, source: Source, now: float, *, stream: bool = False) -> Step:
        if data[:1] in _KEEPALIVE_STARTS and not data.strip(b"\r\n\x00"):
            return Drop("keepalive")
        try:
            message = parse_message(data, datagram=not stream)
        except SipParseError as exc:
            return self._error(exc, source, now)
        if isinstance(message, SipResponse):
            return Drop("response")  # we send no requests, so no response is ours
        return self.receive_request(message, source, now)

    def reject_framing(self, error: FramingError, source: Source, now: float) -> Step:
        """Answer a stream framing error when the head names a Via; the caller closes."""
        if not error.head:
            return Drop(error.reason)
        try:
            message = parse_message(error.head, datagram=True)
        except SipParseError as exc:
            headers = exc.headers
            if exc.is_response:
                return Drop("response")
        else:
            if isinstance(message, SipResponse):
                return Drop("response")
            headers = message.headers
        framing = SipParseError(error.status, error.reason, headers=headers)
        return self._error(framing, source, now)

    def receive_request(self, request: SipRequest, source: Source, now: float) -> Step:
        if request.method == "ACK":
            return Drop("ACK absorbed")  # ACK is never answered (RFC 3261 §17.2.1)
        try:
            request.vias()
            request.from_()
            request.to()
            request.call_id()
            request.cseq()
            request.max_forwards()
            key = transaction_key(request)
        except SipParseError as exc:
            return self._error(exc, source, now, request.method)
        seen = self.cache.begin(key, now)
        if seen.status is Status.REPLAY:
            assert seen.response is not None and seen.status_code is not None
            return Respond(
                seen.response,
                response_destination(request.headers, source),
                seen.status_code,
                request.method,
                replayed=True,
            )
        if seen.status is Status.PENDING:
            return Drop("retransmission of a request in progress")
        try:
            return self._dispatch(request, source, now, key)
        except SipParseError as exc:
            return self._final(request, source, key, Reply(exc.status, exc.reason), now)
        except Exception:
            # A bug must cost one request, not the node.
            return self._final(request, source, key, Reply(500, "Server Internal Error"), now)

    # --- second half, after the overlay fetch ----------------------------------------

    def decide_register(
        self, need: NeedRegister, bindings: Iterable[Binding], now: float
    ) -> RegisterDecision:
        return decide_register(need.request, need.plan, bindings, now, self.config, need.source)

    def register_op(self, need: NeedRegister, op_id: int) -> RegisterOp:
        """What the owner of the AOR is asked to apply (one ApplyReq)."""
        return register_op(need.plan, self.config, need.source, op_id)

    def register_reply(
        self, need: NeedRegister, status: int, bindings: Iterable[Binding], now: float
    ) -> Reply:
        """The reply to a REGISTER the owner applied (200, with ``bindings``) or refused."""
        return register_reply(need.plan, status, bindings, now, self.config)

    def decide_lookup(self, need: NeedLookup, bindings: Iterable[Binding], now: float) -> Reply:
        return decide_lookup(bindings, now)

    def unavailable(self) -> Reply:
        return Reply(503, "Service Unavailable", (("Retry-After", str(self.config.retry_after)),))

    def respond(self, need: Need, reply: Reply, now: float) -> Respond:
        return self._final(need.request, need.source, need.txn, reply, now)

    def abandon(self, need: Need) -> None:
        """Forget a request that will get no response (e.g. shutting down)."""
        self.cache.forget(need.txn)

    # --- internals --------------------------------------------------------------------

    def _dispatch(
        self, request: SipRequest, source: Source, now: float, key: TransactionKey
    ) -> Step:
        method = request.method
        if method not in KNOWN_METHODS:
            return self._final(
                request, source, key, Reply(501, "Not Implemented", (ALLOW_HEADER,)), now
            )
        if method not in ALLOWED_METHODS:
            return self._final(
                request, source, key, Reply(405, "Method Not Allowed", (ALLOW_HEADER,)), now
            )
        if request.cseq().method != method:
            return self._final(request, source, key, Reply(400, "CSeq method mismatch"), now)
        ruri = request.request_uri()
        if not isinstance(ruri, SipUri):
            return self._final(request, source, key, Reply(416, "Unsupported URI Scheme"), now)
        if ruri.headers:
            return self._final(request, source, key, Reply(400, "Request-URI has headers"), now)
        if method != "CANCEL":
            unknown = [
                t for t in request.option_tags("require") if t.lower() not in SUPPORTED_OPTIONS
            ]
            if unknown:
                reply = Reply(420, "Bad Extension", (("Unsupported", ", ".join(unknown)),))
                return self._final(request, source, key, reply, now)
        if method == "CANCEL":
            return self._final(request, source, key, Reply(200, "OK"), now)
        if method == "OPTIONS" and ruri.user is None:
            return self._final(request, source, key, options_reply(), now)
        if method == "REGISTER":
            plan = plan_register(request, self.config)
            if isinstance(plan, Reply):
                return self._final(request, source, key, plan, now)
            return NeedRegister(request, plan, source, key)
        if method in LOOKUP_METHODS:
            lookup = plan_lookup(request, self.config)
            if isinstance(lookup, Reply):
                return self._final(request, source, key, lookup, now)
            return NeedLookup(request, lookup, source, key)
        return self._final(
            request, source, key, Reply(405, "Method Not Allowed", (ALLOW_HEADER,)), now
        )

    def _final(
        self, request: SipRequest, source: Source, key: TransactionKey, reply: Reply, now: float
    ) -> Respond:
        # Only called once Via and To parsed (receive_request checks them first).
        top_via = request.top_via()
        data = build_response(
            request.headers,
            reply.status,
            reply.reason,
            reply.headers,
            source=source,
            now=now,
            top_via=top_via,
            to_has_tag=request.to().tag is not None,
        )
        self.cache.finish(key, data, reply.status, now)
        return Respond(
            data,
            response_destination(request.headers, source, top_via),
            reply.status,
            request.method,
        )

    def _error(
        self, exc: SipParseError, source: Source, now: float, method: str | None = None
    ) -> Step:
        if not exc.can_respond or exc.headers is None:
            return Drop(f"{exc.status} {exc.reason}")
        data = build_response(exc.headers, exc.status, exc.reason, source=source, now=now)
        return Respond(data, response_destination(exc.headers, source), exc.status, method)


class LocalRegistrar:
    """The whole pipeline over an in-memory binding table standing in for the overlay.

    Bindings are kept encoded, as the overlay would hold them, so the msgpack form is
    exercised on every request.
    """

    def __init__(self, config: RegistrarConfig | None = None) -> None:
        self.core = SipCore(config)
        self.store: dict[str, dict[str, bytes]] = {}

    def bindings(self, resource_name: str) -> list[Binding]:
        return [decode_binding(v) for v in self.store.get(resource_name, {}).values()]

    def handle(
        self, data: bytes, source: Source, now: float, *, stream: bool = False
    ) -> Respond | None:
        step = self.core.receive(data, source, now, stream=stream)
        return self.complete(step, now)

    def complete(self, step: Step, now: float) -> Respond | None:
        if isinstance(step, Respond):
            return step
        if isinstance(step, Drop):
            return None
        current = self.bindings(step.plan.resource_name)
        if isinstance(step, NeedLookup):
            return self.core.respond(step, self.core.decide_lookup(step, current, now), now)
        decision = self.core.decide_register(step, current, now)
        if decision.changed:
            table = self.store.setdefault(step.plan.resource_name, {})
            for key in decision.removals:
                table.pop(key, None)
            for binding in decision.upserts:
                table[binding.key] = encode_binding(binding)
            if not table:
                del self.store[step.plan.resource_name]
        return self.core.respond(step, decision.reply, now)

    def sweep(self, now: float) -> int:
        """Drop expired bindings, as the storage sweeper does; returns how many."""
        removed = 0
        for name in list(self.store):
            table = self.store[name]
            for key, value in list(table.items()):
                if not decode_binding(value).live(now):
                    del table[key]
                    removed += 1
            if not table:
                del self.store[name]
        return removed


def handle_datagram(
    registrar: LocalRegistrar, data: bytes, source: Source, now: float
) -> bytes | None:
    """One UDP datagram through the pure pipeline: the response bytes, or None."""
    result = registrar.handle(data, source, now)
    return result.data if result is not None else None
