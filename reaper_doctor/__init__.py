"""reaper-doctor: find, explain and reproduce zombie and descriptor leaks.

Nothing is imported here on purpose: `reaper-doctor --version` must start
without psutil or tabulate.
"""

from __future__ import annotations

from typing import TypeVar

__version__ = "0.1.0"

T = TypeVar("T")


def adopt(obj: T) -> T:
    """Tell the pytest plugin that `obj` (a file, socket, descriptor number,
    Popen or multiprocessing.Process) lives across tests on purpose: it is
    never reported as a leak. Returns `obj`."""
    from .collect.adopted import adopt as _adopt

    return _adopt(obj)
