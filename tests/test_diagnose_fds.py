"""The pure descriptor findings on hand-built snapshots (the e2e tests in
test_fds.py and test_watch.py prove them on real processes)."""

from __future__ import annotations

import dataclasses

from reaper_doctor.diagnose.fds import (
    accept_backlog_findings,
    close_wait_findings,
    fd_growth_findings,
    inherited_listener_findings,
)
from reaper_doctor.diagnose.watch import (
    linear_fit,
    watch_etas,
    watch_fd_growth,
    watch_rates,
)
from reaper_doctor.model import (
    FdCounts,
    FdTable,
    HolderLook,
    LimitUsage,
    ProcessInfo,
    Snapshot,
    SocketFd,
    WatchLimits,
    WatchSample,
)
from reaper_doctor.render.watch import sparkline

PORT = 8080


def proc(pid: int, ppid: int, state: str = "S") -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=ppid, name="srv", state=state, start_ticks=pid * 10,
                       age_s=1.0, threads=1, uid=1000, cmdline=("srv",), num_fds=None)


def listener(fd: int = 3, inode: int = 100, queue: int = 0, backlog: int | None = None) -> SocketFd:
    return SocketFd(fd, inode, "tcp", ("127.0.0.1", PORT), ("0.0.0.0", 0), "LISTEN", queue, 0,
                    backlog)


def conn(fd: int, inode: int, state: str = "ESTABLISHED") -> SocketFd:
    return SocketFd(fd, inode, "tcp", ("127.0.0.1", PORT), ("127.0.0.1", 40000 + fd), state, 0, 0)


def snap(t: float, tables: dict[int, FdTable], procs: list[ProcessInfo],
         peers: dict | None = None) -> Snapshot:
    return Snapshot(target=procs[0].pid, taken_at=t, processes={p.pid: p for p in procs},
                    fds=tables, accept_queue_peers=peers or {})


def table(*sockets: SocketFd, closed: tuple[tuple[int, int], ...] = ()) -> FdTable:
    return FdTable(open=3 + len(sockets) + len(closed), by_kind={}, sockets=sockets,
                   closed_tcp=closed)


def test_rd201_needs_the_same_sockets_in_both_samples():
    parent = [proc(10, 1)]
    leaked = [conn(4 + i, 200 + i, "CLOSE_WAIT") for i in range(5)]
    earlier = snap(0.0, {10: table(listener(), *leaked)}, parent)
    later = snap(1.0, {10: table(listener(), *leaked)}, parent)
    (f,) = close_wait_findings(earlier, later)
    assert f.code == "RD201" and f.evidence["close_wait"] == 5 and f.evidence["oldest_fd"] == 4
    # Different sockets each time: connections closing normally, not a leak.
    other = [conn(4 + i, 300 + i, "CLOSE_WAIT") for i in range(5)]
    later2 = snap(1.0, {10: table(listener(), *other)}, parent)
    assert list(close_wait_findings(earlier, later2)) == []


def test_rd201_one_close_wait_in_a_worker_is_not_a_leak():
    parent, child = proc(10, 1), proc(11, 10)
    tables = {10: table(listener()), 11: table(conn(4, 201, "CLOSE_WAIT"))}
    s = snap(0.0, tables, [parent, child])
    later = snap(1.0, tables, [parent, child])
    assert list(close_wait_findings(s, later)) == []


def test_rd201_shut_down_sockets_from_ten():
    parent = [proc(10, 1)]
    nine = tuple((4 + i, 500 + i) for i in range(9))
    ten = tuple((4 + i, 500 + i) for i in range(10))
    assert list(close_wait_findings(snap(0, {10: table(listener(), closed=nine)}, parent),
                                    snap(1, {10: table(listener(), closed=nine)}, parent))) == []
    (f,) = close_wait_findings(snap(0, {10: table(listener(), closed=ten)}, parent),
                               snap(1, {10: table(listener(), closed=ten)}, parent))
    assert f.evidence["shut_down"] == 10 and f.evidence["close_wait"] == 0


def test_rd202_per_connection_children_but_not_a_pre_fork_pool():
    parent, a, b = proc(10, 1), proc(11, 10), proc(12, 10)
    per_conn = {10: table(listener()), 11: table(listener(), conn(4, 201)),
                12: table(listener(), conn(4, 202))}
    s0, s1 = snap(0, per_conn, [parent, a, b]), snap(1, per_conn, [parent, a, b])
    (f,) = inherited_listener_findings(s0, s1)
    assert f.pid == 10 and f.evidence["children"] == 2
    idle_worker = {**per_conn, 12: table(listener())}
    assert list(inherited_listener_findings(s0, snap(1, idle_worker, [parent, a, b]))) == []
    # A worker that holds a new connection since the first sample accepted it itself.
    accepted_again = {**per_conn, 11: table(listener(), conn(4, 299))}
    assert list(inherited_listener_findings(s0, snap(1, accepted_again, [parent, a, b]))) == []


def test_rd401_queue_must_stay_non_empty_in_every_sample():
    parent = [proc(10, 1)]
    peers0 = {100: frozenset({("127.0.0.1", 1), ("127.0.0.1", 2)})}
    s0 = snap(0, {10: table(listener(queue=2, backlog=5))}, parent, peers0)
    stuck = snap(1, {10: table(listener(queue=2, backlog=5))}, parent, peers0)
    (f,) = accept_backlog_findings(s0, stuck, between=[{100: 2}, {100: 1}])
    assert f.evidence["queue"] == 2 and f.evidence["backlog"] == 5 and not f.evidence["full"]
    assert f.evidence["queue_samples"] == [2, 2, 1, 2] and f.evidence["waited_whole_window"] == 2
    # Other connections each time, but never an empty queue: a server that
    # takes one at a time and is always behind.
    turned_over = snap(1, {10: table(listener(queue=2))}, parent,
                       {100: frozenset({("127.0.0.1", 3)})})
    (f,) = accept_backlog_findings(s0, turned_over, between=[{100: 3}, {100: 2}])
    assert f.evidence["waited_whole_window"] == 0
    # Empty in a sample between: it accepts.
    assert list(accept_backlog_findings(s0, stuck, between=[{100: 2}, {100: 0}])) == []
    emptied = snap(1, {10: table(listener(queue=0))}, parent)
    assert list(accept_backlog_findings(s0, emptied)) == []


def test_rd401_wants_holders_stuck_where_it_looked_at_them():
    parent = [proc(10, 1)]
    tables = {10: table(listener(queue=2, backlog=5))}

    def judge(asleep: list[bool], cpu_s: list[float]) -> list:
        looks = [{100: HolderLook(a, {10: c})} for a, c in zip(asleep, cpu_s)]
        s0 = dataclasses.replace(snap(0, tables, parent), queue_holders=looks[0])
        s1 = dataclasses.replace(snap(1, tables, parent), queue_holders=looks[-1])
        return list(accept_backlog_findings(s0, s1, between=[{100: 2}, {100: 2}],
                                            looks=looks[1:-1]))

    # Running or waiting for a CPU whenever the queue was read, and on one
    # 5 % of the time: a starved server that accepts when it runs.
    assert judge([False] * 4, [1.0, 1.02, 1.04, 1.05]) == []
    assert judge([True, False, False, False], [1.0, 1.0, 1.0, 1.0]) == []
    # Asleep elsewhere in half the samples: a blocking handler.
    (f,) = judge([True, False, True, False], [1.0, 1.0, 1.0, 1.01])
    assert f.evidence["holders_asleep"] == 2 and f.evidence["holders_cpu_share"] == 0.01
    assert "not accepting (a blocking handler" in f.message
    # Never asleep, but on a CPU most of the window: work in the accept loop.
    (f,) = judge([False] * 4, [1.0, 1.3, 1.6, 1.9])
    assert f.evidence["holders_asleep"] == 0 and f.evidence["holders_cpu_share"] == 0.9
    assert "ran on a CPU 90% of the time" in f.message
    # Holders never looked at (the census): the queue alone decides.
    (f,) = accept_backlog_findings(snap(0, tables, parent), snap(1, tables, parent))
    assert f.evidence["holders_asleep"] is None


def test_rd203_scan_needs_a_rise_in_every_interval():
    nofile = {10: LimitUsage(used=50, soft=1024, hard=4096)}
    rising = [FdCounts(t, {10: n}) for t, n in ((0, 10), (0.33, 20), (0.66, 30), (1.0, 40))]
    (f,) = fd_growth_findings(rising, nofile)
    assert f.evidence["rate_per_s"] == 30.0 and f.evidence["eta_s"] == round((1024 - 40) / 30, 1)
    bumpy = [FdCounts(t, {10: n}) for t, n in ((0, 10), (0.33, 40), (0.66, 39), (1.0, 60))]
    assert list(fd_growth_findings(bumpy, nofile)) == []
    small = [FdCounts(t, {10: n}) for t, n in ((0, 10), (0.33, 13), (0.66, 16), (1.0, 19))]
    assert list(fd_growth_findings(small, nofile)) == []


def test_linear_fit_and_watch_summary():
    slope, r2 = linear_fit([0, 1, 2, 3], [10, 12, 14, 16])
    assert slope == 2.0 and r2 == 1.0
    samples = [WatchSample(t, 0, 10 + 2 * int(t), 0, 300, None) for t in range(10)]
    rates = watch_rates(samples)
    assert rates["fds"] == 120.0 and rates["tasks"] == 0.0 and rates["pids_cgroup"] is None
    etas = watch_etas(samples, rates, WatchLimits(nofile=1024, nproc=4096, pids_cgroup=None))
    assert etas == {"nofile": round((1024 - 28) / 2, 1), "nproc": None, "pids_cgroup": None}
    assert watch_fd_growth(1, samples, 1024) is not None
    noisy = [WatchSample(t, 0, 100 + (7 if t % 2 else -7), 0, 1, None) for t in range(20)]
    assert watch_fd_growth(1, noisy, 1024) is None


def test_sparkline():
    assert sparkline([1, 2, 3, 4, 5, 6, 7, 8]) == "▁▂▃▄▅▆▇█"
    assert sparkline([5, 5, 5]) == "▁▁▁"
    assert len(sparkline(list(range(1000)))) == 40


def test_coverage_names_what_is_missing_and_what_would_complete_it():
    from reaper_doctor.diagnose.coverage import coverage
    from reaper_doctor.model import Unreadable

    procs = [proc(10, 1), proc(11, 10), proc(12, 10)]
    complete = snap(0, {}, procs)
    assert coverage(complete) is None
    denied = tuple(Unreadable(pid, "fds", "permission denied") for pid in (10, 11, 12))
    gaps = coverage(dataclasses.replace(complete, unreadable=denied, reader_uid=65534))
    assert gaps is not None
    assert gaps.missing == ("the descriptors of 3 processes, PIDs 10, 11, 12 "
                            "(permission denied)",)
    assert "RD201" in gaps.unchecked and "RD101" not in gaps.unchecked
    assert gaps.to_complete == "run as root, or as UID 1000 (the owner), to complete it"
    as_root = coverage(dataclasses.replace(complete, unreadable=denied[:1], reader_uid=0))
    assert as_root is not None and "even as root" in as_root.to_complete
    # A field no finding needs leaves the scan complete.
    cmdline = (Unreadable(10, "cmdline", "permission denied"),)
    assert coverage(dataclasses.replace(complete, unreadable=cmdline)) is None
