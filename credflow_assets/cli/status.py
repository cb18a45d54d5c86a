"""`credflow status [--json]`: one screen, per flow: the last file in, the last success, failures
waiting for a corrected upload, sources overdue, and runs under way.

Fast whatever the instance holds: a few run queries per job with small limits and the latest
materialization of each source asset; it never reads every event.
"""

from __future__ import annotations

import importlib
import json
import time

import click

from credflow_assets.common.command_context import CommandContext
from credflow_assets.flows import all_flows

RUNS_LOOKED_AT = 50  # failed runs per job looked at for failures waiting
# Runs of Dagster's implicit asset job (the UI's Materialize button, a backfill) belong to no
# flow's job: the newest this many are looked at, and kept where the flow owns their assets.
ASSET_JOB_RUNS_LOOKED_AT = 200
UNDER_WAY = ("QUEUED", "NOT_STARTED", "STARTING", "STARTED")
NOT_CONFIGURED = "not configured"


@click.command("status")
@click.option("--json", "as_json", is_flag=True, help="The same, as JSON.")
@click.pass_obj
def status(context: CommandContext, as_json: bool) -> None:
    """Per flow: last file in, last success, failures waiting for a corrected upload, sources
    overdue, runs under way."""
    context.adopt_stack_environment()
    config = context.config()
    with context.instance() as instance:
        report = {flow.name: flow_status(instance, config, flow) for flow in all_flows()}
    if as_json:
        click.echo(json.dumps(report, indent=2))
    else:
        click.echo("\n".join(format_status(report)))


def flow_status(instance, config, flow) -> dict:
    names = flow.partitions.names(config)
    jobs = sorted({flow.partitions.job_for(name) for name in names})
    sources = [flow.partitions.asset_of(name) for name in names]
    runs = FlowRunRecords(instance, flow, jobs)
    return {
        "last_file_in": _last_file_in(instance, sources),
        "last_success": _last_run(runs, "SUCCESS"),
        "failures_waiting": _failures_waiting(instance, runs),
        "overdue": _overdue(instance, config, flow),
        "under_way": _under_way(runs),
    }


def _last_file_in(instance, sources) -> dict | None:
    latest = None
    for key in sources:
        event = instance.get_latest_materialization_event(key)
        if event is not None and (latest is None or event.timestamp > latest.timestamp):
            latest = event
    if latest is None:
        return None
    return {"partition": latest.asset_materialization.partition, "at": _iso(latest.timestamp),
            "run_id": latest.run_id}


class FlowRunRecords:
    """A flow's runs: those of its jobs, and those of Dagster's implicit asset job over its
    assets (the UI's Materialize button on a partition, a backfill)."""

    def __init__(self, instance, flow, jobs: list[str]):
        self.instance, self.flow, self.jobs = instance, flow, jobs

    def newest(self, statuses=(), *, limit: int, tags: dict | None = None) -> list:
        """The newest `limit` runs with one of `statuses` (any status when none is given)."""
        import dagster as dg

        from credflow_assets.common.partition_archive import ASSET_JOB_NAME

        def query(job: str, count: int) -> list:
            return self.instance.get_run_records(
                filters=dg.RunsFilter(job_name=job, tags=tags or {}, statuses=[
                    dg.DagsterRunStatus(name) for name in statuses]),
                limit=count)

        records = [record for job in self.jobs for record in query(job, limit)]
        records += [record for record in query(ASSET_JOB_NAME, max(limit, ASSET_JOB_RUNS_LOOKED_AT))
                    if self.flow.runs.owns(ASSET_JOB_NAME, record.dagster_run.asset_selection or ())]
        records.sort(key=lambda record: record.create_timestamp.timestamp(), reverse=True)
        return records[:limit]


def _run_summary(record) -> dict:
    from credflow_assets.common.flow import PARTITION_TAG

    run = record.dagster_run
    at = record.end_time or record.start_time or record.create_timestamp.timestamp()
    return {"run_id": run.run_id, "job": run.job_name, "partition": run.tags.get(PARTITION_TAG),
            "status": run.status.value, "at": _iso(at)}


def _last_run(runs: FlowRunRecords, status) -> dict | None:
    records = runs.newest([status], limit=1)
    return _run_summary(records[0]) if records else None


def _failures_waiting(instance, runs: FlowRunRecords) -> list[dict]:
    """Partitions whose latest run failed permanently (not a retry's transient failure, not a
    stopped process): they wait for a corrected upload."""
    from credflow_assets.common.file_lineage import run_error
    from credflow_assets.common.flow import PARTITION_TAG
    from credflow_assets.common.run_recovery import FAILURE_KIND_TAG

    waiting, seen = [], set()
    for record in runs.newest(["FAILURE"], limit=RUNS_LOOKED_AT):
        run = record.dagster_run
        partition = run.tags.get(PARTITION_TAG)
        if not partition or partition in seen:
            continue
        seen.add(partition)
        if run.tags.get(FAILURE_KIND_TAG) != "permanent":
            continue
        latest = runs.newest(limit=1, tags={PARTITION_TAG: partition})
        if latest and latest[0].dagster_run.run_id == run.run_id:
            waiting.append({**_run_summary(record), "error": run_error(instance, run.run_id)})
    return waiting


def _overdue(instance, config, flow) -> dict:
    """The flow's sources with `expect_every` that have had no file for longer, by the same
    rule as `quiet_sources_sensor` (common/freshness.py); "not configured" when none of the
    flow's sources declares a cadence."""
    from credflow_assets.common.freshness import quiet_sources_now

    package = importlib.import_module(f"credflow_assets.{flow.name}")
    watched = package.quiet_sources(config) if hasattr(package, "quiet_sources") else []
    if not watched:
        return {"state": NOT_CONFIGURED, "sources": []}
    quiet = quiet_sources_now(instance, watched, time.time())
    overdue = [{"source": source.label, "asset": source.key.to_user_string(),
                "last_file_at": _iso(last.timestamp),
                "expected_every_seconds": int(source.every.total_seconds())}
               for source, last in quiet]
    return {"state": "overdue" if overdue else "fresh", "sources": overdue}


def _under_way(runs: FlowRunRecords) -> list[dict]:
    return [_run_summary(record) for record in runs.newest(UNDER_WAY, limit=20)]


def format_status(report: dict) -> list[str]:
    lines = []
    for flow, found in report.items():
        lines.append(flow)
        last_in, success = found["last_file_in"], found["last_success"]
        lines.append(f"  {'last file in':16} " + (f"{last_in['partition']} at {last_in['at']}"
                                                   if last_in else "none yet"))
        lines.append(f"  {'last success':16} " + (f"{success['partition']} at {success['at']}"
                                                   if success else "none yet"))
        for failure in found["failures_waiting"]:
            lines.append(f"  {'waiting fix':16} {failure['partition']}: {failure['error']} "
                         f"(run {failure['run_id']})")
        if not found["failures_waiting"]:
            lines.append(f"  {'waiting fix':16} none")
        overdue = found["overdue"]
        quiet = [f"{each['source']} (last file {each['last_file_at']})"
                 for each in overdue["sources"]]
        lines.append(f"  {'overdue':16} " + (", ".join(quiet) or overdue["state"]))
        for run in found["under_way"]:
            lines.append(f"  {'under way':16} {run['partition']} {run['status']} "
                         f"(run {run['run_id']})")
        if not found["under_way"]:
            lines.append(f"  {'under way':16} none")
    return lines


def _iso(timestamp: float | None) -> str | None:
    from datetime import datetime, timezone

    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
