"""The leak report of one test, and the session's summary: text only, from
records already read (no I/O here)."""

from __future__ import annotations

import shlex
from typing import TYPE_CHECKING, Iterable, NamedTuple

if TYPE_CHECKING:
    from ..model import FdDetail, ProcessInfo
    from ..parse.procfs import StatLine

MARKER = "reaper_doctor_allow"

# Each kind of finding, with the one line of advice that fits it.
ADVICE = {
    "table-full": "the test filled the descriptor table (ulimit -n): close what it opens",
    "unclosed-file": "close it: `with open(...)`, or close it in the fixture that made it",
    "unclosed-socket": "close it: `with socket...`, or close it in the fixture's teardown",
    "unclosed-pipe": "close both ends; once a child holds one, the parent closes its own copy",
    "unclosed-pty": "close both ends: os.openpty() returns a master and a slave, each "
                    "closed with os.close (the parent's slave once a child has it)",
    "unclosed-fd": "close it (os.close) where it is made, or in the fixture's teardown",
    "gc-closed": "a reference cycle held it until gc.collect() closed it: close it explicitly",
    "running-child": "end it and wait for it: `with Popen(...)`, or kill() then wait() "
                     "in a finally or a fixture",
    "forked-child": "a forked child must end in os._exit(), and the parent os.waitpid() it",
    "orphan": "a process started by the test's child outlived it: start the child with "
              "start_new_session=True and end its group (os.killpg)",
    "zombie": "it exited but nobody waited for it: proc.wait() or os.waitpid(pid, 0)",
    "check-error": "reaper-doctor could not check this test: the line above says why",
}
ALLOW = {"table-full": "fds", "unclosed-file": "fds", "unclosed-socket": "fds",
         "unclosed-pipe": "fds", "unclosed-pty": "fds", "unclosed-fd": "fds",
         "gc-closed": "fds",
         "running-child": "children", "forked-child": "children", "orphan": "children",
         "zombie": "zombies"}


class Entry(NamedTuple):
    """One leaked resource: its kind of finding, what it is, where it was made."""

    kind: str
    what: str
    where: tuple[str, ...] = ()
    n: int = 1           # how many resources it stands for


def fd_kind(d: FdDetail) -> str:
    if d.inet is not None or d.unix is not None or d.kind in ("socket", "tcp", "udp", "unix"):
        return "unclosed-socket"
    if d.kind == "pipe":
        return "unclosed-pipe"
    if d.kind == "device" and (d.link == "/dev/ptmx" or d.link.startswith("/dev/pts/")):
        return "unclosed-pty"   # os.openpty(): no `with open` to give
    if d.kind in ("file", "directory", "device", "fifo"):
        return "unclosed-file"
    return "unclosed-fd"


def describe_fd(d: FdDetail, pipe_holders: Iterable[str] = ()) -> str:
    """One line for a descriptor; `pipe_holders` names the processes that
    hold the other end of a pipe ("child pid 12 (fd 1)")."""
    is_socket = fd_kind(d) == "unclosed-socket"
    head = f"fd {d.fd:<5} {'socket' if is_socket else d.kind:<9}"
    mode = f"mode {d.mode}" if d.mode else None
    if d.inet is not None:
        from ..render.common import address_text as _address

        s = d.inet
        where = _address(s.local)
        if s.state != "LISTEN" and s.remote[1]:
            where += f" -> {_address(s.remote)}"
        family = "IPv6" if s.proto.endswith("6") else "IPv4"
        return f"{head} {s.proto.rstrip('6').upper()}/{family} {where} {s.state}"
    if d.unix is not None:
        u = d.unix
        return f"{head} unix {u.type} {u.path or '(unnamed)'} {u.state}"
    if d.kind == "socket":
        return f"{head} {d.socket_family or 'family unknown'} {d.link} (in no tcp/udp/unix table)"
    if d.kind == "pipe":
        end = {"r": "read end", "w": "write end"}.get((d.mode or "").split(",")[0], "")
        others = [f"fd {fd}" for fd in d.peer_fds] + list(pipe_holders)
        other = (f"; also open in {', '.join(others)}" if others
                 else "; the other end is in no process of the test")
        return f"{head} {d.link} {end}{other}"
    if d.kind in ("file", "directory", "device", "fifo"):
        extra = ", ".join(x for x in (mode, f"offset {d.offset}" if d.offset else None) if x)
        return f"{head} {d.link}" + (f"  ({extra})" if extra else "")
    return f"{head} {d.link}" + (f"  ({mode})" if mode else "")


def command(info: ProcessInfo | None, st: StatLine) -> str:
    if info is not None and info.cmdline:
        text = shlex.join(info.cmdline)
        return text if len(text) <= 120 else text[:117] + "..."
    return st.comm


def describe_child(st: StatLine, info: ProcessInfo | None, kind: str) -> str:
    age = f"running for {info.age_s:.1f} s" if info and info.age_s is not None else "running"
    what = {"orphan": "orphan", "forked-child": "fork"}.get(kind, "child")
    return f"{what:<9} pid {st.pid}  {command(info, st)}  ({age}; never waited for nor killed)"


def describe_zombie(st: StatLine, info: ProcessInfo | None) -> str:
    status = info.exit_status.describe() if info and info.exit_status else "status unknown"
    return (f"zombie    pid {st.pid}  {st.comm}  ({status}; exited, but nobody called "
            f"wait() on it)")


def block(nodeid: str, entries: list[Entry], *, owner: str | None = None) -> str:
    """The report of one test: a headline, each resource with where it was
    made, then one line of advice per kind and the marker that allows it."""
    counts: dict[str, int] = {}
    for e in entries:
        if e.kind == "check-error":
            continue
        noun = {"zombies": "zombie", "children": "child process"}.get(ALLOW.get(e.kind, ""),
                                                                       "descriptor")
        counts[noun] = counts.get(noun, 0) + e.n
    head = ", ".join(f"{n} {_plural(noun, n)}" for noun, n in counts.items())
    lines = [f"reaper-doctor: {nodeid} leaked {head}" if head
             else f"reaper-doctor: {nodeid} could not be checked"]
    if owner:
        lines.append(f"  left by {owner}, finalized in this test's teardown")
    for e in entries:
        lines.append(f"  {e.what}")
        lines += [f"      {w}" for w in e.where]
    kinds = list(dict.fromkeys(e.kind for e in entries))
    lines += [f"  {kind}: {ADVICE[kind]}" for kind in kinds]
    allow = list(dict.fromkeys(ALLOW[k] for k in kinds if k in ALLOW))
    if allow:
        lines.append(f"  a known leak? @pytest.mark.{MARKER}"
                     f"({', '.join(repr(a).replace(chr(39), chr(34)) for a in allow)})"
                     f" or reaper_doctor.adopt(obj)")
    return "\n".join(lines)


def _plural(noun: str, n: int) -> str:
    if n == 1:
        return noun
    return noun + ("es" if noun.endswith("s") else "s")


def s(n: int) -> str:
    return "" if n == 1 else "s"
