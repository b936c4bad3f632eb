"""The owner decides: a REGISTER as one ApplyReq applied by the AOR's owner (issue 9 item 3).

- the operation's bytes: round trip, and anything malformed is a ValueError (never another
  exception) — the owner answers Error_Invalid_Message for it;
- the owner's rules: the same §10.3 behaviour as before, and a lost answer asked again is
  recognised by its op id instead of being refused as a stale CSeq;
- the simulator drives the composed core with the registrar's operation: REGISTERs whose
  front node is the owner (no overlay message) and through the ring, with three copies and
  no conflicts, and the refusals travel back.
"""

from __future__ import annotations

import contextlib
import dataclasses
import random
from pathlib import Path

import msgpack
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from replication_support import build, copy_counts, factory, run_until_repaired

from overlay.ids import resource_id
from overlay.messages import ApplyAns, ErrorCode, ErrorResponse, FetchAns, StoredData
from overlay.operations import REFUSED_PREFIX
from overlay.sim import Simulation
from p2preg.sip.binding import SIP_BINDING_KIND, decode_binding
from p2preg.sip.register_op import (
    BindingChange,
    RegisterOp,
    RegistrarOperation,
    apply_register,
    bindings_of,
    decode_op,
    encode_op,
    sip_operations,
)

NOW = 1_700_000_000.0


def op(
    *contacts: tuple[str, int],
    call_id: str = "c1",
    cseq: int = 1,
    op_id: int = 7,
    wildcard: bool = False,
    max_contacts: int = 10,
    aor: str = "sip:alice@example.com",
) -> RegisterOp:
    changes = tuple(
        BindingChange(uri, uri, expires, None, None, None, (("transport", "udp"),))
        for uri, expires in contacts
    )
    return RegisterOp(
        op_id, aor, call_id, cseq, wildcard, changes, (), "ua/1", "192.0.2.1", 5060, "UDP",
        max_contacts, 7200, False,
    )  # fmt: skip


ops = st.builds(
    RegisterOp,
    op_id=st.integers(0, (1 << 64) - 1),
    aor=st.text(max_size=40),
    call_id=st.text(max_size=40),
    cseq=st.integers(0, 2**31 - 1),
    wildcard=st.just(False),
    changes=st.lists(
        st.builds(
            BindingChange,
            key=st.text(min_size=1, max_size=30),
            uri=st.text(max_size=30),
            expires=st.integers(0, 2**32 - 1),
            q=st.none() | st.text(max_size=5),
            instance=st.none() | st.text(max_size=20),
            reg_id=st.none() | st.integers(0, 2**32 - 1),
            params=st.lists(
                st.tuples(st.text(max_size=8), st.none() | st.text(max_size=8)), max_size=3
            ).map(tuple),
        ),
        max_size=4,
    ).map(tuple),
    path=st.lists(st.text(max_size=20), max_size=2).map(tuple),
    user_agent=st.none() | st.text(max_size=20),
    source_host=st.text(max_size=20),
    source_port=st.integers(0, 65535),
    transport=st.sampled_from(["UDP", "TCP", "TLS"]),
    max_contacts=st.integers(1, 100),
    max_expires=st.integers(0, 2**32 - 1),
    evict=st.booleans(),
)


@settings(max_examples=200, deadline=None)
@given(ops)
def test_operation_round_trips(value: RegisterOp) -> None:
    assert decode_op(encode_op(value)) == value


@settings(max_examples=300, deadline=None)
@given(ops, st.data())
def test_malformed_operations_are_value_errors(value: RegisterOp, data: st.DataObject) -> None:
    raw = bytearray(encode_op(value))
    cut = data.draw(st.integers(0, len(raw) - 1))
    for broken in (bytes(raw[:cut]), bytes(raw) + b"\x00"):  # truncated, trailing bytes
        with pytest.raises(ValueError):
            decode_op(broken)
    i = data.draw(st.integers(0, len(raw) - 1))
    raw[i] ^= 1 << data.draw(st.integers(0, 7))
    with contextlib.suppress(ValueError):  # a flip may still be well formed: anything else fails
        assert isinstance(decode_op(bytes(raw)), RegisterOp)


@pytest.mark.parametrize(
    "record",
    [
        [1, 7, "a", "c", 1, False, [], [], None, ["h", 1, "UDP"], 0, 60, False],  # max contacts
        [1, -1, "a", "c", 1, False, [], [], None, ["h", 1, "UDP"], 5, 60, False],  # op id
        [2, 7, "a", "c", 1, False, [], [], None, ["h", 1, "UDP"], 5, 60, False],  # version
        [1, 7, "a", "c", 1, True, [["k", "u", 0, None, None, None, []]], [], None,
         ["h", 1, "UDP"], 5, 60, False],  # wildcard with contacts
        [1, 7, "a", "c", 1, False, [["", "u", 0, None, None, None, []]], [], None,
         ["h", 1, "UDP"], 5, 60, False],  # empty key
        [1, 7, "a", "c", 1, False, [], [], None, ["h", 70000, "UDP"], 5, 60, False],  # port
        [1, 7, "a", "c", 1, False, [], [], None, ["h", 1, "UDP"], 5, -1, False],  # max expires
        {"not": "a list"},
    ],
)  # fmt: skip
def test_owner_refuses_malformed_operations_with_value_error(record: object) -> None:
    with pytest.raises(ValueError):
        RegistrarOperation().apply((), msgpack.packb(record), int(NOW * 1000))


def test_lost_answer_asked_again_is_done_not_a_stale_cseq() -> None:
    first = apply_register(op(("sip:a@h1", 3600)), [], NOW)
    assert first.status == 200 and len(first.upserts) == 1
    again = apply_register(op(("sip:a@h1", 3600)), first.bindings, NOW + 1)
    assert again.status == 200 and not again.changed
    assert [b.uri for b in again.bindings] == ["sip:a@h1"]
    # The same Call-ID and CSeq from another transaction (a replay) is still refused.
    replay = apply_register(op(("sip:a@h1", 3600), op_id=8), first.bindings, NOW + 40)
    assert (replay.status, replay.reason) == (400, "Invalid CSeq")
    unnumbered = apply_register(op(("sip:a@h1", 3600), op_id=0), first.bindings, NOW + 40)
    assert unnumbered.status == 400


def test_owner_operation_writes_tombstones_and_answers_the_set() -> None:
    owner = RegistrarOperation()
    ms = int(NOW * 1000)
    added = owner.apply((), encode_op(op(("sip:a@h1", 60), ("sip:b@h2", 120))), ms)
    assert added.refused is None and len(added.writes) == 2
    assert sorted(decode_binding(v.value).uri for v in added.values) == ["sip:a@h1", "sip:b@h2"]
    assert {w.lifetime for w in added.writes} == {60, 120}
    current = added.writes
    removed = owner.apply(current, encode_op(op(("sip:a@h1", 0), cseq=2)), ms + 1000)
    (tomb,) = removed.writes
    assert not tomb.exists and tomb.lifetime == 59 + 5  # what was left, plus the margin
    assert [b.uri for b in bindings_of(removed.values)] == ["sip:b@h2"]
    stale = owner.apply(current, encode_op(op(("sip:a@h1", 60), cseq=1, op_id=9)), ms + 2000)
    assert stale.refused == "400 Invalid CSeq" and not stale.writes


# --- the simulator --------------------------------------------------------------------------


def sim_ring(tmp_path: Path, peers: int = 6, seed: int = 3) -> Simulation:
    from replication_support import FAST

    sim = Simulation(
        seed, backend_factory=factory(tmp_path), replication=FAST, operations=sip_operations()
    )
    build(sim, peers)
    return sim


def bindings_held(sim: Simulation, resource: int) -> dict[int, list[str]]:
    held: dict[int, list[str]] = {}
    now_ms = int(sim.now * 1000)
    for node in sim.live_ids():
        backend = sim.nodes[node].backend
        assert backend is not None
        uris = sorted(
            decode_binding(r.value).uri
            for r in backend.records_for(resource, now_ms)
            if r.kind == SIP_BINDING_KIND and r.exists
        )
        if uris:
            held[node] = uris
    return held


def test_registers_through_the_owner_itself_and_through_the_ring(tmp_path: Path) -> None:
    sim = sim_ring(tmp_path)
    rng = random.Random(5)
    owner_local = through_ring = 0
    for i in range(60):
        aor = f"sip:user{i}@example.com"
        resource = resource_id(aor.removeprefix("sip:"))
        owner = sim.responsible(resource)
        # Half of them enter at the AOR's owner (no overlay message at all), half elsewhere.
        front = owner if i % 2 else rng.choice([n for n in sim.ring if n != owner])
        owner_local += front == owner
        through_ring += front != owner
        register = op((f"sip:u{i}@h{i}", 3600), aor=aor, call_id=f"c{i}")
        first = sim.apply(front, resource, SIP_BINDING_KIND, encode_op(register))
        assert sim.wait([first], 30.0) and first.ok, first.answer
        answer = first.answer
        assert isinstance(answer, ApplyAns) and len(answer.replicas) == 2
        assert [b.uri for b in bindings_of(answer.values)] == [f"sip:u{i}@h{i}"]
        held = bindings_held(sim, resource)
        assert len(held) == 3 and all(v == [f"sip:u{i}@h{i}"] for v in held.values())
        # A stale CSeq is refused by the owner's rules, whoever asks.
        stale = dataclasses.replace(register, op_id=99, cseq=0)
        refused = sim.apply(front, resource, SIP_BINDING_KIND, encode_op(stale), max_attempts=1)
        assert sim.wait([refused], 30.0)
        assert isinstance(refused.answer, ErrorResponse)
        assert refused.answer.error_code == ErrorCode.FORBIDDEN
        assert refused.answer.text == REFUSED_PREFIX + "400 Invalid CSeq"
    assert owner_local == 30 and through_ring == 30
    ops_done = sum(sim.nodes[n].replicator.counters["operations"] for n in sim.ring)  # type: ignore[union-attr]
    assert ops_done == 120


def test_register_survives_the_owner_crashing_right_after(tmp_path: Path) -> None:
    sim = sim_ring(tmp_path, peers=8, seed=4)
    want: dict[tuple[int, bytes], bytes] = {}
    for i in range(40):
        aor = f"sip:crash{i}@example.com"
        resource = resource_id(aor.removeprefix("sip:"))
        front = sim.ring[i % len(sim.ring)]
        done = sim.apply(
            front, resource, SIP_BINDING_KIND, encode_op(op((f"sip:c{i}@h", 3600), aor=aor))
        )
        assert sim.wait([done], 30.0) and done.ok
        answer = done.answer
        assert isinstance(answer, ApplyAns)
        (value,) = answer.values
        want[(resource, value.key)] = value.value
    victim = sim.responsible(next(iter(want))[0])
    assert victim is not None
    sim.crash(victim)
    run_until_repaired(sim, want, timeout=120.0)
    assert copy_counts(sim) == {3: 40}


def test_stored_data_of_the_answer_is_what_the_owner_stored() -> None:
    owner = RegistrarOperation()
    result = owner.apply((), encode_op(op(("sip:a@h1", 60))), int(NOW * 1000))
    assert result.values == result.writes
    assert all(isinstance(v, StoredData) and v.exists for v in result.values)


def fetched_uris(sim: Simulation, resource: int) -> dict[int, list[str]]:
    """What a lookup through each live peer returns for the AOR."""
    ops = {n: sim.get(n, resource, SIP_BINDING_KIND) for n in sim.ring}
    assert sim.wait(list(ops.values()), 60.0)
    out: dict[int, list[str]] = {}
    for node, fetch in ops.items():
        answer = fetch.answer
        assert isinstance(answer, FetchAns), answer
        out[node] = sorted(b.uri for kr in answer.kind_responses for b in bindings_of(kr.values))
    return out


@pytest.mark.parametrize("removal", ["contact", "wildcard"])
def test_a_removal_made_on_the_other_side_of_a_partition_wins_after_the_heal(
    tmp_path: Path, removal: str
) -> None:
    """Nemesis finding: a binding registered on one side of a partition and removed through
    the other (whose owner never saw it) came back when the sides merged: the removal wrote
    no tombstone for a contact it did not know, nor Contact: * for any. Now a removal always
    leaves a tombstone and Contact: * a wipe mark, and the newer one wins when copies merge."""
    sim = sim_ring(tmp_path, peers=8, seed=6)
    aor = "sip:split@example.com"
    resource = resource_id(aor.removeprefix("sip:"))
    owner = sim.responsible(resource)
    assert owner is not None
    ring = list(sim.ring)
    i = ring.index(owner)
    minority = [ring[(i + k) % len(ring)] for k in range(3)]  # the owner and its 2 replicas
    majority = [n for n in ring if n not in minority]
    sim.partition([minority, majority])
    sim.run_for(15.0)  # each side has dropped the other and taken over its ranges
    added = sim.apply(owner, resource, SIP_BINDING_KIND, encode_op(op(("sip:x@h", 3600), aor=aor)))
    assert sim.wait([added], 30.0) and added.ok, added.answer
    sim.run_for(1.0)
    if removal == "contact":
        gone = op(("sip:x@h", 0), aor=aor, call_id="other", op_id=11)
    else:
        gone = op(aor=aor, call_id="other", op_id=11, wildcard=True)
    removed = sim.apply(majority[0], resource, SIP_BINDING_KIND, encode_op(gone))
    assert sim.wait([removed], 30.0) and removed.ok, removed.answer
    sim.heal()
    healed = sim.run_until_converged(sim.now + 60.0, full=True)
    assert healed is not None
    sim.run_for(3 * 10.0)  # anti-entropy rounds (FAST: every 10 s)
    assert fetched_uris(sim, resource) == {n: [] for n in sim.ring}


def test_what_a_cut_off_peer_took_reaches_the_owner_once_it_is_back(tmp_path: Path) -> None:
    """Nemesis finding: a peer cut off from every neighbour is a ring of one and takes every
    write; once back, what it took for AORs it neither owns nor copies waited for the
    periodic garbage round (after 10 s without any neighbour change), so lookups kept missing
    acknowledged bindings. Now it is handed to the owner as soon as the change settles."""
    from overlay.replication_backend import ReplicationConfig

    sim = Simulation(
        9,
        backend_factory=factory(tmp_path),
        replication=ReplicationConfig(),  # the default, slow, periodic rounds
        operations=sip_operations(),
    )
    build(sim, 8)
    aor = "sip:cutoff@example.com"
    resource = resource_id(aor.removeprefix("sip:"))
    owner = sim.responsible(resource)
    assert owner is not None
    ring = list(sim.ring)
    holders = {ring[(ring.index(owner) + k) % len(ring)] for k in range(3)}
    loner = next(n for n in ring if n not in holders)
    sim.partition([[loner], [n for n in ring if n != loner]])
    sim.run_for(15.0)
    assert sim.peer(loner).successors == ()  # alone: it owns everything now
    taken = sim.apply(loner, resource, SIP_BINDING_KIND, encode_op(op(("sip:y@h", 3600), aor=aor)))
    assert sim.wait([taken], 30.0) and taken.ok, taken.answer
    sim.heal()
    healed = sim.run_until_converged(sim.now + 30.0, full=True)
    assert healed is not None
    sim.run_for(3.0)  # well before the periodic garbage round (15 s, after 10 s of quiet)
    assert fetched_uris(sim, resource) == {n: ["sip:y@h"] for n in sim.ring}
