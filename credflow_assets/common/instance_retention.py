"""The Dagster instance stays bounded: old runs keep their outcome and lineage, lose their log.

Dagster keeps every event of every run forever (its own `retention` setting covers ticks only).
`prune_instance` takes the runs that finished before a cutoff and deletes, in batches:
- their event-log rows, except the kinds lineage, the UI and credflow's sensors read
  (KEPT_EVENT_TYPES): the run's lifecycle (so its status, start and end times stay true),
  step successes and failures (the run's counts; a failure's error is why the file failed),
  materializations, observations, planned and failed materializations (the partition pages'
  materialized and failed partitions), and check results. Log lines, step starts, inputs and
  outputs, engine and resource events go;
- their captured stdout/stderr (they can hold personal data, and grow without bound);
and, on their own age, sensor and schedule ticks (each instigator's newest stays).

Runs, their tags, dynamic partitions and the asset indexes (latest materialization, event tags,
check executions) are not touched: every row they point at is a kept one.

A finished prune remembers the cutoff it reached, so the next one looks only at runs updated
since (its cost follows the runs that finished in between, not the instance's age).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import asdict, dataclass
from datetime import datetime, timedelta, timezone
from typing import TYPE_CHECKING

import dagster as dg

from credflow_assets.common import dagster_compat
from credflow_assets.common.partition_archive import PartitionSet, archive_partitions

if TYPE_CHECKING:
    from credflow_assets.config import RetentionConfig

DagsterEventType = dg.DagsterEventType

KEPT_EVENT_TYPES: frozenset[str] = frozenset(event_type.value for event_type in (
    # the run's lifecycle: the runs page's status and times, run-status sensors
    DagsterEventType.RUN_ENQUEUED, DagsterEventType.RUN_DEQUEUED,
    DagsterEventType.RUN_STARTING, DagsterEventType.RUN_START,
    DagsterEventType.RUN_SUCCESS, DagsterEventType.RUN_FAILURE,
    DagsterEventType.RUN_CANCELING, DagsterEventType.RUN_CANCELED,
    DagsterEventType.RUN_SUSPENDED, DagsterEventType.RUN_RESUMED,
    # the run's step counts; a STEP_FAILURE's error is the "why" of lineage and the uploader mail
    DagsterEventType.STEP_SUCCESS, DagsterEventType.STEP_FAILURE,
    DagsterEventType.STEP_EXPECTATION_RESULT,
    # what lineage and the partition pages read
    DagsterEventType.ASSET_MATERIALIZATION, DagsterEventType.ASSET_OBSERVATION,
    DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
    DagsterEventType.ASSET_FAILED_TO_MATERIALIZE,
    DagsterEventType.FRESHNESS_STATE_CHANGE,
    DagsterEventType.ASSET_CHECK_EVALUATION, DagsterEventType.ASSET_CHECK_EVALUATION_PLANNED,
))
FINISHED = [dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE,
            dg.DagsterRunStatus.CANCELED]
JOB_NAME = "instance_retention_job"
SCHEDULE_NAME = "instance_retention_schedule"
# Where a finished prune leaves the cutoff it reached (the run storage's key-value table).
WATERMARK_KEY = "credflow/retention/run_events_pruned_before"
DEFAULT_BATCH_SIZE = 200  # runs a batch (one DELETE, or one SQLite file each); ticks: ×5

Progress = Callable[[str], None]


@dataclass
class PruneReport:
    """What a prune removed (or, with dry_run, would remove)."""

    dry_run: bool
    run_events_before: str  # the cutoff, ISO UTC
    ticks_before: str
    runs_examined: int = 0  # finished runs looked at (since the last prune's cutoff)
    event_rows_removed: int = 0
    event_bytes_removed: int = 0  # the removed rows' serialized records
    disk_bytes_freed: int = 0  # SQLite run files compacted after the delete
    compute_log_files_removed: int = 0
    compute_log_bytes_removed: int = 0
    compute_logs_uncounted: bool = False  # a remote manager deletes without counting
    ticks_removed: int = 0
    tick_bytes_removed: int = 0
    # Their captured logs on this machine's disk; None: a remote manager's, deleted uncounted.
    tick_log_files_removed: int | None = 0
    seconds: float = 0.0
    storage: str = ""  # the event-log storage's class, e.g. SqliteEventLogStorage

    def as_dict(self) -> dict:
        return asdict(self)

    def summary(self) -> str:
        verb = "would remove" if self.dry_run else "removed"
        logs = ("compute logs deleted (uncounted)" if self.compute_logs_uncounted else
                f"{self.compute_log_files_removed} compute log file(s) "
                f"({_size(self.compute_log_bytes_removed)})")
        tick_logs = ("logs deleted (uncounted)" if self.tick_log_files_removed is None else
                     f"{self.tick_log_files_removed} log file(s)")
        return (f"{verb}: {self.event_rows_removed} event row(s) "
                f"({_size(self.event_bytes_removed)}) of "
                f"{self.runs_examined} run(s) finished before {self.run_events_before}; {logs}; "
                f"{self.ticks_removed} tick(s) ({_size(self.tick_bytes_removed)}, "
                f"{tick_logs}) from before {self.ticks_before}"
                + (f"; {_size(self.disk_bytes_freed)} freed on disk" if self.disk_bytes_freed
                   else "") + f" [{self.storage}, {self.seconds:.1f}s]")


def prune_instance(instance: dg.DagsterInstance, older_than: timedelta, *,
                   ticks_older_than: timedelta | None = None, dry_run: bool = False,
                   batch_size: int = DEFAULT_BATCH_SIZE,
                   progress: Progress | None = None) -> PruneReport:
    """Prune the run event logs and compute logs of runs finished more than `older_than` ago,
    and ticks older than `ticks_older_than` (default: `older_than`). See the module docstring
    for what stays. `progress` gets one line per batch."""
    started = time.monotonic()
    now = datetime.now(timezone.utc)
    cutoff = now - older_than
    ticks_cutoff = now - (older_than if ticks_older_than is None else ticks_older_than)
    report = PruneReport(dry_run=dry_run, run_events_before=_iso(cutoff),
                         ticks_before=_iso(ticks_cutoff),
                         storage=type(instance.event_log_storage).__name__)
    say = progress or (lambda line: None)
    since = dagster_compat.retention_watermark(instance, WATERMARK_KEY)
    for run_ids in finished_runs(instance, cutoff, since=since, batch_size=batch_size):
        _prune_batch(instance, run_ids, report, dry_run=dry_run)
        say(f"runs: {report.runs_examined} examined, {report.event_rows_removed} event row(s) "
            f"({_size(report.event_bytes_removed)})" + ("" if dry_run else " removed"))
    report.ticks_removed, report.tick_bytes_removed, report.tick_log_files_removed = \
        dagster_compat.prune_ticks(instance, ticks_cutoff.timestamp(),
                                   batch_size=batch_size * 5, dry_run=dry_run, progress=say)
    if not dry_run and (since is None or cutoff.timestamp() > since):
        dagster_compat.store_retention_watermark(instance, WATERMARK_KEY, cutoff.timestamp())
    report.seconds = round(time.monotonic() - started, 2)
    return report


def finished_runs(instance: dg.DagsterInstance, cutoff: datetime, *, since: float | None,
                  batch_size: int) -> Iterator[list[str]]:
    """Ids of the runs that finished before `cutoff`, a batch at a time, oldest first; with
    `since`, only those updated after it (a run's last update is at or after its end)."""
    # A second early: the filter is strict, and looking at a run twice costs nothing.
    after = datetime.fromtimestamp(since - 1, timezone.utc) if since is not None else None
    filters = dg.RunsFilter(statuses=FINISHED, updated_before=cutoff, updated_after=after)
    cursor = None
    while True:
        records = instance.get_run_records(filters, limit=batch_size, ascending=True,
                                           cursor=cursor)
        if not records:
            return
        yield [record.dagster_run.run_id for record in records
               if record.end_time is None or record.end_time < cutoff.timestamp()]
        cursor = records[-1].dagster_run.run_id


def _prune_batch(instance: dg.DagsterInstance, run_ids: list[str], report: PruneReport, *,
                 dry_run: bool) -> None:
    rows, size, freed = dagster_compat.prune_run_event_logs(instance, run_ids, KEPT_EVENT_TYPES,
                                                            dry_run=dry_run)
    report.runs_examined += len(run_ids)
    report.event_rows_removed += rows
    report.event_bytes_removed += size
    report.disk_bytes_freed += freed
    for run_id in run_ids:
        files, size = dagster_compat.delete_compute_logs(instance, run_id, dry_run=dry_run)
        if files is None:
            report.compute_logs_uncounted = True
        else:
            report.compute_log_files_removed += files
            report.compute_log_bytes_removed += size or 0


def build_retention_defs(retention: RetentionConfig,
                         partition_sets: Sequence[PartitionSet] = ()) -> dg.Definitions:
    """`instance_retention_job` (prune the instance the run belongs to, and archive the
    `partition_sets`' old partitions, with the config file's ages unless the launchpad says
    otherwise) and its schedule (`retention.schedule`, UTC)."""

    @dg.op(name="prune_instance", out=dg.Out(dg.Nothing), config_schema={
        "run_events_days": dg.Field(int, default_value=retention.run_events_days,
                                    description="prune the event logs of runs older than this"),
        "ticks_days": dg.Field(int, default_value=retention.ticks_days,
                               description="delete sensor and schedule ticks older than this"),
        "archive_partitions_days": dg.Field(
            int, default_value=retention.archive_partitions_days,
            description="archive the partitions of files processed longer ago than this"),
        "dry_run": dg.Field(bool, default_value=False,
                            description="count what would go, remove nothing"),
    })
    def prune_instance_op(context):  # (an annotation would be a string here: Dagster refuses it)
        settings = context.op_config
        report = prune_instance(context.instance,
                                timedelta(days=settings["run_events_days"]),
                                ticks_older_than=timedelta(days=settings["ticks_days"]),
                                dry_run=settings["dry_run"], progress=context.log.info)
        context.log.info(report.summary())
        archived = archive_partitions(context.instance, partition_sets,
                                      timedelta(days=settings["archive_partitions_days"]),
                                      dry_run=settings["dry_run"], progress=context.log.info)
        metadata = {name: value for name, value in report.as_dict().items()
                    if isinstance(value, (int, float, str, bool))}
        metadata["partitions_archived"] = archived.total_archived
        yield dg.Output(None, metadata=metadata)

    @dg.job(name=JOB_NAME, executor_def=dg.in_process_executor,
            description="Deletes what only debugging needs from old runs (log lines, step "
            "events, captured stdout/stderr) and old ticks; runs keep their outcome, tags, "
            "materializations and check results (credflow_assets/common/instance_retention.py).")
    def instance_retention_job():
        prune_instance_op()

    schedule = dg.ScheduleDefinition(
        name=SCHEDULE_NAME, job=instance_retention_job, cron_schedule=retention.schedule,
        execution_timezone="UTC", default_status=dg.DefaultScheduleStatus.RUNNING,
        description="Prunes the instance (instance_retention_job) on the config file's "
        "retention.schedule, with its retention.run_events_days and ticks_days.")
    return dg.Definitions(jobs=[instance_retention_job], schedules=[schedule])


def _iso(moment: datetime) -> str:
    return moment.isoformat(timespec="seconds")


def _size(count: int) -> str:
    """Bytes for a person: 512 B, 3.4 KiB, 1.2 MiB, 2.0 GiB."""
    if count < 1024:
        return f"{count} B"
    amount = float(count)
    for unit in ("KiB", "MiB", "GiB"):
        amount /= 1024
        if amount < 1024 or unit == "GiB":
            break
    return f"{amount:.1f} {unit}"
