"""The container_init.py server behind an init of our own as PID 1.

The init is what tini and `docker run --init` do, in a few readable
lines: it starts the server as its child, passes SIGTERM and SIGINT on to
it, and reaps every child that exits -- the server, and each orphan the
kernel re-parents to PID 1 -- with a waitpid(-1, WNOHANG) loop. It blocks
those signals and takes them with sigtimedwait, so no signal is lost
between two waits. When the server exits, the init exits with its status.
reaper-doctor reports no finding.

Fix: none needed; compare with container_init.py.

Needs a new PID namespace: root, or an unprivileged user namespace.
Run: python container_init_fixed.py --port 0 --lifetime 30
"""

from __future__ import annotations

import argparse
import os
import signal

from container_init import exit_code, parse_args, run_as_pid1, serve

SIGNALS = {signal.SIGCHLD, signal.SIGTERM, signal.SIGINT}


def init(args: argparse.Namespace) -> int:
    """PID 1: start the server, forward SIGTERM/SIGINT, reap everything."""
    signal.pthread_sigmask(signal.SIG_BLOCK, SIGNALS)  # taken below, one at a time
    server = os.fork()
    if server == 0:  # the server runs with the usual signal defaults
        signal.pthread_sigmask(signal.SIG_UNBLOCK, SIGNALS)
        os._exit(serve(args))
    code = None
    while code is None:
        info = signal.sigtimedwait(SIGNALS, 1.0)  # None: a second passed
        if info is not None and info.si_signo != signal.SIGCHLD:
            os.kill(server, info.si_signo)  # pass SIGTERM / SIGINT on
        while True:  # one SIGCHLD may stand for many exits: reap until none is left
            try:
                pid, status = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                break  # no child left
            if pid == 0:
                break  # children left, none exited
            if pid == server:
                code = exit_code(status)
    return code


def main() -> None:
    args = parse_args()
    run_as_pid1(lambda: init(args), args.stop_timeout)


if __name__ == "__main__":
    main()
