"""pytest plugin: fail a test that leaks a child process, a zombie or a descriptor.

Off unless asked for (`pytest --reaper-doctor`, or `reaper_doctor = true`
in the ini file). Inactive, this package only adds its options and its
marker: nothing is read, nothing is slowed, and neither the checker nor
reaper_doctor.collect (let alone psutil) is imported.

Active, it samples the test process after each test's teardown (and once
before the first test): one test's after is the next one's before, since
nothing runs between two tests. It reports what each test left behind:

  options    the command-line options and ini keys, read into Settings
  checker    the per-test check: the fast path (one fstat, one waitid), the
             full before/after comparison when a cheap signal changed, the
             grace wait
  fixtures   what the fixtures broader than the test own
  diff       the comparison itself, pure
  findings   what was found, described: kinds, origins, pipe ends, blame
  origins    where each descriptor and child was made (wrapped functions)
  report     the text of a test's report and its advice
  session    counts, notes and the summary (one for an xdist run), and the
             clean-up of what tests left running

Descriptors are keyed by (fd, st_dev, st_ino). The count comes in one
fstat() of /proc/self/fd held open; the set is read again (a listdir and
one fstat per descriptor) only when the count has changed or a descriptor
made during the test is still open, and a link is read only for what is
reported. Children and zombies are keyed by (pid, start time), read only
when waitid() says there are some. The test process is a child subreaper
while the plugin runs, so the orphans of its children come home and are
reported; what tests left running is killed and reaped at the end of the
session, and said so.

Shape after dask distributed's pytest_resourceleaks (pluggable checks, a
marker to allow a known leak, fail/warn switch, grace retry) and pytest's
own --lsof checker, which sees only paths and so misses sockets and pipes.
"""

from __future__ import annotations

from typing import Any

import pytest


class ReaperDoctorWarning(pytest.PytestWarning):
    """A test leaked a child process, a zombie or a descriptor (warn mode),
    or could not be checked."""

    __module__ = "reaper_doctor.pytest_plugin"


def pytest_addhooks(pluginmanager: pytest.PytestPluginManager) -> None:
    # pytest rewrites the asserts of a plugin's package (for its helpers'
    # failure messages; ours has none a user sees) and reads each rewritten
    # module back with marshal.load(file), one readinto() call per object:
    # about 25 M instructions at every start, a third of what the plugin
    # added to a run. This package's modules are imported plainly instead.
    # (Private: where pytest has changed, nothing is undone and nothing breaks.
    # This module is read before this hook runs: it imports the others in
    # its hooks, not at its top.)
    hook = getattr(pluginmanager, "rewrite_hook", None)
    marked = getattr(hook, "_must_rewrite", None)
    cache = getattr(hook, "_marked_for_rewrite_cache", None)
    if not isinstance(marked, set) or not isinstance(cache, dict):
        return
    ours = {name for name in marked if name.split(".")[0] == __name__.split(".")[0]}
    if ours:
        marked -= ours
        cache.clear()


def pytest_addoption(parser: pytest.Parser) -> None:
    from .options import add_options

    add_options(parser)


def pytest_configure(config: pytest.Config) -> None:
    from .diff import CHECKS
    from .options import settings
    from .report import MARKER

    config.addinivalue_line(
        "markers",
        f"{MARKER}(*checks): reaper-doctor allows this test to leak these resources "
        f"({', '.join(CHECKS)}; no argument: all of them).")
    chosen = settings(config)
    if chosen is None:
        return
    from ..collect.proc import has_procfs

    if not has_procfs():
        # psutil could count descriptors elsewhere but not name them, nor
        # tell a zombie's exit status: better off than half right.
        config.issue_config_time_warning(
            ReaperDoctorWarning("reaper-doctor: no /proc here; the leak check is off"),
            stacklevel=2)
        return
    from .checker import LeakChecker

    config.pluginmanager.register(LeakChecker(chosen, str(config.rootpath)),
                                  "reaper-doctor-checker")


# Imported on first use only: the checker when the plugin is on.
_LAZY = {"LeakCheck": "checker", "LeakChecker": "checker", "Settings": "options",
         "CHECKS": "diff"}


def __getattr__(name: str) -> Any:
    if name not in _LAZY:
        raise AttributeError(name)
    from importlib import import_module

    return getattr(import_module(f".{_LAZY[name]}", __name__), name)


__all__ = ["CHECKS", "LeakCheck", "LeakChecker", "ReaperDoctorWarning", "Settings"]
