"""`scenario run` and `scenario compare`: start a scenario server, load it,
sample it, scan it, tear it down, and prove nothing was left behind.

While the load runs, a thread (collect/timeline.py) samples the server's
session every 0.25 s (processes, zombies, open fds, CLOSE_WAIT, accept
queue) for the timeline; the scan comes after the load (lost-sigchld's
zombies only hold still once it stops), or during it for scenarios whose
finding only exists under load (`Scenario.scan_during_load`: blocking).
Diagnosis goes through commands/scan.py, text and JSON are in
render/scenario.py.

Side effect: the calling process stays a child subreaper afterwards.

Clean-up is the contract (system/lifecycle.py): the runner makes itself a
child subreaper, so whatever the server forks and orphans comes back to
it; the server runs in its own session, so its whole tree can be found
(session id in /proc/<pid>/stat, zombies included) and signalled as one
process group. Teardown runs in a `finally`, with SIGINT and SIGTERM
deferred until it is done, and ends by counting what is still there:
`leftover_processes`, which must be 0.

The scenario scripts live in the repository's top-level `scenarios/`
folder; the wheel ships them inside the package as `reaper_doctor/scenarios/`
(pyproject `force-include`), so `script_path` looks there first and falls
back to the checkout (editable or dev runs).
"""

from __future__ import annotations

import os
import queue
import re
import resource
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path

from ..collect.proc import ProcessGone
from ..collect.tasks import session_members
from ..collect.timeline import Sampler
from ..model import Report
from ..model.load import Outcome
from ..model.scenario import (
    DEFAULT_REQUESTS,
    MAX_REQUESTS,
    SCENARIOS,
    SETTLE_TIMEOUT_S,
    RunSettings,
    Scenario,
    ScenarioRun,
    get,
)
from ..system.lifecycle import (
    MIN_FD_LIMIT,
    become_subreaper,
    deferred_signals,
    end_session,
    lower_nofile,
    start_session,
)
from ..system.load import LOOPBACK, drive

ADDRESS = re.compile(r"^127\.0\.0\.1:(\d{1,5})$")
MAX_SERVER_ERRORS = 50        # distinct stderr lines kept
START_TIMEOUT_S = 20.0        # a Python start-up on a busy 2-core machine


class ScenarioError(Exception):
    """The scenario could not be run (its server did not start, bad settings)."""


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


def runnable_scenarios() -> tuple[list[str], str | None]:
    """Every scenario this machine can run, and why the others cannot (the
    container scenarios need a PID namespace), or None."""
    names = list(SCENARIOS)
    needing = [n for n in names if SCENARIOS[n].needs_pid_namespace]
    problem = pid_namespace_problem() if needing else None
    if problem is None:
        return names, None
    return [n for n in names if n not in needing], f"skipping {', '.join(needing)}: {problem}"


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
        proc = start_session(
            argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
            close_fds=True,
            preexec_fn=lower_nofile(settings.fd_limit) if settings.fd_limit else None)
        run.server_pid = proc.pid
        stdout = _Lines(proc.stdout, "server-stdout")
        stderr = _Lines(proc.stderr, "server-stderr")
        run.port = _read_address(scenario, proc, stdout, stderr)
        # Live processes of the session before any load: the server (with a
        # PID namespace, its runtime and init too). The scan waits for this.
        idle = sum(1 for st in session_members(proc.pid) if st.state != "Z")
        sampler = Sampler(proc.pid, run.port, started_at)
        sampler.snapshot_now()
        sampler.start()
        if on_started is not None:
            on_started(run)
        _load_and_scan(run, proc.pid, sampler, on_result, idle)
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
                run.cleanup = end_session(proc, seen=sampler.seen if sampler else ())
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
                   on_result: Callable[[Outcome], object] | None, idle: int = 1) -> None:
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
        _settle(pid, baseline=idle)
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


def scripts_dir() -> Path:
    """The folder holding the scenario scripts: in the installed package, else
    the checkout's top-level `scenarios/`."""
    import reaper_doctor

    package = Path(reaper_doctor.__file__).resolve().parent
    for candidate in (package / "scenarios", package.parent / "scenarios"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"scenario scripts not found in {package / 'scenarios'} "
                            f"or {package.parent / 'scenarios'}")


def script_path(name: str) -> Path:
    """The script of scenario `name`. KeyError if no such scenario,
    FileNotFoundError if its script is missing from the installation."""
    scenario = get(name)
    if scenario is None:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    path = scripts_dir() / scenario.script
    if not path.is_file():
        raise FileNotFoundError(f"scenario script missing: {path}")
    return path
