"""What `scan`, `watch`, `explain`, `lesson` and `scenario` print for people:
every section says what was observed, and fits the terminal."""

from __future__ import annotations

import os

from helpers import run_cli

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
