from __future__ import annotations

import pytest

from helpers import Spawner, become_subreaper

# Orphans of the test children (zombies a killed parent leaves) come to the
# test process, which reaps them, instead of lingering under PID 1.
become_subreaper()


@pytest.fixture
def spawner():
    s = Spawner()
    try:
        yield s
    finally:
        s.reap_all()
