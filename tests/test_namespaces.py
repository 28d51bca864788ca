"""PID namespaces on real processes: a namespace's PID 1 that does not reap
(RD104), that drops SIGTERM (RD105), a healthy one run by tini, and
reaper-doctor run inside a namespace."""

from __future__ import annotations

import os
import signal
import subprocess
import sys

import pytest
from helpers import cli_argv, live_children, run_json, wait_until, zombie_children
from namespaces import needs_namespaces, needs_tini, ns_pids, start_namespace, unshare_argv

from reaper_doctor.commands.scan import scan
from reaper_doctor.diagnose.zombies import PID1_GRACE_S

# PID 1 of the namespace: orphans two helpers (they die as zombies of PID 1)
# and then sleeps, reaping nothing.
ORPHANS_THEN_SLEEP = "(sleep 0.1 &); (sleep 0.1 &); exec sleep 60"


def _codes(report_target) -> list[str]:
    return sorted(f.code for f in report_target.findings)


def test_a_namespace_init_that_does_not_reap_is_rd104_not_rd101(spawner) -> None:
    _, pid1 = start_namespace(spawner, "sh", "-c", ORPHANS_THEN_SLEEP)
    assert ns_pids(pid1) == [pid1, 1]
    wait_until(lambda: len(zombie_children(pid1)) == 2, what="two zombies under PID 1")
    report = scan([pid1], grace_s=1.0)
    t = report.targets[0]
    me = t.snapshot.processes[pid1]
    assert me.is_ns_init and me.ns_pid == 1 and me.pid_ns is not None
    assert me.container is None                      # unshare makes no cgroup
    assert _codes(t) == ["RD104", "RD105"]
    rd104 = next(f for f in t.findings if f.code == "RD104")
    assert rd104.pid == pid1 and rd104.evidence["count"] == 2
    assert "PID 1 of its PID namespace" in rd104.message and "--init" in rd104.message
    # Namespace inits reap lazily, like the host's PID 1: the zombies had to
    # persist over PID1_GRACE_S, not just the 1 s grace.
    assert rd104.evidence["persisted_s"] >= PID1_GRACE_S
    # The zombies are in the namespace too: their PIDs there are read.
    zombies = [p for p in t.snapshot.processes.values() if p.is_zombie]
    assert all(z.pid_ns == me.pid_ns and z.ns_pid not in (None, z.pid) for z in zombies)


def test_rd104_comes_within_the_grace_and_a_second(spawner) -> None:
    _, pid1 = start_namespace(spawner, "sh", "-c", ORPHANS_THEN_SLEEP)
    wait_until(lambda: len(zombie_children(pid1)) == 2, what="two zombies under PID 1")
    code, doc = run_json("scan", str(pid1), timeout_s=60)
    assert code == 1
    assert {f["code"] for f in doc["targets"][0]["findings"]} == {"RD104", "RD105"}
    # The whole command, start-up included; a loaded machine may add a little.
    assert doc["duration_s"] < PID1_GRACE_S + 1.0 + 1.0, doc["duration_s"]


def test_a_child_of_the_namespace_init_gets_the_usual_verdict(spawner) -> None:
    # PID 2 leaks its own children: that is RD101 about PID 2, not RD104.
    _, pid1 = start_namespace(spawner, "sh", "-c",
                              "sh -c '(exit 0) & (exit 0) & exec sleep 60' & exec sleep 60")
    pid2 = wait_until(lambda: live_children(pid1), what="PID 2")[0]
    wait_until(lambda: len(zombie_children(pid2)) == 2, what="two zombies under PID 2")
    t = scan([pid1], grace_s=1.0).targets[0]
    assert [(f.code, f.pid) for f in t.findings if f.code != "RD105"] == [("RD101", pid2)]
    assert t.snapshot.processes[pid2].ns_pid == 2


@pytest.mark.parametrize("script, sigterm", [
    # A handler: caught.
    ("import signal, time; signal.signal(signal.SIGTERM, lambda *a: None); time.sleep(60)",
     "caught"),
    # Blocked, to be taken synchronously (signalfd, sigwait): handled.
    ("import signal, time; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
     "time.sleep(60)", "blocked"),
    # Waiting in sigtimedwait, as tini does: the mask shows nothing meanwhile.
    ("import signal; signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM}); "
     "signal.sigtimedwait({signal.SIGTERM}, 60)", "waited"),
    # Nothing: the kernel drops SIGTERM from outside.
    ("import time; time.sleep(60)", "default"),
])
def test_rd105_is_judged_by_the_masks(spawner, script: str, sigterm: str) -> None:
    _, pid1 = start_namespace(spawner, sys.executable, "-c", script)
    wait_until(lambda: _sleeping(pid1), what="PID 1 to settle")
    t = scan([pid1], grace_s=0).targets[0]
    assert t.snapshot.processes[pid1].sigterm == sigterm
    assert _codes(t) == (["RD105"] if sigterm == "default" else [])


def _sleeping(pid: int) -> bool:
    with open(f"/proc/{pid}/wchan") as f:
        wchan = f.read()
    return wchan not in ("", "0")


def test_sigterm_from_outside_is_dropped_by_a_namespace_init(spawner) -> None:
    # The fact RD105 rests on, checked here where the tests run.
    _, pid1 = start_namespace(spawner, "sleep", "60")
    os.kill(pid1, signal.SIGTERM)
    wait_until(lambda: _sleeping(pid1), what="PID 1 asleep")
    assert os.path.exists(f"/proc/{pid1}") and pid1 in live_children(
        int(open(f"/proc/{pid1}/stat").read().rsplit(")", 1)[1].split()[1]))


def test_a_namespace_run_by_tini_gives_no_finding(spawner) -> None:
    tini = needs_tini()
    _, pid1 = start_namespace(spawner, tini, "--", "sh", "-c", ORPHANS_THEN_SLEEP)
    child = wait_until(lambda: live_children(pid1), what="tini's child")[0]
    wait_until(lambda: not zombie_children(pid1), what="tini to reap the orphans")
    code, doc = run_json("scan", str(pid1), timeout_s=60)
    target = doc["targets"][0]
    assert target["findings"] == [] and code == 0
    assert target["is_ns_init"] and target["sigterm"] in ("waited", "blocked", "caught")
    assert [c["ns_pid"] for c in target["tree"]["children"] if c["pid"] == child] == [2]


def test_scan_1_inside_a_namespace(spawner) -> None:
    """reaper-doctor run inside a namespace with its own /proc (as in a
    container): PID 1 is the namespace's init, and the census says it sees
    only its namespace."""
    needs_namespaces()
    argv = unshare_argv("--mount-proc", "sh", "-c",
                        f"{' '.join(cli_argv())} scan 1 --grace 0 --json; "
                        f"{' '.join(cli_argv())} scan --grace 0 --json; exit 0")
    # --mount-proc goes before the command: unshare's options come first.
    argv.insert(argv.index("--fork") + 1, argv.pop(argv.index("--mount-proc")))
    done = subprocess.run(argv, capture_output=True, text=True, timeout=120,
                          start_new_session=True)
    assert "Traceback" not in done.stderr, done.stderr
    first, _, second = done.stdout.partition("\n}\n")
    import json

    scan_doc, census_doc = json.loads(first + "\n}"), json.loads(second)
    target = scan_doc["targets"][0]
    assert target["pid"] == 1 and target["ns_pid"] == 1 and target["is_ns_init"] is True
    assert target["name"] == "sh"
    assert census_doc["machine"]["pid_namespace"]["is_host"] is False
    assert "own PID namespace" in census_doc["machine"]["pid_namespace"]["note"]


def test_census_lists_each_namespace_with_its_init_and_verdict(spawner) -> None:
    tini = needs_tini()
    _, leaky = start_namespace(spawner, "sh", "-c", ORPHANS_THEN_SLEEP)
    _, healthy = start_namespace(spawner, tini, "--", "sh", "-c", ORPHANS_THEN_SLEEP)
    wait_until(lambda: len(zombie_children(leaky)) == 2, what="two zombies under PID 1")
    wait_until(lambda: live_children(healthy) and not zombie_children(healthy),
               what="tini to reap")
    code, doc = run_json("scan", timeout_s=120)
    rows = {r["init"]["pid"]: r for r in doc["machine"]["containers"] if r["init"]}
    assert rows[leaky]["verdict"] == ["RD104", "RD105"] and rows[leaky]["zombies"] == 2
    assert rows[leaky]["init"]["known_init"] is False and rows[leaky]["container"] is None
    assert rows[healthy]["verdict"] == [] and rows[healthy]["init"]["known_init"] is True
    assert rows[healthy]["processes"] == 2                 # tini and its sh
    assert doc["machine"]["pid_namespace"] == {"is_host": True, "note": None}
    codes = {(f["code"], f["pid"]) for t in doc["targets"] for f in t["findings"]}
    assert {("RD104", leaky), ("RD105", leaky)} <= codes
    assert not {c for c in codes if c[1] == healthy}
    assert code == 1


def test_container_init_runs_without_root_in_a_user_namespace() -> None:
    """As nobody, the scenario makes a user namespace for its PID namespace,
    and the scan, as the same user, still sees PID 1's masks and zombies."""
    if os.geteuid() != 0:
        pytest.skip("needs root: the test drops to nobody with setpriv")
    as_nobody = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]
    # The tool starts the scenario's server on its own Python: nobody must be
    # able to run that Python, and it to start itself again.
    probe = subprocess.run([*as_nobody, sys.executable, "-c",
                            "import subprocess, sys; subprocess.run([sys.executable, '-c', "
                            "'import reaper_doctor.cli'], check=True)"],
                           capture_output=True, text=True, timeout=60, cwd="/")
    if probe.returncode != 0:
        pytest.skip("cannot run reaper-doctor as nobody here (a directory on its path is "
                    "not readable by nobody)")
    done = subprocess.run([*as_nobody, *cli_argv(), "scenario", "run", "container-init",
                           "--requests", "8", "--concurrency", "4", "--json"],
                          capture_output=True, text=True, timeout=120, cwd="/")
    if done.returncode != 0 and "cannot create a PID namespace" in done.stdout + done.stderr:
        pytest.skip("this kernel refuses unprivileged user namespaces")
    import json

    doc = json.loads(done.stdout)
    assert {f["code"] for f in doc["findings"]} == {"RD104", "RD105"}, done.stderr
    assert doc["leftover_processes"] == 0 and done.returncode == 0
