"""The user reference in docs/ against the real thing.

Each command runs on real processes and its JSON is checked against the
key tables of docs/json.md: every key printed is documented, every
documented key (not marked optional) is printed, with the documented type;
each finding's evidence keys are listed in docs/findings.md. The finding
codes, the metric names and the pytest options are checked against what
the code has, and every relative link of README.md and docs/ must resolve.

`trace` (root) and `scenario compare` (slow) are checked the same way by
their own tests (test_trace.py, test_scenario_run.py), as are the JSON
documents of the other end-to-end tests.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys

import pytest
from docs_reference import (
    DOCS,
    ROOT,
    Checker,
    anchors,
    assert_documented,
    documented_codes,
    documented_metrics,
    json_examples,
    json_shapes,
    relative_links,
)
from helpers import children_states, run_cli, run_json, wait_until, zombie_children
from test_exporter import Exporter

from reaper_doctor.catalog import CODES

# A server that forked two children and never waited for them (exit 0 and
# exit 3), with a listening socket, a connection waiting in its accept
# queue, and an open pipe: every part of a scan has something to show.
SERVER = r"""
import os, socket, time
srv = socket.create_server(("127.0.0.1", 0))
peer = socket.create_connection(srv.getsockname())
r, w = os.pipe()
for code in (0, 3):
    if os.fork() == 0:
        os._exit(code)
print("ready", flush=True)
time.sleep(120)
"""

# Opens a descriptor every 20 ms, up to 150: steady growth for RD203.
GROWING = r"""
import os, time
print("ready", flush=True)
fds = []
for _ in range(150):
    fds.append(os.open(os.devnull, os.O_RDONLY))
    time.sleep(0.02)
time.sleep(60)
"""


def _zombie_server(spawner):
    proc = spawner.python(SERVER)
    wait_until(lambda: len(zombie_children(proc.pid)) == 2, what="2 zombies")
    return proc


def test_scan_json_is_as_documented(spawner):
    proc = _zombie_server(spawner)
    code, doc = run_json("scan", str(proc.pid), "--grace", "0.3", "--list-fds")
    assert code == 1
    checker = assert_documented(doc)
    (target,) = doc["targets"]
    assert sorted(f["code"] for f in target["findings"]) == ["RD101", "RD401"]
    # The parts that are lists were not empty: their rows were checked too.
    seen = checker.seen["target-object"]
    assert {"zombies.by_parent[].exit_statuses", "fds.listening[].accept_queue",
            "fds.list[].target", "fds.sockets[].state"} <= seen


# PID 1 of a PID namespace of its own that does not reap: RD104 and RD105.
NAMESPACE_INIT = r"""
import os
print("ready", flush=True)
os.execvp("unshare", ["unshare", "--pid", "--fork", "sh", "-c", "(sleep 0.1 &); exec sleep 60"])
"""


def _can_unshare_pid() -> bool:
    probe = subprocess.run(["unshare", "--pid", "--fork", "true"], capture_output=True,
                           timeout=30, check=False) if shutil.which("unshare") else None
    return probe is not None and probe.returncode == 0


def test_census_json_is_as_documented(spawner):
    proc = _zombie_server(spawner)
    namespace = _can_unshare_pid()
    if namespace:
        holder = spawner.python(NAMESPACE_INIT)
        spawner.kill_at_once.add(holder.pid)   # its init ignores SIGTERM
        wait_until(lambda: any(zombie_children(c) for c in children_states(holder.pid)),
                   what="a zombie under the namespace's PID 1")
    code, doc = run_json("scan", "--grace", "0.3")
    assert code == 1
    checker = assert_documented(doc)
    assert proc.pid in [t["pid"] for t in doc["targets"]]
    seen = checker.seen["machine-object"]
    assert "zombie_parents[].verdict" in seen
    if namespace:   # its rows, and RD104's and RD105's evidence, were checked too
        assert "containers[].init.sigterm" in seen
        codes = {f["code"] for t in doc["targets"] for f in t["findings"]}
        # (Missed once in a full run, RD101 and RD105 found: what the scan
        # saw is in the message, for whoever sees it again.)
        assert {"RD104", "RD105"} <= codes, json.dumps(
            {"findings": [(f["code"], f["message"]) for t in doc["targets"]
                          for f in t["findings"]],
             "containers": doc.get("containers"),
             "zombie_parents": doc.get("zombie_parents")}, indent=1, default=str)[:6000]


def test_watch_json_is_as_documented(spawner):
    proc = spawner.python(GROWING)
    code, doc = run_json("watch", str(proc.pid), "--interval", "0.2", "--duration", "1.6")
    assert code in (0, 1)
    assert_documented(doc)
    assert len(doc["samples"]) >= 3


def test_scenario_run_json_is_as_documented():
    code, doc = run_json("scenario", "run", "zombie-leak", "--requests", "6",
                         "--concurrency", "3", "--grace", "0.3", timeout_s=120)
    assert code == 0, doc.get("unexpected")
    assert_documented(doc)
    assert doc["scan"] is not None and doc["timeline"]


def test_scenario_list_and_explain_json_are_as_documented():
    for args in (("scenario", "list"), ("explain",), ("explain", "RD101"),
                 ("explain", "close-wait-leak")):
        code, doc = run_json(*args)
        assert code == 0
        assert_documented(doc)


def test_lesson_json_is_as_documented():
    code, doc = run_json("lesson", "coalescing", "--children", "8", "--trials", "1",
                         timeout_s=120)
    assert code == 0
    assert_documented(doc)
    assert len(doc["strategies"]) == 4


@pytest.mark.skipif(os.geteuid() != 0, reason="needs root: tracefs is root-only")
def test_traced_lesson_json_is_as_documented(trace_env):
    """--trace adds the kernel's counts to each strategy and trial."""
    code, doc = run_json("lesson", "coalescing", "--children", "8", "--trials", "1", "--trace",
                         timeout_s=120, env=trace_env)
    assert code == 0
    checker = assert_documented(doc)
    assert doc["traced"] is True
    assert "strategies[].trials[].kernel.merged" in checker.seen["lesson-coalescing"]


def test_the_examples_agree_with_their_tables():
    """The examples of docs/json.md show only documented keys, with the
    documented types (they may be cut short: lists, and objects marked "…")."""
    checker = Checker(json_shapes())
    sections = []
    for section, doc in json_examples():
        checker.check_document(doc)
        sections.append(section)
    assert not checker.undocumented and not checker.mistyped, checker.problems()
    assert len(sections) >= 10, sections


def test_the_golden_scan_shows_only_documented_keys():
    """tests/data/scan_golden.json (a hand-built scan: unreadable fields,
    several parents) holds only documented keys, with their types."""
    checker = Checker(json_shapes())
    checker.check_document(json.loads((ROOT / "tests" / "data" / "scan_golden.json").read_text()))
    assert not checker.undocumented and not checker.mistyped, checker.problems()
    assert "unreadable[].reason" in checker.seen["target-object"]


# -- codes, metrics, options, links -----------------------------------------------

NOT_RAISED_YET = re.compile(r"\*\*Not raised yet:\*\*([^\n]*(?:\n>[^\n]*)*)")


def test_documented_codes_are_the_catalog():
    """The code table of findings.md holds every code of the catalog with its
    slug and default severity, and no other, except the codes the page
    itself says are not raised yet (which must then not be in the catalog)."""
    documented = documented_codes()
    text = (DOCS / "findings.md").read_text(encoding="utf-8")
    m = NOT_RAISED_YET.search(text)
    not_yet = set(re.findall(r"RD\d{3}", m.group(1))) if m else set()
    assert not (not_yet & set(CODES)), (
        f"{sorted(not_yet & set(CODES))} are in the catalog now: drop them from "
        "'Not raised yet' in docs/findings.md")
    assert set(documented) - not_yet == set(CODES)
    for code, meta in CODES.items():
        assert documented[code] == (meta.slug, meta.severity), code


def test_every_metric_printed_is_documented(spawner):
    """Every metric family `scan --format prometheus` prints, for a PID and
    for the census, has a row in docs/prometheus.md."""
    proc = _zombie_server(spawner)
    families = set()
    for args in (("scan", str(proc.pid), "--grace", "0"), ("scan", "--grace", "0")):
        result = run_cli(*args, "--format", "prometheus")
        assert result.returncode == 1, result.stderr
        families |= set(re.findall(r"^# TYPE (\S+) ", result.stdout, re.MULTILINE))
    assert "reaper_doctor_zombie_children" in families
    documented = documented_metrics()
    # prometheus_client names a counter's family without the `_total` of its samples.
    undocumented = {f for f in families if f not in documented and f + "_total" not in documented}
    assert not undocumented, f"add these to docs/prometheus.md: {sorted(undocumented)}"


def test_every_metric_the_exporter_serves_is_documented():
    ex = Exporter("--min-interval", "0")
    try:
        status, text = ex.get("/metrics")
    finally:
        code, err = ex.stop()
    assert status == 200 and code == 0, err
    families = set(re.findall(r"^# TYPE (\S+) ", text, re.MULTILINE))
    assert "reaper_doctor_scrapes_total" in families
    documented = documented_metrics()
    undocumented = {f for f in families if f not in documented and f + "_total" not in documented}
    assert not undocumented, f"add these to docs/prometheus.md: {sorted(undocumented)}"


def test_pytest_options_are_documented():
    """The options and ini keys of the plugin's table are the ones pytest lists."""
    argv = [sys.executable, "-m", "pytest", "--help", "-p", "no:cacheprovider"]
    result = subprocess.run(argv, capture_output=True, text=True, timeout=60, cwd=DOCS, check=False)
    if "--reaper-doctor" not in result.stdout:   # a checkout that is not installed
        result = subprocess.run([*argv, "-p", "reaper_doctor.pytest_plugin"],
                                capture_output=True, text=True, timeout=60, cwd=DOCS, check=False)
    help_text = result.stdout
    options = set(re.findall(r"(--(?:no-)?reaper-doctor[\w-]*)", help_text))
    inis = set(re.findall(r"^  (reaper_doctor\w*) \(", help_text, re.MULTILINE))
    assert options and inis, help_text[-2000:]
    table = (DOCS / "pytest-plugin.md").read_text(encoding="utf-8")
    documented_options = set(re.findall(r"^\| `(--[\w-]+)`", table, re.MULTILINE))
    documented_inis = set(re.findall(r"^\| (?:`--[\w-]+`)? *\| `(\w+)`", table, re.MULTILINE))
    assert documented_options == options
    assert documented_inis == inis


def _pages() -> list:
    return [ROOT / "README.md", *sorted(DOCS.glob("*.md"))]


@pytest.mark.parametrize("page", _pages(), ids=lambda p: str(p.relative_to(ROOT)))
def test_every_relative_link_resolves(page):
    broken = []
    for target, path, frag in relative_links(page):
        file = path or page
        if not file.exists():
            broken.append(f"{target}: no file {file.relative_to(ROOT)}")
        elif frag and file.suffix == ".md" and frag not in anchors(
                file.read_text(encoding="utf-8")):
            broken.append(f"{target}: no heading #{frag} in {file.relative_to(ROOT)}")
    assert not broken, broken


def test_the_docs_name_every_schema():
    """Each schema the code prints has its table in docs/json.md."""
    schemas = {s.schema for s in json_shapes().values() if s.schema}
    printed = set()
    for path in (ROOT / "reaper_doctor").rglob("*.py"):
        printed |= set(re.findall(r'"(reaper-doctor/[a-z-]+/\d+)"',
                                  path.read_text(encoding="utf-8")))
    assert printed <= schemas, sorted(printed - schemas)
