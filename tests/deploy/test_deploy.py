"""deploy/, docs/operations.md and docs/reliability.md's bounds against the code: parsed, never run (no Docker or
Kubernetes here).

Every check reads what the code serves or accepts now (the app's /metrics and routes, the
config Structs, the CLI parser), so adding a metric, a config field or a route without
updating the deployment files or the operator docs fails here.
"""

from __future__ import annotations

import json
import re
import shlex
import tomllib
from collections.abc import Iterator
from pathlib import Path
from typing import Any, NamedTuple
from urllib.parse import urlsplit

import msgspec
import msgspec.inspect as mi
import pytest
import yaml
from litestar.testing import TestClient
from prometheus_client.metrics import MetricWrapperBase

from gateway.admission.auth import hash_key
from gateway.app import create_app, metrics_protected
from gateway.cli import build_parser
from gateway.cli import main as cli_main
from gateway.config import DirectoryStoreConfig, GatewayConfig, ServerConfig, parse_config
from gateway.observability import metrics
from local_backend.cli import build_parser as build_worker_parser
from schemas import worker as protocol
from schemas.canonical import ErrorCode
from schemas.local import LocalBackendSettings

ROOT = Path(__file__).resolve().parents[2]
DEPLOY = ROOT / "deploy"
K8S = DEPLOY / "k8s"
OPERATIONS = ROOT / "docs" / "operations.md"
RELIABILITY = ROOT / "docs" / "reliability.md"
GATEWAY_CONFIG = DEPLOY / "config" / "gateway.yaml"
WORKER_CONFIG = DEPLOY / "config" / "worker.yaml"
GATEWAY_PORT, WORKER_PORT = 8080, 8090
WORKER_SERVICE = "image-gateway-worker"
ENV_REF = re.compile(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(:-[^}]*)?\}")  # what gateway.config expands


# --- reading the files ---


def yaml_documents(path: Path) -> list[Any]:
    return [doc for doc in yaml.safe_load_all(path.read_text(encoding="utf-8")) if doc is not None]


def k8s_objects() -> list[dict[str, Any]]:
    objects = [doc for path in sorted(K8S.glob("*.yaml")) for doc in yaml_documents(path)]
    return [obj for obj in objects if obj.get("kind") != "Kustomization"]


def k8s_object(kind: str, name: str) -> dict[str, Any]:
    found = [obj for obj in k8s_objects() if obj["kind"] == kind and obj["metadata"]["name"] == name]
    assert len(found) == 1, f"expected one {kind} {name!r} under deploy/k8s, found {len(found)}"
    return found[0]


def compose() -> dict[str, Any]:
    return yaml.safe_load((DEPLOY / "compose.yaml").read_text(encoding="utf-8"))


def instructions(path: Path) -> list[tuple[str, str]]:
    """A Dockerfile's instructions, every stage, continuation lines joined, comments dropped."""
    found: list[tuple[str, str]] = []
    current = ""
    for raw in path.read_text(encoding="utf-8").splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.endswith("\\"):
            current += line[:-1] + " "
            continue
        keyword, _, rest = (current + line).partition(" ")
        found.append((keyword.upper(), rest.strip()))
        current = ""
    return found


def dockerfile(path: Path) -> list[tuple[str, str]]:
    """The instructions of a Dockerfile's last stage: what the image runs with."""
    every = instructions(path)
    last_from = max(index for index, (keyword, _) in enumerate(every) if keyword == "FROM")
    return every[last_from:]


def dockerfile_env(path: Path) -> dict[str, str]:
    env: dict[str, str] = {}
    for keyword, rest in dockerfile(path):
        if keyword == "ENV":
            env.update(item.split("=", 1) for item in shlex.split(rest))  # type: ignore[misc]
    return env


def dockerfile_cmd(path: Path) -> list[str]:
    cmds = [json.loads(rest) for keyword, rest in dockerfile(path) if keyword == "CMD"]
    assert len(cmds) == 1, f"{path.name}: one exec-form CMD"
    return cmds[0]


def option(argv: list[str], name: str) -> str:
    return argv[argv.index(name) + 1]


def env_refs(text: str) -> dict[str, bool]:
    """Each ``${VAR}`` in a config's values (comments aside), and whether it has a default."""
    refs: dict[str, bool] = {}

    def walk(value: Any) -> None:
        if isinstance(value, dict):
            for item in value.values():
                walk(item)
        elif isinstance(value, list):
            for item in value:
                walk(item)
        elif isinstance(value, str):
            for match in ENV_REF.finditer(value):
                refs[match.group(1)] = refs.get(match.group(1), False) or match.group(2) is not None

    walk(yaml.safe_load(text))
    return refs


def placeholder_env(text: str) -> dict[str, str]:
    """A value for every variable a config names without a default (a well-formed URL for REDIS_URL, a key's
    hash for a ``*_HASH``: the hash of ``placeholder_key(name)``)."""
    return {name: _placeholder(name) for name, defaulted in env_refs(text).items() if not defaulted}


def placeholder_key(hash_name: str) -> str:
    """The key whose hash ``placeholder_env`` gives ``hash_name``."""
    return f"test-key-of-{hash_name.lower()}"


def _placeholder(name: str) -> str:
    if name == "REDIS_URL":
        return "redis://127.0.0.1:6379/0"
    if name.endswith("_HASH"):
        return hash_key(placeholder_key(name))
    return f"test-{name.lower()}"


def docs_rows() -> dict[str, list[str]]:
    """Table rows of docs/operations.md whose first cell is one `code` span, by that span."""
    rows: dict[str, list[str]] = {}
    for line in OPERATIONS.read_text(encoding="utf-8").splitlines():
        if not line.startswith("|"):
            continue
        cells = [cell.strip() for cell in re.split(r"(?<!\\)\|", line.strip())[1:-1]]
        first = re.fullmatch(r"`([^`]+)`", cells[0]) if cells else None
        if first:
            rows.setdefault(first.group(1), cells)
        # A field of some kinds of a tagged block: `path` (`kind`, `kind`), one row for those kinds.
        of_kinds = re.fullmatch(r"`([^`]+)` \(((?:`[^`]+`(?:, )?)+)\)", cells[0]) if cells else None
        if of_kinds:
            for kind in code_spans(of_kinds.group(2)):
                rows.setdefault(f"{of_kinds.group(1)} ({kind})", cells)
    return rows


def code_spans(text: str) -> list[str]:
    return re.findall(r"`([^`]+)`", text)


# --- what the code serves ---


@pytest.fixture(scope="module")
def client(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient[Any]]:
    """The gateway app as the code builds it (no Redis, no providers), images in a temporary directory."""
    config = GatewayConfig(image_store=DirectoryStoreConfig(path=str(tmp_path_factory.mktemp("images"))))
    with TestClient(create_app(config)) as test_client:
        yield test_client


@pytest.fixture(scope="module")
def served_families(client: TestClient[Any]) -> dict[str, str]:
    """Every metric family /metrics serves, by the name in its ``# TYPE`` line (counters with ``_total``)."""
    response = client.get("/metrics")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/plain")
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, flags=re.MULTILINE))
    assert any(name.startswith("image_gateway_") for name in families)
    return families


WORKER_TEST_TOKEN = "a-worker-token-for-the-deploy-tests"


@pytest.fixture(scope="module")
def worker_families(tmp_path_factory: pytest.TempPathFactory) -> dict[str, str]:
    """Every metric family a GPU worker's /metrics serves (the worker app as the code builds it, with its token;
    its one model's weights absent, so that nothing is built), by the name in its ``# TYPE`` line."""
    from local_backend.server import create_worker_app

    missing = str(tmp_path_factory.mktemp("weights") / "absent")
    settings = msgspec.convert(
        {"kind": "local", "models": {"m": {"path": missing}}, "worker_token": WORKER_TEST_TOKEN},
        type=LocalBackendSettings,
    )
    with TestClient(create_worker_app(settings)) as worker:
        assert worker.get("/metrics").status_code == 401, "a worker's /metrics wants its token"
        response = worker.get("/metrics", headers={"Authorization": f"Bearer {WORKER_TEST_TOKEN}"})
    assert response.status_code == 200 and response.headers["content-type"].startswith("text/plain")
    assert 'image_gateway_worker_model_ready{model="m"} 0.0' in response.text
    families = dict(re.findall(r"^# TYPE (\S+) (\S+)$", response.text, flags=re.MULTILINE))
    assert "image_gateway_local_queue_depth" in families and "image_gateway_worker_requests_total" in families
    return families


def served_by_either(name: str, gateway: dict[str, str], worker: dict[str, str]) -> bool:
    return family_of(name, gateway) is not None or family_of(name, worker) is not None


def gateway_families(served: dict[str, str]) -> dict[str, str]:
    return {name: kind for name, kind in served.items() if name.startswith("image_gateway_")}


def metric_wrappers() -> dict[str, MetricWrapperBase]:
    """The metric objects of gateway.metrics, by the family name they are served under."""
    wrappers = {}
    for value in vars(metrics).values():
        if isinstance(value, MetricWrapperBase):
            name = value._name + ("_total" if value._type == "counter" else "")
            wrappers[name] = value
    return wrappers


# --- PromQL ---

_PROMQL_WORDS = {"by", "without", "on", "ignoring", "group_left", "group_right", "bool", "offset"}
_PROMQL_WORDS |= {"and", "or", "unless", "inf", "nan"}
# Series Prometheus makes itself for every scrape target.
_SCRAPE_SERIES = {"up", "scrape_duration_seconds", "scrape_samples_scraped"}


def promql_metric_names(expr: str) -> set[str]:
    """The metric names a PromQL expression reads (functions, keywords, labels and durations left out)."""
    expr = re.sub(r'"(?:\\.|[^"\\])*"', '""', expr)
    expr = re.sub(r"\{[^}]*\}", "", expr)
    expr = re.sub(r"\[[^\]]*\]", "", expr)
    expr = re.sub(r"\b(?:by|without|on|ignoring|group_left|group_right)\s*\([^)]*\)", "", expr)
    names = set()
    for match in re.finditer(r"(?<![\w.$])[A-Za-z_:][A-Za-z0-9_:]*", expr):
        word = match.group()
        if expr[match.end() :].lstrip().startswith("(") or word.lower() in _PROMQL_WORDS:
            continue
        names.add(word)
    return names


def family_of(name: str, served: dict[str, str]) -> str | None:
    if name in served:
        return name
    for suffix in ("_bucket", "_sum", "_count"):
        if name.endswith(suffix) and served.get(name.removesuffix(suffix)) == "histogram":
            return name.removesuffix(suffix)
    return None


def test_promql_metric_names() -> None:
    expr = (
        'histogram_quantile(0.95, sum by (le, provider) (rate(x_bucket{provider=~"$p", a="b{c}"}[$__rate_interval])))'
        " / sum(rate(y_total[5m])) by (provider) > 1e-3 and on(instance) up offset 1h"
    )
    assert promql_metric_names(expr) == {"x_bucket", "y_total", "up"}


def dashboard() -> dict[str, Any]:
    return json.loads((DEPLOY / "grafana" / "dashboards" / "image-gateway.json").read_text(encoding="utf-8"))


def dashboard_panels() -> list[dict[str, Any]]:
    panels = []
    for panel in dashboard()["panels"]:
        panels.append(panel)
        panels.extend(panel.get("panels", []))  # collapsed rows hold their panels
    return panels


def dashboard_exprs() -> list[str]:
    exprs = [target["expr"] for panel in dashboard_panels() for target in panel.get("targets", [])]
    for variable in dashboard()["templating"]["list"]:
        query = variable.get("query")
        if variable["type"] == "query":
            exprs.append(re.sub(r"^label_values\((.*?)(?:,\s*\w+)?\)$", r"\1", query["query"]))
    return exprs


def alert_exprs() -> list[str]:
    rules = yaml.safe_load((DEPLOY / "prometheus" / "alerts.yml").read_text(encoding="utf-8"))
    return [rule["expr"] for group in rules["groups"] for rule in group["rules"]]


# --- config fields ---


class Block(NamedTuple):
    """The default of a block with its own fields; ``overrides``: the fields whose value there differs from
    the block's own default (a ``kind: local`` provider's ``retry`` is ``attempts: 1``, the block's is 3)."""

    overrides: tuple[tuple[str, Any], ...] = ()


Field = tuple[Any, bool]  # (default, required); a default of Block(...) means "a block with its own fields"


def _struct_class(info: Any) -> type | None:
    while isinstance(info, mi.Metadata):
        info = info.type
    if isinstance(info, mi.StructType):
        return info.cls
    if isinstance(info, mi.UnionType):
        classes = [_struct_class(member) for member in info.types]
        found = [cls for cls in classes if cls is not None]
        return found[0] if len(found) == 1 else None
    return None


def _snake(name: str) -> str:
    return re.sub(r"(?<!^)(?=[A-Z])", "_", name).lower()


def config_fields() -> dict[str, list[Field]]:
    """Every config field by its documented path: ``server.port``, ``auth.keys[].name``,
    ``providers.<name>.retry.attempts`` (HTTP providers), ``providers.<local>.models.<model>.path``
    (``kind: local``); a block used at several places is documented once (``<rate_limit>.requests``)."""
    root = mi.type_info(GatewayConfig)

    def collect(shared: set[type]) -> tuple[dict[str, list[Field]], dict[type, set[str]]]:
        fields: dict[str, list[Field]] = {}
        places: dict[type, set[str]] = {}

        def walk(info: Any, prefix: str, key: str, kind: str | None = None) -> None:
            if isinstance(info, mi.Metadata):
                walk(info.type, prefix, key)
            elif isinstance(info, mi.StructType):
                config = info.cls.__struct_config__
                if config.tag_field:
                    fields.setdefault(f"{prefix}.{config.tag_field}", []).append((None, True))
                for field in info.fields:
                    path = f"{prefix}.{field.name}" if prefix else field.name
                    # A kind's own field (a step cache's) is documented as `path` (`kind`): kinds' defaults differ.
                    fields.setdefault(path if kind is None else f"{path} ({kind})", []).append(_field_default(field))
                    cls = _struct_class(field.type)
                    if cls is not None:
                        places.setdefault(cls, set()).add(path)
                    if cls in shared:
                        walk(mi.type_info(cls), f"<{_snake(cls.__name__)}>", "<name>")
                    else:
                        walk(field.type, path, "<model>" if field.name == "models" else "<name>")
            elif isinstance(info, mi.UnionType):
                for member in info.types:
                    tag = member.cls.__struct_config__.tag if isinstance(member, mi.StructType) else None
                    if tag == "local":
                        walk(member, prefix.removesuffix(".<name>") + ".<local>", key)
                    elif isinstance(tag, str) and prefix.endswith(".cache"):
                        walk(member, prefix, key, kind=tag)
                    else:
                        walk(member, prefix, key)
            elif isinstance(info, mi.ListType):
                walk(info.item_type, prefix + "[]", key)
            elif isinstance(info, mi.DictType):
                walk(info.value_type, f"{prefix}.{key}", key)

        walk(root, "", "<name>")
        return fields, places

    _, places = collect(set())
    fields, _ = collect({cls for cls, paths in places.items() if len(paths) > 1})
    return fields


def _field_default(field: mi.Field) -> Field:
    if field.required:
        return (None, True)
    if field.default is not msgspec.NODEFAULT:
        return (field.default, False)
    if field.default_factory in (list, dict):
        return (field.default_factory(), False)
    return (Block(_overrides(field.default_factory())), False)


def _yaml_or_none(text: str) -> Any:
    try:
        return yaml.safe_load(text)
    except yaml.YAMLError:
        return None


def _overrides(value: Any) -> tuple[tuple[str, Any], ...]:
    """The fields of a Struct ``value`` that differ from its class's own defaults."""
    if not isinstance(value, msgspec.Struct):
        return ()
    info = mi.type_info(type(value))
    assert isinstance(info, mi.StructType)
    found = []
    for field in info.fields:
        if field.default is not msgspec.NODEFAULT:
            default = field.default
        elif field.default_factory is not msgspec.NODEFAULT:
            default = field.default_factory()
        else:
            continue
        if getattr(value, field.name) != default:
            found.append((field.name, getattr(value, field.name)))
    return tuple(found)


# === files parse ===


def test_every_yaml_and_json_file_under_deploy_parses() -> None:
    files = sorted([*DEPLOY.rglob("*.yaml"), *DEPLOY.rglob("*.yml"), *DEPLOY.rglob("*.json")])
    assert len(files) >= 12
    for path in files:
        if path.suffix == ".json":
            json.loads(path.read_text(encoding="utf-8"))
        else:
            assert yaml_documents(path), f"{path} is empty"


def test_deploy_configs_pass_parse_config() -> None:
    for path in (GATEWAY_CONFIG, WORKER_CONFIG):
        text = path.read_text(encoding="utf-8")
        env = placeholder_env(text)
        parse_config(text, str(path), environ=env)
        # The variables without a default are all it needs.
        parse_config(
            text,
            str(path),
            environ={name: env[name] for name, has_default in env_refs(text).items() if not has_default},
        )


def test_deploy_configs_pass_check_config(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]) -> None:
    for path in (GATEWAY_CONFIG, WORKER_CONFIG):
        for name, value in placeholder_env(path.read_text(encoding="utf-8")).items():
            monkeypatch.setenv(name, value)
        # --no-store: the placeholders name no reachable bucket (tests/gateway/images/test_imagestore_s3.py reaches one)
        # --no-weights: the worker's model is in the GPU node's cache, not here (tests/gateway/config/test_weights.py)
        assert cli_main(["check-config", "--no-store", "--no-weights", str(path)]) == 0, capsys.readouterr().err
        assert ": ok (" in capsys.readouterr().out


def test_gateway_config_is_production_style() -> None:
    text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    config = parse_config(text, environ=placeholder_env(text))
    assert config.redis.url and config.redis.on_failure == "open"
    assert config.auth.keys, "inbound keys (as sha256 hashes) are configured"
    assert config.image_store.secret, "replicas share the store's signing secret"
    assert config.server.host == "0.0.0.0"
    for name, provider in config.providers.items():
        if not isinstance(provider, LocalBackendSettings):
            assert re.fullmatch(r"\$\{\w+\}", _raw_provider(text, name)["api_key"]), f"{name}: key from the environment"
    local = [provider for provider in config.providers.values() if isinstance(provider, LocalBackendSettings)]
    assert len(local) == 1 and local[0].workers == [f"http://{WORKER_SERVICE}:{WORKER_PORT}"]
    assert not local[0].models, "the gateway runs no model itself: no torch in its image"


def _raw_provider(text: str, name: str) -> dict[str, Any]:
    return yaml.safe_load(text)["providers"][name]


def test_worker_config_serves_local_models_the_gateway_asks_for() -> None:
    text = WORKER_CONFIG.read_text(encoding="utf-8")
    worker = parse_config(text, environ=placeholder_env(text))
    local = [provider for provider in worker.providers.values() if isinstance(provider, LocalBackendSettings)]
    assert local and local[0].models and not local[0].workers
    gateway_text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    gateway = parse_config(gateway_text, environ=placeholder_env(gateway_text))
    remote = {name for name, provider in gateway.providers.items() if isinstance(provider, LocalBackendSettings)}
    asked = {target.model for model in gateway.models for target in model.targets if target.provider in remote}
    assert asked and asked <= set(local[0].models), "every local target names a model the worker serves"


# === metrics: dashboard, alerts, scrape configs ===


def test_dashboard_reads_only_metrics_the_gateway_or_its_workers_serve(
    served_families: dict[str, str], worker_families: dict[str, str]
) -> None:
    exprs = dashboard_exprs()
    assert exprs
    for expr in exprs:
        names = promql_metric_names(expr)
        assert names, f"no metric in {expr!r}"
        for name in names:
            assert name in _SCRAPE_SERIES or served_by_either(name, served_families, worker_families), (
                f"dashboard reads {name!r}, which neither /metrics serves"
            )


def test_the_workers_serve_the_local_families_as_the_gateway_does(
    served_families: dict[str, str], worker_families: dict[str, str]
) -> None:
    """The dashboard's local-backend row and the backlog alert read one name, whether the engine runs in the
    gateway or on workers: same families, same types, same buckets."""
    from local_backend import metrics as worker_metrics

    local = {name: kind for name, kind in served_families.items() if name.startswith("image_gateway_local_")}
    assert local and all(worker_families.get(name) == kind for name, kind in local.items())
    assert worker_metrics.LATENCY_BUCKETS == metrics.LATENCY_BUCKETS
    assert (*worker_metrics.BATCH_SIZE_BUCKETS, float("inf")) == tuple(metrics.LOCAL_BATCH_SIZE._upper_bounds)
    only_worker = {name for name in worker_families if name.startswith("image_gateway_worker_")}
    assert not only_worker & set(served_families), "a worker's own families never share a gateway family's name"


def test_dashboard_covers_the_operator_questions() -> None:
    read = {name for expr in dashboard_exprs() for name in promql_metric_names(expr)}
    wanted = {
        "image_gateway_requests_total",  # rate and errors by provider
        "image_gateway_request_duration_seconds_bucket",  # latency percentiles
        "image_gateway_upstream_call_duration_seconds_bucket",
        "image_gateway_upstream_calls_total",
        "image_gateway_retries_total",
        "image_gateway_fallbacks_total",
        "image_gateway_cooldowns_total",
        "image_gateway_rate_limited_total",
        "image_gateway_in_flight_requests",
        "image_gateway_images_generated_total",
        "image_gateway_redis_up",
        "image_gateway_local_queue_depth",
        "image_gateway_local_batch_size_images_bucket",
        "image_gateway_local_batch_duration_seconds_bucket",
        "image_gateway_cost_total",  # cost and budgets
        "image_gateway_unpriced_images_total",
        "image_gateway_budget_spent",
        "image_gateway_budget_amount",
        "image_gateway_budget_refused_total",
        "image_gateway_provider_ready",  # a local provider's readiness (a per-target state)
        "image_gateway_worker_requests_total",  # the GPU workers: outcomes, images, energy, health
        "image_gateway_worker_images_generated_total",
        "image_gateway_worker_energy_kwh_total",
        "image_gateway_worker_healthy",
    }
    assert wanted <= read, f"no panel reads {sorted(wanted - read)}"
    quantiles = " ".join(expr for expr in dashboard_exprs() if "histogram_quantile" in expr)
    for q in ("0.5", "0.95", "0.99"):
        assert f"histogram_quantile({q}, sum by (le) (rate(image_gateway_request_duration_seconds_bucket" in quantiles


def test_dashboard_is_well_formed() -> None:
    board = dashboard()
    assert board["uid"] and board["title"]
    panels = dashboard_panels()
    ids = [panel["id"] for panel in panels]
    assert len(ids) == len(set(ids)), "panel ids are unique"
    variables = {variable["name"] for variable in board["templating"]["list"]}
    assert "datasource" in variables
    for panel in panels:
        grid = panel["gridPos"]
        assert grid["x"] >= 0 and grid["x"] + grid["w"] <= 24, panel["title"]
        if panel["type"] == "row":
            continue
        assert panel["datasource"]["uid"] == "${datasource}", panel["title"]
        assert panel["targets"], panel["title"]
        for target in panel["targets"]:
            for used in re.findall(r"\$(\w+)", target["expr"]):
                assert used.startswith("__") or used in variables, f"{panel['title']}: unknown variable ${used}"


def test_alert_rules_read_only_served_metrics(served_families: dict[str, str], worker_families: dict[str, str]) -> None:
    exprs = alert_exprs()
    assert exprs
    for expr in exprs:
        for name in promql_metric_names(expr):
            assert name in _SCRAPE_SERIES or served_by_either(name, served_families, worker_families), (
                f"alert reads unknown {name!r}"
            )


def test_alerts_watch_the_workers_and_the_providers() -> None:
    exprs = " ".join(alert_exprs())
    assert 'up{job="image-gateway-worker"}' in exprs
    assert "image_gateway_worker_healthy" in exprs and "image_gateway_provider_ready" in exprs
    assert "image_gateway_local_queue_depth" in exprs  # the backlog alert: the workers serve it now


def _worker_job(path: Path) -> dict[str, Any]:
    config = yaml.safe_load(path.read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "image-gateway-worker"]
    assert job.get("metrics_path", "/metrics") == "/metrics"
    authorization = job["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer" and "credentials" not in authorization
    return job


def test_prometheus_scrapes_the_workers_with_their_token_in_compose(worker_families: dict[str, str]) -> None:
    job = _worker_job(DEPLOY / "prometheus" / "prometheus.yml")
    (sd,) = job["dns_sd_configs"]  # by DNS: no target (and no alert) without `--profile gpu`, every one with --scale
    assert sd["names"] == [WORKER_SERVICE] and sd["port"] == WORKER_PORT and sd.get("type", "SRV") == "A"
    path = Path(job["authorization"]["credentials_file"])
    assert path.parent == Path("/run/secrets")
    services, secrets = compose()["services"], compose()["secrets"]
    assert path.name in services["prometheus"]["secrets"]
    assert secrets[path.name] == {"environment": "WORKER_TOKEN"}, "the token the worker itself reads"
    assert services[WORKER_SERVICE]["environment"]["WORKER_TOKEN"].startswith("${WORKER_TOKEN:?")


def test_prometheus_scrapes_the_workers_with_their_token_in_kubernetes() -> None:
    job = _worker_job(DEPLOY / "prometheus" / "prometheus-kubernetes.yml")
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    path = Path(job["authorization"]["credentials_file"])
    assert path.parent.parent == Path("/etc/prometheus/secrets")
    assert path.name == "WORKER_TOKEN" and path.name in k8s_object("Secret", path.parent.name)["stringData"]
    pod = k8s_object("Deployment", "image-gateway-worker")["spec"]["template"]["metadata"]
    assert pod["annotations"]["prometheus.io/scrape"] == "true"
    assert int(pod["annotations"]["prometheus.io/port"]) == WORKER_PORT
    assert pod["annotations"]["prometheus.io/path"] == "/metrics"


@pytest.mark.parametrize(
    ("job_name", "deployment"), [("image-gateway", "image-gateway"), ("image-gateway-worker", "image-gateway-worker")]
)
def test_each_kubernetes_job_keeps_its_own_pods_only(job_name: str, deployment: str) -> None:
    """The gateway's job (the admin key) never scrapes a worker, nor the workers' job (the token) a gateway."""
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == job_name]
    keep = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    label_rules = [
        r for r in keep if all(label.startswith("__meta_kubernetes_pod_label_") for label in r["source_labels"])
    ]
    assert label_rules

    def kept(labels: dict[str, str]) -> bool:
        for rule in label_rules:
            values = [
                labels.get(re.sub(r"[^a-zA-Z0-9_]", "_", k), "")
                for k in (label.removeprefix("__meta_kubernetes_pod_label_") for label in rule["source_labels"])
            ]
            if not re.fullmatch(rule["regex"], rule.get("separator", ";").join(values)):
                return False
        return True

    for name in ("image-gateway", "image-gateway-worker"):
        labels = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in _pod_labels(k8s_object("Deployment", name)).items()}
        assert kept(labels) == (name == deployment), f"job {job_name} and the pods of {name}"


def test_prometheus_scrapes_the_gateway_in_compose(client: TestClient[Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    services = compose()["services"]
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "image-gateway"]
    path = job.get("metrics_path", "/metrics")
    assert client.get(path).status_code == 200
    (target,) = [target for group in job["static_configs"] for target in group["targets"]]
    host, port = target.split(":")
    assert host in services and int(port) == GATEWAY_PORT
    mounts = {volume.split(":")[1] for volume in services["prometheus"]["volumes"]}
    assert set(config["rule_files"]) <= mounts and "/etc/prometheus/prometheus.yml" in mounts
    assert 'job="image-gateway"' in " ".join(alert_exprs())


def test_prometheus_kubernetes_config_reads_the_pod_annotations(client: TestClient[Any]) -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "image-gateway"]
    assert job["kubernetes_sd_configs"] == [{"role": "pod"}]
    sources = {label for rule in job["relabel_configs"] for label in rule.get("source_labels", [])}
    pod = k8s_object("Deployment", "image-gateway")["spec"]["template"]["metadata"]
    for annotation in pod["annotations"]:
        meta = "__meta_kubernetes_pod_annotation_" + re.sub(r"[^a-zA-Z0-9_]", "_", annotation)
        assert meta in sources, f"scrape config ignores the pod annotation {annotation}"
    assert pod["annotations"]["prometheus.io/scrape"] == "true"
    assert int(pod["annotations"]["prometheus.io/port"]) == GATEWAY_PORT
    assert client.get(pod["annotations"]["prometheus.io/path"]).status_code == 200
    keep = [rule for rule in job["relabel_configs"] if rule.get("action") == "keep"]
    name = "__meta_kubernetes_pod_label_app_kubernetes_io_name"
    (name_rule,) = [r for r in keep if name in r["source_labels"]]
    labels = {re.sub(r"[^a-zA-Z0-9_]", "_", k): v for k, v in pod["labels"].items()}
    values = [labels[label.removeprefix("__meta_kubernetes_pod_label_")] for label in name_rule["source_labels"]]
    assert re.fullmatch(name_rule["regex"], ";".join(values))


def test_grafana_provisioning_fits_compose() -> None:
    services = compose()["services"]
    grafana = services["grafana"]
    mounts = dict(volume.split(":")[:2] for volume in grafana["volumes"])
    assert mounts["./grafana/provisioning"] == "/etc/grafana/provisioning"
    provisioning = DEPLOY / "grafana" / "provisioning"
    (source,) = yaml.safe_load((provisioning / "datasources" / "prometheus.yml").read_text())["datasources"]
    url = urlsplit(source["url"])
    assert source["type"] == "prometheus" and url.hostname in services and url.port == 9090
    assert any(port.startswith("9090:") for port in services["prometheus"]["ports"])
    (provider,) = yaml.safe_load((provisioning / "dashboards" / "image-gateway.yml").read_text())["providers"]
    assert mounts["./grafana/dashboards"] == provider["options"]["path"]
    assert (DEPLOY / "grafana" / "dashboards" / "image-gateway.json").is_file()


# === images and compose ===


def test_dockerfile_commands_are_cli_commands() -> None:
    for name, program, command, port in (
        ("Dockerfile.gateway", "image-gateway", "serve", GATEWAY_PORT),
        ("Dockerfile.worker", "image-gateway-worker", None, WORKER_PORT),
    ):
        path = DEPLOY / name
        argv = dockerfile_cmd(path)
        assert argv[0] == program
        args = (build_parser() if command else build_worker_parser()).parse_args(argv[1:])
        assert getattr(args, "command", None) == command
        assert args.port == port and args.host == "0.0.0.0" and args.config
        exposed = [rest for keyword, rest in dockerfile(path) if keyword == "EXPOSE"]
        assert exposed == [str(port)]
        users = [rest for keyword, rest in dockerfile(path) if keyword == "USER"]
        assert users and users[-1].split(":")[0].isdigit() and int(users[-1].split(":")[0]) > 0, "numeric non-root"
        assert all(rest.startswith("python:3.11-slim") for keyword, rest in instructions(path) if keyword == "FROM")


def test_gateway_image_has_no_torch_and_worker_image_pins_it() -> None:
    runs = " ".join(rest for keyword, rest in instructions(DEPLOY / "Dockerfile.gateway") if keyword == "RUN")
    assert "pip install ." in runs
    assert "[local]" not in runs and "torch==" not in runs
    pyproject = tomllib.loads((ROOT / "pyproject.toml").read_text(encoding="utf-8"))
    (pin,) = [dep for dep in pyproject["project"]["optional-dependencies"]["local"] if dep.startswith("torch==")]
    worker_runs = " ".join(rest for keyword, rest in instructions(DEPLOY / "Dockerfile.worker") if keyword == "RUN")
    assert '".[local]"' in worker_runs and pin in worker_runs
    assert "download.pytorch.org/whl/cu" in (DEPLOY / "Dockerfile.worker").read_text(), "says where CUDA wheels are"


def test_compose_runs_gateway_redis_prometheus_grafana() -> None:
    services = compose()["services"]
    assert {"gateway", "redis", "prometheus", "grafana"} <= set(services)
    for name in ("gateway", "redis", "prometheus", "grafana"):
        assert "profiles" not in services[name], f"{name} runs by default"


def test_compose_gateway_agrees_with_the_image_and_the_code(client: TestClient[Any]) -> None:
    gateway = compose()["services"]["gateway"]
    assert gateway["build"]["dockerfile"] == "deploy/Dockerfile.gateway"
    assert (DEPLOY / gateway["build"]["context"] / gateway["build"]["dockerfile"]).is_file()
    assert f"{GATEWAY_PORT}:{GATEWAY_PORT}" in gateway["ports"]
    mounts = dict(volume.split(":")[:2] for volume in gateway["volumes"])
    assert mounts["./config/gateway.yaml"] == option(dockerfile_cmd(DEPLOY / "Dockerfile.gateway"), "--config")
    store = gateway["environment"]["IMAGE_GATEWAY_STORE"]
    assert store in mounts.values(), "the image store is a volume (the root filesystem is read-only)"
    health = " ".join(gateway["healthcheck"]["test"])
    assert f"http://127.0.0.1:{GATEWAY_PORT}/health" in health and client.get("/health").status_code == 200
    assert _seconds(gateway["stop_grace_period"]) > ServerConfig().shutdown_grace_s
    assert gateway["depends_on"]["redis"]["condition"] == "service_healthy"
    redis_url = urlsplit(gateway["environment"]["REDIS_URL"])
    assert redis_url.hostname == "redis" and "redis" in compose()["services"]


def test_compose_worker_agrees_with_the_image() -> None:
    services = compose()["services"]
    worker = services[WORKER_SERVICE]
    assert worker["build"]["dockerfile"] == "deploy/Dockerfile.worker"
    mounts = dict(volume.split(":")[:2] for volume in worker["volumes"])
    assert mounts["./config/worker.yaml"] == option(dockerfile_cmd(DEPLOY / "Dockerfile.worker"), "--config")
    assert f"http://127.0.0.1:{WORKER_PORT}{protocol.HEALTH_PATH}" in " ".join(worker["healthcheck"]["test"])
    (device,) = worker["deploy"]["resources"]["reservations"]["devices"]
    assert device["driver"] == "nvidia" and "gpu" in device["capabilities"]


def _seconds(duration: str) -> float:
    match = re.fullmatch(r"(\d+)(s|m)", duration)
    assert match, duration
    return int(match.group(1)) * (60 if match.group(2) == "m" else 1)


def _compose_env(service: str, image: Path) -> set[str]:
    env = compose()["services"][service].get("environment", {})
    names = set(env) if isinstance(env, dict) else {item.split("=", 1)[0] for item in env}
    return names | set(dockerfile_env(image))


def _k8s_env(kind: str, name: str, image: Path, container_name: str | None = None) -> set[str]:
    """The variables a workload's container has: its env and envFrom (each key checked to exist), its image's ENV.
    The workload's one container, or the one named ``container_name`` (an init container too)."""
    pod = k8s_object(kind, name)["spec"]["template"]["spec"]
    if container_name is None:
        (container,) = pod["containers"]
    else:
        (container,) = [c for c in [*pod.get("initContainers", []), *pod["containers"]] if c["name"] == container_name]
    names = {item["name"] for item in container.get("env", [])} | set(dockerfile_env(image))
    for source in container.get("envFrom", []):
        if "secretRef" in source:
            secret = k8s_object("Secret", source["secretRef"]["name"])
            names |= set(secret.get("stringData", {})) | set(secret.get("data", {}))
        if "configMapRef" in source:
            names |= set(k8s_object("ConfigMap", source["configMapRef"]["name"])["data"])
    for item in container.get("env", []):
        ref = item.get("valueFrom", {}).get("secretKeyRef")
        if ref:
            secret = k8s_object("Secret", ref["name"])
            assert ref["key"] in {*secret.get("stringData", {}), *secret.get("data", {})}
    return names


GATEWAY_IMAGE, WORKER_IMAGE = DEPLOY / "Dockerfile.gateway", DEPLOY / "Dockerfile.worker"


@pytest.mark.parametrize(
    ("config", "service", "workload", "image"),
    [
        (GATEWAY_CONFIG, "gateway", ("Deployment", "image-gateway", None), GATEWAY_IMAGE),
        (GATEWAY_CONFIG, "store-setup", ("Job", "image-gateway-store-setup", None), GATEWAY_IMAGE),
        (WORKER_CONFIG, WORKER_SERVICE, ("Deployment", "image-gateway-worker", None), WORKER_IMAGE),
        # the init container that places the weights reads the whole worker config (check-config)
        (WORKER_CONFIG, None, ("Deployment", "image-gateway-worker", "weights"), WORKER_IMAGE),
    ],
)
def test_every_config_variable_is_provided(
    config: Path, service: str | None, workload: tuple[str, str, str | None], image: Path
) -> None:
    wanted = set(env_refs(config.read_text(encoding="utf-8")))
    if service is not None:
        missing = wanted - _compose_env(service, image)
        assert not missing, f"compose service `{service}` (environment, image ENV) does not set {sorted(missing)}"
    kind, name, container_name = workload
    missing = wanted - _k8s_env(kind, name, image, container_name)
    assert not missing, f"{workload} (env, Secret, ConfigMap, image ENV) does not set {sorted(missing)}"


# === Kubernetes ===


def test_k8s_manifests_are_namespace_agnostic_and_listed() -> None:
    objects = k8s_objects()
    assert objects
    seen = set()
    for obj in objects:
        assert obj["metadata"]["name"] and "namespace" not in obj["metadata"], obj["metadata"]
        key = (obj["kind"], obj["metadata"]["name"])
        assert key not in seen, f"{key} twice"
        seen.add(key)
    kustomization = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))
    listed = set(kustomization["resources"])
    files = {path.name for path in K8S.glob("*.yaml")} - {"kustomization.yaml", "secret.example.yaml"}
    assert listed == files, "kustomization lists every manifest but the example Secret"
    kinds = {obj["kind"] for obj in objects}
    wanted = {"Deployment", "Service", "HorizontalPodAutoscaler", "PodDisruptionBudget", "ConfigMap", "Secret", "Job"}
    assert wanted <= kinds


def _pod_labels(deployment: dict[str, Any]) -> dict[str, str]:
    return deployment["spec"]["template"]["metadata"]["labels"]


def _container(deployment: str) -> dict[str, Any]:
    (container,) = k8s_object("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    return container


def _port_number(container: dict[str, Any], port: int | str) -> int:
    if isinstance(port, int):
        return port
    (found,) = [item["containerPort"] for item in container["ports"] if item["name"] == port]
    return found


def test_k8s_deployments_select_their_pods_and_services_reach_them() -> None:
    deployments = [obj for obj in k8s_objects() if obj["kind"] == "Deployment"]
    for deployment in deployments:
        selector = deployment["spec"]["selector"]["matchLabels"]
        assert selector.items() <= _pod_labels(deployment).items()
    for service in (obj for obj in k8s_objects() if obj["kind"] == "Service"):
        selector = service["spec"]["selector"]
        matched = [d for d in deployments if selector.items() <= _pod_labels(d).items()]
        assert len(matched) == 1, f"Service {service['metadata']['name']} selects {len(matched)} Deployments"
        (container,) = matched[0]["spec"]["template"]["spec"]["containers"]
        for port in service["spec"]["ports"]:
            assert _port_number(container, port["targetPort"]) in {p["containerPort"] for p in container["ports"]}


def test_k8s_gateway_deployment(client: TestClient[Any]) -> None:
    deployment = k8s_object("Deployment", "image-gateway")
    pod = deployment["spec"]["template"]["spec"]
    container = _container("image-gateway")
    args = build_parser().parse_args(container["command"][1:])
    assert container["command"][0] == "image-gateway" and args.command == "serve" and args.port == GATEWAY_PORT
    assert {port["containerPort"] for port in container["ports"]} == {GATEWAY_PORT}
    probes = {"readinessProbe": "/ready", "livenessProbe": "/health"}
    for probe, path in probes.items():
        assert container[probe]["httpGet"]["path"] == path
        assert _port_number(container, container[probe]["httpGet"]["port"]) == GATEWAY_PORT
        assert client.get(path).status_code == 200, f"{path} is a route of the app"
    for kind in ("requests", "limits"):
        assert {"cpu", "memory"} <= set(container["resources"][kind])
    sleep = container["lifecycle"]["preStop"]["exec"]["command"]
    assert sleep[0] == "sleep"
    text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    configured = parse_config(text, environ=placeholder_env(text)).server.shutdown_grace_s
    grace = max(ServerConfig().shutdown_grace_s, configured)
    assert pod["terminationGracePeriodSeconds"] > grace + int(sleep[1])
    assert pod["securityContext"]["runAsNonRoot"] is True
    # The config: a ConfigMap file where --config reads it.
    config_path = Path(option(container["command"], "--config"))
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    config_map = k8s_object("ConfigMap", volume["configMap"]["name"])
    (item,) = [i for i in volume["configMap"]["items"] if i["path"] == config_path.name]
    assert item["key"] in config_map["data"]
    # The image store is a writable volume (the root filesystem is read-only).
    store = {e["name"]: e.get("value") for e in container["env"]}["IMAGE_GATEWAY_STORE"]
    assert store in {m["mountPath"] for m in container["volumeMounts"]}
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    sources = {next(iter(source)) for source in container["envFrom"]}
    assert sources == {"secretRef", "configMapRef"}


def test_k8s_gateway_service_hpa_and_pdb() -> None:
    labels = _pod_labels(k8s_object("Deployment", "image-gateway"))
    service = k8s_object("Service", "image-gateway")
    assert [port["port"] for port in service["spec"]["ports"]] == [GATEWAY_PORT]
    hpa = k8s_object("HorizontalPodAutoscaler", "image-gateway")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {"apiVersion": "apps/v1", "kind": "Deployment", "name": "image-gateway"}
    assert 2 <= hpa["spec"]["minReplicas"] < hpa["spec"]["maxReplicas"]
    (metric,) = hpa["spec"]["metrics"]
    assert metric["type"] == "Resource" and metric["resource"]["name"] == "cpu"
    pdb = k8s_object("PodDisruptionBudget", "image-gateway")
    assert pdb["apiVersion"] == "policy/v1"
    assert pdb["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert ("maxUnavailable" in pdb["spec"]) != ("minAvailable" in pdb["spec"])


def test_k8s_worker_deployment_requests_a_gpu() -> None:
    container = _container("image-gateway-worker")
    assert container["command"][0] == "image-gateway-worker"
    args = build_worker_parser().parse_args(container["command"][1:])
    assert args.port == WORKER_PORT and args.host == "0.0.0.0"
    assert container["resources"]["limits"]["nvidia.com/gpu"] == 1
    assert container["resources"].get("requests", {}).get("nvidia.com/gpu", 1) == 1
    assert container["readinessProbe"]["httpGet"]["path"] == protocol.HEALTH_PATH
    assert _port_number(container, container["readinessProbe"]["httpGet"]["port"]) == WORKER_PORT
    service = k8s_object("Service", WORKER_SERVICE)
    assert [port["port"] for port in service["spec"]["ports"]] == [WORKER_PORT]
    config_path = Path(option(container["command"], "--config"))
    pod = k8s_object("Deployment", "image-gateway-worker")["spec"]["template"]["spec"]
    (mount,) = [m for m in container["volumeMounts"] if m["mountPath"] == str(config_path.parent)]
    (volume,) = [v for v in pod["volumes"] if v["name"] == mount["name"]]
    assert config_path.name in k8s_object("ConfigMap", volume["configMap"]["name"])["data"]


def test_k8s_redis_url_names_the_redis_service() -> None:
    url = urlsplit(k8s_object("ConfigMap", "image-gateway-env")["data"]["REDIS_URL"])
    service = k8s_object("Service", url.hostname or "")
    assert url.port in {port["port"] for port in service["spec"]["ports"]}
    (container,) = [
        c
        for d in k8s_objects()
        if d["kind"] == "Deployment" and service["spec"]["selector"].items() <= _pod_labels(d).items()
        for c in d["spec"]["template"]["spec"]["containers"]
    ]
    assert container["image"].startswith("redis:")


def _redis_container() -> dict[str, Any]:
    (container,) = k8s_object("Deployment", "image-gateway-redis")["spec"]["template"]["spec"]["containers"]
    return container


def _option(args: list[str], name: str) -> str:
    assert args.count(name) == 1, f"{name} once in {args}"
    return args[args.index(name) + 1]


def shipped_redis_commands() -> dict[str, list[str]]:
    """The redis-server command line of compose and of Kubernetes."""
    return {"compose": compose()["services"]["redis"]["command"], "k8s": _redis_container()["args"]}


@pytest.mark.parametrize("where", ["compose", "k8s"])
def test_shipped_redis_never_evicts_and_keeps_its_data_on_a_volume(where: str) -> None:
    """It holds the job queue, job records and budgets: noeviction, AOF, and its --dir on a volume that outlives it."""
    args = shipped_redis_commands()[where]
    assert args[0] == "redis-server"
    assert _option(args, "--maxmemory-policy") == "noeviction"
    assert _option(args, "--appendonly") == "yes"
    data_dir = _option(args, "--dir")
    if where == "compose":
        mounts = dict(volume.split(":")[:2] for volume in compose()["services"]["redis"]["volumes"])
        volume = next(name for name, path in mounts.items() if path == data_dir)
        assert volume in compose()["volumes"], "a named volume, kept across `docker compose down`/`up`"
    else:
        (mount,) = [m for m in _redis_container()["volumeMounts"] if m["mountPath"] == data_dir]
        (volume,) = [
            v
            for v in k8s_object("Deployment", "image-gateway-redis")["spec"]["template"]["spec"]["volumes"]
            if v["name"] == mount["name"]
        ]
        claim = volume["persistentVolumeClaim"]["claimName"]  # not an emptyDir: it outlives the pod
        assert k8s_object("PersistentVolumeClaim", claim)["spec"]["resources"]["requests"]["storage"]


@pytest.mark.parametrize("where", ["compose", "k8s"])
async def test_the_gateway_accepts_the_shipped_redis_and_refuses_an_evicting_one(where: str, tmp_path: Path) -> None:
    """A real redis-server with the shipped command line (its --dir here) passes the gateway's start-up check;
    the same with allkeys-lru is refused, naming the policy and the setting that downgrades it."""
    import redis.asyncio as aioredis

    from gateway.redis_health import EvictingRedis, check_eviction_policy
    from tests.redis_support import OwnRedis

    args = shipped_redis_commands()[where][1:]
    args[args.index("--dir") + 1] = str(tmp_path)
    for policy in ("shipped", "allkeys-lru"):
        extra = args if policy == "shipped" else [*args, "--maxmemory-policy", policy]
        server = OwnRedis(tmp_path, extra_args=extra).start()
        client = aioredis.Redis(port=server.port)
        try:
            if policy == "shipped":
                assert await check_eviction_policy(client, GATEWAY_DEPLOY_EVICTING_POLICY) == "noeviction"
                assert (await client.config_get("appendonly"))["appendonly"] == "yes"
            else:
                with pytest.raises(EvictingRedis, match=r"allkeys-lru.*redis\.evicting_policy: warn"):
                    await check_eviction_policy(client, GATEWAY_DEPLOY_EVICTING_POLICY)
        finally:
            await client.aclose()
            server.stop()


GATEWAY_DEPLOY_EVICTING_POLICY = "refuse"


def test_deploy_config_refuses_an_evicting_redis() -> None:
    text = GATEWAY_CONFIG.read_text()
    assert re.search(r"^  evicting_policy: (\S+)", text, re.MULTILINE).group(1) == GATEWAY_DEPLOY_EVICTING_POLICY  # type: ignore[union-attr]


def test_k8s_configmaps_carry_the_deploy_configs() -> None:
    assert k8s_object("ConfigMap", "image-gateway-config")["data"]["gateway.yaml"] == GATEWAY_CONFIG.read_text(), (
        "deploy/k8s/configmap.yaml's gateway.yaml differs from deploy/config/gateway.yaml: copy it over"
    )
    assert k8s_object("ConfigMap", "image-gateway-worker-config")["data"]["worker.yaml"] == WORKER_CONFIG.read_text(), (
        "deploy/k8s/configmap.yaml's worker.yaml differs from deploy/config/worker.yaml: copy it over"
    )


def test_k8s_secret_example_holds_placeholders_only() -> None:
    secrets = yaml_documents(K8S / "secret.example.yaml")
    assert {secret["metadata"]["name"] for secret in secrets} == {
        "image-gateway-secrets",
        "image-gateway-admin-keys",
        "image-gateway-metrics",
        "image-gateway-worker-metrics",
    }
    for secret in secrets:
        assert secret["kind"] == "Secret" and "data" not in secret
        for key, value in secret["stringData"].items():
            assert value.startswith("<") and value.endswith(">"), f"{key}: a placeholder, never a real value"


# === closed surfaces: the workers' credential, NetworkPolicies, /metrics ===


def _local_provider(path: Path) -> tuple[str, dict[str, Any], LocalBackendSettings]:
    """The config's one local provider: its name, as written, and as parsed."""
    text = path.read_text(encoding="utf-8")
    config = parse_config(text, environ=placeholder_env(text))
    ((name, parsed),) = [(n, p) for n, p in config.providers.items() if isinstance(p, LocalBackendSettings)]
    return name, _raw_provider(text, name), parsed


def env_example() -> dict[str, str]:
    lines = (DEPLOY / "env.example").read_text(encoding="utf-8").splitlines()
    return dict(line.split("=", 1) for line in lines if line and not line.startswith("#"))  # type: ignore[misc]


def test_gateway_and_worker_share_a_worker_token_from_the_environment() -> None:
    _, gateway_raw, gateway = _local_provider(GATEWAY_CONFIG)
    _, worker_raw, worker = _local_provider(WORKER_CONFIG)
    assert gateway.workers and worker.models
    assert gateway_raw["worker_token"] == worker_raw["worker_token"] == "${WORKER_TOKEN}", "one secret, no default"
    assert gateway.worker_token == worker.worker_token != ""
    assert not worker.allow_unauthenticated and "allow_unauthenticated" not in worker_raw
    # compose: both services read the same variable, which deploy/.env must set.
    services = compose()["services"]
    assert services["gateway"]["environment"]["WORKER_TOKEN"].startswith("${WORKER_TOKEN:?")
    assert services[WORKER_SERVICE]["environment"]["WORKER_TOKEN"].startswith("${WORKER_TOKEN:?")
    assert env_example()["WORKER_TOKEN"] == "", "env.example names it, empty"
    # Kubernetes: the worker reads the gateway's Secret's key (the gateway has the whole Secret).
    (item,) = [item for item in _container("image-gateway-worker")["env"] if item["name"] == "WORKER_TOKEN"]
    ref = item["valueFrom"]["secretKeyRef"]
    sources = [
        source["secretRef"]["name"] for source in _container("image-gateway")["envFrom"] if "secretRef" in source
    ]
    assert ref == {"name": "image-gateway-secrets", "key": "WORKER_TOKEN"} and ref["name"] in sources
    assert "WORKER_TOKEN" in k8s_object("Secret", "image-gateway-secrets")["stringData"]


def _selects(selector: dict[str, str], labels: dict[str, str]) -> bool:
    return selector.items() <= labels.items()


@pytest.mark.parametrize(("deployment", "port"), [("image-gateway-worker", WORKER_PORT), ("image-gateway-redis", 6379)])
def test_k8s_network_policy_admits_only_the_gateway(deployment: str, port: int) -> None:
    """Every NetworkPolicy selecting these pods lets in the gateway's pods alone, on the pods' own port."""
    deployments = {obj["metadata"]["name"]: _pod_labels(obj) for obj in k8s_objects() if obj["kind"] == "Deployment"}
    gateway = deployments["image-gateway"]
    policies = [
        obj
        for obj in k8s_objects()
        if obj["kind"] == "NetworkPolicy"
        and _selects(obj["spec"]["podSelector"]["matchLabels"], deployments[deployment])
    ]
    assert policies, f"no NetworkPolicy selects the pods of {deployment}"
    (container,) = k8s_object("Deployment", deployment)["spec"]["template"]["spec"]["containers"]
    assert port in {item["containerPort"] for item in container["ports"]}
    for policy in policies:
        spec = policy["spec"]
        assert policy["apiVersion"] == "networking.k8s.io/v1" and "Ingress" in spec["policyTypes"]
        assert not _selects(spec["podSelector"]["matchLabels"], gateway), "the gateway itself stays reachable"
        assert spec["ingress"], "an empty ingress list admits nobody: the gateway must be let in"
        for rule in spec["ingress"]:
            assert rule["from"], "a rule without `from` admits every pod and address"
            if deployment == "image-gateway-worker" and _admits_prometheus(rule):
                assert [_port_number(container, item["port"]) for item in rule["ports"]] == [port]
                continue  # Prometheus, for the workers' /metrics (which wants the WORKER_TOKEN too)
            for peer in rule["from"]:
                assert set(peer) == {"podSelector"}, "peers are pods of this namespace (no ipBlock, no namespaces)"
                admitted = [
                    name for name, labels in deployments.items() if _selects(peer["podSelector"]["matchLabels"], labels)
                ]
                assert admitted == ["image-gateway"], f"{policy['metadata']['name']} admits {admitted}"
            assert [_port_number(container, item["port"]) for item in rule["ports"]] == [port]
            assert all(item.get("protocol", "TCP") == "TCP" for item in rule["ports"])


def _admits_prometheus(rule: dict[str, Any]) -> bool:
    """A rule whose one peer is Prometheus's pods (in their own namespace), and nothing else."""
    if len(rule["from"]) != 1:
        return False
    (peer,) = rule["from"]
    return set(peer) == {"namespaceSelector", "podSelector"} and peer["podSelector"]["matchLabels"] == {
        "app.kubernetes.io/name": "prometheus"
    }


def test_k8s_workers_admit_prometheus_for_their_metrics() -> None:
    rules = k8s_object("NetworkPolicy", "image-gateway-worker")["spec"]["ingress"]
    assert sum(_admits_prometheus(rule) for rule in rules) == 1


def test_k8s_network_policies_are_for_the_gateways_neighbours_and_listed() -> None:
    listed = yaml.safe_load((K8S / "kustomization.yaml").read_text(encoding="utf-8"))["resources"]
    assert "networkpolicy.yaml" in listed
    names = {obj["metadata"]["name"] for obj in k8s_objects() if obj["kind"] == "NetworkPolicy"}
    assert names == {"image-gateway-worker", "image-gateway-redis"}
    url = urlsplit(k8s_object("ConfigMap", "image-gateway-env")["data"]["REDIS_URL"])
    assert url.port == 6379, "the Redis policy's port is the one the gateway dials"


def test_gateway_config_protects_metrics_with_the_key_prometheus_sends(tmp_path: Path) -> None:
    text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    config = parse_config(text, environ=placeholder_env(text))
    assert config.server.metrics_access == "admin_key" and metrics_protected(config)
    (key,) = [key for key in yaml.safe_load(text)["auth"]["admin_keys"] if key["name"] == "prometheus"]
    assert key["hash"] == "${METRICS_KEY_HASH}", "the hash comes from the environment, the key never appears"
    # The deploy config as it serves (its store and Redis swapped for local ones): /metrics wants that key.
    served = msgspec.structs.replace(
        config, image_store=DirectoryStoreConfig(path=str(tmp_path)), redis=type(config.redis)()
    )
    with TestClient(create_app(served)) as test_client:
        assert test_client.get("/metrics").status_code == 401
        client_key = test_client.get("/metrics", headers={"Authorization": "Bearer test-client-key"})
        assert client_key.status_code == 401
        scraped = test_client.get(
            "/metrics", headers={"Authorization": f"Bearer {placeholder_key('METRICS_KEY_HASH')}"}
        )
        assert scraped.status_code == 200 and "image_gateway_" in scraped.text


def test_the_deploy_gateway_stays_ready_without_its_gpu_workers(tmp_path: Path) -> None:
    """deploy/README's "No GPU? Apply k8s-overlays/no-gpu": the shipped config with its workers absent answers
    /ready 200 (the kubelet keeps every replica), with `local-gpu` unready in the body and the gauge, and no worker
    address."""
    from tests.servers import free_port

    text = GATEWAY_CONFIG.read_text(encoding="utf-8")
    config = parse_config(text, environ=placeholder_env(text))
    name, _, local = _local_provider(GATEWAY_CONFIG)
    absent = f"http://127.0.0.1:{free_port()}"
    providers = {**config.providers, name: msgspec.structs.replace(local, workers=[absent])}
    served = msgspec.structs.replace(
        config, image_store=DirectoryStoreConfig(path=str(tmp_path)), redis=type(config.redis)(), providers=providers
    )
    with TestClient(create_app(served)) as test_client:
        ready = test_client.get("/ready")
        scraped = test_client.get(
            "/metrics", headers={"Authorization": f"Bearer {placeholder_key('METRICS_KEY_HASH')}"}
        ).text
    assert ready.status_code == 200, ready.text
    assert ready.json()["providers"][name] == {"ready": False, "workers": 1, "workers_up": 0}
    assert absent not in ready.text
    assert f'image_gateway_provider_ready{{provider="{name}"}} 0.0' in scraped
    probe = _container("image-gateway")["readinessProbe"]["httpGet"]["path"]
    assert probe == "/ready"


def test_prometheus_sends_the_metrics_key_in_compose() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "image-gateway"]
    authorization = job["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer" and "credentials" not in authorization
    path = Path(authorization["credentials_file"])
    assert path.parent == Path("/run/secrets"), "compose mounts a service's secrets under /run/secrets"
    services, secrets = compose()["services"], compose()["secrets"]
    assert path.name in services["prometheus"]["secrets"]
    assert secrets[path.name] == {"environment": "METRICS_KEY"}
    assert services["gateway"]["environment"]["METRICS_KEY_HASH"].startswith("${METRICS_KEY_HASH:?")
    assert "secrets" not in services["gateway"], "the gateway holds the hash alone"
    assert env_example()["METRICS_KEY"] == env_example()["METRICS_KEY_HASH"] == ""


def test_prometheus_sends_the_metrics_key_in_kubernetes() -> None:
    config = yaml.safe_load((DEPLOY / "prometheus" / "prometheus-kubernetes.yml").read_text(encoding="utf-8"))
    (job,) = [job for job in config["scrape_configs"] if job["job_name"] == "image-gateway"]
    authorization = job["authorization"]
    assert authorization.get("type", "Bearer") == "Bearer" and "credentials" not in authorization
    path = Path(authorization["credentials_file"])
    # Where the Prometheus Operator mounts `spec.secrets`: /etc/prometheus/secrets/<secret>/<key>.
    assert path.parent.parent == Path("/etc/prometheus/secrets")
    assert path.name in k8s_object("Secret", path.parent.name)["stringData"]
    assert "METRICS_KEY_HASH" in k8s_object("Secret", "image-gateway-secrets")["stringData"]


# === docs/operations.md ===


def test_docs_describe_every_metric_with_its_type_and_labels(
    served_families: dict[str, str], worker_families: dict[str, str]
) -> None:
    rows = docs_rows()
    families = {**gateway_families(worker_families), **gateway_families(served_families)}  # the workers' too
    wrappers = metric_wrappers()
    for name, kind in families.items():
        assert name in rows, f"docs/operations.md has no row for the metric {name}"
        cells = rows[name]
        assert cells[1] == kind, f"{name}: documented as {cells[1]!r}, served as {kind!r}"
        if name in wrappers:
            documented = set(code_spans(cells[2]))
            assert documented == set(wrappers[name]._labelnames), f"{name}: labels {sorted(documented)}"
        assert cells[3], f"{name}: say what it means"
    stale = {row for row in rows if row.startswith("image_gateway_")} - set(families)
    assert not stale, f"docs/operations.md describes metrics neither the gateway nor a worker serves: {sorted(stale)}"


def test_docs_describe_every_config_field_with_its_default() -> None:
    rows = docs_rows()
    fields = config_fields()
    for path, entries in fields.items():
        assert path in rows, f"docs/operations.md has no row for the config field `{path}`"
        defaults = {repr(default) for default, _ in entries}
        assert len(defaults) == 1, f"{path}: kinds disagree on the default ({defaults}); document them apart"
        default, required = entries[0]
        cell = rows[path][2]
        if required:
            assert cell.startswith("required"), f"{path}: documented default {cell!r}, but it is required"
        elif isinstance(default, Block):
            said = [_yaml_or_none(span) for span in code_spans(cell) + code_spans(rows[path][3])]
            for name, value in default.overrides:  # a block whose default here is not the block's own
                assert any(isinstance(s, dict) and s.get(name) == value for s in said), (
                    f"{path}: its default sets `{name}: {value!r}`, unlike the block's own; say so in its row"
                )
        else:
            spans = code_spans(cell)
            assert spans, f"{path}: documented default {cell!r}, expected `{default!r}`"
            expected = list(default) if isinstance(default, tuple) else default  # YAML has lists, not tuples
            assert yaml.safe_load(spans[0]) == expected, f"{path}: documented default {spans[0]}, code says {default!r}"
        assert rows[path][3], f"{path}: say what it means"
    prefixes = ("server", "redis", "auth", "image_store", "providers", "models", "<")
    documented = {row for row in rows if row.split(".")[0].split("[")[0] in prefixes or row.startswith("<")}
    stale = documented - set(fields)
    assert not stale, f"docs/operations.md describes config fields that do not exist: {sorted(stale)}"


_AMOUNT = re.compile(r"(\d+)(?:\N{MULTIPLICATION SIGN}(\d+))?(?: (KiB|MiB|s)\b)?")  # 25 MiB, 4096 by 4096, 120 s
_UNIT = {None: 1, "s": 1, "KiB": 1024, "MiB": 1024 * 1024}


def test_reliability_md_limits_state_the_config_defaults() -> None:
    """docs/reliability.md's table of bounds ("what | setting | default | answer") says the code's defaults."""
    fields = config_fields()
    checked = 0
    for line in RELIABILITY.read_text(encoding="utf-8").splitlines():
        cells = [cell.strip() for cell in line.strip().split("|")[1:-1]]
        spans = code_spans(cells[1]) if len(cells) == 4 else []
        if not spans or spans[0] not in fields:
            assert not spans, f"docs/reliability.md names a setting that does not exist: {spans[0]}"
            continue
        amount = _AMOUNT.match(cells[2])
        assert amount, f"{spans[0]}: cannot read the default {cells[2]!r}"
        number, times, unit = amount.groups()
        documented = int(number) * (int(times) if times else 1) * _UNIT[unit]
        default = fields[spans[0]][0][0]
        assert documented == default, f"docs/reliability.md: {spans[0]} is {cells[2]!r}, the code says {default!r}"
        checked += 1
    assert checked >= 10, "docs/reliability.md's table of bounds was not found"


def test_docs_cover_errors_env_commands_and_operations() -> None:
    text = OPERATIONS.read_text(encoding="utf-8")
    for code in ErrorCode:
        assert f"`{code.value}`" in text, f"error code {code.value} missing"
    assert "errors.md" in text
    for name in ("PORT", "IMAGE_GATEWAY_STORE", "IMAGE_GATEWAY_MODEL_DIR", "PROMETHEUS_MULTIPROC_DIR", "X-Request-ID"):
        assert f"`{name}`" in text, f"{name} missing"
    commands = build_parser()._subparsers._group_actions[0].choices  # type: ignore[union-attr]
    for command in commands:
        assert f"image-gateway {command}" in text, f"the `{command}` command is not described"
    for route in ("/health", "/ready", "/metrics", "/docs"):
        assert f"`{route}`" in text
    for event in ("request", "upstream_attempt"):
        assert f"`{event}`" in text
    for heading in ("Scaling out", "Graceful shutdown", "Health and readiness", "Logs", "Metrics", "Configuration"):
        assert re.search(rf"^#+ .*{heading}", text, flags=re.MULTILINE | re.IGNORECASE), heading


def test_docs_error_table_is_the_one_in_errors_md() -> None:
    errors = (ROOT / "docs" / "errors.md").read_text(encoding="utf-8").splitlines()
    table = [line for line in errors if re.match(r"\| `[a-z_]+` +\| \d{3} ", line)]
    assert len(table) == len(ErrorCode)
    operations = OPERATIONS.read_text(encoding="utf-8").splitlines()
    for line in table:
        assert line in operations, f"docs/operations.md's error table differs from docs/errors.md at {line[:40]!r}"
