"""A SIGCHLD handler that calls wait() once per signal: bursts leave zombies.

Bug: standard signals are not queued (UNP 5.9, TLPI 26.3). If several
children exit before the parent handles the first SIGCHLD, the kernel keeps
one pending signal, and CPython one "tripped" flag, so the handler runs
fewer times than children exited. One wait() per run leaves the difference
as zombies, until the next burst reaps a few of them (oldest first).
reaper-doctor reports RD102 (lost-sigchld).

Fix: in the handler, loop os.waitpid(-1, os.WNOHANG) until it returns 0
(fixed_fork.py).

Run: python lost_sigchld.py --port 0 --lifetime 30, then send concurrent
requests (reaper-doctor scenario run lost-sigchld).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import time

# HTTP/1.0 without Content-Length: the body ends when the connection closes.
HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    p.add_argument("--lifetime", type=float, default=30.0, help="exit after this many seconds")
    p.add_argument("--work-ms", type=int, default=50, help="time a child spends on its request")
    p.add_argument("--tick-ms", type=int, default=200,
                   help="children exit together on the next multiple of this")
    p.add_argument("--backlog", type=int, default=128, help="listen() backlog")
    return p.parse_args()


def grim_reaper(signum: int, frame: object) -> None:
    # BUG: one wait() per signal, but one signal may stand for many exits.
    os.wait()


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


def handle(conn: socket.socket, work_ms: int, tick_ms: int) -> None:
    read_request(conn)
    time.sleep(work_ms / 1000)
    conn.sendall(HEADER + b"hello from pid %d\n" % os.getpid())
    conn.close()  # the client has its whole answer now
    # Real bursts come from requests that finish together (a slow backend
    # recovers, a timeout fires for all). Waiting for a shared clock tick
    # makes every burst of concurrent children exit within a few ms.
    tick = tick_ms / 1000
    time.sleep(tick - time.time() % tick)


def main() -> None:
    args = parse_args()
    signal.signal(signal.SIGCHLD, grim_reaper)
    with socket.create_server(("127.0.0.1", args.port), backlog=args.backlog) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.settimeout(0.5)  # wake up now and then to honour --lifetime
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()  # PEP 475: retried after the handler runs
            except TimeoutError:
                continue
            if os.fork() == 0:  # child: serve this one connection, then exit
                code = 1
                try:
                    srv.close()  # the child never accepts
                    handle(conn, args.work_ms, args.tick_ms)
                    code = 0
                finally:
                    os._exit(code)  # never return into the accept loop
            conn.close()  # the parent's copy


if __name__ == "__main__":
    main()
