"""New therapist uploads → one run per therapist.

The fast sensor drains the signup bucket's S3 event queue: a tick costs what was uploaded, not
what the bucket holds. The slow reconciliation sensor pages through the bucket a bounded number
of therapists per tick and requests a run for any therapist whose uploads differ from what the
MPF last received: it catches events that were lost and retries therapists whose run failed
(e.g. a directory row that arrived after the upload).
"""


import json
from collections import defaultdict

import dagster as dg
from dagster_aws.s3 import S3Resource

from credflow_assets.materializations import latest_metadata_value
from credflow_assets.partitions import is_valid_partition_key, therapist_partitions
from credflow_assets.resources.sqs import S3EventCursor, SqsResource
from credflow_assets.therapists.settings import THERAPIST_TAG, TherapistFlowSettings
from credflow_assets.therapists.uploads import list_uploads, therapist_id_of, uploads_fingerprint

MPF_JOB_NAME = "therapist_mpf_job"
MPF_FOLDER_KEY = dg.AssetKey(["drive", "mpf", "folder"])


@dg.sensor(job_name=MPF_JOB_NAME, minimum_interval_seconds=30,
           default_status=dg.DefaultSensorStatus.RUNNING)
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
        log=context.log,
    )
    uploads_by_therapist: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for event in batch.events:
        therapist_id = therapist_id_of(event.key)
        if therapist_id is None:
            context.log.warning(f"ignoring s3://{event.bucket}/{event.key}: not {{therapist_id}}/{{file}}")
            continue
        uploads_by_therapist[therapist_id].append((event.key, event.etag or ""))
    run_keys = {
        therapist_id: f"{therapist_id}:{uploads_fingerprint(uploads)}"
        for therapist_id, uploads in uploads_by_therapist.items()
    }
    return _therapist_runs(run_keys, cursor=cursor.advance(batch).to_json())


@dg.sensor(job_name=MPF_JOB_NAME, minimum_interval_seconds=600,
           default_status=dg.DefaultSensorStatus.RUNNING)
def signup_reconciliation_sensor(
    context: dg.SensorEvaluationContext,
    s3: S3Resource,
    therapist_settings: TherapistFlowSettings,
) -> dg.SensorResult:
    """Pages through therapist prefixes, a bounded number per tick, resuming from the cursor."""
    state = json.loads(context.cursor) if context.cursor else {"after": None, "pass": 0}
    client = s3.get_client()
    bucket = therapist_settings.signup_bucket
    therapist_ids, next_after = _therapist_prefixes(
        client, bucket, state["after"], therapist_settings.max_reconcile_pages_per_tick
    )
    run_keys = {}
    for therapist_id in therapist_ids:
        uploads = list_uploads(client, bucket, therapist_id)
        if not uploads:
            continue
        fingerprint = uploads_fingerprint([(u["key"], u["etag"]) for u in uploads])
        if _last_fingerprint(context.instance, therapist_id) == fingerprint:
            continue
        # The pass number makes a failed therapist eligible again once per pass.
        run_keys[therapist_id] = f"reconcile:{therapist_id}:{fingerprint}:{state['pass']}"
    finished_pass = next_after is None
    new_state = {"after": next_after, "pass": state["pass"] + (1 if finished_pass else 0)}
    return _therapist_runs(run_keys, cursor=json.dumps(new_state))


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


def _therapist_prefixes(client, bucket: str, after: str | None, max_pages: int):
    """Up to `max_pages` pages of therapist prefixes after `after`; next cursor or None at end."""
    therapist_ids: list[str] = []
    kwargs = {"Bucket": bucket, "Delimiter": "/", "MaxKeys": 100}
    if after:
        kwargs["StartAfter"] = after
    for _ in range(max_pages):
        page = client.list_objects_v2(**kwargs)
        for prefix in page.get("CommonPrefixes", []):
            therapist_id = prefix["Prefix"].rstrip("/")
            if is_valid_partition_key(therapist_id):
                therapist_ids.append(therapist_id)
        if not page.get("IsTruncated"):
            return therapist_ids, None
        kwargs.pop("StartAfter", None)
        kwargs["ContinuationToken"] = page["NextContinuationToken"]
    # Resume after the last prefix seen: keys sort by UTF-8 bytes, so "id/" + U+10FFFF sorts
    # after every key under "id/" and before the next therapist's prefix.
    return therapist_ids, (f"{therapist_ids[-1]}/\U0010ffff" if therapist_ids else None)


def _last_fingerprint(instance: dg.DagsterInstance, therapist_id: str) -> str | None:
    return latest_metadata_value(instance, MPF_FOLDER_KEY, therapist_id, "source_fingerprint")
