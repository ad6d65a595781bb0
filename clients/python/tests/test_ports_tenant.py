"""Ports through the proxy, public port tokens, the caller's tenant and changing limits of
a running sandbox, against the real server."""

from __future__ import annotations

import httpx
import pytest

import sandpit
from sandpit import AsyncClient, Client, Limits, Sandbox

from .conftest import Server

APP = "import http.server as h; h.ThreadingHTTPServer(('127.0.0.1', 8124), h.SimpleHTTPRequestHandler).serve_forever()"

FORKS = """
import os, time
n = 0
try:
    while n < 400:
        if os.fork() == 0:
            time.sleep(2)
            os._exit(0)
        n += 1
except OSError:
    pass
print(n)
"""


def _serve(sandbox: Sandbox) -> None:
    sandbox.files.write_text("/srv/www/hello.txt", "hello through the proxy\n")
    web = sandbox.processes.start(["python3", "-c", APP], cwd="/srv/www")
    web.wait_port(8124, timeout_ms=30_000)


def test_port_request_reaches_the_server_inside(sandbox: Sandbox) -> None:
    _serve(sandbox)
    resp = sandbox.ports.get(8124, "/hello.txt")
    assert resp.status_code == 200
    assert resp.text == "hello through the proxy\n"
    # The app's own error statuses come back as responses, not exceptions.
    missing = sandbox.ports.get(8124, "/nope.txt")
    assert missing.status_code == 404 and "hello" not in missing.text
    assert sandbox.ports.url(8124, "/a/b").endswith(f"/v1/sandboxes/{sandbox.id}/ports/8124/a/b")
    # Nothing listens on this port: the proxy's own error is raised.
    with pytest.raises(sandpit.SandpitError) as err:
        sandbox.ports.get(8125, "/")
    assert err.value.status == 502 and err.value.code == "bad_gateway"
    with pytest.raises(ValueError):
        sandbox.ports.url(0)


def test_port_tokens_open_one_port_without_the_key(auth_server: Server) -> None:
    with auth_server.client() as client, client.create() as sandbox:
        _serve(sandbox)
        tok = sandbox.ports.create_token(8124)
        assert tok.port == 8124 and tok.token and tok.url
        assert tok.created_at is not None
        # Plain HTTP, no Authorization header: the token's URL is enough ...
        url = httpx.URL(tok.url)
        assert url.params.get("sandpit_token") == tok.token
        hello = url.copy_with(path=url.path.rstrip("/") + "/hello.txt")
        public = httpx.get(hello, timeout=30)
        assert public.status_code == 200 and public.text == "hello through the proxy\n"
        # ... and without it the proxy wants the key.
        bare = httpx.get(sandbox.ports.url(8124, "/hello.txt"), timeout=30)
        assert bare.status_code == 401
        listed = sandbox.ports.tokens()
        assert [t.port for t in listed] == [8124] and listed[0].token is None
        sandbox.ports.revoke_token(8124)
        assert sandbox.ports.tokens() == []
        assert httpx.get(hello, timeout=30).status_code == 401
        with pytest.raises(sandpit.NotFoundError):
            sandbox.ports.revoke_token(8124)
        # The header form works too, for that port only.
        again = sandbox.ports.create_token(8124)
        by_header = httpx.get(sandbox.ports.url(8124, "/hello.txt"), headers={"X-Sandpit-Port-Token": again.token or ""})
        assert by_header.status_code == 200
        other = httpx.get(sandbox.ports.url(8125, "/"), headers={"X-Sandpit-Port-Token": again.token or ""})
        assert other.status_code == 401


def test_tenant_reports_usage_and_server_caps(client: Client) -> None:
    before = client.tenant()
    assert before.tenant == "default"
    assert before.server_limits["max_output_bytes"] > 0
    with client.create():
        during = client.tenant()
        assert during.usage["sandboxes"] == before.usage.get("sandboxes", 0) + 1


def test_update_limits_of_a_running_sandbox(sandbox: Sandbox) -> None:
    info = sandbox.update(limits=Limits(memory_mb=300, pids=200))
    assert info.limits.memory_mb == 300 and info.limits.pids == 200
    # Fields left out keep their value.
    info = sandbox.update(limits={"open_files": 512})
    assert (info.limits.memory_mb, info.limits.pids, info.limits.open_files) == (300, 200, 512)
    assert sandbox.refresh().limits.memory_mb == 300
    # The new pids limit holds inside: forking stops short of it (a bounded loop of 400).
    out = sandbox.exec(["python3", "-c", FORKS]).check()
    assert 0 < int(out.stdout) < 200
    with pytest.raises(sandpit.BadRequestError):
        sandbox.update(limits={"memory_mb": -1})


async def test_async_ports_and_tenant(server: Server) -> None:
    async with AsyncClient(server.url) as client:
        assert (await client.tenant()).tenant == "default"
        sb = await client.create()
        try:
            await sb.files.write_text("/srv/www/hello.txt", "async hello\n")
            web = await sb.processes.start(["python3", "-c", APP], cwd="/srv/www")
            await web.wait_port(8124, timeout_ms=30_000)
            resp = await sb.ports.get(8124, "/hello.txt")
            assert resp.status_code == 200 and resp.text == "async hello\n"
            info = await sb.update(limits=Limits(memory_mb=256))
            assert info.limits.memory_mb == 256
        finally:
            await sb.delete()
