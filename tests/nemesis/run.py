"""One nemesis run: the ring on namespace hosts, the workload, the fault episodes, the check.

    python scripts/nemesis/run.py --seed 7 --minutes 30 [--out DIR] [--nodes 5] ...

Everything it creates (namespaces, veths, the bridge, node processes) is removed on every exit
path, Ctrl-C and SIGTERM included; leftovers of runs that died harder are removed at start.
The work directory keeps the history (history.jsonl), the node logs and summary.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import random
import secrets
import signal
import statistics
import sys
import time
import urllib.parse
from collections import Counter
from collections.abc import Awaitable, Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import aiohttp

from nemesis.checker import Checker, CheckResult, ClockChange, FaultWindow, FinalRead, Finding
from nemesis.history import (
    FaultEvent,
    FaultKind,
    HistoryLog,
    Op,
    OpKind,
    Outcome,
    outcome_of,
    read_ops,
)
from nemesis.nemeses import Episode, schedule
from nemesis.net import Network, remove_stale
from nemesis.nodes import Node, NodeState, snapshot_code
from nemesis.sip import Answer, Request, SipClient, new_branch

DOMAIN = "nemesis.test"
CLOCK_JUMP_S = 262
Undo = Callable[[], Awaitable[None]]


@dataclass(frozen=True)
class RunConfig:
    seed: int
    fault_seconds: float  # episodes keep starting for this long
    out: Path
    nodes: int = 5
    max_nodes: int = 7
    workers: int = 6
    aors: int = 40
    kinds: tuple[FaultKind, ...] = tuple(FaultKind)
    hold: tuple[float, float] = (3.0, 8.0)
    mix: float = 0.4
    heal_bound: float = 60.0  # the ring must be consistent this long after the last fault
    # How long to wait for the ring to heal after each episode before the next one starts. At
    # heal_bound, a ring not healed by then counts as unhealed; below it, the next episode
    # simply starts on a ring still healing (faults overlap), and only the final heal counts.
    episode_heal_wait: float = 60.0
    quiet: float = 5.0
    sip_timeout: float = 5.0
    long_expires_share: float = 0.7
    code: str = "head"  # run the last commit's packages ("head") or the files as they are
    crash_restarts: int = 3  # a node that exits by itself is restarted this often at most


@dataclass
class Notes:
    """What the run saw besides the checker's counts."""

    crashes: list[dict[str, Any]] = field(default_factory=list)
    unhealed: list[dict[str, Any]] = field(default_factory=list)
    heal_times: list[float] = field(default_factory=list)
    problems: list[str] = field(default_factory=list)
    kinds: Counter[str] = field(default_factory=Counter)
    skipped: Counter[str] = field(default_factory=Counter)
    overlapped: int = 0  # episodes that began before the ring had healed from the one before


class Harness:
    def __init__(self, cfg: RunConfig) -> None:
        self.cfg = cfg
        self.rng = random.Random(cfg.seed)
        self.token = secrets.token_hex(3)
        cfg.out.mkdir(parents=True, exist_ok=True)
        self.t0 = time.monotonic()
        self.log = HistoryLog(cfg.out / "history.jsonl", self.t0)
        self.net: Network | None = None
        self.nodes: dict[int, Node] = {}
        self.scaled: set[int] = set()
        self.expect_exit: set[int] = set()
        self.ops: list[Op] = []
        self.windows: list[FaultWindow] = []
        self.clocks: list[ClockChange] = []
        self.notes = Notes()
        self.aors = [f"sip:u{k}@{DOMAIN}" for k in range(cfg.aors)]
        self.stop = asyncio.Event()
        self._op_ids = 0
        self._session: aiohttp.ClientSession | None = None
        self.result: CheckResult | None = None
        self.summary: dict[str, Any] = {}
        self.t_faults = 0.0
        self.code_dir = cfg.out / "code"
        self.code = ""
        self.crash_counts: Counter[int] = Counter()

    def now(self) -> float:
        return time.monotonic() - self.t0

    def say(self, text: str) -> None:
        print(f"[nemesis {self.now():7.1f}s] {text}", flush=True)

    # --- nodes ---------------------------------------------------------------------------

    def members(self) -> list[Node]:
        """The nodes that should be in the ring once everything is healed."""
        return [n for n in self.nodes.values() if not n.retired and n.state is not NodeState.DOWN]

    def add_node(self) -> Node:
        assert self.net is not None
        index = max(self.nodes, default=-1) + 1
        ns = self.net.add_host(index)
        node = Node(index, ns, self.net.address(index), self.cfg.out, code=self.code_dir)
        self.nodes[index] = node
        return node

    async def admin(
        self, node: Node, method: str, path: str, timeout: float = 5.0
    ) -> tuple[int, Any]:
        assert self._session is not None
        try:
            async with self._session.request(
                method, f"http://{node.admin}{path}", timeout=aiohttp.ClientTimeout(total=timeout)
            ) as resp:
                return resp.status, await resp.json(content_type=None)
        except (aiohttp.ClientError, TimeoutError, ValueError) as exc:
            return 0, {"error": f"{type(exc).__name__}: {exc}"}

    async def wait_joined(self, node: Node, timeout: float) -> str | None:
        """None once ``node`` says it joined; else why not."""
        deadline = time.monotonic() + timeout
        last = "no ready file"
        while time.monotonic() < deadline:
            if not node.alive():
                return f"exited with {node.proc.returncode if node.proc else '?'}"
            if node.ready_info() is not None:
                status, body = await self.admin(node, "GET", "/v1/node", 2.0)
                if status == 200 and body.get("state") == "joined":
                    return None
                last = f"state {body.get('state') if status == 200 else body}"
            await asyncio.sleep(0.1)
        return f"not joined after {timeout:.0f} s ({last})"

    async def start_node(self, node: Node, bootstrap: list[str], what: str) -> None:
        self.expect_exit.discard(node.index)
        node.start(bootstrap)
        problem = await self.wait_joined(node, 30.0)
        if problem is not None:
            self.problem(f"{what} {node.short()}: {problem}; log tail:\n{node.log_tail(15)}")

    def bootstrap_for(self, node: Node) -> list[str]:
        others = [m.overlay for m in self.members() if m is not node and m.node_id]
        return others[:3]

    def problem(self, text: str) -> None:
        self.notes.problems.append(f"t={self.now():.1f}s {text}")
        lines = text.splitlines()
        self.say(f"PROBLEM {lines[0]}" + (f" [...] {lines[-1]}" if len(lines) > 1 else ""))

    async def monitor(self) -> None:
        """Notices nodes that exit without being told to."""
        while not self.stop.is_set():
            for node in list(self.nodes.values()):
                if node.state is NodeState.DOWN or node.index in self.expect_exit:
                    continue
                if node.proc is not None and node.proc.poll() is not None:
                    code = node.proc.returncode
                    node.state = NodeState.DOWN
                    self.notes.crashes.append(
                        {"node": node.index, "node_id": node.node_id, "t": round(self.now(), 2),
                         "exit_code": code, "log_tail": node.log_tail(25)}
                    )  # fmt: skip
                    self.problem(
                        f"{node.short()} exited by itself with {code}; log tail:\n"
                        + node.log_tail(12)
                    )
                    self.crash_counts[node.index] += 1
                    if self.crash_counts[node.index] <= self.cfg.crash_restarts:
                        with contextlib.suppress(Exception):
                            await self.start_node(node, self.bootstrap_for(node), "restart crashed")
            await asyncio.sleep(0.3)

    # --- the ring's consistency -----------------------------------------------------------

    async def ring_problem(self) -> str | None:
        from harness import ring_problem

        members = self.members()
        want = sorted(n.node_id for n in members)
        if not want:
            return "no members"
        views = await asyncio.gather(*(self.admin(n, "GET", "/v1/node", 3.0) for n in members))
        count = len(want)
        for node, (status, body) in zip(members, views, strict=True):
            if status != 200:
                return f"{node.short()} /v1/node: {status} {body}"
            if body.get("state") != "joined":
                return f"{node.short()} state {body.get('state')}"
            at = want.index(node.node_id)
            succ = [s["node_id"] for s in body.get("successors", [])]
            pred = [p["node_id"] for p in body.get("predecessors", [])]
            if count > 1 and (succ[:1] != [want[(at + 1) % count]]):
                return f"{node.short()} successor {[s[:8] for s in succ[:1]]}"
            if count > 1 and (pred[:1] != [want[(at - 1) % count]]):
                return f"{node.short()} predecessor {[p[:8] for p in pred[:1]]}"
        rings = await asyncio.gather(*(self.admin(n, "GET", "/v1/ring", 20.0) for n in members))
        for node, (status, body) in zip(members, rings, strict=True):
            if status != 200:
                return f"ring from {node.short()}: {status} {body}"
            if not body.get("complete", False):
                return f"ring from {node.short()} not closed"
            # Peers lost lately are listed as down ("DN") for minutes: a retired or restarted
            # peer may be, as long as every member answered the walk itself.
            listed = [n for n in body["nodes"] if n.get("status") != "DN" or n["node_id"] in want]
            problem: str | None = ring_problem(listed, want)
            if problem is not None:
                return f"ring from {node.short()}: {problem}"
        return None

    async def wait_healed(self, bound: float, since: float) -> tuple[float | None, str]:
        """Seconds from ``since`` until the ring was consistent (None: not within ``bound``)."""
        last = "not checked"
        while self.now() - since < bound:
            problem = await self.ring_problem()
            if problem is None:
                return self.now() - since, ""
            last = problem
            await asyncio.sleep(0.3)
        return None, last

    # --- the workload ---------------------------------------------------------------------

    def pick_node(self, rng: random.Random) -> Node | None:
        # Clients do not know which hosts are paused or cut off; they only skip hosts that
        # are not running at all (a load balancer's health check would).
        up = [n for n in self.nodes.values() if not n.retired and n.state is not NodeState.DOWN]
        return rng.choice(up) if up else None

    async def worker(self, w: int) -> None:
        assert self.net is not None
        rng = random.Random(self.cfg.seed * 1000 + w)
        client = await SipClient.open(self.net.gateway)
        cseq: Counter[str] = Counter()
        try:
            while not self.stop.is_set():
                node = self.pick_node(rng)
                if node is None:
                    await asyncio.sleep(0.1)
                    continue
                aor = rng.choice(self.aors)
                roll = rng.random()
                contact = f"sip:w{w}c{rng.randrange(2)}@ua.{DOMAIN}"
                if roll < 0.40:
                    kind = OpKind.REGISTER
                    long = rng.random() < self.cfg.long_expires_share
                    expires: int | None = 3600 if long else rng.randint(8, 20)
                elif roll < 0.55:
                    kind, expires = OpKind.REMOVE, 0
                elif roll < 0.60:
                    kind, expires, contact = OpKind.REMOVE_ALL, 0, "*"
                else:
                    kind, expires = OpKind.LOOKUP, None
                await self.one_op(client, w, node, kind, aor, contact, expires, cseq, rng)
                await asyncio.sleep(rng.uniform(0.02, 0.1))
        finally:
            client.close()

    async def one_op(
        self,
        client: SipClient,
        w: int,
        node: Node,
        kind: OpKind,
        aor: str,
        contact: str,
        expires: int | None,
        cseq: Counter[str],
        rng: random.Random,
    ) -> None:
        self._op_ids += 1
        op_id = self._op_ids
        cseq[aor] += 1
        call_id = f"nem-{self.token}-w{w}-{aor.split('@')[0][4:]}"
        if kind is OpKind.LOOKUP:
            method = rng.choice(("INVITE", "OPTIONS"))
            req = Request(method, aor, aor, f"{call_id}-l{op_id}", 1, new_branch(), f"t{op_id}")
        elif kind is OpKind.REMOVE_ALL:
            req = Request(
                "REGISTER", f"sip:{DOMAIN}", aor, call_id, cseq[aor], new_branch(), f"t{op_id}",
                ("*",), 0,
            )  # fmt: skip
        else:
            req = Request(
                "REGISTER", f"sip:{DOMAIN}", aor, call_id, cseq[aor], new_branch(), f"t{op_id}",
                (f"<{contact}>;expires={expires}",),
            )  # fmt: skip
        t_invoke = self.now()
        self.log.invoke(op_id, w, kind, aor, node.index, t_invoke)
        answer: Answer | None = await client.send(req, node.sip, self.cfg.sip_timeout)
        t_complete = self.now()
        status = answer.status if answer is not None else None
        granted = None
        returned: tuple[str, ...] = ()
        if answer is not None:
            returned = tuple(c.uri for c in answer.contacts)
            if kind is OpKind.REGISTER:
                granted = next((c.expires for c in answer.contacts if c.uri == contact), None)
        op = Op(
            op_id=op_id,
            worker=w,
            kind=kind,
            aor=aor,
            contact=contact if kind in (OpKind.REGISTER, OpKind.REMOVE) else None,
            expires=expires,
            node=node.index,
            call_id=req.call_id,
            cseq=req.cseq,
            t_invoke=round(t_invoke, 4),
            t_complete=round(t_complete, 4),
            status=status,
            outcome=outcome_of(status, kind),
            granted=granted,
            returned=returned,
        )
        self.ops.append(op)
        self.log.complete(op)
        if kind is OpKind.REGISTER and op.outcome is Outcome.OK and granted is None:
            self.problem(f"op {op_id}: 200 to REGISTER {aor} without our contact {contact}")

    # --- faults ---------------------------------------------------------------------------

    def fault_event(self, ep: Episode, kind: FaultKind, action: str, detail: str) -> None:
        self.log.fault(FaultEvent(ep.index, kind, action, round(self.now(), 3), detail))
        self.say(f"episode {ep.index} {kind.value} {action}: {detail}")

    def node_targets(self, used: set[int]) -> list[Node]:
        return [
            n
            for n in self.members()
            if n.state is NodeState.RUNNING and n.index not in used and n.index not in self.scaled
        ]

    async def start_fault(self, ep: Episode, kind: FaultKind, used: set[int]) -> Undo | None:
        assert self.net is not None
        net = self.net
        rng = self.rng
        if kind in (
            FaultKind.PARTITION_HALVES,
            FaultKind.PARTITION_MAJORITY,
            FaultKind.PARTITION_BRIDGE,
        ):
            hosts = [n.index for n in self.members()]
            rng.shuffle(hosts)
            if len(hosts) < 3:
                return None
            if kind is FaultKind.PARTITION_HALVES:
                half = len(hosts) // 2
                groups = [set(hosts[:half]), set(hosts[half:])]
            elif kind is FaultKind.PARTITION_MAJORITY:
                k = rng.randint(1, (len(hosts) - 1) // 2)
                groups = [set(hosts[:k]), set(hosts[k:])]
            else:
                bridge, rest = hosts[0], hosts[1:]
                half = len(rest) // 2
                groups = [{bridge, *rest[:half]}, {bridge, *rest[half:]}]
            await asyncio.to_thread(net.partition, *groups)
            self.fault_event(ep, kind, "start", " | ".join(str(sorted(g)) for g in groups))

            async def heal_partition() -> None:
                await asyncio.to_thread(net.unblock_all)
                self.fault_event(ep, kind, "end", "routes removed")

            return heal_partition
        targets = self.node_targets(used)
        if kind is FaultKind.SCALE:
            room = self.cfg.max_nodes - len([n for n in self.nodes.values() if not n.retired])
            if room <= 0:
                return None
            added = [self.add_node() for _ in range(rng.randint(1, min(2, room)))]
            for node in added:
                self.scaled.add(node.index)
            await asyncio.gather(
                *(self.start_node(n, self.bootstrap_for(n), "autoscaler start") for n in added)
            )
            self.fault_event(ep, kind, "start", f"added {[n.short() for n in added]}")

            async def scale_in() -> None:
                await asyncio.gather(*(self.retire(ep, n) for n in added))
                self.fault_event(ep, kind, "end", f"removed {[n.short() for n in added]}")

            return scale_in
        if not targets:
            return None
        node = rng.choice(targets)
        used.add(node.index)
        if kind is FaultKind.ISOLATE:
            await asyncio.to_thread(net.link_down, node.index)
            self.fault_event(ep, kind, "start", f"{node.short()} link down")

            async def link_up() -> None:
                await asyncio.to_thread(net.link_up, node.index)
                self.fault_event(ep, kind, "end", f"{node.short()} link up")

            return link_up
        if kind is FaultKind.PAUSE:
            node.pause()
            self.fault_event(ep, kind, "start", f"SIGSTOP {node.short()}")

            async def cont() -> None:
                node.resume()
                self.fault_event(ep, kind, "end", f"SIGCONT {node.short()}")

            return cont
        if kind is FaultKind.CLOCK:
            offset = rng.choice((CLOCK_JUMP_S, -CLOCK_JUMP_S))
            node.set_clock(offset)
            self.clocks.append(ClockChange(node.index, self.now(), offset))
            self.fault_event(ep, kind, "start", f"{node.short()} clock {offset:+d} s")

            async def clock_back() -> None:
                node.set_clock(0)
                self.clocks.append(ClockChange(node.index, self.now(), 0))
                self.fault_event(ep, kind, "end", f"{node.short()} clock back")

            return clock_back
        self.expect_exit.add(node.index)
        if kind is FaultKind.KILL:
            await asyncio.to_thread(node.kill9)
            self.fault_event(ep, kind, "start", f"kill -9 {node.short()}")
        else:
            how = rng.choice(("admin", "sigterm"))
            if how == "admin":
                status, body = await self.admin(node, "POST", "/v1/leave")
                if status != 202:
                    self.problem(f"POST /v1/leave to {node.short()}: {status} {body}")
            else:
                node.signal(signal.SIGTERM)
            code = await asyncio.to_thread(node.reap, 20.0)
            if code != 0:
                self.problem(
                    f"{node.short()} graceful leave ({how}) ended with {code}; "
                    f"log tail:\n{node.log_tail(15)}"
                )
                await asyncio.to_thread(node.kill9)
            self.fault_event(ep, kind, "start", f"{node.short()} left ({how}), exit {code}")

        async def restart() -> None:
            await self.start_node(node, self.bootstrap_for(node), f"{kind.value} restart")
            self.fault_event(ep, kind, "end", f"{node.short()} restarted on its data directory")

        return restart

    async def retire(self, ep: Episode, node: Node) -> None:
        assert self.net is not None
        self.expect_exit.add(node.index)
        if node.alive():
            status, body = await self.admin(node, "POST", "/v1/leave")
            if status != 202:
                self.problem(f"autoscaler leave of {node.short()}: {status} {body}")
            code = await asyncio.to_thread(node.reap, 20.0)
            if code != 0:
                self.problem(f"autoscaler: {node.short()} leave ended with {code}")
                await asyncio.to_thread(node.kill9)
        node.retired = True
        node.state = NodeState.DOWN
        await asyncio.to_thread(self.net.remove_host, node.index)

    async def run_episode(self, ep: Episode) -> None:
        used: set[int] = set()
        undo: list[Undo] = []
        start = self.now()
        for kind in ep.kinds:
            action = await self.start_fault(ep, kind, used)
            if action is None:
                self.notes.skipped[kind.value] += 1
                self.say(f"episode {ep.index} {kind.value}: nothing to do it to, skipped")
                continue
            self.notes.kinds[kind.value] += 1
            undo.append(action)
        # The fault's duration: holding it is the point, not waiting for a condition.
        await asyncio.sleep(ep.hold)
        healing = self.now()
        for action in reversed(undo):
            await action()
        self.windows.append(FaultWindow(start, self.now()))
        wait = min(self.cfg.episode_heal_wait, self.cfg.heal_bound)
        took, problem = await self.wait_healed(wait, healing)
        kinds = "+".join(k.value for k in ep.kinds)
        if took is None and wait < self.cfg.heal_bound:
            self.notes.overlapped += 1
            self.say(f"episode {ep.index} ({kinds}) not healed yet after {wait:.0f} s ({problem})")
        elif took is None:
            self.notes.unhealed.append(
                {"episode": ep.index, "kinds": kinds, "bound_s": self.cfg.heal_bound,
                 "last_problem": problem, "t": round(self.now(), 1)}
            )  # fmt: skip
            self.problem(f"episode {ep.index} ({kinds}) not healed in {self.cfg.heal_bound} s: "
                         f"{problem}")  # fmt: skip
        else:
            self.notes.heal_times.append(took)
            self.say(f"episode {ep.index} ({kinds}) healed in {took:.1f} s")

    async def nemesis(self) -> None:
        episodes = schedule(self.rng, self.cfg.kinds, self.cfg.hold, self.cfg.mix)
        seen: set[FaultKind] = set()
        for ep in episodes:
            # Every kind runs at least once, then episodes start only while time is left.
            if self.now() - self.t_faults >= self.cfg.fault_seconds and seen >= set(self.cfg.kinds):
                break
            await self.run_episode(ep)
            seen |= set(ep.kinds)

    # --- the run --------------------------------------------------------------------------

    async def final_heal(self) -> None:
        assert self.net is not None
        await asyncio.to_thread(self.net.heal)
        for node in self.nodes.values():
            if node.clock_offset:
                node.set_clock(0)
                self.clocks.append(ClockChange(node.index, self.now(), 0))
            if node.state is NodeState.PAUSED:
                node.resume()
        for node in self.nodes.values():
            if not node.retired and node.state is NodeState.DOWN:
                await self.start_node(node, self.bootstrap_for(node), "final restart")

    async def lookup_everywhere(self, client: SipClient) -> FinalRead:
        members = self.members()
        limit = asyncio.Semaphore(16)
        answers: dict[str, dict[int, frozenset[str] | None]] = {a: {} for a in self.aors}
        short: dict[str, set[str]] = {a: set() for a in self.aors}

        async def one(aor: str, node: Node) -> None:
            async with limit:
                for _attempt in range(4):
                    req = Request("OPTIONS", aor, aor, f"final-{secrets.token_hex(6)}", 1,
                                  new_branch(), "final")  # fmt: skip
                    answer = await client.send(req, node.sip, 4.0)
                    if answer is not None and answer.status in (302, 480):
                        answers[aor][node.index] = frozenset(c.uri for c in answer.contacts)
                        short[aor] |= {
                            c.uri
                            for c in answer.contacts
                            if c.expires is not None and c.expires < 8
                        }
                        return
                    await asyncio.sleep(0.5)
                answers[aor][node.index] = None

        started = self.now()
        await asyncio.gather(*(one(a, n) for a in self.aors for n in members))
        return FinalRead(
            started,
            self.now(),
            answers,
            {a: frozenset(s) for a, s in short.items()},
        )

    async def diagnose(self, findings: list[Finding]) -> list[dict[str, Any]]:
        """What each node holds for the AORs of the first findings (for the report)."""
        out = []
        for finding in findings[:10]:
            quoted = urllib.parse.quote(finding.aor, safe="")
            held = {}
            for node in self.members():
                status, body = await self.admin(node, "GET", f"/v1/records?aor={quoted}")
                held[node.short()] = body.get("records", body) if status == 200 else body
            status, aor_view = await self.admin(self.members()[0], "GET", f"/v1/aor/{quoted}")
            out.append({"finding": asdict(finding), "records": held, "aor": aor_view})
        return out

    async def run(self) -> dict[str, Any]:
        cfg = self.cfg
        self.code = await asyncio.to_thread(snapshot_code, self.code_dir, cfg.code)
        self.say(f"nodes run {self.code}")
        removed = await asyncio.to_thread(remove_stale)
        if removed:
            self.say(f"removed leftovers of earlier runs: {removed}")
        self.net = await asyncio.to_thread(Network.create)
        self.say(f"bridge {self.net.bridge} {self.net.subnet}, work dir {cfg.out}")
        async with aiohttp.ClientSession() as session:
            self._session = session
            first = self.add_node()
            await self.start_node(first, [], "start")
            others = [self.add_node() for _ in range(cfg.nodes - 1)]
            await asyncio.gather(*(self.start_node(n, [first.overlay], "start") for n in others))
            took, problem = await self.wait_healed(60.0, self.now())
            if took is None:
                raise RuntimeError(f"the initial ring of {cfg.nodes} never formed: {problem}")
            self.say(f"ring of {cfg.nodes} formed: {[n.short() for n in self.members()]}")
            self.t_faults = self.now()
            monitor = asyncio.create_task(self.monitor())
            workers = [asyncio.create_task(self.worker(w)) for w in range(cfg.workers)]
            try:
                await self.nemesis()
            finally:
                self.stop.set()
                await asyncio.gather(*workers, monitor, return_exceptions=True)
            self.say(f"faults over after {self.now() - self.t_faults:.0f} s; final heal")
            healing = self.now()
            await self.final_heal()
            final_took, final_problem = await self.wait_healed(cfg.heal_bound, healing)
            if final_took is None:
                self.notes.unhealed.append(
                    {"episode": "final", "bound_s": cfg.heal_bound,
                     "last_problem": final_problem, "t": round(self.now(), 1)}
                )  # fmt: skip
                self.problem(f"ring not healed {cfg.heal_bound} s after the last fault: "
                             f"{final_problem}")  # fmt: skip
            else:
                self.notes.heal_times.append(final_took)
                self.say(f"final heal took {final_took:.1f} s")
            # The quiet period: anti-entropy rounds repair replicas with nothing else going on.
            await asyncio.sleep(cfg.quiet)
            client = await SipClient.open(self.net.gateway)
            try:
                read = await self.lookup_everywhere(client)
            finally:
                client.close()
            save_check_inputs(cfg.out / "check_inputs.json", read, self.windows, self.clocks)
            checker = Checker(self.ops, self.windows, self.clocks)
            self.result = checker.check(read)
            r = self.result
            diagnosis = await self.diagnose([*r.lost, *r.resurrected, *r.divergent])
        self.summary = self.summarize(final_took, diagnosis)
        return self.summary

    def summarize(
        self, final_heal: float | None, diagnosis: list[dict[str, Any]]
    ) -> dict[str, Any]:
        r = self.result
        assert r is not None
        writes = [o for o in self.ops if o.kind is not OpKind.LOOKUP]
        lookups = [o for o in self.ops if o.kind is OpKind.LOOKUP]
        heal = sorted(self.notes.heal_times)
        statuses = Counter(str(o.status) for o in self.ops)
        return {
            "seed": self.cfg.seed,
            "code": self.code,
            "fault_seconds": self.cfg.fault_seconds,
            "run_seconds": round(self.now(), 1),
            "nodes": self.cfg.nodes,
            "operations": len(self.ops),
            "writes": len(writes),
            "acknowledged": sum(o.outcome is Outcome.OK for o in writes),
            "indeterminate": sum(o.outcome is Outcome.MAYBE for o in writes),
            "refused": sum(o.outcome is Outcome.FAIL for o in writes),
            "lookups": len(lookups),
            "lookups_answered": sum(o.outcome is Outcome.OK for o in lookups),
            "statuses": dict(sorted(statuses.items())),
            "lost": len(r.lost),
            "resurrected": len(r.resurrected),
            "divergent": len(r.divergent),
            "unhealed": len(self.notes.unhealed),
            "unanswered": len(r.unanswered),
            "crashes": len(self.notes.crashes),
            "stale_lookups": len(r.stale_lookups),
            "bindings_checked": r.bindings,
            "must_present": r.must_present,
            "must_absent": r.must_absent,
            "undetermined": r.undetermined,
            "heal_p50_s": round(statistics.median(heal), 2) if heal else None,
            "heal_max_s": round(heal[-1], 2) if heal else None,
            "final_heal_s": round(final_heal, 2) if final_heal is not None else None,
            "episodes": len(self.windows),
            "episodes_not_healed_before_next": self.notes.overlapped,
            "nemesis_counts": dict(sorted(self.notes.kinds.items())),
            "nemesis_skipped": dict(sorted(self.notes.skipped.items())),
            "details": {
                "lost": [asdict(f) for f in r.lost[:50]],
                "resurrected": [asdict(f) for f in r.resurrected[:50]],
                "divergent": [asdict(f) for f in r.divergent[:50]],
                "unanswered": [asdict(f) for f in r.unanswered[:50]],
                "stale_lookups": [asdict(f) for f in r.stale_lookups[:50]],
                "unhealed": self.notes.unhealed,
                "crashes": self.notes.crashes,
                "problems": self.notes.problems,
                "records_of_findings": diagnosis,
            },
            "out": str(self.cfg.out),
        }

    def cleanup(self) -> None:
        for node in self.nodes.values():
            node.cleanup()
        if self.net is not None:
            self.net.destroy()
        with contextlib.suppress(Exception):
            self.log.close()


SMOKE_SEED = 14


def save_check_inputs(
    path: Path, read: FinalRead, windows: list[FaultWindow], clocks: list[ClockChange]
) -> None:
    """What the checker needs besides the history, so a run can be checked again later."""
    data = {
        "read": {
            "t_start": read.t_start,
            "t_end": read.t_end,
            "answers": {
                aor: {str(n): None if cs is None else sorted(cs) for n, cs in per.items()}
                for aor, per in read.answers.items()
            },
            "short_lived": {aor: sorted(cs) for aor, cs in read.short_lived.items()},
        },
        "windows": [asdict(w) for w in windows],
        "clocks": [asdict(c) for c in clocks],
    }
    path.write_text(json.dumps(data) + "\n")


def recheck(out: Path) -> CheckResult:
    """The checker again over a finished run's work directory."""
    data = json.loads((out / "check_inputs.json").read_text())
    raw = data["read"]
    read = FinalRead(
        raw["t_start"],
        raw["t_end"],
        {
            aor: {int(n): None if cs is None else frozenset(cs) for n, cs in per.items()}
            for aor, per in raw["answers"].items()
        },
        {aor: frozenset(cs) for aor, cs in raw["short_lived"].items()},
    )
    checker = Checker(
        read_ops(out / "history.jsonl"),
        [FaultWindow(**w) for w in data["windows"]],
        [ClockChange(**c) for c in data["clocks"]],
    )
    return checker.check(read)


def smoke_config(out: Path, seed: int = SMOKE_SEED, code: str = "head") -> RunConfig:
    """The default suite's short run: one pass over every fault kind, mostly mixed in pairs."""
    return RunConfig(
        seed=seed,
        fault_seconds=0.0,
        out=out,
        nodes=5,
        max_nodes=6,
        workers=4,
        aors=30,
        hold=(2.5, 4.0),
        mix=0.6,
        # Above the overlay's dead_hold (30 s: a peer declared dead is not re-adopted from
        # hearsay for that long), which bounds how fast a partition can heal.
        heal_bound=45.0,
        episode_heal_wait=3.0,
        quiet=3.0,
        code=code,
    )


def format_summary(s: dict[str, Any]) -> str:
    lines = [
        f"code: {s['code']}",
        f"seed {s['seed']}  ran {s['run_seconds']} s ({s['fault_seconds']:.0f} s of faults), "
        f"{s['episodes']} episodes",
        f"operations {s['operations']}: writes {s['writes']} (acknowledged {s['acknowledged']}, "
        f"indeterminate {s['indeterminate']}, refused {s['refused']}), lookups {s['lookups']} "
        f"(answered {s['lookups_answered']})",
        f"statuses {s['statuses']}",
        f"bindings checked {s['bindings_checked']}: must be present {s['must_present']}, "
        f"must be absent {s['must_absent']}, undetermined {s['undetermined']}",
        f"LOST {s['lost']}  RESURRECTED {s['resurrected']}  DIVERGENT {s['divergent']}  "
        f"UNHEALED {s['unhealed']}  (unanswered {s['unanswered']}, crashes {s['crashes']}; "
        f"stale lookups during the faults {s['stale_lookups']})",
        f"heal p50 {s['heal_p50_s']} s, max {s['heal_max_s']} s, final {s['final_heal_s']} s "
        f"({s['episodes_not_healed_before_next']} episodes began before the ring had healed)",
        f"nemeses {s['nemesis_counts']}"
        + (f", skipped {s['nemesis_skipped']}" if s["nemesis_skipped"] else ""),
    ]
    for kind in ("lost", "resurrected", "divergent", "unanswered", "stale_lookups"):
        for f in s["details"][kind][:5]:
            lines.append(f"  {kind}: {f['aor']} {f['contact'] or ''} {f['detail']}")
    for u in s["details"]["unhealed"]:
        lines.append(f"  unhealed: {u}")
    for c in s["details"]["crashes"]:
        lines.append(f"  crash: node {c['node']} exit {c['exit_code']} at {c['t']} s")
    for p in s["details"]["problems"][:20]:
        lines.append(f"  problem: {p.splitlines()[0]}")
    lines.append(f"work dir {s['out']} (history.jsonl, summary.json, node logs)")
    return "\n".join(lines)


def run(cfg: RunConfig) -> dict[str, Any]:
    """One whole run; cleans up whatever happens. Returns the summary (also summary.json)."""
    harness = Harness(cfg)

    def on_term(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt(f"signal {signum}")

    previous = None
    with contextlib.suppress(ValueError):  # not the main thread: leave signals alone
        previous = signal.signal(signal.SIGTERM, on_term)
    try:
        summary = asyncio.run(harness.run())
    finally:
        harness.cleanup()
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    (cfg.out / "summary.json").write_text(json.dumps(summary, indent=2) + "\n")
    return summary


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seed", type=int, default=None, help="default: random, printed")
    parser.add_argument(
        "--smoke",
        action="store_true",
        help=f"the smoke test's run (seed {SMOKE_SEED} unless --seed; other options ignored)",
    )
    parser.add_argument("--minutes", type=float, default=5.0, help="how long faults keep coming")
    parser.add_argument("--out", type=Path, default=None, help="work directory")
    parser.add_argument("--nodes", type=int, default=5)
    parser.add_argument("--max-nodes", type=int, default=7)
    parser.add_argument("--workers", type=int, default=6)
    parser.add_argument("--aors", type=int, default=40)
    parser.add_argument(
        "--kinds", default="all", help="comma-separated fault kinds: " + ", ".join(
            k.value for k in FaultKind)
    )  # fmt: skip
    parser.add_argument("--mix", type=float, default=0.4, help="share of mixed episodes")
    parser.add_argument("--heal-bound", type=float, default=60.0)
    parser.add_argument(
        "--code",
        choices=("head", "worktree"),
        default="head",
        help="what the nodes run: the last commit (default) or the checkout's files as they are",
    )
    parser.add_argument(
        "--recheck", type=Path, metavar="DIR", help="only run the checker again over DIR's run"
    )
    args = parser.parse_args(argv)
    if args.recheck is not None:
        result = recheck(args.recheck)
        for name in ("lost", "resurrected", "divergent", "unanswered", "stale_lookups"):
            findings = getattr(result, name)
            print(f"{name}: {len(findings)}")
            for finding in findings:
                print(json.dumps(asdict(finding)))
        return 0
    if args.smoke and args.seed is None:
        args.seed = SMOKE_SEED
    seed = args.seed if args.seed is not None else random.randrange(1 << 31)
    kinds = (
        tuple(FaultKind)
        if args.kinds == "all"
        else tuple(FaultKind(k.strip()) for k in args.kinds.split(","))
    )
    out = args.out or Path(f"/tmp/p2preg-nemesis-{seed}-{time.strftime('%Y%m%d-%H%M%S')}")
    cfg = RunConfig(
        seed=seed,
        fault_seconds=args.minutes * 60,
        out=out,
        nodes=args.nodes,
        max_nodes=args.max_nodes,
        workers=args.workers,
        aors=args.aors,
        kinds=kinds,
        mix=args.mix,
        heal_bound=args.heal_bound,
        episode_heal_wait=args.heal_bound,
        code=args.code,
    )
    if args.smoke:
        cfg = smoke_config(out, seed, args.code)
    print(f"nemesis run: seed {seed}, {args.minutes} min of faults, work dir {out}", flush=True)
    summary = run(cfg)
    print(format_summary(summary))
    bad = sum(summary[k] for k in ("lost", "resurrected", "divergent", "unhealed", "unanswered"))
    return 1 if bad or summary["crashes"] else 0


if __name__ == "__main__":
    sys.exit(main())
