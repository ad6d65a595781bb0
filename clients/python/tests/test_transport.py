"""Retries and timeouts of the transport, against a small flaky HTTP server the test runs on
loopback (the real sandpit server never drops connections on purpose)."""

from __future__ import annotations

import socket
import threading
from typing import Iterator, List

import pytest

import sandpit


class FlakyServer:
    """Accepts connections on loopback; drops the first ``drops`` of them right after reading
    the request, then answers every request 200 with ``body``."""

    def __init__(self, drops: int, body: bytes = b'{"sandboxes": []}') -> None:
        self.drops = drops
        self.body = body
        self.requests: List[str] = []
        self.sock = socket.socket()
        self.sock.bind(("127.0.0.1", 0))
        self.sock.listen(16)
        self.url = f"http://127.0.0.1:{self.sock.getsockname()[1]}"
        self.thread = threading.Thread(target=self._serve, daemon=True)
        self.thread.start()

    def _serve(self) -> None:
        while True:
            try:
                conn, _ = self.sock.accept()
            except OSError:
                return
            with conn:
                head = b""
                while b"\r\n\r\n" not in head:
                    chunk = conn.recv(65536)
                    if not chunk:
                        break
                    head += chunk
                self.requests.append(head.split(b"\r\n", 1)[0].decode())
                if len(self.requests) <= self.drops:
                    continue  # closed without an answer
                body = self.body
                conn.sendall(
                    b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n"
                    + f"Content-Length: {len(body)}\r\n\r\n".encode()
                    + body
                )

    def close(self) -> None:
        self.sock.close()


@pytest.fixture
def flaky() -> Iterator[FlakyServer]:
    s = FlakyServer(drops=2)
    yield s
    s.close()


def test_idempotent_calls_are_retried_after_a_dropped_connection(flaky: FlakyServer) -> None:
    with sandpit.Client(flaky.url, retries=2) as c:
        assert c.list() == []
    assert flaky.requests == ["GET /v1/sandboxes HTTP/1.1"] * 3


def test_retries_are_bounded(flaky: FlakyServer) -> None:
    with sandpit.Client(flaky.url, retries=1) as c:
        with pytest.raises(sandpit.ConnectionError):
            c.list()
    assert len(flaky.requests) == 2


def test_non_idempotent_calls_are_never_resent(flaky: FlakyServer) -> None:
    with sandpit.Client(flaky.url, retries=5) as c:
        with pytest.raises(sandpit.ConnectionError) as info:
            c.create()
    assert info.value.code == "connection_error"
    assert flaky.requests == ["POST /v1/sandboxes HTTP/1.1"]


async def test_async_client_retries_the_same_way(flaky: FlakyServer) -> None:
    async with sandpit.AsyncClient(flaky.url, retries=2) as c:
        assert await c.list() == []
    assert len(flaky.requests) == 3


def test_a_server_that_never_answers_raises_timeout_error() -> None:
    # Reads nothing and never answers: the client's own read timeout ends the call.
    with socket.socket() as silent:
        silent.bind(("127.0.0.1", 0))
        silent.listen(4)
        url = f"http://127.0.0.1:{silent.getsockname()[1]}"
        with sandpit.Client(url, timeout=0.5, retries=0) as c:
            with pytest.raises(sandpit.TimeoutError) as info:
                c.list()
    assert info.value.code == "client_timeout"
    assert isinstance(info.value, TimeoutError) and isinstance(info.value, sandpit.SandpitError)


def test_an_answer_that_is_not_json_is_a_sandpit_error() -> None:
    proxy = FlakyServer(drops=0, body=b"<html>a proxy's page</html>")
    try:
        with sandpit.Client(proxy.url) as c:
            with pytest.raises(sandpit.SandpitError) as info:
                c.list()
    finally:
        proxy.close()
    assert info.value.code == "invalid_response" and "proxy" in info.value.message
