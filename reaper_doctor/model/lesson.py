"""`lesson coalescing`: its strategies, trials and report."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

SCHEMA = "reaper-doctor/lesson-coalescing/1"
STRATEGIES = ("wait-once", "waitpid-loop", "sig-ign", "pidfd")
MIN_CHILDREN, MAX_CHILDREN = 1, 2048

# What each strategy is, for the JSON `note` and the text output.
NOTES: Mapping[str, str] = {
    "wait-once": "SIGCHLD handler calls os.wait() once per run (the bug, RD102)",
    "waitpid-loop": "SIGCHLD handler loops os.waitpid(-1, WNOHANG) until it returns 0",
    "sig-ign": ("signal(SIGCHLD, SIG_IGN): the kernel reaps each child at exit; "
                "no handler runs and exit statuses are lost (waitpid gives ECHILD)"),
    "pidfd": ("no signal handler: pidfd_open() per child in a selector, reaped with "
              "waitid(P_PIDFD); 'handler runs' counts readable-pidfd events"),
}

# The kernel counts `--trace` adds to each strategy (JSON "kernel").
KERNEL_KEYS = ("generated", "merged", "delivered", "ignored", "lost_events")
# Strategies whose "handler runs" are runs of a Python SIGCHLD handler, so
# that kernel deliveries minus handler runs is what CPython merged.
SIGNAL_HANDLERS = ("wait-once", "waitpid-loop")


@dataclass(frozen=True)
class Trial:
    """One trial's numbers, as the trial process counted them.

    `handler_runs` and `reaped` are None for sig-ign (no handler; the kernel
    reaps). `zombies_left` is counted before the trial's own clean-up.
    All counts are None when `skipped` gives a reason. `kernel`: SIGCHLD
    counts of the trial process from its tracepoints (`KERNEL_KEYS`), None
    when not traced.
    """

    strategy: str
    children: int
    pid: int
    handler_runs: int | None = None
    reaped: int | None = None
    zombies_left: int | None = None
    still_alive: int | None = None
    cleanup_reaped: int | None = None
    settle_s: float | None = None
    leftover_processes: int = 0
    skipped: str | None = None
    extra: Mapping[str, Any] = field(default_factory=dict)
    kernel: Mapping[str, int] | None = None

    @property
    def cpython_merged(self) -> int | None:
        """Kernel deliveries that never became a separate Python handler run;
        None unless traced with a Python signal handler."""
        if self.kernel is None or self.handler_runs is None or \
                self.strategy not in SIGNAL_HANDLERS:
            return None
        return self.kernel["delivered"] - self.handler_runs

    def count(self, key: str) -> int | None:
        """A trial count by name: a field, a kernel count, or cpython_merged."""
        if key in KERNEL_KEYS:
            return None if self.kernel is None else self.kernel[key]
        return getattr(self, key)

    @classmethod
    def from_json(cls, doc: Mapping[str, Any], leftover_processes: int = 0) -> Trial:
        known = {"strategy", "children", "pid", "handler_runs", "reaped", "zombies_left",
                 "still_alive", "cleanup_reaped", "settle_s", "skipped"}
        fields: dict[str, Any] = {k: doc.get(k) for k in known}
        return cls(**fields,
                   leftover_processes=leftover_processes,
                   extra={k: v for k, v in doc.items() if k not in known})

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "handler_runs": self.handler_runs, "reaped": self.reaped,
                "zombies_left": self.zombies_left, "still_alive": self.still_alive,
                "cleanup_reaped": self.cleanup_reaped, "settle_s": self.settle_s,
                "leftover_processes": self.leftover_processes, **self.extra,
                "kernel": dict(self.kernel) if self.kernel is not None else None,
                "cpython_merged": self.cpython_merged}


@dataclass(frozen=True)
class StrategyResult:
    """All trials of one strategy; the headline numbers are the median trial's."""

    name: str
    children: int
    trials: tuple[Trial, ...] = ()
    skipped: str | None = None

    def values(self, key: str) -> list[float]:
        return [v for t in self.trials if (v := t.count(key)) is not None]

    def median_trial(self) -> Trial | None:
        """The trial in the middle when ordered by (zombies_left, handler_runs,
        reaped): the lower middle one for an even count. Its numbers are the
        headline, so they are counts one trial really saw and add up."""
        if not self.trials:
            return None
        order = sorted(self.trials, key=lambda t: (t.zombies_left or 0, t.handler_runs or 0,
                                                   t.reaped or 0))
        return order[(len(order) - 1) // 2]

    def median(self, key: str) -> float | None:
        """`key` of the median trial; None if skipped or not counted (sig-ign)."""
        trial = self.median_trial()
        return None if trial is None else trial.count(key)

    def span(self, key: str) -> tuple[float, float] | None:
        """(min, max) of `key` over the trials; None if no trial has a value."""
        vals = self.values(key)
        return (min(vals), max(vals)) if vals else None

    def to_json(self) -> dict[str, Any]:
        doc: dict[str, Any] = {"name": self.name, "children": self.children}
        for key in ("handler_runs", "reaped", "zombies_left"):
            doc[key] = None if self.skipped else self.median(key)
        doc["skipped"] = self.skipped
        doc["note"] = NOTES.get(self.name)
        if not self.skipped:
            median = self.median_trial()
            doc["median_trial_pid"] = median.pid if median else None
            doc["min"] = {k: (s[0] if (s := self.span(k)) else None)
                          for k in ("handler_runs", "reaped", "zombies_left")}
            doc["max"] = {k: (s[1] if (s := self.span(k)) else None)
                          for k in ("handler_runs", "reaped", "zombies_left")}
        median = self.median_trial()
        doc["kernel"] = (dict(median.kernel) if median is not None and median.kernel is not None
                         else None)
        doc["cpython_merged"] = median.cpython_merged if median is not None else None
        doc["trials"] = [t.to_json() for t in self.trials]
        return doc


@dataclass(frozen=True)
class LessonReport:
    children: int
    trials: int
    strategies: tuple[StrategyResult, ...]
    platform: Mapping[str, str] = field(default_factory=dict)
    traced: bool = False

    @property
    def leftover_processes(self) -> int:
        return sum(t.leftover_processes for s in self.strategies for t in s.trials)

    def strategy(self, name: str) -> StrategyResult | None:
        return next((s for s in self.strategies if s.name == name), None)

    def to_json(self) -> dict[str, Any]:
        return {"schema": SCHEMA, "children": self.children, "trials": self.trials,
                "traced": self.traced,
                "strategies": [s.to_json() for s in self.strategies],
                "leftover_processes": self.leftover_processes, **self.platform}
