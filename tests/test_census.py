"""`scan` with no PID: the whole-machine census, end to end."""

from __future__ import annotations

from docs_reference import assert_documented
from helpers import run_cli, run_json

from reaper_doctor.collect.tasks import TaskBrief
from reaper_doctor.diagnose.census import INIT_LIKE, slow_reapers, uid_tasks
from reaper_doctor.model import ProcessInfo


def test_census_finds_a_zombie_leaking_parent_among_all_processes(spawner):
    parent = spawner.zombie_parent("0", "0", "3")
    code, doc = run_json("scan", "--grace", "0.3")
    assert code == 1
    assert doc["schema"] == "reaper-doctor/scan/1"
    assert_documented(doc)
    (target,) = [t for t in doc["targets"] if t["pid"] == parent.pid]
    (rd101,) = [f for f in target["findings"] if f["code"] == "RD101"]
    assert rd101["pid"] == parent.pid and rd101["evidence"]["count"] == 3
    assert rd101["evidence"]["sigchld"] == "default"
    assert target["zombies"]["count"] == 3 and target["sigchld"] == "default"
    assert target["tree"]["num_fds"] >= 3 and target["limits"]["nofile"]["used"] >= 3
    machine = doc["machine"]
    (row,) = [p for p in machine["zombie_parents"] if p["pid"] == parent.pid]
    assert row == {**row, "zombies": 3, "persistent": 3, "verdict": "RD101", "is_reaper": False}
    assert machine["samples"] == 2 and machine["elapsed_s"] >= 0.3
    assert machine["tasks"]["used"] > 0 and machine["tasks"]["pid_max"] > 0
    assert machine["files"]["open"] > 0 and machine["files"]["file_max"] > 0
    assert 0 < len(machine["nofile_top"]) <= 10
    ratios = [r["ratio"] for r in machine["nofile_top"]]
    assert ratios == sorted(ratios, reverse=True)
    uids = {u["uid"]: u for u in machine["nproc_by_uid"]}
    assert uids[0]["enforced"] is False and uids[0]["tasks"] >= 1
    assert "most common" in uids[0]["soft_basis"]


def test_census_text_fits_one_screen(spawner):
    parent = spawner.zombie_parent(*["0"] * 30)
    result = run_cli("scan", "--grace", "0", "--no-color")
    assert result.returncode == 1, result.stderr
    out = result.stdout
    assert "Machine census" in out and f"{parent.pid} python" in out and "RD101" in out
    assert "Nearest ulimit -n" in out and "Tasks per UID" in out and "kernel.pid_max" in out
    assert len(out.splitlines()) <= 80
    assert max(len(line) for line in out.splitlines()) <= 160


def test_census_grace_0_means_one_sample(spawner):
    spawner.zombie_parent("0")
    code, doc = run_json("scan", "--grace", "0")
    assert code == 1 and doc["machine"]["samples"] == 1


def _zombie(pid: int, ppid: int) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=ppid, name="z", state="Z", start_ticks=pid, age_s=1.0,
                       threads=1, uid=1000, cmdline=None, num_fds=None)


def _live(pid: int, name: str) -> ProcessInfo:
    return ProcessInfo(pid=pid, ppid=1, name=name, state="S", start_ticks=1, age_s=1.0,
                       threads=1, uid=1000, cmdline=(), num_fds=3)


def test_subreapers_are_inferred_from_name_or_adopted_children():
    by_parent = {1: {10: _zombie(10, 1)},
                 20: {21: _zombie(21, 20), 22: _zombie(22, 20)},      # forked: same session
                 30: {31: _zombie(31, 30), 32: _zombie(32, 30)},      # adopted: other session
                 40: {41: _zombie(41, 40)}}
    parents = {20: _live(20, "server"), 30: _live(30, "pytest"), 40: _live(40, "tini")}
    sessions = {20: 20, 30: 30, 40: 40}
    zombie_sessions = {10: 10, 21: 20, 22: 20, 31: 99, 32: 98, 41: 41}
    assert "tini" in INIT_LIKE
    assert slow_reapers(by_parent, parents, sessions, zombie_sessions) == {1, 30, 40}


def test_nproc_basis_is_the_most_common_soft_limit_and_the_lowest_is_named():
    table = {1: TaskBrief(0, 1000, 1, "S"), 2: TaskBrief(0, 1000, 4, "S"),
             3: TaskBrief(0, 1000, 1, "S"), 4: TaskBrief(0, 0, 1, "S")}
    limits = {1: {"Max processes": (500, 600)}, 2: {"Max processes": (500, 600)},
              3: {"Max processes": (8, 8)}, 4: {"Max processes": (None, None)}}
    rows = {r.uid: r for r in uid_tasks(table, limits)}
    assert rows[1000].tasks == 6 and rows[1000].processes == 3
    assert (rows[1000].soft, rows[1000].hard) == (500, 600)
    assert (rows[1000].soft_min, rows[1000].soft_min_pid) == (8, 3)
    assert rows[1000].enforced and not rows[0].enforced and rows[0].soft is None
