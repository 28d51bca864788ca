"""`lesson coalescing` output: JSON and text."""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from ..model.lesson import LessonReport, StrategyResult

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
    from .width import fill, fit_table, widest_line

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
