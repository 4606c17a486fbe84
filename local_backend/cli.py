"""``image-gateway-worker``: serve a config's local models as a standalone GPU worker.

The worker reads the gateway's own config format (a ``kind: local`` provider with its
``models``; ``${ENV}`` values), so this command, a composition root, loads the file with
``gateway.config``. Nothing else in ``local_backend`` imports the gateway, and the gateway
never imports this package (docs/architecture.md, "Layers").
"""

from __future__ import annotations

import argparse
import sys

__all__ = ["build_parser", "main"]

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8090


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="image-gateway-worker",
        description="Serve the config's first `kind: local` provider's models as a standalone GPU worker.",
    )
    parser.add_argument("--config", help="YAML config file with a kind: local provider (default: the built-in one)")
    parser.add_argument("--host", default=DEFAULT_HOST, help=f"address to listen on (default: {DEFAULT_HOST})")
    parser.add_argument("--port", type=int, default=DEFAULT_PORT, help=f"port to listen on (default: {DEFAULT_PORT})")
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    from gateway.config import ConfigError, load_config
    from gateway.memory import return_large_buffers
    from gateway.observability.logs import config_secrets, configure_logging

    try:
        config = load_config(args.config)
    except ConfigError as exc:
        for error in exc.errors:
            print(f"config error: {error}", file=sys.stderr)
        return 1
    from local_backend.server import serve_worker  # brings torch

    return_large_buffers()
    configure_logging(config.server.log_level, config.server.log_prompts, secrets=config_secrets(config))
    return serve_worker(config, host=args.host, port=args.port)


if __name__ == "__main__":
    sys.exit(main())
