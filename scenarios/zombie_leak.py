"""Fork per connection; the parent never calls waitpid.

Bug: each child exits after its request, but nobody collects its exit
status, so it stays in the process table as a zombie (<defunct>) until the
parent itself exits. Zombies hold no memory or descriptors, but each one
keeps a PID and counts against RLIMIT_NPROC (ulimit -u) and the pids cgroup:
a busy server ends with fork() failing with EAGAIN.
reaper-doctor reports RD101 (zombie-leak).

Fix: reap the children: a SIGCHLD handler that loops
os.waitpid(-1, os.WNOHANG) until it returns 0 (fixed_fork.py).

Run: python zombie_leak.py --port 0 --lifetime 30
"""

from __future__ import annotations

import argparse
import os
import socket
import time

# HTTP/1.0 without Content-Length: the body ends when the connection closes.
HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    p.add_argument("--lifetime", type=float, default=30.0, help="exit after this many seconds")
    p.add_argument("--work-ms", type=int, default=50, help="time a child spends on its request")
    p.add_argument("--backlog", type=int, default=128, help="listen() backlog")
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
    time.sleep(work_ms / 1000)
    conn.sendall(HEADER + b"hello from pid %d\n" % os.getpid())


def main() -> None:
    args = parse_args()
    # BUG: SIGCHLD keeps its default disposition and nothing ever calls wait().
    with socket.create_server(("127.0.0.1", args.port), backlog=args.backlog) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.settimeout(0.5)  # wake up now and then to honour --lifetime
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            if os.fork() == 0:  # child: serve this one connection, then exit
                code = 1
                try:
                    srv.close()  # the child never accepts
                    handle(conn, args.work_ms)
                    conn.close()
                    code = 0
                finally:
                    os._exit(code)  # never return into the accept loop
            conn.close()  # the parent's copy: closed correctly here


if __name__ == "__main__":
    main()
