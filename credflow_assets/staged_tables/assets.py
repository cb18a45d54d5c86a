"""Staged CSV → prod copy → Glue partition, one staged file (partition) per run.

Each configured table T (Glue database D) has its own three assets, partition set and job, made
here from the config (`build_table_assets`, `build_table_job`; names in settings.py):

    s3/staging/{T}_staged_csv     the upload, observed (key, size, etag, header), and its two
                                  blocking checks (observation.py, checks.py)
    s3/prod/{T}_prod_csv          the promoted copy: prod/{T}/ingest_date=D/{file}
    glue/D/T                      the table (created from its first good file) and the file's
                                  ingest_date partition

A table's partitions (`staged_{T}_files`) are its own staged files only, so no asset lists
another table's files, as missing or as failed. All three run in one job (`staged_{T}_job`),
so a failing check stops the prod and Glue steps of the same run: nothing reaches prod or Glue,
and the staged file is left as it was.

What happens to the staged file. A file that fails a check stays in staging, untouched, until a
corrected upload replaces it (same key) or someone deletes it. A promoted file is *removed* from
staging once its copy is in prod and its partition is registered: staging then holds exactly the
uploads that still need attention (waiting for a run, or rejected), never a second copy of prod.
The source system's mess was staging files left behind that no longer matched anything; here
nothing good is left behind, and what is left is named by the audit. The record of the upload
(key, etag, uploader, header) stays on the staged-file asset's materialization and in the prod
object's metadata (`credflow-staged-key`, `credflow-staged-etag`). A file is removed only if
it is still the version that was promoted: a newer upload under the same key stays for its own
run.

Which version. A run is requested for one upload (`credflow/staged_version`: etag and
last-modified time). If the object changed since, the run fails as superseded and the newer
upload's own run checks it; the copy is conditional on the checked etag (`CopySourceIfMatch`).
The `ingest_date` is the date the upload names in its `ingest-date` metadata
(`x-amz-meta-ingest-date: 2024-01-31`, to load an old export into its own partition), else the
UTC date it was uploaded to staging (an `ingest-date` that is not a date refuses the file);
either way a rerun lands in the same place. A re-upload of
the same name for the same date replaces that prod file (Glue then reads the new one).

A rerun of a promoted file (the UI's Materialize, a re-execution, `credflow reparse`) finds it
gone from staging and checks its prod copy instead (`observation.promoted_upload`): that copy
stays where it is, and the Glue step registers its partition again.
"""


import time
from typing import Any
from urllib.parse import quote

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.common.run_recovery import mark_transient_failures
from credflow_assets.resources.glue import GlueError, GlueResource, table_columns
from credflow_assets.resources.s3 import (
    DEFAULT_PART_SIZE,
    object_url,
    prefix_url,
    transfer_config,
)
from credflow_assets.staged_tables.checks import check_specs
from credflow_assets.staged_tables.layout import PARTITION_COLUMN, Layout
from credflow_assets.staged_tables.names import (
    GROUP,
    PROD_METADATA_SOURCE_ETAG,
    PROD_METADATA_SOURCE_KEY,
    glue_table_key,
    job_name,
    prod_file_key,
    staging_file_key,
    table_asset_keys,
    table_partitions,
)
from credflow_assets.staged_tables.observation import observe_and_check
from credflow_assets.staged_tables.settings import StagedTablesSettings

def build_table_assets(table: str, database: str, layout: Layout) -> list[dg.AssetsDefinition]:
    """The three assets of one configured table, upstream first."""
    return [build_staged_file_asset(table, layout), build_prod_file_asset(table, layout),
            build_glue_table_asset(table, database, layout)]


def build_table_job(table: str, database: str, layout: Layout):
    """`staged_{table}_job`: one staged file of `table` per run, its three assets in order."""
    return dg.define_asset_job(
        job_name(table),
        selection=dg.AssetSelection.assets(*table_asset_keys(database, table)),
        executor_def=dg.in_process_executor,
        # An outage is requested again later (Dagster's run_retries); a bad file is not.
        hooks={mark_transient_failures},
        description=f"One staged CSV of table {table} ({layout.staging_table_prefix(table)}): "
        f"observe and check it, then (only if both checks pass) copy it to "
        f"{layout.prod_table_prefix(table)} and register its partition in the Glue table "
        f"{database}.{table}.",
    )


def build_staged_file_asset(table: str, layout: Layout) -> dg.AssetsDefinition:
    @dg.asset(
        key=staging_file_key(table),
        partitions_def=table_partitions(table),
        group_name=GROUP,
        kinds={"s3", "csv", "pandas"},
        check_specs=check_specs(table),
        description=f"An analyst's CSV in {layout.uri(layout.staging_table_prefix(table))}, "
        "one partition per file: observed (key, size, etag, header) and checked against "
        f"table {table} before it may be promoted.",
    )
    def staged_file(
        context: dg.AssetExecutionContext,
        s3: S3Resource,
        glue: GlueResource,
        staged_tables_settings: StagedTablesSettings,
    ):
        yield from observe_and_check(context, table, s3, glue, staged_tables_settings)

    return staged_file


def build_prod_file_asset(table: str, layout: Layout) -> dg.AssetsDefinition:
    @dg.asset(
        key=prod_file_key(table),
        deps=[staging_file_key(table)],
        partitions_def=table_partitions(table),
        group_name=GROUP,
        kinds={"s3", "csv"},
        description=f"A staged {table} file's promoted copy in "
        f"{layout.uri(layout.prod_table_prefix(table))}{PARTITION_COLUMN}=YYYY-MM-DD/{{file}}, "
        "made only after the file passed its checks in the same run.",
    )
    def prod_file(
        context: dg.AssetExecutionContext,
        s3: S3Resource,
        glue: GlueResource,
        staged_tables_settings: StagedTablesSettings,
    ) -> dg.MaterializeResult:
        return promote(context, table, s3, glue, staged_tables_settings)

    return prod_file


def promote(context: dg.AssetExecutionContext, table: str, s3: S3Resource, glue: GlueResource,
            settings: StagedTablesSettings) -> dg.MaterializeResult:
    """The prod-file asset of `table`: copy the file this run checked to prod."""
    layout = settings.layout
    staged = materialized_in_this_run(context, staging_file_key(table), table)
    if not staged.get("checks_passed"):
        raise dg.Failure(f"{staged['file']} did not pass its checks; it is not promoted")
    columns = list(staged["columns"])
    # Another file may have founded the table since this one was checked.
    found = glue.get_table(settings.glue_database, table)
    if found is None:
        _require_database(glue, settings.glue_database, staged["file"])
    elif [name for name, _ in table_columns(found)] != columns:
        raise dg.Failure(
            f"{staged['file']}: the Glue table {settings.glue_database}.{table} was created "
            f"with other columns since the check ran; rerun this file to check it again"
        )
    client = s3.get_client()
    prod_key = layout.prod_key(table, staged["ingest_date"], staged["name"])
    started = time.monotonic()
    promoted_by_run = str(staged.get("promoted_by_run") or context.run.run_id)
    if staged.get("promoted_by_run"):
        # A rerun of an upload promoted earlier: the copy the checks just read is in place.
        copy = already_promoted(client, layout.bucket, prod_key, promoted_by_run)
    else:
        copy = promote_object(
            client, layout.bucket, staged["uploader_key"], staged["etag"], prod_key,
            managed_copy_threshold=settings.managed_copy_threshold_bytes,
            run_id=context.run.run_id,
        )
    context.log.info(f"{staged['file']} → s3://{layout.bucket}/{prod_key} "
                     f"({copy['method']}, {copy['size']} bytes)")
    return dg.MaterializeResult(metadata={
        "file": dg.MetadataValue.path(f"s3://{layout.bucket}/{prod_key}"),
        "file_url": dg.MetadataValue.url(object_url(client, layout.bucket, prod_key)),
        "prod_key": prod_key,
        "source": dg.MetadataValue.path(str(staged["file"])),
        "uploader_key": staged["uploader_key"],
        "uploader": staged.get("uploader", ""),
        "table": table,
        "ingest_date": staged["ingest_date"],
        "size": copy["size"],
        "etag": copy["etag"],
        "source_etag": staged["etag"],
        "copy_method": copy["method"],
        "promoted_by_run": promoted_by_run,
        "seconds": round(time.monotonic() - started, 3),
    })


def build_glue_table_asset(table: str, database: str, layout: Layout) -> dg.AssetsDefinition:
    @dg.asset(
        key=glue_table_key(database, table),
        deps=[prod_file_key(table)],
        partitions_def=table_partitions(table),
        group_name=GROUP,
        kinds={"glue", "athena"},
        description=f"Glue table {database}.{table} (CSV, partitioned by {PARTITION_COLUMN}) "
        f"over {layout.table_location(table)}; each promoted {table} file adds or updates its "
        "partition, and the first one creates the table.",
    )
    def glue_table(
        context: dg.AssetExecutionContext,
        s3: S3Resource,
        glue: GlueResource,
        staged_tables_settings: StagedTablesSettings,
    ) -> dg.MaterializeResult:
        return register_partition(context, table, s3.get_client(), glue, staged_tables_settings)

    return glue_table


def register_partition(context, table: str, client, glue: GlueResource,
                       settings: StagedTablesSettings) -> dg.MaterializeResult:
    """The Glue asset of `table`: found the table if need be, register the file's partition,
    then remove the file from staging."""
    layout = settings.layout
    database = settings.glue_database
    staged = materialized_in_this_run(context, staging_file_key(table), table)
    prod = materialized_in_this_run(context, prod_file_key(table), table)
    columns = list(staged["columns"])

    created = False
    found = glue.get_table(database, table)
    if found is None:
        types = staged.get("inferred_types") or {}
        try:
            found = glue.create_table(
                database, table, [(column, types.get(column, "string")) for column in columns],
                layout.table_location(table),
                description=f"Staged CSVs of s3://{layout.bucket}/"
                f"{layout.staging_table_prefix(table)}; founded by {staged['uploader_key']}",
            )
            created = True
        except GlueError:
            found = glue.get_table(database, table)  # created by another run meanwhile
            if found is None:
                raise
    glue_columns = table_columns(found)
    if [name for name, _ in glue_columns] != columns:
        # Only a race between two founding files gets here; withdraw the copy.
        client.delete_object(Bucket=layout.bucket, Key=prod["prod_key"])
        raise dg.Failure(
            f"{staged['file']}: Glue table {database}.{table} has columns "
            f"{[name for name, _ in glue_columns]}, the file {columns}; the prod copy was "
            "withdrawn and the file stays in staging"
        )
    location = layout.partition_location(table, staged["ingest_date"])
    action = glue.add_or_update_partition(database, table, [staged["ingest_date"]], location)
    staging_outcome = remove_staged_object(client, layout.bucket, staged["uploader_key"],
                                           staged["etag"])
    context.log.info(
        f"{database}.{table}: partition {PARTITION_COLUMN}={staged['ingest_date']} {action}"
        + ("; table created" if created else "") + f"; staged file {staging_outcome}"
    )
    return dg.MaterializeResult(
        metadata={
            "table": f"{database}.{table}",
            "table_created": created,
            "columns": dg.MetadataValue.json([{"name": n, "type": t} for n, t in glue_columns]),
            "partition": f"{PARTITION_COLUMN}={staged['ingest_date']}",
            "partition_action": action,
            "location": dg.MetadataValue.path(location),
            "location_url": dg.MetadataValue.url(prefix_url(
                client, layout.bucket, location.removeprefix(f"s3://{layout.bucket}/"))),
            "file": dg.MetadataValue.path(str(prod["file"])),
            "file_url": dg.MetadataValue.url(object_url(client, layout.bucket, prod["prod_key"])),
            "uploader_key": staged["uploader_key"],
            "staged_file": staging_outcome,
            "athena_query": dg.MetadataValue.md(
                f"```sql\nSELECT * FROM \"{database}\".\"{table}\" "
                f"WHERE {PARTITION_COLUMN} = '{staged['ingest_date']}' LIMIT 10;\n```"
            ),
        },
    )


# --- helpers --------------------------------------------------------------------------------


def _require_database(glue: GlueResource, database: str, file: str) -> None:
    """Fail before the copy, not after it, when the table could not be created."""
    try:
        glue.client.get_database(Name=database)
    except glue.client.exceptions.EntityNotFoundException:
        raise dg.Failure(f"{file}: Glue database {database!r} does not exist; nothing was "
                         "promoted (create the database, then rerun the file)") from None


def materialized_in_this_run(context, asset_key: dg.AssetKey, table: str) -> dict[str, Any]:
    """The metadata of `asset_key`'s materialization for this partition, made by this run.

    Promotion relies on the checks having run on the same upload in the same run; a prod or
    Glue step launched alone (another run) is refused rather than promoting unchecked data.
    """
    records = context.instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[context.partition_key]),
        limit=1, ascending=False,
    ).records
    if not records or records[0].run_id != context.run.run_id:
        raise dg.Failure(
            f"{asset_key.to_user_string()} was not materialized in this run: promote a staged "
            f"file with {job_name(table)}, which checks it first in the same run"
        )
    return {name: value.value for name, value in
            records[0].asset_materialization.metadata.items()}


def promote_object(client: Any, bucket: str, source_key: str, etag: str, target_key: str, *,
                   managed_copy_threshold: int, run_id: str = "",
                   part_size: int = DEFAULT_PART_SIZE) -> dict[str, Any]:
    """Copy exactly version `etag` of the staged object to `target_key`.

    `copy_object` below `managed_copy_threshold`, a managed multipart copy above (S3's single
    copy stops at 5 GiB and is slow well before). The user metadata is kept (the uploader) and
    the staged key and etag are added. A Failure, with nothing left in prod, if the staged
    object changed or the copy's size differs.
    """
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=source_key, IfMatch=f'"{etag}"')
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"412", "PreconditionFailed"}:
            raise dg.Failure(f"s3://{bucket}/{source_key} changed after it was checked; the new "
                             "upload is checked by its own run") from None
        raise
    size = head["ContentLength"]
    extra = {
        "CopySourceIfMatch": f'"{etag}"',
        "MetadataDirective": "REPLACE",
        "Metadata": {**head.get("Metadata", {}),
                     PROD_METADATA_SOURCE_KEY: quote(source_key, safe="/"),
                     PROD_METADATA_SOURCE_ETAG: etag,
                     "credflow-run-id": run_id},
        "ContentType": head.get("ContentType") or "text/csv",
    }
    source = {"Bucket": bucket, "Key": source_key}
    try:
        if size > managed_copy_threshold:
            method = "managed multipart copy"
            client.copy(source, bucket, target_key, ExtraArgs=extra,
                        Config=transfer_config(part_size=part_size))
        else:
            method = "copy_object"
            client.copy_object(CopySource=source, Bucket=bucket, Key=target_key, **extra)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"412", "PreconditionFailed"}:
            raise dg.Failure(f"s3://{bucket}/{source_key} changed during the copy; nothing was "
                             "promoted") from None
        raise
    copied = client.head_object(Bucket=bucket, Key=target_key)
    if copied["ContentLength"] != size:
        client.delete_object(Bucket=bucket, Key=target_key)
        raise dg.Failure(f"copy of s3://{bucket}/{source_key} to {target_key} has "
                         f"{copied['ContentLength']} bytes, not {size}; withdrawn")
    return {"method": method, "size": size, "etag": copied["ETag"].strip('"')}


def already_promoted(client: Any, bucket: str, prod_key: str, run_id: str) -> dict[str, Any]:
    """The prod copy an earlier run made, as `promote_object` would describe a new one."""
    head = client.head_object(Bucket=bucket, Key=prod_key)
    return {"method": f"already in prod (promoted by run {run_id})",
            "size": head["ContentLength"], "etag": head["ETag"].strip('"')}


def remove_staged_object(client: Any, bucket: str, key: str, etag: str) -> str:
    """Remove the promoted upload from staging, unless a newer upload replaced it."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return "already gone from staging"
        raise
    if head["ETag"].strip('"') != etag:
        return "kept: a newer upload replaced it (its own run checks it)"
    try:
        client.delete_object(Bucket=bucket, Key=key, IfMatch=f'"{etag}"')
    except ClientError as error:
        code = error.response.get("Error", {}).get("Code")
        if code in {"412", "PreconditionFailed"}:
            return "kept: a newer upload replaced it (its own run checks it)"
        if code not in {"NotImplemented", "501"}:
            raise
        client.delete_object(Bucket=bucket, Key=key)  # no conditional delete: checked above
    return "removed from staging"

