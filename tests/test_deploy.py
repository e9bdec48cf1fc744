"""deploy/ agrees with Mercato: the compose file and the Kubernetes manifests cannot run here
(no Docker engine, no Kubernetes), so what they say about Mercato is checked instead.

Every YAML document parses; deploy/mercato.toml loads with the config loader and is the
ConfigMap's copy; every ``MERCATO_*`` variable names a real key and takes effect; every
``mercato`` command line is a real command with valid options; ports and probes match the
configured ports and endpoints the roles really serve.
"""

from __future__ import annotations

import base64
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import click
import msgspec
import pytest
import yaml

from mercato.cli import cli
from mercato.collector.app import CollectorApp
from mercato.collector.keys import KeyStore
from mercato.config import SECTIONS, Config, ConfigError, load_config
from mercato.log.memory import MemoryLog
from mercato.metrics.definitions import load_definitions
from mercato.query.app import QueryApi
from mercato.query.tokens import TokenSigner
from mercato.store.sqlite import SqliteStore
from tests.inprocess import call

DEPLOY = Path(__file__).resolve().parents[1] / "deploy"
TOML = DEPLOY / "mercato.toml"
COMPOSE = DEPLOY / "docker-compose.yml"
KUBERNETES = DEPLOY / "kubernetes"
CONFIG_MOUNT = "/etc/mercato/mercato.toml"
WORKLOADS = {"Deployment", "StatefulSet", "DaemonSet", "Job", "CronJob"}
ROLES = {"collector", "aggregator", "archiver", "api", "scheduler"}
# What a deployment must run, besides `mercato run <role>` for every role.
SETUP = {("db", "migrate"), ("kafka", "create-topics")}


@dataclass
class Container:
    """One process a deployment file starts: its command line, environment and ports."""

    where: str
    argv: list[str]
    env: dict[str, str]
    container_ports: list[int] = field(default_factory=list)
    probes: list[tuple[str, int]] = field(default_factory=list)  # (path, port)
    labels: dict[str, str] = field(default_factory=dict)

    @property
    def mercato_env(self) -> dict[str, str]:
        return {k: v for k, v in self.env.items() if k.startswith("MERCATO_")}

    @property
    def role(self) -> str | None:
        words = self.argv[self.argv.index("run") + 1 :] if "run" in self.argv else []
        return words[0] if words and words[0] in ROLES else None


# -- reading deploy/ ----------------------------------------------------------------------------


def yaml_files() -> list[Path]:
    return sorted(p for p in DEPLOY.rglob("*") if p.suffix in (".yml", ".yaml"))


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[dict[str, Any]]:
    return [doc for path in sorted(KUBERNETES.glob("*.yaml")) for doc in documents(path)]


def argv_of(command: object) -> list[str]:
    if command is None:
        return []
    if isinstance(command, str):
        return shlex.split(command)
    assert isinstance(command, list), command
    return [str(word) for word in command]


def compose_containers() -> list[Container]:
    (compose,) = documents(COMPOSE)
    containers = []
    for name, service in compose["services"].items():
        environment = service.get("environment") or {}
        if isinstance(environment, list):
            environment = dict(item.split("=", 1) for item in environment)
        ports = [int(str(p).rsplit(":", 1)[-1].split("/")[0]) for p in service.get("ports", [])]
        probes = []
        for word in argv_of(service.get("healthcheck", {}).get("test")):
            for port, path in re.findall(r"http://(?:127\.0\.0\.1|localhost):(\d+)(/\w+)", word):
                probes.append((path, int(port)))
        argv = argv_of(service.get("entrypoint")) + argv_of(service.get("command"))
        env = {k: "" if v is None else str(v) for k, v in environment.items()}
        containers.append(Container(f"compose {name}", argv, env, ports, probes))
    return containers


def kubernetes_containers() -> list[Container]:
    docs = manifests()
    values: dict[tuple[str, str], dict[str, str]] = {}
    for doc in docs:
        if doc["kind"] == "ConfigMap":
            values["configMap", doc["metadata"]["name"]] = dict(doc.get("data", {}))
        elif doc["kind"] == "Secret":
            data = {k: base64.b64decode(v).decode() for k, v in doc.get("data", {}).items()}
            values["secret", doc["metadata"]["name"]] = {**data, **doc.get("stringData", {})}
    containers = []
    for doc in docs:
        if doc["kind"] not in WORKLOADS:
            continue
        spec = doc["spec"]
        if doc["kind"] == "CronJob":
            spec = spec["jobTemplate"]["spec"]
        pod = spec["template"]
        for c in pod["spec"].get("initContainers", []) + pod["spec"]["containers"]:
            env: dict[str, str] = {}
            for source in c.get("envFrom", []):
                kind = "configMap" if "configMapRef" in source else "secret"
                env.update(values[kind, source[f"{kind}Ref"]["name"]])
            for var in c.get("env", []):
                if "value" in var:
                    env[var["name"]] = str(var["value"])
                else:
                    ref = var["valueFrom"]
                    kind = "configMap" if "configMapKeyRef" in ref else "secret"
                    key = ref[f"{kind}KeyRef"]
                    env[var["name"]] = values[kind, key["name"]][key["key"]]
            probes = [
                (probe["httpGet"]["path"], probe["httpGet"]["port"])
                for kind in ("readinessProbe", "livenessProbe", "startupProbe")
                if "httpGet" in (probe := c.get(kind, {}))
            ]
            containers.append(
                Container(
                    f"{doc['kind']} {doc['metadata']['name']}/{c['name']}",
                    argv_of(c.get("command")) + argv_of(c.get("args")),
                    env,
                    [p["containerPort"] for p in c.get("ports", [])],
                    probes,
                    pod["metadata"].get("labels", {}),
                )
            )
    return containers


def mercato_containers() -> list[Container]:
    return [c for c in compose_containers() + kubernetes_containers() if c.argv[:1] == ["mercato"]]


def config_of(container: Container) -> Config:
    return load_config(TOML, env=container.mercato_env)


def resolve(argv: list[str]) -> tuple[click.Command, click.Context]:
    """The command ``argv`` runs and its parsed context, as click would reach it, without
    running anything; a bad command or option raises :class:`click.UsageError`."""
    assert argv[0] == "mercato"
    command: click.Command = cli
    context = cli.make_context("mercato", argv[1:])
    while isinstance(command, click.Group):
        # Click 8.2 renamed Context.protected_args (now deprecated) to _protected_args.
        protected = getattr(context, "_protected_args", None)
        if protected is None:
            protected = context.protected_args
        name, sub, rest = command.resolve_command(context, [*protected, *context.args])
        assert name is not None
        assert sub is not None
        context = sub.make_context(name, rest, parent=context)
        command = sub
    return command, context


def path_of(context: click.Context) -> tuple[str, ...]:
    names = []
    while context.parent is not None:
        names.append(context.info_name or "")
        context = context.parent
    return tuple(reversed(names))


# The variable names the loader maps to keys: MERCATO_<KEY> and MERCATO_<SECTION>_<KEY>.
def env_names() -> dict[str, tuple[str, ...]]:
    names: dict[str, tuple[str, ...]] = {
        f"MERCATO_{k.upper()}": (k,) for k in Config.__struct_fields__ if k not in SECTIONS
    }
    for section, struct in SECTIONS.items():
        for key in struct.__struct_fields__:
            names[f"MERCATO_{section.upper()}_{key.upper()}"] = (section, key)
    return names


def as_env_text(value: object) -> str:
    if isinstance(value, list):
        return ",".join(map(str, value))
    return str(value)


# -- the checks ---------------------------------------------------------------------------------


def test_every_yaml_document_parses():
    files = yaml_files()
    assert COMPOSE in files
    assert len([p for p in files if p.parent == KUBERNETES]) >= 5
    for path in files:
        docs = documents(path)
        assert docs, f"{path} has no document"
        for doc in docs:
            assert isinstance(doc, dict), f"{path}: a document is not a mapping"
            if path.parent == KUBERNETES:
                assert {"apiVersion", "kind"} <= doc.keys(), f"{path}: {doc}"


def test_the_toml_loads_with_kafka_and_postgres():
    config = load_config(TOML, env={})
    assert config.log.backend == "kafka"
    assert config.store.backend == "postgres"
    assert config.archive.path.startswith("s3://")
    assert config.aggregator.partitions == []  # the consumer group shares the partitions


def test_the_configmap_holds_the_toml():
    (configmap,) = [
        doc
        for doc in manifests()
        if doc["kind"] == "ConfigMap" and doc["metadata"]["name"] == "mercato"
    ]
    assert configmap["data"]["mercato.toml"] == TOML.read_text()


def test_every_container_reads_the_mounted_toml():
    (compose,) = documents(COMPOSE)
    mounts = [str(v) for s in compose["services"].values() for v in s.get("volumes", [])]
    assert f"./{TOML.name}:{CONFIG_MOUNT}:ro" in mounts
    for container in mercato_containers():
        assert container.argv[1:3] == ["--config", CONFIG_MOUNT], container.where


def test_every_role_and_setup_command_is_deployed():
    for containers in (compose_containers(), kubernetes_containers()):
        commands = {path_of(resolve(c.argv)[1]) for c in containers if c.argv[:1] == ["mercato"]}
        assert commands >= {("run", role) for role in ROLES} | SETUP


@pytest.mark.parametrize("container", mercato_containers(), ids=lambda c: c.where)
def test_every_mercato_command_is_real(container: Container):
    command, _ = resolve(container.argv)
    assert command.callback is not None


@pytest.mark.parametrize(
    "argv",
    [
        ["mercato", "run", "collector", "--config", CONFIG_MOUNT],  # --config is mercato's
        ["mercato", "--config", CONFIG_MOUNT, "run", "colector"],
        ["mercato", "kafka", "create-topics", "--replicas", "1"],
        ["mercato", "kafka", "create-topics", "--replication-factor", "0"],
        ["mercato", "db"],
    ],
)
def test_a_wrong_command_is_caught(argv: list[str]):
    with pytest.raises(click.UsageError):
        resolve(argv)


@pytest.mark.parametrize("container", mercato_containers(), ids=lambda c: c.where)
def test_every_environment_variable_is_a_key_that_takes_effect(container: Container):
    names = env_names()
    config = msgspec.to_builtins(config_of(container))
    for name, value in container.mercato_env.items():
        assert name in names, f"{container.where}: {name} is no configuration key"
        *section, key = names[name]
        actual = config[section[0]][key] if section else config[key]
        assert as_env_text(actual) == value, f"{container.where}: {name}"


def test_secrets_come_from_the_environment():
    for container in mercato_containers():
        config = config_of(container)
        assert config.api.secret, container.where
        assert config.api.admin_token, container.where
        assert "@" in config.store.dsn, container.where
        assert {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY"} <= container.env.keys()


def test_an_unknown_variable_is_caught():
    with pytest.raises(ConfigError):
        load_config(TOML, env={"MERCATO_COLLECTOR_PORTS": "1"})
    assert "MERCATO_COLLECTOR_PORTS" not in env_names()


def served(role: str, path: str, tmp_path: Path) -> int:
    """The status ``path`` answers on the role's real app (without a server)."""
    if role == "collector":
        app = CollectorApp(Config().collector, MemoryLog(1), KeyStore(tmp_path / "keys.json"))
        try:
            return call(app, "GET", path).status
        finally:
            app.close()
    assert role == "api"
    api = QueryApi(
        Config().api, SqliteStore.temporary(), load_definitions(), TokenSigner("s"), "admin"
    )
    return call(api.app, "GET", path).status


def ported(containers: list[Container]) -> list[Container]:
    return [c for c in containers if c.role in ("collector", "api")]


@pytest.mark.parametrize(
    "container",
    ported(compose_containers() + kubernetes_containers()),
    ids=lambda c: c.where,
)
def test_ports_and_probes_match_the_configuration(container: Container, tmp_path: Path):
    assert container.role is not None
    port = getattr(config_of(container), container.role).port
    assert container.container_ports == [port], container.where
    assert container.probes, f"{container.where} has no probe"
    for path, probe_port in container.probes:
        assert probe_port == port, container.where
        assert served(container.role, path, tmp_path) == 200, f"{container.where}: {path}"


def test_services_reach_the_configured_ports():
    containers = ported(kubernetes_containers())
    services = [doc for doc in manifests() if doc["kind"] == "Service"]
    assert {c.role for c in containers} == {"collector", "api"}
    for container in containers:
        assert container.role is not None
        port = getattr(config_of(container), container.role).port
        selecting = [
            s for s in services if s["spec"]["selector"].items() <= container.labels.items()
        ]
        assert selecting, f"no Service selects {container.where}"
        for service in selecting:
            assert [p["targetPort"] for p in service["spec"]["ports"]] == [port]


def replicas() -> dict[str, list[tuple[str, int]]]:
    """Replicas of each role: (where, count) in compose and in the manifests."""
    (compose,) = documents(COMPOSE)
    found: dict[str, list[tuple[str, int]]] = {}
    for name, service in compose["services"].items():
        found.setdefault(name, []).append(("compose", service.get("deploy", {}).get("replicas", 1)))
    for doc in manifests():
        if doc["kind"] == "Deployment":
            role = doc["metadata"]["name"].removeprefix("mercato-")
            found.setdefault(role, []).append(
                (
                    doc["spec"].get("strategy", {}).get("type", "RollingUpdate"),
                    doc["spec"].get("replicas", 1),
                )
            )
    return found


def test_one_archiver_and_aggregators_within_the_partitions():
    partitions = load_config(TOML, env={}).log.partitions
    found = replicas()
    # S3 has no locks: exactly one archiver per archive, never two during a rollout either
    assert sorted(found["archiver"]) == [("Recreate", 1), ("compose", 1)]
    assert all(1 <= n <= partitions for _, n in found["aggregator"])
    assert all(n == 2 for _, n in found["scheduler"])  # a leader and a standby
