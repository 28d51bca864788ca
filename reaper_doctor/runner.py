"""`scenario run` and `scenario compare`: start a scenario server, load it,
sample it, scan it, tear it down, and prove nothing was left behind.

This is the I/O half of the scenario commands: diagnosis stays in
diagnose.py (through `scan.scan`), text and JSON in render/scenario.py,
parsing in cli.py. While the load runs, a thread samples the server's
session every 0.25 s (processes, zombies, open fds, CLOSE_WAIT, accept
queue) for the timeline; the scan comes after the load (lost-sigchld's
zombies only hold still once it stops), or during it for scenarios whose
finding only exists under load (`Scenario.scan_during_load`: blocking).

Side effect: the calling process stays a child subreaper afterwards.

Clean-up is the contract (DESIGN.md "Scenario servers"): the runner makes
itself a child subreaper, so whatever the server forks and orphans comes
back to it (linux-facts 8); the server runs in its own session, so its
whole tree can be found (session id in /proc/<pid>/stat, zombies included)
and signalled as one process group. Teardown runs in a `finally`, with
SIGINT and SIGTERM deferred until it is done, and ends by counting what
is still there: `leftover_processes`, which must be 0.
"""

from __future__ import annotations

import math
import os
import queue
import re
import resource
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field

from . import netlink
from .collect import (ProcessGone, close_wait_on_ports, count_fds, inet_diag_dump, read_stat,
                      session_members, stat_lines)
from .load import LOOPBACK, LoadResult, Outcome, drive
from .model import Finding, Report, Severity, TargetReport
from .scenarios import SCENARIOS, Scenario, get, script_path

PR_SET_CHILD_SUBREAPER = 36
ADDRESS = re.compile(r"^127\.0\.0\.1:(\d{1,5})$")

DEFAULT_REQUESTS = 60
MAX_REQUESTS = 5000           # the load stays bounded (--requests accepts no more)
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_GRACE_S = 1.0
SAMPLE_INTERVAL_S = 0.25
MAX_SAMPLES = 2400            # 10 minutes at 0.25 s: the timeline stays bounded
MAX_SERVER_ERRORS = 50        # distinct stderr lines kept
START_TIMEOUT_S = 20.0        # a Python start-up on a busy 2-core machine
SETTLE_TIMEOUT_S = 3.0        # after the load: children finish, tick-synchronised exits land
TERM_TIMEOUT_S = 3.0          # SIGTERM -> SIGKILL
REAP_TIMEOUT_S = 5.0          # orphans reparented to us, or to a slow PID 1 if prctl failed
MIN_FD_LIMIT = 16             # the interpreter itself needs a handful to start


class ScenarioError(Exception):
    """The scenario could not be run (its server did not start, bad settings)."""


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


@dataclass
class Teardown:
    """What the clean-up did: processes signalled, reaped, and left over."""

    killed: int = 0
    reaped: int = 0
    leftover_processes: int = 0
    leftover_pids: list[int] = field(default_factory=list)


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
        st = read_stat(pid)
        if st is not None and st.start_ticks == start:
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


class _Lines:
    """Drain a pipe in a thread, line by line, so the child never blocks on it."""

    def __init__(self, stream: object, name: str) -> None:
        self.queue: queue.SimpleQueue[str | None] = queue.SimpleQueue()
        self._stream = stream
        self.thread = threading.Thread(target=self._run, name=name, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for raw in iter(self._stream.readline, b""):  # type: ignore[attr-defined]
                self.queue.put(raw.decode("utf-8", "replace").rstrip("\r\n"))
        except (OSError, ValueError):
            pass
        finally:
            self.queue.put(None)

    def first_line(self, timeout_s: float) -> str | None:
        try:
            return self.queue.get(timeout=timeout_s)
        except queue.Empty:
            return None

    def rest(self, timeout_s: float = 1.0) -> list[str]:
        """Every line after the first, once the pipe has closed (bounded wait)."""
        self.thread.join(timeout=timeout_s)
        lines = []
        while True:
            try:
                line = self.queue.get_nowait()
            except queue.Empty:
                break
            if line is not None:
                lines.append(line)
        return lines


# ----------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class Sample:
    """One point of the timeline: the server's tree at `t_s` seconds after it started."""

    t_s: float
    processes: int       # live processes in the server's session (the server included)
    zombies: int         # zombies in its session (its children, unreaped)
    fds: int | None      # the server's open descriptors
    close_wait: int      # its TCP sockets in CLOSE_WAIT
    accept_queue: int    # connections waiting in its listening sockets' accept queues

    def as_dict(self) -> dict[str, object]:
        return {"t_s": round(self.t_s, 2), "processes": self.processes,
                "zombies": self.zombies, "fds": self.fds, "close_wait": self.close_wait,
                "accept_queue": self.accept_queue}


def socket_counts(pid: int, port: int) -> tuple[int, int]:
    """(sockets in CLOSE_WAIT on 127.0.0.1:`port`, connections queued on the
    listener there), from the kernel's sock_diag filtered by state: the cost
    follows those sockets, not the machine's socket table (which, after a few
    load tests, holds 20,000+ TIME_WAIT rows)."""
    close_wait = close_wait_on_ports(pid, frozenset({port}), same_netns=True,
                                     families=(socket.AF_INET,)) or 0
    try:
        queued = sum(row.rqueue for row in inet_diag_dump(socket.AF_INET, 1 << netlink.TCP_LISTEN)
                     if row.local_port == port)  # rqueue of a listener = its accept queue
    except OSError:
        queued = 0
    return close_wait, queued


def fd_count(pid: int) -> int | None:
    try:
        return count_fds(pid)
    except ProcessGone:
        return None


class Sampler:
    """Samples the server's session every `interval_s` from a thread until
    stopped; remembers every process it saw (pid and start time) so the
    teardown can prove each one is gone."""

    def __init__(self, pid: int, port: int, started_at: float,
                 interval_s: float = SAMPLE_INTERVAL_S) -> None:
        self.pid = pid
        self.port = port
        self.started_at = started_at
        self.interval_s = interval_s
        self.samples: list[Sample] = []
        self.seen: set[tuple[int, int]] = set()
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="sampler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5.0)

    def snapshot_now(self) -> None:
        """Take one sample in the calling thread (never raises)."""
        try:
            members = session_members(self.pid)
            if not any(st.pid == self.pid and st.state != "Z" for st in members):
                return  # the server has exited
            close_wait, queued = socket_counts(self.pid, self.port)
            sample = Sample(t_s=time.monotonic() - self.started_at,
                            processes=sum(1 for st in members if st.state != "Z"),
                            zombies=sum(1 for st in members if st.state == "Z"),
                            fds=fd_count(self.pid), close_wait=close_wait,
                            accept_queue=queued)
        except Exception:  # a race inside /proc: skip this point
            return
        with self._lock:
            if len(self.samples) < MAX_SAMPLES:
                self.samples.append(sample)
            self.seen.update((st.pid, st.start_ticks) for st in members)

    def _run(self) -> None:
        while not self._stop.is_set():
            began = time.monotonic()
            self.snapshot_now()
            self._stop.wait(max(0.0, self.interval_s - (time.monotonic() - began)))

    def timeline(self) -> list[Sample]:
        with self._lock:
            return list(self.samples)


# ----------------------------------------------------------------------------
# One run


@dataclass(frozen=True)
class RunSettings:
    """The load and limits of one run; seconds in `_s` names, None = automatic."""

    requests: int = DEFAULT_REQUESTS
    concurrency: int = DEFAULT_CONCURRENCY
    timeout_s: float = DEFAULT_TIMEOUT_S      # per request: no EOF by then = hung
    grace_s: float = DEFAULT_GRACE_S          # between the scan's two samples
    lifetime_s: float | None = None           # the server's --lifetime; None: long enough
    fd_limit: int | None = None               # the server's soft RLIMIT_NOFILE

    def server_lifetime_s(self) -> float:
        """The load's worst case (every round hangs until its timeout), the
        scan and a margin: the server outlives the run but is still bounded."""
        if self.lifetime_s is not None:
            return self.lifetime_s
        rounds = math.ceil(self.requests / max(1, self.concurrency))
        return round(rounds * self.timeout_s + self.grace_s + SETTLE_TIMEOUT_S + 20.0, 1)


@dataclass
class ScenarioRun:
    """Everything one `scenario run` saw; render/scenario.py turns it into text or JSON."""

    scenario: Scenario
    settings: RunSettings
    server_pid: int | None = None
    port: int | None = None
    script: str = ""
    load: LoadResult | None = None
    scan: TargetReport | None = None
    scanned: str = "after-load"               # or "during-load"
    scan_error: str | None = None             # e.g. the server exited before the scan
    timeline: list[Sample] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)
    server_exit: int | None = None            # its exit status if it ended by itself
    cleanup: Teardown | None = None
    interrupted: bool = False

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.scan.findings if self.scan else ()

    @property
    def found_codes(self) -> list[str]:
        return sorted({f.code for f in self.findings})

    @property
    def missing(self) -> list[str]:
        """Expected codes the scan did not find."""
        return sorted(set(self.scenario.expected) - set(self.found_codes))

    @property
    def unexpected(self) -> list[Finding]:
        """Findings of severity warning or worse that are neither expected nor
        a by-product the scenario allows (`Scenario.also_allowed`)."""
        allowed = set(self.scenario.expected) | set(self.scenario.also_allowed)
        return [f for f in self.findings
                if f.severity.rank >= Severity.WARNING.rank and f.code not in allowed]

    @property
    def leftover_processes(self) -> int:
        return self.cleanup.leftover_processes if self.cleanup else 0

    @property
    def as_expected(self) -> bool:
        return (self.scan is not None and not self.missing and not self.unexpected
                and self.leftover_processes == 0 and not self.interrupted)

    @property
    def exit_code(self) -> int:
        return 0 if self.as_expected else 1

    def peak(self, name: str) -> int | None:
        values = [getattr(s, name) for s in self.timeline if getattr(s, name) is not None]
        if self.scan is not None:  # the scan's last sample counts too
            snap = self.scan.snapshot
            fds = snap.fds.get(self.scan.pid)
            values.append({"zombies": len(snap.zombies),
                           "fds": fds.open if fds else None,
                           "close_wait": fds.close_wait if fds else 0,
                           "processes": sum(1 for p in snap.processes.values()
                                            if not p.is_zombie),
                           "accept_queue": None}.get(name))
        values = [v for v in values if v is not None]
        return max(values) if values else None


def default_requests(fd_limit: int | None, concurrency: int) -> int:
    """The load when --requests is not given: DEFAULT_REQUESTS, or with a
    descriptor limit enough requests to exceed it (a leaked connection costs
    the server one descriptor): the limit plus a round of `concurrency`."""
    if fd_limit is None:
        return DEFAULT_REQUESTS
    return min(MAX_REQUESTS, max(DEFAULT_REQUESTS, fd_limit + concurrency))


# Whether this process may create a PID namespace (with a user namespace
# when not root), tried in a child so that nothing here changes.
_NAMESPACE_PROBE = """
import ctypes, os, sys
flags = 0x20000000 if os.geteuid() == 0 else 0x30000000  # CLONE_NEWPID (| CLONE_NEWUSER)
libc = ctypes.CDLL(None, use_errno=True)
sys.exit(0 if libc.unshare(flags) == 0 else os.strerror(ctypes.get_errno()))
"""


def pid_namespace_problem() -> str | None:
    """Why no PID namespace can be made here (for the container scenarios), or None."""
    try:
        probe = subprocess.run([sys.executable, "-c", _NAMESPACE_PROBE], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot try: {e}"
    if probe.returncode == 0:
        return None
    how = "" if os.geteuid() == 0 else " (not root: it needs unprivileged user namespaces)"
    return f"cannot create a PID namespace{how}: {probe.stderr.strip() or probe.returncode}"


def resolve(name: str) -> Scenario:
    """The scenario called `name`; KeyError with the known names otherwise."""
    found = get(name)
    if found is None:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return found


def check_settings(settings: RunSettings) -> None:
    """ValueError if the settings cannot be run (before anything starts)."""
    if settings.fd_limit is not None:
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if settings.fd_limit < MIN_FD_LIMIT:
            raise ValueError(f"--fd-limit must be at least {MIN_FD_LIMIT}, "
                             f"not {settings.fd_limit}")
        if hard != resource.RLIM_INFINITY and settings.fd_limit > hard:
            raise ValueError(f"--fd-limit {settings.fd_limit} is above the hard limit "
                             f"{hard} (ulimit -Hn)")
    if settings.lifetime_s is not None and not settings.lifetime_s > 0:
        raise ValueError(f"--lifetime must be positive, not {settings.lifetime_s:g}")


def run_scenario(name: str, settings: RunSettings = RunSettings(), *,
                 on_result: Callable[[Outcome], object] | None = None,
                 on_started: Callable[[ScenarioRun], object] | None = None) -> ScenarioRun:
    """Run scenario `name` once: start, load, sample, scan, tear down.

    `on_started` is called once the server has printed its address;
    `on_result` once per request (both in the calling thread). Raises
    KeyError for an unknown scenario, ValueError for bad settings and
    ScenarioError if the server does not start; in every case, and on
    KeyboardInterrupt or SystemExit, everything started has been killed
    and reaped before the exception leaves.
    """
    scenario = resolve(name)
    check_settings(settings)
    script = script_path(scenario.name)
    become_subreaper()
    run = ScenarioRun(scenario=scenario, settings=settings, script=str(script))
    argv = [sys.executable, str(script), "--port", "0",
            "--lifetime", f"{settings.server_lifetime_s():g}"]
    proc: subprocess.Popen[bytes] | None = None
    sampler: Sampler | None = None
    stdout = stderr = None
    try:
        started_at = time.monotonic()
        proc = subprocess.Popen(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            start_new_session=True, close_fds=True,
            preexec_fn=_lower_nofile(settings.fd_limit) if settings.fd_limit else None)
        run.server_pid = proc.pid
        stdout = _Lines(proc.stdout, "server-stdout")
        stderr = _Lines(proc.stderr, "server-stderr")
        run.port = _read_address(scenario, proc, stdout, stderr)
        sampler = Sampler(proc.pid, run.port, started_at)
        sampler.snapshot_now()
        sampler.start()
        if on_started is not None:
            on_started(run)
        _load_and_scan(run, proc.pid, sampler, on_result)
    except (KeyboardInterrupt, SystemExit):
        run.interrupted = True
        raise
    finally:
        with deferred_signals():
            if sampler is not None:
                sampler.stop()
                run.timeline = sampler.timeline()
            if proc is not None:
                run.server_exit = proc.poll()
                run.cleanup = teardown(proc, sampler.seen if sampler else set())
                if stderr is not None:
                    run.server_errors = _distinct(stderr.rest())
                if stdout is not None:
                    stdout.rest(timeout_s=0.2)
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
    return run


def _read_address(scenario: Scenario, proc: subprocess.Popen[bytes], stdout: _Lines,
                  stderr: _Lines) -> int:
    line = stdout.first_line(START_TIMEOUT_S)
    if line is None:
        if proc.poll() is not None:  # it said why on stderr (no PID namespace, ...)
            said = next(iter(stderr.rest(timeout_s=1.0)), "no address line")
            raise ScenarioError(f"the {scenario.name} server exited: {said}")
        raise ScenarioError(f"the {scenario.name} server is silent: no address line within "
                            f"{START_TIMEOUT_S:g} s")
    match = ADDRESS.match(line.strip())
    if not match:
        raise ScenarioError(f"the {scenario.name} server's first line is {line[:80]!r}, "
                            "not 127.0.0.1:PORT")
    return int(match.group(1))


def _load_and_scan(run: ScenarioRun, pid: int, sampler: Sampler,
                   on_result: Callable[[Outcome], object] | None) -> None:
    from .scan import scan

    settings = run.settings
    assert run.port is not None
    scan_thread: threading.Thread | None = None
    outcome_box: dict[str, object] = {}

    def do_scan() -> None:
        try:
            outcome_box["report"] = scan([pid], grace_s=settings.grace_s)
        except ProcessGone as gone:
            outcome_box["error"] = f"the server exited before the scan ({gone})"
        except Exception as e:  # reported, never lost in a thread
            outcome_box["error"] = f"scan failed: {type(e).__name__}: {e}"

    done = 0
    # Some findings exist only under load: a blocking server's accept queue
    # drains within a second of the last client (RD401). Those scenarios are
    # scanned while the load runs, once a quarter of the requests is done.
    scan_at = max(1, settings.requests // 4) if run.scenario.scan_during_load else None

    def result(outcome: Outcome) -> None:
        nonlocal done, scan_thread
        done += 1
        if scan_at is not None and scan_thread is None and done >= scan_at:
            scan_thread = threading.Thread(target=do_scan, name="scan", daemon=True)
            scan_thread.start()
        if on_result is not None:
            on_result(outcome)

    run.load = drive(LOOPBACK, run.port, settings.requests, settings.concurrency,
                     settings.timeout_s, on_result=result)
    if scan_at is not None:
        run.scanned = "during-load"
        if scan_thread is None:  # fewer results than expected: scan now
            do_scan()
        else:
            scan_thread.join(timeout=settings.grace_s + 60.0)
    else:
        # lost-sigchld: os.wait() reaps the oldest zombie first, so under load
        # old zombies go while the total grows; once the load stops, the same
        # PIDs persist. Let the last children finish, then scan.
        timeline = sampler.timeline()
        _settle(pid, baseline=timeline[0].processes if timeline else 1)
        do_scan()
    sampler.snapshot_now()
    report = outcome_box.get("report")
    if isinstance(report, Report) and report.targets:
        run.scan = report.targets[0]
    else:
        run.scan_error = str(outcome_box.get("error", "the scan did not finish"))


def _settle(sid: int, baseline: int = 1, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait (bounded) until the server's session is back to the `baseline`
    live processes it had before the load (the server; with a PID namespace,
    its runtime and init too): the requests' children have answered and
    exited, and their zombies, if any, are final."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if sum(1 for st in session_members(sid) if st.state != "Z") <= baseline:
            return
        time.sleep(0.05)


def _distinct(lines: list[str]) -> list[str]:
    """Distinct non-empty lines in order of first appearance, bounded."""
    seen: dict[str, None] = {}
    for line in lines:
        if line.strip() and line not in seen and len(seen) < MAX_SERVER_ERRORS:
            seen[line] = None
    return list(seen)


# ----------------------------------------------------------------------------
# compare


def compare(settings: RunSettings, names: Sequence[str] | None = None, *,
            on_started: Callable[[ScenarioRun], object] | None = None,
            on_result: Callable[[Outcome], object] | None = None) -> list[ScenarioRun]:
    """Run each scenario (all six by default) with the same settings, one
    after the other; each run is torn down before the next starts."""
    return [run_scenario(name, settings, on_started=on_started, on_result=on_result)
            for name in (names or list(SCENARIOS))]
