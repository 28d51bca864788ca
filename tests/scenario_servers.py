"""Start the scenario scripts for tests: registered with a Spawner at once,
so teardown reaps them (and their children) whatever happens."""

from __future__ import annotations

import os
import re
import select
import subprocess
import sys
import time
from typing import Any

from helpers import Spawner

from reaper_doctor.commands.scenario import script_path

ADDRESS = re.compile(rb"^127\.0\.0\.1:(\d+)$")


def read_until(fd: int, needle: bytes, timeout_s: float, buf: bytearray | None = None) -> bytes:
    """Read from `fd` until `needle` shows up or EOF; fail after `timeout_s`.

    Raw reads with select, never a blocking readline, so a silent server
    cannot hang the test. Returns everything read so far."""
    buf = bytearray() if buf is None else buf
    deadline = time.monotonic() + timeout_s
    while needle not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {needle!r}; "
                                 f"got {bytes(buf)!r}")
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 4096)
            if not chunk:
                raise AssertionError(f"EOF before {needle!r}; got {bytes(buf)!r}")
            buf += chunk
    return bytes(buf)


def start_scenario(spawner: Spawner, name: str, *args: str, lifetime_s: float = 20.0,
                   **popen: Any) -> tuple[subprocess.Popen, int]:
    """Run scenario `name` with `--port 0 --lifetime`; return it and its port."""
    argv = [sys.executable, str(script_path(name)), "--port", "0",
            "--lifetime", str(lifetime_s), *args]
    proc = subprocess.Popen(argv, stdout=subprocess.PIPE, start_new_session=True, **popen)
    spawner.started.append(proc)
    first = read_until(proc.stdout.fileno(), b"\n", timeout_s=20.0).split(b"\n")[0]
    match = ADDRESS.match(first.strip())
    assert match, f"{name}: first line {first!r} is not 127.0.0.1:PORT"
    return proc, int(match.group(1))
