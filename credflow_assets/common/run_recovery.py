"""Runs whose process died are found and finished; transient failures are retried, permanent
ones are not.

Dagster's own primitives do most of it (`dagster.yaml`):
- `run_retries` re-executes a failed run, at most `max_retries` times, when its failure is not a
  step's (the run worker died) or when the run is tagged `dagster/retry_on_asset_or_op_failure`.
  `mark_transient_failures`, a failure hook on every flow job, adds that tag when a step failed
  for a transient reason (an outage, throttling, a timeout): permanent failures (a bad
  signature, wrong columns) wait for a corrected upload and are not retried.
- `run_monitoring` fails a run whose worker the launcher reports dead (Celery, Kubernetes) or
  that never started.

What Dagster leaves open: the default launcher cannot tell the run monitor whether its run
worker is alive (only the code server that started it notices its death, and not if the code
server went with it), and a run `credflow sync` executes in its own process has no worker at
all. Such a run stays
STARTED forever when its process is killed. `fail_stopped_runs` finds them by the process that
ran them (`credflow/run_pid` and `credflow/run_host`, which sync puts on its runs, or the run
worker's own "Started process for run" event) and marks them failed with a sentence that says
so; `run_retries` then requests them again. The `stopped_runs_sensor` does this under the
daemon; `credflow sync` does it before its sensors, and retries what the daemon would
(`retry_failed_runs`) when no daemon is running.
"""

from __future__ import annotations

import os
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass

import dagster as dg

from credflow_assets.common import processes
from credflow_assets.common.tick_log import TickLog

RUN_PID_TAG = "credflow/run_pid"
RUN_HOST_TAG = "credflow/run_host"
# On a failed run: transient, permanent or process_stopped.
FAILURE_KIND_TAG = "credflow/failure_kind"

# Dagster's own run tags (dagster._core.storage.tags), written by name: they are the contract
# between a run and the daemon's `run_retries`.
RETRY_ON_STEP_FAILURE_TAG = "dagster/retry_on_asset_or_op_failure"
WILL_RETRY_TAG = "dagster/will_retry"
AUTO_RETRY_RUN_ID_TAG = "dagster/auto_retry_run_id"
RETRY_NUMBER_TAG = "dagster/retry_number"
PARENT_RUN_ID_TAG = "dagster/parent_run_id"
ROOT_RUN_ID_TAG = "dagster/root_run_id"

STOPPED_SENSOR_NAME = "stopped_runs_sensor"
STOPPED_SENSOR_INTERVAL_SECONDS = 60
# A run that failed longer ago than this is not retried by `credflow sync`.
RETRY_LOOKBACK_SECONDS = 7 * 24 * 3600

# Exception classes (anywhere in a failure's cause chain) that mean "try again later".
TRANSIENT_ERRORS = frozenset({
    "ConnectionError", "ConnectionResetError", "ConnectionRefusedError", "ConnectionAbortedError",
    "BrokenPipeError", "TimeoutError", "timeout", "socket.timeout",
    "EndpointConnectionError", "ConnectTimeoutError", "ReadTimeoutError", "ConnectionClosedError",
    "SSHException", "NoValidConnectionsError", "TransportError", "ServerNotFoundError",
})


def process_tags() -> dict[str, str]:
    """Tags naming this process, for a run it executes itself (`credflow sync`, reparse)."""
    return {RUN_PID_TAG: str(os.getpid()), RUN_HOST_TAG: socket.gethostname()}


# -- transient step failures ---------------------------------------------------------------------

def is_transient(error: BaseException | None) -> bool:
    """Whether an asset's exception is an outage, throttling or a timeout: a `dg.Failure` says
    so itself (`failure_kind` metadata, or `allow_retries` as the provider flow sets it);
    otherwise the classes in its cause chain decide."""
    seen = 0
    while error is not None and seen < 20:
        if isinstance(error, dg.Failure):
            kind = (error.metadata or {}).get("failure_kind")
            if kind is not None:
                return getattr(kind, "value", kind) == "transient"
        if type(error).__name__ in TRANSIENT_ERRORS or _is_transient_http(error):
            return True
        error = error.__cause__ or error.__context__
        seen += 1
    return False


def _is_transient_http(error: BaseException) -> bool:
    """Drive's (and other HTTP APIs') throttling and server errors, and no answer at all."""
    if not hasattr(error, "status") or not hasattr(error, "operation"):  # DriveError's shape
        status = getattr(getattr(error, "resp", None), "status", None)  # googleapiclient
    else:
        status = error.status
        if status is None:
            return True  # no HTTP response: the server was unreachable
    try:
        status = int(status)
    except (TypeError, ValueError):
        return False
    return status == 429 or 500 <= status < 600


@dg.failure_hook(name="mark_transient_failures")
def mark_transient_failures(context: dg.HookContext) -> None:
    """After a step failed (its own retries spent), the run says which kind of failure it was
    (`credflow/failure_kind`): a transient one is also tagged so that Dagster's `run_retries`
    requests it again later; a permanent one waits for a corrected file."""
    if is_transient(context.op_exception):
        context.instance.add_run_tags(context.run_id, {RETRY_ON_STEP_FAILURE_TAG: "true",
                                                       FAILURE_KIND_TAG: "transient"})
    else:
        context.instance.add_run_tags(context.run_id, {FAILURE_KIND_TAG: "permanent"})


# -- runs whose process stopped ------------------------------------------------------------------

@dataclass(frozen=True)
class StoppedRun:
    run: dg.DagsterRun
    pid: int
    host: str

    @property
    def reason(self) -> str:
        partition = self.run.tags.get("dagster/partition")
        what = f"partition {partition}" if partition else f"run {self.run.run_id}"
        return (f"{self.run.job_name} {what}: the process running it stopped (pid {self.pid} "
                f"on {self.host}) before it finished; the run is requested again")


def stopped_runs(instance: dg.DagsterInstance, *, limit: int = 200) -> list[StoppedRun]:
    """Runs that say they are under way while the process that ran them on this host is gone."""
    host = socket.gethostname()
    found = []
    for record in instance.get_run_records(
            dg.RunsFilter(statuses=[dg.DagsterRunStatus.STARTED]), limit=limit):
        run = record.dagster_run
        where = _process_of(instance, run)
        if where is None or where[1] != host:
            continue  # another machine's run: the launcher's health check is for those
        pid = where[0]
        started = record.start_time or record.create_timestamp.timestamp()
        if not _process_alive_since(pid, started):
            found.append(StoppedRun(run, pid, host))
    return found


def fail_stopped_runs(instance: dg.DagsterInstance,
                      progress: Callable[[str], None] | None = None) -> list[StoppedRun]:
    """Mark each stopped run failed, with the reason; Dagster's `run_retries` (or
    `retry_failed_runs`) requests it again."""
    found = stopped_runs(instance)
    for stopped in found:
        current = instance.get_run_by_id(stopped.run.run_id)
        if current is None or current.status != dg.DagsterRunStatus.STARTED:
            continue  # it finished after all, or another sweep got there first
        instance.add_run_tags(stopped.run.run_id, {FAILURE_KIND_TAG: "process_stopped"})
        instance.report_run_failed(current, stopped.reason)
        if progress:
            progress(stopped.reason)
    return found


def _process_of(instance: dg.DagsterInstance, run: dg.DagsterRun) -> tuple[int, str] | None:
    """(pid, host) of the process running `run`: sync's tags, else the run worker's event."""
    if RUN_PID_TAG in run.tags:
        return int(run.tags[RUN_PID_TAG]), run.tags.get(RUN_HOST_TAG, "")
    # The default launcher starts the run worker on this machine; it records its pid in an
    # engine event. Other launchers' workers live elsewhere, and their health checks are
    # Dagster's run monitoring's.
    if not isinstance(instance.run_launcher, dg.DefaultRunLauncher):
        return None
    for record in instance.get_records_for_run(
            run.run_id, of_type=dg.DagsterEventType.ENGINE_EVENT, limit=20).records:
        event = record.event_log_entry.dagster_event
        metadata = event.engine_event_data.metadata if event and event.engine_event_data else {}
        pid = metadata.get("pid")
        if pid is not None and "Started process for run" in (event.message or ""):
            return int(getattr(pid, "value", pid)), socket.gethostname()
    return None


def _process_alive_since(pid: int, since: float) -> bool:
    """Whether process `pid` runs (a zombie runs no more code) and was started before `since`
    (a pid reused by a later process is not the run's)."""
    if not processes.exists(pid):
        return False
    ticks = processes.start_ticks(pid)
    if ticks == processes.ZOMBIE:
        return False
    started = processes.started_at(ticks) if ticks is not None else None
    return started is None or started <= since + 1.0


@dg.sensor(
    name=STOPPED_SENSOR_NAME, minimum_interval_seconds=STOPPED_SENSOR_INTERVAL_SECONDS,
    default_status=dg.DefaultSensorStatus.RUNNING,
    description="Finds runs left STARTED by a process that stopped on this machine (a killed "
    "credflow sync, or a run worker of the default launcher) and marks them failed, saying so; "
    "Dagster's run retries (dagster.yaml run_retries) then request them again.",
)
def stopped_runs_sensor(context: dg.SensorEvaluationContext) -> dg.SkipReason:
    found = fail_stopped_runs(context.instance, progress=TickLog(context).warning)
    return dg.SkipReason(f"{len(found)} stopped run(s) marked failed" if found
                         else "no stopped run")


# -- retries where no daemon runs ----------------------------------------------------------------

def runs_to_retry(instance: dg.DagsterInstance, job_names: Iterable[str]) -> list[dg.DagsterRun]:
    """Failed runs Dagster marked to retry (`dagster/will_retry`) that no retry took over yet:
    what the daemon's `run_retries` would re-execute, for `credflow sync` to run when no daemon
    does."""
    jobs = set(job_names)
    records = instance.get_run_records(
        dg.RunsFilter(statuses=[dg.DagsterRunStatus.FAILURE], tags={WILL_RETRY_TAG: "true"},
                      updated_after=_datetime(time.time() - RETRY_LOOKBACK_SECONDS)),
        limit=500)
    return [record.dagster_run for record in records
            if record.dagster_run.job_name in jobs
            and AUTO_RETRY_RUN_ID_TAG not in record.dagster_run.tags]


def retry_tags(failed: dg.DagsterRun) -> dict[str, str]:
    """The tags of `failed`'s retry, as the daemon's re-execution gives them."""
    kept = {key: value for key, value in failed.tags.items()
            if not key.startswith(("dagster/", ".dagster/"))
            and key not in (RUN_PID_TAG, RUN_HOST_TAG, FAILURE_KIND_TAG)}
    partition = failed.tags.get("dagster/partition")
    return {
        **kept,
        **({"dagster/partition": partition} if partition else {}),
        PARENT_RUN_ID_TAG: failed.run_id,
        ROOT_RUN_ID_TAG: failed.root_run_id or failed.run_id,
        RETRY_NUMBER_TAG: str(int(failed.tags.get(RETRY_NUMBER_TAG, "0")) + 1),
    }


def _datetime(timestamp: float):
    from datetime import datetime, timezone

    return datetime.fromtimestamp(timestamp, tz=timezone.utc)
