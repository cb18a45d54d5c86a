"""Lineage per therapist: for every upload, where each rendition is on Drive and which run put it,
and each run's parse log and error report.

Read from the Dagster instance (the materializations of the therapist's partition and the runs
tagged with their id), so it shows exactly what the UI shows on that partition; the logs from S3.
`find` and `lineage` are what `credflow lineage` asks of every flow.
"""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from credflow_assets.common.file_lineage import (
    flow_runs,
    latest_of_kind,
    run_entries,
    run_error,
)
from credflow_assets.common.materializations import latest_materialization
from credflow_assets.common.partition_archive import is_known_partition
from credflow_assets.therapists.names import (
    FLOW,
    MPF_FOLDER_KEY,
    PLACED_FILES_METADATA,
    THERAPIST_TAG,
    therapist_partitions,
)


def find(instance: dg.DagsterInstance, config, text: str) -> list[str]:
    """The therapist `text` names: their id, or the S3 key (or URI) of one of their uploads
    (`t-1001/license.pdf`, `s3://signup-bucket/t-1001/license.pdf`)."""
    prefix = f"s3://{config.buckets.signup}/"
    if text.startswith("s3://") and not text.startswith(prefix):
        return []
    therapist_id = text.removeprefix(prefix).split("/", 1)[0]
    if therapist_id and is_known_partition(instance, therapist_partitions.name, therapist_id):
        return [therapist_id]
    return []


def lineage(instance: dg.DagsterInstance, config, partition_key: str, s3_client) -> dict:
    """`therapist_lineage`, plus the partition's runs, each with its parse log and error report."""
    found = therapist_lineage(instance, partition_key)
    runs = run_entries(instance, flow_runs(instance, FLOW.runs, partition_key),
                       flow=FLOW.name, partition_key=partition_key, s3_client=s3_client,
                       logs_bucket=config.buckets.logs)
    return {"flow": FLOW.name, "partition": partition_key, "file": partition_key, **found,
            "runs": runs, "log": latest_of_kind(runs, "log"),
            "error_report": latest_of_kind(runs, "error_report")}


def therapist_lineage(instance: dg.DagsterInstance, therapist_id: str) -> dict:
    folder_record = latest_materialization(instance, MPF_FOLDER_KEY, therapist_id)
    lineage: dict = {"therapist_id": therapist_id, "folder": None, "files": [], "failures": []}
    if folder_record is not None:
        metadata = folder_record.asset_materialization.metadata
        produced_by = {"run_id": folder_record.run_id,
                       "time": _iso(folder_record.timestamp)}
        lineage["folder"] = {
            "id": metadata["folder_id"].value,
            "name": metadata["folder_name"].value,
            "url": metadata["folder_url"].value,
            **produced_by,
        }
        for placed in metadata[PLACED_FILES_METADATA].value:
            lineage["files"].append({**placed, **produced_by})
    since = folder_record.timestamp if folder_record else 0
    failed_runs = instance.get_runs(
        filters=dg.RunsFilter(tags={THERAPIST_TAG: therapist_id},
                              statuses=[dg.DagsterRunStatus.FAILURE]),
        limit=20,
    )
    for run in failed_runs:
        stats = instance.get_run_stats(run.run_id)
        if (stats.end_time or 0) < since:
            continue  # an old failure, fixed by the later success
        lineage["failures"].append({
            "run_id": run.run_id,
            "time": _iso(stats.end_time) if stats.end_time else None,
            "error": run_error(instance, run.run_id),
        })
    return lineage


def format_lineage(lineage: dict) -> list[str]:
    lines = [f"therapist {lineage['therapist_id']}"]
    folder = lineage["folder"]
    if folder is None:
        lines.append("  no MPF folder materialized yet")
    else:
        lines.append(f"  folder {folder['name']} ({folder['id']}) {folder['url']}")
    for placed in lineage["files"]:
        lines.append(f"  {placed['s3_key']} (etag {placed['etag']}) run {placed['run_id']} "
                     f"at {placed['time']}")
        for rendition, where in placed["renditions"].items():
            if "missing" in where:
                lines.append(f"    {rendition:8} missing: {where['missing']}")
            elif "error" in where:
                lines.append(f"    {rendition:8} error: {where['error']}")
            else:
                lines.append(f"    {rendition:8} {where['id']} {where.get('link') or ''}")
    for failure in lineage["failures"]:
        lines.append(f"  FAILED run {failure['run_id']} at {failure['time']}: {failure['error']}")
    for run in lineage.get("runs", []):
        lines.append(f"  run {run['run_id']} {run['status']} at {run['ended'] or run['started']}")
        for field, label in (("log", "parse log"), ("error_report", "error report")):
            if run[field]:
                lines.append(f"    {label:12} {run[field]['url']}")
    return lines


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
