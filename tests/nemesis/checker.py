"""The checker: the history against what the healed ring answers.

For every binding (AOR, contact) the history allows a set of final states. A write W can be
the last one to take effect unless an acknowledged write on the same binding was sent after
W's effect was over: after W's answer for an acknowledged W, after ``horizon(W)`` for an
indeterminate one (a timed-out or 5xx request may land later, as late as the end of a fault it
overlapped plus a grace period). When no write was acknowledged, "never written" is possible
too. A registration among the candidates is present at the final read if it surely had not
expired yet, absent if it surely had, either in between: its expiry is counted in the wall
clock of the node that took the request, which the clock-jump nemesis moves by up to 262 s,
and a rewrite takes a storage time above the previous one, which a jumped clock may have put
in the future.

- lost: every possibility says present, and no node returns the binding;
- resurrected: every possibility says absent (removed, or expired), and a node returns it;
- divergent: AORs for which two nodes that answered return different contacts;
- unanswered: (AOR, node) final lookups with no usable answer from a healed ring.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from enum import Enum
from typing import Any

from nemesis.history import Op, OpKind, Outcome

MAYBE_GRACE_S = 20.0
EXPIRY_SLACK_S = 2.0


class Final(Enum):
    PRESENT = "present"
    ABSENT = "absent"


@dataclass(frozen=True)
class FaultWindow:
    start: float
    end: float


@dataclass(frozen=True)
class ClockChange:
    node: int
    t: float
    offset: int


@dataclass(frozen=True)
class FinalRead:
    """What the final lookups returned: per AOR, per node, the contacts (None: no answer)."""

    t_start: float
    t_end: float
    answers: Mapping[str, Mapping[int, frozenset[str] | None]]
    short_lived: Mapping[str, frozenset[str]] = field(default_factory=dict)  # about to expire


@dataclass(frozen=True)
class Finding:
    aor: str
    contact: str | None
    detail: str
    ops: tuple[dict[str, Any], ...] = ()
    returned_by: tuple[int, ...] = ()


@dataclass(frozen=True)
class CheckResult:
    bindings: int
    must_present: int
    must_absent: int
    undetermined: int
    lost: tuple[Finding, ...]
    resurrected: tuple[Finding, ...]
    divergent: tuple[Finding, ...]
    unanswered: tuple[Finding, ...]
    stale_lookups: tuple[Finding, ...] = ()  # during the run; informational (faults going on)


class Checker:
    def __init__(
        self,
        ops: Sequence[Op],
        faults: Sequence[FaultWindow],
        clocks: Sequence[ClockChange],
        grace: float = MAYBE_GRACE_S,
    ) -> None:
        self.ops = [op for op in ops if op.kind is not OpKind.LOOKUP]
        self.lookups = [op for op in ops if op.kind is OpKind.LOOKUP and op.outcome is Outcome.OK]
        self.faults = faults
        self.grace = grace
        self.clocks: dict[int, list[ClockChange]] = defaultdict(list)
        for change in sorted(clocks, key=lambda c: c.t):
            self.clocks[change.node].append(change)
        self.max_future = max((c.offset for c in clocks if c.offset > 0), default=0)

    # --- the model -----------------------------------------------------------------------

    def horizon(self, op: Op) -> float:
        """The latest time ``op`` may take effect."""
        if op.outcome is Outcome.OK:
            return op.t_complete
        end = op.t_complete
        for window in self.faults:
            if window.start <= op.t_complete and window.end >= op.t_invoke:
                end = max(end, window.end)
        return end + self.grace

    def offsets(self, node: int, start: float, end: float) -> list[int]:
        """The clock offsets ``node`` had at some time in [start, end]."""
        current = 0
        seen: list[int] = []
        for change in self.clocks.get(node, []):
            if change.t <= start:
                current = change.offset
            elif change.t <= end:
                seen.append(change.offset)
        return [current, *seen]

    def expiry_window(self, op: Op) -> tuple[float, float]:
        """Earliest and latest harness time at which the binding ``op`` wrote expires."""
        expires = op.granted if op.outcome is Outcome.OK and op.granted is not None else op.expires
        assert expires is not None
        late = self.horizon(op)
        offsets = self.offsets(op.node, op.t_invoke, late)
        # A skewed clock that wrote this binding earlier can push its storage time (and so
        # its expiry) into the future by as much as that skew.
        future = max(max(offsets), self.max_future if self.max_future else 0)
        return (
            op.t_invoke + expires + min(min(offsets), 0) - EXPIRY_SLACK_S,
            late + expires + max(future, 0) + EXPIRY_SLACK_S,
        )

    def writes(self) -> dict[tuple[str, str], list[Op]]:
        contacts: dict[str, set[str]] = defaultdict(set)
        for op in self.ops:
            if op.contact is not None:
                contacts[op.aor].add(op.contact)
        keyed: dict[tuple[str, str], list[Op]] = defaultdict(list)
        for op in self.ops:
            if op.outcome is Outcome.FAIL:
                continue
            targets = [op.contact] if op.contact is not None else sorted(contacts[op.aor])
            for contact in targets:
                keyed[(op.aor, contact)].append(op)
        return keyed

    def possible(self, writes: Sequence[Op], read: FinalRead) -> set[Final]:
        acked = [w for w in writes if w.outcome is Outcome.OK]
        candidates = [
            w for w in writes if not any(o.t_invoke > self.horizon(w) for o in acked if o is not w)
        ]
        result: set[Final] = set() if acked else {Final.ABSENT}
        for w in candidates:
            if w.kind is not OpKind.REGISTER:
                result.add(Final.ABSENT)
                continue
            earliest, latest = self.expiry_window(w)
            if read.t_end < earliest:
                result.add(Final.PRESENT)
            elif read.t_start > latest:
                result.add(Final.ABSENT)
            else:
                result |= {Final.PRESENT, Final.ABSENT}
        return result

    # --- the check -----------------------------------------------------------------------

    def check(self, read: FinalRead) -> CheckResult:
        lost: list[Finding] = []
        resurrected: list[Finding] = []
        must_present = must_absent = undetermined = 0
        keyed = self.writes()
        keys = set(keyed)
        for aor, per_node in read.answers.items():
            for contacts in per_node.values():
                keys |= {(aor, c) for c in contacts or ()}
        for aor, contact in sorted(keys):
            writes = sorted(keyed.get((aor, contact), []), key=lambda o: o.t_invoke)
            possible = self.possible(writes, read)
            per_node = read.answers.get(aor, {})
            holders = tuple(sorted(n for n, cs in per_node.items() if cs and contact in cs))
            answered = [n for n, cs in per_node.items() if cs is not None]
            if possible == {Final.PRESENT}:
                must_present += 1
                if answered and not holders:
                    lost.append(
                        self._finding(
                            aor, contact, "acknowledged, returned by no node", writes, holders
                        )
                    )
            elif possible == {Final.ABSENT}:
                must_absent += 1
                if holders:
                    what = "never acknowledged" if not writes else "removed or expired"
                    resurrected.append(
                        self._finding(aor, contact, f"{what}, returned again", writes, holders)
                    )
            else:
                undetermined += 1
        divergent, unanswered = self._compare(read)
        stale = self.stale_lookups(keyed)
        return CheckResult(
            bindings=len(keys),
            must_present=must_present,
            must_absent=must_absent,
            undetermined=undetermined,
            lost=tuple(lost),
            resurrected=tuple(resurrected),
            divergent=tuple(divergent),
            unanswered=tuple(unanswered),
            stale_lookups=tuple(stale),
        )

    def stale_lookups(self, keyed: Mapping[tuple[str, str], Sequence[Op]]) -> list[Finding]:
        """Lookups during the run that returned a binding every possibility says was gone:
        removed (or expired) by an acknowledged request that ended before the lookup began,
        with no write of it that could have landed since."""
        found = []
        for lookup in self.lookups:
            for contact in lookup.returned:
                writes = keyed.get((lookup.aor, contact), ())
                before = [w for w in writes if w.t_invoke < lookup.t_complete]
                # An acknowledged write still going on when the lookup began may or may not
                # show in it: no verdict then.
                if not before or any(
                    w.outcome is Outcome.OK and w.t_complete >= lookup.t_invoke for w in before
                ):
                    continue
                window = FinalRead(lookup.t_invoke, lookup.t_complete, {})
                if self.possible(before, window) == {Final.ABSENT}:
                    found.append(
                        self._finding(
                            lookup.aor,
                            contact,
                            f"lookup op {lookup.op_id} through node {lookup.node} at "
                            f"{lookup.t_invoke:.1f} s returned a removed binding",
                            before,
                            (lookup.node,),
                        )
                    )
        return found

    def _finding(
        self, aor: str, contact: str, detail: str, writes: Iterable[Op], holders: tuple[int, ...]
    ) -> Finding:
        described = []
        for w in writes:
            entry: dict[str, Any] = {
                "op_id": w.op_id,
                "kind": w.kind.value,
                "outcome": w.outcome.value,
                "status": w.status,
                "node": w.node,
                "t_invoke": round(w.t_invoke, 3),
                "t_complete": round(w.t_complete, 3),
                "expires": w.expires,
                "granted": w.granted,
            }
            if w.kind is OpKind.REGISTER:
                entry["expiry_window"] = [round(x, 1) for x in self.expiry_window(w)]
            described.append(entry)
        return Finding(aor, contact, detail, tuple(described), holders)

    @staticmethod
    def _compare(read: FinalRead) -> tuple[list[Finding], list[Finding]]:
        divergent: list[Finding] = []
        unanswered: list[Finding] = []
        for aor, per_node in sorted(read.answers.items()):
            skip = read.short_lived.get(aor, frozenset())
            views: dict[frozenset[str], list[int]] = defaultdict(list)
            for node, contacts in sorted(per_node.items()):
                if contacts is None:
                    unanswered.append(Finding(aor, None, f"node {node} gave no usable answer"))
                    continue
                views[frozenset(contacts - skip)].append(node)
            if len(views) > 1:
                detail = "; ".join(
                    f"nodes {nodes}: {sorted(view) or 'none'}" for view, nodes in views.items()
                )
                divergent.append(Finding(aor, None, detail))
        return divergent, unanswered
