"""One process, no fork: non-blocking sockets multiplexed with selectors.

Nothing to leak: there are no children to reap, and every connection is
closed by the one process that owns it. A slow request waits on a timer
instead of blocking the loop, so other clients are served meanwhile.
reaper-doctor reports no finding.

Fix: none needed; this is the lighter design (asyncio works the same way).
CPU-heavy handlers would still block it: those belong in worker processes.

Run: python event_loop.py --port 0 --lifetime 30
"""

from __future__ import annotations

import argparse
import os
import selectors
import socket
import time

# HTTP/1.0 without Content-Length: the body ends when the connection closes.
HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    p.add_argument("--lifetime", type=float, default=30.0, help="exit after this many seconds")
    p.add_argument("--work-ms", type=int, default=50, help="time spent on each request")
    p.add_argument("--backlog", type=int, default=128, help="listen() backlog")
    return p.parse_args()


class Connection:
    """One client: "reading" its request, "working" on it, "writing" the reply."""

    def __init__(self, sock: socket.socket, now: float) -> None:
        self.sock, self.state = sock, "reading"
        self.data = b""  # the request while reading, what is left to send while writing
        self.due = now + 5.0  # reading/writing: give up then; working: reply then


def main() -> None:
    args = parse_args()
    sel = selectors.DefaultSelector()
    conns: dict[socket.socket, Connection] = {}

    def close(c: Connection) -> None:
        if c.state != "working":  # only a working connection is not registered
            sel.unregister(c.sock)
        c.sock.close()  # the only copy: the client sees EOF, the end of the body
        del conns[c.sock]

    with socket.create_server(("127.0.0.1", args.port), backlog=args.backlog) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.setblocking(False)
        sel.register(srv, selectors.EVENT_READ)
        deadline = time.monotonic() + args.lifetime
        while (now := time.monotonic()) < deadline:
            wake = min([c.due for c in conns.values()] + [now + 0.5, deadline])
            for key, _ in sel.select(timeout=max(0.0, wake - now)):
                if key.fileobj is srv:
                    try:
                        sock, _ = srv.accept()
                    except OSError:  # the client left already, or EMFILE: retry later
                        continue
                    sock.setblocking(False)
                    conns[sock] = Connection(sock, time.monotonic())
                    sel.register(sock, selectors.EVENT_READ)
                    continue
                c = conns[key.fileobj]
                try:
                    if c.state == "writing":  # send what the socket buffer takes
                        c.data = c.data[c.sock.send(c.data):]
                        if not c.data:
                            close(c)
                        continue
                    chunk = c.sock.recv(4096)
                    c.data += chunk
                    if not chunk or b"\r\n\r\n" in c.data or len(c.data) >= 8192:
                        # The request is read. The slow part waits on a timer,
                        # not in sleep(): the loop serves others meanwhile.
                        sel.unregister(c.sock)
                        c.state, c.due = "working", time.monotonic() + args.work_ms / 1000
                except (BlockingIOError, InterruptedError):
                    continue
                except OSError:  # reset by the client
                    close(c)
            now = time.monotonic()
            for c in [c for c in conns.values() if c.due <= now]:
                if c.state == "working":  # the work is done: start replying
                    c.state, c.due = "writing", now + 5.0
                    c.data = HEADER + b"hello from pid %d\n" % os.getpid()
                    sel.register(c.sock, selectors.EVENT_WRITE)
                else:
                    close(c)  # the client is too slow
        for c in list(conns.values()):
            close(c)
    sel.close()


if __name__ == "__main__":
    main()
