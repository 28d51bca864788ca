"""`reaper-doctor exporter`: the whole-machine census over HTTP for
Prometheus, on prometheus_client's WSGI server.

- `/metrics` serves a census at most `min_interval_s` old. Scrapes that
  arrive while a census runs wait for that one and share it: a scrape
  never waits for more than one census, and concurrent scrapes never
  start one each.
- Its own series: `reaper_doctor_census_duration_seconds` (the census
  served), `reaper_doctor_census_age_seconds`, and the counters
  `reaper_doctor_censuses_total`, `reaper_doctor_census_errors_total`,
  `reaper_doctor_scrapes_total`.
- `/` is a one-line pointer to `/metrics`.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import Any, Callable, Generic, Iterable, Iterator, TypeVar
from wsgiref.simple_server import WSGIRequestHandler

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import ThreadingWSGIServer, make_wsgi_app
from prometheus_client.registry import Collector

from ..model import Report
from ..render.prometheus import registry_of, report_families
from ..collect.machine import ProcessCache
from .census import CensusState, census_after

DEFAULT_LISTEN = "127.0.0.1:9563"
DEFAULT_MIN_INTERVAL_S = 5.0

T = TypeVar("T")


class SharedResult(Generic[T]):
    """The result of `produce()`, reused while younger than `max_age_s`.

    Callers that arrive while it is being produced wait for that run and
    take its result (or its error); only the caller that finds no run
    under way and a stale result starts one.
    """

    def __init__(self, produce: Callable[[], T], max_age_s: float,
                 clock: Callable[[], float] = time.monotonic) -> None:
        self._produce = produce
        self.max_age_s = max_age_s
        self._clock = clock
        self._cond = threading.Condition()
        self._running = False
        self._generation = 0
        self._value: T | None = None
        self._error: BaseException | None = None
        self.produced_at: float | None = None
        self.runs = 0
        self.errors = 0

    def get(self) -> tuple[T | None, BaseException | None]:
        """(the value, None), or (None, the error of the run this call waited for)."""
        with self._cond:
            if (self._value is not None and self.produced_at is not None
                    and self._clock() - self.produced_at < self.max_age_s):
                return self._value, None
            if self._running:
                generation = self._generation
                while self._generation == generation:
                    self._cond.wait()
                return (self._value, None) if self._error is None else (None, self._error)
            self._running = True
        value: T | None = None
        error: BaseException | None = None
        try:
            value = self._produce()
        except Exception as e:  # noqa: BLE001 - counted and served as an error metric
            error = e
        with self._cond:
            self._running = False
            self._generation += 1
            self.runs += 1
            self._error = error
            if error is None:
                self._value, self.produced_at = value, self._clock()
            else:
                self.errors += 1
                self._value, self.produced_at = None, None
            self._cond.notify_all()
        return value, error

    def age_s(self) -> float | None:
        produced = self.produced_at
        return None if produced is None else self._clock() - produced


class CensusCollector(Collector):
    """The census as metric families, with the exporter's own series."""

    def __init__(self, shared: SharedResult[Report]) -> None:
        self.shared = shared
        self.scrapes = 0
        self._lock = threading.Lock()

    def collect(self) -> Iterable[Metric]:
        with self._lock:
            self.scrapes += 1
        report, _error = self.shared.get()
        if report is not None:
            yield from report_families(report._replace(duration_s=None))
        yield from self._own(report)

    def _own(self, report: Report | None) -> Iterator[Metric]:
        duration = GaugeMetricFamily(
            "reaper_doctor_census_duration_seconds", "Wall time of the census served.")
        if report is not None and report.duration_s is not None:
            duration.add_metric([], round(report.duration_s, 6))
        yield duration
        age = GaugeMetricFamily("reaper_doctor_census_age_seconds",
                                "Age of the census served (at most --min-interval).")
        age_s = self.shared.age_s()
        if age_s is not None:
            age.add_metric([], round(age_s, 6))
        yield age
        yield CounterMetricFamily("reaper_doctor_censuses_total",
                                  "Censuses taken since the exporter started.",
                                  value=self.shared.runs)
        yield CounterMetricFamily("reaper_doctor_census_errors_total",
                                  "Censuses that failed (the scrape then has no census).",
                                  value=self.shared.errors)
        yield CounterMetricFamily("reaper_doctor_scrapes_total",
                                  "Scrapes of /metrics since the exporter started.",
                                  value=self.scrapes)


POINTER = b"reaper-doctor exporter: metrics at /metrics\n"


def make_app(collector: Collector) -> Callable[..., Iterable[bytes]]:
    """prometheus_client's WSGI app for /metrics; `/` gets a one-line pointer
    and any other path a 404."""
    metrics = make_wsgi_app(registry_of(collector))

    def app(environ: dict[str, Any], start_response: Callable[..., Any]) -> Iterable[bytes]:
        path = environ.get("PATH_INFO") or "/"
        if path == "/metrics":
            return metrics(environ, start_response)
        status = "200 OK" if path == "/" else "404 Not Found"
        start_response(status, [("Content-Type", "text/plain; charset=utf-8"),
                                ("Content-Length", str(len(POINTER)))])
        return [POINTER]

    return app


class _QuietHandler(WSGIRequestHandler):
    def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - stdlib's name
        pass


def parse_listen(text: str) -> tuple[str, int]:
    """HOST:PORT (an IPv6 host in brackets) -> (host, port). Raises ValueError."""
    host, sep, port_text = text.rpartition(":")
    if not sep or not host:
        raise ValueError(f"--listen {text!r}: expected HOST:PORT, e.g. {DEFAULT_LISTEN}")
    if host.startswith("[") and host.endswith("]"):
        host = host[1:-1]
    if not port_text.isdigit() or not 0 <= int(port_text) <= 65535:
        raise ValueError(f"--listen {text!r}: the port must be a number from 0 to 65535")
    return host, int(port_text)


def make_server(host: str, port: int, app: Callable[..., Iterable[bytes]]) -> ThreadingWSGIServer:
    """A threading WSGI server bound to (host, port). Raises OSError."""
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE)
    family = infos[0][0]

    class Server(ThreadingWSGIServer):
        address_family = family

    server = Server((host, port), _QuietHandler)
    server.set_app(app)
    return server


__all__ = ["CensusCollector", "SharedResult", "make_app", "make_server", "parse_listen"]


def _stop_serving(signum: int) -> BaseException:
    return SystemExit(0)   # SIGTERM is how a service manager stops the exporter


def serve(host: str, port: int, run_census: Callable[[], Report], *, min_interval_s: float,
          on_ready: Callable[[str, int], None] = lambda host, port: None,
          on_error: Callable[[BaseException], None] = lambda error: None) -> None:
    """Serve until SIGTERM or Ctrl-C, then close the listening socket and
    return. A census that fails is counted, told to `on_error`, and its
    scrape carries the exporter's own series only. Raises OSError if the
    address cannot be bound."""
    from ..system.lifecycle import one_malloc_arena, signals_unwind

    one_malloc_arena()   # each scrape's census runs on the thread of its request

    def census() -> Report:
        try:
            return run_census()
        except Exception as e:
            on_error(e)
            raise

    shared: SharedResult[Report] = SharedResult(census, min_interval_s)
    server = make_server(host, port, make_app(CensusCollector(shared)))
    try:
        with signals_unwind(error=_stop_serving):
            bound = server.server_address
            on_ready(str(bound[0]), int(bound[1]))
            server.serve_forever(poll_interval=0.5)
    except (KeyboardInterrupt, SystemExit):
        pass
    finally:
        server.server_close()


class CensusHistory:
    """Censuses one after another, each judged against the one before.

    A zombie, a CLOSE_WAIT socket or a queued listener persists when the
    previous census, at least `grace_s` earlier, saw it too: a scrape does
    not sleep for it (only the first census, or one that follows the last
    too closely, waits out the grace). The descriptor counts of the last
    censuses give RD203. Zombies, limits and network namespaces are kept
    from census to census (ProcessCache). PIDs that are gone are forgotten.
    """

    def __init__(self, *, grace_s: float) -> None:
        self.grace_s = grace_s
        self.state: CensusState | None = None
        self.cache = ProcessCache()

    def run(self) -> Report:
        started = time.perf_counter()
        report, self.state = census_after(self.state, grace_s=self.grace_s, cache=self.cache)
        return report._replace(duration_s=time.perf_counter() - started)
