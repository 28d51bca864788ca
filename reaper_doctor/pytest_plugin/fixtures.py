"""Fixtures broader than the test own what their setup makes.

A module-, class- or session-scoped fixture (or setUpClass) keeps its
resources past the test's teardown on purpose: they are checked at the end
of the test whose teardown finalizes it. What its setup made is noted
around its FixtureDef's execute() and released by its finish(), both
wrapped on the broader FixtureDefs only, once, at collection: a hook
(pytest_fixture_setup, pytest_fixture_post_finalizer) would be called for
every fixture of every test, a price each test pays for the few broader
ones. Setups nest (a fixture's own fixtures are set up inside its
execute()): what a nested setup made is its own, not its caller's.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, Callable, Iterable

from .diff import Key

if TYPE_CHECKING:
    from .checker import LeakChecker

_SETUP_CLASS = "_unittest_setUpClass_fixture_"


def fixture_label(fixturedef: Any) -> str:
    name = fixturedef.argname
    if name.startswith(_SETUP_CLASS):
        return f"setUpClass of {name[len(_SETUP_CLASS):]}"
    return f"fixture '{name}' ({fixturedef.scope} scope)"


def broader_fixturedefs(items: Iterable[Any], session: Any) -> list[Any]:
    """The FixtureDefs broader than a test that these items may set up:
    those of their closures (parametrized ones among them) and, for
    getfixturevalue(), every one the fixture manager knows."""
    found: dict[int, Any] = {}
    groups: list[Iterable[Any]] = []
    seen: set[int] = set()
    for item in items:
        info = getattr(item, "_fixtureinfo", None)
        if id(info) in seen:
            continue   # the items of one parametrized function share it
        seen.add(id(info))
        groups += (getattr(info, "name2fixturedefs", None) or {}).values()
    manager = getattr(session, "_fixturemanager", None)
    # pytest 8: {name: [FixtureDef]}; pytest 9: {name: {node: [FixtureDef]}}.
    for table in ("_arg2fixturedefs", "_arg2node2fixturedefs", "_arg2nodeid2fixturedefs"):
        for value in (getattr(manager, table, None) or {}).values():
            groups += value.values() if isinstance(value, dict) else [value]
    for defs in groups:
        for fixturedef in defs:
            if getattr(fixturedef, "scope", "function") != "function":
                found[id(fixturedef)] = fixturedef
    return list(found.values())


def own_setups(checker: LeakChecker, fixturedef: Any) -> None:
    """Wrap one broader FixtureDef's execute() and finish() (once)."""
    execute = getattr(fixturedef, "execute", None)
    finish = getattr(fixturedef, "finish", None)
    if getattr(execute, "_reaper_doctor", False) or not callable(execute) or not callable(finish):
        return

    def execute_owned(request: Any) -> Any:
        # Called for every test that uses the fixture: most find it cached.
        if fixturedef.cached_result is not None and fixturedef.params is None:
            return execute(request)   # not parametrized: the cached value is the one
        check = checker.current
        if check is None or check.before is None or not _sets_up(fixturedef, request):
            return execute(request)
        frame = checker.open_setup()
        try:
            return execute(request)
        finally:
            checker.close_setup(fixturedef, frame)

    def finish_owned(request: Any) -> None:
        had = getattr(fixturedef, "cached_result", None) is not None
        try:
            finish(request)
        finally:
            if had:
                checker.released(fixturedef)

    _mark(execute_owned)
    fixturedef.execute = execute_owned
    fixturedef.finish = finish_owned


def _mark(function: Callable[..., Any]) -> None:
    function._reaper_doctor = True  # type: ignore[attr-defined]


def _sets_up(fixturedef: Any, request: Any) -> bool:
    """Whether execute() will run the fixture's setup: nothing is cached, or
    what is cached is for another parameter."""
    cached = getattr(fixturedef, "cached_result", None)
    if cached is None:
        return True
    try:
        return not bool(fixturedef.cache_key(request) == cached[1])
    except Exception:
        return True


class Setup:
    """One broader fixture's setup under way: the keys before it, and what
    the setups nested in it made."""

    __slots__ = ("before", "nested")

    def __init__(self, before: set[Key] | None) -> None:
        self.before = before
        self.nested: set[Key] = set()
