"""The staged-file asset's work: observe one upload and check it (its columns against the
table's, then its rows), yielding the materialization and the two blocking check results, and
failing the step with the rejection sentence when a check fails (`assets.py` builds the asset).

Reads are of the checked version only (conditional on its etag): a newer upload under the same
key fails this run as superseded and is checked by its own run.
"""

import time
from collections.abc import Iterator
from contextlib import closing, contextmanager
from dataclasses import dataclass
from datetime import datetime
from typing import Any
from urllib.parse import unquote

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.common.csv_columns import normalize_headers
from credflow_assets.common.error_reports import ErrorReport, error_report
from credflow_assets.common.parse_logs import parse_log
from credflow_assets.resources.glue import GlueResource
from credflow_assets.resources.s3 import object_url
from credflow_assets.staged_tables.checks import (
    PromotedCopy,
    StagedObject,
    columns_check_result,
    requested_ingest_date,
    rows_check_result,
    uploader_of,
)
from credflow_assets.staged_tables.columns import (
    ColumnComparison,
    HeaderError,
    TableColumns,
    compare_columns,
    read_header,
    resolve_table_columns,
)
from credflow_assets.staged_tables.layout import Layout, StagedFile, object_key_for
from credflow_assets.staged_tables.names import (
    GROUP,
    PROD_METADATA_SOURCE_ETAG,
    PROD_METADATA_SOURCE_KEY,
    VERSION_TAG,
    job_name,
    object_version,
    prod_file_key,
    staging_file_key,
)
from credflow_assets.staged_tables.rejection import rejection_sentence, report_header_problems
from credflow_assets.staged_tables.settings import StagedTablesSettings
from credflow_assets.staged_tables.validation import RowsReport, validate_rows


def observe_and_check(context: dg.AssetExecutionContext, table: str, s3: S3Resource,
                      glue: GlueResource, settings: StagedTablesSettings):
    """The staged-file asset of `table`: its materialization, then its two check results; for a
    rejected file, then a `dg.Failure` whose description is the rejection sentence.

    Failing the step ourselves, rather than leaving it to Dagster's blocking-check error
    ("2 blocking asset checks failed with ERROR severity"), makes the run's failure read as the
    file's problem, in `credflow sync`, the UI and the notification alike. The checks stay
    blocking: the failed step still stops the prod and Glue steps of the run.
    """
    layout = settings.layout
    client = s3.get_client()
    staged = _upload_to_check(context, client, layout, table)
    model = _model_for(settings, staged.table)
    # The parse's own log (doc 004), beside the data in the logs bucket, linked below. It holds
    # counts, columns and checks, never cell values: those go to the file's error report, in
    # the same place.
    with parse_log(context, flow=GROUP, s3_client=client, bucket=settings.logs_bucket) as log:
        log.keep_as_is([staged.uri, staged.key, staged.name])
        with error_report(flow=GROUP, partition=context.partition_key,
                          run_id=context.run.run_id, s3_client=client,
                          bucket=settings.logs_bucket) as errors, _unless_replaced(staged):
            found = _inspect_upload(context, client, glue, settings, staged, model, errors)
        # The error report is stored now: the checks and the sentence can point at it.
        columns_result = columns_check_result(
            staged, found.comparison, found.reference, found.raw_header, found.header_error,
            error_report=errors.metadata())
        rows_result = rows_check_result(
            staged, found.report, not_run_reason=found.header_error or "the header is unreadable",
            error_report=errors.metadata())
        checks_passed = columns_result.passed and rows_result.passed
        rejection = None if checks_passed and not staged.ingest_date_problem else \
            rejection_sentence(staged.key, found.comparison, found.header_error, found.report,
                               error_report_stored=errors.uri is not None,
                               upload_problem=staged.ingest_date_problem)
        if rejection is not None and staged.promoted:
            rejection += (f" Its prod copy {staged.read_uri}, promoted by run "
                          f"{staged.promoted.run_id}, is left as it is.")
        if rejection is None:
            context.log.info(f"{staged.uri}: both checks passed; "
                             + ("registering its prod copy's partition again" if staged.promoted
                                else "promoting"))
        else:
            context.log.warning(rejection if staged.promoted
                                else f"{rejection} The file stays in staging.")

    yield dg.MaterializeResult(metadata={
        **_observation_metadata(client, layout, staged, found, checks_passed),
        **log.metadata(),
        **errors.metadata(),
    })
    yield columns_result
    yield rows_result
    if rejection is not None:
        # Dagster has recorded the observation and both (blocking) check results above; the
        # step now fails with the file's own sentence, so the prod and Glue steps do not run.
        raise dg.Failure(description=rejection, metadata={
            "file": dg.MetadataValue.path(staged.uri),
            "uploader_key": staged.key,
            "table": staged.table,
            **log.metadata(),
            **errors.metadata(),
        })


def _upload_to_check(context: dg.AssetExecutionContext, client, layout: Layout,
                     table: str) -> StagedObject:
    """The staged object of this run's partition, as it is now; a Failure when it is no longer
    the upload the run was requested for (the newer upload has a run of its own)."""
    target = _target(layout, context.partition_key, table)
    staged = head_staged(client, layout.bucket, target)
    if staged is None:
        staged = promoted_upload(context.instance, client, layout, target, context.partition_key)
        context.log.info(f"{staged.uri} was promoted by run {staged.promoted.run_id} and left "
                         f"staging; checking its prod copy {staged.read_uri} again")
    requested = context.run.tags.get(VERSION_TAG)
    if requested and requested != staged.version:
        raise dg.Failure(
            description=f"{staged.uri}: superseded — this run was for upload {requested}, the "
            f"object is now {staged.version}; the newer upload is checked by its own run",
            metadata={"uploader_key": staged.key, "requested_version": requested,
                      "current_version": staged.version},
        )
    return staged


@dataclass
class _Inspection:
    """What reading a staged upload found: the table's columns, the file's header (or why it
    could not be read), their comparison and, when there is a header, the rows' report."""

    reference: TableColumns
    raw_header: list[str] | None = None
    header_error: str | None = None
    comparison: ColumnComparison | None = None
    report: RowsReport | None = None


def _inspect_upload(context, client, glue: GlueResource, settings: StagedTablesSettings,
                    staged: StagedObject, model, errors: ErrorReport) -> _Inspection:
    """Read the upload's header, compare it with the table's columns, then stream its rows
    through validation; every problem, value included, goes to the error report."""
    layout = settings.layout
    found = _Inspection(resolve_table_columns(glue, client, layout, settings.glue_database,
                                              staged.table))
    context.log.info(f"{staged.uri} ({staged.size} bytes, etag {staged.etag}): table "
                     f"{staged.table}, columns from {found.reference.description}")
    try:
        found.raw_header = read_header(client, layout.bucket, staged.read_key,
                                       etag=staged.read_etag)
    except HeaderError as error:
        found.header_error = str(error)
    if found.raw_header is not None:
        found.comparison = compare_columns(normalize_headers(found.raw_header),
                                           found.reference.columns)
    report_header_problems(errors, found.comparison, found.header_error)
    if found.comparison is not None:
        found.report = _validate(client, layout, staged, found.comparison, found.reference,
                                 model, settings, errors, context.log)
    return found


def _observation_metadata(client, layout: Layout, staged: StagedObject, found: _Inspection,
                          checks_passed: bool) -> dict[str, Any]:
    """The staged-file materialization's metadata: the upload, its header and columns, the
    table's columns' origin and the rows read (never a cell's value)."""
    metadata: dict[str, Any] = {
        "file": dg.MetadataValue.path(staged.uri),
        # Where the bytes are now: staging, or the prod copy of an upload promoted earlier.
        "file_url": dg.MetadataValue.url(object_url(client, layout.bucket, staged.read_key)),
        "uploader_key": staged.key,
        "uploader": staged.uploader or "",
        "table": staged.table,
        "name": staged.name,
        "size": staged.size,
        "etag": staged.etag,
        "last_modified": staged.last_modified.isoformat(),
        "version": staged.version,
        "ingest_date": staged.ingest_date,
        "header": dg.MetadataValue.json(found.raw_header or []),
        "columns": dg.MetadataValue.json(found.comparison.actual if found.comparison else []),
        "table_columns_from": found.reference.description,
        "rows": found.report.rows if found.report else 0,
        "checks_passed": checks_passed,
    }
    if staged.promoted is not None:
        metadata["read_from"] = dg.MetadataValue.path(staged.read_uri)
        metadata["promoted_by_run"] = staged.promoted.run_id
    if found.report is not None and found.report.inferred_types is not None:
        metadata["inferred_types"] = dg.MetadataValue.json(found.report.inferred_types)
    return metadata


def _validate(client, layout: Layout, staged: StagedObject, comparison, reference, model,
              settings: StagedTablesSettings, errors: ErrorReport, log) -> RowsReport:
    """Stream the file's rows (this version only) through validation; each problem, value
    included, goes to the error report."""
    started = time.monotonic()
    body = client.get_object(Bucket=layout.bucket, Key=staged.read_key,
                             IfMatch=f'"{staged.read_etag}"')["Body"]
    with closing(body):
        report = validate_rows(
            body, comparison.actual, model=model, glue_types=reference.glue_types,
            infer_types=reference.source != "glue", chunk_rows=settings.chunk_rows,
            sample_size=settings.failure_sample_size, report_problem=errors.add,
        )
    log.info(f"{staged.uri}: {report.summary()} in {time.monotonic() - started:.1f}s")
    return report


def _target(layout, partition_key: str, table: str) -> StagedFile:
    key = object_key_for(partition_key)
    target = layout.staged_file(key)
    if target is None:
        raise dg.Failure(f"{layout.uri(key)} is not a staged file: {layout.why_ignored(key)}")
    if target.table != table:
        raise dg.Failure(f"{layout.uri(key)} is a file of table {target.table}, not {table}: "
                         f"its own job is {job_name(target.table)}")
    return target


@contextmanager
def _unless_replaced(staged: StagedObject) -> Iterator[None]:
    """Reads are conditional on the etag: a 412 means a newer upload replaced the file."""
    from botocore.exceptions import ClientError

    try:
        yield
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in {"412", "PreconditionFailed"}:
            raise
        raise dg.Failure(f"{staged.uri}: superseded — replaced by a newer upload while it was "
                         "being checked; the newer upload is checked by its own run") from None


def head_staged(client: Any, bucket: str, target: StagedFile) -> StagedObject | None:
    """The staged object as it is now; None when it is no longer in staging."""
    from botocore.exceptions import ClientError

    try:
        head = client.head_object(Bucket=bucket, Key=target.key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise
    etag = head["ETag"].strip('"')
    ingest_date, ingest_date_problem = requested_ingest_date(head.get("Metadata", {}))
    return StagedObject(
        bucket=bucket, key=target.key, table=target.table, name=target.name,
        size=head["ContentLength"], etag=etag, last_modified=head["LastModified"],
        version=object_version(etag, head["LastModified"]),
        uploader=uploader_of(head.get("Metadata", {})),
        requested_ingest_date=ingest_date, ingest_date_problem=ingest_date_problem,
    )


def promoted_upload(instance: dg.DagsterInstance, client: Any, layout: Layout,
                    target: StagedFile, partition_key: str) -> StagedObject:
    """The upload of a partition whose file left staging because a run promoted it, read from
    its prod copy: a rerun of the partition (the UI's Materialize, a re-execution, a second
    request for the same upload) checks that copy again and registers its partition again,
    instead of failing on a file that did nothing wrong. A Failure when no run promoted it, or
    when its prod copy is gone or is now another upload's."""
    from botocore.exceptions import ClientError

    gone = f"s3://{layout.bucket}/{target.key} is no longer in staging"
    promotion = _latest_metadata(instance, prod_file_key(target.table), partition_key)
    if promotion is None:
        raise dg.Failure(f"{gone}, and no run promoted it: it was deleted before it was "
                         "checked. Upload it again to process it.")
    prod_key = str(promotion["prod_key"])
    run_id = str(promotion.get("promoted_by_run") or promotion["run_id"])  # the one that copied
    try:
        head = client.head_object(Bucket=layout.bucket, Key=prod_key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") not in {"404", "NoSuchKey", "NotFound"}:
            raise
        raise dg.Failure(f"{gone}: run {run_id} promoted it to s3://{layout.bucket}/{prod_key}, "
                         "which has been deleted since. Upload the file again to restore "
                         "it.") from None
    source_key = unquote(head.get("Metadata", {}).get(PROD_METADATA_SOURCE_KEY, ""))
    source_etag = head.get("Metadata", {}).get(PROD_METADATA_SOURCE_ETAG, "")
    if source_key != target.key or source_etag != promotion["source_etag"]:
        holder = f"upload {source_key}" if source_key else "a file credflow did not promote"
        raise dg.Failure(f"{gone}: run {run_id} promoted it to s3://{layout.bucket}/{prod_key}, "
                         f"which now holds {holder}; that copy is left as it is.")
    checked = _latest_metadata(instance, staging_file_key(target.table), partition_key,
                               run_id=run_id) or {}
    return StagedObject(
        bucket=layout.bucket, key=target.key, table=target.table, name=target.name,
        size=head["ContentLength"], etag=source_etag,
        last_modified=(datetime.fromisoformat(checked["last_modified"])
                       if "last_modified" in checked else head["LastModified"]),
        version=str(checked.get("version") or object_version(source_etag, head["LastModified"])),
        uploader=uploader_of(head.get("Metadata", {})),
        requested_ingest_date=str(promotion["ingest_date"]),
        promoted=PromotedCopy(key=prod_key, etag=head["ETag"].strip('"'), run_id=run_id),
    )


def _latest_metadata(instance: dg.DagsterInstance, asset_key: dg.AssetKey, partition_key: str,
                     run_id: str | None = None) -> dict[str, Any] | None:
    """The metadata (and run id) of the asset's latest materialization of this partition, or
    of the one made by run `run_id` (however many reruns came since)."""
    if run_id is None:
        records = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key]),
            limit=1, ascending=False).records
        materializations = [record.asset_materialization for record in records]
    else:
        records = instance.get_records_for_run(
            run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
        materializations = [record.asset_materialization for record in records]
        materializations = [m for m in materializations if m is not None
                            and m.asset_key == asset_key and m.partition == partition_key]
    if not materializations:
        return None
    return {"run_id": run_id or records[0].run_id,
            **{name: value.value for name, value in materializations[-1].metadata.items()}}


def _model_for(settings: StagedTablesSettings, table: str):
    name = settings.table_models.get(table)
    if not name:
        return None
    from credflow_assets.staged_tables.schemas import resolve_model

    try:
        return resolve_model(name)
    except KeyError as error:
        raise dg.Failure(f"table {table}: {error.args[0]}") from None
