"""Leak tests for your own server, from Python: `reaper-doctor run` as a function.

    from reaper_doctor.testing import describe, run_under_load

    def test_my_server_does_not_leak():
        run = run_under_load(["python3", "myserver.py", "--port", "0"], requests=100)
        assert run.as_expected, describe(run)

`run_under_load` starts the command in its own session under a child
subreaper, finds the TCP port it listens on (from /proc), sends the load to
127.0.0.1 or ::1, samples and scans it, then kills and reaps everything it
started, also when the test is interrupted. It returns the run, whose
`as_expected` is what `reaper-doctor run` exits 0 on: no finding of severity
warning or worse (or, with `expect`, exactly those codes), a scan that
finished, and nothing left over. The calling process stays a child
subreaper afterwards.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from typing import Any

from .commands.run import ServerStartError, run_server
from .model.scenario import RunSettings, ServerRun, ServerSpec

__all__ = ["ServerRun", "ServerStartError", "describe", "document", "run_under_load"]


def run_under_load(command: Sequence[str], *, requests: int = 60, concurrency: int = 8,
                   timeout_s: float = 2.0, grace_s: float = 1.0, port: int | None = None,
                   request: bytes | None = None, startup_timeout_s: float = 20.0,
                   expect: Iterable[str] = (), fd_limit: int | None = None) -> ServerRun:
    """Run `command` under load and judge it, as `reaper-doctor run` does.

    `timeout_s`: per request (no end of reply by then = hung); `grace_s`:
    between the scan's two samples; `port`: which listening port, when the
    server has several; `request`: raw bytes instead of the HTTP GET (sent,
    then the sending side shut down); `expect`: finding codes the server
    should show ("RD101"); `fd_limit`: the server's soft RLIMIT_NOFILE.

    Raises ServerStartError when the server cannot be loaded (command not
    found, exited before listening, nothing listening within
    `startup_timeout_s`, listening only off loopback; its output's last
    lines in `.tail`), ValueError for bad arguments.
    """
    from .catalog import lookup

    codes = []
    for code in expect:
        found = lookup(code)
        if found is None:
            raise ValueError(f"unknown finding code {code!r}")
        codes.append(found.code)
    settings = RunSettings(requests=requests, concurrency=concurrency, timeout_s=timeout_s,
                           grace_s=grace_s, fd_limit=fd_limit)
    spec = ServerSpec(argv=tuple(command), expected=tuple(sorted(set(codes))), port=port,
                      request=request, startup_timeout_s=startup_timeout_s)
    return run_server(spec, settings)


def document(run: ServerRun) -> dict[str, Any]:
    """The run as `reaper-doctor run --json` prints it (a dict)."""
    from .render.scenario import run_document

    return run_document(run)


def describe(run: ServerRun) -> str:
    """The run as `reaper-doctor run` prints it: for an assertion message."""
    from .render.scenario import render_run_text

    return render_run_text(run)
