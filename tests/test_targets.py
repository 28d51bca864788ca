"""What a PID on the command line stands for: a thread names its process, a
zombie sends `watch` and `trace` to its parent, and `scan` reports each
process once however the PIDs overlap. Real processes, real /proc."""

from __future__ import annotations

import json

from helpers import run_cli, run_json, zombie_children

# A process with a second thread; prints "ready", then the thread's ID.
THREADED = r"""
import threading, time
started = threading.Event()
ids = []
def work():
    ids.append(threading.get_native_id())
    started.set()
    time.sleep(120)
threading.Thread(target=work, daemon=True).start()
started.wait()
print("ready", flush=True)
print(ids[0], flush=True)
time.sleep(120)
"""


def _notes(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("reaper-doctor: ")]


def test_scan_of_a_thread_id_scans_its_process_with_a_note(spawner):
    proc = spawner.python(THREADED)
    tid = int(proc.stdout.readline())
    assert tid != proc.pid
    result = run_cli("scan", str(tid), "--grace", "0", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert [t["pid"] for t in doc["targets"]] == [proc.pid]
    assert doc["targets"][0]["threads"] == 2
    (note,) = _notes(result.stderr)
    assert f"{tid} is a thread of PID {proc.pid}" in note
    assert doc["notes"] == [note.removeprefix("reaper-doctor: ")]


def test_scan_reports_each_process_once(spawner):
    parent = spawner.zombie_parent("3")
    (zombie,) = zombie_children(parent.pid)
    other = spawner.zombie_parent("0")
    # The same PID twice, and the zombie, which is in its parent's tree.
    result = run_cli("scan", str(parent.pid), str(zombie), str(parent.pid), str(other.pid),
                     "--grace", "0", "--json")
    doc = json.loads(result.stdout)
    assert [t["pid"] for t in doc["targets"]] == [parent.pid, other.pid], result.stderr
    (note,) = _notes(result.stderr)
    assert f"PID {zombie} is in the tree of PID {parent.pid}" in note
    # Each zombie, and its finding, once in the whole document.
    rd101 = [f for t in doc["targets"] for f in t["findings"] if f["code"] == "RD101"]
    assert sorted(f["pid"] for f in rd101) == sorted([parent.pid, other.pid])
    text = run_cli("scan", str(zombie), str(parent.pid), "--grace", "0", "--no-color").stdout
    heads = [line.split()[1] for line in text.splitlines() if line.startswith("PID ")]
    assert heads == [str(parent.pid)] and text.count("Process tree") == 1, text


def test_scan_x_x_prints_one_report(spawner):
    proc = spawner.zombie_parent("0")
    result = run_cli("scan", str(proc.pid), str(proc.pid), "--grace", "0", "--no-color")
    heads = [line.split()[1] for line in result.stdout.splitlines() if line.startswith("PID ")]
    assert heads == [str(proc.pid)] and result.stdout.count("Process tree") == 1


def test_watch_of_a_zombie_watches_its_parent(spawner):
    parent = spawner.zombie_parent("3")
    (zombie,) = zombie_children(parent.pid)
    result = run_cli("watch", str(zombie), "--duration", "0.5", "--interval", "0.25", "--json")
    assert result.returncode == 0, result.stderr
    doc = json.loads(result.stdout)
    assert doc["pid"] == parent.pid
    assert doc["samples"][0]["zombies"] == 1
    (note,) = _notes(result.stderr)
    assert f"PID {zombie} is a zombie (exit 3) of PID {parent.pid}" in note
    assert f"watching PID {parent.pid}" in note


def test_watch_of_a_thread_id_watches_its_process(spawner):
    proc = spawner.python(THREADED)
    tid = int(proc.stdout.readline())
    code, doc = run_json("watch", str(tid), "--duration", "0.3", "--interval", "0.25")
    assert code == 0 and doc["pid"] == proc.pid


def test_trace_of_a_zombie_traces_its_parent(spawner, trace_env, tracefs_root):
    parent = spawner.zombie_parent("3")
    (zombie,) = zombie_children(parent.pid)
    result = run_cli("trace", str(zombie), "--duration", "0.5", "--json", env=trace_env)
    assert result.returncode in (0, 1), result.stderr
    doc = json.loads(result.stdout)
    assert doc["pid"] == parent.pid
    assert any(f"tracing PID {parent.pid}" in n for n in _notes(result.stderr))
