from __future__ import annotations

import os
import sys

import pytest

from helpers import Spawner, become_subreaper

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
