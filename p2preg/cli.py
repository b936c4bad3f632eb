"""The ``p2preg`` command line: run a node, inspect and steer one through its admin API, simulate.

Client subcommands speak plain HTTP with the standard library so that they start fast and do not
need an event loop; only ``run`` imports the overlay runtime and aiohttp.
"""

from __future__ import annotations

import argparse
import json
import math
import os
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from p2preg import __version__

EXIT_OK = 0
EXIT_FAILED = 1  # the node answered, but with an error (or the operation did not complete)
EXIT_USAGE = 2  # bad arguments, or the admin API cannot be reached at all

DEFAULT_ADMIN_TIMEOUT = 60.0

# --- argument parsing -------------------------------------------------------------------------

RUN_EPILOG = """\
config file (--config FILE, TOML):
  Top-level keys are the options above without the leading dashes ("-" or "_" alike);
  flags given on the command line override them. The [registrar] table (file only) sets
  the registrar's rules and the SIP front end's limits:
    domains           domains served; a REGISTER for another domain gets 403 (Request-URI)
                      or 404 (To) (default: [] = any domain)
    default_expires   seconds granted when a REGISTER names none (default: 3600)
    min_expires       shortest registration accepted (default: 60)
    max_expires       longer requests are cut to this (default: 86400)
    min_expires_mode  "clamp": grant min_expires to a shorter one, as Kamailio does;
                      "423": refuse it with 423 Interval Too Brief and Min-Expires
                      (default: "clamp")
    max_contacts      bindings per AOR; one more gets 503 (default: 10)
    max_contacts_mode "503", or "evict" to drop the oldest binding (default: "503")
    retry_after       Retry-After seconds of every 503 (default: 5)
    max_in_flight     overload bound: REGISTERs and lookups waiting on the ring at once;
                      past it requests get 503 + Retry-After at once (default: 1000)
    overlay_deadline  seconds a REGISTER or lookup may wait on the ring before its 503
                      (default: 5.0)
    max_connections, half_open_timeout, idle_timeout
                      SIP TCP limits: open streams, seconds to finish a started message,
                      seconds an idle stream is kept (defaults: 1024, 10.0, 300.0)
  An unknown key is an error (exit 2).

example:
  data-dir = "/var/lib/p2preg"
  overlay = "10.0.0.5:7000"
  admin = "127.0.0.1:7080"
  sip = "0.0.0.0:5060"
  bootstrap = ["10.0.0.6:7000", "10.0.0.7:7000"]

  [registrar]
  domains = ["example.com"]
  min_expires = 60
  min_expires_mode = "clamp"
  max_contacts = 5
  max_in_flight = 2000

  p2preg run --config p2preg.toml --log-level debug
"""

REQUIRED_RUN = (("data_dir", "--data-dir"), ("overlay", "--overlay"), ("admin", "--admin"))


class _Formatter(argparse.RawDescriptionHelpFormatter):
    pass


ADMIN_ENV = "P2PREG_ADMIN"


def _add_admin_args(parser: argparse.ArgumentParser) -> None:
    default = os.environ.get(ADMIN_ENV) or None
    parser.add_argument(
        "--admin",
        default=default,
        metavar="HOST:PORT",
        help="admin API address of the node to ask (what its `p2preg run --admin` bound). "
        f"Default: ${ADMIN_ENV} ({default or 'not set'}). HTTP(S) proxy variables are "
        "ignored for admin calls",
    )
    parser.add_argument(
        "--json", action="store_true", help="print JSON for machines instead of a table"
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_ADMIN_TIMEOUT,
        metavar="SECONDS",
        help="give up on the admin API after this many seconds (default: %(default)s)",
    )


def build_parser() -> argparse.ArgumentParser:
    from overlay.config import ChordConfig

    defaults = ChordConfig()
    parser = argparse.ArgumentParser(
        prog="p2preg",
        formatter_class=_Formatter,
        description=(
            "p2preg: a peer-to-peer SIP registrar whose nodes form a Chord-reload (RFC 6940)\n"
            "ring. Run a node with `p2preg run`; inspect a running ring through any node's\n"
            "admin API with `p2preg status|ring|route|leave --admin HOST:PORT`; store and\n"
            "fetch test values through the ring with `p2preg put|get` and see the copies a\n"
            "node holds with `p2preg records`; `p2preg sim` runs the overlay in a\n"
            "deterministic simulator. `p2preg lookup AOR` shows an AOR's SIP bindings.\n"
            "`p2preg COMMAND --help` explains each command."
        ),
    )
    parser.add_argument("--version", action="version", version=f"p2preg {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")

    run = sub.add_parser(
        "run",
        formatter_class=_Formatter,
        help="run one node in the foreground",
        description=(
            "Run one node in the foreground. Without --bootstrap it starts a new ring; with it,\n"
            "it joins the ring those peers belong to. Logs go to stderr. SIGTERM or SIGINT (or\n"
            "POST /v1/leave) makes the node leave the ring gracefully and exit 0.\n"
            "Port 0 in any address means any free port; the bound ports are logged\n"
            "('overlay listening on HOST:PORT') and written to --ready-file.\n"
            "--data-dir, --overlay and --admin are required, as flags or in --config FILE."
        ),
        epilog=RUN_EPILOG,
    )
    run.add_argument(
        "--config",
        type=Path,
        metavar="FILE",
        help="read options from this TOML file: any option below (name without the dashes) "
        "and the [registrar] table described at the end. Flags given on the command line "
        "override the file. Default: none",
    )
    run.add_argument(
        "--data-dir",
        type=Path,
        metavar="DIR",
        help="directory for this node's state: its node id and its records (DIR/store, LMDB); "
        "created if missing. Restarting on the same directory keeps the node id and the "
        "records. One process per directory",
    )
    run.add_argument(
        "--overlay",
        metavar="HOST:PORT",
        help="address the overlay (RELOAD over TCP) listens on; peers must be able to reach it",
    )
    run.add_argument(
        "--admin",
        metavar="HOST:PORT",
        help="address of the admin HTTP API (JSON) used by the p2preg CLI; keep it private",
    )
    run.add_argument(
        "--sip",
        metavar="HOST:PORT",
        help="address the SIP registrar listens on, UDP and TCP on the same port (e.g. "
        "0.0.0.0:5060). Its rules are the [registrar] settings of --config. Default: none, "
        "i.e. an overlay-only node",
    )
    run.add_argument(
        "--bootstrap",
        action="extend",
        nargs="+",
        default=[],
        metavar="HOST:PORT",
        help="overlay address of a peer already in the ring; repeat or list several, any one "
        "answering is enough. The list may name this node itself (one seeds list for every "
        "node): it is skipped, and the first seed of the list founds the ring unless its "
        "data directory remembers one. Not joined yet: a WARN line at growing intervals "
        "(2 s, 4 s, ... 60 s). "
        "Default: none, i.e. start a new ring (or rejoin through the peers the data "
        "directory remembers)",
    )
    run.add_argument(
        "--new-ring",
        action="store_true",
        help="found a new ring even though the data directory remembers being a member of one "
        "(ring.json). Without it, a node started with no reachable bootstrap peer and no "
        "remembered peer answering refuses to start (exit 2) instead of silently splitting "
        "the ring. Default: off",
    )
    run.add_argument(
        "--down-window",
        type=float,
        default=15.0,
        metavar="MINUTES",
        help="a peer lost (missed pings, link failed, left) stays listed as down (DN) in "
        "`p2preg ring` for this many minutes, unless it comes back (default: %(default)s)",
    )
    run.add_argument(
        "--overlay-name",
        default=defaults.overlay_name,
        metavar="NAME",
        help="overlay name; every peer of one ring must use the same (default: %(default)s)",
    )
    run.add_argument(
        "--node-id",
        metavar="HEX",
        help="this node's 128-bit id as 32 hex digits. Default: the id saved in --data-dir, "
        "else a random one (which is then saved there)",
    )
    run.add_argument(
        "--ready-file",
        type=Path,
        metavar="PATH",
        help="once the listeners are bound, write JSON {node_id, overlay, admin, sip, pid} "
        "here (for scripts and tests). Default: none",
    )
    run.add_argument(
        "--event-loop",
        choices=["auto", "asyncio", "uvloop"],
        default="auto",
        help="the asyncio event loop implementation: uvloop (installed with the 'fast' extra, "
        "as make ring and make test do) uses about a fifth less CPU per SIP request; asyncio "
        "is the standard library's; auto takes uvloop when it is installed "
        "(default: %(default)s)",
    )
    run.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level on stderr (default: %(default)s)",
    )
    storage = run.add_argument_group("storage", "the records kept under --data-dir/store")
    storage.add_argument(
        "--durability",
        choices=["sync", "async"],
        default="sync",
        help="sync: a store is on disk (LMDB flushed) before it is acknowledged; concurrent "
        "stores share one flush. async: faster; a crash of the machine (power loss, kernel "
        "panic) may lose the last acknowledged writes, a killed process does not "
        "(default: %(default)s)",
    )
    storage.add_argument(
        "--anti-entropy-interval",
        type=float,
        default=None,
        metavar="SECONDS",
        help="seconds between digest comparisons of each replicated range with its replicas, "
        "which repair any divergence (default: the overlay's)",
    )
    storage.add_argument(
        "--max-map-size",
        type=int,
        default=None,
        metavar="MIB",
        help="the store grows on demand up to this many MiB, then refuses stores with a clear "
        "error (default: 16384)",
    )
    timers = run.add_argument_group(
        "overlay tuning", "defaults suit a data centre; tests use shorter timers"
    )
    timers.add_argument(
        "--ping-interval",
        type=float,
        default=defaults.ping_interval,
        metavar="SECONDS",
        help="seconds between liveness pings to each neighbour (default: %(default)s)",
    )
    timers.add_argument(
        "--missed-pings",
        type=int,
        default=defaults.missed_pings,
        metavar="N",
        help="a neighbour missing this many ping answers in a row is declared dead "
        "(default: %(default)s)",
    )
    timers.add_argument(
        "--update-interval",
        type=float,
        default=defaults.update_interval,
        metavar="SECONDS",
        help="seconds between periodic Updates to the neighbours (default: %(default)s)",
    )
    timers.add_argument(
        "--finger-interval",
        type=float,
        default=defaults.finger_interval,
        metavar="SECONDS",
        help="seconds between finger refreshes, one finger per tick in rotation "
        "(default: %(default)s)",
    )
    timers.add_argument(
        "--jitter",
        type=float,
        default=defaults.jitter,
        metavar="FRACTION",
        help="every periodic timer is scaled by a random factor in [1-J, 1+J] "
        "(default: %(default)s)",
    )
    timers.add_argument(
        "--successors",
        type=int,
        default=defaults.successors,
        metavar="N",
        help="length of the successor list, at least 3 (default: %(default)s)",
    )
    timers.add_argument(
        "--predecessors",
        type=int,
        default=defaults.predecessors,
        metavar="N",
        help="length of the predecessor list, at least 3 (default: %(default)s)",
    )
    timers.add_argument(
        "--leave-timeout",
        type=float,
        default=defaults.leave_timeout,
        metavar="SECONDS",
        help="how long a leaving node waits for its neighbours' LeaveAns (default: %(default)s)",
    )

    status = sub.add_parser(
        "status",
        formatter_class=_Formatter,
        help="show one node: id, state, addresses, share of the ring, neighbours",
        description="Show one node as its admin API reports it (GET /v1/node).",
    )
    _add_admin_args(status)

    ring = sub.add_parser(
        "ring",
        formatter_class=_Formatter,
        help="list every peer of the ring in ring order",
        description=(
            "Walk the ring from the given node (GET /v1/ring): it probes its successor over\n"
            "the overlay, then that peer's successor, and so on until it is back at itself.\n"
            "Peers that do not answer are listed as unreachable. --json prints a JSON array of\n"
            "node objects in ring order (node_id, overlay, admin, sip, state, successors,\n"
            "predecessors, responsible_ppb, num_resources, primary_records, replica_records,\n"
            "uptime_s, reachable). primary_records / replica_records count the records the peer\n"
            "holds as the responsible peer / as a copy for its predecessors.\n"
            "Exit 1 when the walk did not come back round to the start."
        ),
    )
    _add_admin_args(ring)

    route = sub.add_parser(
        "route",
        formatter_class=_Formatter,
        help="show the hop path to the peer responsible for a key",
        description=(
            "Show the hops a message for KEY takes from the given node to the peer responsible\n"
            "for it (GET /v1/route/KEY): each hop is asked with RouteQuery where it would\n"
            "forward, until a peer names itself. KEY is an AOR or resource name (e.g.\n"
            "alice@example.com; a sip:/sips: prefix is dropped) hashed to its Resource-ID, or\n"
            "an id given as 32 hex digits (optionally 0x-prefixed)."
        ),
    )
    route.add_argument("key", metavar="KEY", help="AOR / resource name, or a 32-hex-digit id")
    _add_admin_args(route)

    put = sub.add_parser(
        "put",
        formatter_class=_Formatter,
        help="store a test value under a name, through the overlay (DEBUG-KV kind)",
        description=(
            "Store VALUE under NAME (PUT /v1/kv/NAME): the node routes a RELOAD Store of the\n"
            "DEBUG-KV kind to the peer responsible for the Resource-ID of NAME, which writes it\n"
            "and copies it to its two successors. Prints the responsible peer and the replicas\n"
            "that acknowledged. A store refused for a passing reason (the range is changing\n"
            "hands) is retried a few times. Exit 1 when the ring could not store it."
        ),
    )
    put.add_argument("name", metavar="NAME", help="any text; hashed (SHA-1) to its Resource-ID")
    put.add_argument("value", metavar="VALUE", help="the value, stored as UTF-8 bytes")
    put.add_argument(
        "--lifetime",
        type=int,
        default=86_400,
        metavar="SECONDS",
        help="the value expires this many seconds after the store (default: %(default)s)",
    )
    _add_admin_args(put)

    get = sub.add_parser(
        "get",
        formatter_class=_Formatter,
        help="fetch the test value stored under a name, through the overlay",
        description=(
            "Fetch the DEBUG-KV value of NAME (GET /v1/kv/NAME) from the peer responsible for\n"
            "it, wherever it is in the ring, and print it. Exit 1 with one line on stderr when\n"
            "nothing is stored under NAME (or it expired), or the ring could not answer."
        ),
    )
    get.add_argument("name", metavar="NAME", help="the name given to `p2preg put`")
    _add_admin_args(get)

    records = sub.add_parser(
        "records",
        formatter_class=_Formatter,
        help="show what one node holds on disk for a resource (primary or replica copy)",
        description=(
            "Show the records the given node itself holds for one resource (GET /v1/records),\n"
            "without asking the ring: kind, dictionary key, role (primary: this node is\n"
            "responsible; replica: a copy kept for its predecessor), storage time, expiry,\n"
            "whether it exists (false: a removal kept until it expires) and the value size\n"
            "(the value itself for the DEBUG-KV kind). Ask each node to see every copy."
        ),
    )
    target = records.add_mutually_exclusive_group(required=True)
    target.add_argument("--resource", metavar="HEX", help="the Resource-ID, 32 hex digits")
    target.add_argument(
        "--name",
        metavar="NAME",
        help="a resource name, hashed as is (what `p2preg put` used)",
    )
    target.add_argument(
        "--aor", metavar="AOR", help="a SIP AOR; a sip:/sips: prefix is dropped before hashing"
    )
    _add_admin_args(records)

    lookup = sub.add_parser(
        "lookup",
        formatter_class=_Formatter,
        help="show an AOR's SIP bindings, its responsible peer and its replicas",
        description=(
            "Show the registrations of one AOR (GET /v1/aor/AOR), like `kamctl ul show`: the\n"
            "peer responsible for it (id and addresses), the peers holding its replicas, and\n"
            "each live binding: contact, seconds until it expires, q, Call-ID, CSeq, where the\n"
            "REGISTER came from (received), user agent. The bindings are fetched through the\n"
            "ring, so any node can be asked. AOR is e.g. sip:alice@example.com (sip: is assumed\n"
            "when there is no scheme). Exit 1 with one line when the AOR has no bindings."
        ),
    )
    lookup.add_argument("aor", metavar="AOR", help="address of record, e.g. sip:alice@example.com")
    _add_admin_args(lookup)

    _add_aors_parser(sub)
    _add_unregister_parser(sub)

    leave = sub.add_parser(
        "leave",
        formatter_class=_Formatter,
        help="make a node leave the ring gracefully (its process then exits 0)",
        description="Ask the node to leave the ring gracefully (POST /v1/leave); its process\n"
        "then exits 0.",
    )
    _add_admin_args(leave)

    sim = sub.add_parser(
        "sim",
        formatter_class=_Formatter,
        help="run the overlay in the deterministic simulator and print its figures",
        description=(
            "Build a ring of N simulated peers by joins over a virtual network with virtual\n"
            "time, stabilise it, optionally fail a fraction of the peers at once and/or run\n"
            "churn, then route lookups for random ids. Prints mean/p50/p99 hop counts, the\n"
            "lookup success rate, the stabilisation rounds until every successor pointer was\n"
            "right, and maintenance messages per node per second. The same seed gives the same\n"
            "figures. --json prints one JSON object.\n\n"
            "Two ways to build the ring, both joining every peer through the real join\n"
            "protocol of the same ChordPeer code: 'steady' starts 50 peers per virtual second\n"
            "(N/50 s of joins: the whole ring's maintenance traffic over that time makes its\n"
            "cost grow as N^2, hours at 100,000 peers); 'waves' grows the ring geometrically,\n"
            "each wave starting --wave-growth times the ring's size within one virtual second,\n"
            "then running until every first successor and predecessor is right before the next\n"
            "wave (log2(N) waves at the default growth 1). The figures say which build was\n"
            "used. Right after a wave build many peers are still refreshing the fingers the\n"
            "last wave moved: give --settle some seconds (10 is enough at 10,000 peers) so the\n"
            "maintenance window measures the converged ring."
        ),
    )
    sim.add_argument(
        "--nodes", type=int, default=100, metavar="N", help="peers (default: %(default)s)"
    )
    sim.add_argument(
        "--lookups",
        type=int,
        default=1000,
        metavar="K",
        help="lookups for random ids after the ring has converged (default: %(default)s)",
    )
    sim.add_argument(
        "--churn",
        type=float,
        default=0.0,
        metavar="RATE",
        help="churn events per second of virtual time (joins and failures alternate) during "
        "the churn phase; 0 = no churn (default: %(default)s)",
    )
    sim.add_argument(
        "--fail",
        type=float,
        default=0.0,
        metavar="FRACTION",
        help="fraction (0..1) of the peers that fail at once after convergence "
        "(default: %(default)s)",
    )
    sim.add_argument(
        "--seed", type=int, default=1, metavar="S", help="random seed (default: %(default)s)"
    )
    sim.add_argument(
        "--build",
        choices=("steady", "waves"),
        default="steady",
        help="how the ring is built: steady joins or geometric waves (default: %(default)s)",
    )
    sim.add_argument(
        "--wave-growth",
        type=float,
        default=1.0,
        metavar="G",
        help="--build waves: each wave adds G times the ring's size (default: %(default)s)",
    )
    sim.add_argument(
        "--lookup-rate",
        type=float,
        default=2000.0,
        metavar="PER_S",
        help="lookups started per virtual second (default: %(default)s)",
    )
    sim.add_argument(
        "--settle",
        type=float,
        default=0.0,
        metavar="SECONDS",
        help="virtual seconds run after convergence before the maintenance window "
        "(default: %(default)s)",
    )
    sim.add_argument(
        "--window",
        type=float,
        default=30.0,
        metavar="SECONDS",
        help="virtual seconds of the maintenance-rate window, no lookups running "
        "(default: %(default)s)",
    )
    sim.add_argument("--json", action="store_true", help="print one JSON object")
    return parser


def _add_aors_parser(sub: Any) -> None:
    aors = sub.add_parser(
        "aors",
        formatter_class=_Formatter,
        help="list every registered AOR with its bindings (like kamcmd ul.dump)",
        description=(
            "List every AOR of the ring with its live bindings, like `kamcmd ul.dump`. The\n"
            "given node walks the ring (GET /v1/ring); then each peer in turn is asked, page\n"
            "by page (GET /v1/aors on its own admin API), for the AORs it is responsible for,\n"
            "and they are printed as they come: the output starts at once and no single\n"
            "answer grows with the number of registrations. Each AOR is listed once, by the\n"
            "peer responsible for it. --json prints one JSON object per line (NDJSON):\n"
            "{aor, resource_id, node_id, bindings: [...]}. Exit 1 when a peer could not be\n"
            "listed (it is named on stderr) or the ring walk did not close."
        ),
    )
    aors.add_argument(
        "--domain",
        metavar="DOMAIN",
        help="only AORs of this domain, e.g. example.com (default: every domain)",
    )
    aors.add_argument(
        "--page-size",
        type=int,
        default=500,
        metavar="N",
        help="AORs asked of a peer per request, 1..5000 (default: %(default)s)",
    )
    _add_admin_args(aors)


def _add_unregister_parser(sub: Any) -> None:
    unregister = sub.add_parser(
        "unregister",
        formatter_class=_Formatter,
        help="remove one binding of an AOR, or all of them (like kamctl ul rm)",
        description=(
            "Remove the binding of AOR whose contact URI is CONTACT, or every binding of AOR\n"
            "when no CONTACT is given (DELETE /v1/aor/AOR), through the ring: like a REGISTER\n"
            "with Expires: 0, whichever peer is responsible for the AOR. CONTACT is the URI as\n"
            "`p2preg lookup` shows it, e.g. sip:alice@192.0.2.7:5060. Prints what was removed\n"
            "and what remains; exit 1 when nothing matched."
        ),
    )
    unregister.add_argument(
        "aor", metavar="AOR", help="address of record, e.g. sip:alice@example.com"
    )
    unregister.add_argument(
        "contact",
        metavar="CONTACT",
        nargs="?",
        help="the contact URI of the binding to remove (default: every binding of AOR)",
    )
    _add_admin_args(unregister)


# --- the admin API client -------------------------------------------------------------------


class AdminUnreachable(Exception):
    """No HTTP answer at all: wrong address, node down, timeout."""


class AdminRefused(Exception):
    """The node answered with an HTTP error."""

    def __init__(self, status: int, message: str, body: Any) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


# The admin API is a node's own address (loopback by default): never through http_proxy,
# which would answer for it (often "connection refused" from the proxy's side).
_DIRECT = urllib.request.build_opener(urllib.request.ProxyHandler({}))


def admin_call(
    admin: str, method: str, path: str, timeout: float, data: bytes | None = None
) -> tuple[int, Any]:
    host = admin.strip()
    if "://" in host:
        host = urllib.parse.urlsplit(host).netloc
    url = f"http://{host}{path}"
    headers = {"Accept": "application/json"}
    if data is not None:
        headers["Content-Type"] = "application/octet-stream"
    request = urllib.request.Request(url, data=data, method=method, headers=headers)
    try:
        with _DIRECT.open(request, timeout=timeout) as response:
            status, raw = response.status, response.read()
    except urllib.error.HTTPError as exc:
        status, raw = exc.code, exc.read()
    except (urllib.error.URLError, OSError, ValueError) as exc:
        reason = getattr(exc, "reason", exc)
        raise AdminUnreachable(f"cannot reach the admin API at {host}: {reason}") from None
    try:
        body = json.loads(raw) if raw else None
    except ValueError:
        raise AdminUnreachable(
            f"{host} answered HTTP {status} but not with JSON: is it a p2preg admin API?"
        ) from None
    return status, body


def _checked(status: int, body: Any, admin: str) -> Any:
    if status >= 400:
        message = body.get("error") if isinstance(body, dict) else None
        raise AdminRefused(status, f"{admin} answered HTTP {status}: {message or body}", body)
    return body


# --- rendering --------------------------------------------------------------------------------


def _short(node_id: str | None) -> str:
    return node_id[:8] if node_id else "-"


def _uptime(seconds: float | int | None) -> str:
    if seconds is None:
        return "-"
    s = int(seconds)
    if s < 60:
        return f"{s}s"
    if s < 3600:
        return f"{s // 60}m{s % 60:02d}s"
    if s < 86400:
        return f"{s // 3600}h{s % 3600 // 60:02d}m"
    return f"{s // 86400}d{s % 86400 // 3600:02d}h"


def _count(value: int | None) -> str:
    return "-" if value is None else str(value)


def _ownership(ppb: int | None) -> str:
    return "-" if ppb is None else f"{ppb / 1e7:.2f}%"


def _table(header: Sequence[str], rows: Sequence[Sequence[str]]) -> str:
    widths = [len(h) for h in header]
    for row in rows:
        widths = [max(w, len(c)) for w, c in zip(widths, row, strict=True)]
    lines = ["  ".join(h.ljust(w) for h, w in zip(header, widths, strict=True)).rstrip()]
    lines.append("  ".join("-" * w for w in widths))
    for row in rows:
        lines.append("  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip())
    return "\n".join(lines)


def render_status(info: dict[str, Any]) -> str:
    out = [
        f"Node       {info['node_id']}",
        f"State      {info['state']}",
        f"Overlay    {info['overlay']}  (ring {info.get('overlay_name', '?')!r})",
        f"Admin      {info['admin']}",
        f"SIP        {info['sip'] or '- (no --sip)'}",
        f"Version    {info.get('version', '?')}",
        f"Uptime     {_uptime(info['uptime_s'])}",
        f"usrloc     {info.get('aors', '?')} AORs, {info.get('bindings', '?')} bindings "
        f"(responsible); {info.get('replica_aors', '?')} AORs, "
        f"{info.get('replica_bindings', '?')} bindings as replicas",
        f"Owns       {_ownership(info['responsible_ppb'])} of the ring",
        f"Fingers    {len(info['fingers'])} filled",
        "",
    ]
    rows: list[list[str]] = []
    for role in ("predecessors", "successors"):
        for i, peer in enumerate(info[role]):
            rows.append(
                [role[:-1] if i == 0 else "", str(i + 1), peer["node_id"], peer["overlay"] or "-"]
            )
    if rows:
        out.append(_table(["Neighbour", "#", "Node ID", "Overlay"], rows))
    else:
        out.append("No neighbours (alone in its ring, or not joined yet).")
    return "\n".join(out)


def _down_note(node: dict[str, Any]) -> str:
    if node.get("status") != "DN":
        return node.get("error") or "" if not node["reachable"] else ""
    since = datetime.fromtimestamp(node["down_since"], UTC).strftime("%H:%M:%SZ")
    why = str(node["down_reason"]).replace("_", " ")
    note = f"down since {since} ({_uptime(node['down_for_s'])} ago): {why}"
    if node.get("reported_by"):
        note += f", seen by {_short(node['reported_by'])}"
    return note


def render_ring(walk: dict[str, Any]) -> str:
    nodes = walk["nodes"]
    rows = []
    for node in nodes:
        status = node.get("status") or ("UP" if node["reachable"] else "??")
        rows.append(
            [
                _short(node["node_id"]),
                status,
                node["state"] or "-",
                node["overlay"] or "-",
                node["admin"] or "-",
                node.get("sip") or "-",
                node.get("version") or "-",
                _ownership(node["responsible_ppb"]),
                _count(node.get("aors")),
                _count(node.get("bindings")),
                _count(node.get("primary_records")),
                _count(node.get("replica_records")),
                _uptime(node["uptime_s"]),
                _down_note(node),
            ]
        )
    header = ["Node", "St", "State", "Overlay", "Admin", "SIP", "Version", "Owns", "AORs"]
    header += ["Bindings", "Primary", "Replica", "Uptime", "Note"]
    out = [_table(header, rows), ""]
    up = sum(1 for n in nodes if n.get("status", "UP") == "UP" and n["reachable"])
    down = sum(1 for n in nodes if n.get("status") == "DN")
    silent = len(nodes) - up - down
    summary = f"{len(nodes)} peers walked from {_short(walk['start'])}: {up} up"
    if down:
        summary += f", {down} down (lost in the last {_uptime(walk.get('down_window_s'))})"
    if silent:
        summary += f", {silent} unreachable"
    summary += " (ring closed)" if walk["complete"] else " (ring NOT closed: walk did not return)"
    primary = [n.get("primary_records") for n in nodes if n["reachable"]]
    if primary and all(isinstance(c, int) for c in primary):
        held = sum(c for c in primary if c is not None)
        copies = sum(n.get("replica_records") or 0 for n in nodes)
        summary += f"; {held} primary records, {copies} replica copies"
    aors = [n.get("aors") for n in nodes if n["reachable"]]
    if aors and all(isinstance(c, int) for c in aors):
        bindings = sum(n.get("bindings") or 0 for n in nodes)
        summary += f"; {sum(c for c in aors if c is not None)} AORs, {bindings} bindings"
    out.append(summary)
    return "\n".join(out)


def _when(ms: int) -> str:
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def render_records(answer: dict[str, Any]) -> str:
    name = answer["resource_name"]
    target = f"{name} -> {answer['resource_id']}" if name else answer["resource_id"]
    head = f"Node {answer['node_id']}, resource {target}"
    if answer.get("responsible"):
        head += " (this node is responsible for it)"
    out = [head]
    rows = []
    for rec in answer["records"]:
        if "value" in rec:
            value = rec["value"] if len(rec["value"]) <= 40 else rec["value"][:37] + "..."
        else:
            value = f"({rec['value_size']} bytes)"
        state = "expired" if rec["expired"] else ("live" if rec["exists"] else "removed")
        rows.append(
            [
                rec["kind_name"],
                rec["key"] or "-",
                rec["role"],
                _when(rec["storage_time"]),
                _when(rec["expires"]),
                state,
                value,
            ]
        )
    if rows:
        header = ["Kind", "Key", "Role", "Stored", "Expires", "State", "Value"]
        out.append(_table(header, rows))
    else:
        out.append("No records held here for this resource.")
    return "\n".join(out)


def render_route(route: dict[str, Any]) -> str:
    name = route["resource_name"]
    target = f"{name} -> {route['resource_id']}" if name else route["resource_id"]
    rows = []
    for i, hop in enumerate(route["hops"]):
        note = "responsible" if hop.get("responsible") else ("this peer" if i == 0 else "")
        if i == 0 and hop.get("responsible"):
            note = "this peer, responsible"
        rows.append([str(i), hop["node_id"], hop["overlay"] or "-", hop["admin"] or "-", note])
    out = [f"Key {target}", _table(["Hop", "Node ID", "Overlay", "Admin", ""], rows)]
    if route.get("error"):
        out.append(f"incomplete: {route['error']}")
    return "\n".join(out)


def _peer_line(peer: dict[str, Any] | None) -> str:
    if peer is None:
        return "- (route incomplete)"
    parts = [peer["node_id"]]
    for what in ("overlay", "admin", "sip"):
        if peer.get(what):
            parts.append(f"{what} {peer[what]}")
    if peer.get("error"):
        parts.append(f"(did not answer: {peer['error']})")
    return "  ".join(parts)


def render_aor(answer: dict[str, Any]) -> str:
    out = [
        f"AOR          {answer['aor']}",
        f"Resource     {answer['resource_name']} -> {answer['resource_id']}",
        f"Responsible  {_peer_line(answer['responsible'])}",
    ]
    replicas = answer["replicas"] or []
    if not replicas:
        out.append("Replicas     -")
    for i, peer in enumerate(replicas):
        out.append(f"{'Replicas' if i == 0 else '':<12} {_peer_line(peer)}")
    if answer.get("route_error"):
        out.append(f"(route: {answer['route_error']})")
    out.append("")
    rows = []
    for b in answer["bindings"]:
        rows.append(
            [
                b["contact"],
                f"{b['expires_in']}s",
                b["q"] if b["q"] is not None else "-",
                b["call_id"],
                str(b["cseq"]),
                b["received"],
                b["user_agent"] or "-",
            ]
        )
    if rows:
        header = ["Contact", "Expires", "Q", "Call-ID", "CSeq", "Received", "User-Agent"]
        out.append(_table(header, rows))
        out.append(f"{len(rows)} binding{'s' if len(rows) != 1 else ''}")
    else:
        out.append("No bindings.")
    return "\n".join(out)


def _print_json(value: Any) -> None:
    print(json.dumps(value, indent=2))


# --- commands ---------------------------------------------------------------------------------


def cmd_status(args: argparse.Namespace) -> int:
    info = _checked(*admin_call(args.admin, "GET", "/v1/node", args.timeout), args.admin)
    _print_json(info) if args.json else print(render_status(info))
    return EXIT_OK


def cmd_ring(args: argparse.Namespace) -> int:
    walk = _checked(*admin_call(args.admin, "GET", "/v1/ring", args.timeout), args.admin)
    _print_json(walk["nodes"]) if args.json else print(render_ring(walk))
    return EXIT_OK if walk["complete"] else EXIT_FAILED


def cmd_route(args: argparse.Namespace) -> int:
    path = "/v1/route/" + urllib.parse.quote(args.key, safe="")
    status, body = admin_call(args.admin, "GET", path, args.timeout)
    if status == 502 and isinstance(body, dict) and "hops" in body:
        # An incomplete path is still worth showing: it says where routing broke.
        _print_json(body) if args.json else print(render_route(body))
        return EXIT_FAILED
    route = _checked(status, body, args.admin)
    _print_json(route) if args.json else print(render_route(route))
    return EXIT_OK


def cmd_put(args: argparse.Namespace) -> int:
    if args.lifetime < 1:
        raise _Usage("--lifetime must be at least 1 second")
    path = "/v1/kv/" + urllib.parse.quote(args.name, safe="") + f"?lifetime={args.lifetime}"
    status, body = admin_call(args.admin, "PUT", path, args.timeout, args.value.encode("utf-8"))
    answer = _checked(status, body, args.admin)
    if args.json:
        _print_json(answer)
        return EXIT_OK
    replicas = ", ".join(_short(r) for r in answer["replicas"]) or "none"
    print(
        f"stored {args.name!r} ({answer['value_size']} bytes) at {_short(answer['responsible'])}"
        f", replicas {replicas}"
    )
    return EXIT_OK


def cmd_get(args: argparse.Namespace) -> int:
    path = "/v1/kv/" + urllib.parse.quote(args.name, safe="")
    status, body = admin_call(args.admin, "GET", path, args.timeout)
    if status == 404 and isinstance(body, dict) and body.get("found") is False:
        print(f"p2preg get: nothing stored under {args.name!r}", file=sys.stderr)
        return EXIT_FAILED
    answer = _checked(status, body, args.admin)
    if args.json:
        _print_json(answer)
    elif "value" in answer:
        print(answer["value"])
    else:
        print(answer["value_hex"])
    return EXIT_OK


def cmd_records(args: argparse.Namespace) -> int:
    if args.resource is not None:
        query = {"resource": args.resource}
    elif args.name is not None:
        query = {"name": args.name}
    else:
        query = {"aor": args.aor}
    path = "/v1/records?" + urllib.parse.urlencode(query)
    answer = _checked(*admin_call(args.admin, "GET", path, args.timeout), args.admin)
    _print_json(answer) if args.json else print(render_records(answer))
    return EXIT_OK


def cmd_lookup(args: argparse.Namespace) -> int:
    path = "/v1/aor/" + urllib.parse.quote(args.aor, safe="")
    answer = _checked(*admin_call(args.admin, "GET", path, args.timeout), args.admin)
    _print_json(answer) if args.json else print(render_aor(answer))
    if not answer["bindings"]:
        print(f"p2preg lookup: no bindings for {answer['aor']}", file=sys.stderr)
        return EXIT_FAILED
    return EXIT_OK


def _binding_line(b: dict[str, Any]) -> str:
    parts = [f"    {b['contact']}", f"expires {b['expires_in']}s"]
    if b.get("q") is not None:
        parts.append(f"q {b['q']}")
    parts.append(f"received {b['received']}")
    if b.get("user_agent"):
        parts.append(f"ua {b['user_agent']!r}")
    return "  ".join(parts)


def cmd_aors(args: argparse.Namespace) -> int:
    if not 1 <= args.page_size <= 5000:
        raise _Usage("--page-size must be 1..5000")
    walk = _checked(*admin_call(args.admin, "GET", "/v1/ring", args.timeout), args.admin)
    peers = [n for n in walk["nodes"] if n["reachable"]]
    failed: list[str] = []
    seen: set[str] = set()
    bindings = 0
    for peer in peers:
        if not peer.get("admin"):
            failed.append(f"{_short(peer['node_id'])} (no admin address)")
            continue
        after = ""
        while True:
            query = {"limit": str(args.page_size)}
            if after:
                query["after"] = after
            if args.domain:
                query["domain"] = args.domain
            path = "/v1/aors?" + urllib.parse.urlencode(query)
            try:
                status, page = admin_call(peer["admin"], "GET", path, args.timeout)
                page = _checked(status, page, peer["admin"])
            except (AdminUnreachable, AdminRefused) as exc:
                failed.append(f"{_short(peer['node_id'])} ({exc})")
                break
            for entry in page["aors"]:
                if entry["resource_id"] in seen:
                    continue  # a range changing hands between two pages
                seen.add(entry["resource_id"])
                bindings += len(entry["bindings"])
                if args.json:
                    print(json.dumps({**entry, "node_id": page["node_id"]}))
                else:
                    print(entry["aor"])
                    for b in entry["bindings"]:
                        print(_binding_line(b))
            if not page["next"]:
                break
            after = page["next"]
        sys.stdout.flush()
    if not args.json:
        print(f"{len(seen)} AORs, {bindings} bindings, from {len(peers)} peers")
    for what in failed:
        print(f"p2preg aors: could not list peer {what}", file=sys.stderr)
    if not walk["complete"]:
        print("p2preg aors: the ring walk did not close: the list may be short", file=sys.stderr)
    return EXIT_OK if not failed and walk["complete"] else EXIT_FAILED


def cmd_unregister(args: argparse.Namespace) -> int:
    path = "/v1/aor/" + urllib.parse.quote(args.aor, safe="")
    if args.contact:
        path += "?" + urllib.parse.urlencode({"contact": args.contact})
    status, body = admin_call(args.admin, "DELETE", path, args.timeout)
    if status == 404 and isinstance(body, dict) and "removed" in body:
        print(f"p2preg unregister: {body['error']}", file=sys.stderr)
        return EXIT_FAILED
    answer = _checked(status, body, args.admin)
    if args.json:
        _print_json(answer)
        return EXIT_OK
    for contact in answer["removed"]:
        print(f"removed {contact} from {answer['aor']}")
    left = answer["remaining"]
    print(f"{len(left)} binding{'s' if len(left) != 1 else ''} left")
    for b in left:
        print(_binding_line(b))
    return EXIT_OK


def cmd_leave(args: argparse.Namespace) -> int:
    answer = _checked(*admin_call(args.admin, "POST", "/v1/leave", args.timeout), args.admin)
    if args.json:
        _print_json(answer)
    else:
        print(f"node {answer['node_id']} is leaving the ring")
    return EXIT_OK


def cmd_sim(args: argparse.Namespace) -> int:
    if args.nodes < 1:
        raise _Usage("--nodes must be at least 1")
    if not 0.0 <= args.fail < 1.0:
        raise _Usage("--fail must be a fraction in [0, 1)")
    if args.churn < 0 or args.lookups < 0:
        raise _Usage("--churn and --lookups cannot be negative")
    if args.wave_growth <= 0 or args.lookup_rate <= 0:
        raise _Usage("--wave-growth and --lookup-rate must be positive")
    if args.settle < 0 or args.window <= 0:
        raise _Usage("--settle cannot be negative and --window must be positive")
    from overlay.sim import SimParams, run_simulation

    result = run_simulation(
        SimParams(
            nodes=args.nodes,
            lookups=args.lookups,
            churn=args.churn,
            fail=args.fail,
            seed=args.seed,
            build=args.build,
            wave_growth=args.wave_growth,
            settle=args.settle,
            quiet=args.window,
            lookup_rate=args.lookup_rate,
        )
    )
    if args.json:
        print(json.dumps(result))
        return EXIT_OK
    rows = [[str(k), _fmt_number(v)] for k, v in result.items()]
    print(_table(["Figure", "Value"], rows))
    return EXIT_OK


def _fmt_number(value: Any) -> str:
    if isinstance(value, float) and math.isfinite(value):
        return f"{value:.4g}"
    if isinstance(value, dict):
        return ", ".join(f"{k} {_fmt_number(v)}" for k, v in value.items())
    if isinstance(value, list):
        return json.dumps(value)
    return str(value)


class _Usage(Exception):
    """A bad argument found after parsing: one line, exit 2."""


def _run_parser(parser: argparse.ArgumentParser) -> argparse.ArgumentParser:
    for action in parser._actions:  # argparse has no public access to its subparsers
        if isinstance(action, argparse._SubParsersAction):
            run: argparse.ArgumentParser = action.choices["run"]
            return run
    raise LookupError("no run subcommand")


def apply_config_file(
    parser: argparse.ArgumentParser, argv: Sequence[str] | None, args: argparse.Namespace
) -> argparse.Namespace:
    """Re-parse ``p2preg run`` with the file's values as defaults: built-in default < file <
    flag. Stores the file's [registrar] table on ``args.file_config``."""
    from p2preg.config_file import ConfigError, load_config, run_parser_dests

    run = _run_parser(parser)
    try:
        file_config = load_config(args.config, run_parser_dests(run))
    except ConfigError as exc:
        raise _Usage(str(exc)) from None
    values = dict(file_config.run)
    # An "extend" flag adds to its default: the file's bootstrap list is applied below only
    # when no --bootstrap flag was given, so that the flags replace it.
    file_bootstrap = values.pop("bootstrap", None)
    run.set_defaults(**values)
    args = parser.parse_args(argv)
    if file_bootstrap is not None and not args.bootstrap:
        args.bootstrap = list(file_bootstrap)
    # argparse checks only given flags against their choices, never defaults.
    for action in run._actions:
        if action.choices is not None and action.dest in values:
            value = getattr(args, action.dest)
            if value not in action.choices:
                choices = ", ".join(map(str, action.choices))
                raise _Usage(f"{args.config}: {action.dest} must be one of {choices}")
    args.file_config = file_config
    return args


def cmd_run(args: argparse.Namespace) -> int:
    from overlay.config import MIN_PERIOD, ChordConfig, check_seconds
    from p2preg.logs import setup_logging
    from p2preg.node import (
        NodeOptions,
        SetupError,
        event_loop_policy,
        load_node_id,
        lock_data_dir,
        open_store,
        parse_address,
        run_node,
    )
    from p2preg.sip.registrar import RegistrarConfig
    from storage import Durability

    for dest, flag in REQUIRED_RUN:
        if getattr(args, dest) is None:
            raise _Usage(f"missing {flag} (give the flag, or {flag[2:]} in a --config file)")
    file_config = getattr(args, "file_config", None)
    try:
        config = ChordConfig(
            overlay_name=args.overlay_name,
            ping_interval=args.ping_interval,
            missed_pings=args.missed_pings,
            update_interval=args.update_interval,
            finger_interval=args.finger_interval,
            jitter=args.jitter,
            successors=args.successors,
            predecessors=args.predecessors,
            leave_timeout=args.leave_timeout,
        )
    except ValueError as exc:
        raise _Usage(f"bad overlay tuning: {exc}") from None
    if args.missed_pings < 1 or args.leave_timeout <= 0:
        raise _Usage("--missed-pings must be at least 1 and --leave-timeout positive")
    if args.anti_entropy_interval is not None:
        try:
            check_seconds("--anti-entropy-interval", args.anti_entropy_interval, minimum=MIN_PERIOD)
        except ValueError as exc:
            raise _Usage(str(exc)) from None
    if args.max_map_size is not None and args.max_map_size < 1:
        raise _Usage("--max-map-size must be at least 1 MiB")
    if not (math.isfinite(args.down_window) and 0 < args.down_window <= 7 * 24 * 60):
        raise _Usage("--down-window must be between 0 and 10080 minutes (a week)")
    try:
        options = NodeOptions(
            data_dir=args.data_dir,
            overlay=parse_address(args.overlay, "--overlay"),
            admin=parse_address(args.admin, "--admin"),
            sip=parse_address(args.sip, "--sip") if args.sip else None,
            bootstrap=tuple(parse_address(b, "--bootstrap") for b in args.bootstrap),
            node_id=args.node_id,
            config=config,
            ready_file=args.ready_file,
            durability=Durability(args.durability),
            anti_entropy_interval=args.anti_entropy_interval,
            max_map_size=None if args.max_map_size is None else args.max_map_size << 20,
            registrar=file_config.registrar if file_config else RegistrarConfig(),
            sip_service=dict(file_config.service) if file_config else {},
            new_ring=args.new_ring,
            down_window=args.down_window * 60.0,
        )
        if options.node_id is not None:
            # Check before touching the data directory: a typo must not leave files behind.
            from overlay.ids import parse_id

            try:
                parse_id(options.node_id)
            except ValueError as exc:
                raise SetupError(f"invalid --node-id: {exc}") from None
        try:
            args.data_dir.mkdir(parents=True, exist_ok=True)
        except OSError as exc:
            raise SetupError(f"cannot create --data-dir {args.data_dir}: {exc}") from None
        loop = event_loop_policy(args.event_loop)
        lock = lock_data_dir(args.data_dir)  # held until this process exits
        node_id = load_node_id(args.data_dir, args.node_id)
        store = open_store(options)
    except SetupError as exc:
        raise _Usage(str(exc)) from None
    setup_logging(args.log_level, node_id)
    try:
        return run_node(options, node_id, store, loop)
    finally:
        lock.close()


COMMANDS = {
    "run": cmd_run,
    "status": cmd_status,
    "ring": cmd_ring,
    "route": cmd_route,
    "put": cmd_put,
    "get": cmd_get,
    "records": cmd_records,
    "lookup": cmd_lookup,
    "aors": cmd_aors,
    "unregister": cmd_unregister,
    "leave": cmd_leave,
    "sim": cmd_sim,
}


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    prog = f"p2preg {args.command}"
    try:
        if args.command == "run" and args.config is not None:
            args = apply_config_file(parser, argv, args)
        if args.command != "run" and hasattr(args, "admin") and not args.admin:
            raise _Usage(f"no admin address: give --admin HOST:PORT or set {ADMIN_ENV}")
        return COMMANDS[args.command](args)
    except _Usage as exc:
        print(f"{prog}: error: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AdminUnreachable as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except AdminRefused as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_FAILED
    except KeyboardInterrupt:
        return 130
