"""Acting on our own processes: become a child subreaper, kill and reap a
server's session, defer SIGINT/SIGTERM while cleaning up."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager

from ..collect.tasks import read_stat, session_members, stat_lines
from ..model.scenario import Teardown

PR_SET_CHILD_SUBREAPER = 36
TERM_TIMEOUT_S = 3.0          # SIGTERM -> SIGKILL
REAP_TIMEOUT_S = 5.0          # orphans reparented to us, or to a slow PID 1 if prctl failed
MIN_FD_LIMIT = 16             # the interpreter itself needs a handful to start


# ----------------------------------------------------------------------------
# Processes: subreaper, sessions, teardown


def become_subreaper() -> bool:
    """Make this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
    orphans of our descendants are re-parented to us, not to PID 1, so we can
    reap them (linux-facts 8). False where prctl is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


def _kill(pid: int, sig: int, *, group: bool = False) -> None:
    try:
        (os.killpg if group else os.kill)(pid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def _reap_child(pid: int) -> bool:
    """waitpid a child of ours without blocking; True if it was reaped."""
    try:
        done, _ = os.waitpid(pid, os.WNOHANG)
    except ChildProcessError:
        return False  # not ours (any more)
    return done == pid


def teardown(proc: subprocess.Popen[bytes], seen: set[tuple[int, int]]) -> Teardown:
    """Kill and reap the server's session, then count what is still there.

    1. SIGTERM the server's process group (its children share it), wait
       for the server with a deadline, then SIGKILL every member of the
       session still alive.
    2. Reap: the server is our child; its orphans come to us (subreaper).
       waitpid each child of ours in the session until none is left
       (bounded: if prctl failed, PID 1 reaps them, about 1-2 s later).
    3. Count: processes still in the session, our own zombie children
       from it, and any process seen in the server's tree during the run
       (pid and start time) that still exists.
    """
    result = Teardown()
    sid = proc.pid
    me = os.getpid()
    if proc.poll() is None:
        result.killed += 1
        _kill(sid, signal.SIGTERM, group=True)
        try:
            proc.wait(timeout=TERM_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            _kill(sid, signal.SIGKILL, group=True)
            try:
                proc.wait(timeout=TERM_TIMEOUT_S)
            except subprocess.TimeoutExpired:
                pass
    deadline = time.monotonic() + REAP_TIMEOUT_S
    killed: set[int] = set()
    while True:
        members = session_members(sid)
        for st in members:
            if st.state != "Z" and st.pid not in killed:
                _kill(st.pid, signal.SIGKILL)  # a child that outlived SIGTERM
                killed.add(st.pid)
            if st.ppid == me and _reap_child(st.pid):
                result.reaped += 1
        if not members or time.monotonic() > deadline:
            break
        time.sleep(0.02)
    result.killed += len(killed)
    left = {st.pid for st in session_members(sid)}
    left |= {st.pid for st in stat_lines()
             if st.ppid == me and st.state == "Z" and st.session == sid}
    for pid, start in seen:
        now = read_stat(pid)
        if now is not None and now.start_ticks == start:
            left.add(pid)
    result.leftover_pids = sorted(left)
    result.leftover_processes = len(left)
    return result


@contextmanager
def deferred_signals(signums: Sequence[int] = (signal.SIGINT, signal.SIGTERM)) -> Iterator[None]:
    """Hold SIGINT and SIGTERM while the body runs (the teardown must not be
    cut short by a second Ctrl-C), then deliver the first one that came to
    the handler that was in place. Only the main thread can set handlers;
    elsewhere this does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    old = {s: signal.signal(s, hold) for s in signums}
    try:
        yield
    finally:
        for s, handler in old.items():
            signal.signal(s, handler)
        if received:
            signal.raise_signal(received[0])


@contextmanager
def sigterm_raises_systemexit(code: int = 128 + signal.SIGTERM) -> Iterator[None]:
    """Let SIGTERM unwind the stack like Ctrl-C does, so `finally:` blocks run
    (a default SIGTERM kills without them: linux-facts, practical notes)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def terminate(signum: int, frame: object) -> None:
        raise SystemExit(code)

    old = signal.signal(signal.SIGTERM, terminate)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


# ----------------------------------------------------------------------------
# The server: start, address, stderr


def _lower_nofile(limit: int) -> Callable[[], None]:
    def apply() -> None:  # runs in the child between fork and exec
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return apply
