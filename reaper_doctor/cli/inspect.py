"""Commands that look at live processes and only read: `scan`, `watch`, `trace`."""

from __future__ import annotations

import os
import sys
from typing import Any

import click

from .base import (PROG, GraceType, PidType, SecondsType, SignalType, die, echo_notes,
                   no_color_option, terminal_width, use_color)

FORMATS = ("text", "json", "prometheus")


@click.command()
@click.argument("pids", nargs=-1, type=PidType())
@click.option("--grace", "grace_s", type=GraceType(), default=1.0, show_default=True,
              help="Seconds between the two samples; a zombie counts only if the same PID "
                   "is a zombie in both. 0: one sample, no persistence check.")
@click.option("--format", "fmt", type=click.Choice(FORMATS), default=None,
              help="Output format (default: text).")
@click.option("--json", "as_json", is_flag=True, help="Same as --format json.")
@click.option("--textfile", type=click.Path(dir_okay=False), default=None,
              help="Also write the Prometheus text to this file, atomically (for "
                   "node_exporter's textfile collector). Alone, nothing goes to stdout.")
@click.option("--list-fds", is_flag=True,
              help="List every descriptor (fd, link) of each process: a line each in text, "
                   "a `list` per process in JSON.")
@click.option("--trace", "trace_s", type=SecondsType("--trace", 3600), default=None, metavar="S",
              help="(root, tracefs) Trace SIGCHLD for S seconds between the samples (the "
                   "grace becomes at least S): each parent with zombies that catches SIGCHLD "
                   "gets the kernel's counts (generated, merged, delivered) in its RD102.")
@no_color_option
def scan(pids: tuple[int, ...], grace_s: float, fmt: str | None, as_json: bool,
         textfile: str | None, list_fds: bool, trace_s: float | None, no_color: bool) -> int:
    """Snapshot and diagnose PIDS and their descendants; with no PID, the
    whole machine.

    Shows the process tree, zombies grouped by parent with their exit
    status, each parent's SIGCHLD disposition, open descriptors by kind, and
    usage against ulimit -n, ulimit -u and the pids cgroup; then the
    findings. With no PID: every parent holding zombies, orphaned zombies,
    the processes nearest ulimit -n, tasks per UID against ulimit -u, the
    pids cgroups nearest pids.max, and the machine's PID and file tables.
    Exit 0: no finding of severity warning or worse; 1: at least one; 2:
    bad input.
    """
    import time

    from ..commands.scan import ProcessGone
    from ..commands.scan import scan as run_scan

    if as_json:
        if fmt not in (None, "json"):
            die(f"--json and --format {fmt} ask for two formats; give one")
        fmt = "json"
    if fmt is None:
        fmt = None if textfile else "text"
    if textfile is not None:
        problem = _textfile_problem(textfile)
        if problem:
            die(problem)
    if trace_s is not None and not pids:
        die("--trace needs at least one PID (the whole-machine census is not traced)")
    if list_fds and not pids:
        die("--list-fds needs at least one PID (the whole-machine census counts "
            "descriptors, it does not list them)")
    if list_fds and fmt in (None, "prometheus"):
        die("--list-fds lists descriptors in text or JSON, not in the Prometheus output")
    notes: list[str] = []
    if pids:
        from ..collect.targets import scan_targets

        resolved = scan_targets(pids)
        pids, notes = tuple(resolved.pids), resolved.notes
        echo_notes(notes)
    started = time.perf_counter()
    if trace_s is not None:
        report = _traced_scan(list(pids), grace_s, list_fds, trace_s)
    else:
        try:
            if pids:
                report = run_scan(list(pids), grace_s=grace_s,
                                  with_fd_list=list_fds)
            else:
                from ..commands.census import census

                report = census(grace_s=grace_s)
        except ProcessGone as gone:
            die(str(gone))
    report = report._replace(duration_s=time.perf_counter() - started, notes=tuple(notes))
    if textfile is not None or fmt == "prometheus":
        from ..render.prometheus import ReportCollector, registry_of, render_prometheus

        if textfile is not None:
            from prometheus_client import write_to_textfile

            try:
                # A temporary file beside it, then rename(2): node_exporter's
                # textfile collector never reads a half-written file.
                write_to_textfile(textfile, registry_of(ReportCollector(report)))
            except OSError as e:
                die(f"cannot write --textfile {textfile}: {e.strerror or e}")
        if fmt == "prometheus":
            click.echo(render_prometheus(report), nl=False)
    if fmt == "json":
        from ..render.json import render_json

        click.echo(render_json(report), nl=False)
    elif fmt == "text":
        from ..render.text import render_text

        click.echo(render_text(report, color=use_color(no_color), width=terminal_width()),
                   nl=False)
    return report.exit_code


def _traced_scan(pids: list[int], grace_s: float, list_fds: bool, trace_s: float) -> Any:
    """`scan --trace S`: tracefs is imported only here; its errors are one line, exit 2."""
    from ..commands.scan import ProcessGone
    from ..commands.scan import scan as run_scan
    from ..system.tracefs import TracefsError, preflight
    from ..system.tracers import SigchldTracer


    def attached(pid: int, instance: str) -> None:
        click.echo(f"{PROG}: tracing SIGCHLD of PID {pid} for {trace_s:g} s in {instance}",
                   err=True)

    try:
        preflight()
        with SigchldTracer(on_attach=attached) as tracer:
            report = run_scan(pids, grace_s=grace_s, with_fd_list=list_fds, tracer=tracer,
                              trace_s=trace_s)
        if not tracer.attached:
            click.echo(f"{PROG}: --trace: no parent of a zombie catches SIGCHLD at the first "
                       "sample; nothing was traced", err=True)
    except ProcessGone as gone:
        die(str(gone))
    except TracefsError as e:
        die(str(e))
    return report


def _textfile_problem(path: str) -> str | None:
    """Why `path` cannot take the textfile, checked before the scan; None if it looks fine."""
    if not path.strip():
        return "--textfile needs a file name"
    directory = os.path.dirname(os.path.abspath(path))
    if os.path.isdir(path):
        return f"--textfile {path} is a directory, not a file"
    if not os.path.isdir(directory):
        return f"--textfile {path}: no such directory {directory}"
    if not os.access(directory, os.W_OK | os.X_OK):
        return f"--textfile {path}: permission denied (cannot create files in {directory})"
    return None


@click.command()
@click.argument("pid", type=PidType())
@click.option("--interval", "interval_s", type=SecondsType("--interval", 86400, minimum=0.05), default=1.0,
              show_default=True, help="Seconds between samples.")
@click.option("--duration", "duration_s", type=SecondsType("--duration", 86400), default=None,
              help="Seconds to watch. Default: until Ctrl-C.")
@click.option("--json", "as_json", is_flag=True,
              help="One JSON document at the end (reaper-doctor/watch/1), no sample lines.")
@click.option("--csv", "csv_path", type=click.Path(dir_okay=False, writable=True),
              help="Also write every sample to this CSV file as it is taken.")
@no_color_option
def watch(pid: int, interval_s: float, duration_s: float | None, as_json: bool,
          csv_path: str | None, no_color: bool) -> int:
    """Sample PID over time: zombies in its tree, its open descriptors,
    CLOSE_WAIT sockets on its listening ports, tasks of its user, its pids
    cgroup. Ends (Ctrl-C, --duration, or the process exiting) with the
    growth rate of each series, the time left until each limit, a
    sparkline, and RD203 when descriptors grow steadily. Only reads: the
    process is never signalled. Exit 0, or 1 with a finding of severity
    warning or worse; 2: bad input.
    """
    import csv

    from ..collect.proc import ProcessGone
    from ..collect.targets import live_target
    from ..commands.watch import watch as run_watch
    from ..render import watch as render

    pid, notes = live_target(pid, "watching")
    echo_notes(notes)

    csv_file = None
    if csv_path:
        try:
            csv_file = open(csv_path, "w", newline="", encoding="utf-8")
        except OSError as e:
            die(f"cannot write {csv_path}: {e.strerror or e}")
    writer = csv.writer(csv_file) if csv_file else None
    if writer:
        writer.writerow(render.CSV_COLUMNS)
    color = use_color(no_color)
    width = terminal_width()

    def on_start(name: str, limits: Any) -> None:
        if not as_json:
            click.echo(render.header_line(pid, name, interval_s, duration_s, width))
            click.echo(render.sample_header())

    def on_sample(sample: Any) -> None:
        if writer and csv_file:
            writer.writerow(render.csv_row(sample))
            csv_file.flush()
        if not as_json:
            click.echo(render.sample_line(sample))

    try:
        report = run_watch(pid, interval_s=interval_s, duration_s=duration_s,
                           on_start=on_start, on_sample=on_sample)
    except ProcessGone as gone:
        die(str(gone))
    finally:
        if csv_file:
            csv_file.close()
    if as_json:
        click.echo(render.render_watch_json(report), nl=False)
    else:
        click.echo(render.summary_text(report, color=color, width=width), nl=False)
    return report.exit_code


@click.command()
@click.argument("pid", type=PidType())
@click.option("--duration", type=SecondsType("--duration", 86400), default=None, metavar="S",
              help="Stop after S seconds (default: at Ctrl-C or when PID exits).")
@click.option("--interval", type=SecondsType("--interval", 3600), default=1.0,
              show_default=True, metavar="S",
              help="Seconds between the per-interval lines.")
@click.option("--signal", "signum", type=SignalType(), default="CHLD", show_default=True,
              help="The signal to count: a name (CHLD, SIGCHLD) or a number.")
@click.option("--grace", type=GraceType(), default=1.0, show_default=True, metavar="S",
              help="A zombie counts as left only after S seconds as a zombie.")
@click.option("--json", "as_json", is_flag=True, help="Print one JSON document at the end.")
@no_color_option
def trace(pid: int, duration: float | None, interval: float, signum: int, grace: float,
          as_json: bool, no_color: bool) -> None:
    """(root) Count SIGCHLD generated / merged / delivered for PID, from the
    kernel's signal tracepoints, in a private tracing instance."""
    from ..collect.targets import live_target
    from ..commands import trace as tracing
    from ..diagnose.trace import trace_findings
    from ..model.report import exit_code
    from ..model.signals import signal_name
    from ..render import trace as trace_render
    from ..system.tracefs import TracefsError

    pid, notes = live_target(pid, "tracing")
    echo_notes(notes)

    def started(tr: Any) -> None:
        until = f"for {duration:g} s" if duration is not None else "until Ctrl-C"
        click.echo(f"{PROG}: tracing {signal_name(signum)} of PID {pid} in {tr.instance} "
                   f"{until}", err=True)
        if not as_json:
            click.echo(trace_render.SAMPLE_HEADER)

    def sampled(s: Any) -> None:
        if not as_json:
            click.echo(trace_render.render_sample(s))

    def target_exited(t_s: float) -> None:
        click.echo(f"{PROG}: PID {pid} exited after {t_s:.1f} s; trace ended", err=True)

    try:
        result = tracing.run_trace(pid, signum, duration_s=duration, interval_s=interval,
                                   grace_s=grace, on_start=started, on_sample=sampled,
                                   on_target_exit=target_exited)
    except TracefsError as e:
        die(str(e))
    click.echo(trace_render.render_json(result) if as_json
               else trace_render.render_text(result, color=use_color(no_color),
                                             width=terminal_width()))
    sys.exit(exit_code(trace_findings(result)))

