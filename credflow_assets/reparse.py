"""`credflow reparse`: rerun existing partitions of a flow, every run tagged with one reparse id.

A reparse is not a special code path: each selected partition is rerun through the flow's own
job — as a backfill through the webserver when one runs (backfills.py), else in this process,
exactly as `credflow sync` runs new files. Each run writes its own parse
log, so the logs of a file's parses sit side by side (`credflow logs diff PARTITION`), and
`credflow/reparse_id` finds every run of one reparse (the Dagster UI filters runs by tag).
"""

from __future__ import annotations

import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone

import dagster as dg

from credflow_assets.materializations import latest_materialization
from credflow_assets.sync import (
    RunOutcome,
    execution_run_config,
    failure_reason,
    run_summary,
)

REPARSE_TAG = "credflow/reparse_id"


@dataclass(frozen=True)
class FlowTarget:
    """Where a flow's partitions live and which job reruns one, by the partition's name part."""

    partitions: str  # the DynamicPartitionsDefinition's name
    asset: dg.AssetKey  # its materializations date a partition for --since
    name_option: str | None  # --feed, --provider, --table: what the name part means
    name_of: Callable[[str], str]  # partition key → feed / provider / table
    job_for: Callable[[str], str]  # the name part → the job that reruns it


def _first_segment(key: str) -> str:
    return key.split("/", 1)[0]


def _staged_table(key: str) -> str:
    from credflow_assets.staged_tables.layout import object_key_for

    parts = object_key_for(key).split("/")
    return parts[1] if len(parts) > 2 else ""


FLOWS: dict[str, FlowTarget] = {
    "therapists": FlowTarget("therapists", dg.AssetKey(["drive", "mpf", "folder"]), None,
                             lambda key: "", lambda _: "therapist_mpf_job"),
    "drive_feeds": FlowTarget("drive_feed_files", dg.AssetKey(["drive", "inbound", "sheet"]),
                              "feed", _first_segment, lambda feed: f"drive_feed_{feed}_job"),
    "provider_feeds": FlowTarget("provider_files",
                                 dg.AssetKey(["s3", "provider_feeds", "raw"]), "provider",
                                 _first_segment, lambda _: "provider_feeds_job"),
    "staged_tables": FlowTarget("staged_files", dg.AssetKey(["s3", "staging", "file"]), "table",
                                _staged_table, lambda _: "staged_file_job"),
}


class ReparseError(ValueError):
    """The selection is wrong (unknown flow, name or partition); nothing was run."""


@dataclass
class ReparseReport:
    reparse_id: str
    runs: list[RunOutcome] = field(default_factory=list)

    @property
    def failed(self) -> list[RunOutcome]:
        return [run for run in self.runs if not run.success]


def select_partitions(
    instance: dg.DagsterInstance,
    flow: str,
    *,
    name: str | None = None,
    since: datetime | None = None,
    partitions: list[str] | None = None,
) -> list[str]:
    """The flow's partitions to rerun, in the order they were added."""
    target = _target(flow)
    existing = instance.get_dynamic_partitions(target.partitions)
    if partitions:
        unknown = [key for key in partitions if key not in set(existing)]
        if unknown:
            raise ReparseError(f"{flow}: no such partition(s): {', '.join(unknown)}")
        chosen = [key for key in existing if key in set(partitions)]
    else:
        chosen = list(existing)
    if name is not None:
        if target.name_option is None:
            raise ReparseError(f"{flow} has no --feed/--provider/--table")
        chosen = [key for key in chosen if target.name_of(key) == name]
    if since is not None:
        chosen = [key for key in chosen if _last_materialized(instance, target, key) >= since]
    return chosen


def partitions_by_job(flow: str, partitions: list[str]) -> dict[str, list[str]]:
    """The partitions grouped by the job that reruns them (one backfill per job)."""
    target = _target(flow)
    grouped: dict[str, list[str]] = {}
    for key in partitions:
        grouped.setdefault(target.job_for(target.name_of(key)), []).append(key)
    return grouped


def new_reparse_id() -> str:
    return uuid.uuid4().hex[:12]


def reparse(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    flow: str,
    partitions: list[str],
    *,
    progress: Callable[[str], None] = print,
    verbose: bool = False,
) -> ReparseReport:
    target = _target(flow)
    report = ReparseReport(reparse_id=new_reparse_id())
    progress(f"reparse {report.reparse_id}: {len(partitions)} partition(s) of {flow}")
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        for number, key in enumerate(partitions, start=1):
            job_name = target.job_for(target.name_of(key))
            started = time.monotonic()
            result = defs.resolve_job_def(job_name).execute_in_process(
                instance=instance, partition_key=key, raise_on_error=False,
                run_config=execution_run_config(None, verbose),
                tags={REPARSE_TAG: report.reparse_id},
            )
            outcome = RunOutcome(
                sensor="", job=job_name, partition=key, run_id=result.run_id,
                success=result.success, seconds=time.monotonic() - started,
                error=None if result.success else failure_reason(result),
                summary=run_summary(result),
            )
            report.runs.append(outcome)
            status = (f"ok{': ' + outcome.summary if outcome.summary else ''}"
                      if outcome.success else f"FAILED: {outcome.error}")
            progress(f"[{number}/{len(partitions)}] {key} run {result.run_id[:8]} {status} "
                     f"({outcome.seconds:.1f}s)")
    return report


def _target(flow: str) -> FlowTarget:
    if flow not in FLOWS:
        raise ReparseError(f"unknown flow {flow!r}; one of {', '.join(FLOWS)}")
    return FLOWS[flow]


def _last_materialized(instance: dg.DagsterInstance, target: FlowTarget, key: str) -> datetime:
    record = latest_materialization(instance, target.asset, key)
    if record is None:
        return datetime.min.replace(tzinfo=timezone.utc)
    return datetime.fromtimestamp(record.timestamp, tz=timezone.utc)
