"""Lineage per therapist: for every upload, where each rendition is on Drive and which run put it.

Read from the Dagster instance (the materializations of the therapist's partition and the runs
tagged with their id), so it shows exactly what the UI shows on that partition.
"""

from __future__ import annotations

from datetime import datetime, timezone

import dagster as dg

from credflow_assets.common.materializations import latest_materialization
from credflow_assets.common.messages import error_message
from credflow_assets.therapists.names import (
    MPF_FOLDER_KEY,
    PLACED_FILES_METADATA,
    THERAPIST_TAG,
)


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
            "error": _run_error(instance, run.run_id),
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
    return lines


def _run_error(instance: dg.DagsterInstance, run_id: str) -> str:
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.STEP_FAILURE):
        error = record.dagster_event.step_failure_data.error
        if error is not None:
            return error_message(error)
    return "run failed"


def _iso(timestamp: float) -> str:
    return datetime.fromtimestamp(timestamp, tz=timezone.utc).isoformat(timespec="seconds")
