"""What `scan`, `watch`, `explain`, `lesson` and `scenario` print for people:
every section says what was observed, and fits the terminal."""

from __future__ import annotations

import os

import pytest

from helpers import run_cli, run_json

# Holds a listener, a file and a pipe; prints the listener's port.
HOLDER = r"""
import os, socket, sys, time
ls = socket.create_server(("127.0.0.1", 0))
f = open("/dev/null")
r, w = os.pipe()
print("ready", flush=True)
print(ls.getsockname()[1], flush=True)
time.sleep(60)
"""


def test_list_fds_in_text_lists_every_descriptor(spawner):
    proc = spawner.python(HOLDER)
    port = int(proc.stdout.readline())
    result = run_cli("scan", str(proc.pid), "--grace", "0", "--list-fds")
    assert result.returncode == 0, result.stderr
    section = result.stdout.split("Descriptor list\n", 1)[1].split("\n\n", 1)[0].splitlines()
    fds = sorted(int(name) for name in os.listdir(f"/proc/{proc.pid}/fd"))
    assert section[0].startswith(f"  {proc.pid} ") and \
        section[0].endswith(f": {len(fds)} descriptors"), section[0]
    listed = {int(line.split()[0]): line.split(None, 1)[1] for line in section[1:]}
    assert sorted(listed) == fds
    for fd in fds:
        assert listed[fd].startswith(os.readlink(f"/proc/{proc.pid}/fd/{fd}"))
    listener = [text for text in listed.values() if f"127.0.0.1:{port} LISTEN" in text]
    assert len(listener) == 1 and listener[0].startswith("socket:["), listed


def test_without_list_fds_no_list(spawner):
    proc = spawner.python(HOLDER)
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    assert result.returncode == 0 and "Descriptor list" not in result.stdout


def _kernel_thread() -> int | None:
    """A kernel thread's PID (PF_KTHREAD in field 9 of its stat), or None
    when none is visible (a container's PID namespace)."""
    for name in sorted(filter(str.isdigit, os.listdir("/proc")), key=int):
        try:
            with open(f"/proc/{name}/stat", "rb") as f:
                raw = f.read()
        except OSError:
            continue
        if int(raw[raw.rindex(b")") + 2:].split()[6]) & 0x00200000:
            return int(name)
    return None


def test_a_kernel_thread_has_no_ulimit_n_row(spawner):
    pid = _kernel_thread()
    if pid is None:
        pytest.skip("no kernel thread visible in this PID namespace")
    result = run_cli("scan", str(pid), "--grace", "0")
    assert result.returncode == 0, result.stderr
    head = result.stdout.splitlines()[0]
    assert head.startswith(f"PID {pid} ") and "(kernel thread, " in head, head
    assert "ulimit -n" not in result.stdout and "fds 0" not in result.stdout
    code, doc = run_json("scan", str(pid), "--grace", "0")
    target = doc["targets"][0]
    assert target["kernel_thread"] is True and target["limits"]["nofile"] is None

    proc = spawner.python(HOLDER)
    result = run_cli("scan", str(proc.pid), "--grace", "0")
    assert "kernel thread" not in result.stdout and "open files (ulimit -n)" in result.stdout
    code, doc = run_json("scan", str(proc.pid), "--grace", "0")
    assert doc["targets"][0]["kernel_thread"] is False
