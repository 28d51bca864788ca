"""`scan --format prometheus`, `--textfile` and the exporter: a report as
Prometheus metric families (prometheus_client's custom-collector API),
serialised by prometheus_client's own `generate_latest`.

Conventions (prometheus.io/docs/practices/naming): base units (seconds),
`_total` only on counters (prometheus_client appends it), one family per
name. The standard client_python names are reused for what they mean
(`process_open_fds`, `process_max_fds`), with `pid` and `comm` labels
since one exposition describes many processes, plus `container_id` (the
first 12 characters of the ID) and `runtime` for a process in a known
container; everything else is prefixed `reaper_doctor_`.

prometheus_client is imported here and only here: commands that do not
speak Prometheus never load it.
"""

from __future__ import annotations

from typing import Callable, Iterable, Iterator

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.exposition import generate_latest
from prometheus_client.registry import Collector, CollectorRegistry

from ..catalog import CODES
from ..model import PidsCgroup, ProcessInfo, Report, Snapshot
from .common import zombie_groups

PROCESS_LABELS = ("pid", "comm")
CONTAINER_ID_CHARS = 12


class _Families:
    """Metric families by name, in the order first asked for; a sample is
    kept once per label set (the first sighting wins: trees may overlap)."""

    def __init__(self) -> None:
        self.families: dict[str, Metric] = {}
        self.seen: dict[str, set[tuple[tuple[str, str], ...]]] = {}

    def family(self, name: str, kind: str, help_text: str) -> Metric:
        fam = self.families.get(name)
        if fam is None:
            cls = CounterMetricFamily if kind == "counter" else GaugeMetricFamily
            fam = self.families[name] = cls(name, help_text)
            self.seen[name] = set()
        return fam

    def set(self, spec: tuple[str, str, str], value: float | int | None,
            **labels: object) -> None:
        fam = self.family(*spec)
        if value is None:
            return
        text = {k: str(v) for k, v in labels.items()}
        key = tuple(text.items())
        if key in self.seen[spec[0]]:
            return
        self.seen[spec[0]].add(key)
        suffix = "_total" if spec[1] == "counter" else ""
        fam.add_sample(spec[0] + suffix, text, float(value))


OPEN_FDS = ("process_open_fds", "gauge", "Number of open file descriptors.")
MAX_FDS = ("process_max_fds", "gauge",
           "Maximum number of open file descriptors (the soft RLIMIT_NOFILE, ulimit -n).")
ZOMBIES = ("reaper_doctor_zombie_children", "gauge",
           "Zombie children of this parent process (exited, not yet waited for).")
CLOSE_WAIT = ("reaper_doctor_close_wait_sockets", "gauge",
              "Accepted TCP sockets of this process in CLOSE_WAIT: the peer closed, this side "
              "did not.")
ACCEPT_QUEUE = ("reaper_doctor_accept_queue_connections", "gauge",
                "Connections waiting in the accept queue of this process's listening port.")
ACCEPT_BACKLOG = ("reaper_doctor_accept_queue_backlog", "gauge",
                  "Configured backlog (listen() argument, capped by somaxconn) of this "
                  "listening port.")
UID_TASKS = ("reaper_doctor_uid_tasks", "gauge",
             "Tasks (threads and zombies count) of this real UID on the machine.")
UID_NPROC = ("reaper_doctor_uid_nproc_limit", "gauge",
             "Soft RLIMIT_NPROC (ulimit -u) for this UID's tasks; absent when unlimited "
             "or not enforced (UID 0).")
CG_CURRENT = ("reaper_doctor_pids_cgroup_current", "gauge",
              "Tasks in this pids cgroup (pids.current).")
CG_MAX = ("reaper_doctor_pids_cgroup_max", "gauge", "Task limit of this pids cgroup (pids.max).")
CG_REFUSALS = ("reaper_doctor_pids_cgroup_fork_refusals", "counter",
               "Forks refused because this pids cgroup was at pids.max (pids.events max).")
UNATTRIBUTED = ("reaper_doctor_unattributed_close_wait_sockets", "gauge",
                "CLOSE_WAIT sockets on a listening port whose holding process could not be "
                "read (another user's, without CAP_DAC_READ_SEARCH and CAP_SYS_PTRACE).")
FINDINGS = ("reaper_doctor_findings", "gauge", "Findings of this scan by code and severity.")
FINDING = ("reaper_doctor_process_findings", "gauge",
           "Findings of this scan by process, code and severity.")
DURATION = ("reaper_doctor_scan_duration_seconds", "gauge", "Wall time of the scan.")
TASKS = ("reaper_doctor_machine_tasks", "gauge", "Tasks on the machine (each holds a PID).")
PID_MAX = ("reaper_doctor_machine_pid_max", "gauge", "kernel.pid_max.")
FILES = ("reaper_doctor_machine_open_files", "gauge",
         "Open file handles on the machine (fs.file-nr allocated minus unused).")
FILE_MAX = ("reaper_doctor_machine_file_max", "gauge", "fs.file-max.")


def container_labels(info: object) -> dict[str, str]:
    """`container_id` (12 characters) and `runtime` of a process known to
    run in a container; nothing otherwise."""
    container = getattr(info, "container", None)
    if container is None:
        return {}
    labels = {"container_id": str(getattr(container, "id", "") or "")[:CONTAINER_ID_CHARS]}
    runtime = getattr(container, "runtime", None)
    if runtime:
        labels["runtime"] = str(runtime)
    return labels


class ReportCollector(Collector):
    """A prometheus_client collector that yields the families of one report."""

    def __init__(self, report: Report) -> None:
        self.report = report

    def collect(self) -> Iterable[Metric]:
        return report_families(self.report)


def report_families(report: Report) -> Iterator[Metric]:
    fams = _Families()
    for spec in (OPEN_FDS, MAX_FDS, ZOMBIES, CLOSE_WAIT, ACCEPT_QUEUE, ACCEPT_BACKLOG):
        fams.family(*spec)
    who = _process_labels(report)

    def proc(pid: int) -> dict[str, str]:
        return who.get(pid) or {"pid": str(pid), "comm": ""}

    for t in report.targets:
        _snapshot_metrics(fams, t.snapshot, proc)
    machine = report.machine
    if machine:
        for row in machine.nofile_top:
            fams.set(OPEN_FDS, row.used, **proc(row.pid))
            fams.set(MAX_FDS, row.soft, **proc(row.pid))
        for zp in machine.zombie_parents:
            fams.set(ZOMBIES, zp.zombies, **proc(zp.pid))
        for holder in machine.socket_holders:
            fams.set(CLOSE_WAIT, holder.close_wait, **proc(holder.pid))
            for q in holder.listeners:
                fams.set(ACCEPT_QUEUE, q.queue, **proc(holder.pid), port=q.port)
                fams.set(ACCEPT_BACKLOG, q.backlog, **proc(holder.pid), port=q.port)
        for u in machine.uids:
            fams.set(UID_TASKS, u.tasks, uid=u.uid)
            fams.set(UID_NPROC, u.soft if u.enforced else None, uid=u.uid)
        for cg in machine.pids_cgroups:
            _cgroup_metrics(fams, cg)
        fams.set(UNATTRIBUTED, machine.close_wait_unattributed)
        fams.set(TASKS, machine.tasks)
        fams.set(PID_MAX, machine.pid_max)
        fams.set(FILES, machine.files_open)
        fams.set(FILE_MAX, machine.file_max)
    counts: dict[tuple[str, str], int] = {}
    per_process: dict[tuple[int, str, str], int] = {}
    for t in report.targets:
        for f in t.findings:
            counts[(f.code, f.severity.value)] = counts.get((f.code, f.severity.value), 0) + 1
            key = (f.pid, f.code, f.severity.value)
            per_process[key] = per_process.get(key, 0) + 1
    seen_codes = {code for code, _ in counts}
    for code, meta in CODES.items():
        if code not in seen_codes:
            counts[(code, meta.severity)] = 0   # a zero per code: alerts need a series
    for (code, severity), n in sorted(counts.items()):
        fams.set(FINDINGS, n, code=code, severity=severity)
    fams.family(*FINDING)
    for (pid, code, severity), n in sorted(per_process.items()):
        fams.set(FINDING, n, **proc(pid), code=code, severity=severity)
    if report.duration_s is not None:
        fams.set(DURATION, round(report.duration_s, 6))
    return iter(fams.families.values())


def _process_labels(report: Report) -> dict[int, dict[str, str]]:
    """pid -> its labels: pid, comm, and the container labels where known."""
    infos: dict[int, ProcessInfo] = {}
    for t in report.targets:
        for pid, info in t.snapshot.processes.items():
            infos.setdefault(pid, info)
    labels = {pid: {"pid": str(pid), "comm": info.name, **container_labels(info)}
              for pid, info in infos.items()}
    machine = report.machine
    if machine:
        for rows in (machine.nofile_top, machine.zombie_parents, machine.socket_holders):
            for row in rows:
                if row.pid not in labels:
                    labels[row.pid] = {"pid": str(row.pid), "comm": row.name or "",
                                       **container_labels(row)}
    return labels


def _snapshot_metrics(fams: _Families, snap: Snapshot,
                      proc: Callable[[int], dict[str, str]]) -> None:
    for pid, usage in sorted(snap.nofile.items()):
        fams.set(OPEN_FDS, usage.used, **proc(pid))
        fams.set(MAX_FDS, usage.soft, **proc(pid))
    for g in zombie_groups(snap):
        fams.set(ZOMBIES, g.count, **proc(g.ppid))
    for pid, fds in sorted(snap.fds.items()):
        fams.set(CLOSE_WAIT, fds.close_wait, **proc(pid))
        for s in fds.listeners:
            if s.proto.startswith("tcp"):
                fams.set(ACCEPT_QUEUE, s.rx_queue, **proc(pid), port=s.local[1])
                fams.set(ACCEPT_BACKLOG, s.backlog, **proc(pid), port=s.local[1])
    if snap.nproc and snap.nproc.uid is not None:
        fams.set(UID_TASKS, snap.nproc.used, uid=snap.nproc.uid)
        fams.set(UID_NPROC, snap.nproc.soft if snap.nproc.enforced else None,
                 uid=snap.nproc.uid)
    if snap.pids_cgroup and snap.pids_cgroup.max:
        _cgroup_metrics(fams, snap.pids_cgroup)
    if snap.pids_in_use is not None:
        fams.set(TASKS, snap.pids_in_use)
    fams.set(PID_MAX, snap.pid_max)


def _cgroup_metrics(fams: _Families, cg: PidsCgroup) -> None:
    path = cg.path or ""
    fams.set(CG_CURRENT, cg.current, cgroup=path)
    fams.set(CG_MAX, cg.max, cgroup=path)
    fams.set(CG_REFUSALS, cg.refusals, cgroup=path)


def registry_of(*collectors: Collector) -> CollectorRegistry:
    """A registry of its own (not prometheus_client's global one, which
    would add this process's own process_* and python_* series)."""
    registry = CollectorRegistry(auto_describe=False)
    for c in collectors:
        registry.register(c)
    return registry


def render_prometheus(report: Report) -> str:
    """The report in the text exposition format (version 0.0.4)."""
    return generate_latest(registry_of(ReportCollector(report))).decode()


__all__ = ["ReportCollector", "container_labels", "registry_of", "render_prometheus"]
