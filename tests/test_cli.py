"""The p2preg command line: help texts, argument errors, unreachable admin API, node identity."""

from __future__ import annotations

import json
import socket
from pathlib import Path

import pytest
from harness import Cluster, run_cli


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def test_top_level_help_lists_every_command() -> None:
    result = run_cli("--help")
    assert result.returncode == 0
    for command in ("run", "status", "ring", "route", "leave", "sim", "aors", "unregister"):
        assert command in result.stdout


@pytest.mark.parametrize(
    ("command", "expected"),
    [
        (
            "run",
            [
                "--data-dir",
                "--overlay",
                "--admin",
                "--sip",
                "--bootstrap",
                "--overlay-name",
                "--node-id",
                "--ready-file",
                "--ping-interval",
                "--missed-pings",
                "--update-interval",
                "--finger-interval",
                "default",
                "seconds",
                "SIGTERM",
                "Port 0",
                "--new-ring",
                "--down-window",
                "minutes",
            ],
        ),
        ("aors", ["--domain", "--json", "--page-size", "once", "default", "P2PREG_ADMIN"]),
        ("unregister", ["AOR", "CONTACT", "every binding", "--admin"]),
        ("status", ["--admin", "--json"]),
        ("ring", ["--admin", "--json", "ring order", "unreachable"]),
        ("route", ["KEY", "--admin", "--json", "32 hex"]),
        ("leave", ["--admin", "gracefully"]),
        ("sim", ["--nodes", "--lookups", "--churn", "--fail", "--seed", "--json"]),
    ],
)
def test_subcommand_help_explains_itself(command: str, expected: list[str]) -> None:
    result = run_cli(command, "--help")
    assert result.returncode == 0, result.stderr
    for word in expected:
        assert word in result.stdout, f"{command} --help does not mention {word!r}"


def test_no_command_is_a_usage_error() -> None:
    assert run_cli().returncode == 2


def test_invalid_node_id_is_one_line_and_exit_2(tmp_path: Path) -> None:
    data = tmp_path / "data"
    result = run_cli(
        "run", "--data-dir", str(data), "--overlay", "127.0.0.1:0", "--admin", "127.0.0.1:0",
        "--node-id", "not-hex",
    )  # fmt: skip
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "--node-id" in lines[0]
    assert not (data / "node_id").exists()


@pytest.mark.parametrize("bad", ["127.0.0.1", "127.0.0.1:99999", ":80", "host:port"])
def test_bad_address_is_one_line_and_exit_2(tmp_path: Path, bad: str) -> None:
    result = run_cli("run", "--data-dir", str(tmp_path), "--overlay", bad, "--admin", "127.0.0.1:0")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and "--overlay" in lines[0], result.stderr


@pytest.mark.parametrize(
    "command", [["status"], ["ring"], ["route", "alice@example.com"], ["leave"]]
)
def test_unreachable_admin_is_one_line_and_exit_2(command: list[str]) -> None:
    address = f"127.0.0.1:{free_port()}"
    result = run_cli(*command, "--admin", address, "--timeout", "5")
    assert result.returncode == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert address in lines[0] and "cannot reach" in lines[0]
    assert result.stdout == ""


def test_node_id_is_kept_across_restarts(cluster: Cluster, tmp_path: Path) -> None:
    data = tmp_path / "kept"
    first = cluster.start(data_dir=data)
    first.terminate()
    assert first.wait_exit() == 0
    saved = (data / "node_id").read_text().strip()
    assert saved == first.node_id
    second = cluster.start(data_dir=data)
    assert second.node_id == first.node_id
    second.terminate()
    assert second.wait_exit() == 0


def test_explicit_node_id_is_used(cluster: Cluster, tmp_path: Path) -> None:
    wanted = "0123456789abcdef0123456789abcdef"
    node = cluster.start(extra=("--node-id", "0x" + wanted.upper()))
    assert node.node_id == wanted
    assert (node.data_dir / "node_id").read_text().strip() == wanted


def test_sim_json_has_the_figures() -> None:
    result = run_cli("sim", "--nodes", "32", "--lookups", "200", "--seed", "7", "--json")
    assert result.returncode == 0, result.stderr
    figures = json.loads(result.stdout)
    for key in (
        "nodes", "mean_hops", "p50_hops", "p99_hops", "lookup_success", "converged_rounds",
        "maintenance_msgs_per_node_s",
    ):  # fmt: skip
        assert key in figures
    assert figures["nodes"] == 32
    assert figures["lookup_success"] == 1.0
    again = json.loads(
        run_cli("sim", "--nodes", "32", "--lookups", "200", "--seed", "7", "--json").stdout
    )

    def simulated(d: dict[str, object]) -> dict[str, object]:
        return {k: v for k, v in d.items() if not k.startswith("wall")}  # real time varies

    assert simulated(again) == simulated(figures), "same seed must give the same figures"
    table = run_cli("sim", "--nodes", "32", "--lookups", "200", "--seed", "7")
    assert table.returncode == 0 and "mean_hops" in table.stdout


def test_sim_rejects_bad_fraction() -> None:
    result = run_cli("sim", "--nodes", "10", "--fail", "1.5")
    assert result.returncode == 2
    assert len(result.stderr.strip().splitlines()) == 1


def test_event_loop_choice() -> None:
    from p2preg.node import SetupError, event_loop_policy

    assert event_loop_policy("asyncio") == (None, "asyncio")
    policy, name = event_loop_policy("auto")
    assert (policy is None) == name.startswith("asyncio")
    with pytest.raises(SetupError, match="unknown event loop"):
        event_loop_policy("tokio")


def test_bad_down_window_and_page_size_are_one_line_errors(tmp_path: Path) -> None:
    result = run_cli(
        "run", "--data-dir", str(tmp_path / "d"), "--overlay", "127.0.0.1:0",
        "--admin", "127.0.0.1:0", "--down-window", "-1",
    )  # fmt: skip
    assert result.returncode == 2 and result.stderr.count("\n") == 1
    assert "--down-window" in result.stderr
    paged = run_cli("aors", "--admin", "127.0.0.1:9", "--page-size", "0")
    assert paged.returncode == 2 and "--page-size" in paged.stderr
