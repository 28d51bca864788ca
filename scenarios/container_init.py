"""The server is PID 1 of its own PID namespace, as in a container.

Bug: in a container the application often runs as PID 1 (`CMD ["python",
"server.py"]`). PID 1 has two duties it does not know about. Every orphan
of the namespace is re-parented to it: here each request starts a detached
helper (the classic double fork), the helper's parent exits, and when the
helper ends its zombie waits on PID 1, which only ever waits for the
children it started itself. And the kernel drops every signal sent to
PID 1 from outside for which it has no handler: `docker stop` sends
SIGTERM, waits 10 s in vain, then SIGKILLs.
reaper-doctor reports RD104 (init-not-reaping) and RD105 (pid1-ignores-sigterm).

Fix: run an init as PID 1 that reaps and forwards signals (`docker run
--init`, tini or dumb-init as ENTRYPOINT; container_init_fixed.py).

Needs a new PID namespace: root, or an unprivileged user namespace.
Run: python container_init.py --port 0 --lifetime 30
"""

from __future__ import annotations

import argparse
import ctypes
import os
import signal
import socket
import sys
import time
from typing import Callable, NoReturn

HEADER = b"HTTP/1.0 200 OK\r\nContent-Type: text/plain\r\nConnection: close\r\n\r\n"
CLONE_NEWUSER, CLONE_NEWPID = 0x10000000, 0x20000000  # <linux/sched.h>


def parse_args() -> argparse.Namespace:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--port", type=int, default=0, help="TCP port on 127.0.0.1 (0: any)")
    p.add_argument("--lifetime", type=float, default=30.0, help="exit after this many seconds")
    p.add_argument("--helper-ms", type=int, default=50, help="how long each helper runs")
    p.add_argument("--stop-timeout", type=float, default=1.0,
                   help="on SIGTERM, seconds PID 1 gets before SIGKILL (docker stop: 10)")
    return p.parse_args()


def serve(args: argparse.Namespace) -> int:
    """Answer each request, then start a detached helper for it."""
    with socket.create_server(("127.0.0.1", args.port)) as srv:
        print("%s:%d" % srv.getsockname(), flush=True)
        srv.settimeout(0.5)  # wake up now and then to honour --lifetime
        deadline = time.monotonic() + args.lifetime
        while time.monotonic() < deadline:
            try:
                conn, _ = srv.accept()
            except TimeoutError:
                continue
            with conn:
                conn.settimeout(5.0)
                conn.recv(8192)
                conn.sendall(HEADER + b"hello from PID %d of my namespace\n" % os.getpid())
            start_detached_helper(srv, args.helper_ms)
    return 0


def start_detached_helper(srv: socket.socket, helper_ms: int) -> None:
    # What `subprocess.run("helper &", shell=True)` does: the middle child
    # starts the helper and exits at once. The server waits for the child
    # it started, as it should; the helper, orphaned, goes to PID 1.
    middle = os.fork()
    if middle == 0:
        srv.close()
        if os.fork() == 0:
            time.sleep(helper_ms / 1000)  # the helper's work
        os._exit(0)
    os.waitpid(middle, 0)  # BUG (as PID 1): nothing waits for adopted orphans


def run_as_pid1(pid1: Callable[[], int], stop_timeout: float) -> NoReturn:
    """Run pid1() as PID 1 of a new PID namespace and wait for it: a tiny
    container runtime. SIGTERM or SIGINT here is passed on to PID 1 and,
    as `docker stop` does, followed by SIGKILL after `stop_timeout`."""
    flags = CLONE_NEWPID if os.geteuid() == 0 else CLONE_NEWPID | CLONE_NEWUSER
    uid, gid = os.geteuid(), os.getegid()
    libc = ctypes.CDLL(None, use_errno=True)  # os.unshare() exists from Python 3.12
    if libc.unshare(flags) != 0:
        sys.exit(f"cannot create a PID namespace: {os.strerror(ctypes.get_errno())}")
    if flags & CLONE_NEWUSER:  # keep our own UID and GID inside (user_namespaces(7))
        for name, text in (("uid_map", f"{uid} {uid} 1"), ("setgroups", "deny"),
                           ("gid_map", f"{gid} {gid} 1")):
            with open(f"/proc/self/{name}", "w") as f:
                f.write(text)
    child = os.fork()  # the first child of the new namespace is its PID 1
    if child == 0:
        code = 1
        try:
            code = pid1()
        finally:
            os._exit(code)

    def stop(signum: int, frame: object) -> None:
        os.kill(child, signal.SIGTERM)  # dropped by the kernel if PID 1 has no handler
        signal.setitimer(signal.ITIMER_REAL, stop_timeout)

    signal.signal(signal.SIGTERM, stop)
    signal.signal(signal.SIGINT, stop)
    signal.signal(signal.SIGALRM, lambda signum, frame: os.kill(child, signal.SIGKILL))
    _, status = os.waitpid(child, 0)  # PID 1 ends: the kernel ends the whole namespace
    sys.exit(exit_code(status))


def exit_code(status: int) -> int:
    """A wait status as a shell says it: the exit code, or 128 + the signal."""
    code = os.waitstatus_to_exitcode(status)
    return code if code >= 0 else 128 - code


def main() -> None:
    args = parse_args()
    run_as_pid1(lambda: serve(args), args.stop_timeout)


if __name__ == "__main__":
    main()
