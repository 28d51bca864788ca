"""Server runs (`run -- COMMAND`, `scenario run NAME`): what to start and
how to judge it, what the run saw; and the scenario servers, what each one
reproduces and what reaper-doctor should find in it."""

from __future__ import annotations

import math
import shlex
from dataclasses import dataclass, field
from typing import NamedTuple

from .load import LoadResult
from .process import Teardown
from .report import Finding, Severity, TargetReport

DEFAULT_REQUESTS = 60
MAX_REQUESTS = 5000           # the load stays bounded (--requests accepts no more)
DEFAULT_CONCURRENCY = 8
DEFAULT_TIMEOUT_S = 2.0
DEFAULT_GRACE_S = 1.0
SETTLE_TIMEOUT_S = 3.0        # after the load: children finish, tick-synchronised exits land
START_TIMEOUT_S = 20.0        # to listen: a Python start-up on a busy 2-core machine


# ----------------------------------------------------------------------------
# Sampling


@dataclass(frozen=True)
class TimelinePoint:
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


class Listener(NamedTuple):
    """A TCP socket in LISTEN held by process `pid`."""

    pid: int
    host: str       # as the kernel shows it: "0.0.0.0", "127.0.0.1", "::", "::1", ...
    port: int
    proto: str      # "tcp" or "tcp6"


class Endpoint(NamedTuple):
    """Where the load goes, and the process to scan."""

    host: str       # "127.0.0.1" or "::1"
    port: int
    owner: int      # the topmost process of the tree holding the listener
    bound: str      # the address the server bound, e.g. "0.0.0.0:8080"


@dataclass(frozen=True)
class ServerSpec:
    """What to start and how to judge it."""

    argv: tuple[str, ...]
    scenario: Scenario | None = None          # a built-in script; None: the user's command
    expected: tuple[str, ...] = ()            # finding codes the run expects
    also_allowed: tuple[str, ...] = ()        # by-products tolerated besides `expected`
    scan_during_load: bool | None = None      # None: when the accept queue stays non-empty
    port: int | None = None                   # the listening port to load, when several
    request: bytes | None = None              # raw request; None: the HTTP GET
    startup_timeout_s: float = START_TIMEOUT_S

    @property
    def label(self) -> str:
        """The scenario's name, or the command as a shell would show it."""
        return self.scenario.name if self.scenario else shlex.join(self.argv)


@dataclass
class ServerRun:
    """Everything one run saw; render/scenario.py turns it into text or JSON."""

    spec: ServerSpec
    settings: RunSettings
    server_pid: int | None = None             # the command's process: its session's id
    target_pid: int | None = None             # the process scanned: it holds the listener
    host: str | None = None                   # 127.0.0.1 or ::1
    port: int | None = None
    bound: str | None = None                  # the address the server bound
    load: LoadResult | None = None
    scan: TargetReport | None = None
    scanned: str = "after-load"               # or "during-load"
    scan_error: str | None = None             # e.g. the server exited before the scan
    timeline: list[TimelinePoint] = field(default_factory=list)
    server_errors: list[str] = field(default_factory=list)   # distinct stderr lines
    output_tail: list[str] = field(default_factory=list)     # last lines, stderr else stdout
    server_exit: int | None = None            # its exit status if it ended by itself
    cleanup: Teardown | None = None
    interrupted: bool = False

    @property
    def scenario(self) -> Scenario | None:
        return self.spec.scenario

    @property
    def findings(self) -> tuple[Finding, ...]:
        return self.scan.findings if self.scan else ()

    @property
    def found_codes(self) -> list[str]:
        return sorted({f.code for f in self.findings})

    @property
    def missing(self) -> list[str]:
        """Expected codes the scan did not find."""
        return sorted(set(self.spec.expected) - set(self.found_codes))

    @property
    def unexpected(self) -> list[Finding]:
        """Findings of severity warning or worse that are neither expected nor
        a by-product the run allows (`ServerSpec.also_allowed`)."""
        allowed = set(self.spec.expected) | set(self.spec.also_allowed)
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
    def why_not(self) -> list[str]:
        """Why the run did not behave as expected, one reason each; [] if it did."""
        reasons = []
        if self.scan is None:
            reasons.append(f"no scan ({self.scan_error or 'not run'})")
        if self.missing:
            reasons.append("missing " + " ".join(self.missing) + " (expected, not found)")
        if self.unexpected:
            reasons.append("unexpected " + " ".join(sorted({f.code for f in self.unexpected})))
        if self.leftover_processes:
            reasons.append(f"{self.leftover_processes} processes left over")
        if self.interrupted:
            reasons.append("interrupted")
        return reasons

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


@dataclass(frozen=True)
class Scenario:
    name: str                   # "zombie-leak"
    script: str                 # "zombie_leak.py"
    reproduces: str             # one line: the design and its bug
    expected: tuple[str, ...]   # finding codes `scenario run` expects, e.g. ("RD101",)
    fix: str                    # one line: the fix
    # Codes `scenario run` tolerates besides `expected`: by-products of the
    # bug, not other bugs (the fd leak also grows descriptors towards the
    # limit: RD203, RD301 when --fd-limit is low; at the limit accept()
    # fails with EMFILE and connections wait in the queue: RD401).
    also_allowed: tuple[str, ...] = ()
    # Scan while the load runs: the finding exists only under load (a
    # blocking server's accept queue drains a second after the last client).
    scan_during_load: bool = False
    # The server runs as PID 1 of a PID namespace of its own (a container):
    # it needs root, or unprivileged user namespaces.
    needs_pid_namespace: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("blocking", "blocking.py",
                 "iterative server: one slow request makes every other client wait "
                 "(accept queue fills)",
                 ("RD401",),
                 "serve connections concurrently (fork with a waitpid loop, or an event loop)",
                 scan_during_load=True),
        Scenario("zombie-leak", "zombie_leak.py",
                 "fork per connection; the parent never calls waitpid",
                 ("RD101",),
                 "reap in a SIGCHLD handler: loop os.waitpid(-1, os.WNOHANG) until it returns 0"),
        Scenario("lost-sigchld", "lost_sigchld.py",
                 "SIGCHLD handler that calls wait() once per signal; bursts of exits "
                 "leave zombies",
                 ("RD102",),
                 "loop os.waitpid(-1, os.WNOHANG) in the handler: one signal may stand "
                 "for many exits"),
        Scenario("fd-leak", "fd_leak.py",
                 "fork per connection; the parent never closes client_connection",
                 ("RD201",),
                 "in the parent, close client_connection right after fork()",
                 also_allowed=("RD203", "RD301", "RD401")),
        Scenario("fixed-fork", "fixed_fork.py",
                 "the correct fork server: waitpid(-1, WNOHANG) loop, both copies closed",
                 (),
                 "nothing to fix"),
        Scenario("event-loop", "event_loop.py",
                 "one process, selectors, non-blocking sockets: the lighter design",
                 (),
                 "nothing to fix"),
        Scenario("container-init", "container_init.py",
                 "the server is PID 1 of its PID namespace (a container): adopted orphans "
                 "stay zombies, and SIGTERM from outside is dropped",
                 ("RD104", "RD105"),
                 "an init as PID 1 that reaps and forwards signals: docker run --init, "
                 "tini or dumb-init as ENTRYPOINT",
                 needs_pid_namespace=True),
        Scenario("container-init-fixed", "container_init_fixed.py",
                 "the same server behind a small init of our own as PID 1: it forwards "
                 "SIGTERM/SIGINT and reaps with a waitpid(-1, WNOHANG) loop",
                 (),
                 "nothing to fix",
                 needs_pid_namespace=True),
    )
}


def get(name: str) -> Scenario | None:
    """The scenario called `name` ("zombie-leak"; "zombie_leak" also works), or None."""
    return SCENARIOS.get(name.strip().lower().replace("_", "-"))
