"""A small SIP UDP client for the workload: REGISTER, Contact removal and redirect lookups.

One socket per worker; a request is retransmitted as an RFC 3261 UDP client does (T1 doubling
up to T2) until its final answer or the client's own deadline. No final answer is an
indeterminate outcome, not a failure: the request may have been applied.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
import secrets
from collections.abc import Sequence
from dataclasses import dataclass

T1 = 0.5
T2 = 4.0


@dataclass(frozen=True)
class ContactInfo:
    uri: str
    expires: int | None


@dataclass(frozen=True)
class Answer:
    status: int
    reason: str
    contacts: tuple[ContactInfo, ...]
    to_tag: str | None


def new_branch() -> str:
    return "z9hG4bK" + secrets.token_hex(8)


def _split_contacts(value: str) -> list[str]:
    # Commas inside <...> or quotes belong to the URI or display name, not the list.
    parts: list[str] = []
    current: list[str] = []
    depth, quoted = 0, False
    for ch in value:
        if ch == '"':
            quoted = not quoted
        elif not quoted and ch == "<":
            depth += 1
        elif not quoted and ch == ">":
            depth -= 1
        if ch == "," and depth == 0 and not quoted:
            parts.append("".join(current).strip())
            current = []
        else:
            current.append(ch)
    if "".join(current).strip():
        parts.append("".join(current).strip())
    return parts


def parse_contact(text: str) -> ContactInfo:
    match = re.search(r"<([^>]*)>(.*)", text)
    uri, params = (match.group(1), match.group(2)) if match else (text.split(";")[0], text)
    expires = re.search(r";\s*expires\s*=\s*(\d+)", params, re.IGNORECASE)
    return ContactInfo(uri.strip(), int(expires.group(1)) if expires else None)


def parse_answer(data: bytes) -> tuple[str, Answer] | None:
    """(Via branch, answer) of a response datagram; None for anything else."""
    text = data.decode("utf-8", "replace")
    head = text.split("\r\n\r\n", 1)[0].split("\r\n")
    status_line = head[0].split(" ", 2)
    if len(status_line) < 2 or status_line[0] != "SIP/2.0" or not status_line[1].isdigit():
        return None
    branch = ""
    contacts: list[ContactInfo] = []
    to_tag = None
    for line in head[1:]:
        name, _, value = line.partition(":")
        key = name.strip().lower()
        if key in ("via", "v") and not branch:
            found = re.search(r";\s*branch=([^;,\s]+)", value)
            branch = found.group(1) if found else ""
        elif key in ("contact", "m"):
            contacts += [parse_contact(c) for c in _split_contacts(value.strip())]
        elif key in ("to", "t"):
            found = re.search(r";\s*tag=([^;\s]+)", value)
            to_tag = found.group(1) if found else None
    reason = status_line[2] if len(status_line) > 2 else ""
    return branch, Answer(int(status_line[1]), reason, tuple(contacts), to_tag)


@dataclass(frozen=True)
class Request:
    method: str
    ruri: str
    aor: str
    call_id: str
    cseq: int
    branch: str
    from_tag: str
    contacts: Sequence[str] = ()
    expires: int | None = None

    def encode(self, via: str) -> bytes:
        lines = [
            f"{self.method} {self.ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {via};branch={self.branch};rport",
            "Max-Forwards: 70",
            f"From: <{self.aor}>;tag={self.from_tag}",
            f"To: <{self.aor}>",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} {self.method}",
            *(f"Contact: {c}" for c in self.contacts),
            *([f"Expires: {self.expires}"] if self.expires is not None else []),
            "User-Agent: p2preg-nemesis",
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()

    def ack(self, via: str, to_tag: str | None) -> bytes:
        to = f"<{self.aor}>" + (f";tag={to_tag}" if to_tag else "")
        lines = [
            f"ACK {self.ruri} SIP/2.0",
            f"Via: SIP/2.0/UDP {via};branch={self.branch};rport",
            "Max-Forwards: 70",
            f"From: <{self.aor}>;tag={self.from_tag}",
            f"To: {to}",
            f"Call-ID: {self.call_id}",
            f"CSeq: {self.cseq} ACK",
            "Content-Length: 0",
            "",
            "",
        ]
        return "\r\n".join(lines).encode()


class _Protocol(asyncio.DatagramProtocol):
    def __init__(self) -> None:
        self.waiting: dict[str, asyncio.Future[Answer]] = {}

    def datagram_received(self, data: bytes, addr: object) -> None:
        parsed = parse_answer(data)
        if parsed is None:
            return
        branch, answer = parsed
        future = self.waiting.get(branch)
        if future is not None and not future.done() and answer.status >= 200:
            future.set_result(answer)


class SipClient:
    def __init__(self, transport: asyncio.DatagramTransport, proto: _Protocol) -> None:
        self._transport = transport
        self._proto = proto
        host, port = transport.get_extra_info("sockname")[:2]
        self.via = f"{host}:{port}"

    @classmethod
    async def open(cls, local_host: str) -> SipClient:
        loop = asyncio.get_running_loop()
        transport, proto = await loop.create_datagram_endpoint(
            _Protocol, local_addr=(local_host, 0)
        )
        return cls(transport, proto)

    async def send(
        self, request: Request, server: tuple[str, int], timeout: float
    ) -> Answer | None:
        """The final answer, or None when none came within ``timeout`` seconds."""
        loop = asyncio.get_running_loop()
        future: asyncio.Future[Answer] = loop.create_future()
        self._proto.waiting[request.branch] = future
        data = request.encode(self.via)
        deadline = loop.time() + timeout
        interval = T1
        try:
            while True:
                # An unreachable host: keep trying until the deadline, as a UA would.
                with contextlib.suppress(OSError):
                    self._transport.sendto(data, server)
                left = deadline - loop.time()
                if left <= 0:
                    return None
                try:
                    answer = await asyncio.wait_for(asyncio.shield(future), min(interval, left))
                except TimeoutError:
                    interval = min(interval * 2, T2)
                    continue
                if request.method == "INVITE":
                    # A non-2xx final answer to INVITE is acknowledged hop by hop.
                    self._transport.sendto(request.ack(self.via, answer.to_tag), server)
                return answer
        finally:
            self._proto.waiting.pop(request.branch, None)
            if not future.done():
                future.cancel()

    def close(self) -> None:
        self._transport.close()
