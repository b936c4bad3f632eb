"""Running SIPp (Debian ``sip-tester``) against p2preg nodes: tests and scripts/sipp_bench.py.

The scenarios in tests/sipp/ log one line per answer ("200 user <contact>", "302 user
<contact>", "query user <contact>") with -trace_logs, because SIPp cannot use an injection
field inside a regexp; :func:`logged_contacts` reads those lines back.
"""

from __future__ import annotations

import asyncio
import shutil
import socket
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

SCENARIOS = Path(__file__).resolve().parent / "sipp"
SIPP = shutil.which("sipp")


def free_port(host: str = "127.0.0.1") -> int:
    """A port free for both TCP and UDP right now (SIPp binds both for -t t1)."""
    for _ in range(50):
        tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        tcp.bind((host, 0))
        port = int(tcp.getsockname()[1])
        udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        try:
            udp.bind((host, port))
        except OSError:
            continue
        finally:
            udp.close()
            tcp.close()
        return port
    raise RuntimeError("no port free for both TCP and UDP")


def write_users(path: Path, users: Sequence[str], domain: str = "example.com") -> Path:
    path.write_text("SEQUENTIAL\n" + "".join(f"{u};{domain};\n" for u in users))
    return path


@dataclass
class SippRun:
    returncode: int
    log: list[str]
    errors: str
    stdout: str
    stat_file: Path | None

    def explain(self) -> str:
        return f"sipp exit {self.returncode}\n{self.errors[-2000:]}\n{self.stdout[-1500:]}"


async def run_sipp(
    target: tuple[str, int],
    scenario: str,
    users_csv: Path,
    *,
    transport: str,
    calls: int,
    workdir: Path,
    rate: float = 200.0,
    limit: int = 50,
    timeout: float = 120.0,
    tag: str = "",
    extra: Sequence[str] = (),
) -> SippRun:
    """One SIPp client run to completion; ``transport`` is "udp" or "tcp"."""
    assert SIPP is not None, "sipp is not installed (apt-get install sip-tester)"
    name = f"{scenario}-{transport}-{tag or target[1]}"
    log = workdir / f"{name}.log"
    err = workdir / f"{name}.err"
    stat = workdir / f"{name}.csv"
    cmd = [
        SIPP, f"{target[0]}:{target[1]}",
        "-sf", str(SCENARIOS / f"{scenario}.xml"),
        "-inf", str(users_csv),
        "-t", "u1" if transport == "udp" else "t1",
        "-i", "127.0.0.1",
        "-p", str(free_port()),
        "-m", str(calls),
        "-r", f"{rate:g}",
        "-l", str(limit),
        "-nostdin",
        "-recv_timeout", "10000",
        "-timeout", f"{int(timeout)}s",
        "-trace_logs", "-log_file", str(log),
        "-trace_err", "-error_file", str(err),
        "-trace_stat", "-stf", str(stat), "-fd", "1",
        *extra,
    ]  # fmt: skip
    proc = await asyncio.create_subprocess_exec(
        *cmd,
        cwd=workdir,
        stdin=asyncio.subprocess.DEVNULL,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.STDOUT,
    )
    try:
        out, _ = await asyncio.wait_for(proc.communicate(), timeout + 30)
    except TimeoutError:
        proc.kill()
        await proc.wait()
        raise
    text = log.read_text(errors="replace") if log.exists() else ""
    errors = err.read_text(errors="replace") if err.exists() else ""
    return SippRun(
        proc.returncode if proc.returncode is not None else -1,
        text.splitlines(),
        errors,
        out.decode(errors="replace"),
        stat if stat.exists() else None,
    )


def logged_contacts(lines: Sequence[str], kind: str) -> dict[str, list[str]]:
    """user -> the contacts logged with ``kind`` ("200", "302", "query")."""
    out: dict[str, list[str]] = {}
    for line in lines:
        parts = line.split()
        if len(parts) == 3 and parts[0] == kind:
            out.setdefault(parts[1], []).append(parts[2])
    return out
