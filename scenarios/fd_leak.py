"""Fork per connection; the parent never closes client_connection.

Bug: after fork() both processes hold the accepted socket. The child closes
its copy, but the connection only ends when the last copy is closed, so no
FIN reaches the client: a client that reads until EOF hangs. When it gives
up and closes, the parent's copy sits in CLOSE_WAIT for ever. Each request
costs the parent one descriptor until accept() fails with
"[Errno 24] Too many open files" (RLIMIT_NOFILE, ulimit -n); the connections
behind it wait in the accept queue. The parent does reap its children.
reaper-doctor reports RD201 (close-wait-leak), then RD203 and RD301.

Fix: in the parent, right after fork(): client_connection.close()
(fixed_fork.py).

Run: python fd_leak.py --port 0 --lifetime 30
(try it under `ulimit -n 64` to reach Errno 24 quickly).
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import sys
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
    # Correct: reap every child that has exited, however many signals merged.
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
    # Python closes a socket object when it is garbage-collected, so this
    # leak needs a live reference, as a forgotten registry or log keeps one.
    open_connections = []
    errors_seen = set()
    with socket.create_server(("127.0.0.1", args.port), backlog=args.backlog) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.settimeout(0.5)  # wake up now and then to honour --lifetime
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            except OSError as e:  # EMFILE: the connection stays queued
                if str(e) not in errors_seen:
                    errors_seen.add(str(e))
                    print(f"fd-leak: accept() failed: {e}", file=sys.stderr, flush=True)
                time.sleep(0.05)  # the listener stays readable: back off, do not spin
                continue
            if os.fork() == 0:  # child: serve this one connection, then exit
                code = 1
                try:
                    srv.close()  # the child never accepts
                    handle(conn, args.work_ms)
                    conn.close()  # sends no FIN: the parent still holds a copy
                    code = 0
                finally:
                    os._exit(code)  # never return into the accept loop
            open_connections.append(conn)  # BUG: the parent never calls conn.close()


if __name__ == "__main__":
    main()
