"""What a trace counts: signal counts, one interval, a whole trace."""

from __future__ import annotations

from dataclasses import dataclass, field, fields
from typing import Any

from .signals import signal_name


@dataclass(frozen=True)
class SignalCounts:
    """What happened to the traced signal. All counts are events.

    `generated` = queued + merged + ignored + overflow_fail + lose_info +
    other_result. `delivered` counts signal_deliver: the target dequeued the
    signal to act on it (for a caught signal: one run of the C-level handler).
    `lost_events` counts events the ring buffer dropped: when it is not 0 the
    other counts are low.
    """

    generated: int = 0
    queued: int = 0            # result 0: became pending
    merged: int = 0            # result 2: already pending, merged into it
    ignored: int = 0           # result 1: discarded by the disposition
    overflow_fail: int = 0     # result 3
    lose_info: int = 0         # result 4
    other_result: int = 0      # a result code this kernel added later
    delivered: int = 0
    lost_events: int = 0

    def __add__(self, other: SignalCounts) -> SignalCounts:
        return SignalCounts(**{f.name: getattr(self, f.name) + getattr(other, f.name)
                               for f in fields(self)})

    def __sub__(self, other: SignalCounts) -> SignalCounts:
        return SignalCounts(**{f.name: getattr(self, f.name) - getattr(other, f.name)
                               for f in fields(self)})


@dataclass(frozen=True)
class TraceSample:
    """One interval: signal counts in it, /proc counts at its end."""

    t_s: float
    counts: SignalCounts
    children_exited: int      # during this interval
    zombies: int              # at its end

    def as_dict(self) -> dict[str, Any]:
        c = self.counts
        return {"t_s": round(self.t_s, 3), "generated": c.generated, "merged": c.merged,
                "delivered": c.delivered, "ignored": c.ignored,
                "children_exited": self.children_exited, "zombies": self.zombies}


@dataclass(frozen=True)
class TraceResult:
    """Everything one trace saw. `ended`: "duration", "interrupted" or "target-exited"."""

    pid: int
    signum: int
    duration_s: float
    interval_s: float
    counts: SignalCounts
    children_exited: int
    zombies_left: int
    zombies_persisting: int          # of zombies_left, those older than grace_s
    zombies_before: int
    disposition: str | None          # of the traced signal, at the end (or the start)
    ended: str
    grace_s: float
    instance: str
    samples: tuple[TraceSample, ...] = field(default_factory=tuple)

    @property
    def signal(self) -> str:
        return signal_name(self.signum)
