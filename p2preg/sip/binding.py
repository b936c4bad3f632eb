"""The stored registration binding and its msgpack value for the SIP-BINDING kind.

WIRE.md §5: Kind-ID 0xF0000001, resource name = the AOR without scheme, dictionary
key = "+sip.instance" plus "reg-id" when both are present (RFC 5626), else the
canonical Contact URI; the value is one binding, msgpack-encoded.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any

import msgpack

from p2preg.sip.headers import format_params
from p2preg.sip.uri import Param

SIP_BINDING_KIND = 0xF0000001
_FORMAT_VERSION = 1


@dataclass(frozen=True, slots=True)
class Binding:
    key: str  # dictionary key (see binding_key)
    aor: str  # canonical AOR, e.g. "sip:alice@example.com"
    uri: str  # Contact URI exactly as sent (what goes between < and >)
    params: tuple[Param, ...]  # Contact header params as sent, minus expires and q
    expires_at: float  # wall-clock seconds
    q: str | None  # as sent, e.g. "0.5"
    call_id: str
    cseq: int
    source_host: str
    source_port: int
    transport: str  # "UDP", "TCP", …
    path: tuple[str, ...]  # Path header values (RFC 3327), in order
    instance: str | None  # +sip.instance value as sent (quoted)
    reg_id: int | None
    user_agent: str | None
    last_modified: float
    # The REGISTER that wrote it, as the front node numbered it (0: not numbered): lets the
    # owner recognise that very REGISTER asked again after its answer was lost.
    op_id: int = 0

    def remaining(self, now: float) -> int:
        """Seconds left, rounded up so a fresh 3600 s binding says 3600."""
        return max(0, math.ceil(self.expires_at - now - 1e-6))

    def live(self, now: float) -> bool:
        return self.expires_at > now

    @property
    def q_value(self) -> float:
        # A Contact without q ranks as 1.0 (RFC 3261 §8.3 leaves it to the server).
        try:
            return float(self.q) if self.q is not None else 1.0
        except ValueError:
            return 0.0

    def contact_value(self, now: float) -> str:
        """The Contact header value a 200 OK or 302 lists for this binding."""
        params = format_params(self.params)
        q = f";q={self.q}" if self.q is not None else ""
        return f"<{self.uri}>{params}{q};expires={self.remaining(now)}"

    def describe(self, now: float) -> dict[str, Any]:
        """A JSON-friendly view for the operator surface (like `kamctl ul show`)."""
        return {
            "contact": self.uri,
            "expires_in": self.remaining(now),
            "q": self.q,
            "call_id": self.call_id,
            "cseq": self.cseq,
            "received": f"{self.transport.lower()}:{_hostport(self.source_host, self.source_port)}",
            "path": list(self.path),
            "instance": self.instance,
            "reg_id": self.reg_id,
            "user_agent": self.user_agent,
            "last_modified": self.last_modified,
        }


def _hostport(host: str, port: int) -> str:
    return f"[{host}]:{port}" if ":" in host else f"{host}:{port}"


def binding_key(contact_key: str, instance: str | None, reg_id: int | None) -> str:
    if instance is not None and reg_id is not None:
        return f"{instance};reg-id={reg_id}"
    return contact_key


def encode_binding(b: Binding) -> bytes:
    record = {
        "v": _FORMAT_VERSION,
        "key": b.key,
        "aor": b.aor,
        "uri": b.uri,
        "params": [[k, v] for k, v in b.params],
        "expires_at": b.expires_at,
        "q": b.q,
        "call_id": b.call_id,
        "cseq": b.cseq,
        "src_host": b.source_host,
        "src_port": b.source_port,
        "transport": b.transport,
        "path": list(b.path),
        "instance": b.instance,
        "reg_id": b.reg_id,
        "user_agent": b.user_agent,
        "modified": b.last_modified,
    }
    if b.op_id:
        record["op"] = b.op_id
    # surrogateescape: header text that was not valid UTF-8 round-trips byte for byte.
    data: bytes = msgpack.packb(record, use_bin_type=True, unicode_errors="surrogateescape")
    return data


def _str(rec: dict[str, Any], name: str) -> str:
    value = rec[name]
    if not isinstance(value, str):
        raise ValueError(f"binding field {name} is not a string")
    return value


def _opt_str(rec: dict[str, Any], name: str) -> str | None:
    value = rec.get(name)
    if value is not None and not isinstance(value, str):
        raise ValueError(f"binding field {name} is not a string")
    return value


def _num(rec: dict[str, Any], name: str) -> float:
    value = rec[name]
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"binding field {name} is not a number")
    return float(value)


def _int(rec: dict[str, Any], name: str) -> int:
    value = rec[name]
    if isinstance(value, bool) or not isinstance(value, int):
        raise ValueError(f"binding field {name} is not an integer")
    return value


def decode_binding(data: bytes) -> Binding:
    """Raises ValueError when the bytes are not a binding this version understands."""
    try:
        rec = msgpack.unpackb(data, raw=False, unicode_errors="surrogateescape")
    except Exception as exc:
        raise ValueError(f"binding is not msgpack: {exc}") from None
    if not isinstance(rec, dict) or rec.get("v") != _FORMAT_VERSION:
        raise ValueError("not a version-1 binding record")
    try:
        params_raw = rec["params"]
        path_raw = rec["path"]
        if not isinstance(params_raw, list) or not isinstance(path_raw, list):
            raise ValueError("binding params/path are not lists")
        params: list[Param] = []
        for item in params_raw:
            if (
                not isinstance(item, list)
                or len(item) != 2
                or not isinstance(item[0], str)
                or not (item[1] is None or isinstance(item[1], str))
            ):
                raise ValueError("malformed binding param")
            params.append((item[0], item[1]))
        if not all(isinstance(p, str) for p in path_raw):
            raise ValueError("malformed binding path")
        op_id = rec.get("op", 0)
        if isinstance(op_id, bool) or not isinstance(op_id, int) or not 0 <= op_id < 1 << 64:
            raise ValueError("malformed op id")
        reg_id = rec.get("reg_id")
        if reg_id is not None and (isinstance(reg_id, bool) or not isinstance(reg_id, int)):
            raise ValueError("malformed reg-id")
        return Binding(
            key=_str(rec, "key"),
            aor=_str(rec, "aor"),
            uri=_str(rec, "uri"),
            params=tuple(params),
            expires_at=_num(rec, "expires_at"),
            q=_opt_str(rec, "q"),
            call_id=_str(rec, "call_id"),
            cseq=_int(rec, "cseq"),
            source_host=_str(rec, "src_host"),
            source_port=_int(rec, "src_port"),
            transport=_str(rec, "transport"),
            path=tuple(path_raw),
            instance=_opt_str(rec, "instance"),
            reg_id=reg_id,
            user_agent=_opt_str(rec, "user_agent"),
            last_modified=_num(rec, "modified"),
            op_id=op_id,
        )
    except KeyError as exc:
        raise ValueError(f"binding lacks field {exc}") from None


def key_bytes(key: str) -> bytes:
    """The DictionaryKey octets for a binding key."""
    return key.encode("utf-8", "surrogateescape")
