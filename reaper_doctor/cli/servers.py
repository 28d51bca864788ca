"""Commands that start servers, load them and judge them: `scenario`,
`run -- COMMAND`, and the long-running `exporter`."""

from __future__ import annotations

import sys
from collections.abc import Callable
from typing import Any, NoReturn

import click

from .base import (PROG, BoundedInt, GraceType, SecondsType, die, error_line, load_options,
                   no_color_option, terminal_width, use_color)

from .progress import load_progress

@click.group()
def scenario() -> None:
    """Scenario servers that reproduce each leak on 127.0.0.1."""


@scenario.command("list")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document.")
def scenario_list(as_json: bool) -> None:
    """List the scenarios: what each reproduces and the findings it should get."""
    from ..render.scenario import render_list_json, render_list_text

    click.echo(render_list_json() if as_json else render_list_text(terminal_width()))


@scenario.command("run")
@click.argument("name")
@load_options
@click.option("--lifetime", "lifetime_s", type=SecondsType("--lifetime", 3600), default=None,
              help="Bound on the server's life in seconds  [default: long enough for the "
                   "load and the scan]")
@click.option("--fd-limit", type=BoundedInt(1, 1 << 20), default=None,
              help="Lower the server's soft RLIMIT_NOFILE (ulimit -n) to this, e.g. 64 to "
                   "make fd-leak reach [Errno 24].")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@no_color_option
def scenario_run(name: str, requests: int | None, concurrency: int, timeout_s: float,
                 grace_s: float,
                 lifetime_s: float | None, fd_limit: int | None, as_json: bool,
                 no_color: bool) -> int:
    """Start scenario NAME on 127.0.0.1, load it, sample it, scan it, kill and
    reap everything it started, and say whether it behaved as expected.

    Exit 0: the expected findings and no other warning, nothing left over;
    1: otherwise; 2: bad input (unknown scenario).
    """
    from ..commands import scenario as runner
    from ..commands.run import ServerStartError
    from ..model.scenario import RunSettings

    if requests is None:
        requests = runner.default_requests(fd_limit, concurrency)
    settings = RunSettings(requests=requests, concurrency=concurrency,
                                  timeout_s=timeout_s, grace_s=grace_s,
                                  lifetime_s=lifetime_s, fd_limit=fd_limit)
    try:
        runner.resolve(name)
        runner.check_settings(settings)
    except KeyError as e:
        die(e.args[0])
    except ValueError as e:
        die(str(e))

    def failed(e: ServerStartError) -> NoReturn:
        # A built-in script that does not start: our failure, not the input.
        _start_failed(e, 1)

    return _run_and_report(f"{name}: requests", settings, as_json, no_color, failed,
                           lambda progress: runner.run_scenario(name, settings,
                                                                on_result=progress))


def _run_and_report(label: str, settings: Any, as_json: bool, no_color: bool,
                    failed: Callable[[Any], NoReturn],
                    start: Callable[[Callable[[Any], object]], Any]) -> int:
    """Run a server (`start`, given the per-request progress callback) with a
    progress bar on a terminal, SIGTERM unwinding like Ctrl-C; print its
    report; return its exit code. `failed` gets a ServerStartError."""
    from ..commands.run import ServerStartError
    from ..render.scenario import render_run_json, render_run_text
    from ..system.lifecycle import signals_unwind

    progress, on_result = load_progress(label, settings, not as_json and sys.stderr.isatty())
    with signals_unwind(), progress:
        try:
            result = start(on_result)
        except ServerStartError as e:
            failed(e)
    if as_json:
        click.echo(render_run_json(result), nl=False)
    else:
        click.echo(render_run_text(result, color=use_color(no_color), width=terminal_width()),
                   nl=False)
    return int(result.exit_code)


@scenario.command("compare")
@load_options
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@no_color_option
def scenario_compare(requests: int | None, concurrency: int, timeout_s: float, grace_s: float,
                     as_json: bool, no_color: bool) -> int:
    """Run every scenario under the same load, one after the other, and
    compare them in one table: ok / failed / hung requests, median latency,
    requests per second, peak zombies and descriptors, findings.

    Exit 0 when every scenario behaved as expected and nothing was left over.
    """
    from ..commands import scenario as runner
    from ..commands.run import ServerStartError
    from ..model.scenario import RunSettings
    from ..render.scenario import render_compare_json, render_compare_text
    from ..system.lifecycle import signals_unwind

    if requests is None:
        requests = runner.default_requests(None, concurrency)
    settings = RunSettings(requests=requests, concurrency=concurrency,
                                  timeout_s=timeout_s, grace_s=grace_s)
    show = not as_json and sys.stderr.isatty()
    runs = []
    names, skipped = runner.runnable_scenarios()
    if skipped:
        click.echo(f"{PROG}: {skipped}", err=True)
    with signals_unwind():
        for name in names:
            progress, on_result = load_progress(f"{name:>12}", settings, show)
            with progress:
                try:
                    runs.append(runner.run_scenario(name, settings, on_result=on_result))
                except ServerStartError as e:
                    die(str(e), 1)
    if as_json:
        click.echo(render_compare_json(runs), nl=False)
    else:
        click.echo(render_compare_text(runs, color=use_color(no_color), width=terminal_width()),
                   nl=False)
    return 0 if all(r.as_expected for r in runs) else 1


@click.command("run", context_settings={"allow_interspersed_args": False})
@click.argument("command", nargs=-1, required=True, type=click.UNPROCESSED)
@load_options
@click.option("--port", type=BoundedInt(1, 65535), default=None,
              help="The listening port to load when the server listens on several.")
@click.option("--request", "request_text", default=None, metavar="TEXT",
              help=r"Send these bytes instead of an HTTP GET (escapes: \r \n \t \0 \\ "
                   r"\xHH), then shut the sending side; any reply that ends counts as ok.")
@click.option("--request-file", type=click.Path(dir_okay=False), default=None,
              help="Send the bytes of this file instead of an HTTP GET (as --request).")
@click.option("--startup-timeout", "startup_timeout_s",
              type=SecondsType("--startup-timeout", 600), default=20.0, show_default=True,
              help="Seconds the server may take to listen on a TCP port.")
@click.option("--expect", "expect", multiple=True, metavar="CODE",
              help="A finding code the server should show (repeat, or RD101,RD201): exit 0 "
                   "only if these are found and no other warning or worse.")
@click.option("--fd-limit", type=BoundedInt(1, 1 << 20), default=None,
              help="Lower the server's soft RLIMIT_NOFILE (ulimit -n) to this.")
@click.option("--json", "as_json", is_flag=True, help="One JSON document on stdout.")
@no_color_option
def run_command(command: tuple[str, ...], requests: int | None, concurrency: int, timeout_s: float,
                grace_s: float, port: int | None, request_text: str | None,
                request_file: str | None, startup_timeout_s: float, expect: tuple[str, ...],
                fd_limit: int | None, as_json: bool, no_color: bool) -> int:
    """Start COMMAND (your server) in its own session, find the TCP port it
    listens on, load it on 127.0.0.1 or ::1, sample it, scan it, then kill
    and reap everything it started, like `scenario run` does for the
    built-in servers. Put `--` before the command:

        reaper-doctor run -n 100 -- python3 webserver3c.py

    Exit 0: no finding of severity warning or worse (with --expect: the
    expected codes and no other) and nothing left over; 1: otherwise; 2:
    bad input, the command was not found, it exited before listening, or
    nothing listened within --startup-timeout.
    """
    from ..commands.run import ServerStartError, check_settings, default_requests, run_server
    from ..model.scenario import RunSettings, ServerSpec

    if requests is None:
        requests = default_requests(fd_limit, concurrency)
    settings = RunSettings(requests=requests, concurrency=concurrency,
                           timeout_s=timeout_s, grace_s=grace_s, fd_limit=fd_limit)
    try:
        check_settings(settings)
    except ValueError as e:
        die(str(e))
    spec = ServerSpec(argv=command, expected=_expected_codes(expect), port=port,
                      request=_request_bytes(request_text, request_file),
                      startup_timeout_s=startup_timeout_s)

    def failed(e: ServerStartError) -> NoReturn:
        _start_failed(e, 2)

    return _run_and_report("requests", settings, as_json, no_color, failed,
                           lambda progress: run_server(spec, settings, on_result=progress))


def _expected_codes(expect: tuple[str, ...]) -> tuple[str, ...]:
    """The codes of `--expect` (repeated or comma-separated), validated."""
    from ..catalog import CODES, lookup

    codes: list[str] = []
    for item in expect:
        for word in filter(None, (w.strip() for w in item.split(","))):
            found = lookup(word)
            if found is None:
                die(f"--expect: unknown finding code {word!r} (known: {', '.join(CODES)})")
            codes.append(found.code)
    return tuple(sorted(set(codes)))


def _request_bytes(text: str | None, path: str | None) -> bytes | None:
    """The raw request of `--request` or `--request-file`; None: the HTTP GET."""
    from ..parse.request import parse_request_text

    if text is not None and path is not None:
        die("--request and --request-file exclude each other")
    if text is not None:
        try:
            return parse_request_text(text)
        except ValueError as e:
            die(str(e))
    if path is not None:
        try:
            with open(path, "rb") as f:
                data = f.read(1 << 20)
        except OSError as e:
            die(f"--request-file {path}: {e.strerror or e}")
        if not data:
            die(f"--request-file {path} is empty")
        return data
    return None


@click.command()
@click.option("--listen", default="127.0.0.1:9563", show_default=True, metavar="HOST:PORT",
              help="Address to serve /metrics on ([::1]:9563 for IPv6; port 0: any free "
                   "port). Only this machine by default.")
@click.option("--min-interval", "min_interval_s",
              type=SecondsType("--min-interval", 3600, minimum=0), default=5.0,
              show_default=True,
              help="Seconds a census is served before a scrape takes a new one; scrapes "
                   "during a census share it.")
@click.option("--grace", "grace_s", type=GraceType(), default=1.0, show_default=True,
              help="A zombie, CLOSE_WAIT socket or queued connection counts when it was "
                   "there in two censuses at least this far apart.")
def exporter(listen: str, min_interval_s: float, grace_s: float) -> None:
    """Serve the whole-machine census to Prometheus at /metrics.

    The same census as `scan` with no PID (zombies by parent, descriptor
    leaks, limits), as Prometheus series with pid and comm labels, plus the
    exporter's own (census duration, errors, scrapes). It keeps a short
    history of each process between censuses, so persistence and RD203
    (steady descriptor growth) work across scrapes. Runs until SIGTERM or
    Ctrl-C.
    """
    from ..commands.exporter import CensusHistory, parse_listen, serve

    try:
        host, port = parse_listen(listen)
    except ValueError as e:
        die(str(e))

    def ready(bound_host: str, bound_port: int) -> None:
        shown = f"[{bound_host}]" if ":" in bound_host else bound_host
        click.echo(f"{PROG}: serving http://{shown}:{bound_port}/metrics "
                   f"(a census at most {min_interval_s:g} s old)", err=True)

    history = CensusHistory(grace_s=grace_s)
    try:
        serve(host, port, history.run, min_interval_s=min_interval_s, on_ready=ready,
              on_error=lambda e: click.echo(error_line(f"census failed: {e!r}"), err=True))
    except OSError as e:
        die(f"cannot listen on {listen}: {e.strerror or e}")
    click.echo(f"{PROG}: exporter stopped", err=True)


def _start_failed(e: Any, code: int) -> NoReturn:
    """A server that did not start (a ServerStartError): one line; when the
    server printed something, its last line ends it and the lines before
    that follow, indented."""
    click.echo(error_line(str(e) + (f"; its output ends: {e.tail[-1]}" if e.tail else "")),
               err=True)
    for line in e.tail[-10:-1]:
        click.echo(f"  {line}", err=True)
    sys.exit(code)
