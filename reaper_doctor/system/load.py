"""A bounded load driver for servers on loopback (127.0.0.1 or ::1) only.

Each request connects, sends a tiny HTTP/1.1 request with `Connection:
close`, and reads until EOF: the reply ends only when the last copy of the
server's socket is closed (a fork server's parent holds one copy, the child
another; FIN goes out when both are closed). That is what makes a leaked
accepted socket visible from outside: the read never ends. A raw request
(`request=` bytes, for servers that do not speak HTTP) is sent as given,
then the sending side is shut down, so a server that reads until EOF (an
echo server) sees the end of it. Outcomes:

- ``ok``: the reply ended with EOF within the timeout (for the HTTP
  request: an HTTP status line below 500);
- ``failed``: the connection was refused or reset, or the HTTP reply was
  not HTTP or a 5xx (the error is kept);
- ``hung``: no EOF (or no connection) within ``timeout_s``.

The work is bounded: ``requests`` requests at most, each within ``timeout_s``
(so the whole run takes about ``requests / concurrency * timeout_s`` at worst).
"""

from __future__ import annotations

import queue
import socket
import threading
import time
from collections import Counter
from collections.abc import Callable

from ..model.load import LoadResult, Outcome, _round

LOOPBACK = "127.0.0.1"
LOOPBACK6 = "::1"
MAX_REQUESTS = 100_000
MAX_CONCURRENCY = 256
REQUEST = (b"GET / HTTP/1.1\r\nHost: 127.0.0.1\r\nUser-Agent: reaper-doctor\r\n"
           b"Connection: close\r\n\r\n")
MAX_REPLY_BYTES = 1 << 20  # a scenario reply is a few dozen bytes


def percentile(values: list[float], pct: float) -> float | None:
    """Nearest-rank percentile (`pct` in 0..100) of `values`; None if empty."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, -(-len(ordered) * pct // 100))  # ceil(n * pct / 100), at least 1
    return ordered[int(rank) - 1]


def one_request(host: str, port: int, timeout_s: float, index: int = 0,
                request: bytes | None = None) -> Outcome:
    """Connect, send the request, read until EOF; never longer than `timeout_s`.
    `request` None: the HTTP GET, its reply checked; bytes: sent as given,
    then the sending side shut down, any reply accepted."""
    start = time.monotonic()
    deadline = start + timeout_s

    def elapsed_ms() -> float:
        return (time.monotonic() - start) * 1000

    reply = b""
    try:
        with socket.create_connection((host, port), timeout=timeout_s) as sock:
            sock.sendall(REQUEST if request is None else request)
            if request is not None:
                sock.shutdown(socket.SHUT_WR)
            while len(reply) < MAX_REPLY_BYTES:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("timed out")
                sock.settimeout(left)
                chunk = sock.recv(65536)
                if not chunk:
                    break
                reply += chunk
    except TimeoutError:
        return Outcome(index, "hung", elapsed_ms(), f"no EOF within {timeout_s:g} s")
    except OSError as e:
        return Outcome(index, "failed", elapsed_ms(), _describe(e))
    latency = elapsed_ms()
    if request is None and not _http_answered(reply):
        shown = reply.split(b"\r\n", 1)[0][:60].decode("latin-1") or "empty reply"
        return Outcome(index, "failed", latency, f"bad reply: {shown!r}")
    return Outcome(index, "ok", latency)


def _http_answered(reply: bytes) -> bool:
    """Whether `reply` starts with an HTTP status line whose code is below
    500: the server understood the request (a 404 is an answer too)."""
    parts = reply.split(b"\r\n", 1)[0].split(None, 2)
    return (len(parts) >= 2 and parts[0].startswith(b"HTTP/") and parts[1].isdigit()
            and len(parts[1]) == 3 and int(parts[1]) < 500)


def _describe(e: OSError) -> str:
    if e.errno is not None and e.strerror:
        return f"[Errno {e.errno}] {e.strerror}"
    return str(e) or type(e).__name__


def drive(host: str, port: int, requests: int, concurrency: int, timeout_s: float,
          on_result: Callable[[Outcome], object] | None = None,
          request: bytes | None = None) -> LoadResult:
    """Send `requests` requests to host:port, `concurrency` at a time, from threads.

    `host` must be "127.0.0.1" or "::1": the driver refuses to send load
    anywhere else (ValueError). `request`: see `one_request`. `on_result`
    is called once per request, in the calling thread (safe for a click
    progress bar), as results come in.
    """
    if host not in (LOOPBACK, LOOPBACK6):
        raise ValueError(f"load is sent to {LOOPBACK} or {LOOPBACK6} only, not to {host!r}")
    if not 0 < port < 65536:
        raise ValueError(f"port must be in 1..65535, not {port}")
    if not 0 <= requests <= MAX_REQUESTS:
        raise ValueError(f"requests must be in 0..{MAX_REQUESTS}, not {requests}")
    if not 1 <= concurrency <= MAX_CONCURRENCY:
        raise ValueError(f"concurrency must be in 1..{MAX_CONCURRENCY}, not {concurrency}")
    if not timeout_s > 0:
        raise ValueError(f"timeout_s must be positive, not {timeout_s}")

    tickets = iter(range(requests))
    ticket_lock = threading.Lock()
    results: queue.SimpleQueue[Outcome] = queue.SimpleQueue()

    def worker() -> None:
        while True:
            with ticket_lock:
                index = next(tickets, None)
            if index is None:
                return
            try:
                results.put(one_request(host, port, timeout_s, index, request))
            except Exception as e:  # never lose a result: the caller counts them
                results.put(Outcome(index, "failed", 0.0, f"{type(e).__name__}: {e}"))

    start = time.monotonic()
    threads = [threading.Thread(target=worker, name=f"load-{i}", daemon=True)
               for i in range(min(concurrency, requests))]
    for t in threads:
        t.start()
    outcomes: list[Outcome] = []
    # Every request ends within timeout_s (plus scheduling), so this bound is
    # generous; it only guards against a wedged thread.
    rounds = -(-requests // max(1, len(threads)))
    give_up = start + rounds * timeout_s + 30.0
    while len(outcomes) < requests and time.monotonic() < give_up:
        try:
            outcome = results.get(timeout=min(1.0, max(0.01, give_up - time.monotonic())))
        except queue.Empty:
            continue
        outcomes.append(outcome)
        if on_result is not None:
            on_result(outcome)
    for t in threads:
        t.join(timeout=max(0.0, give_up - time.monotonic()))
    duration_s = time.monotonic() - start
    outcomes.sort(key=lambda o: o.index)
    counts = Counter(o.outcome for o in outcomes)
    latencies = [o.latency_ms for o in outcomes if o.outcome == "ok"]
    return LoadResult(
        sent=len(outcomes), ok=counts["ok"], failed=counts["failed"], hung=counts["hung"],
        p50_ms=_round(percentile(latencies, 50)), p99_ms=_round(percentile(latencies, 99)),
        duration_s=duration_s,
        errors=dict(Counter(o.error for o in outcomes if o.error)),
        outcomes=tuple(outcomes),
    )
