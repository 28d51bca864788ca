"""The correct fork-per-connection server.

Three things make it correct: a SIGCHLD handler that loops
os.waitpid(-1, os.WNOHANG) until it returns 0 (merged signals lose no
child), the parent closes its copy of the accepted socket right after
fork(), and the child closes its copy of the listening socket.
reaper-doctor reports no finding (a zombie may live for a moment between a
child's exit and the handler; it never persists).

Fix: none needed; compare with zombie_leak.py, lost_sigchld.py, fd_leak.py.

Run: python fixed_fork.py --port 0 --lifetime 30
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
    p.add_argument("--backlog", type=int, default=128, help="listen() backlog")
    return p.parse_args()


def reap_children(signum: int, frame: object) -> None:
    # One SIGCHLD may stand for many exits: reap until none is left.
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:  # no children at all
            return
        if pid == 0:  # children left, none of them exited yet
            return


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
    signal.signal(signal.SIGCHLD, reap_children)
    with socket.create_server(("127.0.0.1", args.port), backlog=args.backlog) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.settimeout(0.5)  # wake up now and then to honour --lifetime
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            try:
                # PEP 475 (Python 3.5+): accept() is retried after the handler
                # runs, so the old `except EINTR: continue` is not needed.
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            if os.fork() == 0:  # child: serve this one connection, then exit
                code = 1
                try:
                    srv.close()  # the child never accepts: drop the listener
                    handle(conn, args.work_ms)
                    conn.close()  # the last copy: the client sees EOF
                    code = 0
                finally:
                    os._exit(code)  # never return into the accept loop
            conn.close()  # the parent's copy, at once


if __name__ == "__main__":
    main()
