"""`watch` end to end: real processes, the CLI as a subprocess."""

from __future__ import annotations

import csv
import json
import os
import signal
import subprocess

import pytest
from docs_reference import assert_documented
from helpers import (
    cli_argv,
    http_request,
    one_error_line,
    run_cli,
    run_json,
    wait_until,
)
from test_fds import FD_LEAK_SERVER, FD_OPENER, open_fds, start_server


def test_watch_reports_steady_fd_growth_with_rate_and_eta(spawner):
    rate_per_s = 20.0
    proc = spawner.python(FD_OPENER, str(1 / rate_per_s), "2000")
    base = open_fds(proc.pid)
    wait_until(lambda: open_fds(proc.pid) >= base + 5, what="the opener to run")
    code, doc = run_json("watch", str(proc.pid), "--interval", "0.25", "--duration", "4")
    assert code == 1
    assert doc["schema"] == "reaper-doctor/watch/1" and doc["pid"] == proc.pid
    assert_documented(doc)   # RD203's evidence from watch included
    assert doc["interval_s"] == 0.25 and len(doc["samples"]) >= 8
    fds = [s["fds"] for s in doc["samples"]]
    assert fds == sorted(fds) and fds[-1] - fds[0] >= 40
    true_per_min = rate_per_s * 60
    assert abs(doc["rates_per_min"]["fds"] - true_per_min) <= 0.25 * true_per_min, doc["rates_per_min"]
    (rd203,) = doc["findings"]
    assert rd203["code"] == "RD203" and rd203["evidence"]["r2"] >= 0.8
    soft = doc["limits"]["nofile"]
    assert soft and doc["eta_s"]["nofile"] is not None
    # time left = (soft - last) / rate, at the fitted rate
    expected = (soft - fds[-1]) / (doc["rates_per_min"]["fds"] / 60)
    assert abs(doc["eta_s"]["nofile"] - expected) <= 1.0
    assert doc["ended"] == "duration" and doc["gone"] is False


def test_watch_steady_process_has_no_finding(spawner):
    proc = spawner.python(FD_OPENER, "0.001", "30")
    wait_until(lambda: open_fds(proc.pid) >= 33, what="30 descriptors")
    code, doc = run_json("watch", str(proc.pid), "--interval", "0.2", "--duration", "1.2")
    assert code == 0 and doc["findings"] == []
    assert doc["rates_per_min"]["fds"] == 0.0 and doc["eta_s"]["nofile"] is None
    assert set(doc["eta_s"]) == {"nofile", "nproc", "pids_cgroup"}
    assert set(doc["samples"][0]) == {"t_s", "zombies", "fds", "close_wait", "tasks",
                                      "pids_cgroup"}


def test_watch_counts_close_wait_of_a_leaking_server(spawner):
    proc, port = start_server(spawner, FD_LEAK_SERVER, "close")
    for _ in range(10):
        assert http_request(port) == b"ok\n"
    code, doc = run_json("watch", str(proc.pid), "--interval", "0.2", "--duration", "0.4")
    assert doc["listen_ports"] == [port]
    assert all(s["close_wait"] >= 10 for s in doc["samples"]), doc["samples"]


# Lives until its stdin closes: the test decides when it exits, mid-watch.
UNTIL_STDIN_CLOSES = "import sys; print('ready', flush=True); sys.stdin.read()"


def test_watch_ends_cleanly_when_the_target_exits(spawner):
    target = spawner.python(UNTIL_STDIN_CLOSES, stdin=subprocess.PIPE)
    watcher = subprocess.Popen([*cli_argv(), "watch", str(target.pid), "--interval", "0.1",
                                "--duration", "60", "--no-color"],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        assert watcher.stdout is not None and target.stdin is not None
        for _ in range(3):                       # the header and two samples
            assert watcher.stdout.readline()
        target.stdin.close()                     # the target exits (a zombie until reaped)
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0 and "Traceback" not in err, err
    assert f"PID {target.pid} exited after" in out and "Summary:" in out


def test_watch_json_when_the_target_exits(spawner, tmp_path):
    target = spawner.python(UNTIL_STDIN_CLOSES, stdin=subprocess.PIPE)
    path = tmp_path / "w.csv"
    watcher = subprocess.Popen([*cli_argv(), "watch", str(target.pid), "--interval", "0.1",
                                "--duration", "60", "--json", "--csv", str(path)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: path.exists() and len(path.read_text().splitlines()) >= 3,
                   timeout_s=20, what="two samples in the CSV")
        assert target.stdin is not None
        target.stdin.close()
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0 and "Traceback" not in err, err
    doc = json.loads(out)
    assert doc["ended"] == "target-exited" and doc["gone"] is True
    assert len(doc["samples"]) >= 2


def test_watch_csv_is_parseable(spawner, tmp_path):
    proc = spawner.python(FD_OPENER, "0.001", "5")
    path = tmp_path / "watch.csv"
    code, doc = run_json("watch", str(proc.pid), "--interval", "0.2", "--duration", "0.6",
                         "--csv", str(path))
    with open(path, newline="") as f:
        rows = list(csv.DictReader(f))
    assert list(rows[0]) == ["t_s", "zombies", "fds", "close_wait", "tasks", "pids_cgroup"]
    assert len(rows) == len(doc["samples"]) >= 3
    for row, sample in zip(rows, doc["samples"]):
        assert int(row["fds"]) == sample["fds"] and float(row["t_s"]) >= 0
        assert row["pids_cgroup"] == ("" if sample["pids_cgroup"] is None
                                      else str(sample["pids_cgroup"]))


def test_watch_ctrl_c_ends_with_the_summary(spawner):
    target = spawner.python(FD_OPENER, "0.001", "5")
    watcher = subprocess.Popen([*cli_argv(), "watch", str(target.pid), "--interval", "0.1",
                                "--no-color"], stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                               text=True)
    try:
        assert watcher.stdout is not None
        assert watcher.stdout.readline().startswith(f"Watching PID {target.pid}")
        assert watcher.stdout.readline().split() == ["t", "zombies", "fds", "close_wait",
                                                     "tasks", "pids_cgroup"]
        for _ in range(2):   # "0.1 s  0  7  0  1  ?": a row under those columns
            assert watcher.stdout.readline().split()[1:3] == ["s", "0"]
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=20)
    finally:
        if watcher.poll() is None:
            watcher.kill()
            watcher.wait()
    assert watcher.returncode == 0 and "Traceback" not in err, err
    assert "Interrupted after" in out and "Summary:" in out and "fds" in out
    assert target.poll() is None          # watch never signals the target


@pytest.mark.parametrize("argv,message", [
    (["--interval", "0"], "--interval"),
    (["--interval", "x"], "--interval"),
    (["--interval", "-1"], "--interval"),
    (["--duration", "y"], "--duration"),
])
def test_watch_bad_options_exit_2_one_line(spawner, argv, message):
    proc = spawner.python(FD_OPENER, "0.001", "1")
    assert message in one_error_line(run_cli("watch", str(proc.pid), *argv))


@pytest.mark.parametrize("pid,message", [("0", "positive integer"), ("abc", "positive integer"),
                                         ("99999999", "no process with PID 99999999")])
def test_watch_bad_pid_exit_2_one_line(pid, message):
    result = run_cli("watch", pid)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and message in lines[0], result.stderr


def test_watch_csv_unwritable_is_exit_2(spawner, tmp_path):
    proc = spawner.python(FD_OPENER, "0.001", "1")
    result = run_cli("watch", str(proc.pid), "--csv", str(tmp_path / "no" / "such.csv"))
    assert result.returncode == 2 and len(result.stderr.strip().splitlines()) == 1
    assert not os.path.exists(tmp_path / "no")


# Forks a child that exits unreaped every 50 ms: zombies pile up.
ZOMBIE_DRIP = r"""
import os, sys, time
n = int(sys.argv[1])
print("ready", flush=True)
for _ in range(n):
    if os.fork() == 0:
        os._exit(0)
    time.sleep(0.05)
time.sleep(120)
"""


def test_watch_counts_zombies_of_the_tree(spawner):
    parent = spawner.zombie_parent("0", "0", "3")
    code, doc = run_json("watch", str(parent.pid), "--interval", "0.2", "--duration", "0.4")
    assert [s["zombies"] for s in doc["samples"]] == [3] * len(doc["samples"])


def test_tree_tracker_finds_children_forked_after_it_started(spawner):
    """The incremental path (no full process-table pass): new PIDs since
    the last sample are probed, and those whose parent is in the tree join it."""
    from reaper_doctor.collect.watch import TreeTracker

    proc = spawner.python(ZOMBIE_DRIP, "20")
    tracker = TreeTracker(proc.pid, os.getuid())
    tracker.next_full = float("inf")

    def zombies() -> int:
        tracker.refresh()
        return tracker.zombies

    wait_until(lambda: zombies() >= 20, timeout_s=20, what="20 zombies seen incrementally")
    assert set(tracker.members) >= {proc.pid}
