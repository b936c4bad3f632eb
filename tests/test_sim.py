"""The simulator driving real ChordPeers: convergence, repair, leave, lookups, determinism."""

from __future__ import annotations

import math

import pytest

from overlay.actions import AppRequest, PeerState
from overlay.config import ChordConfig
from overlay.ids import MASK
from overlay.sim import SimNode, SimParams, Simulation, run_simulation


def build(sim: Simulation, count: int, within: float = 1.0) -> list[int]:
    """``count`` peers started within ``within`` virtual seconds, each through random peers."""
    first = sim.add_node(bootstrap=())
    start = sim.now
    for i in range(1, count):
        sim.run_until(start + within * i / count)
        sim.add_node(bootstrap=[first] if len(sim.ring) < 2 else None)
    return sim.live_ids()


def lookups_succeed(sim: Simulation, count: int = 200) -> float:
    records = []
    for _ in range(count):
        origin = sim.ring[sim.rng.randrange(len(sim.ring))]
        records.append(sim.lookup(origin, sim.rng.getrandbits(128)))
        sim.run_for(0.01)
    sim.run_for(sim.config.request_lifetime + 2)
    return sum(r.success for r in records) / len(records)


def test_16_peers_joining_within_a_second_converge_well_under_30s() -> None:
    sim = Simulation(seed=11)
    build(sim, 16, within=1.0)
    done = sim.run_until_converged(30.0, full=True)
    assert done is not None, "16 peers did not converge in 30 virtual seconds"
    assert done < 15.0
    assert len(sim.ring) == 16
    assert lookups_succeed(sim) == 1.0


@pytest.mark.parametrize("silent", [False, True])
def test_crashed_neighbour_is_repaired_around_in_under_20s(silent: bool) -> None:
    sim = Simulation(seed=5, silent_failures=silent)
    build(sim, 16)
    assert sim.run_until_converged(30.0, full=True) is not None
    victim = sim.ring[7]
    crashed_at = sim.now
    sim.crash(victim)
    repaired = sim.run_until_converged(crashed_at + 20.0)
    assert repaired is not None, "ring not repaired within 20 virtual seconds"
    if not silent:
        assert repaired - crashed_at < 5.0  # a broken link is noticed at the next send
    full = sim.run_until_converged(crashed_at + 30.0, full=True)
    assert full is not None
    assert all(victim not in sim.peer(n).successors for n in sim.ring)
    assert lookups_succeed(sim) == 1.0


@pytest.mark.parametrize("silent", [False, True])
def test_losing_every_successor_at_once_is_repaired(silent: bool) -> None:
    config = ChordConfig(successors=3, predecessors=3)
    sim = Simulation(seed=8, config=config, silent_failures=silent)
    build(sim, 30, within=2.0)
    assert sim.run_until_converged(60.0, full=True) is not None
    sim.run_for(10)  # fingers filled
    ring = list(sim.ring)
    lonely = ring[10]
    for victim in ring[11:14]:  # all three successors of ``lonely``
        sim.crash(victim)
    crashed_at = sim.now
    assert sim.run_until_converged(crashed_at + 60.0, full=True) is not None
    assert sim.peer(lonely).successors[0] == ring[14]
    assert sim.peer(ring[14]).predecessors[0] == lonely
    assert lookups_succeed(sim) == 1.0


def test_graceful_leaves_of_most_of_a_small_ring() -> None:
    sim = Simulation(seed=21)
    build(sim, 10)
    assert sim.run_until_converged(30.0, full=True) is not None
    while len(sim.ring) > 1:
        leaver = sim.ring[sim.rng.randrange(len(sim.ring))]
        sim.leave(leaver)
        started = sim.now
        while sim.peer(leaver).state is not PeerState.LEFT and sim.now < started + 10:
            sim.run_for(0.05)
        assert sim.peer(leaver).state is PeerState.LEFT
        sim.crash(leaver)  # the process exits after leaving
        # neighbours learn from LeaveReq, not from missed pings
        assert sim.run_until_converged(started + 2.0, full=True) is not None, len(sim.ring)
        if len(sim.ring) > 1:
            assert lookups_succeed(sim, 20) == 1.0
    [last] = sim.ring
    assert sim.peer(last).is_responsible(0) and sim.peer(last).is_responsible(MASK)


def test_a_peer_cut_off_by_a_partition_comes_back_after_the_heal() -> None:
    sim = Simulation(seed=4)
    build(sim, 12)
    assert sim.run_until_converged(30.0, full=True) is not None
    island = sim.ring[3]
    sim.partition([[island]])
    sim.run_for(30)
    assert island not in sim.peer(sim.ring[4]).predecessors  # the others repaired around it
    sim.heal()
    assert sim.run_until_converged(sim.now + 60.0, full=True) is not None
    assert island in sim.ring and len(sim.ring) == 12


def test_lookups_survive_message_loss() -> None:
    sim = Simulation(seed=9, loss=0.01)
    build(sim, 40, within=2.0)
    assert sim.run_until_converged(60.0) is not None
    assert lookups_succeed(sim, 300) == 1.0


class _ArrivalOrder(Simulation):
    """Records the transaction ids of the application requests each peer is handed."""

    def __init__(self, seed: int) -> None:
        super().__init__(seed)
        self.arrived: list[int] = []

    def _on_app_request(self, node: SimNode, action: AppRequest) -> None:
        self.arrived.append(action.message.header.transaction_id)
        super()._on_app_request(node, action)


def test_one_link_delivers_in_order_despite_jittered_latency() -> None:
    sim = _ArrivalOrder(seed=13)
    a = sim.add_node(bootstrap=())
    b = sim.add_node(bootstrap=[a])
    assert sim.run_until_converged(10.0, full=True) is not None
    sent: list[int] = []
    for i in range(300):  # a burst far denser than the 2 ms jitter: reordering would show
        sim.run_until(sim.now + 0.0001)
        before = set(sim.lookups)
        sim.lookup(a, (b - 1 - i) & MASK)  # b owns these ids: one hop over the a-b link
        (key,) = set(sim.lookups) - before
        sent.append(key[1])
    sim.run_for(1.0)
    assert sim.arrived == sent


def test_same_seed_gives_the_same_numbers() -> None:
    params = SimParams(
        nodes=60, lookups=300, fail=0.2, churn=2.0, churn_duration=10.0, quiet=5.0, seed=3
    )
    first = run_simulation(params)
    second = run_simulation(params)
    first.pop("wall_seconds")
    second.pop("wall_seconds")
    assert first == second
    other = run_simulation(SimParams(nodes=60, lookups=300, quiet=5.0, seed=4))
    other.pop("wall_seconds")
    assert other["messages_total"] != first["messages_total"]


def test_a_wave_build_joins_every_peer_and_routes_like_a_steady_build() -> None:
    waves = run_simulation(
        SimParams(nodes=400, lookups=1000, build="waves", settle=5.0, quiet=5.0, seed=2)
    )
    assert waves["build"] == "waves"
    assert waves["waves"] == 9  # doubling by default: 1 -> 2 -> 4 -> ... -> 256 -> 400
    rounds = waves["wave_converged_rounds"]
    assert isinstance(rounds, list) and len(rounds) == 8 and None not in rounds
    assert waves["converged"] is True and waves["lists_converged_rounds"] is not None
    assert waves["lookup_success"] == 1.0
    assert waves["settle_seconds"] == 5.0 and waves["measure_seconds"] == 5.0
    steady = run_simulation(SimParams(nodes=400, lookups=1000, quiet=5.0, seed=2))
    assert steady["build"] == "steady" and "waves" not in steady
    # the same protocol builds the same kind of ring: hop counts agree closely
    wave_hops, steady_hops = waves["mean_hops"], steady["mean_hops"]
    assert isinstance(wave_hops, float) and isinstance(steady_hops, float)
    assert abs(wave_hops - steady_hops) <= 0.1 * steady_hops
    assert waves["p99_hops"] <= steady["p99_hops"] + 1  # type: ignore[operator]


def test_wave_builds_are_deterministic_and_unknown_builds_are_refused() -> None:
    params = SimParams(nodes=80, lookups=200, build="waves", quiet=2.0, seed=5, wave_growth=3.0)
    first = run_simulation(params)
    second = run_simulation(params)
    first.pop("wall_seconds")
    second.pop("wall_seconds")
    assert first == second
    assert first["waves"] == 4  # 1 -> 4 -> 16 -> 64 -> 80
    with pytest.raises(ValueError, match="build"):
        run_simulation(SimParams(nodes=3, build="all at once"))


def test_1000_peers_converge_and_route_10000_lookups_then_survive_20_percent_failures() -> None:
    result = run_simulation(SimParams(nodes=1000, lookups=10_000, fail=0.2, seed=1))
    assert result["converged"] is True
    assert result["lists_converged_rounds"] is not None
    assert result["lookup_success"] == 1.0
    mean_hops = result["mean_hops"]
    assert isinstance(mean_hops, float)
    assert mean_hops <= 0.5 * math.log2(1000) + 1
    assert result["after_fail_converged_rounds"] is not None
    assert result["after_fail_lookup_success"] == 1.0
    maintenance = result["maintenance_msgs_per_node_s"]
    assert isinstance(maintenance, float) and 0 < maintenance < 20


def test_churn_run_reports_its_lookup_success() -> None:
    result = run_simulation(
        SimParams(nodes=200, lookups=500, churn=4.0, churn_duration=30.0, quiet=5.0, seed=2)
    )
    success = result["churn_lookup_success"]
    assert isinstance(success, float) and 0.9 <= success <= 1.0
    assert result["churn_lookups"] == 4 * 30 * 5
    assert result["after_churn_converged"] is True


def test_simulator_can_round_trip_through_the_codec() -> None:
    pytest.importorskip("overlay.codec")
    sim = Simulation(seed=6, use_codec=True)
    build(sim, 8)
    assert sim.run_until_converged(30.0, full=True) is not None
    assert lookups_succeed(sim, 50) == 1.0


@pytest.mark.slow
def test_10000_peers() -> None:
    result = run_simulation(SimParams(nodes=10_000, lookups=10_000, join_rate=100.0, quiet=20.0))
    assert result["lookup_success"] == 1.0
    mean_hops = result["mean_hops"]
    assert isinstance(mean_hops, float) and mean_hops <= 0.5 * math.log2(10_000) + 1


def test_finger_tables_point_at_the_responsible_peers() -> None:
    sim = Simulation(seed=12)
    build(sim, 200, within=4.0)
    assert sim.run_until_converged(60.0, full=True) is not None
    sim.run_for(30)  # every far finger has been refreshed in rotation since the last join
    far_total = 0
    for node_id in sim.ring:
        view = sim.peer(node_id).view(sim.now)
        fingers = dict(view.fingers)
        last = view.successors[-1]
        far = [i for i in range(1, 129) if (1 << (128 - i)) > ((last - node_id) & MASK)]
        far_total += len(far)
        assert all(i in fingers for i in far), "a far finger is missing"
        for index, finger in fingers.items():
            target = (node_id + (1 << (128 - index))) & MASK
            assert finger == sim.responsible(target)
        assert set(view.addresses) >= set(view.successors) | set(view.predecessors)
        assert view.state is PeerState.JOINED
        assert view.responsible_ppb > 0
    # about log2(N / r) far fingers each
    assert 3 <= far_total / len(sim.ring) <= 8
