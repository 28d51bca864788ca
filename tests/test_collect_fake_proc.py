"""collect on a /proc tree kept under tests/data/proc (written in the
formats of a live kernel's files by tests/data/make_proc_tree.py), read
through the settable root: no process is started, so every figure is exact, and the
failures a live /proc gives only by chance are made on purpose: a file we
may not read, a process gone between two reads.

The tree: PID 1 (systemd); PID 100, a python3 fork server of UID 1000
that never reaps (SIGCHLD default), listening on 127.0.0.1:8080 with one
connection in CLOSE_WAIT; its zombies 101 (exit 3) and 102 (SIGKILL); its
live child 103, which holds a copy of the listening socket; PID 104, listed
in 100's children file but gone; PID 200, root's sshd. `self` is 100.
"""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path
from typing import Iterator

import pytest
from helpers import as_nobody

from reaper_doctor.collect import proc
from reaper_doctor.collect.cgroups import pids_cgroups_with_limits
from reaper_doctor.collect.machine import collect_machine
from reaper_doctor.collect.proc import ProcessGone
from reaper_doctor.collect.snapshot import collect_snapshot
from reaper_doctor.collect.tasks import process_table, read_tree
from reaper_doctor.diagnose import diagnose

CAPTURED = Path(__file__).parent / "data" / "proc"


@pytest.fixture
def fake_proc(monkeypatch) -> Path:
    monkeypatch.setattr(proc, "ROOT", str(CAPTURED))
    return CAPTURED


@pytest.fixture
def copied_proc(monkeypatch) -> Iterator[Path]:
    """A copy of the tree to break, in a folder anyone may traverse."""
    base = Path(tempfile.mkdtemp(prefix="reaper-doctor-proc-"))
    try:
        os.chmod(base, 0o755)
        root = base / "proc"
        shutil.copytree(CAPTURED, root, symlinks=True)
        monkeypatch.setattr(proc, "ROOT", str(root))
        yield root
    finally:
        shutil.rmtree(base)


def test_snapshot_of_the_captured_tree(fake_proc):
    snap = collect_snapshot(100)
    assert sorted(snap.processes) == [100, 101, 102, 103]   # 104 is gone: left out
    server = snap.processes[100]
    assert (server.name, server.uid, server.sigchld, server.cmdline) == (
        "python3", 1000, "default", ("python3", "server.py", "--port", "8080"))
    assert server.age_s == pytest.approx(2000.0 - 150000 / os.sysconf("SC_CLK_TCK"))
    statuses = {z.pid: z.exit_status.describe() for z in snap.zombies if z.exit_status}
    assert statuses == {101: "exit 3", 102: "SIGKILL"}
    fds = snap.fds[100]
    assert fds.open == 6 and fds.by_kind == {"device": 1, "pipe": 2, "tcp": 2, "file": 1}
    assert fds.top_paths == (("/var/log/server.log", 1),)
    assert [(s.fd, s.state, s.local) for s in fds.sockets] == [
        (3, "LISTEN", ("127.0.0.1", 8080)), (4, "CLOSE_WAIT", ("127.0.0.1", 8080))]
    assert [s.fd for s in snap.fds[103].listeners] == [3]   # same netns: same table
    assert snap.nofile[100].soft == 64 and snap.nofile[100].used == 6
    assert (snap.nproc.used, snap.nproc.soft, snap.nproc.uid) == (4, 512, 1000)
    assert (snap.pid_max, snap.pids_in_use) == (32768, 6)
    assert snap.unreadable == ()


def test_the_rules_on_the_captured_tree(fake_proc):
    snap = collect_snapshot(100)
    codes = {(f.code, f.pid) for f in diagnose([snap], grace_s=0.0)}
    assert ("RD101", 100) in codes                         # zombies, SIGCHLD default
    assert ("RD201", 100) in codes                         # an accepted socket in CLOSE_WAIT


def test_the_tree_without_children_files_is_the_same(copied_proc):
    """Where CONFIG_PROC_CHILDREN is off, the tree comes from every status's PPid."""
    with_files = read_tree(100)
    for children in copied_proc.glob("*/task/*/children"):
        children.unlink()
    without = read_tree(100)
    assert without.order == with_files.order == [100, 101, 102, 103]
    assert {p: b.uid for p, b in without.table.items()} == {
        1: 0, 100: 1000, 101: 1000, 102: 1000, 103: 1000, 200: 0}


def test_process_table_and_machine_pass(fake_proc):
    table = process_table(details=True)
    assert sorted(table) == [1, 100, 101, 102, 103, 200]
    assert (table[200].name, table[200].uid, table[101].state) == ("sshd", 0, "Z")
    sample = collect_machine()
    assert sorted(sample.zombies) == [101, 102]
    assert sample.sessions == {101: 100, 102: 100}
    assert sample.file_nr == (1024, 0, 9223372036854775807) and sample.tasks == 6


def test_target_gone_between_two_reads_is_process_gone(copied_proc):
    (copied_proc / "100" / "cmdline").unlink()     # its stat was read, then it exited
    with pytest.raises(ProcessGone) as gone:
        collect_snapshot(100)
    assert gone.value.pid == 100


def test_child_gone_between_two_reads_is_left_out(copied_proc):
    shutil.rmtree(copied_proc / "103" / "fd")      # listed, stat read, then exited
    (copied_proc / "103" / "cmdline").unlink()
    snap = collect_snapshot(100)
    assert sorted(snap.processes) == [100, 101, 102]
    assert snap.unreadable == ()


def test_a_missing_target_is_process_gone(fake_proc):
    with pytest.raises(ProcessGone):
        collect_snapshot(104)


def test_unreadable_files_are_recorded_not_fatal(copied_proc):
    """limits and the fd directory of the server readable by root only:
    read as UID nobody (in a forked copy of this process when we are root,
    since root reads anything), the sample names both and goes on."""
    for path in (copied_proc / "100" / "limits", copied_proc / "100" / "fd"):
        os.chmod(path, 0)
    try:
        result = _as_nobody(lambda: _unreadable_of(collect_snapshot(100)))
    finally:
        os.chmod(copied_proc / "100" / "fd", stat.S_IRWXU)
    assert ["100 fds permission denied", "100 limits permission denied"] == sorted(result)


def _unreadable_of(snap) -> list[str]:
    return [f"{u.pid} {u.field} {u.reason}" for u in snap.unreadable]


def _as_nobody(work):
    if os.geteuid() != 0:
        return work()
    code, text = as_nobody(lambda: print(json.dumps(work())))
    assert code == 0, text
    return json.loads(text)


def test_an_ancestor_cgroup_with_pids_max_0_is_the_nearest_limit(copied_proc):
    """pids.max 0 above the process's cgroup refuses every fork: it is the
    limit reported (it once divided by zero)."""
    cgroups = copied_proc.parent / "cgroup-pids"
    for rel, limit, current in (("", None, "50"), ("a", "0", "0"), ("a/b", "10", "3")):
        d = cgroups / rel
        d.mkdir(parents=True, exist_ok=True)
        (d / "cgroup.procs").write_text("100\n" if rel == "a/b" else "")
        (d / "pids.current").write_text(current + "\n")
        if limit is not None:
            (d / "pids.max").write_text(limit + "\n")
    (copied_proc / "100" / "cgroup").write_text("8:pids:/a/b\n0::/\n")
    mountinfo = copied_proc / "100" / "mountinfo"
    mountinfo.write_text(mountinfo.read_text()
                         + f"39 31 0:36 / {cgroups} rw,relatime - cgroup cgroup rw,pids\n")
    cg = collect_snapshot(100).pids_cgroup
    assert cg is not None and (cg.path, cg.current, cg.max) == (str(cgroups / "a"), 0, 0)
    assert [c.path for c in pids_cgroups_with_limits()] == [str(cgroups / "a"),
                                                           str(cgroups / "a" / "b")]


def test_pids_since_follows_the_counter_and_its_wrap():
    from reaper_doctor.collect.tasks import pids_since

    assert pids_since(100, 103, 32768, 10) == [101, 102, 103]
    assert pids_since(32765, 2, 32768, 10) == [32766, 32767, 1, 2]   # wrapped at pid_max
    assert pids_since(100, 100, 32768, 10) == []
    assert pids_since(100, 200, 32768, 10) is None                   # too many: walk instead
    assert pids_since(None, 5, 32768, 10) is None
