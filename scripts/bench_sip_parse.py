"""Micro-benchmark of the SIP front end's per-REGISTER CPU, without sockets or the overlay.

Runs the work the node's event loop does for one REGISTER from the benchmark SIPp
scenario (scripts/bench/register.xml): ``SipCore.receive`` (parse, the checks before the
registrar, transaction lookup, ``plan_register``), ``decide_register`` against the AOR's
current bindings, and ``SipCore.respond`` (200 OK bytes, transaction cache update).
Every request is distinct (user, Call-ID, branch, tag), as under SIPp, so nothing is
served from a cache a real load would miss; ``now`` advances at the given rate so the
transaction cache fills and expires as it would.

    .venv/bin/python scripts/bench_sip_parse.py [--requests 60000] [--repeat 7]
    .venv/bin/python scripts/bench_sip_parse.py --profile   # cProfile of one pass

Prints µs per REGISTER for each pass and the median, for "core" (receive + respond with
the registrar's reply already decided) and "full" (decide_register included).
"""

from __future__ import annotations

import argparse
import cProfile
import pstats
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from p2preg.sip.core import NeedRegister, Respond, SipCore
from p2preg.sip.responses import Reply, Source

PID = 48213
LOCAL_IP = "127.0.0.1"
LOCAL_PORT = 5071
START = 1_700_000_000.0


def sipp_register(call_number: int, user: int) -> bytes:
    """The bytes SIPp sends for register.xml: indentation dropped, CRLF line ends."""
    lines = [
        "REGISTER sip:example.com SIP/2.0",
        f"Via: SIP/2.0/UDP {LOCAL_IP}:{LOCAL_PORT};branch=z9hG4bK-{PID}-{call_number}-0;rport",
        "Max-Forwards: 70",
        f"From: <sip:bench{user}@example.com>;tag={PID}SIPpTag{call_number:02d}",
        f"To: <sip:bench{user}@example.com>",
        f"Call-ID: {call_number}-{PID}@{LOCAL_IP}",
        "CSeq: 1 REGISTER",
        f"Contact: <sip:bench{user}@{LOCAL_IP}:{LOCAL_PORT};transport=UDP>",
        "Expires: 3600",
        "User-Agent: SIPp p2preg-register",
        "Content-Length: 0",
        "",
        "",
    ]
    return "\r\n".join(lines).encode()


def make_requests(n: int, users: int) -> list[bytes]:
    return [sipp_register(i + 1, i % users) for i in range(n)]


def run_pass(requests: list[bytes], rate: float, full: bool) -> float:
    """One pass over ``requests`` with a fresh core; returns CPU µs per request.

    CPU time rather than wall time: on a shared machine the process is descheduled now
    and then, which says nothing about the code."""
    core = SipCore()
    source = Source(LOCAL_IP, LOCAL_PORT, "UDP")
    step_dt = 1.0 / rate
    ok = Reply(200, "OK", (("Contact", "<sip:x@127.0.0.1:5071>;expires=3600"),))
    now = START
    t0 = time.process_time_ns()
    for data in requests:
        now += step_dt
        step = core.receive(data, source, now)
        if not isinstance(step, NeedRegister):
            raise SystemExit(f"unexpected step {step!r}")
        reply = core.decide_register(step, (), now).reply if full else ok
        out = core.respond(step, reply, now)
        if out.status != 200:
            raise SystemExit(f"unexpected response {out.data!r}")
    elapsed = time.process_time_ns() - t0
    return elapsed / len(requests) / 1000.0


def sample_response(requests: list[bytes]) -> bytes:
    core = SipCore()
    step = core.receive(requests[0], Source(LOCAL_IP, LOCAL_PORT, "UDP"), START)
    assert isinstance(step, NeedRegister)
    out: Respond = core.respond(step, core.decide_register(step, (), START).reply, START)
    return out.data


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--requests", type=int, default=60_000)
    parser.add_argument("--users", type=int, default=100_000)
    parser.add_argument("--repeat", type=int, default=7)
    parser.add_argument("--rate", type=float, default=1500.0, help="requests/s of `now`")
    parser.add_argument("--profile", action="store_true", help="cProfile one full pass")
    parser.add_argument("--show", action="store_true", help="print one request and response")
    args = parser.parse_args()

    requests = make_requests(args.requests, args.users)
    if args.show:
        print(requests[0].decode())
        print(sample_response(requests).decode())
    if args.profile:
        prof = cProfile.Profile()
        prof.enable()
        run_pass(requests, args.rate, True)
        prof.disable()
        pstats.Stats(prof).sort_stats("tottime").print_stats(25)
        return
    run_pass(requests[:2000], args.rate, True)  # warm-up
    for full in (False, True):
        label = "full" if full else "core"
        runs = [run_pass(requests, args.rate, full) for _ in range(args.repeat)]
        shown = " ".join(f"{r:.2f}" for r in runs)
        print(f"{label}: median {statistics.median(runs):.2f} µs/REGISTER (runs: {shown})")


if __name__ == "__main__":
    main()
