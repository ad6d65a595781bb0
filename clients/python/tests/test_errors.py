"""Typed errors for the statuses a demanding caller handles apart: 404, 409, 413, 429 (with
``Retry-After``) and 507, each with the server's code and message, from the real server."""

from __future__ import annotations

import hashlib
import os
import tempfile
from pathlib import Path
from typing import Iterator

import pytest

import sandpit
from sandpit import AsyncClient, Client, Limits

from .conftest import Server, _start, _stop

QUOTA_KEY = "quota-key-" + os.urandom(4).hex()


@pytest.fixture(scope="module")
def limited_server() -> Iterator[Server]:
    """A server with a 1 MiB upload limit and a tenant allowed one sandbox."""
    conf = Path(tempfile.mkdtemp(prefix="sandpit-pytest-conf-")) / "sandpit.toml"
    digest = hashlib.sha256(QUOTA_KEY.encode()).hexdigest()
    conf.write_text(
        "max_upload_mb = 1\n\n"
        f'[[tenants]]\nname = "small"\nkey_sha256 = "{digest}"\n'
        "[tenants.quotas]\nmax_sandboxes = 1\n"
    )
    s = _start("admin-token-" + os.urandom(6).hex(), ["--config", str(conf)])
    yield s
    _stop(s)
    conf.unlink()
    conf.parent.rmdir()


def test_404_and_409_carry_the_servers_code_and_message(client: Client) -> None:
    with client.create() as sb:
        with pytest.raises(sandpit.NotFoundError) as nf:
            sb.files.read("/workspace/missing.txt")
        assert nf.value.status == 404 and nf.value.code == "not_found"
        assert "missing.txt" in nf.value.message
        sb.files.write("/workspace/d/f", b"x")
        with pytest.raises(sandpit.ConflictError) as c:
            sb.files.remove("/workspace/d")
        assert c.value.status == 409 and c.value.code == "not_empty" and c.value.message


def test_413_is_payload_too_large_with_the_limit(limited_server: Server) -> None:
    with limited_server.client() as c, c.create() as sb:
        with pytest.raises(sandpit.PayloadTooLargeError) as big:
            sb.files.write("/workspace/big.bin", b"\0" * (2 << 20))
        assert big.value.status == 413 and big.value.code == "payload_too_large"
        assert big.value.message
        assert isinstance(big.value, sandpit.BadRequestError)
        sb.files.write("/workspace/small.bin", b"\1" * 1000)
        assert sb.files.read("/workspace/small.bin") == b"\1" * 1000


def test_429_is_quota_exceeded_with_retry_after(limited_server: Server) -> None:
    with Client(limited_server.url, QUOTA_KEY) as c:
        with c.create() as first:
            with pytest.raises(sandpit.QuotaExceededError) as q:
                c.create()
            err = q.value
            assert err.status == 429 and err.code == "quota_exceeded" and err.message
            assert err.retry_after is not None and err.retry_after > 0, repr(err)
            assert first.exec("echo still").stdout == "still\n"
        # The quota frees with the sandbox.
        with c.create() as again:
            assert again.status == "running"


async def test_429_in_the_async_client(limited_server: Server) -> None:
    async with AsyncClient(limited_server.url, QUOTA_KEY) as c:
        async with c.create():
            with pytest.raises(sandpit.QuotaExceededError) as q:
                await c.create()
            assert q.value.retry_after is not None


def test_507_is_no_space_when_the_sandbox_disk_is_full(client: Client) -> None:
    try:
        sb = client.create(limits=Limits(disk_mb=16))
    except sandpit.SandpitError as e:
        if e.code == "not_supported":
            pytest.skip(f"this server has no per-sandbox disks: {e}")
        raise
    with sb:
        with pytest.raises(sandpit.NoSpaceError) as full:
            sb.files.write("/workspace/fill.bin", os.urandom(32 << 20))
        err = full.value
        assert err.status == 507 and err.code == "no_space" and err.message
        assert isinstance(err, sandpit.ServerError)
        # The sandbox still works once the failed upload is gone.
        assert sb.exec("echo ok").stdout == "ok\n"
        # The disk shows in the typed limits, and its use in a get.
        info = sb.refresh()
        assert info.limits.disk_mb == 16
        assert info.disk_used_mb is not None and 0 <= info.disk_used_mb <= 16
        # It grows while the sandbox runs, where the server may resize a mounted ext4.
        try:
            grown = sb.update(limits=Limits(disk_mb=32))
        except sandpit.BadRequestError as e:
            assert "CAP_SYS_RESOURCE" in e.message, e.message
            assert sb.refresh().limits.disk_mb == 16
        else:
            assert grown.limits.disk_mb == 32
            sb.files.write("/workspace/fits-now.bin", os.urandom(20 << 20))
