"""New staged CSVs → one run per file, of its own table's job; failures → the notifier.

Both sensors are built from the config (`build_staging_events_sensor`,
`build_staging_reconciliation_sensor`): a staged file of table T is a partition of T's own
partition set (`staged_{T}_files`), added by the tick that requests its run of `staged_{T}_job`.

The fast sensor (`staging_events_sensor`; `credflow sync` runs it before the reconciliation)
drains the staging prefix's S3 event queue: a tick costs what was uploaded, not what staging
holds. It looks at each object once (`head_object`, eight at a time) and requests a
run for the version that is there now, so a burst of uploads to one key becomes one run, and a
redelivered event the same run key. The HEAD is needed: an event has no Last-Modified, which a
version is made of (the reconciliation computes the same version from its listing), and the
object may have been replaced or promoted since. Requests are ordered by upload time, so a
table's first upload is the one that founds it (the per-table run concurrency limit keeps that
order under the daemon).

The slow reconciliation sensor lists one bounded stretch of staging per tick
(`max_reconcile_pages_per_tick` pages of 1,000 keys), resuming after the cursor and wrapping
around at the end, and looks the stretch's files up in the instance in bulk (their latest
observations in two queries per 1,000 files, their active runs in one), so a tick costs the
same whatever staging holds, and runs every minute; a full pass takes about
`files / (1,000 × pages)` ticks. Since promoted files leave staging, what it finds is small:
uploads whose event was lost (found within one pass plus one tick), runs that failed before
checking (S3 or Glue errors: retried once per pass), and rejected files, which it leaves alone
until a new upload replaces them.

`describe_failure` is the flow's message in the code location's failure notifications
(notifications.py), whatever launched the run (a sensor, `credflow sync`, the UI, a backfill):
for a rejected file, the run's own failure (the rejection sentence: file, columns, rules, rows),
the table, the uploader and the error report's link, from the run's failed check results; other
failures with their error.
"""


from collections import defaultdict
from collections.abc import Mapping
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.common.notifications import failure_reason
from credflow_assets.common.uploader_mail import SAME_KEY, UploaderNotice, UploaderOf
from credflow_assets.common.reconciliation import (
    RECONCILE_INTERVAL_SECONDS,
    RECONCILE_PAGE_KEYS,
    RECONCILIATION_SENSOR_TAGS,
    ReconcileCursor,
    latest_metadata_by_partition,
    partitions_with_active_runs,
)
from credflow_assets.common.tick_log import TickLog
from credflow_assets.resources.s3 import head_object_or_none
from credflow_assets.resources.sqs import S3EventCursor, SqsResource
from credflow_assets.staged_tables.layout import Layout, object_key_for, table_of_partition
from credflow_assets.staged_tables.checks import uploader_of
from credflow_assets.staged_tables.settings import StagedTablesSettings
from credflow_assets.staged_tables.names import (
    PRINCIPAL_TAG,
    STAGED_KEY_TAG,
    TABLE_TAG,
    UPLOADER_TAG,
    VERSION_TAG,
    job_name,
    object_version,
    staging_file_key,
    table_of_run,
    table_partitions,
)

# HEADs in flight at once: below botocore's 10 pooled connections per client (boto3 clients are
# thread-safe).
HEAD_CONCURRENCY = 8


def _request(staged_file, version: str, run_key: str,
             who: Mapping[str, str] | None = None) -> dg.RunRequest:
    """`who`: the uploader's tags (UPLOADER_TAG, PRINCIPAL_TAG), when the sensor saw them."""
    return dg.RunRequest(
        job_name=job_name(staged_file.table),
        partition_key=staged_file.partition_key,
        run_key=run_key,
        tags={TABLE_TAG: staged_file.table, STAGED_KEY_TAG: staged_file.key,
              VERSION_TAG: version, **(who or {})},
    )


def _uploader_tags(head: Mapping[str, Any], event) -> dict[str, str]:
    """Who uploaded, as the HEAD and the event say: the `uploaded-by` metadata and the S3
    principal (the failure e-mail goes to the one, else the other's mapped address)."""
    tags = {}
    uploader = uploader_of(head.get("Metadata") or {})
    if uploader:
        tags[UPLOADER_TAG] = uploader
    if event.principal:
        tags[PRINCIPAL_TAG] = event.principal
    return tags


def _result(requests: list[dg.RunRequest], cursor: str) -> dg.SensorResult:
    """The tick's runs, each file added to its own table's partition set first."""
    keys_by_table: dict[str, dict[str, None]] = defaultdict(dict)
    for request in requests:
        keys_by_table[request.tags[TABLE_TAG]][request.partition_key] = None
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=[
            table_partitions(table).build_add_request(list(keys))
            for table, keys in keys_by_table.items()
        ],
        cursor=cursor,
    )


def _tables_sentence(jobs: Mapping[str, Any]) -> str:
    return ", ".join(f"{table} → {job_name(table)}" for table in jobs) or "none configured"


def build_staging_events_sensor(jobs: Mapping[str, Any], layout: Layout) -> dg.SensorDefinition:
    """`staging_events_sensor`, targeting each table's job (`jobs`: table → its job)."""

    @dg.sensor(
        name="staging_events_sensor", jobs=list(jobs.values()) or None,
        minimum_interval_seconds=30, default_status=dg.DefaultSensorStatus.RUNNING,
        description="Drains the staging uploads' S3 event queue and requests one run per new "
        f"upload to {layout.uri(layout.staging_prefix)}{{table}}/ (the version there now), of "
        "that table's own job, adding the file to that table's partitions. Tables: "
        f"{_tables_sentence(jobs)}.",
    )
    def staging_events_sensor(
        context: dg.SensorEvaluationContext,
        s3: S3Resource,
        sqs: SqsResource,
        staged_tables_settings: StagedTablesSettings,
    ) -> dg.SensorResult:
        return staging_events_tick(context, s3, sqs, staged_tables_settings)

    return staging_events_sensor


def staging_events_tick(context: dg.SensorEvaluationContext, s3: S3Resource, sqs: SqsResource,
                        settings: StagedTablesSettings) -> dg.SensorResult:
    """One tick of `staging_events_sensor` (module docstring)."""
    layout = settings.layout
    cursor = S3EventCursor.from_json(context.cursor)
    batch = sqs.drain_s3_events(
        sqs.queue_url(settings.staging_queue),
        acknowledge=cursor.pending_receipts,
        max_messages=settings.max_events_per_tick,
        wait_time_seconds=settings.event_wait_seconds,
        log=TickLog(context),
    )
    latest: dict[str, Any] = {}
    for event in sorted(batch.events, key=lambda e: (e.event_time or "", e.sequencer or "")):
        if event.bucket != layout.bucket:
            continue
        why = layout.why_ignored(event.key)
        if why:
            if why != "a folder marker":
                context.log.warning(f"ignoring s3://{event.bucket}/{event.key}: {why}")
            continue
        latest[event.key] = event
    heads = _head_objects(s3.get_client(), layout.bucket, list(latest)) if latest else {}
    found = []
    for key, event in latest.items():
        head = heads[key]
        if head is None:
            context.log.info(f"s3://{layout.bucket}/{key} is gone already; nothing to do")
            continue
        found.append((head["LastModified"], event.event_time or "", key, head))
    requests = []
    # Upload order (S3 times have second resolution, events milliseconds): a table's first
    # upload founds it.
    for _, _, key, head in sorted(found, key=lambda item: item[:3]):
        event = latest[key]
        staged_file = layout.staged_file(key)
        version = object_version(head["ETag"], head["LastModified"])
        if _version_requested(context.instance, staged_file.partition_key, version):
            # The reconciliation sensor got there first (its tick fell between the upload and
            # this one): a second run would find the file promoted and fail.
            continue
        requests.append(_request(staged_file, version, f"{staged_file.partition_key}@{version}",
                                 _uploader_tags(head, event)))
    if batch.received:
        context.log.info(f"{batch.received} message(s), {len(batch.events)} event(s), "
                         f"{len(requests)} staged file(s) to check")
    return _result(requests, cursor.advance(batch).to_json())


def _version_requested(instance: dg.DagsterInstance, partition_key: str, version: str) -> bool:
    """Whether a run was already made for this upload (this partition and version)."""
    return bool(instance.get_run_ids(
        dg.RunsFilter(tags={"dagster/partition": partition_key, VERSION_TAG: version}), limit=1))


def _head_objects(client, bucket: str, keys: list[str]) -> dict[str, dict[str, Any] | None]:
    """`head_object` of each key (None: gone), a few at a time: each is a round trip, and a
    tick waits for up to `max_events_per_tick` of them."""
    with ThreadPoolExecutor(HEAD_CONCURRENCY) as pool:
        return dict(zip(keys, pool.map(lambda key: head_object_or_none(client, bucket, key),
                                       keys)))


def build_staging_reconciliation_sensor(jobs: Mapping[str, Any],
                                        layout: Layout) -> dg.SensorDefinition:
    """`staging_reconciliation_sensor`, targeting each table's job (`jobs`: table → its job)."""

    @dg.sensor(
        name="staging_reconciliation_sensor", jobs=list(jobs.values()) or None,
        minimum_interval_seconds=RECONCILE_INTERVAL_SECONDS,
        default_status=dg.DefaultSensorStatus.RUNNING, tags=RECONCILIATION_SENSOR_TAGS,
        description=f"Lists one bounded stretch of {layout.uri(layout.staging_prefix)} per "
        "tick, resuming from its cursor, and requests a run of its table's job for each upload "
        "never checked (its event was lost) or whose run failed before checking; rejected "
        f"files wait for a new upload. Tables: {_tables_sentence(jobs)}.",
    )
    def staging_reconciliation_sensor(
        context: dg.SensorEvaluationContext,
        s3: S3Resource,
        staged_tables_settings: StagedTablesSettings,
    ) -> dg.SensorResult:
        return staging_reconciliation_tick(context, s3, staged_tables_settings)

    return staging_reconciliation_sensor


def staging_reconciliation_tick(context: dg.SensorEvaluationContext, s3: S3Resource,
                                settings: StagedTablesSettings) -> dg.SensorResult:
    """One bounded stretch of staging/ per tick, resuming from the cursor (module docstring)."""
    layout = settings.layout
    cursor = ReconcileCursor.from_json(context.cursor)
    objects, finished = _staged_objects_after(s3.get_client(), layout, cursor.after,
                                              settings.max_reconcile_pages_per_tick)
    staged = []  # (staged file, version), in upload order: a table's first upload founds it
    for item in sorted(objects, key=lambda item: (item["LastModified"], item["Key"])):
        staged_file = layout.staged_file(item["Key"])
        if staged_file is not None:
            staged.append((staged_file, object_version(item["ETag"], item["LastModified"])))
    # Each table's files are looked up in bulk on its own asset and job.
    keys_by_table: dict[str, list[str]] = defaultdict(list)
    for staged_file, _ in staged:
        keys_by_table[staged_file.table].append(staged_file.partition_key)
    observed: dict[str, dict[str, Any]] = {}
    active: set[str] = set()
    for table, keys in keys_by_table.items():
        observed.update(latest_metadata_by_partition(context.instance, staging_file_key(table),
                                                     keys))
        active |= partitions_with_active_runs(context.instance, job_name(table), keys)
    requests = [
        _request(staged_file, version,
                 # The pass number lets a run that failed before checking be retried once per
                 # pass.
                 f"reconcile:{staged_file.partition_key}@{version}:{cursor.pass_number}")
        for staged_file, version in staged
        if staged_file.partition_key not in active
        and not _rejected(observed.get(staged_file.partition_key), version)
    ]
    # The next tick resumes after the last key listed (a new key that sorts earlier waits for
    # the next pass, or, normally, arrives through its event).
    next_cursor = cursor.advanced_to(None if finished else objects[-1]["Key"])
    if requests:
        context.log.info(f"{len(staged)} staged file(s) listed, {len(requests)} to check")
    return _result(requests, next_cursor.to_json())


def _staged_objects_after(client, layout, after: str | None, max_pages: int):
    """Up to `max_pages` pages of objects under staging/ after `after`, in key order, and
    whether the listing reached the prefix's end."""
    kwargs: dict[str, Any] = {"Bucket": layout.bucket, "Prefix": layout.staging_prefix,
                              "MaxKeys": RECONCILE_PAGE_KEYS}
    if after:
        kwargs["StartAfter"] = after
    objects = []
    for _ in range(max_pages):
        page = client.list_objects_v2(**kwargs)
        objects.extend(page.get("Contents", []))
        if not page.get("IsTruncated"):
            return objects, True
        kwargs.pop("StartAfter", None)
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    return objects, False


def _rejected(observed: dict[str, Any] | None, version: str) -> bool:
    """This version was checked and failed: it stays until a new upload replaces it."""
    return bool(observed) and observed.get("version") == version \
        and not observed.get("checks_passed")


def last_observation(instance: dg.DagsterInstance, partition_key: str) -> dict[str, Any] | None:
    """The metadata of the latest materialization of this partition of its table's staged-file
    asset."""
    table = table_of_partition(partition_key)
    if table is None or not instance.has_dynamic_partition(table_partitions(table).name,
                                                           partition_key):
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=staging_file_key(table), asset_partitions=[partition_key]),
        limit=1, ascending=False,
    ).records
    if not records:
        return None
    return {name: value.value
            for name, value in records[0].asset_materialization.metadata.items()}


# --- failure notifications ------------------------------------------------------------------


def describe_failure(context: dg.RunFailureSensorContext) -> tuple[str, list[str]]:
    """The staged-tables flow's message for the code location's failure notifications."""
    return describe_failed_run(context.instance, context.dagster_run, failure_reason(context))


def describe_failed_run(instance: dg.DagsterInstance, run: dg.DagsterRun,
                        error: str) -> tuple[str, list[str]]:
    """The notification for a failed staged-file run: which file, and what is wrong with it.

    A run the UI launched (Dagster's implicit asset job) may lack the flow's tags: its table
    then follows from its assets, else from its partition key, and its file from that key.
    """
    partition_key = run.tags.get("dagster/partition", "")
    key = run.tags.get(STAGED_KEY_TAG) or object_key_for(partition_key)
    table = (run.tags.get(TABLE_TAG)
             or table_of_run(run.job_name, list(run.asset_selection or []))
             or table_of_partition(partition_key)
             or "?")
    failed = [evaluation for evaluation in _check_evaluations(instance, run.run_id)
              if not evaluation.passed]
    if not failed:
        return (f"credflow: staged file {key} failed",
                [f"table: {table}", f"uploader's key: {key}", f"cause: {error}",
                 f"run: {run.run_id}"])
    results = [{name: value.value for name, value in evaluation.metadata.items()}
               for evaluation in failed]
    # `error` is the step's failure: the rejection sentence (rejection.py), which names the
    # file, what is wrong with it (columns, rules, rows; never a value) and what to do.
    lines = [error, f"table: {table}", f"uploaded by: {results[0].get('uploader', '(unknown)')}"]
    error_report = next((result.get("errors_url") or result["errors_uri"]
                         for result in results if result.get("errors_uri")), None)
    if error_report:
        lines.append(f"error report: {error_report}")
    lines.append(f"run: {run.run_id}")
    return f"credflow: staged file rejected — {key}", lines


def _check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[Any]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [entry.dagster_event.event_specific_data for entry in entries
            if entry.dagster_event is not None]


def staged_uploader(uploaders_by_principal: Mapping[str, str]) -> UploaderOf:
    """Who is e-mailed about a staged file that was not promoted: the address in the object's
    `uploaded-by` metadata (the sensor's tag, else the check's result), else the upload's S3
    principal mapped through `notifications.staged_uploaders`; nobody when neither is known."""

    def uploader_of_run(instance: dg.DagsterInstance, run: dg.DagsterRun,
                        _sentence: str) -> UploaderNotice | None:
        results = [{name: value.value for name, value in evaluation.metadata.items()}
                   for evaluation in _check_evaluations(instance, run.run_id)]
        from_checks = next((str(result["uploader"]) for result in results
                            if "@" in str(result.get("uploader", ""))), None)
        address = (run.tags.get(UPLOADER_TAG) if "@" in run.tags.get(UPLOADER_TAG, "") else None) \
            or from_checks or uploaders_by_principal.get(run.tags.get(PRINCIPAL_TAG, ""))
        if not address:
            return None
        key = run.tags.get(STAGED_KEY_TAG) or object_key_for(
            run.tags.get("dagster/partition", ""))
        where = next((str(result["file"]) for result in results if result.get("file")), key)
        # The content (its etag): the same bytes uploaded again are the same file version.
        version = next((str(result["etag"]) for result in results if result.get("etag")),
                       run.tags.get(VERSION_TAG, "").partition(":")[0])
        return UploaderNotice(to=address, file_name=key.rpartition("/")[2], where=where,
                              fix=f"{SAME_KEY} ({key})", version=version)

    return uploader_of_run
