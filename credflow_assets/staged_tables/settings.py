"""Where the staged-tables flow reads and writes, from the config file, and its names.

Each configured table has its own assets, job and partition set: a table's partitions are its
own staged files, so no asset lists another table's files as missing or failed.

    table_partitions(T)      staged_{T}_files: one partition per staged file of T
    staging_file_key(T)      s3/staging/{T}_staged_csv: the upload and its two blocking checks
    prod_file_key(T)         s3/prod/{T}_prod_csv: the promoted copy
    glue_table_key(D, T)     glue/D/T: the Glue table and the file's partition
    job_name(T)              staged_{T}_job: the three, for one file of T per run
    table_of_partition(key)  the T a partition key belongs to (layout.py)
"""

from __future__ import annotations

from functools import cache

import dagster as dg

from credflow_assets.run_tags import FlowRuns
# `table_of_partition` is layout.py's, named here too with the rest of the flow's names.
from credflow_assets.staged_tables.layout import (  # noqa: F401
    Layout,
    object_key_for,
    table_of_partition,
)

GROUP = "staged_tables"
AUDIT_JOB_NAME = "staged_tables_audit_job"

_JOB_PREFIX, _JOB_SUFFIX = "staged_", "_job"
_STAGING_SUFFIX, _PROD_SUFFIX = "_staged_csv", "_prod_csv"


def job_name(table: str) -> str:
    """The job that checks and promotes one staged file of `table`."""
    return f"{_JOB_PREFIX}{table}{_JOB_SUFFIX}"


@cache
def table_partitions(table: str) -> dg.DynamicPartitionsDefinition:
    """One partition per staged file of `table`, keyed by its object key (layout.py)."""
    return dg.DynamicPartitionsDefinition(name=f"staged_{table}_files")


def staging_file_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["s3", "staging", f"{table}{_STAGING_SUFFIX}"])


def prod_file_key(table: str) -> dg.AssetKey:
    return dg.AssetKey(["s3", "prod", f"{table}{_PROD_SUFFIX}"])


def glue_table_key(database: str, table: str) -> dg.AssetKey:
    return dg.AssetKey(["glue", database, table])


def table_asset_keys(database: str, table: str) -> list[dg.AssetKey]:
    """The three assets of `table`, upstream first: what its job materializes."""
    return [staging_file_key(table), prod_file_key(table), glue_table_key(database, table)]


# Run tags. A tag concurrency limit of 1 per table value keeps two files of one table from
# being promoted at once (DAGSTER_HOME/dagster.yaml): the first file founds the table, so two
# first files must not race.
TABLE_TAG = "credflow/staged_table"
STAGED_KEY_TAG = "credflow/staged_key"
# `{etag}:{last-modified epoch seconds}`: the upload the run was requested for.
VERSION_TAG = "credflow/staged_version"


def table_of_run(job: str, asset_keys: list[dg.AssetKey]) -> str | None:
    """The table a run of the flow is for, from its job or its assets' keys."""
    if job.startswith(_JOB_PREFIX) and job.endswith(_JOB_SUFFIX) and job != AUDIT_JOB_NAME:
        return job[len(_JOB_PREFIX):-len(_JOB_SUFFIX)]
    for key in asset_keys:
        path = key.path
        if path[0] == "glue" and len(path) == 3:
            return path[2]
        for suffix in (_STAGING_SUFFIX, _PROD_SUFFIX):
            if path[0] == "s3" and len(path) == 3 and path[2].endswith(suffix):
                return path[2][:-len(suffix)]
    return None


def _run_tags(partition_key: str, job: str, asset_keys: list[dg.AssetKey]) -> dict[str, str]:
    table = table_of_run(job, asset_keys)
    if table is None:
        raise ValueError(f"no staged table for job {job}")
    return {TABLE_TAG: table, STAGED_KEY_TAG: object_key_for(partition_key)}


FLOW_RUNS = FlowRuns(
    job_names=lambda name: table_of_run(name, []) is not None,
    asset_key_prefixes=(("s3", "staging"), ("s3", "prod"), ("glue",)),
    tags=_run_tags,
)


def object_version(etag: str, last_modified) -> str:
    """An upload's identity: the same bytes uploaded again are a new upload."""
    return f"{etag.strip(chr(34))}:{int(last_modified.timestamp())}"


class StagedTablesSettings(dg.ConfigurableResource):
    adhoc_bucket: str
    logs_bucket: str  # per-file parse logs (parse_logs.py)
    glue_database: str
    staging_prefix: str = "staging/"
    prod_prefix: str = "prod/"
    staging_queue: str
    tables: list[str]
    # table → pandera model name in staged_tables/schemas.py (tables without one: absent).
    table_models: dict[str, str] = {}
    chunk_rows: int = 50_000
    # Above this size the promotion is a managed (multipart, parallel) copy; below, copy_object.
    managed_copy_threshold_bytes: int = 256 * 1024 * 1024
    # Per sensor tick: at most this many SQS messages, and S3 pages in a reconciliation tick.
    max_events_per_tick: int = 100
    # SQS long poll per receive: an empty queue costs a tick this long (0: short polling).
    event_wait_seconds: int = 1
    # Pages of 1,000 keys a reconciliation tick lists: one keeps a tick about a second
    # whatever the bucket holds (bench/sensor_scale.py); more makes a pass shorter.
    max_reconcile_pages_per_tick: int = 1
    # Failure cases (and at most 10 failing rows) kept in a check's metadata.
    failure_sample_size: int = 20

    @property
    def layout(self) -> Layout:
        return Layout(bucket=self.adhoc_bucket, staging_prefix=self.staging_prefix,
                      prod_prefix=self.prod_prefix, tables=tuple(self.tables))


def settings_from_config(config) -> StagedTablesSettings:
    """The flow's settings from the config file."""
    staged = config.staged_tables
    fields = dict(
        adhoc_bucket=config.buckets.adhoc,
        logs_bucket=config.buckets.logs,
        glue_database=staged.glue_database,
        staging_prefix=staged.staging_prefix,
        prod_prefix=staged.prod_prefix,
        staging_queue=config.events.staging_uploads.queue,
        tables=[table.name for table in staged.tables],
        table_models={table.name: table.schema_name for table in staged.tables
                      if table.schema_name},
    )
    return StagedTablesSettings(**fields)
