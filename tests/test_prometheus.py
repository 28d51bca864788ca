"""`scan --format prometheus` and `--textfile`: parsed back with prometheus_client."""

from __future__ import annotations

import os
import shutil
import subprocess

import pytest
from helpers import one_error_line, run_cli, wait_until, zombie_children
from prometheus_client.parser import text_string_to_metric_families

from reaper_doctor.model import (
    LimitUsage,
    ProcessInfo,
    Report,
    Snapshot,
    TargetReport,
)
from reaper_doctor.render.prometheus import render_prometheus

# Holds 4 zombies and 3 accepted sockets in CLOSE_WAIT (the peers closed).
LEAKY_PARENT = r"""
import os, socket, time
for code in (0, 0, 0, 3):
    if os.fork() == 0:
        os._exit(code)
srv = socket.create_server(("127.0.0.1", 0))
held = []
for _ in range(3):
    c = socket.create_connection(srv.getsockname())
    a, _ = srv.accept()
    c.close()
    held.append(a)
print("ready", flush=True)
time.sleep(120)
"""


def parse(text: str) -> dict[str, list]:
    families = {}
    for fam in text_string_to_metric_families(text):
        families[fam.name] = fam
    return families


def samples(families: dict, name: str) -> list:
    return [s for fam in families.values() for s in fam.samples if s.name == name]


def value(families: dict, name: str, **labels: str) -> float:
    found = [s.value for s in samples(families, name)
             if all(s.labels.get(k) == v for k, v in labels.items())]
    assert len(found) == 1, (name, labels, found)
    return found[0]


def _soft_nofile(pid: int) -> int:
    with open(f"/proc/{pid}/limits") as f:
        for line in f:
            if line.startswith("Max open files"):
                return int(line.split()[3])
    raise AssertionError("no Max open files line")


def _close_wait_count(pid: int) -> int:
    inodes = set()
    for fd in os.listdir(f"/proc/{pid}/fd"):
        link = os.readlink(f"/proc/{pid}/fd/{fd}")
        if link.startswith("socket:["):
            inodes.add(link[8:-1])
    with open("/proc/net/tcp") as f:
        rows = [line.split() for line in f.readlines()[1:]]
    return sum(1 for r in rows if r[3] == "08" and r[9] in inodes)


def test_prometheus_output_parses_and_carries_the_target_values(spawner):
    parent = spawner.python(LEAKY_PARENT)
    wait_until(lambda: len(zombie_children(parent.pid)) == 4, what="4 zombies")
    wait_until(lambda: _close_wait_count(parent.pid) == 3, what="3 CLOSE_WAIT sockets")
    result = run_cli("scan", str(parent.pid), "--grace", "0", "--format", "prometheus")
    assert result.returncode == 1, result.stderr
    fams = parse(result.stdout)
    pid = str(parent.pid)
    with open(f"/proc/{parent.pid}/comm") as f:
        comm = f.read().strip()   # "python3", or "python" in a venv
    assert value(fams, "reaper_doctor_zombie_children", pid=pid, comm=comm) == 4
    assert value(fams, "reaper_doctor_close_wait_sockets", pid=pid) == 3
    assert value(fams, "process_open_fds", pid=pid) == len(os.listdir(f"/proc/{pid}/fd"))
    assert value(fams, "process_max_fds", pid=pid) == _soft_nofile(parent.pid)
    assert value(fams, "reaper_doctor_findings", code="RD101", severity="error") == 1
    assert value(fams, "reaper_doctor_findings", code="RD102", severity="error") == 0
    assert value(fams, "reaper_doctor_process_findings", pid=pid, code="RD101",
                 severity="error") == 1
    assert value(fams, "reaper_doctor_scan_duration_seconds") > 0
    assert value(fams, "reaper_doctor_uid_tasks", uid="0") >= 5
    # Conventions: HELP and TYPE for each family, _total only on counters.
    lines = result.stdout.splitlines()
    for fam in fams.values():
        shown = fam.name + "_total" if fam.type == "counter" else fam.name
        assert f"# HELP {shown} " in result.stdout and f"# TYPE {shown} {fam.type}" in lines
    assert all(s.name.endswith("_total") == (f.type == "counter")
               for f in fams.values() for s in f.samples)


def test_census_prometheus_parses(spawner):
    parent = spawner.zombie_parent("0", "0")
    result = run_cli("scan", "--grace", "0", "--format", "prometheus")
    assert result.returncode == 1, result.stderr
    fams = parse(result.stdout)
    assert value(fams, "reaper_doctor_zombie_children", pid=str(parent.pid)) == 2
    assert value(fams, "reaper_doctor_machine_pid_max") > 0
    assert value(fams, "reaper_doctor_machine_tasks") > 0
    assert samples(fams, "process_open_fds")


def test_textfile_is_written_atomically(spawner, tmp_path):
    parent = spawner.zombie_parent("0")
    path = tmp_path / "reaper_doctor.prom"
    result = run_cli("scan", str(parent.pid), "--grace", "0", "--textfile", str(path))
    assert result.returncode == 1 and result.stdout == "" and result.stderr == ""
    fams = parse(path.read_text())
    assert value(fams, "reaper_doctor_zombie_children", pid=str(parent.pid)) == 1
    assert os.listdir(tmp_path) == ["reaper_doctor.prom"]   # no temporary file left
    # Again, over the old file; with --json also on stdout.
    result = run_cli("scan", str(parent.pid), "--grace", "0", "--textfile", str(path), "--json")
    assert result.returncode == 1 and result.stdout.startswith("{")
    assert os.listdir(tmp_path) == ["reaper_doctor.prom"]


@pytest.mark.parametrize("where", ["missing-dir", "a-directory", "proc", "empty"])
def test_bad_textfile_paths_exit_2_with_one_line(tmp_path, where):
    path = {"missing-dir": str(tmp_path / "nope" / "x.prom"), "a-directory": str(tmp_path),
            "proc": "/proc/reaper_doctor.prom", "empty": ""}[where]
    result = run_cli("scan", str(os.getpid()), "--grace", "0", "--textfile", path)
    one_error_line(result)


def test_label_values_are_escaped():
    name = 'we"ird\\na\nme'
    info = ProcessInfo(pid=42, ppid=1, name=name, state="S", start_ticks=1, age_s=1.0,
                       threads=1, uid=1000, cmdline=(), num_fds=7)
    snap = Snapshot(target=42, taken_at=0.0, processes={42: info},
                    nofile={42: LimitUsage(used=7, soft=1024, hard=4096)})
    text = render_prometheus(Report(targets=(TargetReport(pid=42, snapshot=snap,
                                                          findings=()),)))
    fams = parse(text)
    assert value(fams, "process_open_fds", pid="42", comm=name) == 7
    assert value(fams, "process_max_fds", pid="42", comm=name) == 1024
    assert value(fams, "reaper_doctor_findings", code="RD101", severity="error") == 0


PROMTOOL = shutil.which("promtool")


@pytest.mark.skipif(PROMTOOL is None, reason="promtool is not installed (Debian: prometheus)")
def test_promtool_check_metrics_passes_on_scan_and_census(spawner):
    parent = spawner.python(LEAKY_PARENT)
    wait_until(lambda: _close_wait_count(parent.pid) == 3, what="3 CLOSE_WAIT sockets")
    for args in ((str(parent.pid),), ()):
        result = run_cli("scan", *args, "--grace", "0", "--format", "prometheus")
        assert result.returncode == 1, result.stderr
        check = subprocess.run([PROMTOOL, "check", "metrics"], input=result.stdout,
                               capture_output=True, text=True, timeout=60)
        assert check.returncode == 0, check.stdout + check.stderr
        assert check.stdout + check.stderr == ""   # not even a lint warning


def test_container_labels_carry_the_short_id_and_runtime():
    from types import SimpleNamespace

    from reaper_doctor.render.prometheus import container_labels

    info = SimpleNamespace(container=SimpleNamespace(id="a1df1d9cf5b3" + "0" * 52,
                                                     runtime="podman"))
    assert container_labels(info) == {"container_id": "a1df1d9cf5b3", "runtime": "podman"}
    assert container_labels(SimpleNamespace(container=None)) == {}
    assert container_labels(None) == {}
