"""Owner-side operations: a kind's own rules, applied by the peer responsible for a resource.

An ``ApplyReq`` carries an operation for one kind at one resource as opaque bytes. The peer
responsible for the resource hands it, with the kind's live values there, to the
``KindOperation`` the node registered for that kind; the result says what to write (entries,
``exists=False`` to remove one) and which values to answer with. The replicator writes them as
one original store (one transaction, the replica round, the flush) and answers ``ApplyAns``.
A read-modify-write of one resource thus costs one request to its owner instead of a Fetch,
a decision at the front and a conditional Store that may conflict.

The overlay knows nothing of what an operation means (the SIP registrar's rules live in
``p2preg``). Refusals of the kind's rules travel as Error_Forbidden whose info starts with
``REFUSED_PREFIX``; a malformed operation is Error_Invalid_Message.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, Protocol

from overlay.messages import StoredData

REFUSED_PREFIX: Final = "refused: "


@dataclass(frozen=True, slots=True)
class OperationResult:
    """``writes``: entries to store (their storage_time is raised above what is stored if it
    is not already); ``values``: the kind's live values after the writes, for the answer;
    ``refused``: the rules said no (nothing is written), with why."""

    writes: tuple[StoredData, ...] = ()
    values: tuple[StoredData, ...] = ()
    refused: str | None = None


class KindOperation(Protocol):
    def apply(
        self, current: Sequence[StoredData], operation: bytes, now_ms: int
    ) -> OperationResult:
        """``current``: the kind's live values at the resource. Raise ValueError for an
        operation that cannot be read. Pure: no I/O, no clock but ``now_ms``."""
        ...
