"""What the reconciliation sensors share: their pace, and bulk reads of the instance.

A reconciliation sensor lists a bounded stretch of a bucket per tick and asks the instance about
every object in it at once, so a tick costs its page budget whatever the bucket holds
(`therapists/sensors.py`, `staged_tables/sensors.py`).
"""

import dagster as dg

# S3's largest page: the fewer calls, the cheaper a tick (each call is a round trip).
RECONCILE_PAGE_KEYS = 1000
# A tick costs its page budget only, so it can run every minute: with one page a tick, a pass
# over 100,000 objects takes 100 ticks, 100 minutes.
RECONCILE_INTERVAL_SECONDS = 60


def latest_metadata_by_partition(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                                 partitions: list[str]) -> dict[str, dict]:
    """Each partition's latest materialization metadata (absent: never materialized).

    Two queries per 1,000 partitions (the latest storage id of each, then those records) instead
    of one query per partition: what keeps a reconciliation tick cheap.
    """
    found: dict[str, dict] = {}
    for start in range(0, len(partitions), 1000):
        chunk = set(partitions[start:start + 1000])  # never empty: that would mean "all"
        ids = instance.get_latest_storage_id_by_partition(
            asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=chunk)
        if not ids:
            continue
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(ids.values())),
            limit=len(ids),
        ).records
        for record in records:
            found[record.partition_key] = {
                name: value.value for name, value in record.asset_materialization.metadata.items()}
    return found


ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                   dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def partitions_with_active_runs(instance: dg.DagsterInstance, job_name: str,
                                partition_keys: list[str]) -> set[str]:
    """Which of these partitions have a run of `job_name` queued or under way (one query)."""
    if not partition_keys:
        return set()
    runs = instance.get_runs(filters=dg.RunsFilter(
        job_name=job_name, statuses=ACTIVE_STATUSES, tags={"dagster/partition": partition_keys}))
    return {run.tags["dagster/partition"] for run in runs}
