#!/usr/bin/env python3
"""What the pytest plugin adds to a suite's wall time.

Writes a suite of its own into a temporary directory:

  2,000 trivial tests, 200 tests that start and reap a child (/bin/true),
  200 tests that open and close a listening socket and a socket pair on
  127.0.0.1;

and a variant in which a session fixture holds 1,000 descriptors open for
the whole run (the plugin's cost must not grow with them). Each variant runs
as a whole pytest process without the plugin and with it (`--reaper-doctor`),
side by side in each round because the machine is shared, and in turn
first and second (on this 2-core machine, of two identical runs back to
back, the second was some 2 % faster: always running the plugin second
hid that much of its cost). The table gives the medians and the time added
(the median of each round's own ratio, and the middle half of those
ratios): wall time, and the CPU time (user + system) of the pytest
process. Python writes its bytecode caches as usual (PYTHONDONTWRITEBYTECODE
is dropped): a first run, not timed, fills them.

With --instructions each variant also runs once without and once with the
plugin under valgrind's callgrind, which counts user-space instructions: a
figure the machine's load does not move (times on a shared 2-core machine
move by several per cent between runs).

Usage: python benchmarks/pytest_plugin_bench.py [--rounds N] [--instructions] [--json]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import resource
import statistics
import subprocess
import sys
import tempfile
import textwrap
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent

SUITE = {
    "test_trivial.py": """
        import pytest

        @pytest.mark.parametrize("n", range(2000))
        def test_trivial(n):
            assert n >= 0
    """,
    "test_children.py": """
        import subprocess
        import pytest

        @pytest.mark.parametrize("n", range(200))
        def test_child(n):
            subprocess.run(["true"], check=True)
    """,
    "test_sockets.py": """
        import socket
        import pytest

        @pytest.mark.parametrize("n", range(200))
        def test_socket(n):
            with socket.create_server(("127.0.0.1", 0)):
                pass
            a, b = socket.socketpair()
            a.close()
            b.close()
    """,
}

HELD = """
    import os, resource
    import pytest

    @pytest.fixture(scope="session", autouse=True)
    def held_descriptors():
        soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
        if soft != resource.RLIM_INFINITY and soft < 1200:
            resource.setrlimit(resource.RLIMIT_NOFILE, (min(1200, hard), hard))
        fds = [os.open(os.devnull, os.O_RDONLY) for _ in range(1000)]
        yield
        for fd in fds:
            os.close(fd)
"""


def write_suite(where: Path, *, held: bool) -> None:
    for name, text in SUITE.items():
        (where / name).write_text(textwrap.dedent(text))
    (where / "conftest.py").write_text(textwrap.dedent(HELD) if held else "")
    (where / "pytest.ini").write_text("[pytest]\n")


def pytest_command(plugin: bool) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of one pytest run."""
    env = dict(os.environ)
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    env["PYTEST_DISABLE_PLUGIN_AUTOLOAD"] = "1"
    env.pop("PYTEST_ADDOPTS", None)
    env.pop("PYTEST_PLUGINS", None)
    args = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider"]
    if plugin:
        # Named in PYTEST_PLUGINS: pytest then still looks for it among the
        # installed distributions' entry points (about 1.5 ms here, which an
        # installed plugin does not add: pytest finds it in the scan it makes
        # on every run with autoloading on), but less than `-p` costs with
        # autoloading off (some 21 M instructions).
        env["PYTEST_PLUGINS"] = "reaper_doctor.pytest_plugin"
        args += ["--reaper-doctor"]
    return args, env


def run_once(where: Path, plugin: bool) -> tuple[float, float]:
    """(wall, cpu) seconds of one pytest run."""
    args, env = pytest_command(plugin)
    cpu_before = _children_cpu()
    started = time.perf_counter()
    result = subprocess.run(args, cwd=where, env=env, capture_output=True, text=True,
                            timeout=600)
    elapsed = time.perf_counter() - started
    cpu = _children_cpu() - cpu_before
    if result.returncode != 0:
        raise SystemExit(f"pytest failed in {where}:\n{result.stdout[-3000:]}{result.stderr}")
    return elapsed, cpu


def count_instructions(where: Path) -> tuple[int, int]:
    """User-space instructions of one run without the plugin and one with
    it, under valgrind's callgrind (side by side, one per core). Unlike
    times they do not move with the machine's load; the hash seed is fixed
    so that both runs hash alike."""
    runs = []
    for plugin in (False, True):
        args, env = pytest_command(plugin)
        env["PYTHONHASHSEED"] = "0"
        out = where / f"callgrind.{int(plugin)}"
        runs.append(subprocess.Popen(
            ["valgrind", "--tool=callgrind", f"--callgrind-out-file={out}", *args],
            cwd=where, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True))
    counts = []
    for run in runs:
        _, err = run.communicate(timeout=1800)
        found = re.search(r"Collected : (\d+)", err)
        if run.returncode != 0 or found is None:
            raise SystemExit(f"valgrind failed in {where}:\n{err[-3000:]}")
        counts.append(int(found.group(1)))
    return counts[0], counts[1]


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=9)
    parser.add_argument("--json", action="store_true")
    parser.add_argument("--instructions", action="store_true",
                        help="also count each variant's instructions under valgrind "
                             "(a minute or two more)")
    options = parser.parse_args()
    if options.instructions and shutil.which("valgrind") is None:
        parser.error("--instructions needs valgrind on PATH")
    rows = []
    with tempfile.TemporaryDirectory(prefix="rd-plugin-bench-") as tmp:
        for variant, held in (("2,400 tests", False), ("same, 1,000 fds held", True)):
            where = Path(tmp) / ("held" if held else "plain")
            where.mkdir()
            write_suite(where, held=held)
            run_once(where, False)   # bytecode caches, file cache
            run_once(where, True)
            plain, checked = [], []
            for round_ in range(options.rounds):
                if round_ % 2:
                    checked.append(run_once(where, True))
                    plain.append(run_once(where, False))
                else:
                    plain.append(run_once(where, False))
                    checked.append(run_once(where, True))
            row: dict[str, object] = {"variant": variant, "rounds": options.rounds}
            for i, what in enumerate(("wall", "cpu")):
                p = statistics.median(r[i] for r in plain)
                c = statistics.median(r[i] for r in checked)
                # Each round's two runs ran back to back, under the same
                # neighbours: the median of the rounds' own ratios is
                # steadier than the ratio of the medians.
                ratios = [100 * (b[i] - a[i]) / a[i] for a, b in zip(plain, checked)]
                quartiles = (statistics.quantiles(ratios, n=4) if len(ratios) > 1
                             else [ratios[0]] * 3)
                row.update({f"{what}_plain_s": round(p, 3), f"{what}_plugin_s": round(c, 3),
                            f"{what}_added_pct": round(statistics.median(ratios), 1),
                            f"{what}_added_iqr_pct": [round(quartiles[0], 1),
                                                      round(quartiles[2], 1)]})
            if options.instructions:
                p_instr, c_instr = count_instructions(where)
                row.update({"instructions_plain": p_instr, "instructions_plugin": c_instr,
                            "instructions_added_pct":
                                round(100 * (c_instr - p_instr) / p_instr, 1)})
            rows.append(row)
    if options.json:
        print(json.dumps(rows, indent=2))
        return
    print(f"{'suite':<22} {'wall: plain':>12} {'plugin':>7} {'added':>7} {'(middle half)':>15}  "
          f"{'cpu: plain':>11} {'plugin':>7} {'added':>7}   (median of {options.rounds})")
    for r in rows:
        low, high = r["wall_added_iqr_pct"]
        print(f"{r['variant']:<22} {r['wall_plain_s']:>11.2f}s {r['wall_plugin_s']:>6.2f}s "
              f"{r['wall_added_pct']:>6.1f}% {f'({low:+.1f} to {high:+.1f})':>15}  "
              f"{r['cpu_plain_s']:>10.2f}s {r['cpu_plugin_s']:>6.2f}s {r['cpu_added_pct']:>6.1f}%")
    if options.instructions:
        print(f"\n{'suite':<22} {'instructions: plain':>20} {'plugin':>15} {'added':>7}")
        for r in rows:
            print(f"{r['variant']:<22} {r['instructions_plain']:>20,} "
                  f"{r['instructions_plugin']:>15,} {r['instructions_added_pct']:>6.1f}%")


if __name__ == "__main__":
    main()
