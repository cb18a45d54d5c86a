"""Lineage of one provider file: SFTP path, size and mtime seen → raw copy (key, sha256) →
signature verdict → landed objects → runs → parse log → error report.

Read from the instance (the raw and landed materializations of the file's partition, and its
runs' tags) and S3 (each link is given only when its object is there).
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
    unfinished_outcome,
)
from credflow_assets.common.materializations import latest_materialization
from credflow_assets.common.partition_archive import known_partition_keys
from credflow_assets.provider_feeds.names import (
    FLOW,
    REMOTE_MTIME_TAG,
    REMOTE_SIZE_TAG,
    landed_asset_key,
    parse_partition_key,
    provider_partitions,
    raw_asset_key,
)


def find(instance: dg.DagsterInstance, config, text: str) -> list[str]:
    """Partition keys of the provider files `text` names: a partition key, an SFTP path
    (`acme_health/outbox/x.csv.gz.gpg`, `sftp:…`, `sftp://host/…`) or `provider:path`."""
    wanted = _remote_path(text)
    found = []
    for provider in config.providers:
        for key in known_partition_keys(instance, provider_partitions(provider.name).name):
            _, remote_path = parse_partition_key(key)
            if text == key or wanted in (remote_path, remote_path.lstrip("/"),
                                         f"{provider.name}:{remote_path}"):
                found.append(key)
    return found


def _remote_path(text: str) -> str:
    if text.startswith("sftp://"):
        return "/" + text[len("sftp://"):].partition("/")[2]
    return text.removeprefix("sftp:").lstrip("/") if text.startswith("sftp:") else text


def lineage(instance: dg.DagsterInstance, config, partition_key: str, s3_client) -> dict:
    provider, remote_path = parse_partition_key(partition_key)
    raw_record = latest_materialization(instance, raw_asset_key(provider), partition_key)
    landed_record = latest_materialization(instance, landed_asset_key(provider), partition_key)
    raw, landed = metadata_values(raw_record), metadata_values(landed_record)
    runs = run_entries(instance, flow_runs(instance, FLOW.runs, partition_key),
                       flow=FLOW.name, partition_key=partition_key, s3_client=s3_client,
                       logs_bucket=config.buckets.logs)
    seen_tags = instance.get_run_by_id(runs[-1]["run_id"]).tags if runs else {}
    return {
        "flow": FLOW.name,
        "partition": partition_key,
        "file": remote_path,
        "outcome": _outcome(runs, landed_record),
        "source": {"provider": provider, "sftp_path": remote_path,
                   "size": raw.get("size", _int(seen_tags.get(REMOTE_SIZE_TAG))),
                   "mtime": _int(seen_tags.get(REMOTE_MTIME_TAG)),
                   "modified": raw.get("remote_modified")},
        "raw_copy": _raw_copy(raw, s3_client),
        "signature": {"verdict": landed.get("signature") or
                      ("none" if raw.get("signature_uri") in (None, "none") else "not verified"),
                      "copy": _linked(raw.get("signature_uri"), s3_client)},
        "landed": _landed(landed, config.buckets.provider_data, s3_client),
        "runs": runs,
        "log": latest_of_kind(runs, "log"),
        "error_report": latest_of_kind(runs, "error_report"),
    }


def _raw_copy(raw: dict, s3_client) -> dict | None:
    if not raw:
        return None
    return {"sha256": raw.get("sha256"), "size": raw.get("size"),
            "reused": raw.get("reused_raw_copy"),
            **(_linked(raw.get("raw_uri"), s3_client) or {"missing": raw.get("raw_uri")})}


def _landed(landed: dict, bucket: str, s3_client) -> list[dict]:
    objects = []
    for item in landed.get("landed") or []:
        link = s3_link(s3_client, bucket, item["key"])
        objects.append({"key": item["key"], "type": item.get("type"), "size": item.get("size"),
                        "rows": item.get("rows"),
                        **(link or {"missing": f"s3://{bucket}/{item['key']} is not there"})})
    return objects


def _linked(uri, s3_client) -> dict | None:
    where = split_s3_uri(uri or "")
    return s3_link(s3_client, *where) if where else None


def _outcome(runs: list[dict], landed_record) -> str:
    unfinished = unfinished_outcome(runs)
    if unfinished:
        return unfinished
    return "landed" if landed_record is not None else "run succeeded, nothing landed"


def _int(value: str | None) -> int | None:
    return int(value) if value and value.isdigit() else None
