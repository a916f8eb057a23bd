"""`server.workers = N`: N gateway processes accepting on one port (SO_REUSEPORT).

The parent only supervises: it starts the workers (and, in sandbox mode, one shared
sandbox process they all use, so every worker sees the same upstream data), forwards
SIGTERM/SIGINT to them and exits when they have. The workers share the Redis tier;
config validation refuses N > 1 with the in-memory cache. Each worker binds the API port,
and `server.admin_port` when set, with SO_REUSEPORT (gateway/admin.py); they log JSON
lines to the stderr they inherit (gateway/logs.py, set up before the fork), each line
with its worker's pid.
"""

from __future__ import annotations

import logging
import multiprocessing
import os
import signal
from collections.abc import Callable

from aiohttp import web

from gateway import embedded
from gateway.admin import serve
from gateway.config import Config

log = logging.getLogger(__name__)


def serve_workers(config: Config, make_app: Callable[[Config], web.Application]) -> int:
    ctx = multiprocessing.get_context("fork")
    children: list[multiprocessing.process.BaseProcess] = []
    if config.upstream.mode == "sandbox":
        config, sandbox = embedded.in_child_process(config, ctx)
        children.append(sandbox)

    def run(worker_config: Config) -> None:
        serve(make_app(worker_config), worker_config, reuse_port=True)

    workers = [ctx.Process(target=run, args=(config,), name=f"worker-{n}", daemon=False)
               for n in range(config.server.workers)]
    for worker in workers:
        worker.start()
    children[:0] = workers
    log.info("%d workers serving http://%s:%d", len(workers), config.server.host,
             config.server.port)

    def forward(signum: int, frame: object) -> None:
        for child in children:
            if child.is_alive() and child.pid is not None:
                signal_child(child.pid, signal.SIGTERM)

    signal.signal(signal.SIGTERM, forward)
    signal.signal(signal.SIGINT, forward)
    for worker in workers:
        worker.join()
    forward(signal.SIGTERM, None)  # the sandbox, once the workers are gone
    for child in children:
        child.join()
    return 0 if all(w.exitcode == 0 for w in workers) else 1


def signal_child(pid: int, signum: int) -> None:
    try:
        os.kill(pid, signum)
    except ProcessLookupError:
        pass
