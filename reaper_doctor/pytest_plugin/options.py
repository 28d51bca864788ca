"""The plugin's options and ini keys, read into Settings (None: the plugin
is off). The only part of the plugin imported when it is off."""

from __future__ import annotations

from typing import Iterable, NamedTuple

import pytest

from .diff import CHECKS

MODES = ("fail", "warn")
DEFAULT_GRACE_S = 0.5


def add_options(parser: pytest.Parser) -> None:
    group = parser.getgroup("reaper-doctor", "reaper-doctor: leaked children, zombies, fds")
    group.addoption("--reaper-doctor", dest="reaper_doctor", action="store_true", default=None,
                    help="check every test for leaked child processes, zombies and "
                         "descriptors (ini: reaper_doctor = true).")
    group.addoption("--no-reaper-doctor", dest="reaper_doctor", action="store_false",
                    help="turn the check off even if the ini file turns it on.")
    group.addoption("--reaper-doctor-mode", choices=MODES, default=None,
                    help="fail: a leaking test errors in teardown (default); "
                         "warn: it passes with a ReaperDoctorWarning.")
    group.addoption("--reaper-doctor-checks", default=None, metavar="LIST",
                    help="comma-separated checks among children,zombies,fds "
                         "(default: all).")
    group.addoption("--reaper-doctor-grace", type=float, default=None, metavar="SECONDS",
                    help="the longest wait for what is on its way out after teardown "
                         f"(threads the test started, a falling count; default "
                         f"{DEFAULT_GRACE_S}).")
    parser.addini("reaper_doctor", type="bool", default=False,
                  help="turn the reaper-doctor leak check on for every run.")
    parser.addini("reaper_doctor_mode", default="fail", help="fail or warn.")
    parser.addini("reaper_doctor_checks", default=",".join(CHECKS),
                  help="comma-separated checks among children,zombies,fds.")
    parser.addini("reaper_doctor_grace_s", default=str(DEFAULT_GRACE_S),
                  help="longest wait in seconds for what is on its way out.")
    parser.addini("reaper_doctor_allow_paths", type="linelist", default=[],
                  help="descriptors kept on purpose: glob patterns on their path or link "
                       "text (pipe:[*], socket:[*] ...).")
    parser.addini("reaper_doctor_allow_commands", type="linelist", default=[],
                  help="children kept on purpose: glob patterns on their command line.")
    parser.addini("reaper_doctor_first_use", type="bool", default=False,
                  help="a resource a helper makes on first use is a cache, reported only "
                       "when the same line makes another (default false: a leak made "
                       "once would go unseen).")
    parser.addini("reaper_doctor_subreaper", type="bool", default=True,
                  help="make the test process a child subreaper, so that grandchildren "
                       "left behind come home and are reported (default true; false "
                       "for a suite that tests who inherits its orphans).")
    parser.addini("reaper_doctor_origins", default="true",
                  help="record where descriptors and children are made: true (default), "
                       "false, or audit (also Python's audit hook; slower).")


class Settings(NamedTuple):
    # (A NamedTuple: a frozen dataclass cost 0.9 ms to define, at every
    # pytest start, the plugin on or off.)
    mode: str
    checks: frozenset[str]
    grace_s: float
    allow_paths: tuple[str, ...] = ()
    allow_commands: tuple[str, ...] = ()
    first_use: bool = False
    origins: bool | str = True    # False, True (wrappers) or "audit" (and the audit hook)
    subreaper: bool = True        # orphans of the suite's children come home


def settings(config: pytest.Config) -> Settings | None:
    """The settings when the plugin is on, None when it is off."""
    enabled = config.getoption("reaper_doctor")
    if enabled is None:
        enabled = config.getini("reaper_doctor")
    if not enabled:
        return None
    mode = config.getoption("reaper_doctor_mode") or config.getini("reaper_doctor_mode")
    if mode not in MODES:
        raise pytest.UsageError(f"reaper_doctor_mode: {mode!r} is not one of {', '.join(MODES)}")
    checks_text = (config.getoption("reaper_doctor_checks")
                   or config.getini("reaper_doctor_checks"))
    checks = parse_checks(checks_text, "reaper-doctor checks")
    grace = config.getoption("reaper_doctor_grace")
    if grace is None:
        try:
            grace = float(config.getini("reaper_doctor_grace_s"))
        except ValueError:
            raise pytest.UsageError("reaper_doctor_grace_s: not a number of seconds") from None
    if grace < 0:
        raise pytest.UsageError("reaper-doctor grace: must be >= 0 seconds")
    return Settings(mode=mode, checks=checks, grace_s=grace,
                    allow_paths=tuple(config.getini("reaper_doctor_allow_paths")),
                    allow_commands=tuple(config.getini("reaper_doctor_allow_commands")),
                    first_use=bool(config.getini("reaper_doctor_first_use")),
                    origins=_origins(config.getini("reaper_doctor_origins")),
                    subreaper=bool(config.getini("reaper_doctor_subreaper")))


def _origins(value: str) -> bool | str:
    text = str(value).strip().lower()
    if text in ("audit",):
        return "audit"
    if text in ("true", "1", "yes", "on"):
        return True
    if text in ("false", "0", "no", "off"):
        return False
    raise pytest.UsageError(f"reaper_doctor_origins: {value!r} is not true, false or audit")


def parse_checks(items: str | Iterable[str], where: str) -> frozenset[str]:
    if isinstance(items, str):
        items = items.split(",")
    names = {i.strip() for i in items if i.strip()}
    if "all" in names:
        return frozenset(CHECKS)
    unknown = sorted(names - set(CHECKS))
    if unknown:
        raise pytest.UsageError(f"{where}: unknown check {', '.join(map(repr, unknown))} "
                                f"(choose among {', '.join(CHECKS)})")
    return frozenset(names)

