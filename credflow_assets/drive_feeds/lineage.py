"""Lineage of one feed file: Drive id, revision and name → rows inserted, updated, unchanged,
rejected, kept newer → history rows written → outbound summary → runs → parse log → error report.

Read from the instance (the inbound, records and summary materializations of the file's
partition, and its runs) and S3 (logs and error reports, linked only when stored).
"""

from __future__ import annotations

import dagster as dg

from credflow_assets.common.file_lineage import (
    flow_runs,
    latest_of_kind,
    metadata_values,
    run_entries,
    unfinished_outcome,
)
from credflow_assets.common.materializations import latest_materialization
from credflow_assets.common.partition_archive import known_partition_keys
from credflow_assets.drive_feeds.names import (
    FLOW,
    feed_partitions,
    inbound_key,
    name_in_key,
    parse_partition_key,
    records_key,
    summary_key,
)

ROW_COUNTS = ("rows_read", "inserted", "updated", "unchanged", "rejected", "kept_newer",
              "blank_rows", "history_rows")


def find(instance: dg.DagsterInstance, config, text: str) -> list[str]:
    """Partition keys of the feed files `text` names: a partition key, a Drive file id
    (`drive:` prefix allowed; every revision of it) or a file name (every file so named)."""
    wanted = text.removeprefix("drive:")
    found = []
    for feed in config.feeds:
        for key in known_partition_keys(instance, feed_partitions(feed.name).name):
            _, file_id, _ = parse_partition_key(key)
            name = key.split("/", 3)[3]
            if text == key or wanted == file_id or name_in_key(wanted) == name:
                found.append(key)
    return found


def lineage(instance: dg.DagsterInstance, config, partition_key: str, s3_client) -> dict:
    feed, file_id, revision = parse_partition_key(partition_key)
    inbound = metadata_values(latest_materialization(instance, inbound_key(feed), partition_key))
    records = metadata_values(latest_materialization(instance, records_key(feed), partition_key))
    summary = metadata_values(latest_materialization(instance, summary_key(feed), partition_key))
    runs = run_entries(instance, flow_runs(instance, FLOW.runs, partition_key),
                       flow=FLOW.name, partition_key=partition_key, s3_client=s3_client,
                       logs_bucket=config.buckets.logs)
    return {
        "flow": FLOW.name,
        "partition": partition_key,
        "file": inbound.get("file") or partition_key.split("/", 3)[3],
        "outcome": _outcome(runs, records),
        "source": {"feed": feed, "drive_file_id": file_id, "revision": revision,
                   "name": inbound.get("file"), "modified_time": inbound.get("modified_time"),
                   "size": inbound.get("size_bytes"), "superseded_by":
                   inbound.get("superseded_by") or None,
                   **({"url": inbound["drive_link"]} if inbound.get("drive_link") else {})},
        "rows": {name: records[name] for name in ROW_COUNTS if name in records} or None,
        "rejections_by_reason": records.get("rejections_by_reason") or {},
        "table": records.get("dagster/table_name"),
        "summary": _summary(summary),
        "runs": runs,
        "log": latest_of_kind(runs, "log"),
        "error_report": latest_of_kind(runs, "error_report"),
    }


def _summary(summary: dict) -> dict | None:
    if not summary:
        return None
    return {"name": summary.get("summary_name"), "id": summary.get("summary_file_id"),
            "action": summary.get("action"), "outbound_folder_id":
            summary.get("outbound_folder_id"),
            **({"url": summary["summary_link"]} if summary.get("summary_link") else {})}


def _outcome(runs: list[dict], records: dict) -> str:
    unfinished = unfinished_outcome(runs)
    if unfinished:
        return unfinished
    if not records:
        return "run succeeded, no rows recorded"
    return (f"{records.get('inserted', 0)} inserted, {records.get('updated', 0)} updated, "
            f"{records.get('rejected', 0)} rejected")
