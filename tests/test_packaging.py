"""packaging/: the systemd unit, the Kubernetes manifests, and a wheel in a clean venv.

- The unit is checked by ``systemd-analyze verify`` (any warning fails) and its offline
  security exposure, and its ExecStart line with the example config runs a real node that
  SIGTERM makes leave and exit 0 within the unit's stop timeout.
- The manifests are validated offline against a pinned subset of the Kubernetes API schema
  written here (the fields the manifests use, unknown fields rejected, so that a typo such as
  ``readinesProbe`` fails), then cross-checked (selectors, ports, seeds, timeouts); the
  container's arguments and the ConfigMap's TOML run a real node, and the preStop command
  makes it leave.
- A wheel built from the checkout installs into a new venv, whose ``p2preg`` works and serves
  the ring page from the installed package.
"""

from __future__ import annotations

import configparser
import contextlib
import os
import re
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import jsonschema
import pytest
import yaml
from harness import REPO, Cluster, NodeProcess, child_env, http_json, wait_for

PACKAGING = REPO / "packaging"
UNIT = PACKAGING / "systemd" / "p2preg.service"
UNIT_CONFIG = PACKAGING / "systemd" / "p2preg.toml"
SYSUSERS = PACKAGING / "systemd" / "p2preg.sysusers.conf"
MANIFEST = PACKAGING / "kubernetes" / "p2preg.yaml"
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
LEAVE_MARGIN = 3.0  # s the node adds to its leave-timeout before it gives up (node.py)


def _need(tool: str | None, package: str) -> str:
    if tool is None:
        message = f"{package} missing: apt-get install {package} (make tools does)"
        if os.environ.get("CI"):
            pytest.fail(message)
        pytest.skip(message)
    return tool


def _get(url: str, timeout: float = 10.0) -> tuple[int, bytes]:
    opener = urllib.request.build_opener(urllib.request.ProxyHandler({}))
    try:
        with opener.open(url, timeout=timeout) as response:
            return response.status, response.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


def _free_ports(count: int) -> list[int]:
    """Ports free right now on 127.0.0.1 (TCP and UDP), all held until every one is picked."""
    held: list[socket.socket] = []
    ports: list[int] = []
    try:
        while len(ports) < count:
            tcp = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            tcp.bind(("127.0.0.1", 0))
            held.append(tcp)
            port = tcp.getsockname()[1]
            udp = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
            try:
                udp.bind(("127.0.0.1", port))
            except OSError:
                udp.close()
                continue
            held.append(udp)
            ports.append(port)
    finally:
        for sock in held:
            sock.close()
    return ports


def _wait_healthy(node: NodeProcess) -> None:
    def healthy() -> bool:
        if not node.alive():
            raise AssertionError(f"node exited with {node.proc.returncode}:\n{node.log_tail()}")
        return _get(f"http://{node.admin}/v1/health")[0] == 200

    wait_for(healthy, 30, "GET /v1/health to answer 200", describe=node.log_tail)


def _assert_left(node: NodeProcess, within: float) -> None:
    started = time.monotonic()
    code = node.wait_exit(within)
    assert code == 0, f"exit {code}:\n{node.log_tail()}"
    assert "left the ring" in node.log_file.read_text(), node.log_tail()
    print(f"left the ring in {time.monotonic() - started:.1f} s")


# --- systemd ------------------------------------------------------------------------------------


def _unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]
    parser.read_string(UNIT.read_text())
    return parser


def _exec_start() -> list[str]:
    return shlex.split(_unit()["Service"]["ExecStart"])


def test_systemd_unit_verifies(tmp_path: Path) -> None:
    analyze = _need(SYSTEMD_ANALYZE, "systemd")
    # verify also checks that ExecStart's program exists and is executable: point it at the
    # p2preg of this environment, the only line changed.
    here = Path(sys.executable).parent / "p2preg"
    if not os.access(here, os.X_OK):
        here = tmp_path / "p2preg"
        here.write_text("#!/bin/sh\nexit 0\n")
        here.chmod(0o755)
    installed = _exec_start()[0]
    text = UNIT.read_text()
    assert text.count(installed) == 1
    unit = tmp_path / "p2preg.service"
    unit.write_text(text.replace(installed, str(here)))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    output = (result.stdout + result.stderr).strip()
    assert result.returncode == 0 and not output, f"systemd-analyze verify: {output}"
    # ... and verify does speak up about a broken unit (it exits 0 on an unknown key).
    broken = tmp_path / "broken.service"
    broken.write_text(unit.read_text().replace("TimeoutStopSec=", "TimeoutStopSecs="))
    result = subprocess.run(
        [analyze, "verify", "--man=no", str(broken)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert "TimeoutStopSecs" in result.stdout + result.stderr

    security = subprocess.run(
        [analyze, "security", "--offline=yes", "--no-pager", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    found = re.search(r"Overall exposure level for \S+: ([0-9.]+)", security.stdout)
    assert found, f"no exposure level in: {security.stdout[-500:]} {security.stderr[-500:]}"
    assert float(found.group(1)) <= 2.5, security.stdout


def test_systemd_unit_settings() -> None:
    service = _unit()["Service"]
    assert service["Type"] in ("simple", "notify")
    assert service.get("KillSignal", "SIGTERM") == "SIGTERM"  # SIGTERM is the graceful leave
    assert service["User"] == "p2preg" and service["Group"] == "p2preg"
    assert service["StateDirectory"] == "p2preg"
    assert service["Restart"] == "on-failure"  # `p2preg leave` (exit 0) keeps it stopped
    argv = _exec_start()
    assert argv[1] == "run"
    assert argv[argv.index("--data-dir") + 1] == "/var/lib/p2preg"  # = the StateDirectory
    assert argv[argv.index("--config") + 1] == "/etc/p2preg/p2preg.toml"
    leave_timeout = tomllib.loads(UNIT_CONFIG.read_text())["leave-timeout"]
    stop = float(service["TimeoutStopSec"].rstrip("s"))
    assert stop >= 2 * (leave_timeout + LEAVE_MARGIN), "stop timeout too short for a handoff"
    users = [ln.split() for ln in SYSUSERS.read_text().splitlines() if ln.startswith("u ")]
    assert users and users[0][1] == "p2preg"


def test_systemd_execstart_runs_a_node_that_sigterm_makes_leave(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The unit's own command line, with the example config (its addresses replaced by
    loopback ports: flags override the file), runs a node; SIGTERM makes it leave and exit 0
    well within TimeoutStopSec."""
    overlay, admin, sip = (f"127.0.0.1:{p}" for p in _free_ports(3))
    data = tmp_path / "state"
    args = [
        {"/etc/p2preg/p2preg.toml": str(UNIT_CONFIG), "/var/lib/p2preg": str(data)}.get(a, a)
        for a in _exec_start()[2:]  # after the program and "run"
    ]
    node = cluster.spawn(
        [overlay],  # one seeds list naming itself first: it founds the ring
        overlay=overlay,
        admin=admin,
        timers=(),  # the file's timers (leave-timeout 20 s), not the test's fast ones
        extra=(*args, "--sip", sip),
        data_dir=data,
    ).wait_ready()
    _wait_healthy(node)
    status, page = _get(f"http://{admin}/")
    assert status == 200 and b"<svg" in page
    node.terminate()
    stop = float(_unit()["Service"]["TimeoutStopSec"].rstrip("s"))
    _assert_left(node, min(stop, 30.0))


# --- Kubernetes ---------------------------------------------------------------------------------


def _obj(props: dict[str, Any], required: tuple[str, ...] = ()) -> dict[str, Any]:
    """A JSON-schema object with exactly these properties (unknown ones are errors)."""
    return {
        "type": "object",
        "properties": props,
        "required": list(required),
        "additionalProperties": False,
    }


STR: dict[str, Any] = {"type": "string"}
INT: dict[str, Any] = {"type": "integer"}
BOOL: dict[str, Any] = {"type": "boolean"}
STR_MAP: dict[str, Any] = {"type": "object", "additionalProperties": {"type": "string"}}
STR_LIST: dict[str, Any] = {"type": "array", "items": STR}
INT_OR_STR: dict[str, Any] = {"type": ["integer", "string"]}
PROTOCOL: dict[str, Any] = {"enum": ["TCP", "UDP", "SCTP"]}
QUANTITY: dict[str, Any] = {"type": ["string", "integer"], "pattern": r"^[0-9.]+[a-zA-Z]*$"}
NAME: dict[str, Any] = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"}

METADATA = _obj(
    {"name": NAME, "namespace": NAME, "labels": STR_MAP, "annotations": STR_MAP}, ("name",)
)
LABEL_SELECTOR = _obj({"matchLabels": STR_MAP})
HTTP_GET = _obj({"path": STR, "port": INT_OR_STR, "scheme": {"enum": ["HTTP", "HTTPS"]}})
EXEC = _obj({"command": STR_LIST}, ("command",))
PROBE = _obj(
    {
        "httpGet": HTTP_GET,
        "exec": EXEC,
        "tcpSocket": _obj({"port": INT_OR_STR}),
        "initialDelaySeconds": INT,
        "periodSeconds": INT,
        "timeoutSeconds": INT,
        "failureThreshold": INT,
        "successThreshold": INT,
    }
)
ENV_VAR = _obj(
    {
        "name": STR,
        "value": STR,
        "valueFrom": _obj({"fieldRef": _obj({"fieldPath": STR}, ("fieldPath",))}),
    },
    ("name",),
)
CONTAINER_PORT = _obj(
    {"name": {"type": "string", "maxLength": 15}, "containerPort": INT, "protocol": PROTOCOL},
    ("containerPort",),
)
CONTAINER = _obj(
    {
        "name": NAME,
        "image": STR,
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
        "command": STR_LIST,
        "args": STR_LIST,
        "env": {"type": "array", "items": ENV_VAR},
        "ports": {"type": "array", "items": CONTAINER_PORT},
        "readinessProbe": PROBE,
        "livenessProbe": PROBE,
        "startupProbe": PROBE,
        "lifecycle": _obj({"preStop": _obj({"exec": EXEC, "httpGet": HTTP_GET})}),
        "resources": _obj(
            {
                "requests": {"type": "object", "additionalProperties": QUANTITY},
                "limits": {"type": "object", "additionalProperties": QUANTITY},
            }
        ),
        "securityContext": _obj(
            {
                "allowPrivilegeEscalation": BOOL,
                "readOnlyRootFilesystem": BOOL,
                "runAsNonRoot": BOOL,
                "capabilities": _obj({"drop": STR_LIST, "add": STR_LIST}),
            }
        ),
        "volumeMounts": {
            "type": "array",
            "items": _obj(
                {"name": NAME, "mountPath": STR, "readOnly": BOOL, "subPath": STR},
                ("name", "mountPath"),
            ),
        },
    },
    ("name", "image"),
)
AFFINITY_TERM = _obj({"topologyKey": STR, "labelSelector": LABEL_SELECTOR}, ("topologyKey",))
POD_SPEC = _obj(
    {
        "containers": {"type": "array", "items": CONTAINER, "minItems": 1},
        "terminationGracePeriodSeconds": INT,
        "securityContext": _obj(
            {
                "runAsNonRoot": BOOL,
                "runAsUser": INT,
                "runAsGroup": INT,
                "fsGroup": INT,
                "seccompProfile": _obj({"type": STR}, ("type",)),
            }
        ),
        "affinity": _obj(
            {
                "podAntiAffinity": _obj(
                    {
                        "preferredDuringSchedulingIgnoredDuringExecution": {
                            "type": "array",
                            "items": _obj(
                                {"weight": INT, "podAffinityTerm": AFFINITY_TERM},
                                ("weight", "podAffinityTerm"),
                            ),
                        }
                    }
                )
            }
        ),
        "volumes": {
            "type": "array",
            "items": _obj({"name": NAME, "configMap": _obj({"name": NAME}, ("name",))}, ("name",)),
        },
    },
    ("containers",),
)
SERVICE_PORT = _obj(
    {"name": NAME, "port": INT, "targetPort": INT_OR_STR, "protocol": PROTOCOL}, ("port",)
)
PVC_SPEC = _obj(
    {
        "accessModes": STR_LIST,
        "storageClassName": STR,
        "resources": _obj({"requests": _obj({"storage": QUANTITY}, ("storage",))}),
    }
)
NP_PORT = _obj({"port": INT_OR_STR, "protocol": PROTOCOL})
NP_PEER = _obj({"podSelector": LABEL_SELECTOR, "namespaceSelector": LABEL_SELECTOR})


def _top(
    api: str, kind: str, spec: dict[str, Any] | None, extra: dict[str, Any] | None = None
) -> dict[str, Any]:
    props: dict[str, Any] = {"apiVersion": {"const": api}, "kind": {"const": kind}}
    props["metadata"] = METADATA
    required = ["apiVersion", "kind", "metadata"]
    if spec is not None:
        props["spec"] = spec
        required.append("spec")
    props.update(extra or {})
    return _obj(props, tuple(required))


SCHEMAS: dict[str, dict[str, Any]] = {
    "ConfigMap": _top("v1", "ConfigMap", None, {"data": STR_MAP}),
    "Service": _top(
        "v1",
        "Service",
        _obj(
            {
                "type": {"enum": ["ClusterIP", "NodePort", "LoadBalancer"]},
                "clusterIP": STR,
                "publishNotReadyAddresses": BOOL,
                "selector": STR_MAP,
                "ports": {"type": "array", "items": SERVICE_PORT, "minItems": 1},
            },
            ("selector", "ports"),
        ),
    ),
    "StatefulSet": _top(
        "apps/v1",
        "StatefulSet",
        _obj(
            {
                "serviceName": NAME,
                "replicas": {"type": "integer", "minimum": 1},
                "podManagementPolicy": {"enum": ["OrderedReady", "Parallel"]},
                "updateStrategy": _obj({"type": {"enum": ["RollingUpdate", "OnDelete"]}}),
                "selector": LABEL_SELECTOR,
                "template": _obj(
                    {
                        "metadata": _obj({"labels": STR_MAP, "annotations": STR_MAP}),
                        "spec": POD_SPEC,
                    },
                    ("metadata", "spec"),
                ),
                "volumeClaimTemplates": {
                    "type": "array",
                    "items": _obj({"metadata": METADATA, "spec": PVC_SPEC}, ("metadata", "spec")),
                },
            },
            ("serviceName", "selector", "template"),
        ),
    ),
    "PodDisruptionBudget": _top(
        "policy/v1",
        "PodDisruptionBudget",
        _obj(
            {"maxUnavailable": INT_OR_STR, "minAvailable": INT_OR_STR, "selector": LABEL_SELECTOR},
            ("selector",),
        ),
    ),
    "NetworkPolicy": _top(
        "networking.k8s.io/v1",
        "NetworkPolicy",
        _obj(
            {
                "podSelector": LABEL_SELECTOR,
                "policyTypes": {"type": "array", "items": {"enum": ["Ingress", "Egress"]}},
                "ingress": {
                    "type": "array",
                    "items": _obj(
                        {
                            "from": {"type": "array", "items": NP_PEER},
                            "ports": {"type": "array", "items": NP_PORT},
                        }
                    ),
                },
            },
            ("podSelector",),
        ),
    ),
}


def _documents() -> list[dict[str, Any]]:
    docs = [d for d in yaml.safe_load_all(MANIFEST.read_text()) if d is not None]
    assert docs, f"no documents in {MANIFEST}"
    return docs


def _one(docs: list[dict[str, Any]], kind: str, name: str | None = None) -> dict[str, Any]:
    found = [
        d for d in docs if d["kind"] == kind and (name is None or d["metadata"]["name"] == name)
    ]
    assert len(found) == 1, f"want one {kind} {name or ''}, found {len(found)}"
    return found[0]


def test_schema_check_rejects_a_typo() -> None:
    """The schema check can fail: a misspelt probe and a missing selector are caught."""
    sts = _one(_documents(), "StatefulSet")
    container = sts["spec"]["template"]["spec"]["containers"][0]
    container["readinesProbe"] = container.pop("readinessProbe")
    with pytest.raises(jsonschema.ValidationError, match="readinesProbe"):
        jsonschema.validate(sts, SCHEMAS["StatefulSet"])
    pdb = _one(_documents(), "PodDisruptionBudget")
    del pdb["spec"]["selector"]
    with pytest.raises(jsonschema.ValidationError, match="selector"):
        jsonschema.validate(pdb, SCHEMAS["PodDisruptionBudget"])


def test_kubernetes_manifests_match_the_schema_and_each_other() -> None:
    docs = _documents()
    for doc in docs:
        assert doc.get("kind") in SCHEMAS, f"no schema for kind {doc.get('kind')}"
        jsonschema.validate(doc, SCHEMAS[doc["kind"]])
    names = [(d["kind"], d["metadata"]["name"]) for d in docs]
    assert len(names) == len(set(names)), f"duplicate objects: {names}"

    sts = _one(docs, "StatefulSet")
    spec = sts["spec"]
    pod_labels = spec["template"]["metadata"]["labels"]
    selector = spec["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items(), "the selector does not match the pods"

    headless = _one(docs, "Service", spec["serviceName"])["spec"]
    assert headless["clusterIP"] == "None" and headless["publishNotReadyAddresses"] is True
    assert headless["selector"].items() <= pod_labels.items()

    pdb = _one(docs, "PodDisruptionBudget")["spec"]
    assert pdb["selector"]["matchLabels"].items() <= pod_labels.items()
    assert pdb.get("maxUnavailable") == 1 or "minAvailable" in pdb

    container = spec["template"]["spec"]["containers"][0]
    ports = {p["name"]: p for p in container["ports"]}
    ready = container["readinessProbe"]["httpGet"]
    assert ready["path"] == "/v1/health" and ready["port"] in ports
    pre_stop = container["lifecycle"]["preStop"]["exec"]["command"]
    assert pre_stop[:2] == ["p2preg", "leave"]
    env = {e["name"]: e for e in container["env"]}
    args = container["args"]
    flags = dict(a.removeprefix("--").split("=", 1) for a in args if a.startswith("--"))
    assert env["P2PREG_ADMIN"]["value"] == flags["admin"], "preStop would ask the wrong address"
    assert env["POD_IP"]["valueFrom"]["fieldRef"]["fieldPath"] == "status.podIP"
    for flag in ("overlay", "admin", "sip"):
        port = int(flags[flag].rsplit(":", 1)[1])
        assert any(p["containerPort"] == port for p in container["ports"]), flag

    config_map = _one(docs, "ConfigMap")
    volumes = {v["name"]: v for v in spec["template"]["spec"]["volumes"]}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    config_dir, config_file = flags["config"].rsplit("/", 1)
    assert volumes[mounts[config_dir]]["configMap"]["name"] == config_map["metadata"]["name"]
    config = tomllib.loads(config_map["data"][config_file])
    claims = {c["metadata"]["name"] for c in spec["volumeClaimTemplates"]}
    assert mounts[flags["data-dir"]] in claims, "the data directory must be a persistent volume"

    # The seeds name the first pods by their stable names, on the overlay port.
    overlay_port = int(flags["overlay"].rsplit(":", 1)[1])
    sts_name, svc = sts["metadata"]["name"], spec["serviceName"]
    want = [f"{sts_name}-{i}.{svc}:{overlay_port}" for i in range(min(3, spec["replicas"]))]
    assert config["bootstrap"] == want
    grace = spec["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace >= 2 * (config["leave-timeout"] + LEAVE_MARGIN)
    sip_service = _one(docs, "Service", "p2preg-sip")["spec"]
    assert {p["protocol"] for p in sip_service["ports"]} == {"UDP", "TCP"}
    assert all(p["targetPort"] in ports for p in sip_service["ports"])


def test_kubernetes_container_runs_a_node_and_prestop_makes_it_leave(
    cluster: Cluster, tmp_path: Path
) -> None:
    """The container's arguments and the ConfigMap's TOML, with POD_IP = 127.0.0.1 and free
    ports for 7000/7080/5060 (the seeds list replaced by the node itself), run a real node;
    the preStop command with the pod's environment makes it leave and exit 0."""
    docs = _documents()
    spec = _one(docs, "StatefulSet")["spec"]
    container = spec["template"]["spec"]["containers"][0]
    config_map = _one(docs, "ConfigMap")
    config = tmp_path / "p2preg.toml"
    config.write_text(config_map["data"]["p2preg.toml"])
    data = tmp_path / "data"
    free = dict(zip((7000, 7080, 5060), _free_ports(3), strict=True))
    subst = {"/etc/p2preg/p2preg.toml": str(config), "/var/lib/p2preg": str(data)}

    def pod_value(text: str) -> str:
        text = text.replace("$(POD_IP)", "127.0.0.1")
        for old, new in subst.items():
            text = text.replace(old, new)
        return re.sub(r":(7000|7080|5060)\b", lambda m: f":{free[int(m.group(1))]}", text)

    args = [pod_value(a) for a in container["args"]]
    assert args[0] == "run"
    flags = dict(a.removeprefix("--").split("=", 1) for a in args[1:])
    node = cluster.spawn(
        [flags["overlay"]],
        overlay=flags["overlay"],
        admin=flags["admin"],
        timers=(),
        extra=args[1:],
        data_dir=data,
    ).wait_ready()
    assert node.info["sip"] == flags["sip"]
    _wait_healthy(node)

    env = child_env()
    for var in container["env"]:
        if "value" in var:
            env[var["name"]] = pod_value(var["value"])
    command = container["lifecycle"]["preStop"]["exec"]["command"]
    result = subprocess.run(
        [sys.executable, "-m", "p2preg", *command[1:]],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert result.returncode == 0, f"preStop failed: {result.stdout} {result.stderr}"
    _assert_left(node, float(spec["template"]["spec"]["terminationGracePeriodSeconds"]))


# --- the wheel ----------------------------------------------------------------------------------

SOURCE_PARTS = ("pyproject.toml", "README.md", "LICENSE", "p2preg", "overlay", "storage")


def test_wheel_installs_in_a_clean_venv(tmp_path: Path) -> None:
    """pip wheel --no-deps from a copy of the checkout (so no build/ lands in it), a new venv,
    pip install of the wheel (dependencies from the package index or its cache), then the
    installed p2preg: --help, and a node run from outside the checkout serving the ring page
    (package data) and leaving on SIGTERM."""
    started = time.monotonic()
    source = tmp_path / "src"
    source.mkdir()
    for part in SOURCE_PARTS:
        path = REPO / part
        if path.is_dir():
            shutil.copytree(path, source / part, ignore=shutil.ignore_patterns("__pycache__"))
        elif path.exists():
            shutil.copy2(path, source / part)
    clean = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "VIRTUAL_ENV")}

    def run(*cmd: str | Path, timeout: float = 300) -> str:
        result = subprocess.run(
            [str(c) for c in cmd],
            capture_output=True,
            text=True,
            timeout=timeout,
            env=clean,
            cwd=tmp_path,
            check=False,
        )
        assert result.returncode == 0, f"{cmd}: {result.stdout[-2000:]} {result.stderr[-2000:]}"
        return result.stdout

    wheels = tmp_path / "wheels"
    run(sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source)
    [wheel] = wheels.glob("p2preg-*.whl")
    venv = tmp_path / "venv"
    run(sys.executable, "-m", "venv", venv)
    run(venv / "bin" / "pip", "install", "-q", wheel)
    built = time.monotonic() - started
    assert "p2preg run" in run(venv / "bin" / "p2preg", "--help")
    assert "--data-dir" in run(venv / "bin" / "p2preg", "run", "--help")
    location = run(venv / "bin" / "python", "-c", "import p2preg; print(p2preg.__file__)")
    assert location.startswith(str(venv)), f"imported from {location}, not the venv"

    overlay, admin = (f"127.0.0.1:{p}" for p in _free_ports(2))
    ready = tmp_path / "ready.json"
    log = tmp_path / "node.log"
    with open(log, "wb") as log_handle:
        proc = subprocess.Popen(
            [
                venv / "bin" / "p2preg", "run", "--data-dir", tmp_path / "data",
                "--overlay", overlay, "--admin", admin, "--ready-file", ready,
            ],
            stdin=subprocess.DEVNULL,
            stdout=log_handle,
            stderr=log_handle,
            env=clean,
            cwd=tmp_path,
        )  # fmt: skip
    try:
        wait_for(
            lambda: ready.exists() or (proc.poll() is not None and "exited"),
            30,
            "the installed node's ready file",
            describe=lambda: log.read_text(errors="replace")[-2000:],
        )
        assert proc.poll() is None, log.read_text(errors="replace")
        status, page = _get(f"http://{admin}/")
        assert status == 200 and b"<svg" in page, page[:200]
        proc.send_signal(signal.SIGTERM)
        assert proc.wait(30) == 0, log.read_text(errors="replace")
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(10)
    print(f"wheel built and installed in {built:.1f} s")


# --- the README's Kamailio configuration ---------------------------------------------------------

KAMAILIO = shutil.which("kamailio") or next(
    (p for p in ("/usr/sbin/kamailio",) if os.access(p, os.X_OK)), None
)
# What a whole kamailio.cfg has beside the README's fragment: listeners and the base modules.
KAMAILIO_PREAMBLE = """#!KAMAILIO
listen=udp:127.0.0.1:{port}
alias="example.com"
children=2
loadmodule "tm.so"
loadmodule "sl.so"
loadmodule "rr.so"
loadmodule "pv.so"
loadmodule "siputils.so"
loadmodule "textops.so"
"""


def _kamailio_fragment() -> tuple[str, list[str]]:
    """The kamailio.cfg fragment of README's "Deploying next to Kamailio" and its
    dispatcher.list lines, as the README shows them."""
    text = (REPO / "README.md").read_text()
    start = text.index("## Deploying next to Kamailio")
    section = text[start : text.index("\n## ", start + 1)]
    blocks = re.findall(r"(?:^    .*\n|^\n)+", section, re.MULTILINE)
    [block] = [b for b in blocks if "loadmodule" in b]
    lines = [line[4:] for line in block.splitlines()]
    dispatcher = [line for line in lines if re.match(r"^\d+ sip:", line)]
    config = "\n".join(line for line in lines if line not in dispatcher)
    assert dispatcher and "/etc/kamailio/dispatcher.list" in config
    return config, dispatcher


def _kamailio_cfg(root: Path, port: int, nodes_sip: list[str]) -> Path:
    config, dispatcher = _kamailio_fragment()
    listing = root / "dispatcher.list"
    if nodes_sip:  # the README's example addresses replaced by the test's nodes
        dispatcher = [f"1 sip:{address}" for address in nodes_sip]
    listing.write_text("\n".join(dispatcher) + "\n")
    cfg = root / "kamailio.cfg"
    cfg.write_text(
        KAMAILIO_PREAMBLE.format(port=port)
        + config.replace("/etc/kamailio/dispatcher.list", str(listing))
    )
    return cfg


def test_readme_kamailio_config_is_accepted_by_kamailio(tmp_path: Path) -> None:
    kamailio = _need(KAMAILIO, "kamailio")
    cfg = _kamailio_cfg(tmp_path, _free_ports(1)[0], [])
    check = subprocess.run(
        [kamailio, "-c", "-f", cfg], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert check.returncode == 0, f"kamailio -c rejects the README's config:\n{check.stderr}"
    # ... and kamailio -c does reject a broken one.
    cfg.write_text(cfg.read_text().replace("add_path_received();", "add_path_recieved();"))
    check = subprocess.run(
        [kamailio, "-c", "-f", cfg], capture_output=True, text=True, timeout=60, cwd=tmp_path
    )
    assert check.returncode != 0


class SipSocket:
    """A UDP socket on 127.0.0.1 that sends SIP requests and reads what comes back."""

    def __init__(self) -> None:
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        self.sock.bind(("127.0.0.1", 0))
        self.port = self.sock.getsockname()[1]

    def close(self) -> None:
        self.sock.close()

    def receive(self, deadline: float) -> tuple[str, tuple[str, int]] | None:
        self.sock.settimeout(max(0.01, min(0.5, deadline - time.monotonic())))
        try:
            data, source = self.sock.recvfrom(65535)
        except TimeoutError:
            return None
        return data.decode("utf-8", "replace"), source

    def request(
        self, target: tuple[str, int], method: str, uri: str, headers: list[str], timeout: float
    ) -> str:
        """Send until a final response comes (retransmitting every 0.5 s, as a UA does)."""
        branch = "z9hG4bK" + os.urandom(6).hex()
        message = "\r\n".join(
            [
                f"{method} {uri} SIP/2.0",
                f"Via: SIP/2.0/UDP 127.0.0.1:{self.port};branch={branch};rport",
                "Max-Forwards: 70",
                *headers,
                "Content-Length: 0",
                "",
                "",
            ]
        ).encode()
        deadline = time.monotonic() + timeout
        next_send = 0.0
        while time.monotonic() < deadline:
            if time.monotonic() >= next_send:
                self.sock.sendto(message, target)
                next_send = time.monotonic() + 0.5
            got = self.receive(min(deadline, next_send))
            if got is None:
                continue
            text, _ = got
            code = int(text.split(" ", 2)[1]) if text.startswith("SIP/2.0 ") else 0
            if branch in text and code >= 200:
                return text
        raise AssertionError(f"no final answer to {method} {uri} in {timeout:.0f} s")


def _header(message: str, name: str) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in message.split("\r\n")
        if line.lower().startswith(name.lower() + ":")
    ]


def test_kamailio_with_the_readme_config_registers_and_redirects_through_the_ring(
    cluster: Cluster, tmp_path: Path
) -> None:
    """Kamailio running the README's fragment in front of two real nodes: a REGISTER through
    it is stored in the ring with the edge's Path, and an INVITE to the user comes back as a
    302 that Kamailio forks to the registered contact."""
    kamailio = _need(KAMAILIO, "kamailio")
    sip = ("--sip", "127.0.0.1:0")
    first = cluster.start(extra=sip)
    second = cluster.start([first.overlay], extra=sip)
    wait_for(
        lambda: all(_get(f"http://{n.admin}/v1/health")[0] == 200 for n in (first, second)),
        30,
        "both nodes healthy",
    )
    port = _free_ports(1)[0]
    root = tmp_path / "kamailio"
    root.mkdir()
    cfg = _kamailio_cfg(root, port, [str(first.info["sip"]), str(second.info["sip"])])
    log = root / "kamailio.log"
    with open(log, "wb") as log_handle:
        proc = subprocess.Popen(
            [kamailio, "-f", cfg, "-DD", "-E", "-m", "64", "-M", "8",
             "-Y", root, "-P", root / "kamailio.pid", "-w", root],
            stdout=log_handle, stderr=log_handle, cwd=root, start_new_session=True,
        )  # fmt: skip
    uac, uas = SipSocket(), SipSocket()
    try:
        edge = ("127.0.0.1", port)
        contact = f"sip:alice@127.0.0.1:{uas.port}"
        reply = uac.request(
            edge,
            "REGISTER",
            "sip:example.com",
            [
                "From: <sip:alice@example.com>;tag=reg1",
                "To: <sip:alice@example.com>",
                f"Call-ID: {os.urandom(8).hex()}@test",
                "CSeq: 1 REGISTER",
                f"Contact: <{contact}>",
                "Supported: path",
                "Expires: 300",
            ],
            timeout=30,
        )
        assert reply.startswith("SIP/2.0 200"), reply
        assert any(contact in c for c in _header(reply, "Contact")), reply
        path = _header(reply, "Path")
        assert path and f"127.0.0.1:{port}" in path[0], f"no Path of the edge in:\n{reply}"
        for node in (first, second):
            status, body = http_json(node.admin, "GET", "/v1/aor/sip:alice@example.com")
            assert status == 200, body
            [binding] = body["bindings"]
            assert binding["contact"].strip("<>") == contact and binding["path"], binding

        invite_call = f"{os.urandom(8).hex()}@test"
        via = f"SIP/2.0/UDP 127.0.0.1:{uac.port};branch=z9hG4bK{os.urandom(6).hex()};rport"
        uac.sock.sendto(
            "\r\n".join(
                [
                    "INVITE sip:alice@example.com SIP/2.0",
                    f"Via: {via}",
                    "Max-Forwards: 70",
                    "From: <sip:bob@example.com>;tag=inv1",
                    "To: <sip:alice@example.com>",
                    f"Call-ID: {invite_call}",
                    "CSeq: 1 INVITE",
                    f"Contact: <sip:bob@127.0.0.1:{uac.port}>",
                    "Content-Length: 0",
                    "",
                    "",
                ]
            ).encode(),
            edge,
        )
        deadline = time.monotonic() + 30
        forked: str | None = None
        while forked is None and time.monotonic() < deadline:
            got = uas.receive(deadline)
            if got is not None and got[0].startswith("INVITE ") and invite_call in got[0]:
                forked = got[0]
        assert forked is not None, (
            "Kamailio did not fork the INVITE to the registered contact:\n"
            + log.read_text(errors="replace")[-3000:]
        )
        assert forked.startswith(f"INVITE {contact} SIP/2.0"), forked
    finally:
        uac.close()
        uas.close()
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        with contextlib.suppress(subprocess.TimeoutExpired):
            proc.wait(10)
