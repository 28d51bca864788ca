"""`scan` end to end: real parents, real zombies, the CLI's verdict."""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import threading
import time

import pytest
from click.testing import CliRunner
from helpers import (
    OTHER_UID,
    as_nobody,
    cli_argv,
    live_children,
    one_error_line,
    run_cli,
    run_json,
    wait_until,
    zombie_children,
)
from scenario_servers import start_scenario

from reaper_doctor.cli import main

# Forks N children blocked on one pipe, then releases them together: the
# SIGCHLD handler runs once per *delivered* signal and calls os.wait() once.
WAIT_ONCE_PARENT = r"""
import os, signal, sys, time
n = int(sys.argv[1])
signal.signal(signal.SIGCHLD, lambda *_: os.wait())
r, w = os.pipe()
for _ in range(n):
    if os.fork() == 0:
        os.close(w); os.read(r, 1); os._exit(0)
os.close(r)
os.close(w)            # every child sees EOF at once
print("ready", flush=True)
while True:
    time.sleep(60)
"""

BLOCKED_PARENT = r"""
import os, signal, time
signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGCHLD})
for _ in range(3):
    if os.fork() == 0:
        os._exit(0)
print("ready", flush=True)
time.sleep(120)
"""

FORKING_TCP_SERVER = r"""
import socketserver, time
class Handler(socketserver.BaseRequestHandler):
    def handle(self):
        self.request.recv(100); time.sleep(0.02); self.request.sendall(b"ok")
srv = socketserver.ForkingTCPServer(("127.0.0.1", 0), Handler)
print("ready", flush=True)
print(srv.server_address[1], flush=True)
srv.serve_forever()
"""


def findings_of(doc: dict) -> list[dict]:
    return [f for t in doc["targets"] for f in t["findings"]]


def codes_of(doc: dict) -> set[str]:
    return {f["code"] for f in findings_of(doc)}


def test_rd101_missing_waitpid_with_exit_statuses(spawner):
    parent = spawner.zombie_parent("0", "3", "sig:9")
    code, doc = run_json("scan", str(parent.pid), "--grace", "0.3")
    assert code == 1
    (rd101,) = [f for f in findings_of(doc) if f["code"] == "RD101"]
    assert rd101["pid"] == parent.pid and rd101["severity"] == "error"
    ev = rd101["evidence"]
    assert ev["count"] == 3 and ev["sigchld"] == "default"
    assert ev["exit_statuses"] == {"exit 0": 1, "exit 3": 1, "SIGKILL": 1}
    target = doc["targets"][0]
    assert target["sigchld"] == "default"
    assert target["zombies"]["count"] == 3
    assert target["zombies"]["by_parent"][0]["ppid"] == parent.pid
    assert sorted(target["zombies"]["by_parent"][0]["pids"]) == sorted(zombie_children(parent.pid))
    assert "waitpid" in rd101["message"]


def test_rd101_text_collapses_identical_zombies(spawner):
    parent = spawner.zombie_parent(*["0"] * 12, "3")
    result = run_cli("scan", str(parent.pid), "--grace", "0.2", "--no-color")
    assert result.returncode == 1, result.stderr
    assert "12 × python" in result.stdout and "<defunct> exit 0" in result.stdout
    assert "RD101" in result.stdout and "\x1b[" not in result.stdout


def test_rd102_wait_once_handler_loses_coalesced_signals(spawner):
    parent = spawner.python(WAIT_ONCE_PARENT, "128")
    # Children exit together; the handler reaps a few. Wait for the rest to settle.
    wait_until(lambda: len(zombie_children(parent.pid)) > 0
               and not live_children(parent.pid), timeout_s=20, what="the burst to settle")
    code, doc = run_json("scan", str(parent.pid), "--grace", "0.5")
    assert code == 1
    (rd102,) = [f for f in findings_of(doc) if f["code"] == "RD102"]
    assert rd102["evidence"]["sigchld"] == "caught"
    assert 0 < rd102["evidence"]["count"] < 128
    assert "RD101" not in codes_of(doc)


def test_rd103_sigchld_blocked(spawner):
    parent = spawner.python(BLOCKED_PARENT)
    wait_until(lambda: len(zombie_children(parent.pid)) == 3, what="3 zombies")
    code, doc = run_json("scan", str(parent.pid), "--grace", "0.2")
    assert code == 1
    (rd103,) = [f for f in findings_of(doc) if f["code"] == "RD103"]
    assert rd103["evidence"]["sigchld"] == "blocked" and rd103["evidence"]["count"] == 3
    assert rd103["evidence"]["sigchld_pending"] is True


def _hammer(port: int, stop: threading.Event, counter: list[int]) -> None:
    while not stop.is_set():
        try:
            with socket.create_connection(("127.0.0.1", port), timeout=2) as s:
                s.sendall(b"GET / HTTP/1.0\r\n\r\n")
                s.recv(100)
            counter[0] += 1
        except OSError:
            time.sleep(0.01)


@pytest.mark.parametrize("server", ["fixed-fork", "ForkingTCPServer"])
def test_no_false_positive_on_healthy_fork_servers_under_load(spawner, server):
    """The correct fork server (the scenario script: a waitpid(WNOHANG) loop)
    and the standard library's ForkingTCPServer always hold a few transient
    zombies under load; none is reported."""
    if server == "fixed-fork":
        proc, port = start_scenario(spawner, "fixed-fork", lifetime_s=60)
    else:
        proc = spawner.python(FORKING_TCP_SERVER)
        port = int(proc.stdout.readline())
    stop, counter = threading.Event(), [0]
    threads = [threading.Thread(target=_hammer, args=(port, stop, counter)) for _ in range(3)]
    for t in threads:
        t.start()
    try:
        wait_until(lambda: counter[0] >= 20, timeout_s=20, what="load to start")
        code, doc = run_json("scan", str(proc.pid), "--grace", "1.0")
    finally:
        stop.set()
        for t in threads:
            t.join(5)
    # Neither zombie nor descriptor findings: transient zombies, fluctuating
    # descriptors and connections that come and go are what health looks like.
    healthy_never = {"RD101", "RD102", "RD103", "RD201", "RD202", "RD203", "RD401"}
    if server == "ForkingTCPServer":
        # True, and only info: socketserver's forked child never closes the
        # listening socket (ForkingMixIn.process_request), so RD202 may
        # rightly name it while a child is alive.
        healthy_never.discard("RD202")
    assert not healthy_never & codes_of(doc), findings_of(doc)
    assert counter[0] >= 20


NOFILE_HOG = r"""
import os, resource, sys
soft = int(sys.argv[1]); keep = int(sys.argv[2])
resource.setrlimit(resource.RLIMIT_NOFILE, (soft, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
held = [os.open("/dev/null", os.O_RDONLY) for _ in range(keep - len(os.listdir("/proc/self/fd")) + 1)]
print("ready", flush=True)
import time; time.sleep(120)
"""


@pytest.mark.parametrize("keep,severity", [(17, "warning"), (20, "error")])
def test_rd301_nofile_near_soft_limit(spawner, keep, severity):
    proc = spawner.python(NOFILE_HOG, "20", str(keep))
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    assert code == 1
    (rd301,) = [f for f in findings_of(doc) if f["code"] == "RD301"]
    assert rd301["severity"] == severity and rd301["evidence"]["soft"] == 20
    limits = doc["targets"][0]["limits"]["nofile"]
    assert limits["soft"] == 20 and limits["used"] == rd301["evidence"]["used"] >= 16


def test_no_rd301_far_from_the_limit(spawner):
    proc = spawner.python(NOFILE_HOG, "100", "10")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    assert code == 0 and "RD301" not in codes_of(doc)


# Drops to an unprivileged UID with a low RLIMIT_NPROC, then forks children
# that sleep: every one of them counts against the UID's limit.
NPROC_USER = r"""
import os, resource, sys, time
uid, limit, children = (int(a) for a in sys.argv[1:4])
resource.setrlimit(resource.RLIMIT_NPROC, (limit, limit))
if uid:
    os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
for _ in range(children):
    if os.fork() == 0:
        time.sleep(120); os._exit(0)
print("ready", flush=True)
time.sleep(120)
"""


def _tasks_of_uid(uid: int) -> int:
    total = 0
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/status") as f:
                    text = f.read()
            except OSError:
                continue
            fields = dict(line.split(":", 1) for line in text.splitlines() if ":" in line)
            if int(fields["Uid"].split()[0]) == uid:
                total += int(fields["Threads"])
    return total


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to an unprivileged UID")
def test_rd302_nproc_enforced_for_unprivileged_uid(spawner):
    nobody = 65534
    already = _tasks_of_uid(nobody)
    limit = already + 10
    proc = spawner.python(NPROC_USER, str(nobody), str(limit), "8")   # 9 tasks: 90 %
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    nproc = doc["targets"][0]["limits"]["nproc"]
    assert nproc["enforced"] is True and nproc["soft"] == limit and nproc["uid"] == nobody
    assert nproc["used"] >= already + 9
    (rd302,) = [f for f in findings_of(doc) if f["code"] == "RD302"]
    assert rd302["evidence"]["uid"] == nobody and code == 1


@pytest.mark.skipif(os.geteuid() != 0, reason="the UID 0 exemption needs root")
def test_rd302_never_for_uid_0(spawner):
    proc = spawner.python(NPROC_USER, "0", "5", "6")
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    nproc = doc["targets"][0]["limits"]["nproc"]
    assert nproc["enforced"] is False and nproc["soft"] == 5
    assert "RD302" not in codes_of(doc)


@pytest.mark.parametrize("argv,message", [
    (["scan", "0"], "positive integer"),
    (["scan", "-1"], "positive integer"),
    (["scan", "abc"], "positive integer"),
    (["scan", "1.5"], "positive integer"),
    (["scan", "99999999"], "no process with PID 99999999"),
    (["scan", "--bogus", "1"], "--bogus"),
    (["scan", "1", "--grace", "x"], "--grace"),
    (["scan", "1", "--format", "xml"], "xml"),
    (["nonsense"], "nonsense"),
])
def test_bad_input_is_one_line_and_exit_2(argv, message):
    assert message in one_error_line(run_cli(*argv))


def test_special_targets_give_valid_reports(spawner):
    parent = spawner.zombie_parent("5")
    (zombie,) = zombie_children(parent.pid)
    for pid in (1, 2, zombie):
        result = run_cli("scan", str(pid), "--grace", "0", "--json")
        assert result.returncode in (0, 1), result.stderr
        assert "Traceback" not in result.stderr
        target = json.loads(result.stdout)["targets"][0]
        assert target["pid"] == pid
    # Scanning the zombie itself names its parent as the one that must reap.
    assert target["state"] == "zombie"
    assert any(f["code"] == "RD101" and f["pid"] == parent.pid for f in target["findings"])


@pytest.mark.parametrize("reaped", [False, True], ids=["left-a-zombie", "vanished"])
def test_process_that_exits_during_the_scan_is_reported_not_crashed_on(spawner, reaped):
    """The target exits between the two samples: the scan's wait is the
    moment we end it, so the test does not race the clock."""
    from reaper_doctor.commands.scan import scan
    from reaper_doctor.render.json import render_json

    proc = spawner.python("import sys; print('ready', flush=True); sys.stdin.read()",
                          stdin=subprocess.PIPE)

    def end_target_instead_of_sleeping(_seconds: float) -> None:
        proc.stdin.close()  # EOF: the target exits
        if reaped:
            proc.wait(10)
        else:
            wait_until(lambda: proc.pid in zombie_children(os.getpid()), what="its zombie")

    report = scan([proc.pid], grace_s=1.0, sleep=end_target_instead_of_sleeping)
    target = json.loads(render_json(report))["targets"][0]
    assert target["gone"] is True and report.exit_code == 0
    assert target["samples"] == (1 if reaped else 2)


def test_control_characters_in_names_are_escaped(spawner):
    evil = r"""
import ctypes, time
ctypes.CDLL(None).prctl(15, b"\x1b[31mevil\n", 0, 0, 0)   # PR_SET_NAME
print("ready", flush=True); time.sleep(60)
"""
    proc = spawner.python(evil)
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    assert "\x1b" not in result.stdout and "\\e[31mevil" in result.stdout


def test_churn_scanned_50_times(spawner):
    churn = r"""
import os, time
print("ready", flush=True)
end = time.monotonic() + 60
while time.monotonic() < end:
    for _ in range(5):
        if os.fork() == 0:
            os._exit(0)
    time.sleep(0.05)
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            break
        if pid == 0:
            break
"""
    proc = spawner.python(churn)
    runner = CliRunner()
    for _ in range(50):
        result = runner.invoke(main, ["scan", str(proc.pid), "--grace", "0", "--json"])
        assert result.exit_code in (0, 1), result.output
        doc = json.loads(result.stdout)
        assert doc["schema"] == "reaper-doctor/scan/1"


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root to drop to the unprivileged UID")
def test_unprivileged_scan_of_a_root_process_is_partial_not_an_error(spawner):
    """Run the CLI as UID nobody (in a forked copy of this process: the
    interpreter under /root is not executable for nobody) against a
    root-owned parent with zombies."""
    from reaper_doctor.commands import scan as _scan  # noqa: F401  (import before dropping privileges)
    from reaper_doctor.render import json as _json  # noqa: F401

    parent = spawner.zombie_parent("3")
    code, text = as_nobody(lambda: main(["scan", str(parent.pid), "--grace", "0", "--json"]))
    assert code in (0, 1), text
    target = json.loads(text)["targets"][0]
    unreadable = {(u["pid"], u["field"]) for u in target["unreadable"]}
    assert (parent.pid, "fds") in unreadable
    assert target["zombies"]["by_parent"][0]["exit_statuses"] == {"hidden": 1}
    assert target["sigchld"] == "default"   # status masks are readable by anyone


# Drops to UID and GID argv[1], then leaves two zombies: exit 3 and exit 0.
OTHER_USERS_ZOMBIE_PARENT = r"""
import os, sys, time
uid = int(sys.argv[1])
os.setgroups([]); os.setresgid(uid, uid, uid); os.setresuid(uid, uid, uid)
for code in (3, 0):
    if os.fork() == 0:
        os._exit(code)
print("ready", flush=True)
time.sleep(120)
"""


@pytest.mark.skipif(os.geteuid() != 0 or shutil.which("setpriv") is None,
                    reason="needs root and setpriv (util-linux) to drop CAP_SYS_PTRACE")
def test_exit_status_of_another_users_zombie_is_hidden_without_cap_sys_ptrace(spawner):
    """/proc/PID/stat shows 0 as the exit status to a reader that may not
    ptrace-read the zombie, root included when it lacks CAP_SYS_PTRACE:
    that 0 is unknown, not "exit 0"."""
    parent = spawner.python(OTHER_USERS_ZOMBIE_PARENT, str(OTHER_UID))
    wait_until(lambda: len(zombie_children(parent.pid)) == 2, what="2 zombies")
    no_ptrace = ["setpriv", "--inh-caps=-sys_ptrace", "--bounding-set=-sys_ptrace"]
    scan = [*cli_argv(), "scan", str(parent.pid), "--grace", "0"]

    def statuses(argv: list[str]) -> tuple[dict, list, str]:
        doc = json.loads(subprocess.run([*argv, "--json"], capture_output=True, text=True,
                                        timeout=60).stdout)["targets"][0]
        text = subprocess.run([*argv, "--no-color"], capture_output=True, text=True,
                              timeout=60).stdout
        return (doc["zombies"]["by_parent"][0]["exit_statuses"],
                sorted(c["exit_status"] for c in doc["tree"]["children"]), text)

    assert statuses(scan)[:2] == ({"exit 3": 1, "exit 0": 1}, ["exit 0", "exit 3"])
    by_parent, nodes, text = statuses([*no_ptrace, *scan])
    assert (by_parent, nodes) == ({"hidden": 2}, ["hidden", "hidden"])
    assert "exit 0" not in text and "hidden" in text, text


def test_portable_fallback_through_psutil_sees_the_tree_and_zombies(spawner):
    """Where there is no /proc, collect falls back to psutil: the tree,
    zombies and descriptor counts, with the /proc-only fields reported as
    unavailable. psutil works on Linux too, so it is checked here."""
    from reaper_doctor.collect.psutil_fallback import (
        UNAVAILABLE,
        collect_snapshot_psutil,
    )
    from reaper_doctor.diagnose import diagnose

    parent = spawner.zombie_parent("0", "3")
    snap = collect_snapshot_psutil(parent.pid)
    assert sorted(z.pid for z in snap.zombies) == sorted(zombie_children(parent.pid))
    assert snap.processes[parent.pid].num_fds is not None
    assert {u.field for u in snap.unreadable if u.reason == UNAVAILABLE} >= {"sigchld",
                                                                           "exit_status"}
    (rd101,) = diagnose([snap], grace_s=0)
    assert rd101.code == "RD101" and rd101.evidence["count"] == 2
    assert rd101.evidence["sigchld"] == "unknown"
    # Both renderers take such a snapshot as it is.
    from reaper_doctor.model import Report, TargetReport
    from reaper_doctor.render.json import render_json
    from reaper_doctor.render.text import render_text

    report = Report(targets=(TargetReport(pid=parent.pid, snapshot=snap, findings=(rd101,)),))
    assert json.loads(render_json(report))["targets"][0]["zombies"]["count"] == 2
    assert "RD101" in render_text(report) and "hidden" in render_text(report)
