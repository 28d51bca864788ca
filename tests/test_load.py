"""The load driver, against the real scenario servers."""

from __future__ import annotations

import socket
import threading

import pytest
from scenario_servers import start_scenario

from reaper_doctor.model.load import LoadResult
from reaper_doctor.system.load import drive, one_request, percentile


@pytest.mark.parametrize("host", ["localhost", "0.0.0.0", "::1", "10.0.0.1", "127.0.0.2"])
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
