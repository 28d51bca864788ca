"""Real PID namespaces for tests, made with unshare(1) from util-linux.

As root, `unshare --pid --fork`; as another user, inside a new user
namespace too (`--user --map-root-user`), where the kernel allows it.
Whatever cannot be made here skips the test with the reason. The
processes go through a Spawner, so teardown kills them: SIGKILL reaches
a namespace's PID 1 (a SIGTERM it has no handler for does not), and the
kernel then ends the whole namespace.
"""

from __future__ import annotations

import functools
import os
import shutil
import subprocess
from typing import Any

import pytest
from helpers import Spawner, live_children, wait_until


def unshare_argv(*command: str) -> list[str]:
    """argv that runs `command` as PID 1 of a new PID namespace."""
    user = [] if os.geteuid() == 0 else ["--user", "--map-root-user"]
    return ["unshare", *user, "--pid", "--fork", *command]


@functools.lru_cache(maxsize=None)
def namespace_skip_reason() -> str | None:
    """Why no PID namespace can be made here, or None if one can."""
    if shutil.which("unshare") is None:
        return "unshare (util-linux) is not installed"
    try:
        probe = subprocess.run(unshare_argv("true"), capture_output=True, text=True, timeout=30)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"unshare failed: {e}"
    if probe.returncode != 0:
        how = "as root" if os.geteuid() == 0 else "without root (user namespaces)"
        return f"cannot make a PID namespace {how}: {probe.stderr.strip() or probe.returncode}"
    return None


def needs_namespaces() -> None:
    reason = namespace_skip_reason()
    if reason:
        pytest.skip(reason)


def needs_tini() -> str:
    path = shutil.which("tini")
    if path is None:
        pytest.skip("tini is not installed (Debian: apt-get install tini)")
    return path


def start_namespace(spawner: Spawner, *command: str, **popen: Any) -> tuple[subprocess.Popen, int]:
    """Run `command` as PID 1 of a new PID namespace; return unshare's
    process and the host PID of the namespace's PID 1."""
    needs_namespaces()
    proc = subprocess.Popen(unshare_argv(*command), stdin=subprocess.DEVNULL,
                            stdout=subprocess.DEVNULL, start_new_session=True, **popen)
    spawner.started.append(proc)
    spawner.kill_at_once.add(proc.pid)   # the init ignores SIGTERM (no handler)
    init = wait_until(lambda: live_children(proc.pid), what=f"unshare {proc.pid} to fork")[0]
    return proc, init


def ns_pids(pid: int) -> list[int]:
    """The NSpid line of `pid`, read by the tests' own code."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("NSpid:"):
                return [int(x) for x in line.split()[1:]]
    return []
