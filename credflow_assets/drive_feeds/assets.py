"""An inbound sheet → its feed's table (+ change history) → a summary in the outbound folder.

One partition per inbound file revision, keyed `{feed}/{drive file id}/{revision}/{name}`: what
is processed is decided by the Drive id and revision, never by names, dates or file counts (the
name is only shown). Each feed has its own three assets, job and partition set, made from the
feed's config and model. A run's download of the file is removed when the run is done with it,
whatever the outcome (downloads.py).
"""


import hashlib
import tempfile
import traceback
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.config import FeedConfig
from credflow_assets.drive_feeds import checks
from credflow_assets.drive_feeds.downloads import (
    is_run_download,
    remove_leftovers,
    remove_run_download,
    run_download_dir,
)
from credflow_assets.drive_feeds.settings import DriveFeedSettings
from credflow_assets.drive_feeds.names import (
    FEED_TAG,
    GROUP,
    feed_partitions,
    inbound_key,
    job_name,
    parse_partition_key,
    records_key,
    summary_key,
)
from credflow_assets.drive_feeds.records_metadata import (
    ingested_file_metadata,
    static_records_metadata,
)
from credflow_assets.drive_feeds.validation import FeedPlan
from credflow_assets.common.error_reports import ErrorReport, error_report
from credflow_assets.common.flow import REPARSE_TAG
from credflow_assets.common.parse_logs import logged_events
from credflow_assets.resources.drive import DriveResource
from credflow_assets.resources.sql import SqlResource
from credflow_assets.common.run_recovery import mark_transient_failures

if TYPE_CHECKING:
    from credflow_assets.drive_feeds.ingest import IngestReport, SourceFile


def _file_label(feed: str, name: str, file_id: str, revision: str) -> str:
    return f"feed {feed}: file {name!r} (Drive id {file_id}, revision {revision})"


def fetch_content(drive: DriveResource, sheet: dict, dest: Path) -> str | None:
    """Download (or, for a Google Sheet, export as CSV) the file to `dest`. Returns the md5 of
    what arrived, or None for an export (Drive gives Sheets no checksum)."""
    from credflow_assets.drive_feeds.sheets import GOOGLE_SHEET

    dest.parent.mkdir(parents=True, exist_ok=True)
    if sheet["kind"] == GOOGLE_SHEET:
        partial = dest.with_name(dest.name + ".part")
        partial.write_bytes(drive.export_file(sheet["file_id"], "text/csv"))
        partial.replace(dest)
        return None
    digest = hashlib.md5()
    drive.download_file(sheet["file_id"], dest, digest=digest)
    return digest.hexdigest()


def build_inbound_asset(feed: FeedConfig) -> dg.AssetsDefinition:
    @dg.asset(
        key=inbound_key(feed.name),
        partitions_def=feed_partitions(feed.name),
        group_name=GROUP,
        kinds={"googledrive", "csv"},
        description=f"A sheet (CSV, XLSX or Google Sheet) dropped in the {feed.name} feed's "
        f"inbound Drive folder ({feed.inbound_folder_id}), downloaded: one partition per file "
        "revision, `{feed}/{drive file id}/{revision}/{file name}`.",
    )
    def inbound_sheet(context: dg.AssetExecutionContext, drive: DriveResource) -> dg.Output[dict]:
        return _inbound_sheet(context, drive, feed)

    return inbound_sheet


def _inbound_sheet(context: dg.AssetExecutionContext, drive: DriveResource,
                   feed: FeedConfig) -> dg.Output[dict]:
    """The partition's file revision, described, and downloaded if the run goes on to read it."""
    from credflow_assets.drive_feeds.sheets import SheetError, file_kind, revision_of

    removed = remove_leftovers(context.instance, context.run.run_id)
    if removed:
        context.log.info(f"removed {removed} download(s) left behind by runs that are over")
    feed_name, file_id, revision = parse_partition_key(context.partition_key)
    if feed_name != feed.name:
        raise dg.Failure(f"partition {context.partition_key} belongs to feed "
                         f"{feed_name!r}, not {feed.name!r}")
    file = drive.find_file(file_id)
    gone = _gone_from_inbound(file, feed.inbound_folder_id,
                              asked_by_hand=REPARSE_TAG in context.run.tags)
    if gone:
        raise dg.Failure(f"feed {feed_name}: Drive file {file_id} (revision {revision}): the "
                         f"file was {gone} before it was processed; nothing was read or written")
    label = _file_label(feed_name, file["name"], file_id, revision)
    try:
        kind = file_kind(file["name"], file["mimeType"])
    except SheetError as error:
        raise dg.Failure(f"{label}: {error}") from None
    sheet = _sheet_of(feed_name, file_id, revision, file, kind)
    current = revision_of(file)
    if current == revision:
        current = _download_revision(context, drive, file, sheet)
    _keep_download_only_to_ingest(context, sheet, current, label)
    return dg.Output(sheet, metadata=_inbound_metadata(file, sheet))


def _gone_from_inbound(file: dict | None, folder_id: str, *, asked_by_hand: bool) -> str | None:
    """How the file left the feed's inbound folder, if it did: a queued run whose file went
    before it started fails whole, never reading what is no longer the feed's. A reparse
    (`asked_by_hand`) may read a processed file someone has since filed elsewhere."""
    if file is None:
        return "deleted from Drive"
    if file.get("trashed"):
        return "trashed"
    if not asked_by_hand and folder_id not in (file.get("parents") or []):
        return "moved out of the inbound folder"
    return None


def _sheet_of(feed_name: str, file_id: str, revision: str, file: dict, kind: str) -> dict:
    """What the records step is handed (the inbound asset's value), before any download."""
    return {
        "feed": feed_name, "file_id": file_id, "revision": revision, "name": file["name"],
        "mime_type": file["mimeType"], "modified_time": file.get("modifiedTime"),
        "md5": file.get("md5Checksum"), "size": int(file["size"]) if file.get("size") else None,
        "kind": kind, "link": file.get("webViewLink"), "superseded_by": None,
    }


def _download_revision(context: dg.AssetExecutionContext, drive: DriveResource, file: dict,
                       sheet: dict) -> str:
    """Download the file into the run's directory; returns the revision that arrived."""
    from credflow_assets.drive_feeds.sheets import local_name

    instance, run_id = context.instance, context.run.run_id
    dest = run_download_dir(instance, run_id) / local_name(file)
    try:
        arrived = fetch_content(drive, sheet, dest)
    except BaseException:
        remove_run_download(instance, run_id)
        raise
    current = sheet["revision"]
    if arrived is not None and arrived != current:
        current = arrived  # the content changed between listing and download
    sheet["local_path"] = str(dest)
    sheet["size"] = dest.stat().st_size
    return current


def _keep_download_only_to_ingest(context: dg.AssetExecutionContext, sheet: dict, current: str,
                                  label: str) -> None:
    """A download holds every row of the file: it stays only when this run reads it next."""
    instance, run_id = context.instance, context.run.run_id
    if current != sheet["revision"]:
        # Drive serves only the newest content; that revision has a partition of its own.
        remove_run_download(instance, run_id)  # the newer content, if it had arrived
        sheet["superseded_by"], sheet["local_path"] = current, None
        context.log.warning(f"{label}: superseded by revision {current} before it was "
                            "processed; nothing to do for this revision")
    elif not _ingested_in(context.run, sheet["feed"]):
        remove_run_download(instance, run_id)
        sheet["local_path"] = None
        context.log.info(f"{label}: {sheet['size']:,} bytes ({sheet['kind']}) checked, not "
                         "kept: this run does not ingest it")
    else:
        context.log.info(f"{label}: downloaded {sheet['size']:,} bytes ({sheet['kind']})")


def _inbound_metadata(file: dict, sheet: dict) -> dict:
    metadata = {
        "feed": sheet["feed"], "file": file["name"], "drive_file_id": sheet["file_id"],
        "revision": sheet["revision"], "mime_type": file["mimeType"], "kind": sheet["kind"],
        "modified_time": file.get("modifiedTime") or "", "md5": file.get("md5Checksum") or "",
        "size_bytes": sheet["size"] or 0,
        "superseded_by": sheet["superseded_by"] or "",
    }
    if file.get("webViewLink"):
        metadata["drive_link"] = dg.MetadataValue.url(file["webViewLink"])
    return metadata


def _ingested_in(run: dg.DagsterRun, feed_name: str) -> bool:
    """Whether the run goes on to read the download (a run of the inbound asset alone does not)."""
    return run.asset_selection is None or records_key(feed_name) in run.asset_selection


def build_records_asset(plan: FeedPlan) -> dg.AssetsDefinition:
    feed = plan.feed

    @dg.asset(
        key=records_key(feed.name),
        ins={"sheet": dg.AssetIn(key=inbound_key(feed.name))},
        partitions_def=feed_partitions(feed.name),
        group_name=GROUP,
        kinds={"pandas", "sql"},
        check_specs=[checks.schema_check_spec(plan)],
        metadata=static_records_metadata(plan),
        description=f"The {feed.name} feed's rows, validated by {feed.schema_name} and upserted "
        f"into `{feed.table}` by {feed.id_column}; changes of tracked columns are kept in "
        f"`{feed.table}_history`.",
    )
    def records(
        context: dg.AssetExecutionContext,
        sheet: dict,
        drive: DriveResource,
        tables_db: SqlResource,
        s3: S3Resource,
        drive_feed_settings: DriveFeedSettings,
    ):
        client = s3.get_client()
        yield from logged_events(
            context, _ingest(context, plan, sheet, drive, tables_db, drive_feed_settings, client),
            flow=GROUP, s3_client=client, bucket=drive_feed_settings.logs_bucket,
        )

    return records


def _ingest(context: dg.AssetExecutionContext, plan: FeedPlan, sheet: dict,
            drive: DriveResource, tables_db: SqlResource, settings: DriveFeedSettings, s3_client):
    """The records step: the sheet's rows into the feed's table; yields the materialization
    and the schema check's result, both linking the file's error report when it has one."""
    from credflow_assets.drive_feeds.ingest import SourceFile

    feed = plan.feed
    if sheet["feed"] != feed.name:
        raise dg.Failure(f"partition {context.partition_key} belongs to feed "
                         f"{sheet['feed']}, not {feed.name}")
    source = SourceFile(feed=feed.name, file_id=sheet["file_id"], revision=sheet["revision"],
                        name=sheet["name"], mime_type=sheet["mime_type"],
                        modified_time=sheet["modified_time"])
    label = _file_label(feed.name, source.name, source.file_id, source.revision)
    if sheet["superseded_by"]:
        yield dg.MaterializeResult(metadata={
            "skipped": f"superseded by revision {sheet['superseded_by']}; nothing written"})
        yield dg.AssetCheckResult(check_name=checks.CHECK_NAME, passed=True,
                                  description="not checked: revision superseded")
        return
    instance, run_id = context.instance, context.run.run_id
    # The report is stored when the block ends: the results that link it are made after.
    with error_report(flow=GROUP, partition=context.partition_key, run_id=run_id,
                      s3_client=s3_client, bucket=settings.logs_bucket) as errors:
        try:  # whatever happens, the download goes when this step is done with it
            path = _run_download(drive, sheet, label, instance, run_id)
            outcome = _ingest_download(context, plan, path, sheet["kind"], source, label,
                                       tables_db, settings, errors)
        finally:
            remove_run_download(instance, run_id)
    if isinstance(outcome, _RefusedFile):
        yield outcome.check(errors.metadata())
        raise dg.Failure(outcome.message, metadata={**outcome.metadata, **errors.metadata()})
    report = outcome
    _log_report(context.log, label, report)
    yield dg.MaterializeResult(metadata={**ingested_file_metadata(
        plan, source, report, storage_kind=tables_db.get_engine().dialect.name),
        **errors.metadata()})
    yield checks.rows_result(plan, source, report, errors.metadata())


def _run_download(drive: DriveResource, sheet: dict, label: str,
                  instance: dg.DagsterInstance, run_id: str) -> Path:
    """The run's download of the sheet: the inbound step's, or one of its own."""
    from credflow_assets.drive_feeds.sheets import local_name

    path = Path(sheet.get("local_path") or "")
    if is_run_download(instance, run_id, path):
        return path
    # This step run without the inbound one (a re-execution from failure, or the records
    # asset alone): the run downloads its own copy.
    path = run_download_dir(instance, run_id) / \
        local_name({"name": sheet["name"], "mimeType": sheet["mime_type"]})
    arrived = fetch_content(drive, sheet, path)
    if arrived is not None and arrived != sheet["revision"]:
        raise dg.Failure(f"{label}: Drive now serves revision {arrived}; this "
                         "revision's content is gone (the newer one is its own "
                         "partition)")
    return path


@dataclass(frozen=True)
class _RefusedFile:
    """A file the ingest cannot take (wrong headers, not a readable sheet): nothing written.
    Its check result and failure are made once the error report is stored, to link it."""

    check: Callable[[dict], dg.AssetCheckResult]  # given the error report's links
    message: str
    metadata: dict


def _ingest_download(context: dg.AssetExecutionContext, plan: FeedPlan, path: Path, kind: str,
                     source: "SourceFile", label: str, tables_db: SqlResource,
                     settings: DriveFeedSettings,
                     errors: ErrorReport) -> "IngestReport | _RefusedFile":
    """Validate and upsert the download; returns the ingest's report, or the file refused.
    Every problem, with the value that caused it, goes to the error report `errors`."""
    from credflow_assets.drive_feeds.error_lines import report_header, report_rejections
    from credflow_assets.drive_feeds.ingest import HeaderMismatch, ingest_file
    from credflow_assets.drive_feeds.sheets import SheetError, SheetReader

    feed = plan.feed
    try:
        reader = SheetReader(path, kind, feed.date_formats)
        report = ingest_file(
            tables_db.get_engine(), plan, reader, source,
            chunk_rows=settings.chunk_rows, run_id=context.run.run_id,
            sample_size=settings.metadata_sample_rows, log=context.log.info,
        )
    except HeaderMismatch as error:
        problem, header = error.problem, error.header  # `error` is unbound after the clause
        report_header(errors, problem)
        return _RefusedFile(
            check=lambda links: checks.header_failure(plan, source, problem, header, links),
            message=f"{label}: headers do not match {feed.schema_name}: {error}; nothing "
                    "written",
            metadata={"missing_columns": problem.missing, "unexpected_columns": problem.unexpected})
    except SheetError as error:
        why = str(error)
        errors.add(None, "", why)
        return _RefusedFile(
            check=lambda links: checks.unreadable_file(plan, source, why, links),
            message=f"{label}: {why}; nothing written", metadata={})
    except dg.Failure:
        raise
    except Exception as error:  # noqa: BLE001 - told without its message, see there
        raise _internal_failure(context.log, label, error) from None
    if report.rejected:
        report_rejections(errors, tables_db.get_engine(), source)
    return report


def _internal_failure(log, label: str, error: Exception) -> dg.Failure:
    """A failure for an error credflow did not expect. Its message may quote the file's cells
    (a database quotes the value it refused, SQLAlchemy adds the statement's parameters), so
    neither the run's error nor its log repeats it: the log gets the error's kind and where it
    was raised, for the maintainers."""
    kinds, cause = [], error
    while cause is not None and len(kinds) < 5:
        kinds.append(f"{type(cause).__module__}.{type(cause).__qualname__}")
        cause = cause.__cause__ or cause.__context__
    where = "".join(traceback.format_tb(error.__traceback__))
    log.error(f"{label}: internal error {' <- '.join(kinds)} (its message is left out: it may "
              f"quote the file's cells), raised at:\n{where}")
    return dg.Failure(f"{label}: the ingest stopped on an internal error, not on a problem it "
                      "knows in the file; nothing was written. Run it again; if it fails again, "
                      "the run's log shows the maintainers where it stopped")


def _log_report(log, label: str, report: "IngestReport") -> None:
    for note in report.notes:
        log.info(f"{label}: {note}")
    log.info(
        f"{label}: {report.rows_read:,} row(s): {report.inserted:,} inserted, "
        f"{report.updated:,} updated, {report.unchanged:,} unchanged, "
        f"{report.rejected:,} rejected, {report.history_rows:,} change-history row(s) "
        f"in {report.seconds:.1f}s"
    )
    if report.kept_newer:
        log.info(f"{label}: {report.kept_newer:,} row(s) left as a later-modified "
                 "file of the feed wrote them")
    if report.rejected:
        log.warning(f"{label}: rejected rows by reason: {report.reasons}")


def build_summary_asset(feed: FeedConfig):
    @dg.asset(
        key=summary_key(feed.name),
        deps=[records_key(feed.name)],
        partitions_def=feed_partitions(feed.name),
        group_name=GROUP,
        kinds={"googledrive"},
        description=f"A summary of each processed {feed.name} file in the feed's outbound Drive "
        f"folder ({feed.outbound_folder_id}): counts and rejected rows with reasons; "
        "appProperties link it to the inbound file id and revision.",
    )
    def outbound_summary(
        context: dg.AssetExecutionContext, drive: DriveResource, tables_db: SqlResource
    ) -> dg.MaterializeResult:
        from credflow_assets.drive_feeds.store import (
            ensure_bookkeeping,
            processed_file,
            rejections_of,
        )
        from credflow_assets.drive_feeds.summary import publish_summary, write_summary

        feed_name, file_id, revision = parse_partition_key(context.partition_key)
        engine = tables_db.get_engine()
        ensure_bookkeeping(engine)
        with engine.connect() as connection:
            record = processed_file(connection, feed_name, file_id, revision)
            if record is None:
                return dg.MaterializeResult(metadata={
                    "skipped": "this revision was not processed (superseded); no summary"})
            with tempfile.TemporaryDirectory(prefix="credflow-summary-") as work:
                path = write_summary(Path(work) / "summary.txt", feed, record,
                                     rejections_of(connection, feed_name, file_id, revision))
                summary, action = publish_summary(drive, feed, record, path)
        label = _file_label(feed_name, record["file_name"], file_id, revision)
        context.log.info(f"{label}: summary {action} in the outbound folder ({summary['id']})")
        metadata = {
            "summary_file_id": summary["id"], "summary_name": summary["name"],
            "action": action, "outbound_folder_id": feed.outbound_folder_id,
            **{key: record.get(key) or 0
               for key in ("inserted", "updated", "unchanged", "kept_newer", "rejected")},
        }
        if summary.get("webViewLink"):
            metadata["summary_link"] = dg.MetadataValue.url(summary["webViewLink"])
        return dg.MaterializeResult(metadata=metadata)

    return outbound_summary


def build_feed_job(feed: FeedConfig):
    return dg.define_asset_job(
        job_name(feed.name),
        selection=dg.AssetSelection.assets(inbound_key(feed.name), records_key(feed.name),
                                           summary_key(feed.name)),
        executor_def=dg.in_process_executor,
        # An outage is requested again later (Dagster's run_retries); a bad file is not.
        hooks={mark_transient_failures},
        tags={FEED_TAG: feed.name},
        description=f"One inbound {feed.name} sheet → {feed.table} → its outbound summary.",
    )
