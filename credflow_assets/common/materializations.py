"""Reading what the instance recorded: the latest materialization of one asset partition."""

from __future__ import annotations

import dagster as dg


def latest_materialization(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str
) -> dg.EventLogRecord | None:
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition]),
        limit=1,
        ascending=False,
    ).records
    return records[0] if records else None


def latest_metadata_value(
    instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition: str, name: str
):
    """One metadata value of the partition's latest materialization, or None."""
    record = latest_materialization(instance, asset_key, partition)
    if record is None:
        return None
    entry = record.asset_materialization.metadata.get(name)
    return entry.value if entry is not None else None
