"""`scenario run` (and `scenario compare`, each scenario in turn): `run`
(commands/run.py) on a built-in script, judged by the scenario's
expectations: its findings, the by-products it allows, and whether it is
scanned during the load (`Scenario.scan_during_load`: blocking, whose
finding only exists under load). Start, load, timeline, scan and the
clean-up contract are run's.

Side effect: the calling process stays a child subreaper afterwards.

The scenario scripts live in the repository's top-level `scenarios/`
folder; the wheel ships them inside the package as `reaper_doctor/scenarios/`
(pyproject `force-include`), so `script_path` looks there first and falls
back to the checkout (editable or dev runs).
"""

from __future__ import annotations

import os
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

from ..model.load import Outcome
from ..model.scenario import SCENARIOS, RunSettings, Scenario, ServerRun, ServerSpec, get
from .run import check_settings, default_requests, run_server

__all__ = ["check_settings", "default_requests", "pid_namespace_problem", "resolve",
           "run_scenario", "runnable_scenarios", "script_path", "scripts_dir"]


# Whether this process may create a PID namespace (with a user namespace
# when not root), tried in a child so that nothing here changes.
_NAMESPACE_PROBE = """
import ctypes, os, sys
flags = 0x20000000 if os.geteuid() == 0 else 0x30000000  # CLONE_NEWPID (| CLONE_NEWUSER)
libc = ctypes.CDLL(None, use_errno=True)
sys.exit(0 if libc.unshare(flags) == 0 else os.strerror(ctypes.get_errno()))
"""


def pid_namespace_problem() -> str | None:
    """Why no PID namespace can be made here (for the container scenarios), or None."""
    try:
        probe = subprocess.run([sys.executable, "-c", _NAMESPACE_PROBE], capture_output=True,
                               text=True, timeout=30, stdin=subprocess.DEVNULL)
    except (OSError, subprocess.TimeoutExpired) as e:
        return f"cannot try: {e}"
    if probe.returncode == 0:
        return None
    how = "" if os.geteuid() == 0 else " (not root: it needs unprivileged user namespaces)"
    return f"cannot create a PID namespace{how}: {probe.stderr.strip() or probe.returncode}"


def runnable_scenarios() -> tuple[list[str], str | None]:
    """Every scenario this machine can run, and why the others cannot (the
    container scenarios need a PID namespace), or None."""
    names = list(SCENARIOS)
    needing = [n for n in names if SCENARIOS[n].needs_pid_namespace]
    problem = pid_namespace_problem() if needing else None
    if problem is None:
        return names, None
    return [n for n in names if n not in needing], f"skipping {', '.join(needing)}: {problem}"


def resolve(name: str) -> Scenario:
    """The scenario called `name`; KeyError with the known names otherwise."""
    found = get(name)
    if found is None:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    return found


def run_scenario(name: str, settings: RunSettings = RunSettings(), *,
                 on_result: Callable[[Outcome], object] | None = None,
                 on_started: Callable[[ServerRun], object] | None = None) -> ServerRun:
    """Run scenario `name` once: its script through `run.run_server`, judged
    by the scenario's expectations. Raises KeyError for an unknown scenario,
    ValueError for bad settings and run.ServerStartError if the server does
    not start; everything started is killed and reaped in every case."""
    scenario = resolve(name)
    check_settings(settings)
    script = script_path(scenario.name)
    spec = ServerSpec(argv=(sys.executable, str(script), "--port", "0",
                            "--lifetime", f"{settings.server_lifetime_s():g}"),
                      scenario=scenario, expected=scenario.expected,
                      also_allowed=scenario.also_allowed,
                      scan_during_load=scenario.scan_during_load)
    return run_server(spec, settings, on_result=on_result, on_started=on_started)


def scripts_dir() -> Path:
    """The folder holding the scenario scripts: in the installed package, else
    the checkout's top-level `scenarios/`."""
    import reaper_doctor

    package = Path(reaper_doctor.__file__).resolve().parent
    for candidate in (package / "scenarios", package.parent / "scenarios"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"scenario scripts not found in {package / 'scenarios'} "
                            f"or {package.parent / 'scenarios'}")


def script_path(name: str) -> Path:
    """The script of scenario `name`. KeyError if no such scenario,
    FileNotFoundError if its script is missing from the installation."""
    scenario = get(name)
    if scenario is None:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    path = scripts_dir() / scenario.script
    if not path.is_file():
        raise FileNotFoundError(f"scenario script missing: {path}")
    return path
