"""The staged-tables flow's names: its asset keys, jobs, partition sets, run tags and reparse lanes.

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

from credflow_assets.common.flow import Flow, FlowPartitions, FlowRuns
# `table_of_partition` is layout.py's, named here too with the rest of the flow's names.
from credflow_assets.staged_tables.layout import (  # noqa: F401
    object_key_for,
    table_of_partition,
)

GROUP = "staged_tables"

# A prod copy's S3 user metadata names the staged upload it was promoted from (key, etag).
PROD_METADATA_SOURCE_KEY = "credflow-staged-key"
PROD_METADATA_SOURCE_ETAG = "credflow-staged-etag"
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
# Who uploaded the file: the object's `uploaded-by` metadata (checks.UPLOADER_METADATA_KEYS),
# and the upload event's S3 principal (`notifications.staged_uploaders` maps it to an address).
UPLOADER_TAG = "credflow/uploader"
PRINCIPAL_TAG = "credflow/s3_principal"


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
    file_tags=(UPLOADER_TAG, PRINCIPAL_TAG),
)


def object_version(etag: str, last_modified) -> str:
    """An upload's identity: the same bytes uploaded again are a new upload."""
    return f"{etag.strip(chr(34))}:{int(last_modified.timestamp())}"



def _table_or_empty(partition_key: str) -> str:
    return table_of_partition(partition_key) or ""


# A table's files can land on the same prod keys, so a reparse reruns them in the order they came.
FLOW = Flow(
    name="staged_tables",
    label="staged file",
    runs=FLOW_RUNS,
    partitions=FlowPartitions(
        name_option="table",
        names=lambda config: [table.name for table in config.staged_tables.tables],
        partitions_of=lambda table: table_partitions(table).name,
        asset_of=staging_file_key,
        name_of=_table_or_empty,
        job_for=job_name,
        lane_of=_table_or_empty,
    ),
)
