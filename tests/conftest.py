from __future__ import annotations

import sys

import pytest

from helpers import Spawner, become_subreaper

# Orphans of the test children (zombies a killed parent leaves) come to the
# test process, which reaps them, instead of lingering under PID 1.
become_subreaper()

# The leak check (on through pyproject's `reaper_doctor = "true"`). Installed,
# the pytest11 entry point has already loaded it before this file; in a
# checkout that is not installed, load it here. Registering it twice (under
# the entry point's name and the module's) would be an error, hence the test.
pytest_plugins = ["pytester"]
if "reaper_doctor.pytest_plugin" not in sys.modules:
    pytest_plugins.append("reaper_doctor.pytest_plugin")


@pytest.fixture
def spawner():
    s = Spawner()
    try:
        yield s
    finally:
        s.reap_all()
