"""How `scan` finds the tree: the kernel's per-thread children files, and
the real UID of zombies for the RLIMIT_NPROC count, against a full walk."""

from __future__ import annotations

import os

import pytest
from helpers import live_children, run_json, wait_until, zombie_children

from reaper_doctor.collect import tasks

# A live child with zombie grandchildren, zombie children, and a zombie forked
# by a second thread: while that thread lives, only its own children file
# lists it (when a thread ends, its children pass to another thread).
FAMILY = r"""
import os, threading, time
def zombies(n, linger=0):
    for _ in range(n):
        if os.fork() == 0:
            os._exit(3)
    time.sleep(linger)
if os.fork() == 0:
    zombies(2)
    time.sleep(120)
    os._exit(0)
zombies(3)
threading.Thread(target=zombies, args=(1, 120), daemon=True).start()
print("ready", flush=True)
time.sleep(120)
"""

# Real UID nobody, effective UID root: the state of a set-user-ID-root
# program run by nobody. Its zombie children keep both; RLIMIT_NPROC counts
# them for nobody, though /proc/<pid> is owned by root.
SETUID_PARENT = r"""
import os, sys, time
os.setgroups([]); os.setresuid(65534, 0, 0)
for _ in range(int(sys.argv[1])):
    if os.fork() == 0:
        os._exit(0)
print("ready", flush=True)
time.sleep(120)
"""


def test_children_files_find_the_same_tree_as_a_full_walk(spawner):
    if not os.path.exists(f"/proc/{os.getpid()}/task/{os.getpid()}/children"):
        pytest.skip("this kernel has no /proc/<pid>/task/<tid>/children (CONFIG_PROC_CHILDREN)")
    proc = spawner.python(FAMILY)
    wait_until(lambda: len(zombie_children(proc.pid)) == 4, what="4 zombie children")
    (child,) = live_children(proc.pid)
    wait_until(lambda: len(zombie_children(child)) == 2, what="2 zombie grandchildren")
    walked = tasks.read_tree(proc.pid)
    full = tasks._tree_from_table(proc.pid)
    assert walked.order == full.order and len(walked.order) == 1 + 1 + 4 + 2
    assert walked.order[0] == proc.pid
    for pid in walked.order:
        # A live process may be running in one read and sleeping in the
        # next: what must agree is whether it is a zombie.
        assert (walked.stats[pid].state == "Z") == (full.stats[pid].state == "Z")
        assert walked.table[pid].uid == full.table[pid].uid == os.getuid()
    assert sorted(p for p in walked.order if walked.stats[p].state == "Z") == sorted(
        p for p in full.order if full.stats[p].state == "Z")


def test_a_session_walked_from_its_starter_is_the_whole_session(spawner):
    # The sampler of `run` looks for the server's session below the process
    # that started it, not across the machine: the same members, zombies too.
    proc = spawner.python(FAMILY)
    wait_until(lambda: len(zombie_children(proc.pid)) == 4, what="4 zombie children")
    (child,) = live_children(proc.pid)
    wait_until(lambda: len(zombie_children(child)) == 2, what="2 zombie grandchildren")
    below = tasks.session_members_below(proc.pid, os.getpid())
    assert sorted(st.pid for st in below) == sorted(
        st.pid for st in tasks.session_members(proc.pid))
    assert len(below) == 1 + 1 + 4 + 2
    assert sorted(st.pid for st in tasks.session_members_below(proc.pid, child)) == sorted(
        [child, *zombie_children(child)])


def test_the_tree_read_before_the_machine_has_the_same_table(spawner):
    proc = spawner.python(FAMILY)
    wait_until(lambda: len(zombie_children(proc.pid)) == 4, what="4 zombie children")
    whole = tasks.read_tree(proc.pid)
    first = tasks.read_tree(proc.pid, machine=False)
    assert set(first.table) == set(first.order) == set(whole.order)
    tasks.add_machine(first)
    me = os.getpid()                                   # outside the tree
    assert (first.table[me].ppid, first.table[me].uid) == (whole.table[me].ppid, os.getuid())
    for pid in whole.order:   # (a live member's state may change in between)
        assert (first.table[pid].ppid, first.table[pid].uid) == (
            whole.table[pid].ppid, whole.table[pid].uid)


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to take on another real UID")
def test_nproc_counts_zombies_by_real_uid_not_by_proc_owner(spawner):
    proc = spawner.python(SETUID_PARENT, "5")
    wait_until(lambda: len(zombie_children(proc.pid)) == 5, what="5 zombies")
    assert os.stat(f"/proc/{zombie_children(proc.pid)[0]}").st_uid == 0  # owner: effective UID
    tree = tasks.read_tree(proc.pid)
    assert {tree.table[pid].uid for pid in tree.order} == {65534}
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    nproc = doc["targets"][0]["limits"]["nproc"]
    assert nproc["uid"] == 65534
    assert nproc["used"] >= 6   # the parent and its 5 zombies, all counted for nobody
