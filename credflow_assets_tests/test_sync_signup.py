"""`credflow sync` on the signup bucket, on a stack of its own: one sync covers a whole
reconciliation pass however many pages the bucket holds, and a therapist whose upload events a
tick splits gets one MPF run, not one per tick.
"""

from __future__ import annotations

import io
from datetime import datetime, timezone

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa
from PIL import Image

from credflow_assets.definitions import build_definitions
from credflow_assets.common.reconciliation import ReconcileCursor, is_reconciliation_sensor
from credflow_assets.resources.drive import DriveResource
from credflow_assets.cli.sync import sync
from credflow_assets.therapists import mpf, names
from credflow_assets.therapists.directory import metadata as directory_metadata
from credflow_assets.therapists.directory import therapists_table
from credflow_assets_tests.conftest import running_stack
from credflow_assets_tests.files import pdf_bytes, png_bytes
from credflow_assets_tests.test_reconciliation import put_all, record_mpf_received

SIGNUP_SENSORS = [names.UPLOAD_SENSOR_NAME, names.RECONCILIATION_SENSOR_NAME]
# 80 therapists × 20 files and the lost upload: 1,601 keys, two one-page ticks (more would
# only cost puts). The lost upload's key sorts after 1,200 others, in the second page.
BULK_THERAPISTS = [f"t-{index:05d}" for index in range(81) if index != 60]
FILES_EACH = 20
LOST = "t-00060"
SPLIT = "3001"


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("sync_signup") / "home") as (_, config,
                                                                           variables):
        engine = sa.create_engine(variables["CREDFLOW_DIRECTORY_DB_URL"])
        directory_metadata.create_all(engine)
        with engine.begin() as connection:
            connection.execute(therapists_table.insert(), [
                {"id": therapist_id, "first_name": "Test", "last_name": f"Therapist{index}",
                 "email": f"{therapist_id}@example.com",
                 "updated_at": datetime.now(timezone.utc)}
                for index, therapist_id in enumerate((LOST, SPLIT))
            ])
        drive = DriveResource(api_url=variables["CREDFLOW_DRIVE_URL"],
                              token=variables["CREDFLOW_DRIVE_TOKEN"])
        instance = dg.DagsterInstance.get()
        try:
            yield {"config": config, "defs": build_definitions(config), "instance": instance,
                   "drive": drive, "bucket": config.buckets.signup,
                   "s3": boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"])}
        finally:
            instance.dispose()
            engine.dispose()


def placed_originals(flow, therapist_id: str) -> dict[str, dict]:
    """The originals in the therapist's MPF folder on Drive, by S3 key."""
    root_id = flow["config"].drive.mpf_root_folder_id
    folders = [folder for folder in mpf.list_children(flow["drive"], root_id, folders_only=True)
               if (folder.get("appProperties") or {}).get(mpf.THERAPIST_ID) == therapist_id]
    if not folders:
        return {}
    assert len(folders) == 1
    return {file["appProperties"][mpf.S3_KEY]: file
            for file in mpf.list_children(flow["drive"], folders[0]["id"])
            if file["appProperties"][mpf.RENDITION] == "original"}


def with_events_per_tick(defs: dg.Definitions, events: int) -> dg.Definitions:
    settings = defs.resources["therapist_settings"]
    smaller = type(settings)(**{**settings.model_dump(), "max_events_per_tick": events})
    return dg.Definitions(
        assets=defs.assets, asset_checks=defs.asset_checks, jobs=defs.jobs,
        sensors=defs.sensors, schedules=defs.schedules, executor=defs.executor,
        loggers=defs.loggers,
        resources={**defs.resources, "therapist_settings": smaller},
    )


def another_png() -> bytes:
    buffer = io.BytesIO()
    Image.new("RGB", (32, 32), (200, 40, 40)).save(buffer, "PNG")
    return buffer.getvalue()


def test_events_split_across_ticks_make_one_run_and_a_changed_upload_another(flow):
    s3, bucket = flow["s3"], flow["bucket"]
    uploads = {f"{SPLIT}/license.pdf": pdf_bytes(), f"{SPLIT}/photo.png": png_bytes(),
               f"{SPLIT}/diploma.pdf": pdf_bytes()}
    for key, body in uploads.items():
        s3.put_object(Bucket=bucket, Key=key, Body=body)
    # Two events a tick: the therapist's three are split over two ticks.
    defs = with_events_per_tick(flow["defs"], 2)

    report = sync(defs, flow["instance"], sensor_names=["signup_upload_sensor"],
                  progress=lambda _: None)

    assert report.ok, report
    assert [run.partition for run in report.runs] == [SPLIT]
    assert set(placed_originals(flow, SPLIT)) == set(uploads)

    # A genuinely new version of an upload after the MPF was built still gets its run.
    replaced = another_png()
    new_etag = s3.put_object(Bucket=bucket, Key=f"{SPLIT}/photo.png",
                             Body=replaced)["ETag"].strip('"')

    again = sync(defs, flow["instance"], sensor_names=["signup_upload_sensor"],
                 progress=lambda _: None)

    assert again.ok, again
    assert [run.partition for run in again.runs] == [SPLIT]
    photo = placed_originals(flow, SPLIT)[f"{SPLIT}/photo.png"]
    assert photo["appProperties"][mpf.ETAG] == new_etag


def test_one_sync_finds_a_lost_upload_beyond_the_reconciliations_first_page(flow, tmp_path):
    s3, bucket, instance = flow["s3"], flow["bucket"], flow["instance"]
    notifications = s3.get_bucket_notification_configuration(Bucket=bucket)
    notifications.pop("ResponseMetadata", None)
    # No S3 events: every object put now is one whose event was lost (and moto puts are ten
    # times faster without them).
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    try:
        put_all(s3, bucket, [f"{therapist_id}/file-{number:02d}.txt"
                             for therapist_id in BULK_THERAPISTS
                             for number in range(FILES_EACH)])
        # Everyone else's MPF already has their uploads: only the lost upload differs.
        record_mpf_received(instance, s3, bucket, BULK_THERAPISTS)
        lost_upload = pdf_bytes()
        s3.put_object(Bucket=bucket, Key=f"{LOST}/license.pdf", Body=lost_upload)
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket,
                                                 NotificationConfiguration=notifications)

    report = sync(flow["defs"], instance, sensor_names=SIGNUP_SENSORS, progress=lambda _: None)

    assert report.ok, report
    assert [run.partition for run in report.runs] == [LOST]
    original = placed_originals(flow, LOST)[f"{LOST}/license.pdf"]
    downloaded = flow["drive"].download_file(original["id"], tmp_path / "license.pdf")
    assert downloaded.read_bytes() == lost_upload

    # The pass ended where it began, so the next sync lists the bucket again from the top and,
    # with nothing new, launches nothing.
    assert sync(flow["defs"], instance, sensor_names=SIGNUP_SENSORS,
                progress=lambda _: None).runs == []


def test_sync_knows_both_reconciliation_sensors_from_their_definitions(flow):
    """What the pass above relies on: sync tells a reconciliation sensor by its tag."""
    sensors = flow["defs"].get_repository_def().sensor_defs
    reconciling = {sensor.name for sensor in sensors if is_reconciliation_sensor(sensor)}
    assert {"signup_reconciliation_sensor", "staging_reconciliation_sensor"} <= reconciling
    assert not {"signup_upload_sensor", "staging_events_sensor"} & reconciling


# --- the pass arithmetic sync stops on ----------------------------------------------------------


def test_a_pass_from_the_top_ends_when_the_listing_reaches_the_end():
    start = ReconcileCursor()
    middle = start.advanced_to("t-00099/\U0010ffff")
    assert not middle.covers_a_pass_since(start)
    assert middle.advanced_to(None).covers_a_pass_since(start)


def test_a_pass_from_the_middle_ends_only_once_the_listing_is_back_there():
    start = ReconcileCursor(after="staging/claims/b.csv", pass_number=4)
    wrapped = start.advanced_to(None)
    assert wrapped == ReconcileCursor(after=None, pass_number=5)
    assert not wrapped.covers_a_pass_since(start)
    assert not wrapped.advanced_to("staging/claims/a.csv").covers_a_pass_since(start)
    assert wrapped.advanced_to("staging/claims/b.csv").covers_a_pass_since(start)
    assert wrapped.advanced_to("staging/claims/c.csv").covers_a_pass_since(start)
    # A bucket emptied meanwhile: two wraps list everything there is.
    assert wrapped.advanced_to(None).covers_a_pass_since(start)


def test_the_stored_cursor_format_is_unchanged():
    stored = '{"after": "t-00007/\\udbff\\udfff", "pass": 3}'
    cursor = ReconcileCursor.from_json(stored)
    assert cursor == ReconcileCursor(after="t-00007/\U0010ffff", pass_number=3)
    assert ReconcileCursor.from_json(cursor.to_json()) == cursor
    assert ReconcileCursor.from_json(None) == ReconcileCursor()


# --- runs that have not started yet ----------------------------------------------------------


def requested_by_one_tick(flow, sensor_name: str) -> list[str]:
    """The partitions one evaluation of the sensor asks runs for, as the daemon evaluates it."""
    repository = flow["defs"].get_repository_def()
    sensor = next(s for s in repository.sensor_defs if s.name == sensor_name)
    resources = repository.get_top_level_resources()
    with dg.partition_loading_context(dynamic_partitions_store=flow["instance"]), \
            dg.build_sensor_context(
                instance=flow["instance"], instance_ref=flow["instance"].get_ref(),
                definitions=flow["defs"], sensor_name=sensor_name,
                resources={key: resources[key] for key in sensor.required_resource_keys},
            ) as context:
        return [request.partition_key for request in sensor.evaluate_tick(context).run_requests]


def test_a_therapist_whose_run_has_yet_to_start_is_left_to_it(flow):
    """Under the daemon a requested run may wait in the queue past the next tick. That run lists
    the therapist's prefix when it starts, so the next tick's events for them need no run of
    their own; a run that has started may have listed already, so it is no reason to skip."""
    s3, bucket, instance = flow["s3"], flow["bucket"], flow["instance"]
    queue = flow["config"].events.signup_uploads.queue
    sqs = boto3.client("sqs", endpoint_url=s3.meta.endpoint_url)
    sqs.purge_queue(QueueUrl=sqs.get_queue_url(QueueName=queue)["QueueUrl"])
    queued, started, idle = "3101", "3102", "3103"
    # NOT_STARTED stands for the three statuses before a run's steps begin (a QUEUED record
    # needs the origin of a code location server, which this in-process test has not).
    for status, therapist_id in ((dg.DagsterRunStatus.NOT_STARTED, queued),
                                 (dg.DagsterRunStatus.STARTED, started)):
        instance.add_run(dg.DagsterRun(job_name=names.JOB_NAME, status=status,
                                       tags={"dagster/partition": therapist_id}))
    for therapist_id in (queued, started, idle):
        s3.put_object(Bucket=bucket, Key=f"{therapist_id}/license.pdf", Body=pdf_bytes())

    assert sorted(requested_by_one_tick(flow, "signup_upload_sensor")) == [started, idle]
