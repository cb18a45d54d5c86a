"""What the reconciliation sensors share: their pace, their cursor, bulk reads of the instance.

A reconciliation sensor lists a bounded stretch of a bucket per tick and asks the instance about
every object in it at once, so a tick costs its page budget whatever the bucket holds
(`therapists/sensors.py`, `staged_tables/sensors.py`). Its cursor (`ReconcileCursor`) says where
the listing resumes and how many passes over the bucket it has finished; `credflow sync` reads it
to tick such a sensor through one whole pass, since a tick that launches nothing does not mean
the rest of the bucket holds nothing.
"""

from __future__ import annotations

import json
from dataclasses import dataclass

import dagster as dg

from credflow_assets.common.dagster_compat import latest_materialization_ids

# S3's largest page: the fewer calls, the cheaper a tick (each call is a round trip).
RECONCILE_PAGE_KEYS = 1000
# A tick costs its page budget only, so it can run every minute: with one page a tick, a pass
# over 100,000 objects takes 100 ticks, 100 minutes.
RECONCILE_INTERVAL_SECONDS = 60
# On the sensor definition (shown in the UI's sensor tags): `credflow sync` ticks a sensor tagged
# so until its `ReconcileCursor` has covered a whole pass, instead of until a tick launches nothing.
RECONCILIATION_SENSOR_TAGS = {"credflow/sensor_kind": "reconciliation"}


def is_reconciliation_sensor(sensor: dg.SensorDefinition) -> bool:
    return all(sensor.tags.get(name) == value
               for name, value in RECONCILIATION_SENSOR_TAGS.items())


@dataclass(frozen=True)
class ReconcileCursor:
    """Where a reconciliation sensor's listing resumes: after the key `after` (None: from the
    bucket's start), in pass `pass_number` (how many times the listing has reached the end).

    Stored as `{"after": ..., "pass": n}`, the format of the cursors already in instances.
    """

    after: str | None = None
    pass_number: int = 0

    @classmethod
    def from_json(cls, text: str | None) -> ReconcileCursor:
        if not text:
            return cls()
        state = json.loads(text)
        return cls(after=state.get("after"), pass_number=state.get("pass", 0))

    def to_json(self) -> str:
        return json.dumps({"after": self.after, "pass": self.pass_number})

    def advanced_to(self, next_after: str | None) -> ReconcileCursor:
        """The cursor after a tick that listed up to `next_after` (None: up to the bucket's end,
        which finishes the pass; the next tick starts again from the top)."""
        if next_after is None:
            return ReconcileCursor(after=None, pass_number=self.pass_number + 1)
        return ReconcileCursor(after=next_after, pass_number=self.pass_number)

    def covers_a_pass_since(self, start: ReconcileCursor) -> bool:
        """Whether the ticks that moved the cursor from `start` to here listed every key of the
        bucket: the listing reached the end, wrapped, and came back to where `start` stood."""
        wraps = self.pass_number - start.pass_number
        if wraps <= 0:
            return False
        if wraps >= 2 or start.after is None:
            return True
        # Wrapped once: the keys up to `start.after` are listed again once this pass is past
        # it. Python orders str by code point, as S3 orders keys by UTF-8 bytes.
        return self.after is not None and self.after >= start.after


def latest_metadata_by_partition(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                                 partitions: list[str]) -> dict[str, dict]:
    """Each partition's latest materialization metadata (absent: never materialized).

    Two queries per 1,000 partitions (the latest storage id of each, then those records) instead
    of one query per partition: what keeps a reconciliation tick cheap.
    """
    found: dict[str, dict] = {}
    for start in range(0, len(partitions), 1000):
        chunk = set(partitions[start:start + 1000])  # never empty: that would mean "all"
        ids = latest_materialization_ids(instance, asset_key, chunk)
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


# A run in one of these has not begun its steps yet: whatever it reads, it reads from now on.
NOT_STARTED_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                        dg.DagsterRunStatus.STARTING]
ACTIVE_STATUSES = [*NOT_STARTED_STATUSES, dg.DagsterRunStatus.STARTED]


def partitions_with_active_runs(instance: dg.DagsterInstance, job_name: str,
                                partition_keys: list[str],
                                statuses: list[dg.DagsterRunStatus] = ACTIVE_STATUSES) -> set[str]:
    """Which of these partitions have a run of `job_name` in one of `statuses` (by default
    queued or under way), in one query."""
    if not partition_keys:
        return set()
    runs = instance.get_runs(filters=dg.RunsFilter(
        job_name=job_name, statuses=statuses, tags={"dagster/partition": partition_keys}))
    return {run.tags["dagster/partition"] for run in runs}
