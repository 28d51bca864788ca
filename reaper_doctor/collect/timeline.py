"""A server run's timeline: the server's session sampled from a thread."""

from __future__ import annotations

import socket
import threading
import time

from ..model.scenario import TimelinePoint
from ..parse import netlink
from .fds import count_fds
from .proc import ProcessGone
from .sockets import close_wait_on_ports, inet_diag_dump
from .tasks import session_members, session_members_below

SAMPLE_INTERVAL_S = 0.25
MAX_SAMPLES = 2400            # 10 minutes at 0.25 s: the timeline stays bounded


def socket_counts(pid: int, port: int, family: int = socket.AF_INET) -> tuple[int, int]:
    """(sockets of `family` in CLOSE_WAIT on local `port`, connections queued
    on the listener there), from the kernel's sock_diag filtered by state:
    the cost follows those sockets, not the machine's socket table (which,
    after a few load tests, holds 20,000+ TIME_WAIT rows)."""
    close_wait = close_wait_on_ports(pid, frozenset({port}), same_netns=True,
                                     families=(family,)) or 0
    try:
        queued = sum(row.rqueue for row in inet_diag_dump(family, 1 << netlink.TCP_LISTEN)
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
    teardown can prove each one is gone. Processes and zombies are counted
    over session `sid`; descriptors are those of `target` (the process
    holding the listener: `sid` itself unless given), sockets those on
    `port` (IPv6 ones when `ipv6`). With `under` (the child subreaper that
    started the session), members are looked for below it, not across the
    whole machine: a sample then costs what the session holds, and does not
    starve the other threads (a scan during the load) on a machine of
    thousands of processes."""

    def __init__(self, sid: int, port: int, started_at: float, *, target: int | None = None,
                 ipv6: bool = False, interval_s: float = SAMPLE_INTERVAL_S,
                 under: int | None = None) -> None:
        self.sid = sid
        self.under = under
        self.pid = sid if target is None else target
        self.family = socket.AF_INET6 if ipv6 else socket.AF_INET
        self.port = port
        self.started_at = started_at
        self.interval_s = interval_s
        self.samples: list[TimelinePoint] = []
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
            members = (session_members(self.sid) if self.under is None
                       else session_members_below(self.sid, self.under))
            if not any(st.pid == self.pid and st.state != "Z" for st in members):
                return  # the server has exited
            close_wait, queued = socket_counts(self.pid, self.port, self.family)
            sample = TimelinePoint(t_s=time.monotonic() - self.started_at,
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

    def timeline(self) -> list[TimelinePoint]:
        with self._lock:
            return list(self.samples)
