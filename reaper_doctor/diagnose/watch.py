"""`watch` rules: rates, time to each limit, and steady descriptor growth."""

from __future__ import annotations

from typing import Mapping, Sequence

from ..model import (
    WATCH_SERIES,
    Finding,
    WatchLimits,
    WatchSample,
)
from .fds import FD_GROWTH_TOTAL, _fd_growth_finding, eta_s

# RD203 from watch, judged over the whole run: a least-squares slope > 0
# that explains the samples (R^2) and a fitted growth of at least
# FD_GROWTH_TOTAL descriptors, over at least WATCH_MIN_SAMPLES samples.
WATCH_MIN_R2 = 0.8
WATCH_MIN_SAMPLES = 3


# ----------------------------------------------------------------------------
# watch: judged over the whole run


def linear_fit(ts: Sequence[float], ys: Sequence[float]) -> tuple[float, float]:
    """Least-squares slope (y units per t unit) and R^2 of ys over ts.

    R^2 is 1.0 for a flat series (it is explained perfectly); slope 0 and
    R^2 0 with fewer than two distinct times.
    """
    n = len(ts)
    if n < 2:
        return 0.0, 0.0
    mt, my = sum(ts) / n, sum(ys) / n
    stt = sum((t - mt) ** 2 for t in ts)
    if stt == 0:
        return 0.0, 0.0
    sty = sum((t - mt) * (y - my) for t, y in zip(ts, ys))
    syy = sum((y - my) ** 2 for y in ys)
    slope = sty / stt
    r2 = 1.0 if syy == 0 else (sty * sty) / (stt * syy)
    return slope, r2


def watch_fd_growth(pid: int, samples: Sequence[WatchSample],
                    soft: int | None) -> Finding | None:
    """RD203 from watch: descriptors grow over the whole run -- slope > 0,
    R^2 >= WATCH_MIN_R2, fitted growth >= FD_GROWTH_TOTAL over at least
    WATCH_MIN_SAMPLES samples. Fluctuating counts (connections coming and
    going) have a low R^2 or a small fitted growth."""
    points = [(s.t_s, s.fds) for s in samples if s.fds is not None]
    if len(points) < WATCH_MIN_SAMPLES:
        return None
    ts, ys = [p[0] for p in points], [float(p[1]) for p in points]
    slope, r2 = linear_fit(ts, ys)
    span = ts[-1] - ts[0]
    growth = slope * span
    if slope <= 0 or r2 < WATCH_MIN_R2 or growth < FD_GROWTH_TOTAL:
        return None
    now = points[-1][1]
    return _fd_growth_finding(
        pid, slope, int(now or 0), soft, samples=len(points), span_s=round(span, 3),
        r2=round(r2, 3), fitted_growth=round(growth, 1),
        first=points[0][1], last=now,
        rule=f"least-squares slope > 0, R^2 >= {WATCH_MIN_R2}, fitted growth >= "
             f"{FD_GROWTH_TOTAL} fds over >= {WATCH_MIN_SAMPLES} samples")


def watch_rates(samples: Sequence[WatchSample]) -> dict[str, float | None]:
    """Growth per minute of each series: the least-squares slope over the
    samples that have a value; None with fewer than two."""
    rates: dict[str, float | None] = {}
    for name in WATCH_SERIES:
        points = [(s.t_s, getattr(s, name)) for s in samples if getattr(s, name) is not None]
        if len(points) < 2:
            rates[name] = None
            continue
        slope, _ = linear_fit([t for t, _ in points], [float(v) for _, v in points])
        rates[name] = round(slope * 60, 3)
    return rates


def watch_etas(samples: Sequence[WatchSample], rates: Mapping[str, float | None],
               limits: WatchLimits) -> dict[str, float | None]:
    """Seconds until each soft limit at the fitted rate, from the last
    value: None when the series does not grow (slope <= 0), the limit is
    unlimited or unknown, or (nproc) not enforced."""
    def last(name: str) -> int | None:
        values = [getattr(s, name) for s in samples if getattr(s, name) is not None]
        return values[-1] if values else None

    def eta(name: str, limit: int | None) -> float | None:
        rate = rates.get(name)
        value = eta_s(last(name), limit, (rate or 0.0) / 60)
        return None if value is None else round(value, 1)

    return {"nofile": eta("fds", limits.nofile),
            "nproc": eta("tasks", limits.nproc) if limits.nproc_enforced else None,
            "pids_cgroup": eta("pids_cgroup", limits.pids_cgroup)}
