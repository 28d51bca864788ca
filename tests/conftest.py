from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path
from typing import Iterator

import pytest
from helpers import Spawner

from reaper_doctor.system import tracefs
from reaper_doctor.system.lifecycle import become_subreaper

# Orphans of the test children (zombies a killed parent leaves) come to the
# test process, which reaps them, instead of lingering under PID 1.
become_subreaper()


def _loaded_by_entry_point() -> bool:
    """Whether pytest has loaded the plugin through the installed package's
    pytest11 entry point (it does so before reading this file)."""
    if os.environ.get("PYTEST_DISABLE_PLUGIN_AUTOLOAD") or "--disable-plugin-autoload" in sys.argv:
        return False
    from importlib.metadata import entry_points

    return any(ep.value == "reaper_doctor.pytest_plugin" for ep in entry_points(group="pytest11"))


# The leak check (on through pyproject's `reaper_doctor = "true"`). Installed,
# the entry point loads it; in a checkout that is not installed, this file
# does. Both would be an error: pluggy refuses one module under two names.
# (Not `"reaper_doctor.pytest_plugin" in sys.modules`: anything may import
# the module early without registering it.)
pytest_plugins = ["pytester"]
if not _loaded_by_entry_point():
    pytest_plugins.append("reaper_doctor.pytest_plugin")


@pytest.fixture
def spawner():
    s = Spawner()
    try:
        yield s
    finally:
        s.reap_all()


@pytest.fixture(scope="session")
def tracefs_root(tmp_path_factory) -> Iterator[Path]:
    """A tracefs root (root only; skips otherwise), mounted into a temporary
    directory if none is mounted, and unmounted at the end of the session.
    The tool itself never mounts anything: tests point REAPER_DOCTOR_TRACEFS
    at this (`trace_env`)."""
    if os.geteuid() != 0:
        pytest.skip("needs root: tracefs is root-only")
    mounted: Path | None = None
    root = next((Path(c) for c in tracefs.TRACEFS_CANDIDATES
                 if (Path(c) / "instances").is_dir()), None)
    if root is None:
        mounted = tmp_path_factory.mktemp("tracefs")
        r = subprocess.run(["mount", "-t", "tracefs", "nodev", str(mounted)],
                           capture_output=True, text=True, timeout=30)
        if r.returncode != 0:
            pytest.skip(f"cannot mount tracefs: {r.stderr.strip() or r.returncode}")
        root = mounted
    try:
        if not (root / "events" / "signal" / "signal_generate" / "format").exists():
            pytest.skip("this kernel has no signal:signal_generate tracepoint")
        yield root
    finally:
        if mounted is not None:
            r = subprocess.run(["umount", str(mounted)], capture_output=True, timeout=30)
            if r.returncode != 0:
                subprocess.run(["umount", "-l", str(mounted)], capture_output=True, timeout=30)
            assert not os.path.ismount(mounted)


@pytest.fixture
def trace_env(tracefs_root) -> dict[str, str]:
    """The environment for a CLI subprocess that traces, with REAPER_DOCTOR_TRACEFS set."""
    return {**os.environ, tracefs.TRACEFS_ENV: str(tracefs_root)}

