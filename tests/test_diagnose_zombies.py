"""The zombie rules on hand-built snapshots, no process started: persistence
across samples, the RD101/RD102/RD103 choice by the parent's SIGCHLD
disposition, slow reapers (PID 1, subreapers) and their longer grace, PID
reuse. The e2e tests (test_scan.py, the scenarios) prove them on real
processes."""

from __future__ import annotations

import pytest

from reaper_doctor.diagnose import diagnose
from reaper_doctor.diagnose.zombies import PID1_GRACE_S, persistent_zombies, zombie_findings
from reaper_doctor.model import ProcessInfo, Severity, Snapshot
from reaper_doctor.parse.procfs import decode_wait_status

SERVER = 100


def process(pid: int, ppid: int, *, state: str = "S", start: int | None = None,
            sigchld: str | None = "default", pending: bool = False,
            raw_status: int | None = None) -> ProcessInfo:
    zombie = state == "Z"
    return ProcessInfo(
        pid=pid, ppid=ppid, name="server" if pid == SERVER else "child", state=state,
        start_ticks=pid * 10 if start is None else start, age_s=5.0, threads=1, uid=1000,
        cmdline=None if zombie else ("python3", "server.py"), num_fds=None,
        exit_status=decode_wait_status(raw_status) if zombie else None,
        sigchld=None if zombie else sigchld, sigchld_pending=pending)


def zombie(pid: int, ppid: int = SERVER, *, start: int | None = None,
           raw_status: int = 3 << 8) -> ProcessInfo:
    return process(pid, ppid, state="Z", start=start, raw_status=raw_status)


def snapshot(t: float, *processes: ProcessInfo, target: int = SERVER,
             target_parent: ProcessInfo | None = None) -> Snapshot:
    return Snapshot(target=target, taken_at=t, processes={p.pid: p for p in processes},
                    target_parent=target_parent)


def server(**kw: object) -> ProcessInfo:
    return process(SERVER, 1, **kw)  # type: ignore[arg-type]


# -- persistence ------------------------------------------------------------

def test_a_zombie_in_both_samples_a_grace_apart_persists():
    earlier = snapshot(10.0, server(), zombie(101), zombie(102))
    later = snapshot(11.0, server(), zombie(101), zombie(102))
    assert [z.pid for z in persistent_zombies(earlier, later, grace_s=1.0)] == [101, 102]
    (f,) = zombie_findings(earlier, later, grace_s=1.0)
    assert (f.code, f.pid, f.evidence["count"], f.evidence["pids"]) == ("RD101", SERVER, 2,
                                                                      [101, 102])
    assert f.evidence["persisted_s"] == 1.0


def test_zombies_that_come_and_go_are_not_a_leak():
    """A healthy fork server: zombies in both samples, never the same ones."""
    earlier = snapshot(10.0, server(), zombie(101), zombie(102))
    later = snapshot(11.0, server(), zombie(103), zombie(104))
    assert persistent_zombies(earlier, later, grace_s=1.0) == []
    assert list(zombie_findings(earlier, later, grace_s=1.0)) == []


def test_samples_closer_than_the_grace_judge_nothing():
    earlier = snapshot(10.0, server(), zombie(101))
    later = snapshot(10.5, server(), zombie(101))
    assert persistent_zombies(earlier, later, grace_s=1.0) == []


def test_one_sample_counts_every_zombie_present():
    """--grace 0: the same snapshot twice; no persistence check."""
    only = snapshot(10.0, server(), zombie(101), zombie(102))
    (f,) = zombie_findings(only, only, grace_s=0.0)
    assert f.evidence["count"] == 2 and f.evidence["persisted_s"] == 0.0
    assert "in one sample" in f.message


def test_a_reused_pid_is_a_different_zombie():
    """PID 101 is a zombie in both samples, but with another start time in
    the second: the first was reaped and the PID handed to a new child."""
    earlier = snapshot(10.0, server(), zombie(101, start=1000))
    later = snapshot(11.0, server(), zombie(101, start=2000))
    assert persistent_zombies(earlier, later, grace_s=1.0) == []


def test_zombies_counted_now_include_the_young_ones():
    earlier = snapshot(10.0, server(), zombie(101))
    later = snapshot(11.0, server(), zombie(101), zombie(102), zombie(103))
    (f,) = zombie_findings(earlier, later, grace_s=1.0)
    assert f.evidence["count"] == 1 and f.evidence["zombies_now"] == 3


# -- slow reapers -----------------------------------------------------------

def test_zombies_of_pid_1_get_a_longer_grace():
    """PID 1 on some machines reaps only every second or two: its zombies
    must persist PID1_GRACE_S before they count."""
    init = process(1, 0)
    earlier = snapshot(10.0, init, zombie(201, ppid=1), target=1)
    soon = snapshot(11.0, init, zombie(201, ppid=1), target=1)
    assert persistent_zombies(earlier, soon, grace_s=1.0) == []
    late = snapshot(10.0 + PID1_GRACE_S, init, zombie(201, ppid=1), target=1)
    assert [z.pid for z in persistent_zombies(earlier, late, grace_s=1.0)] == [201]


def test_a_subreaper_named_a_slow_reaper_gets_the_same_grace():
    earlier = snapshot(10.0, server(), zombie(101))
    later = snapshot(11.0, server(), zombie(101))
    assert persistent_zombies(earlier, later, 1.0, slow_reapers=(1, SERVER)) == []
    assert len(persistent_zombies(earlier, later, 1.0, slow_reapers=(1,))) == 1


# -- RD101 / RD102 / RD103 ---------------------------------------------------

@pytest.mark.parametrize("sigchld, pending, code, words", [
    ("default", False, "RD101", "SIGCHLD is default and nothing calls waitpid"),
    ("ignored", False, "RD101", "SIGCHLD is now ignored"),
    (None, False, "RD101", "could not be read"),
    ("caught", False, "RD102", "although the parent catches SIGCHLD"),
    ("blocked", False, "RD103", "SIGCHLD is blocked in the parent and nothing waits"),
    ("blocked", True, "RD103", "blocked in the parent (a SIGCHLD is pending)"),
])
def test_the_parents_disposition_chooses_the_code(sigchld, pending, code, words):
    parent = server(sigchld=sigchld, pending=pending)
    earlier = snapshot(10.0, parent, zombie(101))
    later = snapshot(11.5, parent, zombie(101))
    (f,) = zombie_findings(earlier, later, grace_s=1.0)
    assert (f.code, f.pid, f.severity) == (code, SERVER, Severity.ERROR)
    assert words in f.message
    assert f.evidence["sigchld"] == (sigchld or "unknown")
    assert f.evidence["sigchld_pending"] is pending


def test_a_zombie_targets_parent_comes_from_target_parent():
    """`scan ZOMBIE`: the parent is outside the tree; its disposition comes
    from the snapshot's target_parent."""
    parent = process(50, 1, sigchld="caught")
    earlier = snapshot(10.0, zombie(101, ppid=50), target=101, target_parent=parent)
    later = snapshot(11.0, zombie(101, ppid=50), target=101, target_parent=parent)
    (f,) = zombie_findings(earlier, later, grace_s=1.0)
    assert (f.code, f.pid) == ("RD102", 50) and "PID 50 (child)" in f.message


def test_exit_statuses_are_counted_in_the_evidence():
    earlier = snapshot(10.0, server(), zombie(101, raw_status=0),
                       zombie(102, raw_status=3 << 8), zombie(103, raw_status=9))
    later = earlier
    (f,) = zombie_findings(earlier, later, grace_s=0.0)
    assert f.evidence["exit_statuses"] == {"exit 0": 1, "exit 3": 1, "SIGKILL": 1}


def test_each_parent_gets_its_own_finding_in_pid_order():
    child = process(150, SERVER, sigchld="caught")
    earlier = snapshot(10.0, server(), child, zombie(101), zombie(151, ppid=150))
    later = snapshot(11.0, server(), child, zombie(101), zombie(151, ppid=150))
    found = [(f.code, f.pid) for f in diagnose([earlier, later], grace_s=1.0)]
    assert found == [("RD101", SERVER), ("RD102", 150)]
