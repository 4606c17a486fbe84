"""The command line: serve, hash-key, check-config and store-setup (the GPU worker is ``image-gateway-worker``,
``local_backend/cli.py``)."""

from __future__ import annotations

import argparse
import math
import os
import sys
import tempfile
from typing import Any

from gateway.config import CONFIG_ENV, ConfigError, GatewayConfig, load_config, require_models
from schemas.local import LocalBackendSettings

__all__ = ["main"]

DESCRIPTION = """\
image-gateway: one gateway for image generation in the Melious, Nebul, Pomelo and
NebulaBlock dialects.

commands:
  serve          serve the gateway (image-gateway serve --config my.yaml)
  hash-key       print the sha256:<hex> form of an inbound key, for auth.keys
  check-config   check a config file: print every problem and exit 1, or print ok
  store-setup    give the S3 image store's bucket its lifecycle rule (expiry)

The GPU worker is its own command: image-gateway-worker --config worker.yaml

Where the gateway listens: --host/--port when given, else $PORT for the port, else the
config's server.host and server.port.
"""


def _serve(args: argparse.Namespace) -> int:
    import uvicorn

    from gateway.memory import return_large_buffers
    from gateway.serving import uvicorn_options

    config = _load_or_report(args.config, serving=True)
    if config is None:
        return 1
    return_large_buffers()  # each worker process does the same in create_app_from_env
    host, port = listen_address(args, config)
    options: dict[str, Any] = {
        "host": host,
        "port": port,
        "log_level": "warning",
        "access_log": False,  # the gateway logs one JSON line per request itself
        "timeout_graceful_shutdown": math.ceil(config.server.shutdown_grace_s),
        **uvicorn_options(config.server),  # header bytes, slow headers, idle keep-alive (gateway/serving.py)
    }
    refusal = workers_refusal(config, args.workers)
    if refusal is not None:
        print(f"config error: {refusal}", file=sys.stderr)
        return 1
    if args.workers > 1:
        # Each worker process loads the same file; metrics are pooled through a shared directory,
        # which must be named before any worker imports prometheus_client.
        os.environ[CONFIG_ENV] = os.path.abspath(args.config) if args.config else ""
        os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", tempfile.mkdtemp(prefix="image-gateway-metrics-"))
        from gateway.observability.logs import configure_logging

        configure_logging(config.server.log_level, config.server.log_prompts)
        # Checked here, before the processes start: each would refuse an evicting Redis in its lifespan, but
        # uvicorn's supervisor then stops with status 0.
        evicting = evicting_redis(config)
        if evicting is not None:
            print(f"config error: {evicting}", file=sys.stderr)
            return 1
        log_listening(host, port, args.workers)  # the supervisor binds the socket first thing in run()
        uvicorn.run("gateway.app:create_app_from_env", factory=True, workers=args.workers, **options)
        return 0
    from gateway.app import create_app

    _announcing_server(uvicorn.Config(create_app(config), **options)).run()
    return 0


def workers_refusal(config: GatewayConfig, workers: int) -> str | None:
    """Why ``serve --workers N`` must not run with ``config``; None when it may.

    Without ``redis.url`` async jobs live in each process's memory: a job accepted by one process is
    unknown to the others, so most of its lookups would answer 404. Several processes need the shared store.
    """
    if workers <= 1 or config.redis.url:
        return None
    return (
        f"`serve --workers {workers}` with no `redis.url` would keep async jobs in each process's own memory (the"
        " in-process job store): a job accepted by one process answers 404 from the others. Set `redis.url` (the"
        " shared job store, also for limits, budgets and Idempotency-Key), or serve with `--workers 1`"
    )


def evicting_redis(config: GatewayConfig) -> str | None:
    """Why the configured Redis is refused (it may evict keys, and ``redis.evicting_policy`` is ``refuse``); None
    when it is not, or when there is no Redis (``gateway.redis_health.check_eviction_policy``)."""
    if not config.redis.url:
        return None
    import asyncio

    import redis.asyncio as aioredis

    from gateway.redis_health import EvictingRedis, check_eviction_policy

    async def check() -> None:
        timeout = config.redis.timeout_s
        client = aioredis.Redis.from_url(config.redis.url, socket_timeout=timeout, socket_connect_timeout=timeout)
        try:
            await check_eviction_policy(client, config.redis.evicting_policy)
        finally:
            await client.aclose()

    try:
        asyncio.run(check())
    except EvictingRedis as exc:
        return str(exc)
    return None


def listen_address(args: argparse.Namespace, config: GatewayConfig) -> tuple[str, int]:
    """--host/--port when given; else $PORT for the port; else the config's ``server.host``/``server.port``."""
    host = args.host or config.server.host
    if args.port is not None:
        return host, args.port
    env_port = os.environ.get("PORT", "")
    return host, int(env_port) if env_port.strip() else config.server.port


def log_listening(host: str, port: int, workers: int = 1) -> None:
    import structlog

    shown = f"[{host}]" if ":" in host else host
    structlog.get_logger("gateway.cli").info("listening", url=f"http://{shown}:{port}", workers=workers)


def _announcing_server(config: Any) -> Any:
    """uvicorn's server, logging the URL it listens on once its socket is bound and the app has started.

    (Defined here so that ``check-config`` and ``hash-key`` never import uvicorn.)
    """
    import uvicorn

    class AnnouncingServer(uvicorn.Server):
        async def startup(self, sockets: Any = None) -> None:
            await super().startup(sockets)
            if self.started and self.servers and self.servers[0].sockets:
                host, port = self.servers[0].sockets[0].getsockname()[:2]
                log_listening(host, port)

    return AnnouncingServer(config)


def _hash_key(args: argparse.Namespace) -> int:
    from gateway.admission.auth import hash_key

    key = args.key if args.key != "-" else sys.stdin.readline().strip()
    if not key.strip():
        print("hash-key: the key is empty; give a key, or - and the key on standard input", file=sys.stderr)
        return 2
    print(hash_key(key))
    return 0


def _check_config(args: argparse.Namespace) -> int:
    config = _load_or_report(args.file)
    if config is None:
        return 1
    if not args.no_weights and _weights_missing(config, args.file):
        return 1
    worker_models = _worker_models(config)
    if not config.models and worker_models:  # a GPU worker's config: `image-gateway-worker` serves it
        print(f"{args.file}: ok ({worker_models} local models for `image-gateway-worker`; no `models`: not for serve)")
        return 0
    try:
        require_models(config, args.file)
    except ConfigError as exc:
        print(f"config error: {exc}", file=sys.stderr)
        return 1
    problem = None if args.no_store else _store_problem(config)
    if problem:
        print(f"{args.file}: {problem}", file=sys.stderr)
        return 1
    print(f"{args.file}: ok ({len(config.providers)} providers, {len(config.models)} models)")
    return 0


def _weights_missing(config: GatewayConfig, source: str) -> bool:
    """Print each in-process local model whose weights are not on this machine; whether there was one."""
    from gateway.config.weights import missing_weights

    problems = missing_weights(config)
    for problem in problems:
        print(f"config error: {source}: {problem}", file=sys.stderr)
    return bool(problems)


def _store_problem(config: GatewayConfig) -> str | None:
    """The image store's check (bucket there, credentials taken): what is wrong, or None."""
    import asyncio

    from gateway.images import StoreUnavailable, build_image_store

    async def check() -> None:
        store = build_image_store(config.image_store)
        try:
            await store.check()
        finally:
            await store.aclose()

    try:
        asyncio.run(check())
    except StoreUnavailable as exc:
        return str(exc)
    return None


def _store_setup(args: argparse.Namespace) -> int:
    from gateway.config import S3StoreConfig
    from gateway.images.setup import apply_lifecycle

    config = _load_or_report(args.config)
    if config is None:
        return 1
    store = config.image_store
    if not isinstance(store, S3StoreConfig):
        print("image_store.kind is directory: the gateway removes expired files itself; nothing to set up")
        return 0
    if args.print_only:
        from gateway.images.setup import manual_steps

        print(manual_steps(store))
        return 0
    applied, message = apply_lifecycle(store)
    print(message, file=sys.stdout if applied else sys.stderr)
    return 0 if applied else 1


def _worker_models(config: GatewayConfig) -> int:
    """How many models the config's local providers hold (what a GPU worker would serve)."""
    return sum(len(p.models) for p in config.providers.values() if isinstance(p, LocalBackendSettings))


def _load_or_report(path: str | None, *, serving: bool = False) -> GatewayConfig | None:
    """The config, or None after printing every problem; ``serving`` also refuses a config with no models."""
    try:
        config = load_config(path)
        if serving:
            require_models(config, path or "<built-in config>")
        return config
    except ConfigError as exc:
        for error in exc.errors:
            print(f"config error: {error}", file=sys.stderr)
        return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image-gateway", description=DESCRIPTION, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    commands = parser.add_subparsers(dest="command", required=True)
    serve = commands.add_parser("serve", help="serve the gateway")
    serve.add_argument("--config", help="YAML config file (default: the built-in one)")
    serve.add_argument("--host", help="address to listen on (default: from the config)")
    serve.add_argument("--port", type=int, help="port to listen on (default: $PORT, else the config's)")
    serve.add_argument("--workers", type=int, default=1, help="server processes sharing the port (default: 1)")
    serve.set_defaults(run=_serve)
    hashed = commands.add_parser("hash-key", help="print the sha256:<hex> form of an inbound key for auth.keys")
    hashed.add_argument("key", help="the key, or - to read it from standard input (keeps it out of shell history)")
    hashed.set_defaults(run=_hash_key)
    check = commands.add_parser("check-config", help="check a config file; prints every problem, exit 1")
    check.add_argument("file")
    check.add_argument("--no-store", action="store_true", help="do not reach the image store's bucket")
    check.add_argument(
        "--no-weights", action="store_true", help="do not look for local models' weights (not on this machine)"
    )
    check.set_defaults(run=_check_config)
    setup = commands.add_parser("store-setup", help="give the s3 image store's bucket its lifecycle rule (expiry)")
    setup.add_argument("--config", help="YAML config file (default: the built-in one)")
    setup.add_argument("--print", dest="print_only", action="store_true", help="print what to apply; change nothing")
    setup.set_defaults(run=_store_setup)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return int(args.run(args))


if __name__ == "__main__":
    sys.exit(main())
