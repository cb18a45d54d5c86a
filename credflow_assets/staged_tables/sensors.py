"""New staged CSVs → one run per file; failures → the notifier.

The fast sensor (`staging_events_sensor`; named to sort, and so to run in `credflow sync`, before
the reconciliation) drains the staging prefix's S3 event queue: a tick costs what was uploaded, not
what staging holds. It looks at each object once (`head_object`) and requests a run for the
version that is there now, so a burst of uploads to one key becomes one run, and a redelivered
event the same run key. Requests are ordered by upload time, so a table's first upload is the
one that founds it (the per-table run concurrency limit keeps that order under the daemon).

The slow reconciliation sensor pages through staging a bounded number of pages per tick. Since
promoted files leave staging, what it finds is small: uploads whose event was lost, runs that
failed before checking (S3 or Glue errors: retried once per pass), and rejected files, which it
leaves alone until a new upload replaces them.

The failure sensor reports every failed run of the staged-file job through the notifier (webhook
or log): table, file, uploader's key and uploader, the columns that differ and the row failures,
read from the run's failed check results; other failures with their error.
"""


import json
from typing import Any

import dagster as dg
from dagster._core.storage.dagster_run import RunsFilter
from dagster_aws.s3 import S3Resource

from credflow_assets.notifications import Notifier
from credflow_assets.partitions import staged_file_partitions
from credflow_assets.resources.s3 import head_object_or_none
from credflow_assets.resources.sqs import S3EventCursor, SqsResource
from credflow_assets.staged_tables.layout import object_key_for
from credflow_assets.staged_tables.settings import (
    JOB_NAME,
    STAGED_KEY_TAG,
    STAGING_FILE_KEY,
    TABLE_TAG,
    VERSION_TAG,
    StagedTablesSettings,
    object_version,
)

ACTIVE_STATUSES = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                   dg.DagsterRunStatus.STARTING, dg.DagsterRunStatus.STARTED]


def _request(staged_file, version: str, run_key: str) -> dg.RunRequest:
    return dg.RunRequest(
        partition_key=staged_file.partition_key,
        run_key=run_key,
        tags={TABLE_TAG: staged_file.table, STAGED_KEY_TAG: staged_file.key,
              VERSION_TAG: version},
    )


def _result(requests: list[dg.RunRequest], cursor: str) -> dg.SensorResult:
    keys = list(dict.fromkeys(request.partition_key for request in requests))
    return dg.SensorResult(
        run_requests=requests,
        dynamic_partitions_requests=(
            [staged_file_partitions.build_add_request(keys)] if keys else []
        ),
        cursor=cursor,
    )


@dg.sensor(job_name=JOB_NAME, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING)
def staging_events_sensor(
    context: dg.SensorEvaluationContext,
    s3: S3Resource,
    sqs: SqsResource,
    staged_tables_settings: StagedTablesSettings,
) -> dg.SensorResult:
    settings = staged_tables_settings
    layout = settings.layout
    cursor = S3EventCursor.from_json(context.cursor)
    batch = sqs.drain_s3_events(
        sqs.queue_url(settings.staging_queue),
        acknowledge=cursor.pending_receipts,
        max_messages=settings.max_events_per_tick,
        wait_time_seconds=settings.event_wait_seconds,
        log=context.log,
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
    client = s3.get_client() if latest else None
    found = []
    for key, event in latest.items():
        head = head_object_or_none(client, layout.bucket, key)
        if head is None:
            context.log.info(f"s3://{layout.bucket}/{key} is gone already; nothing to do")
            continue
        found.append((head["LastModified"], event.event_time or "", key, head))
    requests = []
    # Upload order (S3 times have second resolution, events milliseconds): a table's first
    # upload founds it.
    for _, _, key, head in sorted(found, key=lambda item: item[:3]):
        staged_file = layout.staged_file(key)
        version = object_version(head["ETag"], head["LastModified"])
        requests.append(_request(staged_file, version, f"{staged_file.partition_key}@{version}"))
    if batch.received:
        context.log.info(f"{batch.received} message(s), {len(batch.events)} event(s), "
                         f"{len(requests)} staged file(s) to check")
    return _result(requests, cursor.advance(batch).to_json())


@dg.sensor(job_name=JOB_NAME, minimum_interval_seconds=600,
           default_status=dg.DefaultSensorStatus.RUNNING)
def staging_reconciliation_sensor(
    context: dg.SensorEvaluationContext,
    s3: S3Resource,
    staged_tables_settings: StagedTablesSettings,
) -> dg.SensorResult:
    """Pages through staging/, a bounded number of pages per tick, resuming from the cursor."""
    settings = staged_tables_settings
    layout = settings.layout
    state = json.loads(context.cursor) if context.cursor else {"after": None, "pass": 0}
    client = s3.get_client()
    kwargs: dict[str, Any] = {"Bucket": layout.bucket, "Prefix": layout.staging_prefix,
                              "MaxKeys": 1000}
    if state.get("after"):
        kwargs["StartAfter"] = state["after"]
    objects, finished = [], True
    for _ in range(settings.max_reconcile_pages_per_tick):
        page = client.list_objects_v2(**kwargs)
        objects.extend(page.get("Contents", []))
        finished = not page.get("IsTruncated")
        if finished:
            break
        kwargs.pop("StartAfter", None)
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    requests = []
    for item in sorted(objects, key=lambda item: (item["LastModified"], item["Key"])):
        staged_file = layout.staged_file(item["Key"])
        if staged_file is None:
            continue
        version = object_version(item["ETag"], item["LastModified"])
        if _handled(context.instance, staged_file.partition_key, version):
            continue
        requests.append(_request(
            staged_file, version,
            # The pass number lets a run that failed before checking be retried once per pass.
            f"reconcile:{staged_file.partition_key}@{version}:{state['pass']}",
        ))
    # The next tick resumes after the last key listed (a new key that sorts earlier waits for
    # the next pass, or, normally, arrives through its event).
    new_state = {"after": None if finished else objects[-1]["Key"],
                 "pass": state["pass"] + (1 if finished else 0)}
    return _result(requests, json.dumps(new_state))



def last_observation(instance: dg.DagsterInstance, partition_key: str) -> dict[str, Any] | None:
    """The metadata of the staged-file asset's latest materialization for this partition."""
    if not instance.has_dynamic_partition(staged_file_partitions.name, partition_key):
        return None
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=STAGING_FILE_KEY, asset_partitions=[partition_key]),
        limit=1, ascending=False,
    ).records
    if not records:
        return None
    return {name: value.value
            for name, value in records[0].asset_materialization.metadata.items()}


def _handled(instance: dg.DagsterInstance, partition_key: str, version: str) -> bool:
    """Rejected (checked, failed) or being handled right now."""
    observed = last_observation(instance, partition_key)
    if observed and observed.get("version") == version and not observed.get("checks_passed"):
        return True
    active = instance.get_runs(
        filters=RunsFilter(job_name=JOB_NAME, statuses=ACTIVE_STATUSES,
                           tags={"dagster/partition": partition_key}),
        limit=1,
    )
    return bool(active)


# --- failure notifications ------------------------------------------------------------------


def build_staged_file_failure_sensor(job) -> dg.SensorDefinition:
    @dg.run_failure_sensor(name="staged_file_failure_notifications", monitored_jobs=[job],
                           default_status=dg.DefaultSensorStatus.RUNNING)
    def staged_file_failure_notifications(context: dg.RunFailureSensorContext,
                                          notifier: Notifier) -> None:
        title, lines = describe_failed_run(context.instance, context.dagster_run,
                                           _step_error(context))
        notifier.notify(title, lines)

    return staged_file_failure_notifications


def _step_error(context: dg.RunFailureSensorContext) -> str:
    from credflow_assets.sync import innermost_error_message

    for event in context.get_step_failure_events():
        if event.step_failure_data.error is not None:
            return innermost_error_message(event.step_failure_data.error)
    return context.failure_event.message or "run failed"


def describe_failed_run(instance: dg.DagsterInstance, run: dg.DagsterRun,
                        error: str) -> tuple[str, list[str]]:
    """The notification for a failed staged-file run: which file, and what is wrong with it."""
    key = run.tags.get(STAGED_KEY_TAG) or object_key_for(run.tags.get("dagster/partition", ""))
    table = run.tags.get(TABLE_TAG, "?")
    failed = [evaluation for evaluation in _check_evaluations(instance, run.run_id)
              if not evaluation.passed]
    if not failed:
        return (f"credflow: staged file {key} failed",
                [f"table: {table}", f"uploader's key: {key}", f"cause: {error}",
                 f"run: {run.run_id}"])
    metadata = {name: value.value for name, value in failed[0].metadata.items()}
    lines = [
        f"table: {table}",
        f"file: {metadata.get('file', key)}",
        f"uploader's key: {metadata.get('uploader_key', key)}",
        f"uploaded by: {metadata.get('uploader', '(unknown)')}",
    ]
    for evaluation in failed:
        values = {name: value.value for name, value in evaluation.metadata.items()}
        details = []
        for label, name in (("missing columns", "missing_columns"),
                            ("extra columns", "extra_columns")):
            if values.get(name):
                details.append(f"{label}: {', '.join(values[name])}")
        if values.get("reordered_columns"):
            details.append("columns out of order: " + ", ".join(
                f"{item['column']} (table {item['table_position']}, file "
                f"{item['file_position']})" for item in values["reordered_columns"]))
        if values.get("failing_columns"):
            details.append(f"failing columns: {', '.join(values['failing_columns'])}")
        summary = (evaluation.description or "failed").removeprefix(f"{key}: ")
        lines.append(f"{evaluation.check_name}: {summary}")
        lines += [f"  {detail}" for detail in details if detail not in summary]
    lines += ["the file stays in staging, untouched; upload a corrected file to the same key",
              f"run: {run.run_id}"]
    return f"credflow: staged file rejected — {key}", lines


def _check_evaluations(instance: dg.DagsterInstance, run_id: str) -> list[Any]:
    entries = instance.all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    return [entry.dagster_event.event_specific_data for entry in entries
            if entry.dagster_event is not None]
