"""An unprivileged scan of another user's server says it is incomplete, and
what would complete it: root runs the server, the scan runs as `nobody`.
Real processes, real sockets; root only (the test drops privileges)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from helpers import cli_argv, run_cli, wait_until
from test_fds import SINGLE_PROCESS_LEAK, open_fds, start_server

# setpriv (util-linux) drops to nobody: all three UIDs and GIDs, no groups.
AS_NOBODY = ["setpriv", "--reuid=65534", "--regid=65534", "--clear-groups"]


def as_nobody(*args: str) -> subprocess.CompletedProcess:
    """The real command line, run as nobody."""
    return subprocess.run([*AS_NOBODY, *cli_argv(), *args], capture_output=True, text=True,
                          timeout=60, cwd="/")


def _nobody_can_run_the_tool() -> bool:
    try:
        return subprocess.run([*AS_NOBODY, sys.executable, "-c", "import reaper_doctor.cli"],
                              capture_output=True, timeout=60, cwd="/").returncode == 0
    except (OSError, subprocess.SubprocessError):
        return False


pytestmark = [
    pytest.mark.skipif(os.geteuid() != 0, reason="needs root: the test runs a server as root "
                                                  "and scans it as nobody"),
]


@pytest.fixture
def leaking_root_server(spawner):
    """A root process that never closes 12 connections its peers closed."""
    if not _nobody_can_run_the_tool():
        pytest.skip("cannot run reaper-doctor as nobody here (no setpriv, or a directory "
                    "on its path is not readable by nobody)")
    proc, port = start_server(spawner, SINGLE_PROCESS_LEAK, "0")
    base = open_fds(proc.pid)
    for _ in range(12):
        socket.create_connection(("127.0.0.1", port), timeout=5).close()
    wait_until(lambda: open_fds(proc.pid) >= base + 12, what="12 accepted sockets")
    return proc, port


def _paragraph(text: str, start: str) -> str:
    """The line that begins with `start` and the lines it wraps onto (indented), as one."""
    lines = text.splitlines()
    i = next(k for k, line in enumerate(lines) if line.startswith(start))
    j = i + 1
    while j < len(lines) and lines[j].startswith("  "):
        j += 1
    return " ".join(line.strip() for line in lines[i:j])


def test_unprivileged_scan_says_it_is_incomplete(leaking_root_server):
    proc, port = leaking_root_server
    result = as_nobody("scan", str(proc.pid), "--grace", "0.3", "--no-color")
    assert "Traceback" not in result.stderr, result.stderr
    text = result.stdout
    (row,) = [line for line in text.splitlines() if line.startswith("open files")]
    assert "unreadable" in row and "unlimited" not in row, row
    assert "no leak seen" not in text
    assert "Findings: none seen, but the scan is incomplete" in text, text
    incomplete = _paragraph(text, "Incomplete:")
    assert f"the descriptors of PID {proc.pid} (permission denied)" in incomplete
    assert "RD201" in incomplete and "run as root, or as UID 0" in incomplete
    hint = _paragraph(text, "sock_diag")
    # Any root process counts (other servers may hold some too): the port
    # of this one has its 12.
    assert "sockets of UID 0 in CLOSE_WAIT on ports where UID 0 listens" in hint, hint
    assert f"12 on port {port}" in hint or "more ports" in hint, hint   # the top 5 are named


def test_unprivileged_scan_json_carries_the_incompleteness(leaking_root_server):
    proc, port = leaking_root_server
    result = as_nobody("scan", str(proc.pid), "--grace", "0.3", "--json")
    (target,) = json.loads(result.stdout)["targets"]
    assert target["limits"]["nofile"]["used"] is None
    gaps = target["incomplete"]
    assert gaps["missing"] == [f"the descriptors of PID {proc.pid} (permission denied)"]
    assert "RD201" in gaps["unchecked"] and "RD401" in gaps["unchecked"]
    assert gaps["to_complete"].startswith("run as root, or as UID 0")
    waiting = target["close_wait_of_uid"]
    assert waiting["uid"] == 0 and waiting["by_port"][str(port)] == 12, waiting
    # As root the same scan is complete and finds the leak.
    doc = json.loads(run_cli("scan", str(proc.pid), "--grace", "0.3", "--json").stdout)
    (root_view,) = doc["targets"]
    assert root_view["incomplete"] is None and root_view["close_wait_of_uid"] is None
    assert [f["code"] for f in root_view["findings"]] == ["RD201"]
