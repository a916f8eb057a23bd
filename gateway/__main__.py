"""Command line: `catalog-gateway serve` and `catalog-gateway sandbox`."""

from __future__ import annotations

import argparse
import gc
import sys

from gateway import logs
from gateway.audit import AuditLog
from gateway.cache import RedisRefused
from gateway.config import ConfigError, is_loopback, load_config


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="catalog-gateway", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    serve = sub.add_parser("serve", help="run the gateway")
    serve.add_argument("--config", default="config.toml", help="TOML file (default: %(default)s)")
    serve.add_argument("--host", help="bind address (overrides server.host)")
    serve.add_argument("--port", type=int, help="listen port (overrides server.port)")
    sandbox = sub.add_parser("sandbox", help="run the stand-in upstream alone")
    sandbox.add_argument("--host", default="127.0.0.1")
    sandbox.add_argument("--port", type=int, default=8081)
    sandbox.add_argument("--latency-ms", type=float, default=600.0)
    sandbox.add_argument("--jitter-ms", type=float, default=100.0)
    sandbox.add_argument("--seed", type=int, default=1)
    args = parser.parse_args(argv)

    logs.configure()  # every log line one JSON object, on stderr (gateway/logs.py)
    if args.command == "sandbox":
        from gateway import embedded

        embedded.standalone(port=args.port, latency_ms=args.latency_ms,
                            jitter_ms=args.jitter_ms, seed=args.seed, host=args.host)
        return 0

    try:
        config = load_config(args.config)
        server = {k: v for k, v in (("host", args.host), ("port", args.port)) if v is not None}
        if server:
            config = config.replace(server=server)
    except ConfigError as exc:
        print(f"catalog-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    if not config.api_keys and not is_loopback(config.server.host):
        print(
            f"catalog-gateway: refusing to bind {config.server.host}: without GW_API_KEYS the "
            "gateway only listens on a loopback address (127.0.0.1, ::1, localhost)",
            file=sys.stderr,
        )
        return 2

    try:
        AuditLog(config.audit.path).check()
    except OSError as exc:
        print(f"catalog-gateway: configuration error: audit.path: cannot append to "
              f"{config.audit.path!r}: {exc.strerror}", file=sys.stderr)
        return 2

    from gateway.app import create_app

    # Start-up leaves ~150k long-lived objects (ABConnect pulls in pydantic and pandas).
    # Freezing them keeps every later full GC from rescanning them: a full collection
    # would otherwise pause the event loop for tens of milliseconds under load. (Before
    # forking workers, it also keeps their shared pages from being copied.)
    gc.collect()
    gc.freeze()
    if config.server.workers > 1:
        from gateway.workers import serve_workers

        return serve_workers(config, create_app)
    from gateway.admin import serve

    try:
        serve(create_app(config), config)
    except RedisRefused as exc:  # its message shows the URL without its password
        print(f"catalog-gateway: configuration error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
