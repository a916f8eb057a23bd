"""The deployment files in deploy/: they parse, and they agree with the code they deploy.

No container engine, cluster or systemd runs here, so the files are parsed and cross-checked
against what the code really reads and exports, found by asking the code at run time, never
from a second list kept here: the secrets are the names `load_config` looks up, the
GW_<SECTION>_<KEY> names the fields of gateway.config's sections, and the metric names and
labels the ones a live gateway's /metrics shows (two replicas of the image's command on the
deploy config, sharing a real Redis, in front of a sandbox upstream that is made to fail).
The command line, ports and probe paths are checked against the CLI. The image's command and
health check are run as processes on loopback. Where installed, promtool checks the
Prometheus files (and that each alert fires, and only fires, when it should),
systemd-analyze the unit, and kubernetes-validate the manifests' schemas.
"""

from __future__ import annotations

import configparser
import dataclasses
import functools
import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import tempfile
import tomllib
import urllib.error
import urllib.request
from collections import defaultdict
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from fnmatch import fnmatch
from pathlib import Path
from typing import IO, Any
from urllib.parse import urlsplit

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from gateway import config as gwconfig
from gateway.config import ConfigError, is_loopback, load_config
from sandbox import SERVICE_ACCOUNT

from gwtesting import RedisServer, eventually_sync, free_port, running_sandbox

ROOT = Path(__file__).resolve().parent.parent
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
PROM = DEPLOY / "prometheus"

PORT = 8080
CONFIG_IN_IMAGE = "/etc/catalog-gateway/config.toml"
VENV_SCRIPT = "/opt/catalog-gateway/.venv/bin/catalog-gateway"
SCRAPE_JOB = "catalog-gateway"


# --- what the code reads and exports -----------------------------------------------------------


def override_names() -> set[str]:
    """GW_<SECTION>_<KEY> for every field of every section dataclass gateway.config reads."""
    return {
        f"GW_{section}_{field.name}".upper()
        for section, cls in gwconfig._SECTIONS.items()
        for field in dataclasses.fields(cls)
    }


class _LookedUp(Mapping[str, str]):
    """An empty environment that notes every name looked up in it. Listing it yields
    nothing, so no GW_<SECTION>_<KEY> override (found by listing) is read from it."""

    def __init__(self) -> None:
        self.names: list[str] = []

    def __getitem__(self, name: str) -> str:
        self.names.append(name)
        raise KeyError(name)

    def __iter__(self) -> Iterator[str]:
        return iter(())

    def __len__(self) -> int:
        return 0


@functools.cache
def secret_names() -> tuple[str, ...]:
    """The environment names `load_config` reads secrets from, as it looks them up."""
    env = _LookedUp()
    load_config(None, env=env)
    return tuple(dict.fromkeys(env.names))


def valid_gw_names() -> set[str]:
    return override_names() | {name for name in secret_names() if name.startswith("GW_")}


DEPLOY_KEY = "deploy-test-gw-api-keys"  # the stand-in API key (write scope)


def stand_in(name: str) -> str:
    """A made-up value for a secret, when a test loads a deployment's environment."""
    if name == "GW_API_KEYS":
        return f"deploy:{DEPLOY_KEY}:write"
    return f"deploy-test-{name.lower().replace('_', '-')}"


def stand_ins(**real: str) -> dict[str, str]:
    """Every secret the gateway reads, with stand-in values (or the ones given)."""
    return {**{name: stand_in(name) for name in secret_names()}, **real}


def bind_host() -> str:
    """The address the image's command binds (its --host)."""
    argv = exec_form(one("CMD"))
    return argv[argv.index("--host") + 1]


def what_breaks_without(name: str) -> str | None:
    """What goes wrong in a deployment (deploy/config.toml, the image's bind address, two
    replicas) given every secret but `name`; None if nothing does."""
    env = {n: v for n, v in stand_ins().items() if n != name}
    try:
        config = load_config(DEPLOY / "config.toml", env=env)
    except ConfigError as exc:
        return f"the gateway exits 2 at start-up: {exc}"
    if not config.api_keys and not is_loopback(bind_host()):
        return f"the gateway refuses to bind {bind_host()} without API keys"
    if not config.session_secret:
        return "each replica draws its own session secret: a sign-in on one is refused by the other"
    return None


@functools.cache
def required_secrets() -> frozenset[str]:
    return frozenset(name for name in secret_names() if what_breaks_without(name))


_PROMQL_WORDS = {"and", "or", "unless", "bool", "offset", "by", "without", "on", "ignoring",
                 "group_left", "group_right", "inf", "nan"}


def promql_metric_names(expr: str) -> set[str]:
    """Metric names an expression selects (not functions, keywords, label names or values)."""
    text = re.sub(r'"(?:[^"\\]|\\.)*"', '""', expr)  # label values, strings
    text = re.sub(r"\{[^}]*\}", " ", text)  # label matchers
    text = re.sub(r"\[[^\]]*\]", " ", text)  # range and subquery windows
    text = re.sub(
        r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", " ", text
    )  # label lists
    names = set()
    for match in re.finditer(r"(?<![\w.])[a-zA-Z_:][a-zA-Z0-9_:]*", text):
        word = match.group()
        if word.lower() in _PROMQL_WORDS or text[match.end():].lstrip().startswith("("):
            continue  # keyword, function or aggregation
        names.add(word)
    return names


def promql_matchers(expr: str) -> set[tuple[str, str, str, str]]:
    """(metric, label, operator, value) of every label matcher on a named metric."""
    found = set()
    for selector in re.finditer(r"([a-zA-Z_:][a-zA-Z0-9_:]*)\s*\{([^}]*)\}", expr):
        for matcher in re.finditer(r'(\w+)\s*(=~|!~|!=|=)\s*"((?:[^"\\]|\\.)*)"',
                                   selector.group(2)):
            found.add((selector.group(1), *matcher.groups()))
    return found


def console_script() -> tuple[str, str]:
    """(script name, module) of the project's console script, from pyproject.toml."""
    scripts = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["scripts"]
    ((name, target),) = scripts.items()
    return name, target.split(":")[0].removesuffix(".__main__")


def project_version() -> str:
    return tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["version"]


# --- the files -----------------------------------------------------------------------------


def yaml_docs(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


@functools.cache
def compose() -> dict[str, Any]:
    (doc,) = yaml_docs(DEPLOY / "compose.yaml")
    return doc


def gateway_services() -> dict[str, dict[str, Any]]:
    return {name: svc for name, svc in compose()["services"].items()
            if name.startswith("gateway")}


def compose_env(service: dict[str, Any]) -> dict[str, str]:
    env = service.get("environment", {})
    if isinstance(env, list):
        env = dict(item.split("=", 1) if "=" in item else (item, "") for item in env)
    return {str(k): "" if v is None else str(v) for k, v in env.items()}


@functools.cache
def k8s_objects() -> tuple[dict[str, Any], ...]:
    """Everything kustomization.yaml applies."""
    (kustomization,) = yaml_docs(K8S / "kustomization.yaml")
    return tuple(doc for name in kustomization["resources"] for doc in yaml_docs(K8S / name))


def k8s(kind: str, name: str) -> dict[str, Any]:
    matches = [o for o in k8s_objects() if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(matches) == 1, f"expected one {kind} {name!r} in deploy/k8s"
    return matches[0]


def gateway_container() -> dict[str, Any]:
    (container,) = k8s("Deployment", "catalog-gateway")["spec"]["template"]["spec"]["containers"]
    return container


def secret_template() -> dict[str, Any]:
    (doc,) = yaml_docs(K8S / "examples" / "secret.yaml")
    return doc


@dataclasses.dataclass
class Instruction:
    op: str
    args: str
    stage: int


@functools.cache
def dockerfile() -> tuple[Instruction, ...]:
    """Instructions with continuation lines joined and comments dropped, ARGs resolved."""
    out: list[Instruction] = []
    args: dict[str, str] = {}
    stage = -1
    pending = ""
    for raw in (DEPLOY / "Dockerfile").read_text().splitlines():
        line = raw.strip()
        if not pending and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            pending += line[:-1] + " "
            continue
        line, pending = pending + line, ""
        op, _, rest = line.partition(" ")
        op = op.upper()
        rest = re.sub(r"\$\{(\w+)\}", lambda m: args.get(m.group(1), m.group(0)), rest.strip())
        if op == "ARG" and "=" in rest:
            key, value = rest.split("=", 1)
            args[key] = value
        if op == "FROM":
            stage += 1
        out.append(Instruction(op, rest, stage))
    return tuple(out)


def final_stage() -> list[Instruction]:
    instructions = dockerfile()
    last = max(i.stage for i in instructions)
    return [i for i in instructions if i.stage == last]


def exec_form(instruction: Instruction) -> list[str]:
    """The JSON argv of an exec-form CMD / HEALTHCHECK CMD."""
    text = instruction.args
    if instruction.op == "HEALTHCHECK":
        text = text[text.index("CMD ") + len("CMD "):]
    argv = json.loads(text)
    assert isinstance(argv, list) and all(isinstance(a, str) for a in argv)
    return argv


def one(op: str) -> Instruction:
    found = [i for i in final_stage() if i.op == op]
    assert len(found) == 1, f"the final stage should have one {op}"
    return found[0]


def unit() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str  # type: ignore[assignment,method-assign]  # keys are case-sensitive
    parser.read_string((DEPLOY / "catalog-gateway.service").read_text())
    return parser


def env_example_names() -> set[str]:
    """Every NAME in deploy/catalog-gateway.env.example, commented-out lines included."""
    text = (DEPLOY / "catalog-gateway.env.example").read_text()
    return set(re.findall(r"^#?\s*([A-Z][A-Z0-9_]*)=", text, flags=re.MULTILINE))


def seconds(value: str | int) -> float:
    text = str(value).strip()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(ms|s|m|min)?", text)
    assert match, f"not a duration: {value!r}"
    number, unit_ = float(match.group(1)), match.group(2) or "s"
    return number * {"ms": 0.001, "s": 1, "m": 60, "min": 60}[unit_]


# --- everything parses ---------------------------------------------------------------------


def test_every_yaml_file_in_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml")])
    assert len(files) >= 10
    for path in files:
        assert yaml_docs(path), f"{path} is empty"


def test_deploy_config_loads_with_the_real_loader() -> None:
    config = load_config(DEPLOY / "config.toml", env=stand_ins())
    assert config.upstream.mode == "live"
    assert config.server.port == PORT
    assert config.server.workers == 1  # one process per replica: one Prometheus target each
    assert config.cache.backend == "redis"
    assert urlsplit(config.cache.redis_url).hostname == "redis"  # the compose service


def test_deploy_config_only_uses_keys_the_root_config_documents() -> None:
    def keys(path: Path) -> set[tuple[str, str]]:
        return {(s, k) for s, table in tomllib.loads(path.read_text()).items() for k in table}

    assert keys(DEPLOY / "config.toml") <= keys(ROOT / "config.toml")


# --- Dockerfile --------------------------------------------------------------------------------


def test_dockerfile_uses_python_311_slim_for_every_stage() -> None:
    images = [i.args.split()[0] for i in dockerfile() if i.op == "FROM" and "--from" not in i.args]
    assert images and all(image == "python:3.11-slim" for image in images), images


def test_dockerfile_runs_as_a_numeric_non_root_user() -> None:
    user = one("USER").args.split(":")[0]
    assert user.isdigit() and int(user) != 0, "USER must be a non-zero uid (runAsNonRoot)"
    pod = k8s("Deployment", "catalog-gateway")["spec"]["template"]["spec"]["securityContext"]
    assert pod["runAsUser"] == int(user)


def test_dockerfile_installs_the_project_and_bakes_in_the_deploy_config() -> None:
    runs = " ".join(i.args for i in dockerfile() if i.op == "RUN")
    assert re.search(r"pip install --no-cache-dir \.(\s|$)", runs)
    copies = [i.args.split() for i in final_stage() if i.op == "COPY"]
    assert ["deploy/config.toml", CONFIG_IN_IMAGE] in copies


def test_dockerfile_copies_what_pip_install_needs_and_nothing_ignored() -> None:
    ignore = [line.strip() for line in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
              if line.strip() and not line.startswith("#")]
    for needed in (".git", ".venv", ".env"):
        assert needed in ignore, f"the build context should leave out {needed}"
    sources: set[str] = set()
    for i in dockerfile():
        if i.op == "COPY" and not i.args.startswith("--from"):
            *srcs, _dest = i.args.split()
            sources.update(srcs)
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text())
    needed = {"pyproject.toml", pyproject["project"]["readme"], "gateway", "ui"}
    assert needed <= {s.rstrip("/") for s in sources}
    for source in sources:
        assert (ROOT / source).exists(), f"COPY {source}: not in the build context"
        assert not any(fnmatch(source, pattern) for pattern in ignore), source


def test_dockerfile_exposes_8080_and_health_checks_healthz_without_curl() -> None:
    assert one("EXPOSE").args.split() == [str(PORT)]
    check = one("HEALTHCHECK")
    argv = exec_form(check)
    assert argv[0] == "python" and "urllib.request" in argv[-1] and "/healthz" in argv[-1]
    assert not re.search(r"\b(curl|wget)\b", check.args)


def test_dockerfile_cmd_is_the_real_cli() -> None:
    script, _module = console_script()
    assert exec_form(one("CMD")) == [
        script, "serve", "--config", CONFIG_IN_IMAGE, "--host", "0.0.0.0",
    ]
    assert not [i for i in final_stage() if i.op == "ENTRYPOINT"]


def test_cli_accepts_every_option_the_deployments_pass() -> None:
    _script, module = console_script()
    help_text = subprocess.run(
        [sys.executable, "-m", module, "serve", "--help"], capture_output=True, text=True,
        check=True, cwd=ROOT, env={**os.environ, "PYTHONPATH": str(ROOT)},
    ).stdout
    known = set(re.findall(r"--[a-z][a-z-]*", help_text))
    argvs = [
        exec_form(one("CMD")),
        gateway_container()["args"],
        shlex.split(unit()["Service"]["ExecStart"]),
    ]
    for argv in argvs:
        assert argv[1] == "serve"
        assert {a for a in argv if a.startswith("--")} <= known, argv


# --- environment names and values --------------------------------------------------------------


def deployment_env_names() -> dict[str, set[str]]:
    """Every environment name each deployment sets, by where it is set."""
    names: dict[str, set[str]] = {
        f"compose {name}": set(compose_env(svc)) for name, svc in gateway_services().items()
    }
    container = gateway_container()
    names["k8s Deployment env"] = {e["name"] for e in container.get("env", [])}
    names["k8s ConfigMap"] = set(k8s("ConfigMap", "catalog-gateway-config")["data"])
    names["systemd env example"] = env_example_names()
    environment = unit()["Service"].get("Environment", "")
    names["systemd unit Environment="] = {
        item.split("=", 1)[0] for item in shlex.split(environment)
    }
    return names


def test_every_secret_name_is_one_the_gateway_reads_and_keeps_out_of_repr() -> None:
    """The names found by looking: each changes what load_config returns, never its repr."""
    assert secret_names(), "load_config looked up no secret at all"
    plain = load_config(None, env={})
    for name in secret_names():
        config = load_config(None, env={name: stand_in(name)})
        assert config != plain, f"{name} is looked up but changes nothing"
        assert stand_in(name) not in repr(config), f"{name}'s value shows in repr()"
    assert not set(secret_names()) & override_names()


def test_every_gw_name_the_deployments_set_is_one_the_gateway_reads() -> None:
    valid = valid_gw_names()
    for where, names in deployment_env_names().items():
        unknown = {n for n in names if n.startswith("GW_")} - valid
        assert not unknown, f"{where}: {sorted(unknown)} are not config keys or known secrets"


# Where a deployment hands the gateway its secrets. Any other name set there would be one
# the gateway never reads: a misspelt ABCONNECT_USER is silently ignored, not refused.
SECRET_CARRIERS = ("compose gateway-a", "compose gateway-b", "k8s Deployment env",
                   "systemd env example")


def test_every_deployment_passes_exactly_the_secrets_the_gateway_reads() -> None:
    names = deployment_env_names()
    secrets = set(secret_names())
    for where in SECRET_CARRIERS:
        assert secrets <= names[where], f"{where} lacks {sorted(secrets - names[where])}"
        unread = names[where] - secrets - override_names()
        assert not unread, f"{where} sets {sorted(unread)}, which the gateway never reads"


def test_a_deployment_needs_its_required_secrets_and_only_those() -> None:
    """Which secrets are required is found by leaving each out in turn."""
    assert what_breaks_without("") is None, "the deployment fails with every secret given"
    for name in secret_names():
        broken = what_breaks_without(name)
        assert (broken is not None) is (name in required_secrets()), (name, broken)
    assert required_secrets() and set(secret_names()) - required_secrets()


def deployment_envs() -> dict[str, dict[str, str]]:
    """The environment each deployment gives the gateway, secrets filled with stand-ins."""
    envs = {}
    for name, svc in gateway_services().items():
        env = compose_env(svc)
        envs[f"compose {name}"] = {
            k: stand_in(k) if k in secret_names() else v for k, v in env.items()
        }
    configmap = k8s("ConfigMap", "catalog-gateway-config")["data"]
    envs["k8s pod"] = {**{k: str(v) for k, v in configmap.items()}, **stand_ins()}
    envs["systemd host"] = {
        **stand_ins(),
        **{name: value for name, value in re.findall(
            r"^#?\s*(GW_CACHE_REDIS_URL)=(\S+)",
            (DEPLOY / "catalog-gateway.env.example").read_text(), flags=re.MULTILINE)},
    }
    return envs


@pytest.mark.parametrize(
    "where", ["compose gateway-a", "compose gateway-b", "k8s pod", "systemd host"]
)
def test_the_gateway_starts_with_each_deployments_environment(where: str) -> None:
    """The whole environment, secrets included, through the real loader."""
    env = deployment_envs()[where]
    error = None
    try:
        config = load_config(DEPLOY / "config.toml", env=env)
    except gwconfig.ConfigError as exc:
        error = str(exc)
    assert error is None, (
        f"{where}: the gateway would exit 2 at start-up: {error}. (If this names "
        "GW_SESSION_SECRET: gateway/config.py must skip it like GW_API_KEYS, in "
        "_NOT_OVERRIDES; ui/session.py reads it.)"
    )
    assert config.api_keys, "binding 0.0.0.0 needs GW_API_KEYS"
    assert config.cache.backend == "redis"


def test_compose_requires_its_secrets_and_never_hardcodes_them() -> None:
    for name in secret_names():
        values = {compose_env(svc)[name] for svc in gateway_services().values()}
        (value,) = values
        if name in required_secrets():
            assert value.startswith("${" + name + ":?"), f"{name} should be required: {value}"
        else:
            assert value == "${" + name + ":-}", f"{name}: {value}"


def test_secret_template_holds_no_values_and_is_never_applied() -> None:
    secret = secret_template()
    assert secret["kind"] == "Secret"
    assert set(secret["stringData"]) == set(secret_names())
    assert all(v == "" for v in secret["stringData"].values()), "a template holds no secrets"
    assert "TEMPLATE" in (K8S / "examples" / "secret.yaml").read_text()
    assert not [o for o in k8s_objects() if o["kind"] == "Secret"]
    example = (DEPLOY / "catalog-gateway.env.example").read_text()
    filled = re.findall(r"^([A-Z][A-Z0-9_]*)=\S", example, flags=re.MULTILINE)
    assert not set(filled) & set(secret_names()), f"the example fills in {filled}"


# --- compose -----------------------------------------------------------------------------------


def test_compose_runs_two_replicas_of_one_image_with_redis_and_prometheus() -> None:
    services = compose()["services"]
    assert {"gateway-a", "gateway-b", "redis", "prometheus"} <= set(services)
    gateways = gateway_services()
    assert set(gateways) == {"gateway-a", "gateway-b"}
    images = {svc["image"] for svc in gateways.values()}
    assert images == {f"catalog-gateway:{project_version()}"}
    assert images == {gateway_container()["image"]}, "compose and k8s run different images"
    for svc in gateways.values():
        build = svc["build"]
        assert (DEPLOY / build["context"]).resolve() == ROOT
        assert (ROOT / build["dockerfile"]).resolve() == DEPLOY / "Dockerfile"
    assert services["redis"]["image"] == "redis:7-alpine"


def test_compose_replicas_publish_8080_wait_for_redis_and_stop_gracefully() -> None:
    host_ports = []
    for name, svc in gateway_services().items():
        ports = [str(p) for p in svc["ports"]]
        assert all(p.rsplit(":", 1)[-1].split("/")[0] == str(PORT) for p in ports), name
        host_ports += [p.rsplit(":", 1)[0] for p in ports]
        assert svc["depends_on"]["redis"]["condition"] == "service_healthy"
        check = " ".join(svc["healthcheck"]["test"])
        assert f"127.0.0.1:{PORT}/healthz" in check and "urllib" in check
        assert seconds(svc["stop_grace_period"]) >= 15  # 10 s drain after SIGTERM, + margin
    assert len(set(host_ports)) == len(host_ports), "replicas publish on one host port"
    assert "redis-cli" in " ".join(compose()["services"]["redis"]["healthcheck"]["test"])


def test_compose_replicas_share_the_compose_redis() -> None:
    for svc in gateway_services().values():
        env = compose_env(svc)
        assert env["GW_CACHE_BACKEND"] == "redis"
        url = urlsplit(env["GW_CACHE_REDIS_URL"])
        assert (url.scheme, url.hostname, url.port or 6379) == ("redis", "redis", 6379)


# --- Prometheus --------------------------------------------------------------------------------


@functools.cache
def prometheus_config() -> dict[str, Any]:
    (doc,) = yaml_docs(PROM / "prometheus.yml")
    return doc


@functools.cache
def alert_rules() -> dict[str, dict[str, Any]]:
    (doc,) = yaml_docs(PROM / "alerts.yml")
    rules = [rule for group in doc["groups"] for rule in group["rules"]]
    by_name = {rule["alert"]: rule for rule in rules}
    assert len(by_name) == len(rules), "duplicate alert names"
    return by_name


def test_prometheus_scrapes_both_replicas_and_loads_the_rules() -> None:
    config = prometheus_config()
    assert [(PROM / f).resolve() for f in config["rule_files"]] == [PROM / "alerts.yml"]
    (job,) = [j for j in config["scrape_configs"] if j["job_name"] == SCRAPE_JOB]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    targets = {t for sc in job["static_configs"] for t in sc["targets"]}
    assert targets == {f"{name}:{PORT}" for name in gateway_services()}
    mounts = {v.split(":")[0]: v.split(":")[1] for v in compose()["services"]["prometheus"]
              ["volumes"] if v.startswith("./")}
    assert mounts["./prometheus/prometheus.yml"] == "/etc/prometheus/prometheus.yml"
    assert mounts["./prometheus/alerts.yml"] == "/etc/prometheus/alerts.yml"


def test_alerts_are_fully_annotated() -> None:
    rules = alert_rules()
    assert rules
    for name, rule in rules.items():
        assert rule["labels"]["severity"] in {"warning", "critical"}, name
        assert rule["annotations"]["summary"].strip(), name
        assert len(rule["annotations"]["description"]) > 150, f"{name}: say what to do"
        assert seconds(rule["for"]) >= 60, name


# --- metrics, as a live gateway exports them ----------------------------------------------------


@dataclasses.dataclass
class Scrape:
    """What /metrics showed. `labels`: every name a query can select (sample names, and
    histogram and summary family names) -> label -> the values seen. `families`: each
    family as documentation writes it (a counter with its `_total`)."""

    labels: dict[str, dict[str, set[str]]]
    families: set[str]

    @classmethod
    def of(cls, *texts: str) -> Scrape:
        labels: dict[str, dict[str, set[str]]] = defaultdict(lambda: defaultdict(set))
        families = set()
        for text in texts:
            for family in text_string_to_metric_families(text):
                families.add(family.name + ("_total" if family.type == "counter" else ""))
                for sample in family.samples:
                    labels[sample.name].update()  # a series without labels is seen too
                    for label, value in sample.labels.items():
                        labels[sample.name][label].add(value)
                    if family.type in ("histogram", "summary"):
                        labels[family.name].update()
                        for label, value in sample.labels.items():
                            if label not in ("le", "quantile"):
                                labels[family.name][label].add(value)
        # prometheus_client writes a counter's or histogram's `_created` timestamps as a
        # gauge family of their own: part of that metric, not another one.
        stems = {f.removesuffix("_total") for f in families}
        families = {f for f in families
                    if not (f.endswith("_created") and f.removesuffix("_created") in stems)}
        return cls({name: dict(seen) for name, seen in labels.items()}, families)


def metrics_text(replica: Replica) -> str:
    status, body = fetch(replica.base + "/metrics")
    assert status == 200
    return body.decode()


def drive(a: Replica, b: Replica, upstream: str, key: str) -> None:
    """A little of everything the alerts and the docs speak of: a miss, a hit, an answer
    replica b finds in Redis after replica a fetched it, a 404, an override saved (and what
    it invalidates), and the upstream failing with a 503 and with no answer at all."""
    headers = {"X-API-Key": key}

    def get(replica: Replica, path: str) -> int:
        return fetch(replica.base + path, headers=headers)[0]

    def configure(**knobs: Any) -> None:
        assert fetch(upstream + "/_sandbox/config", "POST", json.dumps(knobs).encode(),
                     {"Content-Type": "application/json"})[0] == 200

    status, body = fetch(a.base + "/api/Lot?PageSize=100", headers=headers)
    assert status == 200, body
    lots = iter([item["id"] for item in json.loads(body)["items"]])
    lot = next(lots)
    assert get(a, f"/api/Lot/{lot}") == 200
    assert get(a, f"/api/Lot/{lot}") == 200

    def found_in_redis_by_b() -> bool:
        """A lot replica a fetched, read first on replica b: a hit only if found in Redis."""
        lot = next(lots)
        assert get(a, f"/api/Lot/{lot}") == 200
        request = urllib.request.Request(f"{b.base}/api/Lot/{lot}", headers=headers)
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.headers["X-Cache"] == "HIT"

    eventually_sync(found_in_redis_by_b, "replica b finds in Redis a lot replica a fetched")
    assert get(a, "/api/Lot/999999") == 404
    status, body = fetch(a.base + f"/api/v1/lots/{next(lots)}/override", "POST",
                         json.dumps({"notes": "deploy test"}).encode(),
                         {**headers, "Content-Type": "application/json"})
    assert status == 200, body
    configure(down=True)
    assert get(a, f"/api/Lot/{next(lots)}") == 503
    configure(down=False, hang=True)
    assert get(a, f"/api/Lot/{next(lots)}") == 504  # no answer within upstream.timeout_s
    configure(hang=False)


@pytest.fixture(scope="module")
def scraped() -> Scrape:
    """/metrics of two replicas as deployed (the image's command, deploy/config.toml: live
    mode, Redis backend), after `drive`; here the upstream is a sandbox process."""
    ports: set[int] = set()
    while len(ports) < 3:
        ports.add(free_port())
    sandbox_port, *gateway_ports = ports
    redis = RedisServer().start()
    try:
        with running_sandbox(sandbox_port) as upstream:
            user, password = SERVICE_ACCOUNT
            envs = [clean_env(
                **stand_ins(ABCONNECT_USERNAME=user, ABCONNECT_PASSWORD=password),
                GW_UPSTREAM_BASE_URL=upstream, GW_UPSTREAM_IDENTITY_URL=upstream + "/connect/token",
                GW_CACHE_REDIS_URL=redis.url, GW_SERVER_PORT=str(port),
                GW_UPSTREAM_RETRIES="0", GW_UPSTREAM_TIMEOUT_S="1",
            ) for port in gateway_ports]
            with replicas(*envs) as (a, b):
                drive(a, b, upstream, key=DEPLOY_KEY)
                return Scrape.of(metrics_text(a), metrics_text(b))
    finally:
        redis.stop()


def test_alerts_select_only_metrics_a_live_gateway_exports(scraped: Scrape) -> None:
    exported = set(scraped.labels) | {"up"}  # up: Prometheus' own, one per target
    for name, rule in alert_rules().items():
        used = promql_metric_names(rule["expr"])
        assert used, f"{name}: no metric found in {rule['expr']!r}"
        assert used <= exported, f"{name} uses {sorted(used - exported)}: not in /metrics"


def test_alert_label_matchers_select_series_a_live_gateway_exports(scraped: Scrape) -> None:
    """Each label an alert matches on exists, and each alternative of its value (`a|b`:
    the alerts use plain alternations) matches a value a live gateway gave it."""
    checked = 0
    for name, rule in alert_rules().items():
        for metric, label, op, value in promql_matchers(rule["expr"]):
            if metric == "up":
                continue
            seen = scraped.labels[metric]
            assert label in seen, f"{name}: {metric} has no label {label!r}, only {sorted(seen)}"
            if op not in ("=", "=~"):
                continue
            for alternative in value.split("|") if op == "=~" else [re.escape(value)]:
                assert any(re.fullmatch(alternative, v) for v in seen[label]), (
                    f"{name}: no {metric} series has {label} ~ {alternative!r} "
                    f"(seen: {sorted(seen[label])})")
                checked += 1
    assert checked, "no label matcher found in the alerts"


_DOC_METRIC = re.compile(r"(?<![\w.-])(gateway_[a-z0-9_]+)(?:\{([a-z_, ]*)\})?")


def test_the_docs_name_only_metrics_and_labels_a_live_gateway_exports(scraped: Scrape) -> None:
    """Every gateway_* name in the README and deploy/, with its labels where written
    (`name{a,b}`), is in a live /metrics; and the README names every metric there is."""
    readme = (ROOT / "README.md").read_text()
    texts = {"README.md": readme, **{str(p.relative_to(ROOT)): p.read_text(errors="replace")
                                     for p in sorted(DEPLOY.rglob("*")) if p.is_file()}}
    mentioned = 0
    for where, text in texts.items():
        for match in _DOC_METRIC.finditer(text):
            name, labels = match.groups()
            assert name in scraped.labels, f"{where} names {name}: not in /metrics"
            if labels is not None:
                written = {label.strip() for label in labels.split(",")}
                assert written == set(scraped.labels[name]), (
                    f"{where}: {match.group()}, but /metrics labels it "
                    f"{sorted(scraped.labels[name])}")
            mentioned += 1
    assert mentioned
    undocumented = {f for f in scraped.families if f.startswith("gateway_") and f not in readme}
    assert not undocumented, f"the README's Metrics section lacks {sorted(undocumented)}"

def test_promql_parser() -> None:
    expr = ('sum by (job) (rate(a_total{status=~"5..|error"}[5m])) / on(job) '
            'max without (instance) (b) > 0.05 and c unless histogram_quantile(0.9, d_bucket)')
    assert promql_metric_names(expr) == {"a_total", "b", "c", "d_bucket"}
    assert promql_matchers(expr) == {("a_total", "status", "=~", "5..|error")}


def promtool() -> str:
    path = shutil.which("promtool")
    assert path, "promtool is missing: `make test` installs Debian's prometheus package"
    return path


def test_promtool_accepts_the_config_and_the_rules() -> None:
    for args in (["check", "config", str(PROM / "prometheus.yml")],
                 ["check", "rules", str(PROM / "alerts.yml")]):
        result = subprocess.run([promtool(), *args], capture_output=True, text=True)
        assert result.returncode == 0, result.stdout + result.stderr


def render(template: str, labels: dict[str, str], value: float | None) -> str:
    """The two template forms alerts.yml uses, as Prometheus expands them."""
    out = re.sub(r"\{\{\s*\$labels\.(\w+)\s*\}\}", lambda m: labels[m.group(1)], template)
    if value is not None:
        out = re.sub(r"\{\{\s*\$value\s*\|\s*humanizePercentage\s*\}\}",
                     lambda m: "%.4g%%" % (value * 100), out)
    assert "{{" not in out, f"unrendered template: {out}"
    return out


def expected_alert(name: str, labels: dict[str, str], value: float | None = None) -> dict:
    rule = alert_rules()[name]
    all_labels = {**labels, **rule["labels"]}
    return {
        "exp_labels": all_labels,
        "exp_annotations": {k: render(v, all_labels, value)
                            for k, v in rule["annotations"].items()},
    }


def series(metric: str, values: str, **labels: str) -> dict[str, str]:
    labels = {"job": SCRAPE_JOB, **labels}
    text = ",".join(f'{k}="{v}"' for k, v in labels.items())
    return {"series": f"{metric}{{{text}}}", "values": values}


A, B = "gateway-a:8080", "gateway-b:8080"
JOB = {"job": SCRAPE_JOB}


def rule_cases() -> list[dict[str, Any]]:
    """Situations with the alerts that must (and must not) fire in them; 1 sample a minute."""
    up = "gateway_upstream_requests_total"
    lookups = "gateway_cache_lookups_total"
    state = "gateway_upstream_breaker_state"

    def case(input_series: list[dict[str, str]], *checks: tuple[str, str, list]) -> dict:
        return {"interval": "1m", "input_series": input_series, "alert_rule_test": [
            {"eval_time": t, "alertname": name, "exp_alerts": alerts}
            for t, name, alerts in checks
        ]}

    lot = "/api/Lot/{id}"
    return [
        # A replica stops answering scrapes at minute 2; the alert needs a minute to fire.
        # Another job's target being down is not the gateway's alert.
        case([series("up", "1 1 0 0 0 0", instance=A), series("up", "1x5", instance=B),
              series("up", "0x5", job="node", instance="gateway-a:9100")],
             ("1m", "CatalogGatewayDown", []),
             ("5m", "CatalogGatewayDown",
              [expected_alert("CatalogGatewayDown", {**JOB, "instance": A})])),
        # 10 % of upstream calls fail (5xx or no answer) for 20 minutes: fires after 10.
        case([series(up, "0+90x30", instance=A, endpoint=lot, status="200"),
              series(up, "0+6x30", instance=A, endpoint=lot, status="503"),
              series(up, "0+4x30", instance=B, endpoint=lot, status="error")],
             ("8m", "CatalogGatewayUpstreamErrorRatioHigh", []),
             ("20m", "CatalogGatewayUpstreamErrorRatioHigh",
              [expected_alert("CatalogGatewayUpstreamErrorRatioHigh", JOB, 0.1)])),
        # 1 % failures, and 4xx answers, are not an upstream outage.
        case([series(up, "0+90x30", instance=A, endpoint=lot, status="200"),
              series(up, "0+9x30", instance=A, endpoint=lot, status="404"),
              series(up, "0+1x30", instance=A, endpoint=lot, status="502")],
             ("20m", "CatalogGatewayUpstreamErrorRatioHigh", [])),
        # During an outage the breaker cycles open (2) / half-open (1): still one alert.
        case([series(state, "0 0 2 1 2 1 2 2 1 2", instance=A),
              series(state, "0 2 0 0 0 0 0 0 0 0", instance=B)],
             ("2m", "CatalogGatewayBreakerOpen", []),
             ("8m", "CatalogGatewayBreakerOpen",
              [expected_alert("CatalogGatewayBreakerOpen", {**JOB, "instance": A})])),
        # 25 % hits with real traffic for 45 minutes.
        case([series(lookups, "0+20x60", instance=A, kind="lot", result="hit"),
              series(lookups, "0+60x60", instance=B, kind="lot", result="miss")],
             ("20m", "CatalogGatewayCacheHitRatioLow", []),
             ("45m", "CatalogGatewayCacheHitRatioLow",
              [expected_alert("CatalogGatewayCacheHitRatioLow", JOB, 0.25)])),
        # No hit has been counted at all (no hit series): 0 %, still fires.
        case([series(lookups, "0+60x60", instance=A, kind="lot", result="miss")],
             ("45m", "CatalogGatewayCacheHitRatioLow",
              [expected_alert("CatalogGatewayCacheHitRatioLow", JOB, 0.0)])),
        # Answers found in Redis ("shared") are hits too.
        case([series(lookups, "0+10x60", instance=A, kind="lot", result="hit"),
              series(lookups, "0+50x60", instance=B, kind="lot", result="shared"),
              series(lookups, "0+20x60", instance=A, kind="lot", result="miss")],
             ("45m", "CatalogGatewayCacheHitRatioLow", [])),
        # A low ratio on almost no traffic (4 lookups a minute) is not worth an alert.
        case([series(lookups, "0+1x60", instance=A, kind="lot", result="hit"),
              series(lookups, "0+3x60", instance=A, kind="lot", result="miss")],
             ("45m", "CatalogGatewayCacheHitRatioLow", [])),
        # Redis unreachable from one replica from minute 2: fires after 2 more minutes.
        case([series("gateway_redis_up", "1 1 0 0 0 0 0 0", instance=A),
              series("gateway_redis_up", "1x7", instance=B)],
             ("3m", "CatalogGatewayRedisDown", []),
             ("6m", "CatalogGatewayRedisDown",
              [expected_alert("CatalogGatewayRedisDown", {**JOB, "instance": A})])),
    ]


def test_every_alert_has_a_firing_case() -> None:
    fired = {check["alertname"] for case in rule_cases() for check in case["alert_rule_test"]
             if check["exp_alerts"]}
    assert fired == set(alert_rules())


def test_alerts_fire_when_they_should_and_only_then(tmp_path: Path) -> None:
    tests = {
        "rule_files": [str(PROM / "alerts.yml")],
        "evaluation_interval": "1m",
        "tests": rule_cases(),
    }
    path = tmp_path / "alerts_test.yml"
    path.write_text(yaml.safe_dump(tests, sort_keys=False))
    result = subprocess.run([promtool(), "test", "rules", str(path)], capture_output=True,
                            text=True)
    assert result.returncode == 0, result.stdout + result.stderr


# --- Kubernetes --------------------------------------------------------------------------------


def test_k8s_deployment_runs_two_probed_non_root_replicas_on_8080() -> None:
    deployment = k8s("Deployment", "catalog-gateway")
    assert deployment["spec"]["replicas"] == 2
    pod = deployment["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    container = gateway_container()
    (port,) = container["ports"]
    assert port["containerPort"] == PORT
    probes = {kind: container[kind]["httpGet"] for kind in
              ("readinessProbe", "livenessProbe", "startupProbe")}
    assert probes["readinessProbe"]["path"] == "/readyz"
    assert probes["livenessProbe"]["path"] == "/healthz"
    assert probes["startupProbe"]["path"] == "/healthz"
    assert {p["port"] for p in probes.values()} <= {PORT, port["name"]}
    assert container["securityContext"]["allowPrivilegeEscalation"] is False
    resources = container["resources"]
    assert resources["requests"]["memory"] and resources["limits"]["memory"]
    assert container["args"] == exec_form(one("CMD")), "k8s and the image run different commands"


def test_k8s_pods_get_time_to_drain_on_sigterm() -> None:
    pod = k8s("Deployment", "catalog-gateway")["spec"]["template"]["spec"]
    pre_stop = gateway_container().get("lifecycle", {}).get("preStop", {})
    sleep = float(pre_stop["exec"]["command"][-1]) if pre_stop else 0.0
    assert pod["terminationGracePeriodSeconds"] >= sleep + 10 + 5  # drain 10 s, + margin


def test_k8s_env_comes_from_the_configmap_and_secret_refs() -> None:
    container = gateway_container()
    (source,) = container["envFrom"]
    k8s("ConfigMap", source["configMapRef"]["name"])  # exists
    refs = {e["name"]: e["valueFrom"]["secretKeyRef"] for e in container["env"]
            if "secretKeyRef" in e.get("valueFrom", {})}
    assert set(refs) == set(secret_names())
    secret = secret_template()
    for name, ref in refs.items():
        assert ref["name"] == secret["metadata"]["name"]
        assert ref["key"] in secret["stringData"]
        assert ref.get("optional", False) is (name not in required_secrets()), name
    assert not [e for e in container["env"] if "value" in e and e["name"] in secret_names()]


def test_k8s_service_exposes_8080_for_the_pods_and_for_prometheus() -> None:
    service = k8s("Service", "catalog-gateway")
    pod_labels = k8s("Deployment", "catalog-gateway")["spec"]["template"]["metadata"]["labels"]
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert port["port"] == PORT
    assert port["targetPort"] in (PORT, gateway_container()["ports"][0]["name"])
    notes = service["metadata"]["annotations"]
    assert notes["prometheus.io/scrape"] == "true"
    assert notes["prometheus.io/port"] == str(PORT)
    assert notes.get("prometheus.io/path", "/metrics") == "/metrics"


def test_k8s_redis_is_where_the_configmap_points() -> None:
    url = urlsplit(k8s("ConfigMap", "catalog-gateway-config")["data"]["GW_CACHE_REDIS_URL"])
    service = k8s("Service", url.hostname)
    assert [p["port"] for p in service["spec"]["ports"]] == [url.port or 6379]
    redis = k8s("Deployment", url.hostname)
    assert service["spec"]["selector"].items() <= \
        redis["spec"]["template"]["metadata"]["labels"].items()
    (container,) = redis["spec"]["template"]["spec"]["containers"]
    assert container["image"] == "redis:7-alpine"
    gateway_selector = k8s("Service", "catalog-gateway")["spec"]["selector"]
    assert not gateway_selector.items() <= redis["spec"]["template"]["metadata"]["labels"].items()


def test_every_k8s_object_has_a_kind_a_name_and_an_api_version() -> None:
    objects = k8s_objects()
    assert {o["kind"] for o in objects} >= {"Deployment", "Service", "ConfigMap"}
    for o in objects:
        assert o["apiVersion"] and o["kind"] and o["metadata"]["name"]


def test_k8s_objects_match_the_kubernetes_schemas() -> None:
    """Strict: a misspelt field (`periodSecond`) fails. Needs the kubernetes-validate package."""
    import kubernetes_validate
    for o in (*k8s_objects(), secret_template()):
        # 1.28: the oldest Kubernetes these manifests promise to work on.
        kubernetes_validate.validate(o, "1.28", strict=True)


# --- systemd -----------------------------------------------------------------------------------


def test_systemd_unit_runs_the_venv_cli_as_its_own_user() -> None:
    service = unit()["Service"]
    assert service["User"] == "catalog-gateway"
    assert service["EnvironmentFile"] == "/etc/catalog-gateway/env"
    script, _module = console_script()
    argv = shlex.split(service["ExecStart"])
    assert argv[0] == VENV_SCRIPT and Path(argv[0]).name == script
    assert argv[1:] == ["serve", "--config", CONFIG_IN_IMAGE]
    assert service["Restart"] == "on-failure"
    assert service["KillSignal"] == "SIGTERM"
    assert seconds(service["TimeoutStopSec"]) >= 15  # 10 s drain after SIGTERM, + margin
    assert unit()["Install"]["WantedBy"] == "multi-user.target"


def test_systemd_unit_is_hardened() -> None:
    service = unit()["Service"]
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict",
                       "PrivateTmp": "yes", "ProtectHome": "yes",
                       "PrivateDevices": "yes"}.items():
        assert service.get(key) == value, key
    assert service.get("CapabilityBoundingSet") == ""


def test_systemd_analyze_accepts_every_directive(tmp_path: Path) -> None:
    # verify insists that ExecStart exists: point it at a stand-in, change nothing else.
    stub = tmp_path / "catalog-gateway"
    stub.write_text("#!/bin/sh\n")
    stub.chmod(0o755)
    text = (DEPLOY / "catalog-gateway.service").read_text()
    assert VENV_SCRIPT in text
    copy = tmp_path / "catalog-gateway.service"
    copy.write_text(text.replace(VENV_SCRIPT, str(stub)))
    analyze = shutil.which("systemd-analyze")
    assert analyze, "systemd-analyze is missing: `make test` installs Debian's systemd package"
    result = subprocess.run([analyze, "verify", "--man=no", str(copy)],
                            capture_output=True, text=True)
    complaints = [line for line in (result.stdout + result.stderr).splitlines()
                  if "catalog-gateway.service" in line]
    assert result.returncode == 0 and not complaints, result.stdout + result.stderr


# --- the image's command and health check, run as processes ------------------------------------


# --- the image's command, run as processes ------------------------------------------------------


def clean_env(**extra: str) -> dict[str, str]:
    """This environment without the gateway's variables; the audit trail (the deploy config
    puts it in /var/lib/catalog-gateway, which this machine need not have) in a temp dir."""
    base = {k: v for k, v in os.environ.items()
            if not k.startswith(("GW_", "ABCONNECT_", "ABC_CLIENT"))}
    audit = os.path.join(tempfile.mkdtemp(prefix="gw-audit-"), "audit.log")
    return {**base, "PYTHONPATH": str(ROOT), "GW_AUDIT_PATH": audit, **extra}


def image_cmd(host: str) -> list[str]:
    """The image's CMD with the console script run as a module and paths made local."""
    script, module = console_script()
    argv = exec_form(one("CMD"))
    assert argv[0] == script
    local = {CONFIG_IN_IMAGE: str(DEPLOY / "config.toml"), "0.0.0.0": host}
    return [sys.executable, "-m", module, *(local.get(a, a) for a in argv[1:])]


def fetch(url: str, method: str = "GET", body: bytes | None = None,
          headers: Mapping[str, str] | None = None) -> tuple[int, bytes]:
    """(status, body) of one request; an HTTP error status is an answer, not an exception."""
    request = urllib.request.Request(url, data=body, method=method, headers=dict(headers or {}))
    try:
        with urllib.request.urlopen(request, timeout=15) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as exc:
        return exc.code, exc.read()


@dataclasses.dataclass
class Replica:
    """One gateway process. Its output goes to a file: a pipe nobody reads could fill up
    and stall it."""

    base: str
    log: IO[bytes]
    proc: subprocess.Popen | None = None

    def output(self) -> str:
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def ready(self) -> bool:
        assert self.proc is not None
        assert self.proc.poll() is None, f"exited {self.proc.returncode}:\n{self.output()}"
        try:
            return fetch(self.base + "/readyz")[0] == 200
        except OSError:
            return False


def stop(proc: subprocess.Popen, timeout_s: float = 20) -> int:
    """SIGTERM, then SIGKILL if it has not exited within `timeout_s`; its exit status."""
    if proc.poll() is None:
        proc.send_signal(signal.SIGTERM)
    try:
        return proc.wait(timeout=timeout_s)
    except subprocess.TimeoutExpired:
        proc.kill()
        return proc.wait()


@contextmanager
def replicas(*envs: dict[str, str]) -> Iterator[list[Replica]]:
    """The image's command on loopback once per environment (each with its GW_SERVER_PORT),
    all started before any is waited for; yields them once /readyz answers, and stops every
    one started, whatever happens."""
    started: list[Replica] = []
    try:
        for env in envs:
            started.append(Replica(f"http://127.0.0.1:{env['GW_SERVER_PORT']}",
                                   tempfile.TemporaryFile()))
            started[-1].proc = subprocess.Popen(image_cmd(host="127.0.0.1"), env=env, cwd=ROOT,
                                                stdout=started[-1].log, stderr=subprocess.STDOUT)
        for replica in started:
            eventually_sync(replica.ready, f"{replica.base}/readyz answers 200", timeout_s=60,
                            every_s=0.1)
        yield started
    finally:
        for replica in started:
            if replica.proc is not None:
                stop(replica.proc)
            replica.log.close()


def test_the_image_command_refuses_to_listen_without_api_keys() -> None:
    result = subprocess.run(
        image_cmd(host="0.0.0.0"), capture_output=True, text=True, timeout=60, cwd=ROOT,
        env=clean_env(ABCONNECT_USERNAME="deploy-test", ABCONNECT_PASSWORD="deploy-test"),
    )
    assert result.returncode == 2
    assert "refusing to bind 0.0.0.0" in result.stderr


@pytest.fixture
def redis_server() -> Iterator[RedisServer]:
    server = RedisServer().start()
    yield server
    server.stop()


def test_the_image_command_serves_passes_its_health_check_and_stops_on_sigterm(
    redis_server: RedisServer,
) -> None:
    env = clean_env(
        # The deploy config with its Redis backend, on the embedded sandbox (no ABConnect
        # here) and loopback addresses. GW_SESSION_SECRET is left to
        # test_the_gateway_starts_with_each_deployments_environment.
        GW_UPSTREAM_MODE="sandbox", GW_CACHE_REDIS_URL=redis_server.url,
        GW_SERVER_PORT=str(free_port()), GW_SANDBOX_LATENCY_MS="5", GW_SANDBOX_JITTER_MS="0",
        GW_API_KEYS=stand_in("GW_API_KEYS"),
    )
    health = exec_form(one("HEALTHCHECK"))
    health = [sys.executable if health[0] == "python" else health[0], *health[1:]]

    def health_check() -> int:
        return subprocess.run(health, env=env, capture_output=True, timeout=30).returncode

    with replicas(env) as (replica,):
        assert health_check() == 0, "the HEALTHCHECK fails on a gateway that is up"
        text = metrics_text(replica)
        assert "gateway_upstream_breaker_state 0.0" in text
        assert "gateway_redis_up 1.0" in text
        assert fetch(replica.base + "/api/Seller")[0] == 401  # keys are enforced
        assert replica.proc is not None
        stop_s = seconds(unit()["Service"]["TimeoutStopSec"])
        assert stop(replica.proc, stop_s) == 0, replica.output()
        assert health_check() != 0, "the HEALTHCHECK passes with the gateway stopped"


# --- documentation -----------------------------------------------------------------------------


def test_the_deploying_docs_explain_every_alert_and_secret() -> None:
    docs = (ROOT / "README.md").read_text()
    section = DEPLOY / "README-section.md"
    if section.exists():
        docs += section.read_text()
    for name in (*alert_rules(), *secret_names()):
        assert name in docs, f"{name} is not documented"
