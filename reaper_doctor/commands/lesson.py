"""`reaper-doctor lesson coalescing`: N children exit at once under each
reaping strategy; count handler runs, children reaped, zombies left.

Each trial runs in a fresh Python process (system/coalescing_trial.py),
never in the caller: its SIGCHLD handler and its forks must not perturb
the CLI or a pytest process. `run_trial` drives one trial through a small
handshake (`ready <pid>` / `go`) so that a kernel tracer can attach to the
trial process before its children are released.

With `trace=True` (`lesson coalescing --trace`, root and tracefs) each
trial process is traced from "ready" until it has settled, and the kernel's
own counts of SIGCHLD (generated / merged / delivered, SigchldTracer) stand
beside the handler runs: the two levels of merging, in the kernel and in
CPython.
"""

from __future__ import annotations

import json
import os
import select
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import replace
from pathlib import Path
from typing import Any

from ..collect.tasks import session_members
from ..model.lesson import (
    KERNEL_KEYS,
    MAX_CHILDREN,
    MIN_CHILDREN,
    STRATEGIES,
    LessonReport,
    StrategyResult,
    Trial,
)
from ..system.lifecycle import deferred_signals, end_session, start_session

MAX_TRIALS = 20
STOP_GRACE_S = 5.0     # a trial asked to end (EOF on stdin) has this long before SIGKILL

TrialHook = Callable[[int], None]


class LessonError(Exception):
    """A trial could not be run or did not answer as expected."""


# --- running trials -------------------------------------------------------


def _trial_command(strategy: str, children: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a trial process.

    PYTHONPATH starts with the directory holding this package, so the trial
    imports the same reaper_doctor as the caller, from any working directory.
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "reaper_doctor.system.coalescing_trial", strategy,
            "--children", str(children)]
    return argv, env


def _read_line(fd: int, buf: bytearray, deadline: float) -> str | None:
    """The next line from `fd` (without its newline); None at EOF."""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def _close_stdin(proc: subprocess.Popen[bytes]) -> None:
    """Ask a trial to end: EOF on its stdin makes it release and reap its
    children and exit."""
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass  # it is gone already (EPIPE)


def run_trial(strategy: str, children: int, *,
              before_release: TrialHook | None = None,
              after_release: TrialHook | None = None,
              timeout_s: float | None = None) -> Trial:
    """Run one trial of `strategy` with `children` children in a fresh process.

    `before_release(trial_pid)` runs after the trial process has forked its
    children and installed its strategy ("ready"), and before it is told to
    release them ("go"): attach a tracer to `trial_pid` there.
    `after_release(trial_pid)` runs right after "go" is sent, while the trial
    is still running. Neither runs when the strategy is skipped.

    Every process the trial made is gone when this returns or raises; any
    found left over (in the trial's session) is killed and counted in
    `Trial.leftover_processes`. Raises LessonError when the trial fails or
    takes longer than `timeout_s` (default: 30 s + 20 ms per child).
    """
    if strategy not in STRATEGIES:
        raise LessonError(f"unknown strategy {strategy!r}")
    if timeout_s is None:
        timeout_s = 30.0 + 0.02 * children
    argv, env = _trial_command(strategy, children)
    with tempfile.TemporaryFile() as errf:
        # A new session: the trial and its children are one process group we
        # can kill, and a session id we can find them by.
        proc = start_session(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                             stderr=errf, env=env)
        try:
            doc = _drive(proc, before_release, after_release, timeout_s)
        except BaseException:
            with deferred_signals():
                end_session(proc, stop=_close_stdin, grace_s=STOP_GRACE_S)
            raise
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            end_session(proc, grace_s=0)
            raise LessonError(f"{strategy} trial (PID {proc.pid}) did not exit") from None
        errf.seek(0)
        stderr = errf.read().decode(errors="replace").strip()
    # Left over: processes of the trial's session still there after it
    # exited (its children it failed to reap or kill).
    leftover = session_members(proc.pid)
    if leftover:
        end_session(proc)
    if "error" in doc:
        raise LessonError(f"{strategy} trial: {doc['error']}")
    if rc != 0:
        last = stderr.splitlines()[-1] if stderr else "no message"
        raise LessonError(f"{strategy} trial (PID {proc.pid}) exited with status {rc}: {last}")
    return Trial.from_json(doc, leftover_processes=len(leftover))


def _drive(proc: subprocess.Popen[bytes], before_release: TrialHook | None,
           after_release: TrialHook | None, timeout_s: float) -> dict[str, Any]:
    """The handshake: read `ready <pid>`, run the hook, send `go`, read the result."""
    assert proc.stdin is not None and proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        line = _read_line(fd, buf, deadline)
        if line is not None and line.startswith("ready "):
            if before_release is not None:
                before_release(proc.pid)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            if after_release is not None:
                after_release(proc.pid)
            line = _read_line(fd, buf, time.monotonic() + timeout_s)
    except TimeoutError:
        raise LessonError(f"trial (PID {proc.pid}) gave no answer within {timeout_s:.0f} s") \
            from None
    if line is None:
        raise LessonError(f"trial (PID {proc.pid}) ended without a result")
    try:
        doc = json.loads(line)
    except ValueError:
        raise LessonError(f"trial (PID {proc.pid}) said {line[:80]!r}") from None
    if not isinstance(doc, dict):
        raise LessonError(f"trial (PID {proc.pid}) said {line[:80]!r}")
    return doc


def run_traced_trial(strategy: str, children: int, *,
                     tracefs: str | os.PathLike[str] | None = None,
                     timeout_s: float | None = None) -> Trial:
    """run_trial, with the trial process's SIGCHLD traced from "ready" until
    it has settled and reported (`Trial.kernel`). The instance is removed
    on every path. Raises tracefs.TracefsError (root, tracefs) or LessonError."""
    from ..system.tracers import SigchldTracer

    def attach(pid: int) -> None:
        if not tracer.attach(pid):
            raise LessonError(f"{strategy} trial (PID {pid}) vanished before the trace began")

    with SigchldTracer(tracefs) as tracer:
        trial = run_trial(strategy, children, before_release=attach, timeout_s=timeout_s)
        # The trial has printed its counts, reaped its children and exited:
        # every SIGCHLD of the burst is in the buffer by now.
        counts = tracer.counts().get(trial.pid)
    if counts is None:
        return trial  # skipped: nothing was released, nothing traced
    return replace(trial, kernel={k: getattr(counts, k) for k in KERNEL_KEYS})


def run_lesson(children: int = 64, trials: int = 3,
               strategies: Iterable[str] = STRATEGIES,
               progress: Callable[[str, int], None] | None = None, *,
               trace: bool = False,
               tracefs: str | os.PathLike[str] | None = None) -> LessonReport:
    """Run `trials` trials of each strategy (in STRATEGIES order) with `children`.

    A strategy the trial process reports as unsupported is skipped after its
    first trial. `progress(strategy, trial_number)` is called before each trial.
    `trace`: trace each trial (run_traced_trial); raises tracefs.TracefsError.
    """
    if not MIN_CHILDREN <= children <= MAX_CHILDREN:
        raise LessonError(f"children must be in {MIN_CHILDREN}..{MAX_CHILDREN}")
    if not 1 <= trials <= MAX_TRIALS:
        raise LessonError(f"trials must be in 1..{MAX_TRIALS}")
    wanted = set(strategies)
    results = []
    for name in (s for s in STRATEGIES if s in wanted):
        done: list[Trial] = []
        skipped = None
        for i in range(trials):
            if progress is not None:
                progress(name, i + 1)
            if trace:
                trial = run_traced_trial(name, children, tracefs=tracefs)
            else:
                trial = run_trial(name, children)
            if trial.skipped:
                skipped = trial.skipped
                break
            done.append(trial)
        results.append(StrategyResult(name, children, tuple(done), skipped))
    platform = {"kernel": os.uname().release, "python": sys.version.split()[0]}
    return LessonReport(children, trials, tuple(results), platform, traced=trace)
