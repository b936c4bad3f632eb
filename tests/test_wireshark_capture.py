"""Acceptance 2: Wireshark's RELOAD dissector decodes a live ring's traffic without complaint.

Four real node processes on fixed free ports of 127.0.0.1 join, stabilise, get probed and
route-queried through the admin API, one leaves (SIGTERM) and one is killed, all under
``dumpcap -i lo`` with a port filter. tshark then decodes the capture with
``-d tcp.port==P,reload-framing`` for every overlay port: no malformed frame, no expert error,
and every topology request code we send shows up.
"""

from __future__ import annotations

import shutil
import signal
import socket
import subprocess
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
from harness import Cluster, ring_problem, wait_for
from sip_support import request, status_of

from p2preg.cli import admin_call

PI_ERROR = 0x00800000  # Wireshark's expert severity "Error"
REQUEST_CODES = {
    "Probe": 1,
    "Attach": 3,
    "Join": 15,
    "Leave": 17,
    "Update": 19,
    "Ping": 23,
    "Apply": 0x8001,  # a REGISTER sent to its AOR's owner
}
ROUTE_QUERY = 21
RESEGMENTED_PORT = 6084


def free_ports(count: int) -> list[int]:
    sockets = []
    try:
        for _ in range(count):
            s = socket.socket()
            s.bind(("127.0.0.1", 0))
            sockets.append(s)
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class Capture:
    def __init__(self, path: Path, ports: list[int]) -> None:
        self.path = path
        self.log = path.with_suffix(".log")
        bpf = " or ".join(f"tcp port {p}" for p in ports)
        with open(self.log, "wb") as log:
            self.proc = subprocess.Popen(
                ["dumpcap", "-i", "lo", "-f", bpf, "-w", str(path)],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
            )

    def wait_started(self) -> None:
        def started() -> bool:
            text = self.log.read_text(errors="replace")
            if self.proc.poll() is not None:
                if "permission" in text.lower() or "not permitted" in text.lower():
                    pytest.skip(f"capturing on lo is not permitted here: {text.strip()}")
                raise AssertionError(f"dumpcap exited with {self.proc.returncode}: {text}")
            return "Capturing on" in text

        wait_for(started, 20.0, "dumpcap to start capturing", 0.05)

    def latest_packet(self) -> float:
        """Wall-clock time of the last packet dumpcap has written so far (0 if none)."""
        result = subprocess.run(
            ["tshark", "-n", "-r", str(self.path), "-T", "fields", "-e", "frame.time_epoch"],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,  # the file is still being written: its last record may be cut short
        )
        times = [float(t) for t in result.stdout.split() if t]
        return max(times, default=0.0)

    def wait_written(self, until: float) -> None:
        """Wait until the file holds packets from ``until`` (wall clock) on. dumpcap hands
        packets over in blocks and drops the unfinished block when it is stopped, so the end
        of the scenario must be on disk before the capture stops; the ring's pings keep
        packets coming meanwhile."""
        wait_for(lambda: self.latest_packet() >= until, 30.0, "the capture to catch up", 0.25)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGTERM)
            try:
                self.proc.wait(20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait(10)


def tshark(capture: Path, ports: list[int], *args: str) -> list[str]:
    decode = [arg for p in ports for arg in ("-d", f"tcp.port=={p},reload-framing")]
    result = subprocess.run(
        ["tshark", "-n", "-r", str(capture), *decode, *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert result.returncode == 0, f"tshark failed: {result.stderr}"
    return [line for line in result.stdout.splitlines() if line.strip()]


@dataclass
class Direction:
    """One direction of one TCP connection: its bytes, and where each captured segment began."""

    data: bytearray = field(default_factory=bytearray)
    segments: list[tuple[int, int]] = field(default_factory=list)  # (frame number, offset)
    frames: set[int] = field(default_factory=set)  # every frame of it, retransmissions too


def directions(capture: Path) -> dict[tuple[str, str, str], Direction]:
    """Each direction's byte stream rebuilt from the TCP sequence numbers (lo does drop and
    retransmit segments under load; a retransmitted byte is taken once)."""
    rows = tshark(
        capture, [],
        "-Y", "tcp.len > 0", "-T", "fields",
        "-e", "frame.number", "-e", "tcp.stream", "-e", "tcp.srcport", "-e", "tcp.dstport",
        "-e", "tcp.seq", "-e", "tcp.payload",
    )  # fmt: skip
    streams: dict[tuple[str, str, str], Direction] = {}
    bases: dict[tuple[str, str, str], int] = {}
    for row in rows:
        number, stream, src, dst, seq, payload = [*row.split("\t"), "", "", ""][:6]
        key = (stream, src, dst)
        d = streams.setdefault(key, Direction())
        offset = int(seq) - bases.setdefault(key, int(seq))
        data = bytes.fromhex(payload.replace(":", ""))
        d.frames.add(int(number))
        assert offset <= len(d.data), f"frame {number}: bytes missing from the capture"
        overlap = len(d.data) - offset
        assert d.data[offset:] == data[:overlap], f"frame {number} retransmits other bytes"
        if overlap < len(data):
            d.segments.append((int(number), len(d.data)))
            d.data += data[overlap:]
    return streams


def split_frames(d: Direction) -> tuple[list[bytes], list[int]]:
    """Our reading of the link framing (WIRE.md §1): the frames, and the offsets where DATA
    frames begin. A byte stream that does not split cleanly is our bug, not Wireshark's."""
    frames, data_starts, at = [], [], 0
    while at < len(d.data):
        kind = d.data[at]
        if kind == 0x80:
            size = 8 + int.from_bytes(d.data[at + 5 : at + 8], "big")
            data_starts.append(at)
        elif kind == 0x81:
            size = 9
        else:
            raise AssertionError(f"frame type {kind:#x} at byte {at} of a stream")
        assert at + size <= len(d.data), f"truncated frame at byte {at} of a stream"
        frames.append(bytes(d.data[at : at + size]))
        at += size
    return frames, data_starts


def first_misread(d: Direction, data_starts: list[int]) -> int | None:
    """The first captured frame in which a DATA frame begins after the segment's first byte.

    Wireshark 4.0's reload-framing length callback reads the DATA length at byte 5 of the
    segment instead of byte 5 of the frame (``tvb_get_ntoh24(tvb, 1 + 4)``, ignoring its
    offset). Such a segment is split wrong, TCP reassembly then waits for a PDU of a made-up
    length, and a later frame of the same direction is reported "Malformed Packet". Linux
    coalesces small writes on a busy socket (TCP autocorking) even with TCP_NODELAY, so these
    segments happen; the re-segmented check decodes every frame of them one per segment.
    """
    bounds = [off for _, off in d.segments] + [len(d.data)]
    for i, (number, begin) in enumerate(d.segments):
        if any(begin < start < bounds[i + 1] for start in data_starts):
            return number
    return None


def resegment(frames: list[bytes], path: Path, port: int) -> Path:
    """A capture with one RELOAD frame per TCP segment, built with text2pcap."""
    lines = []
    for frame in frames:
        for off in range(0, len(frame), 16):
            lines.append(f"{off:06x} " + frame[off : off + 16].hex(" "))
        lines.append("")
    dump = path.with_suffix(".txt")
    dump.write_text("\n".join(lines) + "\n")
    subprocess.run(
        ["text2pcap", "-q", "-T", f"40000,{port}", str(dump), str(path)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    return path


def problems(capture: Path, ports: list[int]) -> dict[int, str]:
    """Frame number -> what is wrong: malformed, or an expert item of severity Error."""
    rows = tshark(
        capture, ports,
        "-Y", f"_ws.malformed || _ws.expert.severity >= {PI_ERROR:#x}",
        "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=|",
        "-e", "frame.number", "-e", "_ws.expert.severity", "-e", "_ws.expert.message",
    )  # fmt: skip
    found = {}
    for row in rows:
        number, severities, messages = [*row.split("\t"), "", ""][:3]
        sev = [int(v, 0) for v in severities.split("|") if v]
        texts = messages.split("|")
        errors = [t for v, t in zip(sev, texts, strict=False) if v >= PI_ERROR]
        if errors:
            found[int(number)] = "; ".join(sorted(set(errors)))
    return found


def pinged(admin: str) -> bool:
    status, info = admin_call(admin, "GET", "/v1/node", 10.0)
    return status == 200 and info["counters"].get("sent.PING_REQ", 0) > 0


def ring_of(admin: str, expected: list[str]) -> list[dict[str, Any]] | None:
    status, walk = admin_call(admin, "GET", "/v1/ring", 30.0)
    if status != 200 or ring_problem(walk["nodes"], expected) is not None:
        return None
    nodes: list[dict[str, Any]] = walk["nodes"]
    return nodes


@pytest.mark.skipif(
    shutil.which("dumpcap") is None or shutil.which("tshark") is None,
    reason="dumpcap/tshark not installed (make test installs them with apt-get)",
)
def test_live_ring_traffic_decodes_cleanly(cluster: Cluster, tmp_path: Path) -> None:
    ports = free_ports(4)
    capture = Capture(tmp_path / "ring.pcapng", ports)
    try:
        capture.wait_started()
        sip = ("--sip", "127.0.0.1:0")
        first = cluster.start(overlay=f"127.0.0.1:{ports[0]}", extra=sip)
        others = [
            cluster.spawn([first.overlay], overlay=f"127.0.0.1:{p}", extra=sip) for p in ports[1:]
        ]
        for node in others:
            node.wait_ready()
        nodes = [first, *others]
        expected = sorted(n.node_id for n in nodes)
        wait_for(lambda: ring_of(first.admin, expected), 60.0, "a consistent ring of 4", 0.5)
        # Routing to another peer's own id makes at least that peer answer a RouteQuery.
        path = f"/v1/route/{first.node_id}"
        status, route = admin_call(others[0].admin, "GET", path, 30.0)
        assert status == 200 and route["responsible"] == first.node_id, route
        # REGISTERs through one node: most AORs belong to another peer, so an ApplyReq crosses
        # the ring for each of those, and its ApplyAns comes back.
        host, port = first.info["sip"].rsplit(":", 1)
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
            udp.settimeout(10.0)
            for i in range(12):
                aor = f"sip:cap{i}@example.com"
                udp.sendto(
                    request("REGISTER", "sip:example.com", to=aor, contacts=[f"<sip:c{i}@h>"]),
                    (host, int(port)),
                )
                assert status_of(udp.recv(65535)) == 200
        # Pings go only to neighbours that were silent for a round: wait for a quiet ring.
        wait_for(lambda: all(pinged(n.admin) for n in nodes), 30.0, "every node to Ping", 0.2)

        leaver, victim = others[1], others[2]
        leaver.terminate()
        assert leaver.wait_exit() == 0
        victim.kill9()
        survivors = sorted(n.node_id for n in (first, others[0]))
        wait_for(
            lambda: ring_of(first.admin, survivors), 60.0, "the 2 survivors to repair the ring", 0.5
        )
        assert ring_of(others[0].admin, survivors) is not None
        capture.wait_written(time.time())
    finally:
        capture.stop()

    # 1. The capture as taken: every error must be a segment Wireshark's framing bug misreads.
    streams = directions(capture.path)
    assert streams, "nothing captured"
    frames: list[bytes] = []
    poisoned: list[tuple[int, set[int]]] = []  # (first misread frame, frames of its direction)
    for d in streams.values():
        own, data_starts = split_frames(d)
        frames += own
        misread_at = first_misread(d, data_starts)
        if misread_at is not None:
            poisoned.append((misread_at, d.frames))
    as_taken = problems(capture.path, ports)
    unexplained = {
        n: text
        for n, text in as_taken.items()
        if not any(start <= n and n in members for start, members in poisoned)
    }
    assert unexplained == {}, f"frames with errors: {sorted(unexplained.items())[:10]}"

    # 2. Every frame again, one per segment: no malformed frame, no error at all.
    single = resegment(frames, tmp_path / "frames.pcapng", RESEGMENTED_PORT)
    errors = problems(single, [RESEGMENTED_PORT])
    assert errors == {}, f"{len(errors)} frames with errors: {sorted(errors.items())[:10]}"
    lines = tshark(
        single, [RESEGMENTED_PORT],
        "-T", "fields", "-E", "occurrence=a", "-E", "aggregator=,",
        "-e", "reload_framing.type", "-e", "reload.message.code",
        "-e", "reload.error_response.code",
    )  # fmt: skip
    assert len(lines) == len(frames), "tshark did not show every frame"
    data_frames = [line for line in lines if line.split("\t")[0] == "128"]
    codes = [line.split("\t")[1] for line in data_frames]
    error_codes = sorted(
        int(f[2]) for f in (ln.split("\t") for ln in data_frames) if f[2:] and f[2]
    )
    assert all(c and "," not in c for c in codes), "a DATA frame without exactly one message"
    seen = {int(c) for c in codes}
    missing = {name: code for name, code in REQUEST_CODES.items() if code not in seen}
    assert not missing, f"request codes never seen: {missing}; seen {sorted(seen)}"
    assert ROUTE_QUERY in seen and ROUTE_QUERY + 1 in seen
    answers = {code + 1 for code in REQUEST_CODES.values() if code != 17}
    assert answers <= seen, f"answers missing: {sorted(answers - seen)}"
    print(
        f"\n{len(frames)} frames ({len(data_frames)} messages) in {len(streams)} directions; "
        f"{len(poisoned)} directions hit Wireshark's framing-offset bug; codes {sorted(seen)}; "
        f"error responses {error_codes}"
    )
