"""Static validation of the deploy files (no Docker engine or cluster here).

Pinned: each file parses; the Dockerfile is multi-stage, installs from the lock with hashes, runs
as a non-root user with a `threadsync check` HEALTHCHECK and a volume; compose wires the daemon to
PostgreSQL with the emulator behind the `trial` profile; the systemd unit is hardened and waits
longer than the graceful shutdown (and passes `systemd-analyze verify` where available); the
Kubernetes objects validate against the official Kubernetes JSON schemas (strict: no unknown
fields), bundled offline by the kubernetes-validate package, match the structure threadsync needs,
and refer to each other consistently.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import jsonschema
import kubernetes_validate
import pytest
import yaml

from worker.config import DaemonSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
SHUTDOWN = DaemonSettings().shutdown_timeout
HEALTH_PORT = 9464


# -- Dockerfile ----------------------------------------------------------------------------------


def dockerfile() -> list[tuple[str, str]]:
    """(INSTRUCTION, arguments) with continuation lines joined and comments dropped."""
    text = (DEPLOY / "Dockerfile").read_text()
    joined = re.sub(
        r"\\\n", " ", "\n".join(ln for ln in text.splitlines() if not ln.lstrip().startswith("#"))
    )
    out = []
    for line in joined.splitlines():
        if line.strip():
            word, _, rest = line.strip().partition(" ")
            out.append((word.upper(), " ".join(rest.split())))
    return out


def test_dockerfile_is_multi_stage_and_installs_from_the_lock_with_hashes() -> None:
    steps = dockerfile()
    froms = [a for i, a in steps if i == "FROM"]
    assert len(froms) >= 2
    assert froms[0].endswith(" AS build")
    runs = " ; ".join(a for i, a in steps if i == "RUN")
    assert "pip install --require-hashes -r requirements.lock" in runs
    assert "--no-deps" in runs
    copies = [a for i, a in steps if i == "COPY"]
    assert any(a.startswith("--from=build") for a in copies)
    for args in copies:
        if args.startswith("--from"):
            continue
        for source in args.split()[:-1]:
            assert (ROOT / source).exists(), f"COPY source {source} missing"


def test_dockerfile_runtime_is_non_root_with_healthcheck_and_volume() -> None:
    steps = dockerfile()
    last_from = max(n for n, (i, _) in enumerate(steps) if i == "FROM")
    runtime = steps[last_from:]
    users = [a for i, a in runtime if i == "USER"]
    assert users
    assert users[-1].split(":")[0] not in {"root", "0"}
    health = [a for i, a in runtime if i == "HEALTHCHECK"]
    assert health
    assert '["threadsync", "check"]' in health[0]
    volumes = [a for i, a in runtime if i == "VOLUME"]
    assert volumes
    assert "/var/lib/threadsync" in volumes[0]
    env = " ".join(a for i, a in runtime if i == "ENV")
    assert "THREADSYNC_DATABASE_URL=sqlite:////var/lib/threadsync/" in env
    assert ("STOPSIGNAL", "SIGTERM") in runtime


# -- docker-compose.yml --------------------------------------------------------------------------


def test_compose_runs_the_daemon_on_postgres_with_an_emulator_trial_profile() -> None:
    doc = yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())
    services = doc["services"]
    assert {"postgres", "daemon", "emulator", "daemon-trial"} <= set(services)
    daemon = services["daemon"]
    assert daemon["environment"]["THREADSYNC_DATABASE_URL"].startswith("postgresql://")
    assert daemon["depends_on"]["postgres"]["condition"] == "service_healthy"
    assert (ROOT / daemon["build"]["dockerfile"]).exists()
    assert "profiles" not in daemon
    assert services["emulator"]["profiles"] == ["trial"]
    assert services["daemon-trial"]["profiles"] == ["trial"]
    trial_env = services["daemon-trial"]["environment"]
    assert trial_env["AZURE_OPENAI_ENDPOINT"] == "http://emulator:8080"
    assert trial_env["THREADSYNC_DATABASE_URL"] != daemon["environment"]["THREADSYNC_DATABASE_URL"]
    for name in ("daemon", "daemon-trial"):
        grace = services[name]["stop_grace_period"]
        assert int(grace.rstrip("s")) > SHUTDOWN
    assert "healthcheck" in services["postgres"]


# -- systemd -------------------------------------------------------------------------------------


def unit_file() -> dict[str, dict[str, list[str]]]:
    """Sections -> key -> values (systemd allows repeated keys, configparser does not)."""
    sections: dict[str, dict[str, list[str]]] = {}
    current: dict[str, list[str]] | None = None
    for raw in (DEPLOY / "systemd" / "threadsync.service").read_text().splitlines():
        line = raw.strip()
        if not line or line.startswith(("#", ";")):
            continue
        if line.startswith("["):
            current = sections.setdefault(line.strip("[]"), {})
            continue
        assert current is not None, f"key outside a section: {line}"
        key, sep, value = line.partition("=")
        assert sep, f"not a key=value line: {line}"
        current.setdefault(key.strip(), []).append(value.strip())
    return sections


def seconds(value: str) -> float:
    match = re.fullmatch(r"(\d+)(s|min)?", value)
    assert match, value
    return float(match.group(1)) * (60 if match.group(2) == "min" else 1)


def test_systemd_unit_is_hardened_and_outwaits_the_graceful_shutdown() -> None:
    unit = unit_file()
    assert set(unit) == {"Unit", "Service", "Install"}
    service = unit["Service"]
    expect = {
        "NoNewPrivileges": "yes",
        "ProtectSystem": "strict",
        "ProtectHome": "yes",
        "PrivateTmp": "yes",
        "StateDirectory": "threadsync",
        "KillSignal": "SIGTERM",
        "RestartPreventExitStatus": "2",
    }
    for key, value in expect.items():
        assert service[key] == [value], key
    assert seconds(service["TimeoutStopSec"][0]) > SHUTDOWN
    assert service["EnvironmentFile"][0].startswith("/etc/threadsync/")
    assert service["ExecStart"][0].endswith("threadsync run")
    assert not any("API_KEY" in v for v in service.get("Environment", []))
    assert unit["Install"]["WantedBy"] == ["multi-user.target"]


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="no systemd-analyze here")
def test_systemd_analyze_verifies_the_unit(tmp_path: Path) -> None:
    """Verified as installed, with ExecStart pointing at this checkout's `threadsync` and the
    environment file made optional (neither /opt/threadsync nor /etc/threadsync exist here)."""
    exe = shutil.which("threadsync") or str(ROOT / ".venv" / "bin" / "threadsync")
    text = (DEPLOY / "systemd" / "threadsync.service").read_text()
    text = re.sub(r"(?m)^ExecStart=\S+", f"ExecStart={exe}", text)
    text = re.sub(r"(?m)^EnvironmentFile=", "EnvironmentFile=-", text)
    unit = tmp_path / "threadsync.service"
    unit.write_text(text)
    done = subprocess.run(
        ["systemd-analyze", "verify", "--man=no", str(unit)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert "threadsync.service" not in done.stderr, done.stderr


# -- Kubernetes ----------------------------------------------------------------------------------

NAME = {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63}
LABELS = {"type": "object", "additionalProperties": {"type": "string"}}
METADATA = {
    "type": "object",
    "required": ["name"],
    "properties": {"name": NAME, "labels": LABELS, "annotations": LABELS},
}
PORT = {"anyOf": [{"type": "integer", "minimum": 1, "maximum": 65535}, NAME]}
PROBE = {
    "type": "object",
    "required": ["httpGet"],
    "properties": {
        "httpGet": {
            "type": "object",
            "required": ["path", "port"],
            "properties": {"path": {"type": "string", "pattern": "^/"}, "port": PORT},
        },
        "periodSeconds": {"type": "integer", "minimum": 1},
        "timeoutSeconds": {"type": "integer", "minimum": 1},
        "failureThreshold": {"type": "integer", "minimum": 1},
    },
    "additionalProperties": False,
}
CONTAINER = {
    "type": "object",
    "required": ["name", "image"],
    "properties": {
        "name": NAME,
        "image": {"type": "string", "minLength": 1},
        "args": {"type": "array", "items": {"type": "string"}},
        "env": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["name"],
                "properties": {"name": {"type": "string"}},
                "oneOf": [{"required": ["value"]}, {"required": ["valueFrom"]}],
            },
        },
        "envFrom": {"type": "array"},
        "ports": {
            "type": "array",
            "items": {
                "type": "object",
                "required": ["containerPort"],
                "properties": {"containerPort": PORT, "name": {"type": "string", "maxLength": 15}},
            },
        },
        "livenessProbe": PROBE,
        "readinessProbe": PROBE,
        "startupProbe": PROBE,
        "resources": {"type": "object"},
        "securityContext": {"type": "object"},
        "volumeMounts": {"type": "array"},
        "imagePullPolicy": {"enum": ["Always", "IfNotPresent", "Never"]},
    },
    "additionalProperties": False,
}
SCHEMAS: dict[str, dict[str, Any]] = {
    "Deployment": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "apps/v1"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "template"],
                "properties": {
                    "replicas": {"type": "integer", "minimum": 0},
                    "strategy": {
                        "type": "object",
                        "properties": {"type": {"enum": ["Recreate", "RollingUpdate"]}},
                    },
                    "selector": {
                        "type": "object",
                        "required": ["matchLabels"],
                        "properties": {"matchLabels": LABELS},
                    },
                    "template": {
                        "type": "object",
                        "required": ["metadata", "spec"],
                        "properties": {
                            "spec": {
                                "type": "object",
                                "required": ["containers"],
                                "properties": {
                                    "containers": {
                                        "type": "array",
                                        "minItems": 1,
                                        "items": CONTAINER,
                                    },
                                    "terminationGracePeriodSeconds": {"type": "integer"},
                                },
                            }
                        },
                    },
                },
            },
        },
    },
    "ConfigMap": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "data"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "metadata": METADATA,
            "data": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Secret": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "metadata": METADATA,
            "type": {"type": "string"},
            "stringData": {"type": "object", "additionalProperties": {"type": "string"}},
        },
    },
    "Service": {
        "type": "object",
        "required": ["apiVersion", "kind", "metadata", "spec"],
        "properties": {
            "apiVersion": {"const": "v1"},
            "metadata": METADATA,
            "spec": {
                "type": "object",
                "required": ["selector", "ports"],
                "properties": {"selector": LABELS, "ports": {"type": "array", "minItems": 1}},
            },
        },
    },
}
OURS = ("configmap.yaml", "secret.example.yaml", "deployment.yaml", "service.yaml")


def k8s_objects() -> dict[str, dict[str, Any]]:
    objects: dict[str, dict[str, Any]] = {}
    for name in OURS:
        for doc in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()):
            if doc is not None:
                objects[doc["kind"]] = doc
    return objects


def test_kubernetes_objects_match_their_structure() -> None:
    objects = k8s_objects()
    assert set(objects) == set(SCHEMAS)
    for kind, obj in objects.items():
        jsonschema.validate(obj, SCHEMAS[kind])


KUBERNETES_VERSIONS = ("1.29.0", "1.33.0")  # a supported range of clusters


@pytest.mark.parametrize("version", KUBERNETES_VERSIONS)
@pytest.mark.parametrize("name", [*OURS, "backup-cronjob.yaml"])
def test_kubernetes_objects_validate_against_the_kubernetes_schemas(
    name: str, version: str
) -> None:
    """Every object of every manifest, against that Kubernetes version's own schema (strict)."""
    docs = [d for d in yaml.safe_load_all((DEPLOY / "kubernetes" / name).read_text()) if d]
    assert docs
    for doc in docs:
        kubernetes_validate.validate(doc, version, strict=True)


def test_kubernetes_validation_catches_a_mistake() -> None:
    """The schema check is real: a misspelt field of the Deployment is refused."""
    deployment = k8s_objects()["Deployment"]
    broken = {**deployment, "spec": {**deployment["spec"], "replica": 1}}
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(broken, KUBERNETES_VERSIONS[-1], strict=True)


def test_kubernetes_objects_refer_to_each_other_consistently() -> None:
    """Probes on the health port, key from the Secret, config from the ConfigMap, one replica."""
    o = k8s_objects()
    deployment, config, secret, service = (
        o["Deployment"],
        o["ConfigMap"],
        o["Secret"],
        o["Service"],
    )
    spec = deployment["spec"]
    assert spec["replicas"] == 1
    assert spec["strategy"]["type"] == "Recreate"
    pod = spec["template"]
    assert spec["selector"]["matchLabels"].items() <= pod["metadata"]["labels"].items()
    assert service["spec"]["selector"].items() <= pod["metadata"]["labels"].items()
    assert pod["spec"]["terminationGracePeriodSeconds"] > SHUTDOWN
    (container,) = pod["spec"]["containers"]
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    assert ports == {"health": HEALTH_PORT}
    assert container["livenessProbe"]["httpGet"] == {"path": "/healthz", "port": "health"}
    assert container["readinessProbe"]["httpGet"] == {"path": "/readyz", "port": "health"}
    assert config["data"]["THREADSYNC_DAEMON__HEALTH_PORT"] == str(HEALTH_PORT)
    assert config["data"]["THREADSYNC_DAEMON__HEALTH_HOST"] == "0.0.0.0"
    assert not any("KEY" in k for k in config["data"])
    (from_config,) = container["envFrom"]
    assert from_config["configMapRef"]["name"] == config["metadata"]["name"]
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"] if "valueFrom" in e}
    assert refs["AZURE_OPENAI_API_KEY"]["name"] == secret["metadata"]["name"]
    for ref in refs.values():
        assert ref["key"] in secret["stringData"]
    security = container["securityContext"]
    assert security["allowPrivilegeEscalation"] is False
    assert security["readOnlyRootFilesystem"] is True
    assert pod["spec"]["securityContext"]["runAsNonRoot"] is True
