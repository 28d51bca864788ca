"""One trial of `reaper-doctor lesson coalescing`, run in its own process.

    python -m reaper_doctor.system.coalescing_trial STRATEGY --children N

The caller (commands/lesson.py, `run_trial`) starts this as a fresh Python
process, so the signal handlers and the forking below never touch the CLI
or a pytest process. From the package it takes only the strategy names and
the /proc reader that counts its children's states.

Protocol on stdout, one line each:

1. After forking N children (all blocked on `read()` of one pipe) and
   installing the strategy: `ready <pid>`. Then it waits for a line `go` on
   stdin (EOF or anything else: abort, clean up, exit 3). Between the two, a
   kernel tracer may attach to <pid>.
2. After `go` it closes the pipe's write end, so every child exits at once,
   lets the strategy run until no child is alive and the zombie count is
   stable (polled, bounded), counts the zombies left from /proc *before*
   cleaning up, then reaps every child and prints the result as one JSON
   object.

If the strategy is unsupported here (pidfd on an old kernel or Python) the
first line is already the JSON result, with `skipped` set; on an error (fork
failed) it is a JSON object with `error`, and the exit status is 1.

What it shows: SIGCHLD is a standard signal, so exits that land while one
is already pending merge into it, and a handler that reaps one child per
run leaves zombies; CPython merges again, running a Python handler once
for however many C-level deliveries came between two bytecodes.
"""

from __future__ import annotations

import argparse
import json
import os
import select
import selectors
import signal
import sys
import time
from typing import Any

from ..collect.tasks import child_states
from ..model.lesson import STRATEGIES

POLL_S = 0.02      # between /proc scans while the children exit
STABLE_S = 0.1     # no child alive and the same zombie count for this long
GO_TIMEOUT_S = 300.0


def pidfd_unsupported() -> str | None:
    """Why pidfd reaping cannot run here, or None when it can."""
    if not hasattr(os, "pidfd_open"):
        return "os.pidfd_open is not available (needs Python >= 3.9 on Linux)"
    if not hasattr(os, "P_PIDFD"):
        return "os.P_PIDFD is not available (needs Python >= 3.9 built for Linux >= 5.4)"
    try:
        fd = os.pidfd_open(os.getpid())
    except OSError as e:
        return f"pidfd_open() failed: {e} (needs Linux >= 5.3)"
    try:
        # We are not our own child: a kernel that knows P_PIDFD says ECHILD,
        # one that does not (5.3) says EINVAL.
        os.waitid(os.P_PIDFD, fd, os.WEXITED | os.WNOHANG)
    except ChildProcessError:
        pass
    except OSError as e:
        return f"waitid(P_PIDFD) failed: {e} (needs Linux >= 5.4)"
    finally:
        os.close(fd)
    return None


def fork_children(n: int) -> tuple[int, list[int]]:
    """Fork `n` children blocked on read() of one pipe; return (write end, pids).

    On a failed fork the children already made are released and reaped, and
    the OSError is raised again.
    """
    r, w = os.pipe()
    pids: list[int] = []
    try:
        for _ in range(n):
            pid = os.fork()
            if pid == 0:  # the child: wait for EOF, then exit
                try:
                    os.close(w)
                    # Hold none of the caller's pipes: its EOF must mean the
                    # trial process is done.
                    for fd in (0, 1, 2):
                        os.close(fd)
                    os.read(r, 1)
                finally:
                    os._exit(0)
            pids.append(pid)
    except BaseException:
        os.close(w)
        os.close(r)
        for pid in pids:
            os.waitpid(pid, 0)
        raise
    os.close(r)
    return w, pids


def emit(obj: Any) -> None:
    sys.stdout.write((obj if isinstance(obj, str) else json.dumps(obj)) + "\n")
    sys.stdout.flush()


def wait_for_go() -> bool:
    ready, _, _ = select.select([sys.stdin], [], [], GO_TIMEOUT_S)
    return bool(ready) and sys.stdin.readline().strip() == "go"


def run(strategy: str, n: int, settle_max_s: float) -> int:
    me = os.getpid()
    base: dict[str, Any] = {"strategy": strategy, "children": n, "pid": me}
    if strategy == "pidfd" and (reason := pidfd_unsupported()):
        emit({**base, "skipped": reason})
        return 0

    try:
        w, pids = fork_children(n)
    except OSError as e:
        emit({**base, "error": f"could not fork {n} children: {e}"})
        return 1

    handler_runs = 0
    reaped = 0

    def wait_once(signum: int, frame: Any) -> None:
        # The buggy pattern: one wait() per handler run.
        nonlocal handler_runs, reaped
        handler_runs += 1
        try:
            os.wait()
            reaped += 1
        except ChildProcessError:
            pass

    def waitpid_loop(signum: int, frame: Any) -> None:
        # The fix: reap until nothing is left to reap right now.
        nonlocal handler_runs, reaped
        handler_runs += 1
        while True:
            try:
                pid, _ = os.waitpid(-1, os.WNOHANG)
            except ChildProcessError:
                return
            if pid == 0:
                return
            reaped += 1

    sel: selectors.BaseSelector | None = None
    pidfds: dict[int, int] = {}
    extra: dict[str, Any] = {}
    try:
        if strategy == "wait-once":
            signal.signal(signal.SIGCHLD, wait_once)
        elif strategy == "waitpid-loop":
            signal.signal(signal.SIGCHLD, waitpid_loop)
        elif strategy == "sig-ign":
            signal.signal(signal.SIGCHLD, signal.SIG_IGN)
        else:  # pidfd: SIGCHLD stays default; one descriptor per child
            sel = selectors.DefaultSelector()
            for pid in pids:
                fd = os.pidfd_open(pid)
                pidfds[fd] = pid
                sel.register(fd, selectors.EVENT_READ, pid)
            extra["selector"] = type(sel).__name__

        emit(f"ready {me}")
        if not wait_for_go():
            return 3  # the finally below releases and reaps the children

        t0 = time.monotonic()
        os.close(w)  # every child sees EOF and exits: the burst
        w = -1
        deadline = t0 + settle_max_s
        last_zombies = -1
        stable_since = t0
        while True:
            if sel is not None:
                for key, _ in sel.select(timeout=POLL_S):
                    handler_runs += 1  # one readable pidfd = one event
                    os.waitid(os.P_PIDFD, key.fd, os.WEXITED)
                    reaped += 1
                    sel.unregister(key.fd)
                    os.close(key.fd)
                    del pidfds[key.fd]
                if reaped == n and "all_reaped_after_s" not in extra:
                    extra["all_reaped_after_s"] = round(time.monotonic() - t0, 4)
            else:
                time.sleep(POLL_S)  # handlers run here (PEP 475 resumes the sleep)
            states = child_states(me)
            zombies = sum(1 for s in states.values() if s == "Z")
            alive = len(states) - zombies
            now = time.monotonic()
            if alive or zombies != last_zombies:
                last_zombies, stable_since = zombies, now
            elif now - stable_since >= STABLE_S:
                break
            if now >= deadline:
                break
        settle_s = round(time.monotonic() - t0, 4)

        # Counted before any clean-up: this is the lesson's number.
        result = {**base, "skipped": None,
                  "handler_runs": None if strategy == "sig-ign" else handler_runs,
                  "reaped": None if strategy == "sig-ign" else reaped,
                  "zombies_left": zombies, "still_alive": alive,
                  "settle_s": settle_s, **extra}
    finally:
        signal.signal(signal.SIGCHLD, signal.SIG_DFL)
        if w >= 0:
            os.close(w)
        if sel is not None:
            sel.close()
        for fd in pidfds:
            os.close(fd)
        cleanup = cleanup_children(pids)

    if strategy == "sig-ign":
        result["waitpid_after"] = "ECHILD" if cleanup["reaped"] == 0 else "reaped"
    result["cleanup_reaped"] = cleanup["reaped"]
    result["cleanup_killed"] = cleanup["killed"]
    result["children_after_cleanup"] = len(child_states(me))
    emit(result)
    return 0


def cleanup_children(pids: list[int]) -> dict[str, int]:
    """Reap every child (blocking waitpid on each pid); kill any still alive first."""
    killed = 0
    for pid, state in child_states(os.getpid()).items():
        if state != "Z":
            try:
                os.kill(pid, signal.SIGKILL)
                killed += 1
            except ProcessLookupError:
                pass
    reaped = 0
    for pid in pids:
        try:
            os.waitpid(pid, 0)
            reaped += 1
        except ChildProcessError:
            pass  # reaped already, by a handler or by the kernel (SIG_IGN)
    return {"reaped": reaped, "killed": killed}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m reaper_doctor.system.coalescing_trial")
    parser.add_argument("strategy", choices=STRATEGIES)
    parser.add_argument("--children", type=int, default=64)
    parser.add_argument("--settle-max", type=float, default=None,
                        help="bound on the wait for the children to exit (s)")
    args = parser.parse_args(argv)
    if args.children < 1:
        parser.error("--children must be at least 1")
    settle = args.settle_max
    if settle is None:
        settle = min(5.0, 1.0 + 0.002 * args.children)
    return run(args.strategy, args.children, settle)


if __name__ == "__main__":
    sys.exit(main())
