"""The load driver, against the real scenario servers."""

from __future__ import annotations

import socket
import threading

import pytest
from scenario_servers import start_scenario

from reaper_doctor.model.load import LoadResult
from reaper_doctor.system.load import drive, one_request, percentile


@pytest.mark.parametrize("host", ["localhost", "0.0.0.0", "::", "10.0.0.1", "127.0.0.2"])
def test_refuses_anything_but_loopback(host: str) -> None:
    with pytest.raises(ValueError, match="127.0.0.1"):
        drive(host, 80, requests=1, concurrency=1, timeout_s=1)


@pytest.mark.parametrize("kw", [{"requests": -1}, {"requests": 10**6}, {"concurrency": 0},
                                {"concurrency": 10_000}, {"timeout_s": 0}, {"port": 0}])
def test_refuses_unbounded_or_bad_arguments(kw: dict) -> None:
    args = {"host": "127.0.0.1", "port": 9, "requests": 1, "concurrency": 1,
            "timeout_s": 1.0, **kw}
    with pytest.raises(ValueError):
        drive(**args)


def test_percentile_nearest_rank() -> None:
    assert percentile([], 50) is None
    assert percentile([5.0], 99) == 5.0
    values = [float(v) for v in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0


def test_zero_requests() -> None:
    result = drive("127.0.0.1", 9, requests=0, concurrency=4, timeout_s=1)
    assert (result.sent, result.ok, result.p50_ms) == (0, 0, None)


def test_ok_against_fixed_fork_with_callback_in_caller_thread(spawner) -> None:
    _, port = start_scenario(spawner, "fixed-fork", "--work-ms", "5")
    seen: list[tuple[str, int]] = []
    result = drive("127.0.0.1", port, requests=20, concurrency=5, timeout_s=10,
                   on_result=lambda o: seen.append((o.outcome, threading.get_ident())))
    assert isinstance(result, LoadResult)
    assert (result.sent, result.ok, result.failed, result.hung) == (20, 20, 0, 0), result.errors
    assert len(seen) == 20 and {t for _, t in seen} == {threading.get_ident()}
    assert result.p50_ms is not None and result.p99_ms is not None
    assert 0 < result.p50_ms <= result.p99_ms
    assert [o.index for o in result.outcomes] == list(range(20))
    doc = result.as_dict()
    assert doc["requests"] == {"sent": 20, "ok": 20, "failed": 0, "hung": 0}


def test_ok_against_event_loop(spawner) -> None:
    _, port = start_scenario(spawner, "event-loop", "--work-ms", "5")
    result = drive("127.0.0.1", port, requests=20, concurrency=5, timeout_s=10)
    assert result.ok == 20, result.errors


def test_fd_leak_requests_hang(spawner) -> None:
    # The parent keeps a copy of each connection: the child's close() sends no
    # FIN, so a client reading until EOF waits for ever.
    _, port = start_scenario(spawner, "fd-leak", "--work-ms", "0")
    result = drive("127.0.0.1", port, requests=3, concurrency=3, timeout_s=1.0)
    assert (result.hung, result.ok, result.failed) == (3, 0, 0), result
    assert result.p50_ms is None
    assert all(o.latency_ms >= 1000 for o in result.outcomes)


def test_blocking_server_serialises_requests(spawner) -> None:
    _, port = start_scenario(spawner, "blocking", "--work-ms", "200", "--backlog", "8")
    result = drive("127.0.0.1", port, requests=5, concurrency=5, timeout_s=20)
    assert result.ok == 5, result.errors
    # One at a time: the last of five waited for the four before it.
    # (A busy machine can only make it slower.)
    assert max(o.latency_ms for o in result.outcomes) >= 4 * 200 * 0.9


def test_refused_connection_is_failed() -> None:
    # Bound but not listening: nobody else can take the port, and connect()
    # gets a RST (ECONNREFUSED).
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        result = drive("127.0.0.1", port, requests=3, concurrency=2, timeout_s=5)
    assert (result.failed, result.ok, result.hung) == (3, 0, 0)
    assert any("Connection refused" in e for e in result.errors), result.errors


def test_bad_reply_is_failed() -> None:
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(10)

        def answer_once() -> None:
            conn, _ = srv.accept()
            with conn:
                conn.recv(1024)
                conn.sendall(b"nope\r\n")

        t = threading.Thread(target=answer_once)
        t.start()
        try:
            outcome = one_request("127.0.0.1", srv.getsockname()[1], timeout_s=10)
        finally:
            t.join(timeout=15)
    assert outcome.outcome == "failed" and "bad reply" in (outcome.error or "")


def _serve_once(srv: socket.socket, reply: bytes, box: dict) -> threading.Thread:
    """Accept one connection on `srv`, keep what it received up to EOF (or
    the first 1024 bytes), answer `reply` and close."""
    def answer_once() -> None:
        conn, _ = srv.accept()
        with conn:
            box["got"] = conn.recv(1024)
            conn.sendall(reply)

    t = threading.Thread(target=answer_once)
    t.start()
    return t


@pytest.mark.parametrize("reply, outcome", [(b"HTTP/1.1 200 OK\r\n\r\nhi", "ok"),
                                            (b"HTTP/1.0 404 Not Found\r\n\r\n", "ok"),
                                            (b"HTTP/1.1 500 Oops\r\n\r\n", "failed"),
                                            (b"", "failed")])
def test_http_request_is_1_1_with_connection_close(reply: bytes, outcome: str) -> None:
    box: dict = {}
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(10)
        t = _serve_once(srv, reply, box)
        try:
            result = one_request("127.0.0.1", srv.getsockname()[1], timeout_s=10)
        finally:
            t.join(timeout=15)
    assert box["got"].startswith(b"GET / HTTP/1.1\r\n")
    assert b"\r\nConnection: close\r\n" in box["got"] and box["got"].endswith(b"\r\n\r\n")
    assert result.outcome == outcome, result


def test_raw_request_is_sent_as_given_then_half_closed() -> None:
    # An echo server reads until EOF: it answers only because the driver
    # shuts its sending side down after the request.
    box: dict = {}
    with socket.create_server(("127.0.0.1", 0)) as srv:
        srv.settimeout(10)

        def echo_until_eof() -> None:
            conn, _ = srv.accept()
            with conn:
                data = b""
                while chunk := conn.recv(1024):
                    data += chunk
                box["got"] = data
                conn.sendall(data)

        t = threading.Thread(target=echo_until_eof)
        t.start()
        try:
            result = one_request("127.0.0.1", srv.getsockname()[1], timeout_s=10,
                                 request=b"PING\r\n")
        finally:
            t.join(timeout=15)
    assert box["got"] == b"PING\r\n"
    assert result.outcome == "ok", result


def test_load_to_ipv6_loopback() -> None:
    if not socket.has_ipv6:
        pytest.skip("no IPv6 in this Python")
    try:
        srv = socket.create_server(("::1", 0), family=socket.AF_INET6)
    except OSError as e:
        pytest.skip(f"cannot bind ::1 here: {e}")
    box: dict = {}
    with srv:
        srv.settimeout(10)
        t = _serve_once(srv, b"HTTP/1.1 200 OK\r\n\r\n", box)
        try:
            result = drive("::1", srv.getsockname()[1], requests=1, concurrency=1, timeout_s=10)
        finally:
            t.join(timeout=15)
    assert result.ok == 1, result.errors
