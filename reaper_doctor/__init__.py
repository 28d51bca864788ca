"""reaper-doctor: find, explain and reproduce zombie and descriptor leaks.

Nothing is imported here on purpose: `reaper-doctor --version` must start
without psutil or tabulate.
"""

__version__ = "0.1.0"
