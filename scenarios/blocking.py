"""The iterative server: one slow request makes every other client wait.

Bug: the server handles each connection itself, in the accept loop. While it
spends --work-ms on one request nobody calls accept(), so new connections
pile up in the kernel's accept queue (at most --backlog + 1 of them); once it
is full, further SYNs are dropped and those clients wait for a retransmission
(a second or more). reaper-doctor reports RD401 (accept-backlog).

Fix: never block the accept loop: fork per connection with a waitpid loop
(fixed_fork.py) or multiplex non-blocking sockets (event_loop.py).

Run: python blocking.py --port 0 --lifetime 30
"""

from __future__ import annotations

import argparse
import os
import socket
import sys
import time

# HTTP/1.0 without Content-Length: the body ends when the connection closes.
HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    p.add_argument("--lifetime", type=float, default=30.0, help="exit after this many seconds")
    p.add_argument("--work-ms", type=int, default=200, help="time spent on each request")
    p.add_argument("--backlog", type=int, default=5, help="listen() backlog")
    return p.parse_args()


def read_request(conn: socket.socket) -> bytes:
    """Read up to the blank line that ends the headers (bounded in size and time)."""
    conn.settimeout(5.0)
    data = b""
    while b"\r\n\r\n" not in data and len(data) < 8192:
        chunk = conn.recv(4096)
        if not chunk:
            break
        data += chunk
    return data


def handle(conn: socket.socket, work_ms: int) -> None:
    read_request(conn)
    time.sleep(work_ms / 1000)  # the slow part: a database, a disk, a computation
    conn.sendall(HEADER + b"hello from pid %d\n" % os.getpid())


def main() -> None:
    args = parse_args()
    with socket.create_server(("127.0.0.1", args.port), backlog=args.backlog) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.settimeout(0.5)  # wake up now and then to honour --lifetime
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                try:
                    handle(conn, args.work_ms)  # BUG: every other client waits meanwhile
                except OSError as e:
                    print(f"blocking: request failed: {e}", file=sys.stderr, flush=True)


if __name__ == "__main__":
    main()
