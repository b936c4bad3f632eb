"""Micro-benchmark of the overlay wire path: RELOAD encode/decode, link framing, and the
link layer's per-frame work, in µs per operation.

The messages are the ones a REGISTER on a 3-node ring puts on the wire: a routed Fetch
and Store for one SIP-binding resource, their answers, the owner's replica StoreReq and
StoreAns, plus the Chord maintenance (UpdateReq, PingReq) in between. Values are ~200
bytes, as a msgpack'd binding is.

    .venv/bin/python scripts/bench_codec.py [--number 20000] [--repeat 7]
    .venv/bin/python scripts/bench_codec.py --profile decode:FetchAns
    .venv/bin/python scripts/bench_codec.py --src /some/other/checkout   # A/B another tree

Each row runs ``--number`` operations per pass and ``--repeat`` passes; it reports the
minimum (the least disturbed pass on a shared machine) and the median.
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import pstats
import statistics
import sys
import time
from collections.abc import Callable
from pathlib import Path


def _parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--number", type=int, default=20000, help="operations per pass")
    p.add_argument("--repeat", type=int, default=7, help="passes per row")
    p.add_argument("--only", default="", help="run only rows whose name contains this")
    p.add_argument("--profile", default="", help="cProfile the row with this exact name")
    p.add_argument("--src", default="", help="import overlay from this directory instead")
    p.add_argument(
        "--sockets",
        type=int,
        default=4000,
        help="round trips per pass of the loopback echo rows (0: skip them)",
    )
    return p.parse_args()


ARGS = _parse_args()
sys.path.insert(0, ARGS.src or str(Path(__file__).resolve().parent.parent))

from overlay.codec import decode_message, encode_message  # noqa: E402
from overlay.framing import FrameDecoder, ReceiveWindow, encode_ack, encode_data  # noqa: E402
from overlay.messages import (  # noqa: E402
    FetchAns,
    FetchKindResponse,
    FetchReq,
    ForwardingHeader,
    Message,
    NodeDestination,
    PingReq,
    ResourceDestination,
    StoreAns,
    StoredData,
    StoredDataSpecifier,
    StoreKindData,
    StoreKindResponse,
    StoreReq,
    UpdateReq,
    overlay_hash,
)
from overlay.transport import LinkLayer, _LinkProtocol  # noqa: E402

SIP_BINDING_KIND = 0xF0000001
OVERLAY = overlay_hash("p2preg.bench")
N1 = 0x0123456789ABCDEF0123456789ABCDEF
N2 = 0x5555555555555555AAAAAAAAAAAAAAAA
N3 = 0xFEDCBA9876543210FEDCBA9876543210
RID = 0x8E1F8D6C2A8D4E5B9C0D1E2F30415263
TID = 0x1122334455667788


def _value(user: int) -> bytes:
    """~200 bytes shaped like a msgpack'd binding (maps of short strings and numbers)."""
    text = (
        f"\x8f\xa3key\xd9+<sip:bench{user}@127.0.0.1:5071;transport=UDP>"
        f"\xa3aor\xb8sip:bench{user}@example.com\xa3uri\xd9+sip:bench{user}@127.0.0.1:5071"
        f"\xa7call_id\xb31-48213@127.0.0.1\xa4cseq\x01\xa8src_host\xa9127.0.0.1"
        f"\xa9transport\xa3udp\xaauser_agent\xb8SIPp p2preg-register"
    )
    return text.encode("latin-1")[:200].ljust(200, b"\x00")


def _entry(user: int) -> StoredData:
    return StoredData(
        storage_time=1_700_000_000_123 + user,
        lifetime=3600,
        key=f"<sip:bench{user}@127.0.0.1:5071;transport=UDP>".encode(),
        value=_value(user),
    )


def _header(via: tuple[int, ...], dest: NodeDestination | ResourceDestination) -> ForwardingHeader:
    return ForwardingHeader(
        overlay=OVERLAY,
        transaction_id=TID,
        via_list=tuple(NodeDestination(n) for n in via),
        destination_list=(dest,),
    )


def messages() -> dict[str, Message]:
    to_rid = ResourceDestination(RID)
    return {
        "FetchReq": Message(
            _header((N1,), to_rid), FetchReq(RID, (StoredDataSpecifier(SIP_BINDING_KIND),))
        ),
        "FetchReq fwd": Message(
            _header((N1, N2), to_rid), FetchReq(RID, (StoredDataSpecifier(SIP_BINDING_KIND),))
        ),
        "FetchAns 1": Message(
            _header((N3,), NodeDestination(N1)),
            FetchAns((FetchKindResponse(SIP_BINDING_KIND, 7, (_entry(1),)),)),
        ),
        "FetchAns 2": Message(
            _header((N3,), NodeDestination(N1)),
            FetchAns((FetchKindResponse(SIP_BINDING_KIND, 7, (_entry(1), _entry(2))),)),
        ),
        "StoreReq": Message(
            _header((N1,), to_rid),
            StoreReq(RID, 0, (StoreKindData(SIP_BINDING_KIND, 7, (_entry(1),)),)),
        ),
        "StoreAns 2rep": Message(
            _header((N3,), NodeDestination(N1)),
            StoreAns((StoreKindResponse(SIP_BINDING_KIND, 8, (N1, N2)),)),
        ),
        "UpdateReq": Message(
            _header((N1,), NodeDestination(N2)),
            UpdateReq(12345, 2, (N3, N2, N1), (N2, N3, N1)),
        ),
        "PingReq": Message(_header((N1,), NodeDestination(N2)), PingReq()),
    }


# --- timing ------------------------------------------------------------------------------


def timed(fn: Callable[[int], None], number: int, repeat: int) -> tuple[float, float]:
    """(min, median) µs per operation; ``fn(n)`` runs n operations."""
    fn(max(1, number // 10))  # warm-up
    per_op = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        fn(number)
        per_op.append((time.perf_counter() - t0) / number * 1e6)
    return min(per_op), statistics.median(per_op)


def _encoder(msg: Message) -> Callable[[int], None]:
    def run(n: int) -> None:
        enc = encode_message
        for _ in range(n):
            enc(msg)

    return run


def _decoder(data: bytes) -> Callable[[int], None]:
    def run(n: int) -> None:
        dec = decode_message
        for _ in range(n):
            dec(data)

    return run


def _framing_rows(payload: bytes) -> dict[str, Callable[[int], None]]:
    frame = encode_data(5, payload)
    ack = encode_ack(5, 0xF)

    def build_data(n: int) -> None:
        for i in range(n):
            encode_data(i, payload)

    def parse_data(n: int) -> None:
        decoder = FrameDecoder()
        for _ in range(n):
            decoder.feed(frame)

    def parse_data_x8(n: int) -> None:  # several frames in one TCP read
        decoder = FrameDecoder()
        burst = frame * 8
        for _ in range(n // 8):
            decoder.feed(burst)

    def build_ack(n: int) -> None:
        window = ReceiveWindow()
        for i in range(n):
            window.ack_for(i)

    def parse_ack(n: int) -> None:
        decoder = FrameDecoder()
        for _ in range(n):
            decoder.feed(ack)

    return {
        "frame DATA build": build_data,
        "frame DATA parse": parse_data,
        "frame DATA parse x8": parse_data_x8,
        "frame ACK build": build_ack,
        "frame ACK parse": parse_ack,
    }


class _Wire:
    """Stands in for an asyncio transport: the link layer writes, the bench carries."""

    def __init__(self) -> None:
        self.out: list[bytes] = []

    def write(self, data: bytes) -> None:
        self.out.append(data)

    def get_write_buffer_size(self) -> int:
        return 0

    def get_extra_info(self, name: str, default: object = None) -> object:
        return ("127.0.0.1", 1) if name == "peername" else default

    def take(self) -> bytes:
        data = b"".join(self.out)
        self.out.clear()
        return data


def _link_rows(
    msgs: dict[str, Message], loop: asyncio.AbstractEventLoop
) -> dict[str, Callable[[int], None]]:
    """One message A -> B through two LinkLayers (frame, deframe, ACK back, ACK handled),
    without sockets, then the same with the codec on both ends."""
    got: list[bytes] = []

    def layer(on_message: Callable[[object, bytes], None]) -> tuple[LinkLayer, _LinkProtocol]:
        lay = LinkLayer("127.0.0.1", 0, on_message=on_message, on_link_failed=lambda n, a: None)
        lay._loop = loop
        proto = _LinkProtocol(lay, None)
        proto.connection_made(_Wire())  # type: ignore[arg-type]
        return lay, proto

    a, pa = layer(lambda link, data: None)
    _, pb = layer(lambda link, data: got.append(data))
    assert pa.link is not None and pb.link is not None
    la, wa, wb = pa.link, pa.link.transport, pb.link.transport
    assert isinstance(wa, _Wire) and isinstance(wb, _Wire)
    payload = encode_message(msgs["FetchAns 2"])

    def link_only(n: int) -> None:
        for _ in range(n):
            a.send_on(la, payload)
            pb.data_received(wa.take())
            pa.data_received(wb.take())
        got.clear()

    msg = msgs["FetchAns 2"]

    def with_codec(n: int) -> None:
        for _ in range(n):
            a.send_on(la, encode_message(msg))
            pb.data_received(wa.take())
            decode_message(got.pop())
            pa.data_received(wb.take())

    return {"link A->B + ACK": link_only, "link+codec FetchAns 2": with_codec}


async def _echo(n: int, window: int, payload: bytes, codec: bool) -> tuple[float, float]:
    """(CPU µs, wall µs) per round trip: A keeps ``window`` messages in flight to B over a
    real loopback connection; B answers each at once on the same link (as a Fetch is
    answered), with ``codec`` both ends decode and B re-encodes. Both layers share this
    process, so the CPU figure is the whole exchange: frames, ACKs, syscalls, event loop."""
    done = asyncio.get_running_loop().create_future()
    state = {"sent": 0, "got": 0}
    b_layer: LinkLayer | None = None
    msg = decode_message(payload)

    def on_b(link: object, data: bytes) -> None:
        assert b_layer is not None
        b_layer.send_on(link, encode_message(decode_message(data)) if codec else data)  # type: ignore[arg-type]

    def on_a(link: object, data: bytes) -> None:
        if codec:
            decode_message(data)
        state["got"] += 1
        if state["sent"] < n:
            send()
        elif state["got"] == n and not done.done():
            done.set_result(None)

    a_layer = LinkLayer("127.0.0.1", 0, on_message=on_a, on_link_failed=lambda i, a: None)
    b_layer = LinkLayer("127.0.0.1", 0, on_message=on_b, on_link_failed=lambda i, a: None)
    await a_layer.start()
    addr_b = await b_layer.start()

    def send() -> None:
        state["sent"] += 1
        a_layer.send(N2, addr_b, encode_message(msg) if codec else payload)

    try:
        for _ in range(window):
            send()
        cpu, wall = time.process_time(), time.perf_counter()
        await asyncio.wait_for(done, 120)
        cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    finally:
        await a_layer.close()
        await b_layer.close()
    return cpu / n * 1e6, wall / n * 1e6


def _echo_rows(payload: bytes) -> None:
    n = ARGS.sockets
    for codec in (False, True):
        for window in (1, 8):
            name = f"loopback echo w={window}{' +codec' if codec else ''}"
            if ARGS.only and ARGS.only not in name:
                continue
            runs = [
                asyncio.run(_echo(n, window, payload, codec)) for _ in range(max(3, ARGS.repeat))
            ]
            cpu = statistics.median(r[0] for r in runs)
            wall = statistics.median(r[1] for r in runs)
            lo = min(r[0] for r in runs)
            print(
                f"{name:32} {len(payload):6d} {lo:8.2f} {cpu:10.2f}   (CPU; wall median"
                f" {wall:.1f} µs)",
                flush=True,
            )


def main() -> None:
    msgs = messages()
    rows: dict[str, Callable[[int], None]] = {}
    sizes: dict[str, int] = {}
    for name, msg in msgs.items():
        data = encode_message(msg)
        assert decode_message(data) == msg, name
        sizes[f"encode:{name}"] = sizes[f"decode:{name}"] = len(data)
        rows[f"encode:{name}"] = _encoder(msg)
        rows[f"decode:{name}"] = _decoder(data)
    fetch_ans = encode_message(msgs["FetchAns 2"])
    for name, fn in _framing_rows(fetch_ans).items():
        rows[name] = fn
        sizes[name] = len(fetch_ans)
    sizes["frame ACK build"] = sizes["frame ACK parse"] = 9
    loop = asyncio.new_event_loop()
    try:
        for name, fn in _link_rows(msgs, loop).items():
            rows[name] = fn
            sizes[name] = len(fetch_ans)

        if ARGS.profile:
            prof = cProfile.Profile()
            prof.runcall(rows[ARGS.profile], ARGS.number)
            pstats.Stats(prof).sort_stats("tottime").print_stats(25)
            return

        print(f"source: {ARGS.src or 'this checkout'}  number={ARGS.number} repeat={ARGS.repeat}")
        print(f"{'operation':32} {'bytes':>6} {'min µs':>8} {'median µs':>10}")
        for name, fn in rows.items():
            if ARGS.only and ARGS.only not in name:
                continue
            lo, med = timed(fn, ARGS.number, ARGS.repeat)
            print(f"{name:32} {sizes[name]:6d} {lo:8.2f} {med:10.2f}", flush=True)
    finally:
        loop.close()
    if ARGS.sockets and not ARGS.profile:
        _echo_rows(fetch_ans)


if __name__ == "__main__":
    main()
