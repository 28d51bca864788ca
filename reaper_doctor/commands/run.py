"""`run -- COMMAND` and `scenario run NAME`: start a server, find where it
listens, load it, sample it, scan it, tear it down, and prove nothing was
left behind. A scenario is this on a built-in script with its expectations.

1. Start: the command in its own session, under our child subreaper, its
   stdout and stderr drained by threads (their last lines are kept, and
   stderr's distinct lines: the server's own errors, like `[Errno 24]`).
2. Find the port: poll, bounded by `startup_timeout_s`, until a process of
   the session holds a TCP listening socket (collect/fds.py reads it from
   /proc). Load goes to 127.0.0.1 or ::1 only (`choose_endpoint`).
3. Load (system/load.py), sampled every 0.25 s for the timeline; the scan
   after the load (lost-sigchld's zombies only hold still once it stops), or
   during it when the accept queue is what stays (a blocking server's
   queue drains within a second of the last client).
4. Tear down in a `finally`, with SIGINT and SIGTERM deferred until it is
   done: kill the session and every descendant, reap them all (orphans
   come back to the subreaper), count what is left (`leftover_processes`).

Side effect: the calling process stays a child subreaper afterwards.
"""

from __future__ import annotations

import collections
import os
import resource
import subprocess
import threading
import time
from collections.abc import Callable, Mapping, Sequence

from ..collect.fds import listening_sockets
from ..collect.proc import ProcessGone
from ..collect.tasks import session_members, stat_lines
from ..collect.timeline import Sampler
from ..model import Report
from ..model.load import Outcome
from ..model.scenario import (
    DEFAULT_REQUESTS,
    MAX_REQUESTS,
    SETTLE_TIMEOUT_S,
    Endpoint,
    Listener,
    RunSettings,
    ServerRun,
    ServerSpec,
    TimelinePoint,
)
from ..model.signals import signal_name
from ..render.common import address_text
from ..system.lifecycle import (
    MIN_FD_LIMIT,
    become_subreaper,
    deferred_signals,
    end_session,
    lower_nofile,
    start_session,
)
from ..system.load import drive

TAIL_LINES = 20             # last lines kept of each of stdout and stderr
MAX_SERVER_ERRORS = 50      # distinct stderr lines kept
LISTEN_POLL_S = 0.05


class ListenerRefused(ValueError):
    """The server listens, but not where reaper-doctor may send load."""


class ServerStartError(Exception):
    """The server could not be loaded: the command was not found, it exited
    before listening, nothing listened in time, or it listens where load
    may not go. `tail` holds the last lines of its stderr (or stdout)."""

    def __init__(self, message: str, tail: list[str] | None = None) -> None:
        super().__init__(message)
        self.tail = tail or []


class _Output:
    """Drains the server's stdout and stderr in threads, so it never blocks
    on a full pipe, and keeps a bounded memory of them: the last lines of
    each, and the distinct lines of stderr in order of first appearance."""

    def __init__(self, proc: subprocess.Popen[bytes]) -> None:
        self.tails: dict[str, collections.deque[str]] = {
            "stdout": collections.deque(maxlen=TAIL_LINES),
            "stderr": collections.deque(maxlen=TAIL_LINES)}
        self.distinct: dict[str, None] = {}
        self._lock = threading.Lock()
        self.threads = [threading.Thread(target=self._drain, args=(stream, name),
                                         name=f"server-{name}", daemon=True)
                        for stream, name in ((proc.stdout, "stdout"), (proc.stderr, "stderr"))]
        for t in self.threads:
            t.start()

    def _drain(self, stream: object, name: str) -> None:
        try:
            for raw in iter(stream.readline, b""):  # type: ignore[attr-defined]
                line = raw.decode("utf-8", "replace").rstrip("\r\n")
                with self._lock:
                    self.tails[name].append(line)
                    if (name == "stderr" and line.strip() and line not in self.distinct
                            and len(self.distinct) < MAX_SERVER_ERRORS):
                        self.distinct[line] = None
        except (OSError, ValueError):
            pass

    def finish(self, timeout_s: float) -> None:
        """Wait, bounded, until both pipes have closed (every writer gone)."""
        deadline = time.monotonic() + timeout_s
        for t in self.threads:
            t.join(timeout=max(0.0, deadline - time.monotonic()))

    def tail(self) -> list[str]:
        """The last lines of stderr, or of stdout when stderr said nothing."""
        with self._lock:
            err = [line for line in self.tails["stderr"] if line.strip()]
            return err or [line for line in self.tails["stdout"] if line.strip()]

    def errors(self) -> list[str]:
        with self._lock:
            return list(self.distinct)


def default_requests(fd_limit: int | None, concurrency: int) -> int:
    """The load when --requests is not given: DEFAULT_REQUESTS, or with a
    descriptor limit enough requests to exceed it (a leaked connection costs
    the server one descriptor): the limit plus a round of `concurrency`."""
    if fd_limit is None:
        return DEFAULT_REQUESTS
    return min(MAX_REQUESTS, max(DEFAULT_REQUESTS, fd_limit + concurrency))


def check_settings(settings: RunSettings) -> None:
    """ValueError if the settings cannot be run (before anything starts)."""
    if settings.fd_limit is not None:
        _, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if settings.fd_limit < MIN_FD_LIMIT:
            raise ValueError(f"--fd-limit must be at least {MIN_FD_LIMIT}, "
                             f"not {settings.fd_limit}")
        if hard != resource.RLIM_INFINITY and settings.fd_limit > hard:
            raise ValueError(f"--fd-limit {settings.fd_limit} is above the hard limit "
                             f"{hard} (ulimit -Hn)")
    if settings.lifetime_s is not None and not settings.lifetime_s > 0:
        raise ValueError(f"--lifetime must be positive, not {settings.lifetime_s:g}")


def run_server(spec: ServerSpec, settings: RunSettings = RunSettings(), *,
               on_result: Callable[[Outcome], object] | None = None,
               on_started: Callable[[ServerRun], object] | None = None) -> ServerRun:
    """Run `spec` once: start, find the port, load, sample, scan, tear down.

    `on_started` is called once the server listens; `on_result` once per
    request (both in the calling thread). Raises ValueError for bad
    settings and ServerStartError if the server cannot be loaded; in every
    case, and on KeyboardInterrupt or SystemExit, everything started has
    been killed and reaped before the exception leaves.
    """
    check_settings(settings)
    become_subreaper()
    run = ServerRun(spec=spec, settings=settings)
    proc: subprocess.Popen[bytes] | None = None
    sampler: Sampler | None = None
    output: _Output | None = None
    seen: set[tuple[int, int]] = set()
    try:
        started_at = time.monotonic()
        proc = _start(spec, settings)
        run.server_pid = proc.pid
        output = _Output(proc)
        endpoint = _wait_for_listener(spec, proc, output, seen)
        run.host, run.port, run.target_pid, run.bound = (endpoint.host, endpoint.port,
                                                         endpoint.owner, endpoint.bound)
        sampler = Sampler(proc.pid, endpoint.port, started_at, target=endpoint.owner,
                          ipv6=endpoint.host == "::1", under=os.getpid())
        sampler.seen |= seen
        sampler.snapshot_now()
        sampler.start()
        if on_started is not None:
            on_started(run)
        _load_and_scan(run, endpoint, sampler, on_result)
    except (KeyboardInterrupt, SystemExit):
        run.interrupted = True
        raise
    finally:
        with deferred_signals():
            if sampler is not None:
                sampler.stop()
                run.timeline = sampler.timeline()
                seen |= sampler.seen
            if proc is not None:
                run.server_exit = proc.poll()
                run.cleanup = end_session(proc, seen=seen)
                if output is not None:
                    output.finish(timeout_s=1.0)
                    run.server_errors = output.errors()
                    run.output_tail = output.tail()
                for stream in (proc.stdout, proc.stderr):
                    if stream is not None:
                        stream.close()
    return run


def _start(spec: ServerSpec, settings: RunSettings) -> subprocess.Popen[bytes]:
    try:
        return start_session(
            spec.argv, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
            stderr=subprocess.PIPE, close_fds=True,
            preexec_fn=lower_nofile(settings.fd_limit) if settings.fd_limit else None)
    except FileNotFoundError:
        raise ServerStartError(f"command not found: {spec.argv[0]}") from None
    except PermissionError:
        raise ServerStartError(f"cannot run {spec.argv[0]}: permission denied") from None
    except OSError as e:
        raise ServerStartError(f"cannot run {spec.argv[0]}: {e.strerror or e}") from None


def _wait_for_listener(spec: ServerSpec, proc: subprocess.Popen[bytes], output: _Output,
                       seen: set[tuple[int, int]]) -> Endpoint:
    """Poll the session until a process of it listens on a TCP port (bounded
    by `spec.startup_timeout_s`); the endpoint to load. Remembers every
    process met in `seen` (pid, start time) for the teardown's count."""
    sid = proc.pid
    deadline = time.monotonic() + spec.startup_timeout_s
    while True:
        members = session_members(sid)
        seen.update((st.pid, st.start_ticks) for st in members)
        live = [st for st in members if st.state != "Z"]
        if not live and proc.poll() is not None:
            output.finish(timeout_s=1.0)
            raise ServerStartError(
                f"{spec.label} exited with status {_status(proc.returncode)} before "
                "listening on a TCP port", output.tail())
        try:
            endpoint = choose_endpoint(listening_sockets(st.pid for st in live),
                                       {st.pid: st.ppid for st in members}, spec.port)
        except ListenerRefused as e:
            raise ServerStartError(str(e)) from None
        if endpoint is not None:
            return endpoint
        if time.monotonic() > deadline:
            where = f"on port {spec.port}" if spec.port is not None else "on a TCP port"
            raise ServerStartError(f"{spec.label}: nothing listening {where} within "
                                   f"{spec.startup_timeout_s:g} s (--startup-timeout)",
                                   output.tail())
        time.sleep(LISTEN_POLL_S)


def _status(returncode: int | None) -> str:
    if returncode is not None and returncode < 0:
        return f"{returncode} (killed by {signal_name(-returncode)})"
    return str(returncode)


def _load_and_scan(run: ServerRun, endpoint: Endpoint, sampler: Sampler,
                   on_result: Callable[[Outcome], object] | None) -> None:
    from .scan import scan

    settings = run.settings
    pid = endpoint.owner
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
    # drains within a second of the last client (RD401). Those servers are
    # scanned while the load runs. A scenario that says so is scanned from
    # the first answer (its queue is full from the first round of clients,
    # and the scan's two samples must both fall before it drains); for any
    # other server, the queue decides once a quarter of the requests is
    # done (non-empty in the last two samples, a quarter of a second apart).
    during = run.spec.scan_during_load
    scan_at = 1 if during else max(1, settings.requests // 4)

    def result(outcome: Outcome) -> None:
        nonlocal done, scan_thread, during
        done += 1
        if scan_thread is None and done >= scan_at and during is not False:
            if during is None:
                during = _queue_stays(sampler.timeline())
            if during:
                scan_thread = threading.Thread(target=do_scan, name="scan", daemon=True)
                scan_thread.start()
        if on_result is not None:
            on_result(outcome)

    run.load = drive(endpoint.host, endpoint.port, settings.requests, settings.concurrency,
                     settings.timeout_s, on_result=result, request=run.spec.request)
    if during:
        run.scanned = "during-load"
        if scan_thread is None:  # fewer results than expected: scan now
            do_scan()
        else:
            scan_thread.join(timeout=settings.grace_s + 60.0)
    else:
        # lost-sigchld: os.wait() reaps the oldest zombie first, so under load
        # old zombies go while the total grows; once the load stops, the same
        # PIDs persist. Let the last children finish, then scan.
        _settle(pid)
        do_scan()
    sampler.snapshot_now()
    report = outcome_box.get("report")
    if isinstance(report, Report) and report.targets:
        run.scan = report.targets[0]
    else:
        run.scan_error = str(outcome_box.get("error", "the scan did not finish"))


def _queue_stays(samples: list[TimelinePoint]) -> bool:
    last = samples[-2:]
    return len(last) == 2 and all(s.accept_queue > 0 for s in last)


def _settle(pid: int, timeout_s: float = SETTLE_TIMEOUT_S) -> None:
    """Wait (bounded) until the server has no live child: the requests'
    children have answered and exited, and their zombies, if any, are final."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if not any(st.ppid == pid and st.state != "Z" for st in stat_lines()):
            return
        time.sleep(0.05)


# ----------------------------------------------------------------------------
# Where to send the load: pure


def loopback_for(host: str) -> str | None:
    """The loopback address that reaches a socket bound to `host`: 127.0.0.1
    for 127.0.0.1 and the IPv4 wildcard 0.0.0.0 (`''` in Python), ::1 for
    ::1 and the IPv6 wildcard ::; None for any other address."""
    host = host.removeprefix("::ffff:")     # an IPv4-mapped IPv6 address
    if host in ("127.0.0.1", "0.0.0.0"):
        return "127.0.0.1"
    if host in ("::1", "::"):
        return "::1"
    return None


def choose_endpoint(listeners: Sequence[Listener], parents: Mapping[int, int],
                    port: int | None = None) -> Endpoint | None:
    """The endpoint to load, from the listening sockets of the server's tree.

    None while there is nothing to choose yet (no listener, or none on
    `port`). ListenerRefused, with the whole reason in one line, when the
    server listens on several ports and `port` is None, or only on
    addresses that are not loopback. `parents` maps pid -> ppid for the
    tree: the owner is the holder none of whose ancestors holds it too
    (the server, not the children it forked)."""
    if port is not None:
        listeners = [s for s in listeners if s.port == port]
    if not listeners:
        return None
    ports = sorted({s.port for s in listeners})
    if len(ports) > 1:
        raise ListenerRefused("the server listens on several TCP ports "
                              f"({', '.join(map(str, ports))}): pick one with --port")
    reachable = sorted(((loopback_for(s.host), s) for s in listeners if loopback_for(s.host)),
                       key=lambda pair: (pair[0] != "127.0.0.1", pair[1].pid))
    if not reachable:
        bound = ", ".join(sorted({address_text((s.host, s.port)) for s in listeners}))
        raise ListenerRefused(
            f"the server listens on {bound} only, not on loopback: reaper-doctor sends "
            "load to 127.0.0.1 or ::1 only (bind 127.0.0.1 to test it)")
    host, first = reachable[0]
    assert host is not None
    holders = {s.pid for s in listeners}
    owner = min((pid for pid in holders if not _has_ancestor_in(pid, holders, parents)),
                default=first.pid)
    return Endpoint(host, first.port, owner, address_text((first.host, first.port)))


def _has_ancestor_in(pid: int, holders: set[int], parents: Mapping[int, int]) -> bool:
    seen = {pid}
    parent = parents.get(pid)
    while parent is not None and parent not in seen:
        if parent in holders:
            return True
        seen.add(parent)
        parent = parents.get(parent)
    return False
