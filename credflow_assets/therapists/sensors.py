"""New therapist uploads → one run per therapist.

The fast sensor drains the signup bucket's S3 event queue: a tick costs what was uploaded, not
what the bucket holds. A run lists the therapist's whole prefix, so when a tick gets only some of
a therapist's events, the run it requests also receives the uploads whose events come next tick;
that tick skips a therapist whose MPF already placed every (key, etag) their events name, or
whose run has yet to start and so will list them (two bulk instance lookups per tick).

The slow reconciliation sensor catches what the events missed: events that were lost, and
therapists whose run failed (e.g. a directory row that arrived after the upload). Each tick
lists one bounded stretch of the bucket (`max_reconcile_pages_per_tick` pages of 1,000 keys,
whole therapists only), resuming after the cursor and wrapping around at the end, and compares
each therapist's uploads with what their MPF last received in bulk (two instance queries per
1,000 therapists, not one per therapist). A tick therefore costs the same whatever the bucket
holds, and runs every minute; a full pass takes about `objects / (1,000 × pages)` ticks. An
upload whose event was lost is found within one pass plus one tick (sooner when it sorts after
the cursor).
"""


from collections import defaultdict

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.common.reconciliation import (
    NOT_STARTED_STATUSES,
    RECONCILE_INTERVAL_SECONDS,
    RECONCILE_PAGE_KEYS,
    RECONCILIATION_SENSOR_TAGS,
    ReconcileCursor,
    latest_metadata_by_partition,
    partitions_with_active_runs,
)
from credflow_assets.common.tick_log import TickLog
from credflow_assets.resources.sqs import S3EventCursor, SqsResource
from credflow_assets.therapists.names import (
    JOB_NAME,
    MPF_FOLDER_KEY,
    PLACED_FILES_METADATA,
    RECONCILIATION_SENSOR_NAME,
    SOURCE_FINGERPRINT_METADATA,
    THERAPIST_TAG,
    UPLOAD_SENSOR_NAME,
    therapist_partitions,
)
from credflow_assets.therapists.settings import TherapistFlowSettings
from credflow_assets.therapists.uploads import therapist_id_of, uploads_fingerprint


# An upload waits for the sensor's next tick before its run is even created. The daemon's sensor
# loop comes round every 5 s (Dagster's, not a setting) and ticks a sensor whose interval has
# passed since its last tick *started*; a pass often comes a few ms short of that, so an interval
# of 10 s gave a tick every 10 or 15 s (5 s would give 5 or 10). Just under 5 s, every pass
# ticks: an upload's run exists within ~5 s, against 14-15 s after a batch's last upload at 10 s
# (bench/RESULTS.md §7, session 10). An empty tick is one SQS receive (a 1 s long poll, ~0.03 s
# of CPU) and one tick row of ~800 bytes: 17,280 a day, pruned after `retention.ticks_days`.
UPLOAD_INTERVAL_SECONDS = 4


@dg.sensor(name=UPLOAD_SENSOR_NAME, job_name=JOB_NAME,
           minimum_interval_seconds=UPLOAD_INTERVAL_SECONDS,
           default_status=dg.DefaultSensorStatus.RUNNING,
           description="Therapist uploads to the signup bucket, from its S3 event queue (up to "
           "100 events a tick): one run per therapist with new uploads, which puts them in the "
           "therapist's MPF folder.")
def signup_upload_sensor(
    context: dg.SensorEvaluationContext,
    sqs: SqsResource,
    therapist_settings: TherapistFlowSettings,
) -> dg.SensorResult:
    cursor = S3EventCursor.from_json(context.cursor)
    batch = sqs.drain_s3_events(
        sqs.queue_url(therapist_settings.signup_queue),
        acknowledge=cursor.pending_receipts,
        max_messages=therapist_settings.max_events_per_tick,
        log=TickLog(context),
    )
    uploads_by_therapist: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for event in batch.events:
        therapist_id = therapist_id_of(event.key)
        if therapist_id is None:
            context.log.warning(f"ignoring s3://{event.bucket}/{event.key}: not {{therapist_id}}/{{file}}")
            continue
        uploads_by_therapist[therapist_id].append((event.key, event.etag or ""))
    # A run lists the therapist's whole prefix, so a therapist whose events a tick splits gets
    # them all from the first tick's run; the second tick's would change nothing. That holds
    # for a run that has placed them (its MPF metadata says so) and for one that has not
    # started yet: S3 lists an upload once its event exists, so that run will find it too. A
    # run that has started may have listed the prefix before these uploads: no reason to skip.
    therapist_ids = list(uploads_by_therapist)
    placed = latest_metadata_by_partition(context.instance, MPF_FOLDER_KEY, therapist_ids)
    waiting = partitions_with_active_runs(context.instance, JOB_NAME, therapist_ids,
                                          statuses=NOT_STARTED_STATUSES)
    run_keys = {
        therapist_id: f"{therapist_id}:{uploads_fingerprint(uploads)}"
        for therapist_id, uploads in uploads_by_therapist.items()
        if therapist_id not in waiting
        and not set(uploads) <= _placed_uploads(placed.get(therapist_id))
    }
    if len(run_keys) < len(uploads_by_therapist):
        context.log.info(f"{len(uploads_by_therapist) - len(run_keys)} therapist(s) skipped: "
                         "their MPF already has every upload their events name, or their "
                         "run has yet to start and will list them")
    return _therapist_runs(run_keys, cursor=cursor.advance(batch).to_json())


def _placed_uploads(mpf_metadata: dict | None) -> set[tuple[str, str]]:
    """The (key, etag) of every upload the therapist's latest MPF materialization placed."""
    files = (mpf_metadata or {}).get(PLACED_FILES_METADATA) or []
    return {(placed["s3_key"], placed["etag"]) for placed in files}


@dg.sensor(name=RECONCILIATION_SENSOR_NAME, job_name=JOB_NAME,
           minimum_interval_seconds=RECONCILE_INTERVAL_SECONDS,
           default_status=dg.DefaultSensorStatus.RUNNING, tags=RECONCILIATION_SENSOR_TAGS,
           description="A slow pass over the signup bucket, 1,000 keys a tick: a run for any "
           "therapist whose uploads differ from what their MPF folder last received (a lost S3 "
           "event, or a directory row that arrived late).")
def signup_reconciliation_sensor(
    context: dg.SensorEvaluationContext,
    s3: S3Resource,
    therapist_settings: TherapistFlowSettings,
) -> dg.SensorResult:
    """One bounded stretch of the bucket per tick, resuming from the cursor (module docstring)."""
    cursor = ReconcileCursor.from_json(context.cursor)
    uploads, next_after = _uploads_after(
        s3.get_client(), therapist_settings.signup_bucket, cursor.after,
        therapist_settings.max_reconcile_pages_per_tick,
    )
    fingerprints = {therapist_id: uploads_fingerprint(objects)
                    for therapist_id, objects in uploads.items()}
    received = latest_metadata_by_partition(context.instance, MPF_FOLDER_KEY, list(fingerprints))
    differ = [therapist_id for therapist_id, fingerprint in fingerprints.items()
              if received.get(therapist_id, {}).get(SOURCE_FINGERPRINT_METADATA) != fingerprint]
    # A therapist whose run is under way (e.g. launched from their upload's event) is left to it.
    running = partitions_with_active_runs(context.instance, JOB_NAME, differ)
    run_keys = {
        # The pass number makes a failed therapist eligible again once per pass.
        therapist_id:
            f"reconcile:{therapist_id}:{fingerprints[therapist_id]}:{cursor.pass_number}"
        for therapist_id in differ if therapist_id not in running
    }
    if run_keys:
        context.log.info(f"{len(uploads)} therapist(s) listed, {len(run_keys)} differ from "
                         "what their MPF last received")
    return _therapist_runs(run_keys, cursor=cursor.advanced_to(next_after).to_json())


def _therapist_runs(run_keys: dict[str, str], cursor: str) -> dg.SensorResult:
    """One run per therapist (adding their partition), tagged for the concurrency limit."""
    therapist_ids = sorted(run_keys)
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=therapist_id, run_key=run_keys[therapist_id],
                          tags={THERAPIST_TAG: therapist_id})
            for therapist_id in therapist_ids
        ],
        dynamic_partitions_requests=(
            [therapist_partitions.build_add_request(therapist_ids)] if therapist_ids else []
        ),
        cursor=cursor,
    )


def _uploads_after(client, bucket: str, after: str | None, max_pages: int):
    """Whole therapists' (key, etag) uploads from about `max_pages` pages of keys after `after`,
    in key order, and the cursor to resume from (None: the listing reached the bucket's end).

    A therapist's keys are contiguous (they share the prefix `{id}/`), so only the last therapist
    listed can continue on the next page: it is left to the next tick, which starts with it. When
    the budget holds a single therapist, listing goes on until that therapist ends, so every tick
    moves forward.
    """
    uploads: dict[str, list[tuple[str, str]]] = {}
    kwargs = {"Bucket": bucket, "MaxKeys": RECONCILE_PAGE_KEYS}
    if after:
        kwargs["StartAfter"] = after
    pages = 0
    while True:
        page = client.list_objects_v2(**kwargs)
        pages += 1
        contents = page.get("Contents", [])
        for item in contents:
            therapist_id = therapist_id_of(item["Key"])
            if therapist_id is not None:
                uploads.setdefault(therapist_id, []).append((item["Key"], item["ETag"].strip('"')))
        if not page.get("IsTruncated"):
            return uploads, None
        if pages >= max_pages and not uploads:  # only keys outside `{id}/{file}` so far
            return uploads, contents[-1]["Key"]
        if pages >= max_pages and len(uploads) > 1:
            break
        kwargs.pop("StartAfter", None)
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    del uploads[next(reversed(uploads))]
    # Keys sort by UTF-8 bytes, so "id/" + U+10FFFF sorts after every key under "id/" and before
    # the next therapist's prefix: uploads the last therapist gets meanwhile are not split off.
    return uploads, f"{next(reversed(uploads))}/\U0010ffff"
