"""`credflow sync`: evaluate every sensor and run what it requests, in this process, to completion.

A run launched by the daemon costs seconds (a process for the run and one per step); executed
in-process against the same instance it costs about half a second (SERVICES.md). Sync makes
its runs as the daemon makes its own: with the code location's origin (so the UI lists them
under their job and on the timeline, and re-executes them), the tags the daemon gives
(`dagster/sensor_name`, `dagster/run_key`) and the flow's own (`run_tags.flow_run_tags`), so
the daemon's run-key dedupe recognises them. Sync reads and stores each sensor's cursor in the
daemon's own sensor state: the two advance one cursor, so a second sync, or the daemon's next
tick, requests nothing sync already did.

Exactly one run per file. One sync at a time per instance (a lock in DAGSTER_HOME: a second
sync waits). A sensor the daemon is running is left to the daemon, and one stopped in the UI is
skipped unless named: two evaluators of one sensor could request a file twice.

Nothing stuck. Before its sensors, sync fails the runs a killed process left STARTED
(`run_recovery.fail_stopped_runs`) and, when no daemon runs, re-executes what Dagster's
`run_retries` would: those, and runs that failed for a transient reason.

A sensor is ticked until a tick launches nothing, except a reconciliation sensor: it lists one
bounded stretch of its bucket per tick, and a stretch with nothing to do says nothing about the
rest, so it is ticked until it has listed the whole bucket once from where its cursor stood.
"""

from __future__ import annotations

import fcntl
import os
import time
import uuid
from collections.abc import Callable
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

import dagster as dg

from credflow_assets.common.dagster_compat import (
    execute_run_in_process,
    sensor_context,
    sensor_cursor,
    sensor_stopped,
    store_sensor_cursor,
)
from credflow_assets.common.messages import (
    error_message as innermost_error_message,
    exception_message,
)
from credflow_assets.common.reconciliation import ReconcileCursor, is_reconciliation_sensor
from credflow_assets.common.run_recovery import (
    AUTO_RETRY_RUN_ID_TAG,
    fail_stopped_runs,
    process_tags,
    retry_tags,
    runs_to_retry,
)
from credflow_assets.flows import flow_run_tags

# The tags the sensor daemon puts on the runs it launches.
RUN_KEY_TAG = "dagster/run_key"
SENSOR_NAME_TAG = "dagster/sensor_name"
# The instance's event log keeps every event whatever this says; it only decides what the
# terminal shows besides sync's own progress lines.
QUIET_CONSOLE = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
# A sensor handles a bounded batch per tick; sync ticks it again while it still finds work (a
# reconciliation sensor: until its pass is done). A bound all the same, should a sensor never
# say it is done: 1,000 one-page reconciliation ticks are a pass over a million keys.
MAX_TICKS_PER_SENSOR = 1000
# A second sync waits this long for the first to finish before it gives up.
SYNC_LOCK_WAIT_SECONDS = 30 * 60


@dataclass
class RunOutcome:
    sensor: str
    job: str
    partition: str | None
    run_id: str
    success: bool
    seconds: float
    error: str | None = None
    summary: str | None = None  # a materialization's `summary` metadata, e.g. counts


@dataclass
class SyncReport:
    runs: list[RunOutcome] = field(default_factory=list)
    skipped_run_keys: int = 0
    # Requests for a partition that already failed in this sync wait for the next one, so a
    # sensor that retries failures (reconciliation) cannot loop within one sync.
    deferred_after_failure: int = 0
    partitions_added: int = 0
    sensor_errors: dict[str, str] = field(default_factory=dict)

    @property
    def failed(self) -> list[RunOutcome]:
        return [run for run in self.runs if not run.success]

    def failed_in_this_sync(self, job: str, partition: str | None) -> bool:
        return any(run.job == job and run.partition == partition for run in self.failed)

    @property
    def ok(self) -> bool:
        return not self.failed and not self.sensor_errors


def sync(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    *,
    sensor_names: list[str] | None = None,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
) -> SyncReport:
    with one_sync_at_a_time(instance, progress):
        report = SyncReport()
        # Runs a killed process left STARTED are failed first, so that their files are
        # retried below rather than hidden.
        fail_stopped_runs(instance, progress)
        daemon = daemon_running(instance)
        sensors = _sensors_to_tick(defs, instance, sensor_names, daemon, progress)
        # A run-status sensor's first tick only notes where the runs stand: tick it before
        # this sync's runs, so that it sees their failures.
        _tick_sensors(defs, instance, report,
                      [sensor for sensor in sensors
                       if isinstance(sensor, dg.RunStatusSensorDefinition)
                       and sensor_cursor(instance, sensor.name) is None], progress, verbose)
        if not daemon:
            _retry_failed_runs(defs, instance, report, progress, verbose)
        _tick_sensors(defs, instance, report, sensors, progress, verbose)
        return report


def _sensors_to_tick(defs, instance, sensor_names, daemon: bool, progress) -> list:
    repository = defs.get_repository_def()
    # Event sensors first; then the reconciliation sensors, whose pass catches what the events
    # missed (and what an event sensor left queued when one of its ticks launched nothing);
    # run-status sensors (failure notifications) last, so they see this sync's runs.
    sensors = sorted(
        repository.sensor_defs,
        key=lambda sensor: (isinstance(sensor, dg.RunStatusSensorDefinition),
                            is_reconciliation_sensor(sensor), sensor.name),
    )
    if sensor_names is not None:
        unknown = set(sensor_names) - {sensor.name for sensor in sensors}
        if unknown:
            raise ValueError(f"no such sensor: {', '.join(sorted(unknown))}")
        sensors = [sensor for sensor in sensors if sensor.name in sensor_names]
    chosen = []
    for sensor in sensors:
        stopped = sensor_stopped(instance, sensor.name)
        if stopped and sensor_names is None:
            # A sensor stopped in the UI is paused for sync too, unless named.
            progress(f"sensor {sensor.name} is stopped in the Dagster UI; skipped "
                     "(start it there, or name it with --sensor)")
        elif daemon and not stopped:
            # Two evaluators of one sensor could request one file twice.
            progress(f"sensor {sensor.name}: the Dagster daemon is running it; skipped")
        else:
            chosen.append(sensor)
    return chosen


def _tick_sensors(defs, instance, report: SyncReport, sensors: list, progress,
                  verbose: bool) -> None:
    all_resources = defs.get_repository_def().get_top_level_resources()
    for sensor in sensors:
        try:
            # As the sensor daemon does: dynamic partitions are read from this instance.
            with dg.partition_loading_context(dynamic_partitions_store=instance):
                _drain_sensor(defs, instance, sensor, report, progress, verbose,
                              # Only what the sensor uses: building every client per
                              # tick cost more than a second.
                              resources={key: all_resources[key]
                                         for key in sensor.required_resource_keys})
        except Exception as error:  # one broken sensor must not hide the others' work
            # Its message, as a failed run's reads: the class is for the traceback's reader.
            report.sensor_errors[sensor.name] = exception_message(error)
            progress(f"sensor {sensor.name} failed: {report.sensor_errors[sensor.name]}")


# The sensor daemon writes a heartbeat every 30 s. Dagster's own status calls a daemon healthy
# for 30 minutes after its last one, which kept sync from ticking any sensor for half an hour
# after `credflow dev` stopped; missing four heartbeats, the daemon is gone.
DAEMON_GONE_AFTER_SECONDS = 120


def daemon_running(instance: dg.DagsterInstance) -> bool:
    """Whether a Dagster daemon is ticking this instance's sensors now (its heartbeat)."""
    if not instance.is_persistent:
        return False
    heartbeat = instance.get_daemon_heartbeats().get("SENSOR")
    return heartbeat is not None and time.time() - heartbeat.timestamp <= \
        DAEMON_GONE_AFTER_SECONDS


@contextmanager
def one_sync_at_a_time(instance: dg.DagsterInstance, progress: Callable[[str], None]):
    """Two syncs of one instance at once would run some files twice: the second waits."""
    if not instance.is_persistent:
        yield
        return
    path = Path(instance.root_directory) / "credflow-sync.lock"
    with open(path, "a+") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            lock.seek(0)
            holder = lock.read().strip() or "another process"
            progress(f"another credflow sync ({holder}) is running on this instance; waiting "
                     "for it to finish")
            deadline = time.monotonic() + SYNC_LOCK_WAIT_SECONDS
            while True:
                try:
                    fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() > deadline:
                        raise SyncBusy(f"another credflow sync ({holder}) has held the "
                                       f"instance for {SYNC_LOCK_WAIT_SECONDS // 60} minutes; "
                                       "try again when it has finished") from None
                    time.sleep(1)
        lock.seek(0)
        lock.truncate()
        lock.write(f"pid {os.getpid()}")
        lock.flush()
        try:
            yield
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


class SyncBusy(RuntimeError):
    """Another sync held the instance too long."""


def _retry_failed_runs(defs, instance, report: SyncReport, progress, verbose: bool) -> None:
    """Re-execute the failed runs Dagster's `run_retries` would (a killed process, a transient
    failure), as the daemon does when it runs: the retry names its parent, and the parent its
    retry, so that neither the daemon nor a later sync retries it again."""
    job_names = {job.name for job in defs.get_repository_def().get_all_jobs()}
    for failed in runs_to_retry(instance, job_names):
        run_id = str(uuid.uuid4())
        instance.add_run_tags(failed.run_id, {AUTO_RETRY_RUN_ID_TAG: run_id})
        started = time.monotonic()
        result = execute_run_in_process(
            defs, instance, failed.job_name,
            run_config=execution_run_config(None, verbose),
            partition_key=failed.tags.get("dagster/partition"),
            tags={**retry_tags(failed), **process_tags()},
            asset_selection=list(failed.asset_selection) if failed.asset_selection else None,
            run_id=run_id, parent_run_id=failed.run_id,
            root_run_id=failed.root_run_id or failed.run_id,
        )
        outcome = _outcome("run_retries", failed.job_name, failed.tags.get("dagster/partition"),
                           result, started)
        report.runs.append(outcome)
        progress(_progress_line(report, outcome, f"retry of run {failed.run_id[:8]}"))


def _drain_sensor(defs, instance, sensor, report: SyncReport, progress, verbose: bool,
                  resources) -> None:
    reconciling = is_reconciliation_sensor(sensor)
    pass_start = ReconcileCursor.from_json(
        sensor_cursor(instance, sensor.name)) if reconciling else None
    for _ in range(MAX_TICKS_PER_SENSOR):
        cursor = sensor_cursor(instance, sensor.name)
        with sensor_context(instance, defs, sensor.name, cursor, resources) as context:
            tick = sensor.evaluate_tick(context)
        report.partitions_added += _apply_partition_requests(
            instance, tick.dynamic_partitions_requests or []
        )
        launched = 0
        for request in tick.run_requests or []:
            if request.run_key and _already_ran(instance, sensor.name, request.run_key):
                report.skipped_run_keys += 1
                continue
            if report.failed_in_this_sync(request.job_name or sensor.job_name,
                                          request.partition_key):
                report.deferred_after_failure += 1
                continue
            outcome = _execute(defs, instance, sensor, request, verbose)
            report.runs.append(outcome)
            launched += 1
            progress(_progress_line(report, outcome))
        # The cursor is stored only after the tick's runs are recorded: a crash before this
        # line re-reads the same work next time, and the run keys make that harmless.
        if tick.cursor is not None and tick.cursor != cursor:
            store_sensor_cursor(instance, sensor, tick.cursor)
        if reconciling:
            # Ticks that launch nothing go on: what the pass has not listed yet may differ.
            if ReconcileCursor.from_json(tick.cursor or cursor).covers_a_pass_since(pass_start):
                return
        elif isinstance(sensor, dg.RunStatusSensorDefinition):
            # It handles a few finished runs a tick (Dagster's limit): on, until it has seen all.
            if tick.cursor is None or tick.cursor == cursor:
                return
        elif not launched:
            return
    progress(f"sensor {sensor.name}: stopped after {MAX_TICKS_PER_SENSOR} ticks with work "
             "left; the next sync (or the daemon) goes on from its cursor")


def _apply_partition_requests(instance, requests) -> int:
    added = 0
    for request in requests:
        if isinstance(request, dg.AddDynamicPartitionsRequest):
            new_keys = [
                key for key in request.partition_keys
                if not instance.has_dynamic_partition(request.partitions_def_name, key)
            ]
            if new_keys:
                instance.add_dynamic_partitions(request.partitions_def_name, new_keys)
                added += len(new_keys)
        elif isinstance(request, dg.DeleteDynamicPartitionsRequest):
            for key in request.partition_keys:
                instance.delete_dynamic_partition(request.partitions_def_name, key)
    return added


def _already_ran(instance, sensor_name: str, run_key: str) -> bool:
    runs = instance.get_runs(filters=dg.RunsFilter(tags={RUN_KEY_TAG: run_key}), limit=20)
    return any(run.tags.get(SENSOR_NAME_TAG) == sensor_name for run in runs)


def execution_run_config(run_config: dict | None, verbose: bool) -> dict | None:
    """The request's run config, with Dagster's console logger quieted unless verbose."""
    if verbose or (run_config and "loggers" in run_config):
        return run_config or None
    return {**(run_config or {}), **QUIET_CONSOLE}


def _execute(defs, instance, sensor, request: dg.RunRequest, verbose: bool) -> RunOutcome:
    job_name = request.job_name or sensor.job_name
    tags = {**flow_run_tags(job_name, request.asset_selection, request.partition_key),
            **request.tags, SENSOR_NAME_TAG: sensor.name,
            # A run in this process: should the process die, `fail_stopped_runs` finds it.
            **process_tags()}
    if request.run_key:
        tags[RUN_KEY_TAG] = request.run_key
    started = time.monotonic()
    result = execute_run_in_process(
        defs, instance, job_name,
        run_config=execution_run_config(request.run_config, verbose),
        partition_key=request.partition_key,
        tags=tags,
        asset_selection=request.asset_selection,
    )
    return _outcome(sensor.name, job_name, request.partition_key, result, started)


def _outcome(source: str, job_name: str, partition: str | None, result,
             started: float) -> RunOutcome:
    return RunOutcome(
        sensor=source,
        job=job_name,
        partition=partition,
        run_id=result.run_id,
        success=result.success,
        seconds=time.monotonic() - started,
        error=None if result.success else failure_reason(result),
        summary=run_summary(result),
    )


def _progress_line(report: SyncReport, outcome: RunOutcome, what: str = "") -> str:
    status = (f"ok{': ' + outcome.summary if outcome.summary else ''}"
              if outcome.success else f"FAILED: {outcome.error}")
    return (f"[{len(report.runs)}] {outcome.job}"
            + (f" partition {outcome.partition}" if outcome.partition else "")
            + (f" ({what})" if what else "")
            + f" run {outcome.run_id[:8]} {status} ({outcome.seconds:.1f}s)")


def run_summary(result) -> str | None:
    summaries = []
    for event in result.all_events:
        if event.is_step_materialization:
            value = event.step_materialization_data.materialization.metadata.get("summary")
            if value is not None:
                summaries.append(str(value.value))
    return "; ".join(summaries) or None


def failure_reason(result) -> str:
    for event in result.all_events:
        if event.is_step_failure and event.step_failure_data.error:
            return innermost_error_message(event.step_failure_data.error)
        if event.is_failure and event.message:
            return event.message
    return "run failed"
