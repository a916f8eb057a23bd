"""The layout's promises that an import graph alone cannot show."""

from __future__ import annotations

import subprocess
import sys
import textwrap

from gwtesting import ROOT, env, free_port, running_sandbox

# Serves a few requests in live mode (sandbox URL in argv[1]), then reports which
# top-level packages the process loaded.
LIVE_PROCESS = textwrap.dedent("""
    import asyncio, sys
    import aiohttp
    from aiohttp import web
    from gateway.app import create_app
    from gateway.config import load_config

    async def main(url):
        config = load_config(None, env={
            "GW_UPSTREAM_MODE": "live", "GW_UPSTREAM_BASE_URL": url,
            "GW_UPSTREAM_IDENTITY_URL": url + "/connect/token",
            "ABCONNECT_USERNAME": "gateway", "ABCONNECT_PASSWORD": "sandbox",
        })
        runner = web.AppRunner(create_app(config))
        await runner.setup()
        site = web.TCPSite(runner, "127.0.0.1", 0)
        await site.start()
        base = f"http://127.0.0.1:{runner.addresses[0][1]}"
        async with aiohttp.ClientSession() as http:
            for path in ("/readyz", "/api/Seller?PageSize=1", "/", "/openapi.json"):
                async with http.get(base + path) as resp:
                    assert resp.status == 200, (path, resp.status, await resp.text())
        await runner.cleanup()
        print(sorted({name.split(".")[0] for name in sys.modules}))

    asyncio.run(main(sys.argv[1]))
""")


def test_a_live_mode_gateway_never_imports_the_sandbox() -> None:
    with running_sandbox(free_port()) as url:
        done = subprocess.run([sys.executable, "-c", LIVE_PROCESS, url], env=env(), cwd=ROOT,
                              capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr[-3000:]
    loaded = done.stdout.strip().splitlines()[-1]
    assert "'gateway'" in loaded and "'ui'" in loaded, loaded  # the check itself can see
    assert "'sandbox'" not in loaded, "live mode loaded the sandbox package"


def test_a_sandbox_mode_gateway_loads_it_only_through_embedded() -> None:
    """The counterpart, so the test above cannot pass by never being able to see it."""
    script = textwrap.dedent("""
        import sys
        from gateway import embedded
        from gateway.config import Config
        assert "sandbox" not in sys.modules
        embedded.aimed_at(Config(), "http://127.0.0.1:9")
        print("sandbox" in sys.modules)
    """)
    done = subprocess.run([sys.executable, "-c", script], env=env(), cwd=ROOT,
                          capture_output=True, text=True, timeout=60)
    assert done.returncode == 0, done.stderr[-3000:]
    assert done.stdout.strip() == "True"


async def test_ui_middlewares_run_on_ui_routes_only(start_gateway) -> None:
    gw = await start_gateway()
    lot_id = next(iter(gw.sandbox.data.lots))
    for path in (f"/api/Lot/{lot_id}", f"/api/v1/lots?ids={lot_id}", "/healthz", "/api/nope"):
        resp = await gw.client.get(path)
        assert "gw_session" not in resp.cookies, path  # no session was started
        assert "Content-Security-Policy" not in resp.headers, path
        assert not resp.content_type.startswith("text/html"), path
    resp = await gw.client.get("/")
    assert "gw_session" in resp.cookies and "Content-Security-Policy" in resp.headers
    resp = await gw.client.get("/ui/lots/1/override")  # a UI path, wrong method: a page
    assert resp.status == 405 and resp.content_type == "text/html"
    assert resp.headers["Allow"] == "POST"
