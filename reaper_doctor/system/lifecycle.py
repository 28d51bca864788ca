"""The clean-up contract: everything we start is killed and reaped.

One place for it, used by `scenario run`, `lesson`, `trace` and `scan
--trace`:

  become_subreaper()   orphans of our descendants come back to us, not to PID 1
  start_session()      a child in a session of its own: one process group to
                       signal, one session ID to find every member by
  end_session()        stop that child, SIGKILL whatever is left in its
                       session, reap what is ours, count what remains
  deferred_signals()   SIGINT/SIGTERM wait until a clean-up is done
  signals_unwind()     SIGTERM (or others) unwinds the stack like Ctrl-C, so
                       every `finally` runs
"""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import threading
import time
from collections.abc import Callable, Collection, Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from ..collect.tasks import read_stat, session_members, stat_lines
from ..model.process import Teardown

PR_SET_CHILD_SUBREAPER = 36
TERM_TIMEOUT_S = 3.0          # stop -> SIGKILL
REAP_TIMEOUT_S = 5.0          # orphans reparented to us, or to a slow PID 1 if prctl failed
MIN_FD_LIMIT = 16             # the interpreter itself needs a handful to start


def become_subreaper() -> bool:
    """Make this process a child subreaper (prctl PR_SET_CHILD_SUBREAPER):
    orphans of our descendants are re-parented to us, not to PID 1 (which on
    some machines reaps only every second or two), so we can reap them.
    False where prctl is not available."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0)) == 0
    except (OSError, AttributeError):
        return False


M_ARENA_MAX = -8   # mallopt(3)


def one_malloc_arena() -> bool:
    """Have glibc's malloc serve every thread from one arena (mallopt
    M_ARENA_MAX 1, as MALLOC_ARENA_MAX=1 does). A server whose work moves
    from thread to thread (one per request) otherwise leaves each arena
    holding the high-water mark of what ran on it: measured on the
    exporter, RSS wandered 38-47 MB over 200 scrapes, against flat at 42
    with one arena. False where it cannot be set (not glibc)."""
    try:
        import ctypes

        libc = ctypes.CDLL(None, use_errno=True)
        return int(libc.mallopt(M_ARENA_MAX, 1)) == 1
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


def start_session(argv: Sequence[str], **popen: Any) -> subprocess.Popen[bytes]:
    """Popen(argv) in a new session: the child and everything it forks share
    one process group to signal and one session ID to find them by (zombies
    included), whatever they do to their own process groups."""
    return subprocess.Popen(list(argv), start_new_session=True, **popen)


def _terminate(proc: subprocess.Popen[bytes]) -> None:
    _kill(proc.pid, signal.SIGTERM, group=True)


def end_session(proc: subprocess.Popen[bytes], *,
                stop: Callable[[subprocess.Popen[bytes]], None] = _terminate,
                grace_s: float = TERM_TIMEOUT_S,
                seen: Collection[tuple[int, int]] = ()) -> Teardown:
    """Kill and reap `proc` (started by start_session) and its whole session,
    then count what is still there.

    1. If `proc` still runs: `stop(proc)` (default: SIGTERM its process
       group), wait `grace_s` for it, then SIGKILL the group and wait again.
    2. SIGKILL every live member of the session; waitpid each one that is
       our child (`proc`'s orphans come to us once we are a subreaper),
       until none is left (bounded: if prctl failed, PID 1 reaps them,
       about 1-2 s later).
    3. Count: processes still in the session, our own zombie children from
       it, and any process of `seen` (pid, start time) that still exists.
    """
    result = Teardown()
    sid = proc.pid
    me = os.getpid()
    if proc.poll() is None:
        result.killed += 1
        stop(proc)
        try:
            proc.wait(timeout=grace_s)
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
                _kill(st.pid, signal.SIGKILL)  # a member that outlived the stop
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
    received: list[int] = []

    def hold(signum: int, frame: object) -> None:
        received.append(signum)

    try:
        with _handled_by(signums, hold):
            yield
    finally:
        if received:
            signal.raise_signal(received[0])


def _exit_status(signum: int) -> BaseException:
    return SystemExit(128 + signum)


@contextmanager
def signals_unwind(signums: Sequence[int] = (signal.SIGTERM,),
                   error: Callable[[int], BaseException] = _exit_status) -> Iterator[None]:
    """While the body runs, each of `signums` raises `error(signum)` (by
    default SystemExit(128 + signum), the shell's status for it) in the main
    thread: the stack unwinds like Ctrl-C and every `finally` runs, which a
    default SIGTERM would skip. Only the main thread can set handlers;
    elsewhere this does nothing."""
    def unwind(signum: int, frame: object) -> None:
        raise error(signum)

    with _handled_by(signums, unwind):
        yield


@contextmanager
def _handled_by(signums: Sequence[int], handler: Callable[[int, Any], None]) -> Iterator[None]:
    """`handler` for each of `signums` while the body runs, the previous
    handlers after. Only the main thread can set handlers; elsewhere this
    does nothing."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = {s: signal.signal(s, handler) for s in signums}
    try:
        yield
    finally:
        for s, previous in old.items():
            signal.signal(s, previous)


def lower_nofile(limit: int) -> Callable[[], None]:
    """A preexec_fn for start_session: the child's soft RLIMIT_NOFILE set to `limit`."""

    def apply() -> None:  # runs in the child between fork and exec
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        resource.setrlimit(resource.RLIMIT_NOFILE, (limit, hard))

    return apply
