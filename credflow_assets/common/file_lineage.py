"""What every flow's `lineage.py` shares: a partition's runs, each with its parse log and error
report, and S3 links that are given only when the object is there.

A lineage is read from the Dagster instance (runs by their `dagster/partition` tag) and S3 (the
logs bucket: `parsing_logs/{flow}/{partition}/{run_id}.log.gz` and `.errors.csv`); a link is
{"uri": "s3://…", "url": "http://…"}, so a tool takes the URI and a person opens the URL.
"""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from credflow_assets.common.error_reports import list_error_reports
from credflow_assets.common.flow import PARTITION_TAG, FlowRuns
from credflow_assets.common.messages import error_message
from credflow_assets.common.parse_logs import list_logs
from credflow_assets.common.run_recovery import FAILURE_KIND_TAG
from credflow_assets.resources.s3 import head_object_or_none, object_url, s3_uri

RUNS_SHOWN = 20


def iso(timestamp: float | None) -> str | None:
    if timestamp is None:
        return None
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")


def s3_link(s3_client, bucket: str, key: str) -> dict | None:
    """{"uri", "url"} of `s3://bucket/key` when the object exists; None when it does not."""
    if head_object_or_none(s3_client, bucket, key) is None:
        return None
    return {"uri": s3_uri(bucket, key), "url": object_url(s3_client, bucket, key)}


def split_s3_uri(uri: str) -> tuple[str, str] | None:
    """`s3://bucket/key` → (bucket, key); None for anything else (a "not stored: …" text)."""
    if not isinstance(uri, str) or not uri.startswith("s3://"):
        return None
    bucket, _, key = uri[len("s3://"):].partition("/")
    return (bucket, key) if bucket and key else None


def metadata_values(record: dg.EventLogRecord | None) -> dict:
    """A materialization's metadata as plain values ({} when there is none)."""
    if record is None:
        return {}
    return {name: entry.value for name, entry in record.asset_materialization.metadata.items()}


def flow_runs(instance: dg.DagsterInstance, runs: FlowRuns,
              partition_key: str) -> list[dg.DagsterRun]:
    """The flow's runs of this partition, newest first (at most RUNS_SHOWN)."""
    found = instance.get_runs(filters=dg.RunsFilter(tags={PARTITION_TAG: partition_key}),
                              limit=RUNS_SHOWN * 2)
    return [run for run in found
            if runs.owns(run.job_name, run.asset_selection or ())][:RUNS_SHOWN]


def run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    """Why a run failed, in words (its first step failure's deepest cause)."""
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = record.dagster_event.step_failure_data.error
        if error is not None:
            return error_message(error)
    return "run failed"


def run_entries(instance: dg.DagsterInstance, runs: list[dg.DagsterRun], *, flow: str,
                partition_key: str, s3_client, logs_bucket: str) -> list[dict]:
    """Each run, newest first: job, status, times, why it failed, its parse log and error
    report (links, or None when the run stored none)."""
    logs = _by_run(s3_client, logs_bucket, list_logs(s3_client, logs_bucket, partition_key,
                                                     flow=flow))
    reports = _by_run(s3_client, logs_bucket,
                      list_error_reports(s3_client, logs_bucket, partition_key, flow=flow))
    entries = []
    for run in runs:
        stats = instance.get_run_stats(run.run_id)
        failed = run.status == dg.DagsterRunStatus.FAILURE
        entries.append({
            "run_id": run.run_id,
            "job": run.job_name,
            "status": run.status.value,
            "started": iso(stats.start_time),
            "ended": iso(stats.end_time),
            "failure_kind": run.tags.get(FAILURE_KIND_TAG) if failed else None,
            "error": run_error(instance, run.run_id) if failed else None,
            "log": logs.get(run.run_id),
            "error_report": reports.get(run.run_id),
        })
    return entries


def _by_run(s3_client, bucket: str, listed: list[dict]) -> dict[str, dict]:
    return {entry["run_id"]: {"uri": s3_uri(bucket, entry["key"]),
                              "url": object_url(s3_client, bucket, entry["key"])}
            for entry in listed}


def unfinished_outcome(runs: list[dict]) -> str | None:
    """A file's outcome while its latest run has not succeeded (none yet, failed, under way),
    in words; None once it has, when each flow says what the success made."""
    if not runs:
        return "seen, no run yet"
    latest = runs[0]
    if latest["status"] == "FAILURE":
        return f"failed: {latest['error']}"
    if latest["status"] != "SUCCESS":
        return f"run {latest['status'].lower()}"
    return None


def latest_of_kind(entries: list[dict], field: str) -> dict | None:
    """The newest run's link in `field` ("log", "error_report") among runs that stored one."""
    return next((entry[field] for entry in entries if entry[field]), None)
