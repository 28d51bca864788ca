from __future__ import annotations

import pytest

from helpers import Spawner


@pytest.fixture
def spawner():
    s = Spawner()
    try:
        yield s
    finally:
        s.reap_all()
