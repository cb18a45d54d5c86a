"""Lineage of one staged file: staging key → check verdicts (which columns) → prod key and Glue
partition, or "waiting in staging" → runs → parse log → error report.

Read from the instance (the staged, prod and Glue materializations of the file's partition, the
check evaluations of its latest run, its runs) and S3 (links given only when the object is there:
a promoted file is removed from staging).
"""

from __future__ import annotations

import dagster as dg

from credflow_assets.common.file_lineage import (
    flow_runs,
    latest_of_kind,
    metadata_values,
    run_entries,
    s3_link,
    split_s3_uri,
)
from credflow_assets.common.materializations import latest_materialization
from credflow_assets.common.partition_archive import known_partition_keys
from credflow_assets.staged_tables.names import (
    FLOW,
    glue_table_key,
    object_key_for,
    prod_file_key,
    staging_file_key,
    table_of_partition,
    table_partitions,
)

WAITING = "waiting in staging"
# What a check's metadata says about columns, as `checks.py` writes it.
_COLUMN_FIELDS = ("missing_columns", "extra_columns", "failing_columns")


def find(instance: dg.DagsterInstance, config, text: str) -> list[str]:
    """Partition keys of the staged files `text` names: a staged key (`staging/claims/x.csv`)
    or its URI (`s3://bucket/staging/claims/x.csv`)."""
    wanted = text
    if text.startswith("s3://"):
        bucket, _, key = text[len("s3://"):].partition("/")
        if bucket != config.buckets.adhoc:
            return []
        wanted = key
    found = []
    for table in config.staged_tables.tables:
        for key in known_partition_keys(instance, table_partitions(table.name).name):
            if wanted in (key, object_key_for(key)):
                found.append(key)
    return found


def lineage(instance: dg.DagsterInstance, config, partition_key: str, s3_client) -> dict:
    table = table_of_partition(partition_key) or ""
    database = config.staged_tables.glue_database
    staged_record = latest_materialization(instance, staging_file_key(table), partition_key)
    staged = metadata_values(staged_record)
    prod = metadata_values(latest_materialization(instance, prod_file_key(table), partition_key))
    glue = metadata_values(latest_materialization(instance, glue_table_key(database, table),
                                                  partition_key))
    runs = run_entries(instance, flow_runs(instance, FLOW.runs, partition_key),
                       flow=FLOW.name, partition_key=partition_key, s3_client=s3_client,
                       logs_bucket=config.buckets.logs)
    staging_key = object_key_for(partition_key)
    checks = _checks(instance, runs[0]["run_id"]) if runs else []
    # A newer upload under the same key that was rejected waits in staging again.
    promoted = bool(prod) and not (runs and runs[0]["status"] == "FAILURE")
    return {
        "flow": FLOW.name,
        "partition": partition_key,
        "file": staging_key,
        "outcome": _outcome(runs, checks, promoted),
        "source": {"table": table, "staging_key": staging_key,
                   "uploader": staged.get("uploader"), "size": staged.get("size"),
                   "etag": staged.get("etag"), "rows": staged.get("rows"),
                   **(s3_link(s3_client, config.buckets.adhoc, staging_key)
                      or {"in_staging": False})},
        "checks": checks,
        "prod": _prod(prod, s3_client) if promoted else None,
        "glue": _glue(glue) if promoted else None,
        "waiting_in_staging": not promoted,
        "runs": runs,
        "log": latest_of_kind(runs, "log"),
        "error_report": latest_of_kind(runs, "error_report"),
    }


def _checks(instance: dg.DagsterInstance, run_id: str) -> list[dict]:
    """The check verdicts of the file's latest run, with the columns each named."""
    verdicts = []
    for record in instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = record.dagster_event.event_specific_data
        metadata = {name: entry.value for name, entry in evaluation.metadata.items()}
        reordered = [item["column"] for item in metadata.get("reordered_columns") or []]
        verdicts.append({
            "check": evaluation.check_name,
            "passed": evaluation.passed,
            "columns": {field.removesuffix("_columns"): metadata[field]
                        for field in _COLUMN_FIELDS if metadata.get(field)}
            | ({"out_of_order": reordered} if reordered else {}),
            "problems": metadata.get("problems") or [],
            "failing_rows": metadata.get("failing_rows"),
        })
    return verdicts


def _prod(prod: dict, s3_client) -> dict:
    where = split_s3_uri(prod.get("file") or "")
    link = s3_link(s3_client, *where) if where else None
    return {"key": prod.get("prod_key"), "ingest_date": prod.get("ingest_date"),
            **(link or {"missing": f"{prod.get('file')} is not there"})}


def _glue(glue: dict) -> dict | None:
    if not glue:
        return None
    return {"table": glue.get("table"), "partition": glue.get("partition"),
            "action": glue.get("partition_action"), "location": glue.get("location"),
            **({"url": glue["location_url"]} if glue.get("location_url") else {})}


def _outcome(runs: list[dict], checks: list[dict], promoted: bool) -> str:
    if promoted and runs and runs[0]["status"] == "SUCCESS":
        return "promoted to prod"
    failed = [check["check"] for check in checks if not check["passed"]]
    if failed:
        return f"{WAITING}: {', '.join(failed)} failed"
    if runs and runs[0]["status"] == "FAILURE":
        return f"{WAITING}: {runs[0]['error']}"
    return WAITING if not runs else f"{WAITING}: run {runs[0]['status'].lower()}"
