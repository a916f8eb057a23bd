"""A stand-in for the ABConnect Catalog API and its identity server, on loopback.

The gateway's default upstream (`upstream.mode = "sandbox"`), the target of the tests and
the benchmarks. It is a separate package: the gateway imports it only in sandbox mode
(gateway/embedded.py), and it imports nothing of the gateway but the parameter rules
(gateway/params.py), so a live deployment never loads it.
"""

from sandbox.data import HTML_LOT_ID, HTML_SNIPPET, SandboxData
from sandbox.server import (
    DEMO_ACCOUNTS,
    SANDBOX,
    SERVICE_ACCOUNT,
    Sandbox,
    create_sandbox_app,
    main_sandbox,
    start_sandbox,
)

__all__ = [
    "DEMO_ACCOUNTS",
    "HTML_LOT_ID",
    "HTML_SNIPPET",
    "SANDBOX",
    "SERVICE_ACCOUNT",
    "Sandbox",
    "SandboxData",
    "create_sandbox_app",
    "main_sandbox",
    "start_sandbox",
]
