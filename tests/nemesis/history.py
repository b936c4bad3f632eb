"""The history: every client operation (sent, answered) and every fault, with timestamps.

Times are seconds on the harness's monotonic clock since the run started (``t``), plus the
wall time of the harness (``wall``) for reading node logs side by side. The JSONL file has one
line per event: ``invoke`` when a request is sent, ``complete`` when its outcome is known,
``fault`` for nemesis actions.
"""

from __future__ import annotations

import json
import time
from dataclasses import asdict, dataclass
from enum import Enum
from pathlib import Path
from typing import Any, TextIO


class OpKind(Enum):
    REGISTER = "register"  # a contact added or refreshed
    REMOVE = "remove"  # one contact with expires=0
    REMOVE_ALL = "remove_all"  # Contact: * with Expires: 0
    LOOKUP = "lookup"  # INVITE or OPTIONS to the AOR, answered by 302 / 480


class Outcome(Enum):
    OK = "ok"  # 2xx (or the lookup's 302/480): it happened
    FAIL = "fail"  # a definite refusal (4xx): it did not happen
    MAYBE = "maybe"  # timeout or 5xx: it may have happened, now or later


def outcome_of(status: int | None, kind: OpKind) -> Outcome:
    if status is None:
        return Outcome.MAYBE
    if kind is OpKind.LOOKUP:
        return Outcome.OK if status in (302, 480) else Outcome.FAIL
    if 200 <= status < 300:
        return Outcome.OK
    # 408 is a timeout seen by the server; 5xx includes 503 "the ring did not answer in time",
    # after which the store may still land.
    if status == 408 or status >= 500:
        return Outcome.MAYBE
    return Outcome.FAIL


@dataclass(frozen=True)
class Op:
    op_id: int
    worker: int
    kind: OpKind
    aor: str
    contact: str | None  # None for REMOVE_ALL and LOOKUP
    expires: int | None  # requested
    node: int  # the host the request went to
    call_id: str
    cseq: int
    t_invoke: float
    t_complete: float
    status: int | None
    outcome: Outcome
    granted: int | None  # the expires the 200 gave our contact
    returned: tuple[str, ...]  # contacts in the answer (200's binding set, 302's targets)

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        data["outcome"] = self.outcome.value
        data["returned"] = list(self.returned)
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> Op:
        fields = dict(data)
        fields.pop("type", None)
        fields.pop("wall", None)
        fields["kind"] = OpKind(fields["kind"])
        fields["outcome"] = Outcome(fields["outcome"])
        fields["returned"] = tuple(fields["returned"])
        return cls(**fields)


class FaultKind(Enum):
    PARTITION_HALVES = "partition-halves"
    PARTITION_MAJORITY = "partition-majority"
    PARTITION_BRIDGE = "partition-bridge"
    ISOLATE = "isolate"  # one host's link down
    PAUSE = "pause"  # SIGSTOP ... SIGCONT
    KILL = "kill"  # kill -9, restart on the same data directory
    LEAVE = "leave"  # graceful leave, re-join on the same data directory
    CLOCK = "clock"  # wall clock jump of +-262 s
    SCALE = "scale"  # the autoscaler adds nodes, then removes them with a graceful leave


@dataclass(frozen=True)
class FaultEvent:
    episode: int
    kind: FaultKind
    action: str  # "start", "end", or a step ("restart", ...)
    t: float
    detail: str

    def to_json(self) -> dict[str, Any]:
        data = asdict(self)
        data["kind"] = self.kind.value
        return data


class HistoryLog:
    """Appends events to a JSONL file as they happen (a crash keeps what came before)."""

    def __init__(self, path: Path, t0: float) -> None:
        self.path = path
        self.t0 = t0
        self._file: TextIO = open(path, "a", encoding="utf-8")  # noqa: SIM115 (closed in close)

    def now(self) -> float:
        return time.monotonic() - self.t0

    def write(self, kind: str, data: dict[str, Any]) -> None:
        self._file.write(json.dumps({"type": kind, "wall": round(time.time(), 3), **data}) + "\n")

    def invoke(self, op_id: int, worker: int, kind: OpKind, aor: str, node: int, t: float) -> None:
        self.write(
            "invoke",
            {
                "op_id": op_id,
                "worker": worker,
                "kind": kind.value,
                "aor": aor,
                "node": node,
                "t": t,
            },
        )

    def complete(self, op: Op) -> None:
        self.write("complete", op.to_json())

    def fault(self, event: FaultEvent) -> None:
        self.write("fault", event.to_json())
        self._file.flush()

    def close(self) -> None:
        self._file.close()


def read_ops(path: Path) -> list[Op]:
    ops = []
    with open(path, encoding="utf-8") as f:
        for line in f:
            data = json.loads(line)
            if data.get("type") == "complete":
                ops.append(Op.from_json(data))
    return ops
