"""The reconciliation sensors on buckets larger than one tick's budget, on a stack of their own.

A reconciliation tick lists one bounded stretch of keys and resumes from its cursor, so these
tests fill the signup bucket and staging with more than one page (1,000 keys) and tick with a
budget of one page: what a user relies on is that a pass covers everything in the ticks the
docs state, finds the uploads whose event was lost, leaves alone what is handled, never splits a
therapist across ticks (which would request a run for half their uploads), and that the same
tick evaluated twice launches nothing twice.
"""

from __future__ import annotations

import json
from concurrent.futures import ThreadPoolExecutor

import boto3
import dagster as dg
import pytest

from credflow_assets.common.dagster_compat import sensor_cursor, store_sensor_cursor
from credflow_assets.definitions import build_definitions
from credflow_assets.staged_tables.layout import partition_key_for
from credflow_assets.staged_tables.names import (
    job_name,
    object_version,
    staging_file_key,
    table_partitions,
)
from credflow_assets.therapists.names import (
    JOB_NAME,
    MPF_FOLDER_KEY,
    SOURCE_FINGERPRINT_METADATA,
    therapist_partitions,
)
from credflow_assets.therapists.sensors import signup_reconciliation_sensor
from credflow_assets.therapists.uploads import uploads_fingerprint
from credflow_assets_tests.conftest import running_stack

THERAPISTS = 400  # × 3 files: 1,200 keys, two pages
STAGED_FILES = 1_100  # two pages
FILES = ("license.pdf", "headshot.png", "cv.txt")
# One therapist in each page; therapist 333's files straddle the first page's end.
LOST, CHANGED = "t-00007", "t-00345"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("reconciliation") / "home") as (_, config,
                                                                              variables):
        s3 = boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"])
        for bucket in (config.buckets.signup, config.buckets.adhoc):
            # No S3 events: every object here is one whose event was lost (and moto puts
            # are ten times faster without them).
            s3.put_bucket_notification_configuration(Bucket=bucket,
                                                     NotificationConfiguration={})
        instance = dg.DagsterInstance.get()
        try:
            yield {"config": config, "defs": build_definitions(config), "instance": instance,
                   "s3": s3}
        finally:
            instance.dispose()


def put_all(s3, bucket: str, keys: list[str]) -> None:
    with ThreadPoolExecutor(8) as pool:  # botocore's pool holds 10
        list(pool.map(lambda key: s3.put_object(Bucket=bucket, Key=key, Body=key.encode()),
                      keys))


def tick(stack, sensor_name: str, settings_key: str, settings, cursor: str | None):
    """One evaluation of the sensor with a one-page budget, as the daemon would run it."""
    repository = stack["defs"].get_repository_def()
    sensor = next(s for s in repository.sensor_defs if s.name == sensor_name)
    resources = {**repository.get_top_level_resources(), settings_key: settings}
    with dg.partition_loading_context(dynamic_partitions_store=stack["instance"]), \
            dg.build_sensor_context(
                instance=stack["instance"], instance_ref=stack["instance"].get_ref(),
                cursor=cursor, definitions=stack["defs"],
                sensor_name=sensor_name,
                resources={key: resources[key] for key in sensor.required_resource_keys},
            ) as context:
        return sensor.evaluate_tick(context)


def one_pass(stack, sensor_name, settings_key, settings, cursor=None, max_ticks=10):
    """Ticks from `cursor` until the pass ends; (run requests per tick, final cursor)."""
    ticks = []
    for _ in range(max_ticks):
        result = tick(stack, sensor_name, settings_key, settings, cursor)
        ticks.append(result.run_requests)
        cursor = result.cursor
        if json.loads(cursor)["after"] is None:
            return ticks, cursor
    raise AssertionError(f"{sensor_name}: no full pass in {max_ticks} ticks")


# --- signup bucket ----------------------------------------------------------------------------


def one_page_budget(stack, settings_key: str):
    """The flow's settings as configured, with one page of keys a reconciliation tick."""
    settings = stack["defs"].resources[settings_key]
    return type(settings)(**{**settings.model_dump(), "max_reconcile_pages_per_tick": 1})


def signup_settings(stack):
    return one_page_budget(stack, "therapist_settings")


def record_mpf_received(instance, s3, bucket: str, therapist_ids: list[str]) -> None:
    """What a finished MPF run leaves: the partition, and the fingerprint of what it received."""
    uploads: dict[str, list[tuple[str, str]]] = {}
    paginator = s3.get_paginator("list_objects_v2")
    for page in paginator.paginate(Bucket=bucket):
        for item in page.get("Contents", []):
            uploads.setdefault(item["Key"].split("/")[0], []).append(
                (item["Key"], item["ETag"].strip('"')))
    instance.add_dynamic_partitions(therapist_partitions.name, therapist_ids)
    for therapist_id in therapist_ids:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=MPF_FOLDER_KEY, partition=therapist_id,
            metadata={SOURCE_FINGERPRINT_METADATA: uploads_fingerprint(uploads[therapist_id])}))


def test_signup_pass_covers_the_bucket_in_bounded_ticks_and_finds_only_what_differs(stack):
    config, s3, instance = stack["config"], stack["s3"], stack["instance"]
    bucket = config.buckets.signup
    ids = [f"t-{index:05d}" for index in range(THERAPISTS)]
    put_all(s3, bucket, [f"{therapist_id}/{name}" for therapist_id in ids for name in FILES])
    lost, changed = LOST, CHANGED
    record_mpf_received(instance, s3, bucket, [i for i in ids if i != lost])
    s3.put_object(Bucket=bucket, Key=f"{changed}/insurance.pdf", Body=b"new since its run")
    settings = signup_settings(stack)

    ticks, cursor = one_pass(stack, "signup_reconciliation_sensor", "therapist_settings",
                             settings)

    # 1,201 keys with one page a tick: two ticks, as the docs' objects / 1,000 says.
    assert len(ticks) == 2
    requested = [request.partition_key for requests in ticks for request in requests]
    assert requested == [lost, changed]
    assert json.loads(cursor) == {"after": None, "pass": 1}

    # The next pass starts again from the top (wraps around) and, since nothing ran meanwhile,
    # asks again under a new run key: a failed run is retried once per pass.
    again, _ = one_pass(stack, "signup_reconciliation_sensor", "therapist_settings", settings,
                        cursor)
    first_keys = {request.run_key for requests in ticks for request in requests}
    again_keys = {request.run_key for requests in again for request in requests}
    assert [r.partition_key for requests in again for r in requests] == [lost, changed]
    assert not first_keys & again_keys


def test_signup_tick_resumes_from_its_stored_cursor_with_the_same_run_keys(stack):
    """The cursor is kept in the instance (in the sensor's state, where the daemon and
    `credflow sync` both keep it): after a restart the same tick evaluated again asks for the
    same runs under the same run keys, which Dagster launches only once."""
    settings = signup_settings(stack)
    first = tick(stack, "signup_reconciliation_sensor", "therapist_settings", settings, None)
    store_sensor_cursor(stack["instance"], signup_reconciliation_sensor, first.cursor)
    with dg.DagsterInstance.get() as restarted:  # a new process's view of the same storage
        stored = sensor_cursor(restarted, "signup_reconciliation_sensor")
    second = tick(stack, "signup_reconciliation_sensor", "therapist_settings", settings, stored)
    replay = tick(stack, "signup_reconciliation_sensor", "therapist_settings", settings, stored)
    assert [r.run_key for r in second.run_requests] == [r.run_key for r in replay.run_requests]
    assert second.cursor == replay.cursor
    # The second tick starts where the first stopped.
    assert [r.partition_key for r in first.run_requests] == [LOST]
    assert [r.partition_key for r in second.run_requests] == [CHANGED]


def test_a_therapist_whose_run_is_under_way_is_left_to_it(stack):
    stack["instance"].add_run(dg.DagsterRun(job_name=JOB_NAME, status=dg.DagsterRunStatus.STARTED,
                                            tags={"dagster/partition": CHANGED}))
    ticks, _ = one_pass(stack, "signup_reconciliation_sensor", "therapist_settings",
                        signup_settings(stack))
    assert [r.partition_key for requests in ticks for r in requests] == [LOST]


# --- staging ----------------------------------------------------------------------------------


def staging_settings(stack):
    return one_page_budget(stack, "staged_tables_settings")


def test_staging_pass_finds_lost_uploads_and_leaves_rejected_and_running_files_alone(stack):
    config, s3, instance = stack["config"], stack["s3"], stack["instance"]
    bucket = config.buckets.adhoc
    keys = [f"staging/claims/upload-{index:05d}.csv" for index in range(STAGED_FILES)]
    put_all(s3, bucket, keys)
    lost, replaced, running = keys[10], keys[1050], keys[500]
    # Rejected files stay in staging: record each one's rejected version, except the lost one.
    listed = {item["Key"]: item for page in s3.get_paginator("list_objects_v2").paginate(
        Bucket=bucket, Prefix="staging/") for item in page.get("Contents", [])}
    rejected = [key for key in keys if key != lost]
    instance.add_dynamic_partitions(table_partitions("claims").name,
                                    [partition_key_for(key) for key in rejected])
    for key in rejected:
        version = object_version(listed[key]["ETag"], listed[key]["LastModified"])
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=staging_file_key("claims"), partition=partition_key_for(key),
            metadata={"version": version, "checks_passed": False}))
    # An analyst uploads a corrected file over a rejected one (its event lost too) …
    s3.put_object(Bucket=bucket, Key=replaced, Body=b"a,b\n1,2\n")
    # … and a run for another rejected file's replacement is under way right now.
    s3.put_object(Bucket=bucket, Key=running, Body=b"a,b\n3,4\n")
    instance.add_run(dg.DagsterRun(job_name=job_name("claims"), status=dg.DagsterRunStatus.STARTED,
                                tags={"dagster/partition": partition_key_for(running)}))

    ticks, cursor = one_pass(stack, "staging_reconciliation_sensor", "staged_tables_settings",
                             staging_settings(stack))

    assert len(ticks) == 2  # 1,100 files, one page a tick
    requested = sorted(request.partition_key for requests in ticks for request in requests)
    assert requested == sorted([partition_key_for(lost), partition_key_for(replaced)])
    assert json.loads(cursor)["after"] is None
