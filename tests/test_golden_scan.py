"""`scan --json` on a hand-built two-sample scan of a fork server is the
document in tests/data/scan_golden.json, byte for byte: the rules and the
JSON renderer, without a process or a clock. A change to the document is a
change to the contract: regenerate it on purpose
(REAPER_DOCTOR_GOLDEN=write pytest tests/test_golden_scan.py) and say so
in the CHANGELOG."""

from __future__ import annotations

import os
from pathlib import Path

from reaper_doctor.diagnose import diagnose
from reaper_doctor.model import (
    FdTable,
    LimitUsage,
    NprocUsage,
    PidsCgroup,
    ProcessInfo,
    Report,
    Snapshot,
    SocketFd,
    TargetReport,
    Unreadable,
)
from reaper_doctor.parse.procfs import decode_wait_status
from reaper_doctor.render.json import render_json

GOLDEN = Path(__file__).parent / "data" / "scan_golden.json"

LISTEN = SocketFd(3, 7001, "tcp", ("127.0.0.1", 8080), ("0.0.0.0", 0), "LISTEN", 0, 0, 128)
CLOSE_WAIT = (
    SocketFd(4, 7002, "tcp", ("127.0.0.1", 8080), ("127.0.0.1", 50001), "CLOSE_WAIT", 1, 0, None),
    SocketFd(5, 7003, "tcp", ("127.0.0.1", 8080), ("127.0.0.1", 50002), "CLOSE_WAIT", 1, 0, None),
)


def process(pid: int, ppid: int, state: str = "S", sigchld: str | None = None,
            raw_status: int | None = None) -> ProcessInfo:
    zombie = state == "Z"
    return ProcessInfo(
        pid=pid, ppid=ppid, name="python3", state=state, start_ticks=pid * 100,
        age_s=12.5 - pid / 100, threads=1, uid=1000,
        cmdline=None if zombie else ("python3", "server.py", "--port", "8080"),
        num_fds=None if zombie else 7,
        exit_status=decode_wait_status(raw_status) if zombie else None, sigchld=sigchld)


def sample(taken_at: float, zombies: list[tuple[int, int]]) -> Snapshot:
    """The server (SIGCHLD caught), a live child holding its listener, and
    `zombies` (pid, raw wait status); two accepted sockets in CLOSE_WAIT."""
    processes = {100: process(100, 1, sigchld="caught"), 103: process(103, 100, sigchld="default")}
    for pid, raw in zombies:
        processes[pid] = process(pid, 100, "Z", raw_status=raw)
    fds = {100: FdTable(open=7, by_kind={"tcp": 3, "pipe": 2, "file": 2},
                        top_paths=(("/var/log/server.log", 2),), sockets=(LISTEN, *CLOSE_WAIT)),
           103: FdTable(open=4, by_kind={"tcp": 1, "device": 3}, sockets=(LISTEN,))}
    return Snapshot(
        target=100, taken_at=taken_at, processes=processes, fds=fds,
        nofile={100: LimitUsage(7, 1024, 4096), 103: LimitUsage(4, 1024, 4096)},
        nproc=NprocUsage(used=40, soft=512, hard=512, uid=1000, enforced=True),
        pids_cgroup=PidsCgroup(path="/sys/fs/cgroup/pids/server", current=40, max=64, refusals=2),
        pid_max=32768, pids_in_use=300,
        unreadable=(Unreadable(103, "sigchld", "permission denied"),))


def scan_document() -> str:
    # 101 (exit 3) and 102 (SIGKILL) persist; 104 is reaped, 105 (SIGSEGV, core) is new.
    earlier = sample(100.0, [(101, 3 << 8), (102, 9), (104, 0)])
    later = sample(101.0, [(101, 3 << 8), (102, 9), (105, 139)])
    findings = tuple(diagnose([earlier, later], grace_s=1.0))
    target = TargetReport(pid=100, snapshot=later, findings=findings, samples=2, grace_s=1.0,
                          elapsed_s=1.0)
    return render_json(Report(targets=(target,)))


def test_scan_json_of_a_hand_built_scan_is_the_golden_document():
    document = scan_document()
    if os.environ.get("REAPER_DOCTOR_GOLDEN") == "write":
        GOLDEN.write_text(document)
    assert document == GOLDEN.read_text()
