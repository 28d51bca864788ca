"""What a test left behind, described: one Entry per leaked descriptor,
child or zombie, with its kind, where it was made (origins.py), the child
holding the other end of a leaked pipe, and what is not a leak after all
(allowed by the ini patterns, a helper's first use, an orphan of an earlier
test). A mixin of LeakChecker: it runs only when a test left something."""

from __future__ import annotations

import fnmatch
import linecache
import os
import resource
import time
from typing import TYPE_CHECKING, Any, Iterable

import pytest

from ..collect import own
from .diff import FdKey, Key, Leaks
from .fixtures import fixture_label
from .origins import Event, Origin, match_children, match_fds, user_places
from .report import Entry, describe_child, describe_fd, describe_zombie, fd_kind

if TYPE_CHECKING:
    from ..parse.procfs import StatLine
    from .checker import LeakCheck, LeakChecker

class Findings:
    """The describing half of LeakChecker."""

    def _links(self: LeakChecker, fds: Iterable[int]) -> dict[int, str]:
        links = {}
        for fd in fds:
            link = own.fd_link(self.pid, fd)
            if link is not None:
                links[fd] = link
        return links

    def _remember_origins(self: LeakChecker, keys: set[Key],
                          events: list[Event] | None = None) -> None:
        """Match the creation events to new resources while they are open."""
        if self.recorder is None:
            return
        if events is None:
            events = self.recorder.events
        fds = {fd: key for kind, fd, key in keys if kind == "fd"}
        unknown = [k for k in fds if ("fd", k, fds[k]) not in self.origins]
        if any(e.path is not None for e in events):
            wanted = self._links(unknown)   # the audit hook's opens: matched by path
        else:
            wanted = dict.fromkeys(unknown, "")   # events that name their descriptors
        for fd, origin in match_fds(events, wanted).items():
            self.origins[("fd", fd, fds[fd])] = origin

    def _entries(self: LeakChecker, found: Leaks, check: LeakCheck, item: pytest.Item,
                 links: dict[int, str], gc_closed: dict[int, tuple[str, FdKey]]
                 ) -> tuple[list[Entry], bool]:
        """The entries of a report, and whether the test filled the table."""
        allow = self.settings.allow_paths
        links = {**links, **self._links(fd for fd in found.fds if fd not in links)}
        fds = {fd: key for fd, key in found.fds.items()
               if fd in links and not _matches(links[fd], allow)}
        gc_closed = {fd: (link, key) for fd, (link, key) in gc_closed.items()
                     if not _matches(link, allow)}
        origin_of = {fd: self.origins.get(("fd", fd, key)) for fd, key in fds.items()}
        children = [*found.children, *found.zombies]
        infos = {st.pid: self.process.describe_process(st.pid) for st in children}
        for st in [st for st in children if st.start_ticks < check.started_ticks - 1]:
            # Born before this test: an orphan of an earlier test's child that
            # came home now. Not this test's leak.
            children.remove(st)
            self.ledger.setdefault((st.pid, st.start_ticks), "an earlier test")
            self.pending_notes.append(f"pid {st.pid} ({st.comm}) was re-parented to the test "
                                      f"process during {item.nodeid}, but started before it")
        child_origin = self._child_origins(children, infos, check)
        self._await_exec(children, infos, child_origin)
        children = [st for st in children
                    if not _matches(_command_line(infos[st.pid], st), self.settings.allow_commands)]
        # The first use of a helper's cache is not a leak.
        fds = {fd: k for fd, k in fds.items()
               if not self._first_use(("fd", fd, k), origin_of.get(fd), item, links[fd])}
        children = [st for st in children if st.state == "Z" or not self._first_use(
            ("child", st.pid, st.start_ticks), child_origin.get(st.pid), item,
            f"pid {st.pid} {st.comm}")]
        entries, table_full = self._fd_entries(fds, links, origin_of, children, item)
        for fd, (link, key) in sorted(gc_closed.items()):
            origin = self.origins.get(("fd", fd, key))
            entries.append(Entry("gc-closed", f"fd {fd:<5} {link}  (closed only by the "
                                 "garbage collector)", self._where(origin, item)))
        entries += self._child_entries(children, infos, child_origin, item)
        # Origins of what is gone are of no more use.
        for old in [k for k in self.origins if k[0] == "fd" and k[1] not in found.fds
                     and k not in self.kept]:
            if not any(old in keys for _, keys in self.owned.values()):
                del self.origins[old]
        return entries, table_full

    def _fd_entries(self: LeakChecker, fds: dict[int, FdKey], links: dict[int, str],
                    origin_of: dict[int, Origin | None], children: list[StatLine],
                    item: pytest.Item) -> tuple[list[Entry], bool]:
        entries: list[Entry] = []
        limit = _fd_limit()
        count = self.fd_count() or len(fds)
        table_full = bool(fds) and limit is not None and count >= limit - 1
        if table_full:
            examples: list[str] = []
            for fd in sorted(fds)[-3:]:
                examples.append(f"fd {fd:<5} {links[fd]}")
                examples += [f"    {w}" for w in self._where(origin_of.get(fd), item)]
            entries.append(Entry("table-full", f"the test filled the descriptor table: {count} "
                                 f"descriptors open (ulimit -n {limit}), {len(fds)} of them "
                                 f"new; e.g.:", tuple(examples), len(fds)))
        elif fds:
            holders = self._pipe_holders(fds, links, children)
            gone = "  (closed while being described)"
            try:
                details = self.fds.describe_fds(self.pid, fds)
            except OSError as e:
                details, gone = [], f"  (not described: {e.strerror or e})"
            described = {d.fd for d in details}
            for d in details:
                inode = links[d.fd][6:-1] if links[d.fd].startswith("pipe:[") else ""
                entries.append(Entry(fd_kind(d), describe_fd(d, holders.get(inode, [])),
                                     self._where(origin_of.get(d.fd), item)))
            for fd in sorted(set(fds) - described):
                entries.append(Entry("unclosed-fd", f"fd {fd:<5} {links[fd]}{gone}",
                                     self._where(origin_of.get(fd), item)))
        return entries, table_full

    def _child_entries(self: LeakChecker, children: list[StatLine], infos: dict[int, Any],
                       child_origin: dict[int, Origin], item: pytest.Item) -> list[Entry]:
        entries = []
        for st in children:
            self.ledger.setdefault((st.pid, st.start_ticks), item.nodeid)
            origin = child_origin.get(st.pid)
            relation = origin.relation if origin else ""
            if st.state == "Z" and relation == "orphan" and _reap(st.pid):
                # It came home only because the test process is a subreaper
                # while the plugin runs; init would have reaped it, and the
                # test has nothing to wait for.
                self.pending_notes.append(
                    f"pid {st.pid} ({st.comm}), an orphan of a process {item.nodeid} started, "
                    "exited in the test process's care (a subreaper while the plugin runs): "
                    "reaped, not reported")
                continue
            if st.state == "Z":
                entries.append(Entry("zombie", describe_zombie(st, infos[st.pid]),
                                     self._where(origin, item)))
                continue
            kind = {"forked": "forked-child", "orphan": "orphan"}.get(relation, "running-child")
            info = infos[st.pid]
            if kind == "forked-child" and info is not None and info.cmdline \
                    and tuple(info.cmdline) != self._own_argv():
                kind = "running-child"   # it exec'd: no os._exit() of ours to call
            entries.append(Entry(kind, describe_child(st, infos[st.pid], kind),
                                 self._where(origin, item)))
        return entries

    def _child_origins(self: LeakChecker, children: list[StatLine], infos: dict[int, Any],
                       check: LeakCheck) -> dict[int, Origin]:
        if self.recorder is None or not children:
            return {}
        found = match_children(self.recorder.spawns,
                               {st.pid: tuple(infos[st.pid].cmdline) if infos[st.pid] and
                                infos[st.pid].cmdline else () for st in children},
                               self._own_argv())
        for st in children:
            origin = found.get(st.pid)
            if origin is not None:
                self.origins[("child", st.pid, st.start_ticks)] = origin
        return found

    def _await_exec(self: LeakChecker, children: list[StatLine], infos: dict[int, Any],
                    origins: dict[int, Origin]) -> None:
        """A child just started may not have exec'd yet (its command line is
        still ours, or empty): give it a moment, so that the report names
        the command it runs."""
        deadline = time.monotonic() + 0.5
        for st in children:
            origin = origins.get(st.pid)
            argv = origin.event.argv if origin is not None else None
            if st.state == "Z" or not argv:
                continue
            # Started: it runs our command line until it execs its own. An
            # orphan: it runs its parent's until it execs.
            before = argv if origin is not None and origin.relation == "orphan" else self._own_argv()
            while time.monotonic() < deadline:
                info = infos.get(st.pid)
                if info is None or (info.cmdline and tuple(info.cmdline) != before):
                    break
                time.sleep(0.005)
                infos[st.pid] = self.process.describe_process(st.pid)

    def _pipe_holders(self: LeakChecker, fds: dict[int, FdKey], links: dict[int, str],
                      children: list[StatLine]) -> dict[str, list[str]]:
        """{pipe inode: ["child pid N (fd k)"]}: which leaked child holds the
        other end of a leaked pipe."""
        inodes = {links[fd][6:-1] for fd in fds if links[fd].startswith("pipe:[")}
        holders: dict[str, list[str]] = {}
        if not inodes:
            return holders
        for st in children:
            if st.state == "Z":
                continue
            try:
                theirs = self.fds.fd_links(st.pid)
            except Exception:
                continue
            for fd, link in sorted(theirs.items()):
                if link.startswith("pipe:[") and link[6:-1] in inodes:
                    holders.setdefault(link[6:-1], []).append(f"child pid {st.pid} (its fd {fd})")
        return holders

    def _first_use(self: LeakChecker, key: Key, origin: Origin | None, item: pytest.Item,
                   what: str) -> bool:
        """Whether a resource is the first one a helper's line made (a
        cache): remembered and kept, not reported."""
        if not self.settings.first_use or origin is None:
            return False
        places = user_places(origin.event.frames, self.library)
        if len(places) < 2 or origin.relation == "orphan":
            return False   # made by the test, a fixture or setUpClass itself: not a cache
        place = places[0]
        if place.code in self._fixture_codes(item) or place.code is _test_code(item):
            return False
        site = (place.filename, place.lineno)
        first = self.first_use.get(site)
        if first is None or first == item.nodeid:
            self.first_use[site] = item.nodeid
            self.kept.add(key)
            self._owned_keys = None
            if key[0] == "child":
                self.ledger.setdefault((key[1], key[2]), f"{item.nodeid} (first use)")
            self.pending_notes.append(
                f"kept from first use in {item.nodeid}: {what}, made at "
                f"{self._relative(place.filename)}:{place.lineno}")
            return True
        return False

    def _where(self: LeakChecker, origin: Origin | None, item: pytest.Item) -> tuple[str, ...]:
        if self.recorder is None:
            return ()
        if origin is None:
            return ("no Python-level origin: made in C code, or by a call no audit "
                    "event reports",)
        places = user_places(origin.event.frames, self.library)
        if not places:
            return ("no Python-level origin: made in C code",)
        first = places[0]
        verb = {"started": "started", "forked": "forked",
                "orphan": "orphan of a process started"}.get(origin.relation, "made")
        line = f"{verb} at {self._relative(first.filename)}:{first.lineno} in {first.function}"
        codes = self._fixture_codes(item)
        fixture = _fixture_of(places, codes)
        if fixture:
            line += f" ({fixture})"
        if origin.event.test and origin.event.test != item.nodeid:
            line += f", during {origin.event.test}"
        lines = [line]
        source = linecache.getline(first.filename, first.lineno).strip()
        if source:
            lines.append(f"  {source}")
        shown = places[1:3]
        # However deep the helpers, the frame in the test (or its fixture)
        # ends the list: that is the line a maintainer looks for.
        test_code = _test_code(item)
        anchor = next((p for p in places[3:] if p.code is test_code or p.code in codes), None)
        if anchor is not None:
            shown.append(anchor)
        for place in shown:
            lines.append(f"called from {self._relative(place.filename)}:{place.lineno} "
                         f"in {place.function}")
        return tuple(lines)

    def _relative(self: LeakChecker, filename: str) -> str:
        root = os.path.join(self.rootpath, "") if self.rootpath else None
        return filename[len(root):] if root and filename.startswith(root) else filename

    def _fixture_codes(self: LeakChecker, item: pytest.Item) -> dict[Any, str]:
        codes: dict[Any, str] = dict(self.fixture_codes)
        info = getattr(item, "_fixtureinfo", None)
        for name, defs in (getattr(info, "name2fixturedefs", None) or {}).items():
            for fixturedef in defs:
                code = getattr(getattr(fixturedef, "func", None), "__code__", None)
                if code is not None:
                    codes[code] = fixture_label(fixturedef)
        return codes

    def _own_argv(self: LeakChecker) -> tuple[str, ...]:
        argv = self.argv
        if argv is None:
            info = self.process.describe_process(self.pid)
            argv = self.argv = tuple(info.cmdline) if info is not None and info.cmdline else ()
        return argv


def _fixture_of(places: list[Any], codes: dict[Any, str]) -> str | None:
    """The fixture (or setUpClass) among `places`, by its code."""
    for place in places:
        if place.code in codes:
            return codes[place.code]
        if place.function.endswith("setUpClass"):
            return f"setUpClass of {place.function.rsplit('.', 1)[0]}"
    return None


def _reap(pid: int) -> bool:
    """Reap zombie child `pid`; whether it was ours to reap."""
    try:
        return os.waitpid(pid, os.WNOHANG)[0] == pid
    except ChildProcessError:
        return False


def _test_code(item: pytest.Item) -> Any:
    return getattr(getattr(item, "function", None), "__code__", None)


def _command_line(info: Any, st: StatLine) -> str:
    return " ".join(info.cmdline) if info is not None and info.cmdline else st.comm


def _matches(text: str, patterns: Iterable[str]) -> bool:
    return any(fnmatch.fnmatchcase(text, p) for p in patterns)


def _fd_limit() -> int | None:
    soft = resource.getrlimit(resource.RLIMIT_NOFILE)[0]
    return None if soft == resource.RLIM_INFINITY else soft

