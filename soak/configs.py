"""The soak's config files, each derived from the shipped one in deploy/ (what differs is said here).

- gateway.yaml from deploy/config/gateway.yaml: the providers' ``base_url`` point at the emulators, the
  ``local-gpu`` workers at the two soak workers; the placeholder keys are replaced by the soak's three
  (budgeted, rate-limited, plain; each with webhooks to the soak's receiver); ``flux-schnell`` is priced
  (0.01 USD an image at both targets, so a budget can be checked to the cent); probes and job take-over
  are quicker (``redis.probe_interval_s`` 1, ``server.provider_probe_interval_s`` 2, ``jobs.claim_after_s``
  6) so that faults of seconds show. Every ``${VAR}`` of the shipped file stays and is set in the
  environment, as compose does.
- worker.yaml from deploy/config/worker.yaml: ``device: cpu`` and ``WORKER_MODEL_PATH=builtin:tiny-sdxl``.
- prometheus.yml from deploy/prometheus/prometheus.yml: the replicas and workers as static targets, the
  credentials in files of the soak's directory, a short scrape interval, and the soak's rules file
  (soak/rules.py).
- haproxy.cfg: the load balancer of the topology (the shipped deployments use a Kubernetes Service or
  compose's DNS instead): round robin over the replicas, health-checked on ``/ready`` as the Kubernetes
  readiness probe of deploy/k8s/gateway.yaml does (every 5 s, out after 3 failures).
"""

from __future__ import annotations

import base64
import re
import secrets
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from gateway.admission.auth import hash_key

if TYPE_CHECKING:
    from soak.topology import Topology

DEPLOY = Path(__file__).resolve().parent.parent / "deploy"
BUCKET = "images"
EMULATOR_ORDER = ["melious", "nebul", "pomelo", "nebulablock", "openai"]  # python -m tests.emulators all
EMULATOR_API_KEY = "test-key"  # tests/emulators' default
PRICE_PER_IMAGE = 0.01
# The budgeted key's daily budget: spent within half a minute at the soak's pace, so that refusals show in the
# suite's 40-s run too (tests/soak) even on a busy machine (0.50 was not spent in 40 s there).
BUDGET_USD = 0.3
RATE_LIMITED = {"requests": 5, "period_s": 10}
PROVIDER_EMULATOR = {
    "melious": "melious",
    "nebul": "nebul",
    "pomelo-midjourney": "pomelo",
    "pomelo-flux": "pomelo",
    "nebulablock": "nebulablock",
    "nebulablock-v1": "nebulablock",
}


@dataclass(frozen=True)
class Secrets:
    """The soak's credentials, made fresh for each run."""

    keys: dict[str, str]  # inbound key name -> key
    admin_key: str  # the operators' key of /console (the shipped config's `operator`, where it has one)
    metrics_key: str
    worker_token: str
    store_secret: str
    webhook_secret: str
    s3_access_key: str
    s3_secret_key: str

    @classmethod
    def new(cls) -> Secrets:
        from tests.seaweedfs import ACCESS_KEY, SECRET_KEY

        return cls(
            keys={name: f"sk-soak-{name}-{secrets.token_hex(8)}" for name in ("plain", "budget", "limited")},
            admin_key=secrets.token_hex(16),
            metrics_key=secrets.token_hex(16),
            worker_token=secrets.token_hex(16),
            store_secret=secrets.token_hex(16),
            webhook_secret="whsec_" + base64.b64encode(secrets.token_bytes(32)).decode(),
            s3_access_key=ACCESS_KEY,
            s3_secret_key=SECRET_KEY,
        )


def environment(topology: Topology) -> dict[str, str]:
    """Every ``${VAR}`` of deploy/config/gateway.yaml and worker.yaml, as compose's env file would give them."""
    s = topology.secrets
    return {
        "REDIS_URL": topology.redis_url,
        "S3_BUCKET": BUCKET,
        "S3_ENDPOINT_URL": topology.s3_endpoint,
        "S3_REGION": "us-east-1",
        "S3_URL_MODE": "gateway",
        "AWS_ACCESS_KEY_ID": s.s3_access_key,
        "AWS_SECRET_ACCESS_KEY": s.s3_secret_key,
        "STORE_SECRET": s.store_secret,
        "PUBLIC_BASE_URL": topology.lb_url,
        "MELIOUS_API_KEY": EMULATOR_API_KEY,
        "NEBUL_API_KEY": EMULATOR_API_KEY,
        "POMELO_API_KEY": EMULATOR_API_KEY,
        "NEBULABLOCK_API_KEY": EMULATOR_API_KEY,
        "WORKER_TOKEN": s.worker_token,
        "METRICS_KEY_HASH": hash_key(s.metrics_key),
        "ADMIN_KEY_HASH": hash_key(s.admin_key),
        "WORKER_MODEL_PATH": "builtin:tiny-sdxl",
    }


_REQUIRED_VARIABLE = re.compile(r"\$\{([A-Z0-9_]+)\}")  # ${VAR} with no :-default


def _load(path: Path) -> dict[str, Any]:
    loaded: dict[str, Any] = yaml.safe_load(path.read_text())
    return loaded


def check_environment(env: dict[str, str]) -> None:
    """A clear error when a shipped config names a ``${VAR}`` the soak does not set (a new one in deploy/)."""
    for name in ("gateway.yaml", "worker.yaml"):
        text = "\n".join(line.split("#", 1)[0] for line in (DEPLOY / "config" / name).read_text().splitlines())
        missing = sorted(set(_REQUIRED_VARIABLE.findall(text)) - set(env))
        if missing:
            needed = ", ".join(missing)
            raise RuntimeError(f"deploy/config/{name} needs {needed}: set it in soak/configs.py environment()")


def write_worker_config(directory: Path) -> Path:
    config = _load(DEPLOY / "config" / "worker.yaml")
    local = config["providers"]["local"]
    local["device"] = "cpu"  # the tiny model on the CPU: no GPU here
    local.pop("dtype", None)
    path = directory / "worker.yaml"
    path.write_text("# Derived from deploy/config/worker.yaml by soak/configs.py\n" + yaml.safe_dump(config))
    return path


def write_gateway_config(topology: Topology) -> Path:
    config = _load(DEPLOY / "config" / "gateway.yaml")
    s = topology.secrets
    config["server"].update({"host": "127.0.0.1", "provider_probe_interval_s": 2})
    config["redis"]["probe_interval_s"] = 1
    config["jobs"] = {"claim_after_s": 6, "consumers": 4}
    hooks = {"secret": s.webhook_secret, "allow_hosts": ["127.0.0.1"], "allow_private": True, "allow_http": True}
    unlimited = {"requests": 1_000_000, "images": 1_000_000, "period_s": 60}
    config["auth"]["keys"] = [
        {"name": "plain", "hash": hash_key(s.keys["plain"]), "limits": unlimited, "webhooks": hooks},
        {
            "name": "budget",
            "hash": hash_key(s.keys["budget"]),
            "models": ["flux-schnell"],
            "limits": unlimited,
            "budget": {"amount": BUDGET_USD, "period": "day", "currency": "USD"},
            "webhooks": hooks,
        },
        {"name": "limited", "hash": hash_key(s.keys["limited"]), "limits": RATE_LIMITED, "webhooks": hooks},
    ]
    config["console"] = {"prometheus_url": topology.prometheus_url}  # the charts read the soak's Prometheus
    config["webhooks"] = {"attempts": 8, "backoff_initial_s": 0.5, "backoff_max_s": 2.0, "timeout_s": 5}
    for name, provider in config["providers"].items():
        if name in PROVIDER_EMULATOR:
            provider["base_url"] = topology.emulator_url(PROVIDER_EMULATOR[name])
        elif provider["kind"] == "local":
            provider["workers"] = [f"http://127.0.0.1:{port}" for port in topology.worker_ports]
    for model in config["models"]:
        if model["name"] == "flux-schnell":
            for target in model["targets"]:
                target["price"] = {"currency": "USD", "per_image": PRICE_PER_IMAGE}
    path = topology.dir / "gateway.yaml"
    header = "# Derived from deploy/config/gateway.yaml by soak/configs.py; ${VAR}s come from the environment\n"
    path.write_text(header + yaml.safe_dump(config, sort_keys=False))
    return path


def write_haproxy_config(topology: Topology) -> Path:
    servers = "\n".join(
        f"    server gateway-{i} 127.0.0.1:{port} check inter 5s fall 3 rise 1"
        for i, port in enumerate(topology.replica_ports, 1)
    )
    text = f"""# The soak's load balancer (soak/configs.py): round robin over the gateway replicas.
global
    maxconn 4096

defaults
    mode http
    timeout connect 2s
    timeout client 180s
    timeout server 180s
    # A connection refused by a replica that just died is tried on another; a request a replica
    # took and then died with is not replayed (generations are not idempotent): the client sees a 502.
    retries 3
    option redispatch
    retry-on conn-failure

frontend gateway
    bind 127.0.0.1:{topology.lb_port}
    default_backend replicas

backend replicas
    balance roundrobin
    # The readiness probe of deploy/k8s/gateway.yaml: every 5 s, 2 s to answer, out after 3 failures, back after 1.
    option httpchk GET /ready
    timeout check 2s
{servers}
"""
    path = topology.dir / "haproxy.cfg"
    path.write_text(text)
    return path


def write_prometheus_config(topology: Topology) -> Path:
    config = _load(DEPLOY / "prometheus" / "prometheus.yml")
    interval = f"{topology.scrape_interval_s:g}s"
    config["global"] = {"scrape_interval": interval, "evaluation_interval": interval}
    config["rule_files"] = [str(topology.rules)]
    metrics_key = topology.dir / "metrics_key"
    metrics_key.write_text(topology.secrets.metrics_key)
    worker_token = topology.dir / "worker_token"
    worker_token.write_text(topology.secrets.worker_token)
    for job in config["scrape_configs"]:
        if job["job_name"] == "image-gateway":
            job["authorization"]["credentials_file"] = str(metrics_key)
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in topology.replica_ports]}]
        elif job["job_name"] == "image-gateway-worker":
            job["authorization"]["credentials_file"] = str(worker_token)
            job.pop("dns_sd_configs", None)
            job["static_configs"] = [{"targets": [f"127.0.0.1:{port}" for port in topology.worker_ports]}]
    path = topology.dir / "prometheus.yml"
    path.write_text("# Derived from deploy/prometheus/prometheus.yml by soak/configs.py\n" + yaml.safe_dump(config))
    return path
