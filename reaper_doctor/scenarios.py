"""The scenario servers: what each one reproduces, what reaper-doctor should
find in it, and where its script is.

The scripts live in the repository's top-level `scenarios/` folder; the
wheel ships them inside the package as `reaper_doctor/scenarios/`
(pyproject `force-include`), so `script_path` looks there first and falls
back to the checkout (editable or dev runs).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path


@dataclass(frozen=True)
class Scenario:
    name: str                   # "zombie-leak"
    script: str                 # "zombie_leak.py"
    reproduces: str             # one line: the design and its bug
    expected: tuple[str, ...]   # finding codes `scenario run` expects, e.g. ("RD101",)
    fix: str                    # one line: the fix
    # Codes `scenario run` tolerates besides `expected`: by-products of the
    # bug, not other bugs (the fd leak also grows descriptors towards the
    # limit: RD203, RD301 when --fd-limit is low; at the limit accept()
    # fails with EMFILE and connections wait in the queue: RD401).
    also_allowed: tuple[str, ...] = ()
    # Scan while the load runs: the finding exists only under load (a
    # blocking server's accept queue drains a second after the last client).
    scan_during_load: bool = False
    # The server runs as PID 1 of a PID namespace of its own (a container):
    # it needs root, or unprivileged user namespaces.
    needs_pid_namespace: bool = False


SCENARIOS: dict[str, Scenario] = {
    s.name: s
    for s in (
        Scenario("blocking", "blocking.py",
                 "iterative server: one slow request makes every other client wait "
                 "(accept queue fills)",
                 ("RD401",),
                 "serve connections concurrently (fork with a waitpid loop, or an event loop)",
                 scan_during_load=True),
        Scenario("zombie-leak", "zombie_leak.py",
                 "fork per connection; the parent never calls waitpid",
                 ("RD101",),
                 "reap in a SIGCHLD handler: loop os.waitpid(-1, os.WNOHANG) until it returns 0"),
        Scenario("lost-sigchld", "lost_sigchld.py",
                 "SIGCHLD handler that calls wait() once per signal; bursts of exits "
                 "leave zombies",
                 ("RD102",),
                 "loop os.waitpid(-1, os.WNOHANG) in the handler: one signal may stand "
                 "for many exits"),
        Scenario("fd-leak", "fd_leak.py",
                 "fork per connection; the parent never closes client_connection",
                 ("RD201",),
                 "in the parent, close client_connection right after fork()",
                 also_allowed=("RD203", "RD301", "RD401")),
        Scenario("fixed-fork", "fixed_fork.py",
                 "the correct fork server: waitpid(-1, WNOHANG) loop, both copies closed",
                 (),
                 "nothing to fix"),
        Scenario("event-loop", "event_loop.py",
                 "one process, selectors, non-blocking sockets: the lighter design",
                 (),
                 "nothing to fix"),
        Scenario("container-init", "container_init.py",
                 "the server is PID 1 of its PID namespace (a container): adopted orphans "
                 "stay zombies, and SIGTERM from outside is dropped",
                 ("RD104", "RD105"),
                 "an init as PID 1 that reaps and forwards signals: docker run --init, "
                 "tini or dumb-init as ENTRYPOINT",
                 needs_pid_namespace=True),
        Scenario("container-init-fixed", "container_init_fixed.py",
                 "the same server behind a small init of our own as PID 1: it forwards "
                 "SIGTERM/SIGINT and reaps with a waitpid(-1, WNOHANG) loop",
                 (),
                 "nothing to fix",
                 needs_pid_namespace=True),
    )
}


def get(name: str) -> Scenario | None:
    """The scenario called `name` ("zombie-leak"; "zombie_leak" also works), or None."""
    return SCENARIOS.get(name.strip().lower().replace("_", "-"))


def scripts_dir() -> Path:
    """The folder holding the scenario scripts: in the installed package, else
    the checkout's top-level `scenarios/`."""
    import reaper_doctor

    package = Path(reaper_doctor.__file__).resolve().parent
    for candidate in (package / "scenarios", package.parent / "scenarios"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(f"scenario scripts not found in {package / 'scenarios'} "
                            f"or {package.parent / 'scenarios'}")


def script_path(name: str) -> Path:
    """The script of scenario `name`. KeyError if no such scenario,
    FileNotFoundError if its script is missing from the installation."""
    scenario = get(name)
    if scenario is None:
        raise KeyError(f"unknown scenario {name!r} (known: {', '.join(SCENARIOS)})")
    path = scripts_dir() / scenario.script
    if not path.is_file():
        raise FileNotFoundError(f"scenario script missing: {path}")
    return path
