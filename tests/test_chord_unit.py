"""The Chord-reload peer driven by hand: one ChordPeer, messages built in the test."""

from __future__ import annotations

import random

import pytest

from overlay.actions import (
    Address,
    AdmissionRequested,
    AppRequest,
    LeaveRequested,
    NeighborsChanged,
    PeerState,
    RequestCompleted,
    RequestFailed,
    Send,
    StateChanged,
)
from overlay.chord import DUPLICATE_ID_REASON, ChordPeer
from overlay.config import ChordConfig
from overlay.ids import MASK
from overlay.messages import (
    AttachAns,
    AttachReq,
    ErrorCode,
    ErrorResponse,
    FetchAns,
    FetchReq,
    ForwardingHeader,
    IceCandidate,
    IpAddressPort,
    JoinReq,
    LeaveAns,
    LeaveReq,
    Message,
    MessageBody,
    NodeDestination,
    PingAns,
    PingReq,
    ProbeAns,
    ProbeReq,
    ResourceDestination,
    RouteQueryAns,
    RouteQueryReq,
    UpdateReq,
    overlay_hash,
)
from overlay.probe import decode_probe_extras
from overlay.sim import Simulation

CFG = ChordConfig()
OVERLAY = overlay_hash(CFG.overlay_name)
# Liveness timers far away, so hand-driven tests see only what they provoke.
QUIET = ChordConfig(ping_interval=1000.0, update_interval=1000.0, finger_interval=1000.0)


def addr(n: int) -> Address:
    return Address("10.0.0.9", 20000 + n % 10000)


def cand(n: int) -> tuple[IceCandidate, ...]:
    a = addr(n)
    return (IceCandidate(IpAddressPort(a.host, a.port)),)


def msg(
    body: MessageBody,
    via: tuple[int, ...],
    dest: tuple[NodeDestination | ResourceDestination, ...],
    tid: int = 1,
    ttl: int = 100,
) -> Message:
    return Message(
        ForwardingHeader(
            overlay=OVERLAY,
            transaction_id=tid,
            via_list=tuple(NodeDestination(v) for v in via),
            destination_list=dest,
            ttl=ttl,
        ),
        body,
    )


def sends(actions: list[object]) -> list[Send]:
    return [a for a in actions if isinstance(a, Send)]


def alone(
    node_id: int = 1000, config: ChordConfig = QUIET, *, hand_over: bool = False
) -> ChordPeer:
    peer = ChordPeer(node_id, addr(node_id), config, random.Random(7), hand_over=hand_over)
    peer.start(0.0)
    peer.take_actions()
    return peer


def admit(peer: ChordPeer, joiner: int, now: float = 0.0) -> list[object]:
    """Let ``joiner`` join ``peer`` the way the protocol does it: Attach to joiner+1, then Join."""
    peer.receive(
        msg(AttachReq(candidates=cand(joiner)), (joiner,), (NodeDestination(joiner + 1),), 11), now
    )
    peer.receive(msg(JoinReq(joiner), (joiner,), (NodeDestination(peer.node_id),), 12), now)
    return peer.take_actions()


def test_alone_peer_owns_everything_and_answers_its_own_requests() -> None:
    peer = alone()
    assert peer.state is PeerState.JOINED
    assert peer.is_responsible(0) and peer.is_responsible(MASK)
    assert peer.next_hop(ResourceDestination(12345)) is None
    tid = peer.request([ResourceDestination(42)], FetchReq(resource=42), 1.0)
    actions = peer.take_actions()
    [app] = [a for a in actions if isinstance(a, AppRequest)]
    assert not sends(actions)
    peer.respond(app.message, FetchAns(), 1.0)
    [done] = [a for a in peer.take_actions() if isinstance(a, RequestCompleted)]
    assert done.transaction_id == tid and isinstance(done.response.body, FetchAns)
    view = peer.view(5.0)
    assert view.responsible_ppb == 1_000_000_000 and view.uptime == 5.0


def test_join_adopts_joiner_only_after_join_request() -> None:
    peer = alone(1000)
    peer.receive(msg(AttachReq(candidates=cand(500)), (500,), (NodeDestination(501),), 11), 0.0)
    actions = peer.take_actions()
    [answer] = sends(actions)
    assert isinstance(answer.message.body, AttachAns)
    assert answer.message.header.destination_list == (NodeDestination(500),)
    assert peer.successors == () and peer.predecessors == ()  # an Attach alone admits nobody
    peer.receive(msg(JoinReq(500), (500,), (NodeDestination(1000),), 12), 0.0)
    peer.tick(1.0)  # the announcement is coalesced for a moment
    actions = peer.take_actions()
    assert peer.successors == (500,) and peer.predecessors == (500,)
    assert any(isinstance(a, NeighborsChanged) for a in actions)
    updates = [s for s in sends(actions) if isinstance(s.message.body, UpdateReq)]
    assert [u.next_hop for u in updates] == [500]
    # now responsible only for (500, 1000]
    assert peer.is_responsible(1000) and peer.is_responsible(501)
    assert not peer.is_responsible(500) and not peer.is_responsible(2000)


def test_hand_over_delays_making_the_joiner_reachable_until_admit() -> None:
    peer = alone(1000, hand_over=True)
    actions = admit(peer, 500)
    # The layer above hands the range over first, then calls admit().
    asked = [a for a in actions if isinstance(a, AdmissionRequested)]
    assert asked == [AdmissionRequested(500, 1000, 500)]
    assert peer.predecessors == ()  # not routable before its data is handed over
    assert peer.is_responsible(400)  # we still serve its range meanwhile
    peer.tick(1.0)
    assert not [s for s in sends(peer.take_actions()) if isinstance(s.message.body, UpdateReq)]
    peer.admit(500, 1.0)
    assert peer.predecessors == (500,)
    assert not peer.is_responsible(400)
    peer.tick(1.1)
    updates = [s for s in sends(peer.take_actions()) if isinstance(s.message.body, UpdateReq)]
    assert [u.next_hop for u in updates] == [500]


def test_hand_over_holds_the_leave_requests_until_the_data_is_handed_over() -> None:
    peer = alone(1000, hand_over=True)
    admit(peer, 500)
    peer.admit(500, 0.0)
    peer.tick(0.1)
    peer.take_actions()
    peer.leave(1.0)
    actions = peer.take_actions()
    assert [a for a in actions if isinstance(a, LeaveRequested)] == [LeaveRequested(500)]
    assert not [s for s in sends(actions) if isinstance(s.message.body, LeaveReq)]
    peer.tick(1.0 + 10 * CFG.leave_timeout)
    assert peer.state is PeerState.LEAVING  # the timeout runs from the LeaveReqs
    peer.proceed_leave(50.0)
    leaves = [s for s in sends(peer.take_actions()) if isinstance(s.message.body, LeaveReq)]
    assert leaves
    for s in leaves:
        tid = s.message.header.transaction_id
        peer.receive(msg(LeaveAns(), (500,), (NodeDestination(1000),), tid), 50.1)
    assert peer.state is PeerState.LEFT


def test_candidate_from_update_is_adopted_only_after_its_attach_answer() -> None:
    peer = alone(1000)
    admit(peer, 500)
    peer.tick(1.0)
    peer.take_actions()

    def update_listing_700(tid: int, now: float) -> Send:
        peer.receive(
            msg(
                UpdateReq(uptime=1, predecessors=(), successors=(700, 1000)),
                (500,),
                (NodeDestination(1000),),
                tid,
            ),
            now,
        )
        assert 700 not in peer.predecessors and 700 not in peer.successors  # hearsay only
        attaches = [
            s
            for s in sends(peer.take_actions())
            if isinstance(s.message.body, AttachReq)
            and s.message.header.destination_list[-1] == NodeDestination(700)
        ]
        assert len(attaches) == 1
        return attaches[0]

    attach = update_listing_700(21, 1.0)
    tid = attach.message.header.transaction_id
    # Someone else answering for 700 (700 is gone) is not 700 answering.
    peer.receive(
        msg(AttachAns(candidates=cand(650)), (650, 500), (NodeDestination(1000),), tid), 1.1
    )
    assert 700 not in peer.predecessors
    assert peer.predecessors[0] == 650  # the responder did answer us: it is a live candidate
    attach = update_listing_700(22, 1.2)
    tid = attach.message.header.transaction_id
    peer.receive(
        msg(AttachAns(candidates=cand(700)), (700, 500), (NodeDestination(1000),), tid), 1.3
    )
    assert peer.predecessors[0] == 700


def test_dead_predecessor_is_not_readopted_from_hearsay() -> None:
    cfg = ChordConfig(ping_interval=1.0, update_interval=1000.0, finger_interval=1000.0, jitter=0.0)
    peer = alone(1000, cfg)
    admit(peer, 500)
    admit(peer, 800)
    assert peer.predecessors[:2] == (800, 500)
    now = 0.0
    dropped_at = None
    # 800 never answers a ping; 500 does. Run past every Attach still pending for 800 too.
    while now < CFG.request_lifetime + 2:
        if dropped_at is None and 800 not in peer.predecessors:
            dropped_at = now
        now += 0.5
        peer.tick(now)
        for s in sends(peer.take_actions()):
            if isinstance(s.message.body, PingReq) and s.next_hop == 500:
                peer.receive(
                    msg(
                        PingAns(1, 1),
                        (500,),
                        (NodeDestination(1000),),
                        s.message.header.transaction_id,
                    ),
                    now,
                )
    assert dropped_at is not None and dropped_at < 10
    assert 800 not in peer.predecessors
    peer.take_actions()
    # 500 still lists 800 as its successor: hearsay must not bring it back, nor cost an Attach.
    peer.receive(
        msg(
            UpdateReq(uptime=1, predecessors=(), successors=(800, 1000)),
            (500,),
            (NodeDestination(1000),),
            31,
        ),
        now,
    )
    actions = peer.take_actions()
    assert 800 not in peer.predecessors
    assert not [
        s for s in sends(actions) if s.message.header.destination_list[-1] == NodeDestination(800)
    ]
    # But 800 contacting us itself (a restarted process) is adopted again.
    peer.receive(msg(AttachReq(candidates=cand(800)), (800,), (NodeDestination(1000),), 32), now)
    peer.receive(
        msg(
            UpdateReq(uptime=0, predecessors=(500,), successors=(1000,)),
            (800,),
            (NodeDestination(1000),),
            33,
        ),
        now,
    )
    assert peer.predecessors[0] == 800


def test_routing_rules_final_hop_predecessor_and_known_nodes() -> None:
    sim = Simulation(seed=3, config=QUIET)
    ids = [800, 900, 1000, 1100, 1200, 1300, 1 << 126, 1 << 127, 3 << 126]
    sim.add_node(1000, bootstrap=())
    for n in ids:
        if n != 1000:
            sim.add_node(n, bootstrap=[1000])
            sim.run_for(0.5)
    assert sim.run_until_converged(sim.now + 30, full=True) is not None
    peer = sim.peer(1000)
    assert peer.successors == (1100, 1200, 1300, 1 << 126, 1 << 127)
    assert peer.predecessors == (900, 800, 3 << 126, 1 << 127, 1 << 126)
    # target within (self, last successor]: the first successor at or after it
    assert peer.next_hop(ResourceDestination(1050)) == 1100
    assert peer.next_hop(ResourceDestination(1100)) == 1100
    assert peer.next_hop(ResourceDestination(1250)) == 1300
    assert peer.next_hop(ResourceDestination((1 << 126) + 5)) == 1 << 127
    # a target within our predecessors' ranges: the predecessor that owns it
    assert peer.next_hop(ResourceDestination(850)) == 900
    assert peer.next_hop(ResourceDestination(5)) == 800
    # we own (900, 1000]
    assert peer.next_hop(ResourceDestination(950)) is None
    assert peer.is_responsible(901) and not peer.is_responsible(900)
    # a node destination we know an address for: straight there
    assert peer.next_hop(NodeDestination(3 << 126)) == 3 << 126
    # every peer agrees with the ground truth on who owns what
    for target in (0, 850, 950, 1000, 1001, 1250, 1 << 125, MASK):
        owners = [n for n in ids if sim.peer(n).is_responsible(target)]
        assert owners == [sim.responsible(target)]
    # RouteQuery answers with the same decision
    sim.inject(
        1000,
        msg(RouteQueryReq(False, ResourceDestination(1250)), (1100,), (NodeDestination(1000),), 5),
    )


def test_route_query_answers_our_next_hop() -> None:
    peer = alone(1000)
    admit(peer, 500)
    peer.take_actions()
    peer.receive(
        msg(RouteQueryReq(False, ResourceDestination(400)), (500,), (NodeDestination(1000),), 5),
        0.0,
    )
    [answer] = [s for s in sends(peer.take_actions()) if isinstance(s.message.body, RouteQueryAns)]
    assert answer.message.body == RouteQueryAns(500)
    peer.receive(
        msg(RouteQueryReq(False, ResourceDestination(700)), (500,), (NodeDestination(1000),), 6),
        0.0,
    )
    [answer] = [s for s in sends(peer.take_actions()) if isinstance(s.message.body, RouteQueryAns)]
    assert answer.message.body == RouteQueryAns(1000)


def test_request_forwarded_with_via_appended_and_ttl_decremented() -> None:
    peer = alone(1000)
    admit(peer, 1100)
    peer.take_actions()
    peer.receive(msg(FetchReq(resource=1050), (7,), (ResourceDestination(1050),), 9, ttl=50), 0.0)
    [fwd] = sends(peer.take_actions())
    assert fwd.next_hop == 1100
    assert fwd.message.header.ttl == 49
    assert fwd.message.header.via_list == (NodeDestination(7), NodeDestination(1000))


def test_ttl_exceeded_goes_back_to_the_originator() -> None:
    peer = alone(1000)
    admit(peer, 1100)
    peer.take_actions()
    peer.receive(msg(FetchReq(resource=1050), (7, 8), (ResourceDestination(1050),), 9, ttl=0), 0.0)
    [err] = sends(peer.take_actions())
    assert isinstance(err.message.body, ErrorResponse)
    assert err.message.body.error_code == ErrorCode.TTL_EXCEEDED
    assert err.next_hop == 8
    assert err.message.header.destination_list == (NodeDestination(8), NodeDestination(7))


def test_answer_path_pops_our_entry_and_goes_to_the_previous_hop() -> None:
    peer = alone(1000)
    answer = msg(FetchAns(), (1100,), (NodeDestination(1000), NodeDestination(7)), 9)
    peer.receive(answer, 0.0)
    [fwd] = sends(peer.take_actions())
    assert fwd.next_hop == 7
    assert fwd.message.header.destination_list == (NodeDestination(7),)
    assert fwd.message.header.via_list == (NodeDestination(1100), NodeDestination(1000))


def test_duplicate_request_gets_the_same_answer_along_the_new_path() -> None:
    peer = alone(1000)
    request = msg(FetchReq(resource=5), (7,), (ResourceDestination(5),), 77)
    peer.receive(request, 0.0)
    [app] = [a for a in peer.take_actions() if isinstance(a, AppRequest)]
    peer.receive(request, 0.5)  # retransmitted before we answered: nothing new
    assert peer.take_actions() == []
    body = FetchAns()
    peer.respond(app.message, body, 1.0)
    [first] = sends(peer.take_actions())
    again = msg(FetchReq(resource=5), (7, 3), (ResourceDestination(5),), 77)
    peer.receive(again, 2.0)
    actions = peer.take_actions()
    assert not [a for a in actions if isinstance(a, AppRequest)]
    [replay] = sends(actions)
    assert replay.message.body is first.message.body
    assert replay.next_hop == 3
    assert replay.message.header.destination_list == (NodeDestination(3), NodeDestination(7))
    # outside the duplicate window it is a new request again
    peer.tick(2.0 + CFG.duplicate_window)
    peer.receive(again, 2.0 + CFG.duplicate_window)
    assert [a for a in peer.take_actions() if isinstance(a, AppRequest)]


def test_end_to_end_retransmission_count_and_lifetime() -> None:
    peer = alone(1000)
    admit(peer, 1100)
    peer.tick(0.1)
    peer.take_actions()
    tid = peer.request([ResourceDestination(1050)], FetchReq(resource=1050), 0.0)
    sent_at: list[float] = []
    failed: list[RequestFailed] = []
    for a in peer.take_actions():
        if isinstance(a, Send) and a.message.header.transaction_id == tid:
            sent_at.append(0.0)
    now = 0.0
    while now < 30:
        deadline = peer.next_deadline()
        assert deadline is not None
        now = deadline
        peer.tick(now)
        for a in peer.take_actions():
            if isinstance(a, Send) and a.message.header.transaction_id == tid:
                sent_at.append(now)
                assert a.message.header.via_list == (NodeDestination(1000),)
            if isinstance(a, RequestFailed) and a.transaction_id == tid:
                failed.append(a)
        if failed:
            break
    assert len(sent_at) == CFG.max_sends
    assert sent_at == pytest.approx([0.0, 3.0, 6.0, 9.0, 12.0])
    assert failed and now == pytest.approx(CFG.request_lifetime)


def test_pings_are_not_retransmitted() -> None:
    cfg = ChordConfig(ping_interval=1.0, update_interval=1000.0, finger_interval=1000.0, jitter=0.0)
    peer = alone(1000, cfg)
    admit(peer, 500)
    peer.take_actions()
    tids: list[int] = []
    now = 0.0
    while 500 in peer.predecessors:
        now += 0.25
        peer.tick(now)
        tids += [
            s.message.header.transaction_id
            for s in sends(peer.take_actions())
            if isinstance(s.message.body, PingReq)
        ]
    assert len(tids) == len(set(tids)) == cfg.missed_pings  # each ping a new probe
    assert now <= (cfg.missed_pings + 2) * cfg.ping_interval


def test_link_failure_removes_neighbour_and_tombstones_it() -> None:
    peer = alone(1000)
    admit(peer, 500)
    admit(peer, 700)
    peer.link_failed(700, addr(700), 1.0)
    assert 700 not in peer.predecessors and 700 not in peer.successors
    assert peer.predecessors == (500,)
    assert peer.is_responsible(600)


def test_leave_request_makes_us_attach_the_listed_peers() -> None:
    peer = alone(1000)
    admit(peer, 500)
    admit(peer, 700)
    peer.take_actions()
    peer.receive(msg(LeaveReq(700, 2, (500, 300)), (700,), (NodeDestination(1000),), 41), 1.0)
    actions = peer.take_actions()
    assert 700 not in peer.predecessors
    targets = {
        s.message.header.destination_list[-1]
        for s in sends(actions)
        if isinstance(s.message.body, AttachReq)
    }
    assert NodeDestination(300) in targets  # unverified: Attach first
    assert NodeDestination(700) not in targets


def test_leave_sends_leave_requests_and_ends_left() -> None:
    peer = alone(1000)
    admit(peer, 500)
    admit(peer, 700)
    peer.tick(0.1)
    peer.take_actions()
    peer.leave(1.0)
    actions = peer.take_actions()
    leaves = [s for s in sends(actions) if isinstance(s.message.body, LeaveReq)]
    assert {(s.next_hop, s.message.body.leave_type) for s in leaves} >= {(700, 1), (500, 2)}
    assert peer.state is PeerState.LEAVING
    peer.tick(1.0 + CFG.leave_timeout)
    assert peer.state is PeerState.LEFT
    assert StateChanged(PeerState.LEFT) in peer.take_actions()
    assert peer.next_deadline() is None


def test_probe_answer_carries_ring_facts() -> None:
    peer = ChordPeer(
        1000,
        addr(1000),
        QUIET,
        random.Random(1),
        exp_probe=lambda: {"admin": "127.0.0.1:8080"},
        num_resources=lambda: 17,
    )
    peer.start(0.0)
    admit(peer, 500)
    peer.take_actions()
    peer.receive(msg(ProbeReq(), (500,), (NodeDestination(1000),), 51), 12.0)
    [answer] = sends(peer.take_actions())
    body = answer.message.body
    assert isinstance(body, ProbeAns)
    values = {i.type: i.value for i in body.probe_info if i.type != 4}
    assert values[1] == (1000 - 500) * 1_000_000_000 // (MASK + 1)
    assert values[2] == 17 and values[3] == 12
    extras = decode_probe_extras(body.probe_info)
    assert extras["successors"] == [500] and extras["predecessors"] == [500]
    assert extras["admin"] == "127.0.0.1:8080"


def test_join_through_bootstrap_then_join_and_update() -> None:
    jp = ChordPeer(500, addr(500), QUIET, random.Random(3))
    boot = Address("192.0.2.1", 1)
    jp.start(0.0, [boot])
    [attach] = sends(jp.take_actions())
    assert attach.next_hop is None and attach.address == boot
    assert attach.message.header.destination_list == (NodeDestination(501),)
    tid = attach.message.header.transaction_id
    jp.receive(msg(AttachAns(candidates=cand(1000)), (1000, 42), (NodeDestination(500),), tid), 0.1)
    [join] = sends(jp.take_actions())
    assert isinstance(join.message.body, JoinReq) and join.next_hop == 1000
    assert join.address == addr(1000)
    assert jp.state is PeerState.JOINING
    jp.receive(
        msg(
            UpdateReq(uptime=3, predecessors=(500, 300), successors=(1200,)),
            (1000,),
            (NodeDestination(500),),
            61,
        ),
        0.2,
    )
    assert jp.state is PeerState.JOINED
    assert jp.successors == (1000,)
    # 300 (the admitting peer's old predecessor) bounds our range until it answers
    assert jp.is_responsible(400) and not jp.is_responsible(300)
    actions = jp.take_actions()
    attached = {
        s.message.header.destination_list[-1]
        for s in sends(actions)
        if isinstance(s.message.body, AttachReq)
    }
    assert {NodeDestination(300), NodeDestination(1200)} <= attached


def test_join_retries_through_the_next_bootstrap() -> None:
    jp = ChordPeer(500, addr(500), QUIET, random.Random(3))
    boots = [Address("192.0.2.1", 1), Address("192.0.2.2", 2)]
    jp.start(0.0, boots)
    first = sends(jp.take_actions())[0]
    jp.link_failed(None, first.address, 0.01)
    jp.tick(CFG.join_retry)
    second = sends(jp.take_actions())[0]
    assert {first.address, second.address} == set(boots)


def test_duplicate_node_id_is_refused_and_the_joiner_stops() -> None:
    ap = alone(1000)
    admit(ap, 500)
    ap.take_actions()
    # Another process claims id 500 from a different address.
    other = Address("10.0.0.77", 7777)
    ap.receive(
        msg(
            AttachReq(candidates=(IceCandidate(IpAddressPort(other.host, other.port)),)),
            (500,),
            (NodeDestination(501),),
            71,
        ),
        0.5,
    )
    [refusal] = sends(ap.take_actions())
    body = refusal.message.body
    assert isinstance(body, ErrorResponse) and body.error_code == ErrorCode.FORBIDDEN
    # The joiner side: it stops with a clear reason instead of looping.
    jp = ChordPeer(500, other, QUIET, random.Random(3))
    jp.start(0.0, [addr(1000)])
    tid = sends(jp.take_actions())[0].message.header.transaction_id
    jp.receive(msg(body, (1000,), (NodeDestination(500),), tid), 0.6)
    actions = jp.take_actions()
    assert jp.state is PeerState.LEFT
    assert any(isinstance(a, RequestFailed) and a.reason == DUPLICATE_ID_REASON for a in actions)
    assert jp.next_deadline() is None


def test_attach_answer_from_our_own_id_stops_the_join() -> None:
    jp = ChordPeer(500, addr(500), QUIET, random.Random(3))
    jp.start(0.0, [addr(1000)])
    tid = sends(jp.take_actions())[0].message.header.transaction_id
    jp.receive(msg(AttachAns(candidates=cand(9)), (500, 1000), (NodeDestination(500),), tid), 0.1)
    assert jp.state is PeerState.LEFT
