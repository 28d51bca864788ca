"""One load run's outcome."""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Outcome:
    """One request: "ok", "failed" or "hung"; latency in ms; error text or None."""

    index: int
    outcome: str
    latency_ms: float
    error: str | None = None


@dataclass(frozen=True)
class LoadResult:
    """Counts and latencies of one `drive` run.

    Latency percentiles are over the ``ok`` requests only (a hung request's
    "latency" is just the timeout); None when no request succeeded.
    """

    sent: int
    ok: int
    failed: int
    hung: int
    p50_ms: float | None
    p99_ms: float | None
    duration_s: float
    errors: dict[str, int] = field(default_factory=dict)  # error text -> count
    outcomes: tuple[Outcome, ...] = ()

    @property
    def requests_per_s(self) -> float:
        """Completed (ok) requests per second of wall time."""
        return self.ok / self.duration_s if self.duration_s > 0 else 0.0

    def as_dict(self) -> dict[str, object]:
        """The `requests` and `latency_ms` parts of the scenario JSON, and more."""
        return {
            "requests": {"sent": self.sent, "ok": self.ok, "failed": self.failed,
                         "hung": self.hung},
            "latency_ms": {"p50": self.p50_ms, "p99": self.p99_ms},
            "duration_s": round(self.duration_s, 3),
            "requests_per_s": round(self.requests_per_s, 1),
            "errors": dict(self.errors),
        }


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 1)
