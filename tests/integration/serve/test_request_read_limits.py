"""Slow and large requests against a real `gateway serve`, from raw sockets, as an attacker sends them.

What reading a request may cost is bounded before auth and before any in-flight slot: a declared
body over `max_body_bytes` is answered 413 at once and the connection closed; a head trickled byte
by byte, or a body slower than `min_body_rate_bytes_s`, is answered 408 and closed; a head over
`max_head_bytes` or `max_headers` is answered 431. Each is counted in `gateway_rejected_total`.
"""

from __future__ import annotations

import contextlib
import re
import select
import socket
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import orjson
import pytest

from tests.support.gateway import GatewayInstance, start_gateway

HELLO = [{"role": "user", "content": "hello"}]
MOCK_ONLY = {"providers": {"mock": {"kind": "mock"}},
             "routes": {"demo": {"targets": [{"provider": "mock", "model": "mock-1"}]}}}
# Small timeouts so each attack is over in about a second; head limits at their defaults.
SHORT = {"head_timeout_s": 0.5, "body_timeout_s": 0.5, "min_body_rate_bytes_s": 1000, "max_body_bytes": 65536}
CHAT = b"POST /v1/chat/completions HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"


@pytest.fixture(scope="module")
def gateway(tmp_path_factory: pytest.TempPathFactory) -> Iterator[GatewayInstance]:
    gw = start_gateway(tmp_path_factory.mktemp("limits"), **MOCK_ONLY, tenants={"acme": {}}, server=SHORT)
    yield gw
    gw.stop()


def _connect(gw: GatewayInstance) -> socket.socket:
    host, port = gw.url.removeprefix("http://").rsplit(":", 1)
    sock = socket.create_connection((host, int(port)), timeout=5)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return sock


def _read_until_closed(sock: socket.socket, timeout: float) -> tuple[bytes, bool]:
    """Everything the server sends until it closes (True), or until `timeout` (False)."""
    sock.settimeout(timeout)
    data = b""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            chunk = sock.recv(65536)
        except TimeoutError:
            return data, False
        except ConnectionResetError:
            return data, True
        if not chunk:
            return data, True
        data += chunk
        sock.settimeout(max(0.01, deadline - time.monotonic()))
    return data, False


def _answered(sock: socket.socket, wait: float) -> bool:
    return bool(select.select([sock], [], [], wait)[0])


def _status(response: bytes) -> int:
    match = re.match(rb"HTTP/1\.1 (\d{3}) ", response)
    assert match, response[:200]
    return int(match.group(1))


def _error_code(response: bytes) -> str:
    head, _, body = response.partition(b"\r\n\r\n")
    assert b"\r\nconnection: close\r\n" in head.lower() + b"\r\n", head
    assert re.search(rb"\r\nx-request-id: \S+", head), head
    code: str = orjson.loads(body)["error"]["code"]
    return code


def _rejected(gw: GatewayInstance) -> dict[str, float]:
    text = httpx.get(gw.url + "/metrics", timeout=5).text
    return {m.group(1): float(m.group(2)) for m in re.finditer(r'gateway_rejected_total\{reason="(\w+)"\} (\S+)', text)}


class _Counted:
    """How much each refusal reason grew in gateway_rejected_total over a block."""

    def __init__(self, gw: GatewayInstance) -> None:
        self.gw = gw

    def __enter__(self) -> _Counted:
        self.before = _rejected(self.gw)
        return self

    def __exit__(self, *exc: object) -> None:
        after = _rejected(self.gw)
        self.grown = {k: v - self.before.get(k, 0) for k, v in after.items() if v != self.before.get(k, 0)}


def _rss_kb(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1])
    raise AssertionError("no VmRSS")


@pytest.mark.parametrize("head", [
    CHAT + b"content-length: 1000000000\r\n\r\n",                                    # unauthenticated model call
    b"GET /healthz HTTP/1.1\r\nhost: gw\r\ncontent-length: 65537\r\n\r\n",            # operations pool
    b"POST /admin/keys HTTP/1.1\r\nhost: gw\r\ncontent-length: 99999999999\r\n\r\n",
])
def test_a_declared_body_over_the_limit_is_413_at_once_and_closed(gateway: GatewayInstance, head: bytes) -> None:
    with _Counted(gateway) as counted, _connect(gateway) as sock:
        started = time.monotonic()
        sock.sendall(head + b"x" * 1000)  # the body has begun and would go on
        response, closed = _read_until_closed(sock, 2)
        assert time.monotonic() - started < 0.5
    assert closed and _status(response) == 413 and _error_code(response) == "request_too_large"
    assert counted.grown == {"body_too_large": 1}


def test_a_declared_body_over_the_limit_reaches_the_sdk_as_413(gateway: GatewayInstance) -> None:
    with httpx.Client(base_url=gateway.url, timeout=5) as http:
        r = http.post("/v1/chat/completions", content=b"x" * 70_000,
                      headers={"authorization": f"Bearer {gateway.key('acme')}"})
        assert r.status_code == 413 and r.json()["error"]["code"] == "request_too_large"
        # the client reconnects and is served
        assert http.get("/healthz").status_code == 200


def test_a_head_trickled_byte_by_byte_is_408_within_the_timeout(gateway: GatewayInstance) -> None:
    with _Counted(gateway) as counted, _connect(gateway) as sock:
        started = time.monotonic()
        closed_at = None
        for byte in CHAT + b"x-slow: " + b"a" * 1000:  # never ends within the test
            sock.send(bytes([byte]))
            if _answered(sock, 0.02) or time.monotonic() - started > 3:
                break
        response, closed = _read_until_closed(sock, 3)
        closed_at = time.monotonic() - started
    assert closed and _status(response) == 408 and _error_code(response) == "request_timeout"
    assert closed_at < 0.5 + 0.3
    assert counted.grown == {"head_timeout": 1}


def test_a_connection_that_sends_nothing_is_closed_after_the_head_timeout(gateway: GatewayInstance) -> None:
    with _Counted(gateway) as counted, _connect(gateway) as sock:
        started = time.monotonic()
        response, closed = _read_until_closed(sock, 3)
        elapsed = time.monotonic() - started
    assert closed and response == b"" and 0.4 < elapsed < 1.0
    assert counted.grown == {"head_timeout": 1}


def test_a_body_below_the_minimum_rate_is_408_and_closed(gateway: GatewayInstance) -> None:
    with _Counted(gateway) as counted, _connect(gateway) as sock:
        sock.sendall(CHAT + f"authorization: Bearer {gateway.key('acme')}\r\ncontent-length: 5000\r\n\r\n".encode())
        started = time.monotonic()
        for _ in range(60):  # 10 bytes every 50 ms: 200 bytes/s, a fifth of the minimum
            sock.send(b" " * 10)
            if _answered(sock, 0.05):
                break
        response, closed = _read_until_closed(sock, 3)
        elapsed = time.monotonic() - started
    assert closed and _status(response) == 408 and _error_code(response) == "request_timeout"
    # due when 0.5 s + bytes / 1000 has passed: at 200 bytes/s, after 0.625 s
    assert 0.55 < elapsed < 1.0
    assert counted.grown == {"body_timeout": 1}
    # the access log has the request under the id the client was given, with the status it was given
    rid = re.search(rb"\r\nx-request-id: (\S+)", response).group(1).decode()  # type: ignore[union-attr]
    assert gateway.wait_log(rid)["status"] == 408


def test_a_body_at_the_minimum_rate_is_served(gateway: GatewayInstance) -> None:
    body = orjson.dumps({"model": "demo", "messages": [{"role": "user", "content": "hello" + " " * 2900}]})
    with _Counted(gateway) as counted, _connect(gateway) as sock:
        sock.sendall(CHAT + f"authorization: Bearer {gateway.key('acme')}\r\n"
                            f"content-length: {len(body)}\r\n\r\n".encode())
        for i in range(0, len(body), 500):  # 500 bytes every 0.2 s: 2,500 bytes/s, over 1.2 s in all
            sock.sendall(body[i:i + 500])
            time.sleep(0.2)
        sock.settimeout(5)
        response = sock.recv(65536)
    assert _status(response) == 200, response
    assert counted.grown == {}


def test_a_64_kb_header_and_5000_headers_are_431(gateway: GatewayInstance) -> None:
    heads = {
        "head_too_large": CHAT + b"x-big: " + b"a" * 65_536 + b"\r\n\r\n",
        "too_many_headers": CHAT + b"".join(b"x-h%d: 1\r\n" % i for i in range(5000)) + b"\r\n",
    }
    before = _rss_kb(gateway.process.pid)
    for reason, head in heads.items():
        for _ in range(20):  # enough that memory kept per attempt would show
            with _Counted(gateway) as counted, _connect(gateway) as sock:
                sock.sendall(head)
                response, closed = _read_until_closed(sock, 2)
            assert closed and _status(response) == 431, reason
            assert _error_code(response) == "request_header_fields_too_large"
            assert counted.grown == {reason: 1}
    assert _rss_kb(gateway.process.pid) - before < 8 * 1024


def test_a_64_mb_header_does_not_grow_the_process(gateway: GatewayInstance) -> None:
    pid = gateway.process.pid
    before = _rss_kb(pid)
    with _Counted(gateway) as counted, _connect(gateway) as sock:
        sock.sendall(CHAT + b"x-huge: ")
        sent = 0
        chunk = b"a" * 1_048_576
        try:
            while sent < 64 * 1_048_576:
                sock.sendall(chunk)
                sent += len(chunk)
        except (BrokenPipeError, ConnectionResetError):
            pass
        _read_until_closed(sock, 2)
    assert sent < 64 * 1_048_576, "the gateway took a 64 MB header"
    assert _rss_kb(pid) - before < 8 * 1024
    assert counted.grown == {"head_too_large": 1}
    assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200


# -- the done-when line: stalled strangers hold nothing that operators or tenants need -------------

def test_stalled_oversize_and_slow_requests_lock_out_neither_operations_nor_tenants(tmp_path: Path) -> None:
    # Timeouts at their defaults (10 s, 20 s): every attack below stays open throughout.
    gw = start_gateway(tmp_path, **MOCK_ONLY, tenants={"acme": {}},
                       server={"max_in_flight": 4, "admin_max_in_flight": 2, "max_body_bytes": 65536})
    stalled: list[socket.socket] = []
    stop = threading.Event()
    try:
        n = 4 + 2  # as many as both pools hold
        heads = [
            CHAT + b"content-length: 1000000\r\n\r\n",  # over-size, unauthenticated
            CHAT + b"authorization: Bearer sk-wrong-key-0123456789\r\ncontent-length: 60000\r\n\r\n",
            CHAT + b"content-length: 60000\r\n\r\n",  # no key at all, slow body
            b"GET /healthz HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000\r\n\r\n",
            b"GET /healthz HTTP/1.1\r\nhost: gw\r\ncontent-length: 60000\r\n\r\n",
            b"POST /admin/keys HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
            b"content-length: 60000\r\n\r\n",
            b"GET /metrics HTTP/1.1\r\nhost: gw\r\ncontent-length: 1000000\r\n\r\n",
            CHAT + b"x-stalled-head: ",  # a head that never ends
        ]
        for head in heads:
            for _ in range(n):
                sock = _connect(gw)
                sock.sendall(head + b"{")
                stalled.append(sock)

        def trickle() -> None:  # every stalled body keeps (slowly) arriving
            while not stop.wait(0.1):
                for sock in stalled:
                    try:
                        sock.send(b" ")
                    except OSError:
                        pass
        threading.Thread(target=trickle, daemon=True).start()
        time.sleep(0.3)

        with httpx.Client(base_url=gw.url, timeout=5) as http:
            for _ in range(3):
                started = time.monotonic()
                r = http.get("/healthz")
                assert r.status_code == 200 and time.monotonic() - started < 0.1
            assert http.get("/readyz").status_code == 200
            assert http.get("/metrics").status_code == 200
            assert http.get("/admin/keys", headers={"authorization": f"Bearer {gw.admin_key}"}).status_code == 200
        answer = gw.client().chat.completions.create(model="demo", messages=HELLO)
        assert answer.choices[0].message.content == "Mock answer to: hello"
    finally:
        stop.set()
        for sock in stalled:
            sock.close()
        gw.stop()


def test_a_body_cut_short_by_a_disconnect_is_not_served(gateway: GatewayInstance) -> None:
    # A whole JSON object, then the client leaves before the length it declared: what came is not
    # the request, so nothing may be reserved, forwarded or billed for it.
    body = orjson.dumps({"model": "demo", "messages": HELLO})
    with _connect(gateway) as sock:
        sock.sendall(CHAT + f"authorization: Bearer {gateway.key('acme')}\r\nx-request-id: cut-short-1\r\n"
                            f"content-length: {len(body) + 100}\r\n\r\n".encode() + body)
        time.sleep(0.1)
    record = gateway.wait_log("cut-short-1")
    assert record["status"] == 499 and record["client_disconnected"] is True
    assert not record.get("attempts") and not record.get("provider")


def test_every_worker_enforces_the_limits(tmp_path: Path) -> None:
    # Each worker builds its own app from the config; the protocol takes its limits from that app.
    gw = start_gateway(tmp_path, **MOCK_ONLY, tenants={"acme": {}}, args=["--workers", "2"],
                       server={"max_headers": 10, "max_body_bytes": 1000})
    try:
        deadline = time.monotonic() + 15
        while True:
            try:
                assert httpx.get(gw.url + "/healthz", timeout=5).status_code == 200
                break
            except httpx.TransportError:
                assert time.monotonic() < deadline
                time.sleep(0.2)
        for _ in range(6):  # new connections, spread over the workers
            with _connect(gw) as sock:
                sock.sendall(CHAT + b"".join(b"x-h%d: 1\r\n" % i for i in range(10)) + b"\r\n")
                response, _ = _read_until_closed(sock, 2)
            assert _status(response) == 431
            with _connect(gw) as sock:
                sock.sendall(CHAT + b"content-length: 1001\r\n\r\n")
                response, _ = _read_until_closed(sock, 2)
            assert _status(response) == 413
    finally:
        gw.stop()


def test_pipelined_requests_that_are_never_read_do_not_grow_the_process(gateway: GatewayInstance) -> None:
    # 200 KB of `GET /healthz` pipelined on each of 20 connections whose answers are never read:
    # uvicorn queued every one (thousands a connection, 168 MB in all); past MAX_PIPELINED
    # waiting requests the rest is dropped.
    get = b"GET /healthz HTTP/1.1\r\nhost: gw\r\n\r\n"
    before = _rss_kb(gateway.process.proc.pid)
    socks = []
    with _Counted(gateway) as counted:
        try:
            for _ in range(20):
                sock = _connect(gateway)
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
                sock.sendall(get * (200_000 // len(get)))
                socks.append(sock)
            time.sleep(1.0)
            grown_kb = _rss_kb(gateway.process.proc.pid) - before
            assert httpx.get(gateway.url + "/healthz", timeout=5).status_code == 200
        finally:
            for sock in socks:
                sock.close()
    assert grown_kb < 10_000, grown_kb
    assert counted.grown.get("too_many_pipelined") == 20


@pytest.mark.parametrize("request_bytes", [
    CHAT + b"content-length: 2\r\ncontent-length: 3\r\n\r\n{}",  # conflicting lengths (smuggling)
    CHAT + b"content-length: 2\r\ntransfer-encoding: chunked\r\n\r\n0\r\n\r\n",
    b"GET /healthz HTTP/1.1\r\nhost: gw\r\nbad header\r\n\r\n",
])
def test_an_unparsable_request_is_400_in_openais_error_shape(gateway: GatewayInstance, request_bytes: bytes) -> None:
    with _connect(gateway) as sock:
        sock.sendall(request_bytes)
        response, closed = _read_until_closed(sock, 2)
    assert closed and _status(response) == 400, response
    assert _error_code(response) == "invalid_http_request"


def test_an_answer_never_read_is_dropped_after_the_send_timeout(tmp_path: Path) -> None:
    # A ~16 MB answer whose client never reads it: the transport kept it, and the connection,
    # for as long as the client stayed (a stream's upstream connection and reservation too).
    gw = start_gateway(tmp_path, providers={"mock": {"kind": "mock", "mock_embedding_dims": 4096}},
                       routes={"emb": {"targets": [{"provider": "mock", "model": "mock-emb"}]}},
                       tenants={"acme": {}}, server={"send_timeout_s": 1})
    fds = Path(f"/proc/{gw.process.proc.pid}/fd")

    def sockets() -> int:
        count = 0
        for fd in fds.iterdir():
            with contextlib.suppress(FileNotFoundError):  # closed since it was listed
                count += fd.readlink().name.startswith("socket:")
        return count
    try:
        with gw.client() as client:  # a call first: the gateway opens what a call opens
            assert client.embeddings.create(model="emb", input="hi").data[0].embedding
        time.sleep(0.2)
        baseline = sockets()
        body = orjson.dumps({"model": "emb", "input": [f"text {i}" for i in range(200)]})
        with _Counted(gw) as counted, _connect(gw) as sock:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)
            sock.sendall(b"POST /v1/embeddings HTTP/1.1\r\nhost: gw\r\ncontent-type: application/json\r\n"
                         + f"authorization: Bearer {gw.key('acme')}\r\ncontent-length: {len(body)}\r\n\r\n".encode()
                         + body)
            assert sock.recv(12) == b"HTTP/1.1 200"
            started = time.monotonic()
            while time.monotonic() - started < 5 and sockets() > baseline:
                time.sleep(0.05)
            # The gateway let go of the connection (the kernel still owns what it could not send).
            assert 1 <= time.monotonic() - started < 3 and sockets() == baseline
        assert counted.grown == {"send_timeout": 1}
        assert gw.client().embeddings.create(model="emb", input="hi").data[0].embedding
    finally:
        gw.stop()


def test_an_oversize_request_pipelined_behind_a_call_is_answered_413_after_it(gateway: GatewayInstance) -> None:
    # It was dropped: the connection closed after the first answer, the 413 never sent.
    body = orjson.dumps({"model": "demo", "messages": HELLO})
    call = CHAT + f"authorization: Bearer {gateway.key('acme')}\r\ncontent-length: {len(body)}\r\n\r\n".encode() + body
    with _connect(gateway) as sock:
        sock.sendall(call + CHAT + b"content-length: 1000000000\r\n\r\n" + b"x" * 1000 + call)
        response, closed = _read_until_closed(sock, 4)
    assert closed and re.findall(rb"HTTP/1\.1 (\d{3}) ", response) == [b"200", b"413"]
    assert _error_code(response[response.index(b"HTTP/1.1 413"):]) == "request_too_large"
