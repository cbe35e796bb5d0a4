"""Packaging: the Dockerfile, docker-compose.yml, the Kubernetes example in deploy/, and the sample producer.

No container engine runs here, so these files are parsed and their wiring is checked against the code:
the subcommands they run exist and parse, the connector's environment is a valid configuration, the
services point at each other's real ports, the probes ask the paths the image's healthcheck asks, and
the healthcheck and meter init scripts are run for real against local servers.
"""
# Over 400 lines: a parser per packaging file and the wiring checks that use it.

from __future__ import annotations

import base64
import http.server
import importlib.util
import io
import json
import re
import shlex
import subprocess
import sys
import threading
import time
import tomllib
import urllib.request
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field, replace
from fnmatch import fnmatch
from pathlib import Path, PurePosixPath
from typing import Any

import pytest
import yaml

from connector.cli import SUBCOMMANDS, build_parser
from connector.config.environment import load_settings
from connector.config.settings import DEFAULT_SCHEMA, Settings, TelemetrySettings
from connector.devtools import sample_producer
from connector.devtools.emulator import EmulatorProcess
from connector.devtools.emulator.catalog import CUSTOMER_ID
from connector.mapping.mapper import Mapper
from connector.records import KafkaRecord

REPO = Path(__file__).resolve().parents[2]
DOCKERFILE = REPO / "Dockerfile"
DOCKERIGNORE = REPO / ".dockerignore"
COMPOSE = REPO / "docker-compose.yml"
DEPLOY = REPO / "deploy"
PYPROJECT = REPO / "pyproject.toml"

CONSOLE_SCRIPT = "kafka-stripe"
PRODUCER_MODULE = "connector.devtools.sample_producer"
# The Dockerfile stage (and pyproject extra) with the developer tools; the default target is the runtime.
DEVTOOLS_TARGET = "devtools"
# The services docker-compose.yml must define: the stack documented in the README.
COMPOSE_SERVICES = {"kafka", "kafka-init", "emulator", "meter-init", "connector", "producer"}


# ------------------------------------------------------------------------------------------ Dockerfile


@dataclass
class Instruction:
    keyword: str
    args: str

    def exec_form(self) -> list[str]:
        value = json.loads(self.args)
        assert isinstance(value, list) and all(isinstance(v, str) for v in value), self
        return value


@dataclass
class Stage:
    base: str
    name: str | None
    instructions: list[Instruction] = field(default_factory=list)

    def all(self, keyword: str) -> list[Instruction]:
        return [i for i in self.instructions if i.keyword == keyword]

    def last(self, keyword: str) -> Instruction:
        found = self.all(keyword)
        assert found, f"no {keyword} in the stage FROM {self.base}"
        return found[-1]


def dockerfile_instructions(text: str) -> list[Instruction]:
    """Instructions with continuation lines joined; comments (and parser directives) dropped."""
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if pending and line.startswith("#"):
            continue  # Docker skips comment lines inside a continued instruction
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        whole = (pending + line).strip()
        pending = ""
        keyword, _, args = whole.partition(" ")
        instructions.append(Instruction(keyword.upper(), args.strip()))
    assert not pending, "the Dockerfile ends inside a continued instruction"
    return instructions


def dockerfile_stages() -> list[Stage]:
    global_args: dict[str, str] = {}
    stages: list[Stage] = []
    for instruction in dockerfile_instructions(DOCKERFILE.read_text()):
        if instruction.keyword == "FROM":
            words = instruction.args.split()
            base = re.sub(r"\$\{?(\w+)\}?", lambda m: global_args.get(m[1], m[0]), words[0])
            name = words[2] if len(words) == 3 and words[1].upper() == "AS" else None
            stages.append(Stage(base, name))
        elif not stages:
            assert instruction.keyword == "ARG", f"{instruction.keyword} before the first FROM"
            key, _, default = instruction.args.partition("=")
            global_args[key] = default
        else:
            stages[-1].instructions.append(instruction)
    assert stages, "the Dockerfile has no FROM"
    return stages


def resolved(stage: Stage, stages: list[Stage]) -> Stage:
    """``stage`` with the instructions of the stages it is built FROM (by name) before its own, and the
    image its chain starts from as its base: what an image built with ``--target <stage>`` holds."""
    by_name = {s.name: s for s in stages if s.name}
    chain = [stage]
    while chain[-1].base in by_name:
        chain.append(by_name[chain[-1].base])
    instructions = [i for s in reversed(chain) for i in s.instructions]
    return Stage(chain[-1].base, stage.name, instructions)


def final_stage() -> Stage:
    """The image ``docker build .`` makes: the last stage, with what it inherits."""
    stages = dockerfile_stages()
    return resolved(stages[-1], stages)


def target_stage(target: str) -> Stage:
    stages = dockerfile_stages()
    (stage,) = [s for s in stages if s.name == target]
    return resolved(stage, stages)


def build_stages() -> list[Stage]:
    """The stages whose results are copied into the images (not the images themselves)."""
    stages = dockerfile_stages()
    copied = {
        w.removeprefix("--from=")
        for stage in stages
        for i in stage.all("COPY")
        for w in shlex.split(i.args)
        if w.startswith("--from=")
    }
    return [resolved(s, stages) for s in stages if s.name in copied]


def image_uid() -> int:
    user = final_stage().last("USER").args.split(":")[0]
    assert user.isdigit(), f"USER {user}: use a numeric uid, which Kubernetes' runAsNonRoot can verify"
    return int(user)


def image_entrypoint() -> list[str]:
    return final_stage().last("ENTRYPOINT").exec_form()


def image_cmd() -> list[str]:
    return final_stage().last("CMD").exec_form()


def image_workdir() -> PurePosixPath:
    return PurePosixPath(final_stage().last("WORKDIR").args)


def copy_sources(instruction: Instruction) -> tuple[list[str], str]:
    """(sources, destination) of a COPY, or ([], "") when it copies from another stage or image."""
    words = shlex.split(instruction.args)
    if any(w.startswith("--from=") for w in words):
        return [], ""
    paths = [w for w in words if not w.startswith("--")]
    return paths[:-1], paths[-1]


def image_path_to_repo(path: str) -> Path:
    """Where a file the image holds at ``path`` (relative to WORKDIR or absolute) comes from in the repo:
    only files copied from the build context in the final stage are known."""
    target = image_workdir() / path
    for instruction in final_stage().all("COPY"):
        sources, destination = copy_sources(instruction)
        dest = image_workdir() / destination
        for source in sources:
            if target == dest or dest in target.parents:
                candidate = REPO / source / target.relative_to(dest)
                if candidate.exists():
                    return candidate
    raise AssertionError(f"{path} is not a file the image's final stage copies from the build context")


def test_dockerfile_final_stage_is_python_311_slim() -> None:
    assert final_stage().base == "python:3.11-slim"
    assert target_stage(DEVTOOLS_TARGET).base == "python:3.11-slim"
    requires = tomllib.loads(PYPROJECT.read_text())["project"]["requires-python"]
    assert requires == ">=3.11", "keep the base image's Python within requires-python"


def test_dockerfile_builds_a_wheel_in_a_stage_and_copies_only_the_result() -> None:
    stages = build_stages()
    assert len(dockerfile_stages()) >= 2
    build_names = {stage.name for stage in stages}
    froms = [
        w.removeprefix("--from=")
        for i in final_stage().all("COPY")
        for w in shlex.split(i.args)
        if w.startswith("--from=")
    ]
    assert froms and set(froms) <= build_names
    assert any("pip wheel" in i.args for stage in stages for i in stage.all("RUN"))
    # The source tree does not ship: the final stage copies from the context only schemas (for WORKDIR).
    for instruction in final_stage().all("COPY"):
        sources, _ = copy_sources(instruction)
        assert all(s.rstrip("/") == "schemas" for s in sources), instruction


def test_dockerfile_runs_as_a_non_root_user() -> None:
    assert image_uid() != 0
    user = final_stage().last("USER").args
    assert not user.startswith("root")
    assert any(f"--uid {image_uid()}" in i.args for i in final_stage().all("RUN")), "create the user"


def test_dockerfile_entrypoint_is_the_console_script_and_cmd_is_run() -> None:
    scripts = tomllib.loads(PYPROJECT.read_text())["project"]["scripts"]
    assert image_entrypoint() == [CONSOLE_SCRIPT]
    assert scripts[CONSOLE_SCRIPT] == "connector.cli:main"
    assert image_cmd() == ["run"]
    assert image_cmd()[0] in SUBCOMMANDS


def test_dockerfile_exposes_the_metrics_port() -> None:
    exposed = {port.split("/")[0] for i in final_stage().all("EXPOSE") for port in i.args.split()}
    assert str(TelemetrySettings().metrics_port) in exposed


def test_dockerfile_checks_the_installed_default_schema_at_build_time() -> None:
    runs = " ".join(i.args for stage in build_stages() for i in stage.all("RUN"))
    assert "DEFAULT_SCHEMA" in runs and "site-packages" in runs


def _installs(stage: Stage) -> list[str]:
    """The ``pip install`` arguments of a stage's RUN instructions (inherited ones included)."""
    found: list[str] = []
    for instruction in stage.all("RUN"):
        for command in re.split(r"&&|;", instruction.args):
            words = command.split()
            while words and words[0].startswith("--"):  # RUN's own options (--mount=...)
                words.pop(0)
            if words[:1] and words[0].endswith("pip") and words[1:2] == ["install"]:
                found += [w for w in words[2:] if not w.startswith("-")]
    return found


def _venv_source(image: Stage) -> Stage:
    (source,) = [
        w.removeprefix("--from=")
        for i in image.all("COPY")
        for w in shlex.split(i.args)
        if w.startswith("--from=")
    ]
    (stage,) = [s for s in build_stages() if s.name == source]
    return stage


def test_dockerfile_runtime_image_installs_the_wheel_without_extras() -> None:
    installs = _installs(_venv_source(final_stage()))
    assert installs and all(w.endswith(".whl") for w in installs), installs
    extras = tomllib.loads(PYPROJECT.read_text())["project"]["optional-dependencies"]
    assert DEVTOOLS_TARGET in extras, "the devtools target installs the devtools extra"


def test_dockerfile_devtools_target_adds_the_devtools_extra() -> None:
    image = target_stage(DEVTOOLS_TARGET)
    installs = _installs(_venv_source(image))
    assert any(w.endswith(f'.whl)[{DEVTOOLS_TARGET}]"') for w in installs), installs
    # The same user, working directory and entry point as the runtime image.
    for keyword in ("USER", "WORKDIR", "ENTRYPOINT"):
        assert image.last(keyword).args == final_stage().last(keyword).args, keyword


def test_dockerfile_copy_sources_exist_and_are_not_dockerignored() -> None:
    patterns = [
        line.strip()
        for line in DOCKERIGNORE.read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert not any(p.startswith("!") for p in patterns), "exceptions are not handled by this test"
    for required in (".venv", ".git", "tests"):
        assert required in patterns, f".dockerignore should keep {required} out of the build context"
    copied: list[str] = []
    for stage in dockerfile_stages():
        for instruction in stage.all("COPY"):
            copied += copy_sources(instruction)[0]
    readme = tomllib.loads(PYPROJECT.read_text())["project"]["readme"]
    for needed in ("pyproject.toml", readme, "connector/", "schemas/"):
        assert needed in copied, f"the build needs {needed}"
    for source in copied:
        path = source.rstrip("/")
        assert (REPO / path).exists(), source
        parts = PurePosixPath(path).parts
        for pattern in patterns:
            bare = pattern.removeprefix("**/")
            prefixes = ["/".join(parts[: n + 1]) for n in range(len(parts))]
            assert not any(fnmatch(prefix, bare) for prefix in prefixes), f"{pattern} excludes {source}"


@pytest.fixture
def health_server() -> Iterator[tuple[int, list[str], dict[str, int]]]:
    """A local HTTP server standing in for the connector: (port, paths requested, {"status": ...})."""
    requested: list[str] = []
    state = {"status": 200}

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            requested.append(self.path)
            self.send_response(state["status"] if self.path == "/healthz" else 404)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1], requested, state
    finally:
        server.shutdown()
        server.server_close()


def healthcheck_argv() -> list[str]:
    args = final_stage().last("HEALTHCHECK").args
    options, _, command = args.partition("CMD ")
    assert command, "HEALTHCHECK needs a CMD"
    assert all(option.startswith("--") for option in options.split())
    argv = json.loads(command) if command.startswith("[") else shlex.split(command)
    assert argv[0] == "python", "slim images have no curl or wget: the healthcheck uses Python"
    return argv


def run_healthcheck(port: str) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, *healthcheck_argv()[1:]]
    env = {"PATH": "/usr/bin:/bin", "CONNECTOR_METRICS_PORT": port}
    return subprocess.run(argv, env=env, capture_output=True, text=True, timeout=30)


def test_dockerfile_healthcheck_asks_healthz_on_the_metrics_port(
    health_server: tuple[int, list[str], dict[str, int]],
) -> None:
    port, requested, state = health_server
    assert run_healthcheck(str(port)).returncode == 0
    assert requested == ["/healthz"]
    state["status"] = 503
    assert run_healthcheck(str(port)).returncode != 0


def test_dockerfile_healthcheck_fails_without_a_server_and_passes_when_metrics_are_off() -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        free = sock.getsockname()[1]  # nothing listens once the socket closes
    assert run_healthcheck(str(free)).returncode != 0
    assert run_healthcheck("0").returncode == 0  # CONNECTOR_METRICS_PORT=0: no endpoint to ask


def test_the_health_paths_the_packaging_uses_are_served_by_the_connector() -> None:
    """The image's HEALTHCHECK and the Kubernetes probes ask /healthz and /readyz on the metrics port."""
    sources = [
        p.read_text()
        for p in (REPO / "connector").rglob("*.py")
        if "emulator" not in p.parts and p.name != "sample_producer.py"
    ]
    served = {path for path in ("/healthz", "/readyz") if any(f'"{path}"' in s for s in sources)}
    if not served:
        pytest.skip("the connector serves no health endpoints yet (metrics/health server not merged)")
    assert served == {"/healthz", "/readyz"}


# ------------------------------------------------------------------------------------------ pyproject


def test_the_wheel_ships_every_package_and_the_default_schema() -> None:
    """The image installs the wheel: a subpackage or the default schema missing from it is missing there."""
    setuptools = tomllib.loads(PYPROJECT.read_text())["tool"]["setuptools"]
    packages = set(setuptools["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "connector").rglob("__init__.py")}
    assert on_disk <= packages, f"not in [tool.setuptools] packages: {sorted(on_disk - packages)}"
    # DEFAULT_SCHEMA: schemas/ in a checkout, connector/schemas/ (package data) once installed.
    package_dir = setuptools["package-dir"]["connector.schemas"]
    assert "connector.schemas" in packages
    assert (REPO / package_dir / DEFAULT_SCHEMA.name).is_file()
    assert DEFAULT_SCHEMA.parent in (REPO / package_dir, REPO / "connector" / "schemas")
    globs = setuptools["package-data"]["connector.schemas"]
    assert any(fnmatch(DEFAULT_SCHEMA.name, g) for g in globs)
    assert importlib.util.find_spec(PRODUCER_MODULE) is not None
    assert PRODUCER_MODULE.rpartition(".")[0] in packages


# --------------------------------------------------------------------------------------------- compose


def load_compose() -> dict[str, Any]:
    document = yaml.safe_load(COMPOSE.read_text())
    assert isinstance(document, dict)
    return document


def compose_services() -> dict[str, dict[str, Any]]:
    services = load_compose()["services"]
    assert isinstance(services, dict)
    return services


def interpolate(value: str) -> str:
    """Compose interpolation with defaults only (``${VAR:-default}``); ``$$`` is a literal ``$``."""

    def replace(match: re.Match[str]) -> str:
        if match[0] == "$$":
            return "$"
        return match[3] or ""

    return re.sub(r"\$\$|\$\{(\w+)(:?-([^}]*))?\}", replace, value)


def service_env(service: Mapping[str, Any]) -> dict[str, str]:
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.partition("=")[::2] for item in raw)
    return {key: interpolate("" if value is None else str(value)) for key, value in raw.items()}


def uses_image(service: Mapping[str, Any]) -> bool:
    return service.get("image") in compose_images() or "build" in service


def compose_image() -> str:
    image = compose_services()["connector"]["image"]
    assert isinstance(image, str)
    return image


def compose_images() -> set[str]:
    """The images built from the Dockerfile: the connector's (runtime) and the devtools one."""
    return {compose_image(), compose_services()["emulator"]["image"]}


def service_target(service: Mapping[str, Any]) -> str | None:
    """The Dockerfile stage a service's image is built to; None for the default (runtime) image."""
    build = service.get("build")
    return build.get("target") if isinstance(build, dict) else None


def service_stage(service: Mapping[str, Any]) -> Stage:
    target = service_target(service)
    return target_stage(target) if target else final_stage()


def service_argv(service: Mapping[str, Any]) -> list[str]:
    """The process a service runs: compose's entrypoint/command over the image's ENTRYPOINT/CMD.

    Setting ``entrypoint`` in compose also clears the image's CMD, as ``docker run --entrypoint`` does."""
    assert uses_image(service)

    def words(value: Any) -> list[str]:
        return shlex.split(value) if isinstance(value, str) else [str(v) for v in value]

    image = service_stage(service)
    if "entrypoint" in service:
        entrypoint = words(service["entrypoint"])
    else:
        entrypoint = image.last("ENTRYPOINT").exec_form()
    if "command" in service:
        command = words(service["command"])
    else:
        command = [] if "entrypoint" in service else image.last("CMD").exec_form()
    return entrypoint + command


def connector_settings(env: Mapping[str, str]) -> Settings:
    """``load_settings`` on a container's environment, schema paths resolved as in the image."""
    resolved = dict(env)
    for key, value in env.items():
        if key.startswith("TOPIC_") and key.endswith("_SCHEMA") and value.strip():
            resolved[key] = str(image_path_to_repo(value.strip()))
    return load_settings(resolved)


def kafka_internal_listener() -> str:
    """host:port that other containers use: the advertised listener whose host is the service's name."""
    env = service_env(compose_services()["kafka"])
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    for item in env["KAFKA_ADVERTISED_LISTENERS"].split(","):
        name, address = item.split("://")
        host, _, port = address.rpartition(":")
        if host == "kafka":
            assert listeners[name].rpartition(":")[2] == port, f"{name} listens on another port"
            return address
    raise AssertionError("no advertised listener for other containers (host 'kafka')")


def emulator_address() -> tuple[str, int]:
    argv = service_argv(compose_services()["emulator"])
    assert argv[:2] == [CONSOLE_SCRIPT, "emulator"]
    args = build_parser("emulator").parse_args(argv[1:])
    return args.host, args.port


def duration_s(value: str) -> float:
    units = {"ms": 0.001, "s": 1, "m": 60, "h": 3600}
    total = 0.0
    for number, unit in re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", value):
        total += float(number) * units[unit]
    assert total, value
    return total


def test_compose_defines_the_stack() -> None:
    assert set(compose_services()) == COMPOSE_SERVICES


def test_compose_kafka_is_a_single_node_kraft_broker() -> None:
    kafka = compose_services()["kafka"]
    assert str(kafka["image"]).startswith("apache/kafka:")
    env = service_env(kafka)
    assert set(env["KAFKA_PROCESS_ROLES"].split(",")) == {"broker", "controller"}
    node = env["KAFKA_NODE_ID"]
    listeners = dict(item.split("://") for item in env["KAFKA_LISTENERS"].split(","))
    controller = env["KAFKA_CONTROLLER_LISTENER_NAMES"]
    assert env["KAFKA_CONTROLLER_QUORUM_VOTERS"] == f"{node}@kafka:{listeners[controller].rpartition(':')[2]}"
    protocols = dict(item.split(":") for item in env["KAFKA_LISTENER_SECURITY_PROTOCOL_MAP"].split(","))
    assert set(listeners) <= set(protocols)
    assert env["KAFKA_INTER_BROKER_LISTENER_NAME"] in listeners
    for key in ("OFFSETS_TOPIC", "TRANSACTION_STATE_LOG"):
        assert env[f"KAFKA_{key}_REPLICATION_FACTOR"] == "1"
    cluster_id = env["CLUSTER_ID"]
    assert len(base64.urlsafe_b64decode(cluster_id + "==")) == 16, "CLUSTER_ID must be a base64 UUID"
    kafka_internal_listener()


def test_compose_every_service_of_the_image_runs_a_real_command() -> None:
    services = compose_services()
    seen: set[str] = set()
    for name, service in services.items():
        if not uses_image(service):
            continue
        assert service.get("image") in compose_images() and "build" in service, (
            f"{name}: give every service of the image both image and build, so `up` never pulls it"
        )
        argv = service_argv(service)
        if argv[0] == CONSOLE_SCRIPT:
            assert argv[1] in SUBCOMMANDS, f"{name}: {argv[1]} is not a kafka-stripe subcommand"
            build_parser(argv[1]).parse_args(argv[1:])  # options exist (SystemExit otherwise)
            seen.add(argv[1])
        elif argv[:3] == ["python", "-m", PRODUCER_MODULE]:
            assert importlib.util.find_spec(PRODUCER_MODULE) is not None
            sample_producer.parse_options(argv[3:], service_env(service))
            seen.add(PRODUCER_MODULE)
        elif argv[:2] == ["python", "-c"] and len(argv) == 3:
            compile(argv[2], f"<{name}>", "exec")
            seen.add(f"python -c ({name})")
        else:
            raise AssertionError(f"{name} runs {argv}: not a subcommand, the producer or a script")
    assert {"run", "emulator", PRODUCER_MODULE} <= seen


def runs_devtools(argv: list[str]) -> bool:
    if argv[:3] == ["python", "-m", PRODUCER_MODULE]:
        return True
    return argv[0] == CONSOLE_SCRIPT and SUBCOMMANDS[argv[1]][0].startswith("connector.devtools.")


def test_compose_devtools_services_use_the_devtools_target_and_the_connector_the_runtime_image() -> None:
    """The runtime image lacks the devtools extra: the emulator and the producer need the devtools target."""
    services = compose_services()
    targets = {name: service_target(s) for name, s in services.items() if uses_image(s)}
    for name, service in services.items():
        if uses_image(service):
            wanted = DEVTOOLS_TARGET if runs_devtools(service_argv(service)) else None
            assert targets[name] == wanted, f"{name} is built to target {targets[name]}, not {wanted}"
    assert targets["emulator"] == targets["producer"] == DEVTOOLS_TARGET
    assert targets["connector"] is None
    devtools_image = services["emulator"]["image"]
    assert devtools_image != compose_image(), "two targets, two image names (or one overwrites the other)"
    assert {services[n]["image"] for n, t in targets.items() if t} == {devtools_image}


def test_compose_other_services_of_the_image_replace_its_connector_healthcheck() -> None:
    """The image's HEALTHCHECK asks the connector's /healthz: the emulator, producer and init steps
    must bring their own or disable it, or they would be reported unhealthy for ever."""
    for name, service in compose_services().items():
        if uses_image(service) and service_argv(service)[:2] != [CONSOLE_SCRIPT, "run"]:
            assert "healthcheck" in service, name
    connector = compose_services()["connector"]
    assert not connector.get("healthcheck", {}).get("disable"), "the connector keeps the image's check"


def test_compose_connector_reaches_kafka_on_the_internal_listener() -> None:
    services = compose_services()
    internal = kafka_internal_listener()
    assert service_env(services["connector"])["KAFKA_BOOTSTRAP_SERVERS"] == internal
    producer = services["producer"]
    options = sample_producer.parse_options(service_argv(producer)[3:], service_env(producer))
    assert options.bootstrap_servers == internal
    init = " ".join(services["kafka-init"]["command"])
    assert set(re.findall(r"--bootstrap-server (\S+)", init)) == {internal}


def test_compose_connector_reaches_the_emulator() -> None:
    host, port = emulator_address()
    assert host == "0.0.0.0", "the emulator must listen beyond its own container's loopback"
    env = service_env(compose_services()["connector"])
    assert env["STRIPE_API_BASE"] == f"http://emulator:{port}"
    assert env["STRIPE_METER_EVENTS_BASE"] == f"http://emulator:{port}"
    health = " ".join(compose_services()["emulator"]["healthcheck"]["test"])
    assert f"127.0.0.1:{port}/_emulator/health" in health


def test_compose_emulator_account_and_connector_agree_on_decimal_values() -> None:
    # The sample producer sends fractions: a connector allowing them needs an account that has them,
    # else Stripe (and the emulator) drops those events after its 200.
    argv = service_argv(compose_services()["emulator"])
    emulator = build_parser("emulator").parse_args(argv[1:])
    settings = connector_settings(service_env(compose_services()["connector"]))
    assert settings.topic("usage").decimal_values is True
    assert emulator.decimal_values is True


def test_compose_connector_environment_is_a_valid_configuration() -> None:
    env = service_env(compose_services()["connector"])
    settings = connector_settings(env)  # ConfigurationError lists every problem
    assert settings.topic_names == ("usage",)
    assert settings.topic("usage").schema_path == DEFAULT_SCHEMA
    assert settings.stripe.api_key.reveal().startswith("sk_test_"), "the emulator stack uses a test key"
    assert settings.telemetry.metrics_port == TelemetrySettings().metrics_port


def test_compose_creates_every_topic_the_stack_uses() -> None:
    services = compose_services()
    settings = connector_settings(service_env(services["connector"]))
    script = "\n".join(services["kafka-init"]["command"])
    created = {
        m[1]: int(m[2])
        for m in re.finditer(r"--create --if-not-exists --topic (\S+) --partitions (\d+)", script)
    }
    producer = services["producer"]
    options = sample_producer.parse_options(service_argv(producer)[3:], service_env(producer))
    assert options.topic in settings.topic_names
    for topic in settings.topics:
        assert topic.name in created and topic.dlq_topic in created
        replicas = services["connector"]["deploy"]["replicas"]
        assert created[topic.name] >= replicas, "fewer partitions than replicas leaves a replica idle"
    assert service_env(services["kafka"])["KAFKA_AUTO_CREATE_TOPICS_ENABLE"] == "false"


def test_compose_runs_two_connectors_in_one_group() -> None:
    connector = compose_services()["connector"]
    assert connector["deploy"]["replicas"] == 2
    assert "container_name" not in connector, "a fixed container name allows one replica only"
    assert "KAFKA_GROUP_INSTANCE_ID" not in service_env(connector), "static membership needs one id each"
    # One host port per replica.
    (port,) = connector["ports"]
    published = str(port).split(":")[1]
    low, _, high = published.partition("-")
    assert int(high or low) - int(low) + 1 >= connector["deploy"]["replicas"]


def test_compose_ports_are_bound_to_loopback() -> None:
    count = 0
    for name, service in compose_services().items():
        for port in service.get("ports", []):
            count += 1
            if isinstance(port, dict):
                assert port.get("host_ip") == "127.0.0.1", f"{name}: {port}"
            else:
                assert str(port).startswith("127.0.0.1:"), f"{name}: {port}"
    assert count >= 3


def test_compose_start_up_order() -> None:
    services = compose_services()
    expected = {
        "kafka-init": {"kafka": "service_healthy"},
        "meter-init": {"emulator": "service_healthy"},
        "connector": {
            "kafka-init": "service_completed_successfully",
            "emulator": "service_healthy",
            "meter-init": "service_completed_successfully",
        },
        "producer": {"kafka-init": "service_completed_successfully"},
    }
    for name, dependencies in expected.items():
        actual = {dep: spec["condition"] for dep, spec in services[name]["depends_on"].items()}
        assert actual == dependencies, name
    for service in services.values():
        for dep, spec in (service.get("depends_on") or {}).items():
            if spec["condition"] == "service_healthy":
                check = services[dep].get("healthcheck", {})
                assert check.get("test") and not check.get("disable"), f"{dep} needs a healthcheck"
            if spec["condition"] == "service_completed_successfully":
                assert str(services[dep].get("restart", "no")) == "no", f"{dep} is a one-shot step"


def test_compose_connector_stops_gracefully() -> None:
    connector = compose_services()["connector"]
    settings = connector_settings(service_env(connector))
    assert duration_s(connector["stop_grace_period"]) > settings.pipeline.shutdown_timeout_s
    assert connector.get("init") is True, "an init process forwards signals and reaps worker processes"


def test_compose_meter_init_creates_the_connectors_meter_once() -> None:
    services = compose_services()
    init = services["meter-init"]
    env = service_env(init)
    connector_env = service_env(services["connector"])
    assert env["STRIPE_API_KEY"] == connector_env["STRIPE_API_KEY"], "test/live data are separate"
    assert env["STRIPE_API_BASE"] == connector_env["STRIPE_API_BASE"]
    assert env["METER_EVENT_NAME"] == connector_env["TOPIC_USAGE_EVENT_NAME"]
    argv = service_argv(init)
    with EmulatorProcess() as emulator:
        run_env = {**env, "STRIPE_API_BASE": emulator.url, "PATH": "/usr/bin:/bin"}
        outputs = []
        for _ in range(2):  # a second run (compose up again) must not create a second meter
            done = subprocess.run(
                [sys.executable, *argv[1:]], env=run_env, capture_output=True, text=True, timeout=60
            )
            assert done.returncode == 0, done.stderr
            outputs.append(done.stdout)
        request = urllib.request.Request(
            f"{emulator.url}/v1/billing/meters?limit=100",
            headers={"Authorization": f"Bearer {env['STRIPE_API_KEY']}"},
        )
        with urllib.request.urlopen(request, timeout=10) as response:
            meters = json.load(response)["data"]
    assert [m["event_name"] for m in meters] == [env["METER_EVENT_NAME"]]
    assert meters[0]["default_aggregation"]["formula"] == "sum"
    assert "created meter" in outputs[0] and "already exists" in outputs[1]


# ------------------------------------------------------------------------------------------ Kubernetes


def load_manifests() -> dict[tuple[str, str], dict[str, Any]]:
    """Every object in deploy/*.yaml by (kind, name)."""
    objects: dict[tuple[str, str], dict[str, Any]] = {}
    files = sorted(DEPLOY.glob("*.yaml")) + sorted(DEPLOY.glob("*.yml"))
    assert files, "no manifests in deploy/"
    for path in files:
        for document in yaml.safe_load_all(path.read_text()):
            if document:
                key = (document["kind"], document["metadata"]["name"])
                assert key not in objects, f"{key} defined twice"
                objects[key] = document
    return objects


def one(objects: Mapping[tuple[str, str], dict[str, Any]], kind: str) -> dict[str, Any]:
    found = [obj for (k, _), obj in objects.items() if k == kind]
    assert len(found) == 1, f"expected one {kind}, found {len(found)}"
    return found[0]


def deployment_container(objects: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, Any]:
    (container,) = one(objects, "Deployment")["spec"]["template"]["spec"]["containers"]
    return container


def pod_environment(objects: Mapping[tuple[str, str], dict[str, Any]]) -> dict[str, str]:
    """The container's environment: its envFrom ConfigMaps and Secrets, then its env entries."""
    container = deployment_container(objects)
    env: dict[str, str] = {}
    for source in container.get("envFrom", []):
        if "configMapRef" in source:
            config = objects[("ConfigMap", source["configMapRef"]["name"])]
            env.update({k: str(v) for k, v in config.get("data", {}).items()})
        elif "secretRef" in source:
            secret = objects[("Secret", source["secretRef"]["name"])]
            env.update({k: base64.b64decode(v).decode() for k, v in secret.get("data", {}).items()})
            env.update({k: str(v) for k, v in secret.get("stringData", {}).items()})
    for item in container.get("env", []):
        assert "value" in item, f"{item['name']}: valueFrom is not handled by this test"
        env[item["name"]] = str(item["value"])
    return env


def test_k8s_environment_is_a_valid_configuration_with_the_key_from_a_secret() -> None:
    objects = load_manifests()
    container = deployment_container(objects)
    kinds = {next(iter(source)) for source in container["envFrom"]}
    assert kinds == {"configMapRef", "secretRef"}
    env = pod_environment(objects)
    settings = connector_settings(env)
    secret = one(objects, "Secret")
    assert "STRIPE_API_KEY" in {**secret.get("data", {}), **secret.get("stringData", {})}
    assert "STRIPE_API_KEY" not in one(objects, "ConfigMap")["data"], "the key belongs in the Secret"
    assert settings.topic_names


def test_k8s_runs_the_image_entrypoint_as_the_image_user() -> None:
    objects = load_manifests()
    container = deployment_container(objects)
    assert "command" not in container, "keep the image's ENTRYPOINT (the console script)"
    args = container.get("args", image_cmd())
    assert args[0] == "run" and args[0] in SUBCOMMANDS
    pod = one(objects, "Deployment")["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] == image_uid()


def test_k8s_probes_ask_healthz_and_readyz_on_the_metrics_port() -> None:
    objects = load_manifests()
    container = deployment_container(objects)
    settings = connector_settings(pod_environment(objects))
    ports = {p.get("name"): p["containerPort"] for p in container["ports"]}
    assert settings.telemetry.metrics_port in ports.values()

    def target(probe: str) -> tuple[str, int]:
        get = container[probe]["httpGet"]
        port = get["port"]
        return get["path"], ports[port] if isinstance(port, str) else port

    assert target("livenessProbe") == ("/healthz", settings.telemetry.metrics_port)
    assert target("readinessProbe") == ("/readyz", settings.telemetry.metrics_port)
    if "startupProbe" in container:
        assert target("startupProbe") == ("/healthz", settings.telemetry.metrics_port)
    healthcheck = " ".join(healthcheck_argv())
    assert "/healthz" in healthcheck, "the image and the cluster ask the same liveness path"


def test_k8s_grace_period_exceeds_the_shutdown_timeout() -> None:
    objects = load_manifests()
    settings = connector_settings(pod_environment(objects))
    grace = one(objects, "Deployment")["spec"]["template"]["spec"]["terminationGracePeriodSeconds"]
    assert grace > settings.pipeline.shutdown_timeout_s


def test_k8s_resources_are_requested_and_limited() -> None:
    resources = deployment_container(load_manifests())["resources"]
    assert {"cpu", "memory"} <= set(resources["requests"])
    assert "memory" in resources["limits"]


def test_k8s_selectors_match_the_pods() -> None:
    objects = load_manifests()
    deployment = one(objects, "Deployment")
    labels = deployment["spec"]["template"]["metadata"]["labels"]

    def matches(selector: Mapping[str, str]) -> bool:
        return bool(selector) and all(labels.get(k) == v for k, v in selector.items())

    assert matches(deployment["spec"]["selector"]["matchLabels"])
    for kind, path in (("Service", ("spec", "selector")), ("PodDisruptionBudget", ("spec", "selector"))):
        for (k, _), obj in objects.items():
            if k == kind:
                selector = obj[path[0]][path[1]]
                assert matches(selector.get("matchLabels", selector)), kind


def test_k8s_scaledobject_scales_the_deployment_on_the_groups_lag() -> None:
    objects = load_manifests()
    settings = connector_settings(pod_environment(objects))
    deployment = one(objects, "Deployment")
    scaled = one(objects, "ScaledObject")
    assert scaled["apiVersion"] == "keda.sh/v1alpha1"
    target = scaled["spec"]["scaleTargetRef"]
    assert target["name"] == deployment["metadata"]["name"]
    assert target.get("kind", "Deployment") == "Deployment"
    (trigger,) = scaled["spec"]["triggers"]
    assert trigger["type"] == "kafka"
    metadata = trigger["metadata"]
    assert metadata["consumerGroup"] == settings.kafka.group_id
    assert metadata["topic"] in settings.topic_names
    assert metadata["bootstrapServers"] == settings.kafka.bootstrap_servers
    assert metadata["offsetResetPolicy"] == settings.kafka.get("auto.offset.reset")
    assert str(metadata.get("allowIdleConsumers", "false")).lower() == "false"
    assert int(metadata["lagThreshold"]) > 0
    assert 1 <= scaled["spec"]["minReplicaCount"] <= scaled["spec"]["maxReplicaCount"]


# ------------------------------------------------------------------------------------- sample producer


class FakeProducer:
    def __init__(self, stop_after: int | None = None, stop: threading.Event | None = None) -> None:
        self.messages: list[tuple[str, bytes, bytes]] = []
        self.pending: list[Any] = []
        self.stop_after = stop_after
        self.stop = stop

    def produce(self, topic: str, *, value: bytes, key: bytes, on_delivery: Any) -> None:
        self.messages.append((topic, key, value))
        self.pending.append(on_delivery)
        if self.stop is not None and len(self.messages) == self.stop_after:
            self.stop.set()

    def poll(self, timeout: float) -> int:
        served, self.pending = self.pending, []
        for callback in served:
            callback(None, None)
        return len(served)

    def flush(self, timeout: float) -> int:
        self.poll(0)
        return 0


def producer_options(**overrides: Any) -> sample_producer.Options:
    base: dict[str, Any] = {
        "bootstrap_servers": "kafka:19092",
        "topic": "usage",
        "rate": 0.0,
        "customers": 3,
        "records": 40,
        "seed": 7,
    }
    return sample_producer.Options(**{**base, **overrides})


def test_sample_producer_help() -> None:
    done = subprocess.run(
        [sys.executable, "-m", PRODUCER_MODULE, "--help"],
        capture_output=True,
        text=True,
        timeout=60,
        cwd=REPO,
    )
    assert done.returncode == 0, done.stderr
    for option in ("--bootstrap-servers", "--topic", "--rate", "--customers", "--records"):
        assert option in done.stdout
    assert "KAFKA_BOOTSTRAP_SERVERS" in done.stdout


def test_sample_producer_options_come_from_argv_then_environment() -> None:
    env = {
        "KAFKA_BOOTSTRAP_SERVERS": "b:9092",
        "SAMPLE_TOPIC": "t",
        "SAMPLE_RATE": "5",
        "SAMPLE_RECORDS": "9",
    }
    options = sample_producer.parse_options([], env)
    assert (options.bootstrap_servers, options.topic, options.rate, options.records) == ("b:9092", "t", 5, 9)
    assert options.customers == sample_producer.DEFAULT_CUSTOMERS
    options = sample_producer.parse_options(["--topic", "other", "--customers", "2"], env)
    assert (options.topic, options.customers) == ("other", 2)
    for argv, environ in (([], {}), (["--rate", "-1"], env), (["--topic", "bad topic"], env)):
        with pytest.raises(SystemExit) as exit_info:
            sample_producer.parse_options(argv, environ)
        assert exit_info.value.code == 2


def test_sample_producer_records_map_to_valid_meter_events() -> None:
    producer = FakeProducer()
    out = io.StringIO()
    options = producer_options()
    assert sample_producer.run(options, producer, threading.Event(), out=out) == 0
    assert len(producer.messages) == options.records
    customers = set(sample_producer.customer_ids(options.customers))
    assert len(customers) == options.customers
    assert all(CUSTOMER_ID.match(c) for c in customers), "Stripe-shaped ids: cus_ + letters and digits"
    # Mapped as the compose stack's connector maps them (its topic allows decimal values).
    settings = connector_settings(service_env(compose_services()["connector"])).topic("usage")
    mapper = Mapper(replace(settings, schema_path=DEFAULT_SCHEMA))
    mapper.use_namespace("TopicIdOfUsage00000001")  # the pipeline sets the topic's id
    now_ms = int(time.time() * 1000)
    kinds = set()
    for offset, (topic, key, value) in enumerate(producer.messages):
        assert topic == "usage"
        record = KafkaRecord(topic, 0, offset, key, value, now_ms)
        event = mapper.map_record(record, now_ms)  # a rejection raises
        assert event.payload["stripe_customer_id"] == key.decode() and key.decode() in customers
        assert event.identifier == f"kafka:usage:TopicIdOfUsage00000001:0:{offset}"
        kinds.add(type(mapper.decoder.decode(value)["value"]).__name__)
    assert len(kinds) >= 3, f"values should cover the schema's union branches, got {kinds}"
    assert "delivered 40" in out.getvalue()


def test_sample_producer_stops_when_asked_and_paces_itself() -> None:
    stop = threading.Event()
    producer = FakeProducer(stop_after=25, stop=stop)
    assert sample_producer.run(producer_options(records=0), producer, stop, out=io.StringIO()) == 0
    assert len(producer.messages) == 25
    started = time.monotonic()
    paced = FakeProducer()
    sample_producer.run(producer_options(records=6, rate=20.0), paced, threading.Event(), out=io.StringIO())
    assert time.monotonic() - started >= 5 / 20.0
    assert len(paced.messages) == 6
