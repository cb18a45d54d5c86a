"""Benchmark 6: MPF files per hour through the daemon, beside `credflow sync`, on the same files.

    .venv/bin/python bench/daemon_throughput.py                  # 30 therapists × 3 files a mode
    .venv/bin/python bench/daemon_throughput.py --quick          # 10 therapists
    options: --therapists N  --modes sync,daemon,celery1,celery2  --celery-app APP  --json FILE

One local stack (moto, sshd, the Drive server); for each mode a fresh Dagster instance and N new
therapists (the same files as bench/mpf_throughput.py: a PDF, a PNG and a text CV each, under
ids of the mode's own, so no mode finds another's MPF folders or renditions in place):

- `sync`: `credflow sync --sensor signup_upload_sensor`'s function, in a child process, against
  a SQLite instance under the local stack's dagster.yaml (mpf_throughput's child, which also
  splits its wall into work, Dagster run overhead and sensor time).
- `daemon`: `dagster-daemon run` on the same dagster.yaml: the default run launcher (a
  process per run), credflow's queued run coordinator, SQLite storage.
- `celery1`, `celery2`: `dagster-daemon run` on deploy/dagster.celery.yaml (PostgreSQL storage,
  `CeleryRunLauncher` on RabbitMQ), with 1 or 2 `dagster-celery` workers of one pool process each,
  started as deployed (`-A credflow_assets.celery_worker`; `--celery-app` names another app).

Every sensor but `signup_upload_sensor` is stopped. The daemon starts first, and the files are
uploaded once the sensor's first (empty) tick is recorded, as files arrive at a running
deployment. Wall time runs from the moment every file is in the bucket (its S3 event in the
queue) to the end of the last run, as Dagster recorded it; for `sync`, the sync call itself.
CPU seconds cover the same stretch and every process below the benchmark (the mode's Dagster
processes, what they started, and the local stack's servers): on a machine that others load, the
CPU a file costs moves much less than its wall time.

The per-run cost under the daemon is read from each run's event log and the run processes:
sensor tick (files in → first run created), waiting (created → RUN_STARTING, the queued
coordinator's launch; under Celery also the broker, until the worker's previous run ends),
process start or Celery hand-off and code load (→ RUN_START), step set-up (→ STEP_START), the
step, and the run's end; and the events stored per run, with the seconds their writes took in
the run's process (bench/event_timing). Work is the step's compute window as in
mpf_throughput.py (its last input event to its last output/check event) minus the event writes
inside it; Dagster run overhead is the rest of the run's slot, from its start (above) to its end.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections import Counter
from datetime import datetime
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    REPO,
    bench_stack,
    bench_workdir,
    cpu_seconds_below,
    print_machine,
    run_child,
    table,
    write_json,
)
from mpf_throughput import compute_windows, seconds_inside, seed  # noqa: E402

MODES = ("sync", "daemon", "celery1", "celery2")
SENSOR = "signup_upload_sensor"
BIN = Path(sys.executable).parent
BROKER_URL = os.environ.get("CREDFLOW_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")
POSTGRES_SERVER_URL = os.environ.get(
    "CREDFLOW_TEST_POSTGRES_URL", "postgresql+psycopg2://credflow:credflow@127.0.0.1:5432")
TERMINAL = {"SUCCESS", "FAILURE", "CANCELED"}
# The workers' Celery app, as deploy/dagster.celery.yaml starts them (`--celery-app
# dagster_celery.app` measures dagster-celery's own, which opens an instance for every run).
CELERY_APP = "credflow_assets.celery_worker"
# The run's milestones, in order; each phase is the time from one to the next.
# (Dagster records no event when the queued coordinator dequeues a run: RUN_STARTING is its launch.
# Under Celery a launched run then waits in the broker until a worker is free: its slot starts
# when the worker's previous run ends, or at RUN_STARTING when the worker was idle.)
MILESTONES = ("created", "slot_start", "RUN_START", "STEP_START", "step_end", "run_end")
PHASES = ("waiting (created → launched, or its worker free)",
          "process start or hand-off + code load (→ RUN_START)",
          "step set-up (→ STEP_START)",
          "step", "run end (last step event → RUN_SUCCESS)")


# ------------------------------------------------------------------------------ instances


def sqlite_home(work: Path, mode: str) -> dict[str, str]:
    """A fresh DAGSTER_HOME with the local stack's dagster.yaml (as `credflow local up` writes)."""
    home = work / f"dagster-{mode}"
    home.mkdir()
    template = REPO / "credflow_assets" / "local" / "dagster.yaml"
    (home / "dagster.yaml").write_text(template.read_text())
    return {"DAGSTER_HOME": str(home)}


def celery_home(work: Path, mode: str, queue: str, database: str) -> dict[str, str]:
    """A fresh DAGSTER_HOME with deploy/dagster.celery.yaml, a fresh PostgreSQL database, and a
    Celery queue of this run's own (RabbitMQ's default vhost is shared by the machine)."""
    import sqlalchemy as sa
    import yaml

    from credflow_assets.config import load_config
    from credflow_assets_tests.test_production_celery import postgres_variables

    home = work / f"dagster-{mode}"
    home.mkdir()
    config = yaml.safe_load((REPO / "deploy" / "dagster.celery.yaml").read_text())
    config["run_launcher"]["config"]["default_queue"] = queue
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{database}"'))
    admin.dispose()
    return {"DAGSTER_HOME": str(home), "DAGSTER_CELERY_BROKER_URL": BROKER_URL,
            # As deploy/dagster.celery.yaml asks: a store every process reads (run monitoring).
            "DAGSTER_CELERY_BACKEND_URL": f"db+{POSTGRES_SERVER_URL}/{database}",
            # Each step's output in the stack's logs bucket, as in production.
            "DAGSTER_COMPUTE_LOGS_BUCKET": load_config(Path(os.environ["CREDFLOW_CONFIG"]))
            .buckets.logs,
            **postgres_variables(f"{POSTGRES_SERVER_URL}/{database}")}


def mode_instance(work: Path, mode: str, name: str | None = None):
    """(workers, queue, database, variables) for a daemon mode: `daemon` the local stack's
    SQLite instance, `celeryN` PostgreSQL and a Celery queue of its own for N workers. `name`
    (the mode's by default) names its DAGSTER_HOME under `work`."""
    workers = int(mode.removeprefix("celery")) if mode.startswith("celery") else 0
    queue = f"credflow-bench-{uuid.uuid4().hex[:10]}" if workers else None
    database = f"credflow_bench_{uuid.uuid4().hex[:10]}"
    variables = (celery_home(work, name or mode, queue, database) if workers
                 else sqlite_home(work, name or mode))
    return workers, queue, database, variables


def drop_celery_resources(queue: str, database: str) -> None:
    import kombu
    import sqlalchemy as sa

    with kombu.Connection(BROKER_URL, connect_timeout=5) as connection:
        channel = connection.channel()
        channel.queue_delete(queue)
        channel.exchange_delete(queue)
    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)'))
    admin.dispose()


def event_timing(work: Path, mode: str) -> dict[str, str]:
    """Variables that make the mode's Dagster processes time their event writes
    (bench/event_timing/sitecustomize.py), into a directory of the mode's own."""
    directory = work / f"events-{mode}"
    directory.mkdir()
    return {"CREDFLOW_BENCH_EVENT_TIMING": str(directory),
            "PYTHONPATH": os.pathsep.join([str(REPO / "bench" / "event_timing"), str(REPO)])}


def event_intervals(variables: dict[str, str]) -> dict[int, list[tuple[float, float]]]:
    """pid → its event writes, (start, end), sorted."""
    intervals = {}
    for path in Path(variables["CREDFLOW_BENCH_EVENT_TIMING"]).glob("*.txt"):
        pairs = [tuple(map(float, line.split())) for line in path.read_text().splitlines()
                 if len(line.split()) == 2]
        intervals[int(path.stem)] = sorted(pairs)
    return intervals


class Environment:
    """Variables set in this process for one mode (the instance it opens), restored after."""

    def __init__(self, variables: dict[str, str]):
        self.variables = variables
        self.saved = {name: os.environ.get(name) for name in variables}

    def __enter__(self):
        os.environ.update(self.variables)
        return self

    def __exit__(self, *_):
        for name, value in self.saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


# ------------------------------------------------------------------------------ modes


def run_sync(config, stack_env, work: Path, therapists: int, prefix: str) -> dict:
    variables = sqlite_home(work, "sync")
    with Environment(variables):
        import dagster as dg

        with dg.DagsterInstance.get() as instance:
            instance.get_runs(limit=1)  # creates the storage, as `credflow local up` does
        seed(config, stack_env, therapists, prefix=prefix)
        available = time.time()
        timing = event_timing(work, "sync")
        cpu_before = cpu_seconds_below(os.getpid())
        child = run_child([str(Path(__file__).with_name("mpf_throughput.py")), "--child",
                           json.dumps({})], env={**variables, **timing}, echo=False)
        cpu = cpu_seconds_below(os.getpid()) - cpu_before
        with dg.DagsterInstance.get() as instance:
            result = read_runs(instance, available, event_intervals(timing))
    result["wall_seconds"] = child["wall_seconds_sync"]
    result["processing_seconds"] = child["wall_seconds_sync"]
    result["cpu_seconds"] = cpu
    result["sync"] = {key: child[key] for key in (
        "runs_seconds", "work_seconds", "event_seconds", "events", "event_seconds_in_compute",
        "libreoffice_seconds", "failed_count", "peak_rss_mb")}
    return result


def start_daemon_services(mode: str, work: Path, env: dict[str, str], queue: str | None,
                          workers: int, celery_app: str = CELERY_APP) -> list:
    from credflow_assets_tests.test_production_celery import start_service

    services = []
    for index in range(workers):
        name = f"{queue}-{index}"
        services.append(start_service(f"celery worker {index}", [
            str(BIN / "dagster-celery"), "worker", "start", "-A", celery_app,
            "-y", str(REPO / "deploy" / "celery.yaml"), "-q", queue, "-n", name,
            "--", "--concurrency", "1"], work / f"{mode}-worker{index}.log", env))
    services.append(start_service("dagster-daemon", [
        str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml")],
        work / f"{mode}-daemon.log", env))
    return services


def wait(what: str, condition, deadline: float, services):
    """The Celery test's wait, polling once a second: the instance it asks is being measured."""
    from credflow_assets_tests.test_production_celery import wait_for

    return wait_for(what, condition, deadline, services, poll=1.0)


def run_daemon(mode: str, config, stack_env, work: Path, therapists: int, prefix: str,
               celery_app: str = CELERY_APP) -> dict:
    import dagster as dg

    from credflow_assets.common.dagster_compat import sensor_cursor
    from credflow_assets.therapists.names import JOB_NAME
    from credflow_assets_tests.test_production_celery import stop_every_sensor_but, stop_services

    workers, queue, database, variables = mode_instance(work, mode)
    timing = event_timing(work, mode)
    child_env = {**os.environ, **variables, **timing, "PYTHONUNBUFFERED": "1",
                 "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}"}
    services = []
    try:
        with Environment(variables), dg.DagsterInstance.get() as instance:
            stop_every_sensor_but(instance, SENSOR)
            services = start_daemon_services(mode, work, child_env, queue, workers, celery_app)
            started = time.monotonic()
            wait("the sensor's first tick", lambda: sensor_cursor(instance, SENSOR),
                 started + 300, services)
            ready = time.monotonic() - started
            seed(config, stack_env, therapists, prefix=prefix)
            available = time.time()
            cpu_before = cpu_seconds_below(os.getpid())
            deadline = time.monotonic() + max(600, 30 * therapists)
            filters = dg.RunsFilter(job_name=JOB_NAME)

            def all_finished():
                records = instance.get_run_records(filters=filters)
                finished = [r for r in records if r.dagster_run.status.value in TERMINAL]
                return len(records) >= therapists and len(finished) == len(records)

            wait(f"{therapists} runs to finish", all_finished, deadline, services)
            cpu = cpu_seconds_below(os.getpid()) - cpu_before
            result = read_runs(instance, available, event_intervals(timing))
            result["daemon_ready_seconds"] = ready
            result["cpu_seconds"] = cpu
    except BaseException:
        for service in services:
            print(f"===== {service.name} ({service.log_path}) =====\n{service.log[-3000:]}")
        raise
    finally:
        stop_services(services)
        if workers:
            drop_celery_resources(queue, database)
    result["wall_seconds"] = result["last_end"] - available
    result["processing_seconds"] = result["last_end"] - result["first_run_created"]
    return result


# ------------------------------------------------------------------------------ the event log


def milestones(instance, record) -> dict[str, float]:
    """The run's milestones (epoch seconds), from its record and its event log."""
    import dagster as dg

    points = {"created": _epoch(record.create_timestamp)}
    types = dg.DagsterEventType
    firsts = {types.RUN_STARTING: "RUN_STARTING",
              types.RUN_START: "RUN_START", types.STEP_START: "STEP_START"}
    step_ends = {types.STEP_OUTPUT, types.ASSET_CHECK_EVALUATION, types.STEP_SUCCESS,
                 types.STEP_FAILURE, types.ASSET_MATERIALIZATION}
    for entry in instance.all_logs(record.dagster_run.run_id):
        event = entry.dagster_event
        if event is None:
            continue
        if event.event_type == types.STEP_START:
            points["pid"] = event.pid
        if event.event_type in firsts:
            points.setdefault(firsts[event.event_type], entry.timestamp)
        elif event.event_type in step_ends:
            points["step_end"] = entry.timestamp
        elif event.event_type in (types.RUN_SUCCESS, types.RUN_FAILURE):
            points["run_end"] = entry.timestamp
    points.setdefault("RUN_STARTING", points["created"])  # sync: no queue, no launch
    return points


def mark_slot_starts(runs: list[dict[str, float]]) -> None:
    """Each run's slot start: RUN_STARTING, or the end of the previous run in the same process
    (a Celery pool process runs one after another) when that came later."""
    by_process: dict[float, list[dict[str, float]]] = {}
    for points in runs:
        by_process.setdefault(points.get("pid"), []).append(points)
    for points in runs:
        previous_ends = [other["run_end"] for other in by_process[points.get("pid")]
                         if other is not points and "run_end" in other and "RUN_START" in points
                         and other["run_end"] <= points["RUN_START"]]
        points["slot_start"] = max([points["RUN_STARTING"], *previous_ends])


def _engine_error(event) -> str | None:
    """The error an engine event carries (e.g. "Could not load job definition"), if any."""
    if event.event_type_value != "ENGINE_EVENT":
        return None
    error = getattr(event.event_specific_data, "error", None)
    if error:
        return error.to_string()[-600:]
    # A run process that died says so in words only (Dagster's get_run_crash_explanation).
    return "" if "unexpectedly" in (event.message or "") else None


def _epoch(value: datetime) -> float:
    return value.timestamp()


def read_runs(instance, available: float, writes: dict[int, list[tuple[float, float]]]) -> dict:
    """Per-run phases, work and overhead of every run of the therapist job."""
    import dagster as dg

    from credflow_assets.therapists.names import JOB_NAME

    records = instance.get_run_records(filters=dg.RunsFilter(job_name=JOB_NAME))
    points_by_run = {record.dagster_run.run_id: milestones(instance, record) for record in records}
    mark_slot_starts(list(points_by_run.values()))
    phases = {phase: [] for phase in PHASES}
    work, overhead, lifetimes, events = [], [], [], []
    kinds: Counter = Counter()
    event_seconds = []
    for record in records:
        points = points_by_run[record.dagster_run.run_id]
        for phase, (begin, end) in zip(PHASES, zip(MILESTONES, MILESTONES[1:])):
            if begin in points and end in points:
                phases[phase].append(points[end] - points[begin])
        windows = compute_windows(instance, record.dagster_run.run_id)
        run_writes = writes.get(points.get("pid"), [])
        # Work excludes Dagster's event writes inside the step, as bench/RESULTS.md §4 does.
        run_work = sum(end - start - seconds_inside(run_writes, start, end)
                       for start, end in windows.values())
        lifetime = points["run_end"] - points["slot_start"]
        event_seconds.append(seconds_inside(run_writes, points["slot_start"], points["run_end"]))
        work.append(run_work)
        lifetimes.append(lifetime)
        overhead.append(lifetime - run_work)
        logs = instance.all_logs(record.dagster_run.run_id)
        events.append(len(logs))
        kinds.update(entry.dagster_event.event_type_value if entry.dagster_event else "log line"
                     for entry in logs)
    statuses = [record.dagster_run.status.value for record in records]
    # A run that fails before its step (its process crashed, its code did not load) says why in
    # an engine event; the RUN_FAILURE then says only that it was marked failed.
    failures = [(entry.dagster_event.message or "", _engine_error(entry.dagster_event))
                for record in records
                if record.dagster_run.status.value != "SUCCESS"
                for entry in instance.all_logs(record.dagster_run.run_id)
                if entry.dagster_event and (entry.dagster_event.event_type in (
                    dg.DagsterEventType.STEP_FAILURE, dg.DagsterEventType.RUN_FAILURE)
                    or _engine_error(entry.dagster_event) is not None)]
    failures = [message + (f": {error}" if error else "")
                for message, error in failures]
    created = sorted(_epoch(record.create_timestamp) for record in records)
    return {
        "runs": len(records),
        "failed": sum(status != "SUCCESS" for status in statuses),
        "failure_messages": [(message or "")[:900] for message in failures[:6]],
        "first_run_created_after": created[0] - available if created else None,
        "first_run_created": created[0] if created else available,
        "last_end": max([r.end_time for r in records if r.end_time] or [available]),
        "phase_median": {phase: statistics.median(values) if values else None
                         for phase, values in phases.items()},
        "phase_total": {phase: sum(values) for phase, values in phases.items()},
        "work_seconds": sum(work),
        "run_lifetime_seconds": sum(lifetimes),
        "run_overhead_seconds": sum(overhead),
        "events_per_run_median": statistics.median(events) if events else 0,
        "event_write_seconds": sum(event_seconds),
        "event_write_seconds_per_run_median": statistics.median(event_seconds or [0]),
        "events_per_run_by_type": {kind: round(count / max(1, len(records)), 2)
                                   for kind, count in kinds.most_common()},
    }


# ------------------------------------------------------------------------------ main


def report(results: dict, therapists: int) -> None:
    files = 3 * therapists
    base = results.get("sync")
    rows = []
    for mode, result in results.items():
        wall = result["wall_seconds"]
        per_file = wall / files
        rows.append([mode, result["runs"], result["failed"], f"{wall:.0f}",
                     f"{files / wall * 3600:,.0f}", f"{per_file:.2f}",
                     f"{per_file / (base['wall_seconds'] / files):.2f}×" if base else "-",
                     f"{result['run_overhead_seconds'] / result['run_lifetime_seconds']:.0%}",
                     f"{result['first_run_created_after']:.1f}",
                     f"{result['processing_seconds']:.0f}",
                     f"{result['processing_seconds'] / base['processing_seconds']:.2f}×"
                     if base else "-",
                     f"{result['cpu_seconds'] / files:.2f}",
                     f"{result['cpu_seconds'] / base['cpu_seconds']:.2f}×" if base else "-"])
    print(f"\nMPF through each path: {therapists} therapists × 3 files, the same files per mode")
    print(table(["mode", "runs", "failed", "wall s", "files/hour", "s/file", "vs sync",
                 "run overhead (share of run time)", "first run after s",
                 "first run → last end s", "vs sync, from first run",
                 "CPU s/file (every process)", "CPU vs sync"], rows))
    print("\nper run, median seconds (from the event log):")
    print(table(["phase", *results], [
        [phase, *[_seconds(result["phase_median"][phase]) for result in results.values()]]
        for phase in PHASES] + [
        ["events stored per run", *[f"{r['events_per_run_median']:.0f}" for r in results.values()]],
        ["their writes, in the run's process", *[
            f"{r['event_write_seconds_per_run_median']:.2f}" for r in results.values()]]]))
    if base:
        sync = base["sync"]
        wall = base["wall_seconds"]
        sync_overhead = sync["runs_seconds"] - sync["work_seconds"]
        print(f"\nsync, as bench/RESULTS.md §4 splits it: work {sync['work_seconds']:.0f}s, "
              f"Dagster run overhead {sync_overhead:.0f}s ({sync_overhead / wall:.0%} of wall), "
              f"sensor ticks + sync {wall - sync['runs_seconds']:.0f}s; "
              f"{sync['events']} events stored in {sync['event_seconds']:.0f}s")
    print("target: the daemon path within 2× of sync per file; run overhead ≤ 15 %")


def _seconds(value) -> str:
    return "-" if value is None else f"{value:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--therapists", type=int)
    parser.add_argument("--modes", default=",".join(MODES))
    parser.add_argument("--celery-app", default=CELERY_APP,
                        help=f"the Celery workers' app (default {CELERY_APP}, as deployed)")
    parser.add_argument("--json")
    args = parser.parse_args()
    therapists = args.therapists or (10 if args.quick else 30)
    modes = [mode.strip() for mode in args.modes.split(",") if mode.strip()]
    unknown = set(modes) - set(MODES)
    if unknown:
        parser.error(f"unknown mode(s) {', '.join(sorted(unknown))}; "
                     f"choose from {', '.join(MODES)}")
    info = print_machine()
    results, loads = {}, {}
    with bench_workdir("daemon") as work, bench_stack(work) as (_, config, stack_env):
        for index, mode in enumerate(modes):
            prefix = f"{mode[0]}{index}"
            print(f"\n== {mode}: {therapists} therapists (ids {prefix}-…), "
                  f"load {os.getloadavg()[0]:.1f}", flush=True)
            if mode == "sync":
                results[mode] = run_sync(config, stack_env, work, therapists, prefix)
            else:
                results[mode] = run_daemon(mode, config, stack_env, work, therapists, prefix,
                                           args.celery_app)
            loads[mode] = [round(value, 2) for value in os.getloadavg()]
            print(f"   wall {results[mode]['wall_seconds']:.0f}s, {results[mode]['runs']} runs, "
                  f"load after {loads[mode]}", flush=True)
            for message in results[mode]["failure_messages"]:
                print(f"   failed: {message}", flush=True)
            if results[mode]["failure_messages"]:
                # The work directory goes at the end: keep what tells why.
                kept = Path(tempfile.mkdtemp(prefix=f"cfb-failed-{mode}-", dir="/tmp"))
                for log in work.glob(f"{mode}-*.log"):
                    shutil.copy(log, kept)
                print(f"   its daemon's and workers' logs: {kept}", flush=True)
    report(results, therapists)
    write_json(args.json, {"machine": info, "therapists": therapists, "results": results,
                           "load_after_mode": loads})


if __name__ == "__main__":
    main()
