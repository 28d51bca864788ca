"""`reaper-doctor lesson coalescing`: N children exit at once under each
reaping strategy; count handler runs, children reaped, zombies left.

Each trial runs in a fresh Python process (`_coalescing_trial`), never in
the caller: its SIGCHLD handler and its forks must not perturb the CLI or a
pytest process. `run_trial` drives one trial through a small handshake
(`ready <pid>` / `go`) so that a kernel tracer can attach to the trial
process before its children are released (the later `--trace`).

With `trace=True` (`lesson coalescing --trace`, root and tracefs) each
trial process is traced from "ready" until it has settled, and the kernel's
own counts of SIGCHLD (generated / merged / delivered, trace.SigchldTracer)
stand beside the handler runs: the two levels of merging, in the kernel and
in CPython.

Measured basis: notes/linux-facts.md section 3 (exp3_coalescing.py).
"""

from __future__ import annotations

import json
import os
import select
import signal
import subprocess
import sys
import tempfile
import textwrap
import time
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

SCHEMA = "reaper-doctor/lesson-coalescing/1"
STRATEGIES = ("wait-once", "waitpid-loop", "sig-ign", "pidfd")
MIN_CHILDREN, MAX_CHILDREN = 1, 2048
MAX_TRIALS = 20

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

TrialHook = Callable[[int], None]


class LessonError(Exception):
    """A trial could not be run or did not answer as expected."""


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
        return cls(**{k: doc.get(k) for k in known},
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


# --- running trials -------------------------------------------------------


def _trial_command(strategy: str, children: int) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of a trial process.

    PYTHONPATH starts with the directory holding this package, so the trial
    imports the same reaper_doctor as the caller, from any working directory.
    """
    root = str(Path(__file__).resolve().parent.parent)
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (root, env.get("PYTHONPATH")) if p)
    argv = [sys.executable, "-m", "reaper_doctor._coalescing_trial", strategy,
            "--children", str(children)]
    return argv, env


def _read_line(fd: int, buf: bytearray, deadline: float) -> str | None:
    """The next line from `fd` (without its newline); None at EOF."""
    while b"\n" not in buf:
        left = deadline - time.monotonic()
        if left <= 0:
            raise TimeoutError
        ready, _, _ = select.select([fd], [], [], left)
        if ready:
            chunk = os.read(fd, 65536)
            if not chunk:
                return None
            buf += chunk
    line, _, rest = bytes(buf).partition(b"\n")
    buf[:] = rest
    return line.decode()


def session_processes(sid: int) -> list[int]:
    """PIDs of live or zombie processes in session `sid`."""
    from .collect import session_members

    return [st.pid for st in session_members(sid)]


def _stop_trial(proc: subprocess.Popen[bytes], grace_s: float = 5.0) -> None:
    """End a trial early: EOF on its stdin makes it release and reap its
    children and exit; if it does not within `grace_s`, kill it."""
    try:
        if proc.stdin is not None and not proc.stdin.closed:
            proc.stdin.close()
    except OSError:
        pass  # it is gone already (EPIPE)
    try:
        proc.wait(timeout=grace_s)
    except subprocess.TimeoutExpired:
        _kill_trial(proc)


def _kill_trial(proc: subprocess.Popen[bytes]) -> None:
    """SIGKILL the trial's whole process group (its children share it) and reap it."""
    try:
        os.killpg(proc.pid, signal.SIGKILL)
    except ProcessLookupError:
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass


def run_trial(strategy: str, children: int, *,
              before_release: TrialHook | None = None,
              after_release: TrialHook | None = None,
              timeout_s: float | None = None) -> Trial:
    """Run one trial of `strategy` with `children` children in a fresh process.

    `before_release(trial_pid)` runs after the trial process has forked its
    children and installed its strategy ("ready"), and before it is told to
    release them ("go"): attach a tracer to `trial_pid` there.
    `after_release(trial_pid)` runs right after "go" is sent, while the trial
    is still running. Neither runs when the strategy is skipped.

    Every process the trial made is gone when this returns or raises; any
    found left over (in the trial's session) is killed and counted in
    `Trial.leftover_processes`. Raises LessonError when the trial fails or
    takes longer than `timeout_s` (default: 30 s + 20 ms per child).
    """
    if strategy not in STRATEGIES:
        raise LessonError(f"unknown strategy {strategy!r}")
    if timeout_s is None:
        timeout_s = 30.0 + 0.02 * children
    argv, env = _trial_command(strategy, children)
    with tempfile.TemporaryFile() as errf:
        # A new session: the trial and its children are one process group we
        # can kill, and a session id we can find them by.
        proc = subprocess.Popen(argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                stderr=errf, env=env, start_new_session=True)
        try:
            doc = _drive(proc, before_release, after_release, timeout_s)
        except BaseException:
            _stop_trial(proc)
            raise
        finally:
            for stream in (proc.stdin, proc.stdout):
                if stream is not None and not stream.closed:
                    stream.close()
        try:
            rc = proc.wait(timeout=timeout_s)
        except subprocess.TimeoutExpired:
            _kill_trial(proc)
            raise LessonError(f"{strategy} trial (PID {proc.pid}) did not exit") from None
        errf.seek(0)
        stderr = errf.read().decode(errors="replace").strip()
    leftover = session_processes(proc.pid)
    if leftover:
        _kill_trial(proc)
    if "error" in doc:
        raise LessonError(f"{strategy} trial: {doc['error']}")
    if rc != 0:
        last = stderr.splitlines()[-1] if stderr else "no message"
        raise LessonError(f"{strategy} trial (PID {proc.pid}) exited with status {rc}: {last}")
    return Trial.from_json(doc, leftover_processes=len(leftover))


def _drive(proc: subprocess.Popen[bytes], before_release: TrialHook | None,
           after_release: TrialHook | None, timeout_s: float) -> dict[str, Any]:
    """The handshake: read `ready <pid>`, run the hook, send `go`, read the result."""
    assert proc.stdin is not None and proc.stdout is not None
    fd = proc.stdout.fileno()
    buf = bytearray()
    deadline = time.monotonic() + timeout_s
    try:
        line = _read_line(fd, buf, deadline)
        if line is not None and line.startswith("ready "):
            if before_release is not None:
                before_release(proc.pid)
            proc.stdin.write(b"go\n")
            proc.stdin.flush()
            if after_release is not None:
                after_release(proc.pid)
            line = _read_line(fd, buf, time.monotonic() + timeout_s)
    except TimeoutError:
        raise LessonError(f"trial (PID {proc.pid}) gave no answer within {timeout_s:.0f} s") \
            from None
    if line is None:
        raise LessonError(f"trial (PID {proc.pid}) ended without a result")
    try:
        doc = json.loads(line)
    except ValueError:
        raise LessonError(f"trial (PID {proc.pid}) said {line[:80]!r}") from None
    if not isinstance(doc, dict):
        raise LessonError(f"trial (PID {proc.pid}) said {line[:80]!r}")
    return doc


def run_traced_trial(strategy: str, children: int, *,
                     tracefs: str | os.PathLike[str] | None = None,
                     timeout_s: float | None = None) -> Trial:
    """run_trial, with the trial process's SIGCHLD traced from "ready" until
    it has settled and reported (`Trial.kernel`). The instance is removed
    on every path. Raises tracefs.TracefsError (root, tracefs) or LessonError."""
    from .trace import SigchldTracer

    def attach(pid: int) -> None:
        if not tracer.attach(pid):
            raise LessonError(f"{strategy} trial (PID {pid}) vanished before the trace began")

    with SigchldTracer(tracefs) as tracer:
        trial = run_trial(strategy, children, before_release=attach, timeout_s=timeout_s)
        # The trial has printed its counts, reaped its children and exited:
        # every SIGCHLD of the burst is in the buffer by now.
        counts = tracer.counts().get(trial.pid)
    if counts is None:
        return trial  # skipped: nothing was released, nothing traced
    return replace(trial, kernel={k: getattr(counts, k) for k in KERNEL_KEYS})


def run_lesson(children: int = 64, trials: int = 3,
               strategies: Iterable[str] = STRATEGIES,
               progress: Callable[[str, int], None] | None = None, *,
               trace: bool = False,
               tracefs: str | os.PathLike[str] | None = None) -> LessonReport:
    """Run `trials` trials of each strategy (in STRATEGIES order) with `children`.

    A strategy the trial process reports as unsupported is skipped after its
    first trial. `progress(strategy, trial_number)` is called before each trial.
    `trace`: trace each trial (run_traced_trial); raises tracefs.TracefsError.
    """
    if not MIN_CHILDREN <= children <= MAX_CHILDREN:
        raise LessonError(f"children must be in {MIN_CHILDREN}..{MAX_CHILDREN}")
    if not 1 <= trials <= MAX_TRIALS:
        raise LessonError(f"trials must be in 1..{MAX_TRIALS}")
    wanted = set(strategies)
    results = []
    for name in (s for s in STRATEGIES if s in wanted):
        done: list[Trial] = []
        skipped = None
        for i in range(trials):
            if progress is not None:
                progress(name, i + 1)
            if trace:
                trial = run_traced_trial(name, children, tracefs=tracefs)
            else:
                trial = run_trial(name, children)
            if trial.skipped:
                skipped = trial.skipped
                break
            done.append(trial)
        results.append(StrategyResult(name, children, tuple(done), skipped))
    platform = {"kernel": os.uname().release, "python": sys.version.split()[0]}
    return LessonReport(children, trials, tuple(results), platform, traced=trace)


# --- rendering: LessonReport -> str ---------------------------------------


def render_json(report: LessonReport) -> str:
    return json.dumps(report.to_json(), indent=2)


def _fmt(s: StrategyResult, key: str) -> str:
    """The median, with (min-max) when the trials disagree; '-' when there is none."""
    med = s.median(key)
    if med is None:
        return "-"
    text = str(med)
    span = s.span(key)
    if span is not None and span[0] != span[1]:
        text += f" ({span[0]:g}-{span[1]:g})"
    return text


def render_text(report: LessonReport, *, color: bool = False, width: int = 80) -> str:
    """The table, then the explanation with this run's numbers, `width` columns wide."""
    from .render.width import fill, fit_table, widest_line

    def paint(text: str, fg: str) -> str:
        if not color:
            return text
        import click

        return click.style(text, fg=fg)

    rows = []
    kernel_cols = ("generated", "merged", "delivered", "cpython_merged")
    for s in report.strategies:
        if s.skipped:
            rows.append([s.name, s.children, "-", "-", f"skipped: {s.skipped}"]
                        + ["-"] * (len(kernel_cols) if report.traced else 0))
            continue
        left = _fmt(s, "zombies_left")
        row = [s.name, s.children, _fmt(s, "handler_runs"), _fmt(s, "reaped"),
               paint(left, "red" if s.median("zombies_left") else "green")]
        if report.traced:
            row += [_fmt(s, key) for key in kernel_cols]
        rows.append(row)
    headers = ["strategy", "children", "handler runs", "reaped by handler", "zombies left"]
    if report.traced:
        headers = [h.replace(" ", "\n", 1) if h.startswith(("handler", "reaped", "zombies"))
                   else h for h in headers]
        headers += ["SIGCHLD\ngenerated", "merged\nin kernel", "delivered\nby kernel",
                    "merged in\nCPython"]
    table = fit_table(rows, headers, width)
    if report.traced and widest_line(table) > width:
        # Too wide for one table: the kernel's counts get a table of their own.
        table = (fit_table([r[:5] for r in rows], headers[:5], width) + "\n\n"
                 + fit_table([r[:2] + r[5:] for r in rows], headers[:2] + headers[5:], width))
    how = (f"the median of {report.trials} trials, (min-max) where they differ"
           if report.trials > 1 else "one trial")
    head = (f"SIGCHLD coalescing: {report.children} children exit at the same instant "
            f"under each strategy ({how}); zombies are counted before clean-up.")
    if report.traced:
        head += (" The SIGCHLD columns are the kernel's own counts, from its signal "
                 "tracepoints.")
    paragraphs = _explanation(report)
    if report.leftover_processes:
        paragraphs.append(paint(f"warning: {report.leftover_processes} process(es) of the "
                                "trials were left over and have been killed", "yellow"))
    out = [fill(head, width), "", table]
    for para in paragraphs:
        out += ["", fill(para, width)]
    return "\n".join(out)


def _times(count: float | None) -> str:
    return "1 time" if count == 1 else f"{count} times"


def _kernel_explanation(report: LessonReport) -> list[str]:
    """With --trace: the two levels of merging, in this run's numbers."""
    once = report.strategy("wait-once")
    t = once.median_trial() if report.traced and once is not None else None
    if t is None or t.kernel is None or t.handler_runs is None:
        return []
    k, runs, n = t.kernel, t.handler_runs, report.children
    cpy = t.cpython_merged
    text = (f"The kernel's tracepoints show where they went: for wait-once it generated "
            f"{k['generated']} SIGCHLDs, {k['merged']} arrived while one was already "
            f"pending and merged into it (result 2), and {k['delivered']} "
            f"{'was' if k['delivered'] == 1 else 'were'} delivered. ")
    if cpy:
        text += (f"CPython merged again: {k['delivered']} deliveries became {runs} "
                 f"run{'s' if runs != 1 else ''} of the Python handler, {cpy} lost in "
                 "its flag. ")
    else:
        text += (f"CPython ran the Python handler once per delivery this time ({_times(runs)}), "
                 "so every signal lost was lost in the kernel. ")
    if k["generated"] == n and cpy is not None and t.zombies_left == k["merged"] + cpy:
        text += (f"Each signal merged is a wait() never made: {k['merged']} + {cpy} = "
                 f"{t.zombies_left} zombies.")
    others = []
    ign = report.strategy("sig-ign")
    ign_t = ign.median_trial() if ign is not None else None
    if ign_t is not None and ign_t.kernel is not None and ign_t.kernel["generated"] == 0:
        others.append("under sig-ign the kernel sent no SIGCHLD at all: it reaps each "
                      "child at exit instead")
    pidfd = report.strategy("pidfd")
    pidfd_t = pidfd.median_trial() if pidfd is not None else None
    if pidfd_t is not None and pidfd_t.kernel is not None and pidfd_t.kernel["generated"]:
        others.append(f"under pidfd its {pidfd_t.kernel['generated']} SIGCHLDs were "
                      f"generated and {pidfd_t.kernel['ignored']} discarded (default "
                      "disposition), and the pidfds did the work")
    if others:
        joined = "; ".join(others)
        text += " " + joined[0].upper() + joined[1:] + "."
    if k.get("lost_events"):
        text += (f" (The ring buffer dropped {k['lost_events']} events: the kernel counts "
                 "are low.)")
    return [text.strip()]


def _explanation(report: LessonReport) -> list[str]:
    """Paragraphs explaining the table, quoting this run's medians."""
    n = report.children
    paras = []
    once = report.strategy("wait-once")
    if once is not None and once.trials:
        runs, left = once.median("handler_runs"), once.median("zombies_left")
        if left:
            paras.append(
                f"wait-once: {n} children exited, so the kernel generated {n} SIGCHLDs, "
                f"but the Python handler ran only {_times(runs)} and reaped "
                f"{once.median('reaped')}; {left} children stayed zombies.")
        else:
            paras.append(
                f"wait-once: this time the handler ran {_times(runs)} for {n} "
                f"exit{'s' if n != 1 else ''} and "
                "kept up; with more --children the exits crowd together and it does not.")
    paras += [
        "Signals merge at two levels. The kernel keeps one pending bit per standard "
        "signal, so a SIGCHLD that arrives while another is still pending merges into "
        "it. Then CPython's C-level handler only sets a flag; the Python handler runs "
        "later, once, in the main thread between bytecodes, however many signals came "
        "in meanwhile. A handler that calls wait() once per run reaps one child per "
        "run, not one per exit, and the rest stay zombies until the next SIGCHLD.",
        *_kernel_explanation(report),
        "The fix: loop os.waitpid(-1, os.WNOHANG) until it returns 0 (or raises "
        "ChildProcessError). When exit statuses are not needed, SIG_IGN lets the "
        "kernel reap; pidfd gives one event per child.",
    ]
    facts = []
    for s in report.strategies:
        if s.name == "wait-once" or not s.trials:
            continue
        left = s.median("zombies_left")
        if s.name == "waitpid-loop":
            facts.append(f"waitpid-loop ran {_times(s.median('handler_runs'))} and reaped "
                         f"{s.median('reaped')}, {left} left")
        elif s.name == "sig-ign":
            facts.append(f"under sig-ign the kernel reaped them, {left} left")
        elif s.name == "pidfd":
            facts.append(f"pidfd saw {s.median('handler_runs')} events and reaped "
                         f"{s.median('reaped')}, {left} left")
    if facts:
        paras[-1] += " In this run " + "; ".join(facts) + "."
    paras.append("More: reaper-doctor explain RD102")
    return paras
