"""The person who put a bad file there is told by e-mail, once, in words they can act on.

On a stack of its own (its queues see only this module's uploads), driven by `credflow sync`
in-process; what is asserted is what arrived in the stack's SMTP server (the mailbox
`credflow local mail` lists): who got it, its subject and body. The uploader is who the file
says: a staged object's `uploaded-by` metadata, its upload event's S3 principal mapped in the
config, a feed file's last modifier on Drive (the local Drive server records who uploaded, from
the request's token), the success team for a therapist's upload.
"""

from __future__ import annotations

import json
import logging
import os
import uuid
from datetime import datetime, timedelta, timezone

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa

from credflow_assets.cli.reparse import reparse
from credflow_assets.cli.sync import sync
from credflow_assets.common.flow import PARTITION_TAG
from credflow_assets.common.rejected_rows_mail import SENSOR_NAME as ROWS_SENSOR
from credflow_assets.common.uploader_mail import NOTIFIED_TAG, PENDING_TAG, RETRY_SENSOR_NAME
from credflow_assets.config import NotificationsConfig, load_config
from credflow_assets.definitions import build_definitions
from credflow_assets.local.mailbox import read_messages
from credflow_assets.local.process import free_port
from credflow_assets.local.seed_drive_feeds import (
    CSV_MIME,
    as_drive_user,
    sample_rows,
    write_csv,
)
from credflow_assets.drive_feeds.names import UPLOADER_TAG
from credflow_assets.drive_feeds.names import job_name as feed_job_name
from credflow_assets.drive_feeds.names import records_key
from credflow_assets.flows import tags_for_run
from credflow_assets.resources.drive import DriveResource
from credflow_assets.staged_tables.layout import partition_key_for
from credflow_assets.staged_tables.names import job_name, table_partitions
from credflow_assets.therapists.directory import metadata as directory_metadata
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

BUCKET = "credflow-adhoc"
CLAIMS_MISSING_AMOUNT = "claim_id,first_name,last_name,service_date,status"
ROW = "C-3001,Zebulon,Quixley,2024-01-03,paid"
PRINCIPAL = "AWS:AIDAEXAMPLECYANALYST"
MAPPED_ADDRESS = "cy.analyst@example.com"
SUCCESS_TEAM = "success-team@credflow.local"
FEED = "contact_tracing"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    home = tmp_path_factory.mktemp("uploader_mail") / "home"
    config = load_config(DEFAULT_CONFIG)
    config = config.model_copy(update={"notifications": NotificationsConfig.model_validate(
        {"success_team": SUCCESS_TEAM, "staged_uploaders": {PRINCIPAL: MAPPED_ADDRESS}})})
    with running_stack(home, config=config) as (_, config, variables):
        engine = sa.create_engine(variables["CREDFLOW_DIRECTORY_DB_URL"])
        directory_metadata.create_all(engine)  # an empty therapist directory
        engine.dispose()
        instance = dg.DagsterInstance.get()
        try:
            yield {"home": home, "config": config, "defs": build_definitions(config),
                   "instance": instance, "env": variables,
                   "s3": boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"]),
                   "sqs": boto3.client("sqs", endpoint_url=variables["AWS_ENDPOINT_URL"])}
        finally:
            instance.dispose()


def run_sync(stack, *sensors: str):
    return sync(stack["defs"], stack["instance"],
                sensor_names=[*sensors, "failure_notifications"], progress=lambda line: None)


def mail_to(stack, address: str):
    return read_messages(stack["home"], to=address)


def unique(name: str) -> str:
    return f"{name}-{uuid.uuid4().hex[:6]}"


def put_staged(stack, name: str, metadata: dict[str, str] | None = None) -> str:
    key = f"staging/claims/{name}"
    stack["s3"].put_object(Bucket=BUCKET, Key=key, Metadata=metadata or {},
                           Body=f"{CLAIMS_MISSING_AMOUNT}\n{ROW}\n".encode())
    return key


# --- staged files ---------------------------------------------------------------------------


def test_a_bad_staged_upload_mails_its_uploader_once(stack):
    uploader = f"{unique('ana')}@example.com"
    name = f"{unique('claims_2026-12')}.csv"
    key = put_staged(stack, name, {"uploaded-by": uploader})

    report = run_sync(stack, "staging_events_sensor")

    [run] = [run for run in report.failed if run.partition.endswith(name)]
    [message] = mail_to(stack, uploader)
    assert message.subject == f"credflow: {name} was not loaded"
    assert f"s3://{BUCKET}/{key}" in message.text
    assert "the columns break the table's rules (amount_usd)" in message.text
    assert "Error report (each problem, by row and column): http://" in message.text
    assert f"{run.run_id}.errors.csv" in message.text
    assert f"upload a corrected file to the same key ({key})" in message.text
    # The rows' values stay in the file and the error report, never in the mail.
    assert "Quixley" not in message.text and "Zebulon" not in message.text
    assert "Traceback" not in message.text and "Error:" not in message.text
    tags = stack["instance"].get_run_by_id(run.run_id).tags
    assert tags[NOTIFIED_TAG]

    # A second sync finds nothing new; a rerun of the same upload fails the same way: no mail.
    run_sync(stack, "staging_events_sensor", "staging_reconciliation_sensor")
    rerun = stack["defs"].resolve_job_def(job_name("claims")).execute_in_process(
        instance=stack["instance"], partition_key=run.partition, raise_on_error=False)
    assert not rerun.success
    run_sync(stack)
    assert len(mail_to(stack, uploader)) == 1

    # A new upload to the same key (other bytes) failing the same way is a new message.
    stack["s3"].put_object(Bucket=BUCKET, Key=key, Metadata={"uploaded-by": uploader},
                           Body=f"{CLAIMS_MISSING_AMOUNT}\nC-3002,Al,Bo,2024-01-04,paid\n".encode())
    run_sync(stack, "staging_events_sensor")
    assert [message.subject for message in mail_to(stack, uploader)] == [
        f"credflow: {name} was not loaded"] * 2


def test_a_staged_upload_without_metadata_goes_to_its_principals_mapped_address(stack):
    name = f"{unique('claims_principal')}.csv"
    key = put_staged(stack, name)
    # S3's own event for the upload, as AWS sends it, with the uploader's principal (the local
    # S3 leaves userIdentity out of its events).
    event_time = (datetime.now(timezone.utc) + timedelta(seconds=1)).strftime(
        "%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    head = stack["s3"].head_object(Bucket=BUCKET, Key=key)
    body = {"Records": [{
        "eventVersion": "2.1", "eventSource": "aws:s3", "eventTime": event_time,
        "eventName": "ObjectCreated:Put", "userIdentity": {"principalId": PRINCIPAL},
        "s3": {"bucket": {"name": BUCKET}, "object": {
            "key": key, "size": head["ContentLength"], "eTag": head["ETag"].strip('"')}}}]}
    queue = stack["sqs"].get_queue_url(
        QueueName=stack["config"].events.staging_uploads.queue)["QueueUrl"]
    stack["sqs"].send_message(QueueUrl=queue, MessageBody=json.dumps(body))

    report = run_sync(stack, "staging_events_sensor")

    assert [run for run in report.failed if run.partition.endswith(name)]
    [message] = mail_to(stack, MAPPED_ADDRESS)
    assert message.subject == f"credflow: {name} was not loaded"
    assert "amount_usd" in message.text


def test_a_message_the_mail_server_did_not_take_is_sent_on_a_later_tick(stack, caplog):
    uploader = f"{unique('dee')}@example.com"
    name = f"{unique('claims_outage')}.csv"
    put_staged(stack, name, {"uploaded-by": uploader})
    port = os.environ["CREDFLOW_SMTP_PORT"]
    os.environ["CREDFLOW_SMTP_PORT"] = str(free_port())  # nothing listens: the server is down
    try:
        with caplog.at_level(logging.ERROR, logger="credflow.mail"):
            report = run_sync(stack, "staging_events_sensor")
    finally:
        os.environ["CREDFLOW_SMTP_PORT"] = port
    [run] = [run for run in report.failed if run.partition.endswith(name)]
    assert mail_to(stack, uploader) == []
    assert stack["instance"].get_run_by_id(run.run_id).tags[PENDING_TAG] == "staged_tables"
    assert not report.sensor_errors  # the sensor did not raise
    [line] = [r.getMessage() for r in caplog.records if r.name == "credflow.mail"]
    assert uploader in line and "not delivered" in line

    sync(stack["defs"], stack["instance"], sensor_names=[RETRY_SENSOR_NAME],
         progress=lambda line: None)
    [message] = mail_to(stack, uploader)
    assert name in message.subject
    sync(stack["defs"], stack["instance"], sensor_names=[RETRY_SENSOR_NAME],
         progress=lambda line: None)
    assert len(mail_to(stack, uploader)) == 1


# --- feed files -------------------------------------------------------------------------------


def drive_as(stack, display_name: str, email: str) -> DriveResource:
    """The Drive API as a named person (a token the local Drive server mints for them)."""
    return as_drive_user(DriveResource(api_url=stack["env"]["CREDFLOW_DRIVE_URL"],
                                       token=stack["env"]["CREDFLOW_DRIVE_TOKEN"]),
                         display_name, email)


def test_a_bad_feed_file_mails_the_drive_user_who_uploaded_it_once(stack, tmp_path):
    email = f"{unique('fay')}@example.com"
    feed = next(feed for feed in stack["config"].feeds if feed.name == FEED)
    name = f"{unique('contacts')}.csv"
    path = write_csv(tmp_path / name, feed, sample_rows(feed, 3, start=7000),
                     headers={"date_of_birth": "DOB"})
    file = drive_as(stack, "Fay Analyst", email).upload_file(
        path, name, feed.inbound_folder_id, mime_type=CSV_MIME)
    listed = DriveResource(api_url=stack["env"]["CREDFLOW_DRIVE_URL"],
                           token=stack["env"]["CREDFLOW_DRIVE_TOKEN"]).get_file(
        file["id"], "lastModifyingUser")
    assert listed["lastModifyingUser"]["emailAddress"] == email

    report = run_sync(stack, f"drive_feed_{FEED}_inbound_sensor")

    assert [run for run in report.failed if run.partition.endswith(name)]
    [message] = mail_to(stack, email)
    assert message.subject == f"credflow: {name} was not loaded"
    assert f"{name} in the {FEED} feed's inbound folder on Google Drive" in message.text
    assert "date_of_birth" in message.text
    assert "upload a corrected file to the same folder" in message.text

    run_sync(stack, f"drive_feed_{FEED}_inbound_sensor")
    assert len(mail_to(stack, email)) == 1


def test_a_rerun_of_a_feed_file_still_knows_who_uploaded_it(stack, tmp_path):
    """Only the sensor reads who made the revision; a reparse, or a re-execution from the UI
    (the run coordinator's tags), carries it over from the file's first run."""
    email = f"{unique('gil')}@example.com"
    feed = next(feed for feed in stack["config"].feeds if feed.name == FEED)
    name = f"{unique('contacts')}.csv"
    path = write_csv(tmp_path / name, feed, sample_rows(feed, 2, start=7100),
                     headers={"date_of_birth": "DOB"})
    drive_as(stack, "Gil Analyst", email).upload_file(path, name, feed.inbound_folder_id,
                                                      mime_type=CSV_MIME)
    [failed] = [run for run in run_sync(stack, f"drive_feed_{FEED}_inbound_sensor").failed
                if run.partition.endswith(name)]

    report = reparse(stack["config"], stack["instance"], "drive_feeds", [failed.partition],
                     workers=1, progress=lambda line: None)

    [rerun] = report.runs
    assert not rerun.success
    assert stack["instance"].get_run_by_id(rerun.run_id).tags[UPLOADER_TAG] == email
    run_sync(stack)  # the same file and problem: still one message
    assert len(mail_to(stack, email)) == 1
    # What the run coordinator adds to a UI Materialize run of the implicit asset job.
    from_the_ui = dg.DagsterRun(job_name="__ASSET_JOB", tags={PARTITION_TAG: failed.partition},
                                asset_selection=frozenset(
                                    {records_key(feed.name)}))
    assert tags_for_run(from_the_ui, stack["instance"])[UPLOADER_TAG] == email
    assert UPLOADER_TAG not in tags_for_run(from_the_ui)  # without the instance: flow tags only


def upload_feed_rows(stack, tmp_path, person: str, rows: list[dict]) -> tuple[str, str]:
    """A CSV of `rows` in the feed's inbound folder, uploaded by a named Drive user: (their
    address, the file's name)."""
    email = f"{unique(person.split()[0].lower())}@example.com"
    feed = next(feed for feed in stack["config"].feeds if feed.name == FEED)
    name = f"{unique('contacts_partly')}.csv"
    path = write_csv(tmp_path / name, feed, rows)
    drive_as(stack, person, email).upload_file(path, name, feed.inbound_folder_id,
                                               mime_type=CSV_MIME)
    return email, name


def test_a_feed_file_with_rejected_rows_mails_its_uploader_once(stack, tmp_path):
    feed = next(feed for feed in stack["config"].feeds if feed.name == FEED)
    rows = sample_rows(feed, 5, start=7100)
    rows[1]["date_of_birth"] = "1988-13-45"  # sheet row 3 (the header is row 1)
    rows[3]["email"] = "quorvex-at-nowhere"  # sheet row 5
    bad_rows = [rows[1], rows[3]]
    email, name = upload_feed_rows(stack, tmp_path, "Gus Analyst", rows)

    report = run_sync(stack, f"drive_feed_{FEED}_inbound_sensor", ROWS_SENSOR)

    [run] = [run for run in report.runs if run.partition.endswith(name)]
    assert run.success
    [message] = mail_to(stack, email)
    assert message.subject == f"credflow: 2 rows of {name} were not loaded"
    text = message.text
    assert f"{name} in the {FEED} feed's inbound folder on Google Drive" in text
    assert "Loaded: 3 rows. Not loaded: 2 rows." in text
    assert "- date_of_birth: not a date in the format YYYY-MM-DD (row 3)" in text
    assert "- email: not in the expected form (row 5)" in text
    assert "Error report (each problem, by row and column): http://" in text
    assert f"{run.run_id}.errors.csv" in text
    assert ("fix these rows and upload the corrected file to the same folder (the "
            f"{FEED} feed's inbound folder); the rows already loaded are updated, not "
            "duplicated") in text
    # The rows' values stay in the file and the error report, never in the mail.
    for row in bad_rows:
        for column in ("ctas_id", "last_name", "date_of_birth", "email", "phone_number"):
            assert str(row[column]) not in text, column
    assert stack["instance"].get_run_by_id(run.run_id).tags[NOTIFIED_TAG]

    # A second sync finds nothing new; a rerun of the same file rejects the same rows: no mail.
    run_sync(stack, f"drive_feed_{FEED}_inbound_sensor", ROWS_SENSOR)
    rerun = stack["defs"].resolve_job_def(feed_job_name(FEED)).execute_in_process(
        instance=stack["instance"], partition_key=run.partition, tags={UPLOADER_TAG: email})
    assert rerun.success
    run_sync(stack, ROWS_SENSOR, RETRY_SENSOR_NAME)
    assert len(mail_to(stack, email)) == 1
    assert NOTIFIED_TAG not in stack["instance"].get_run_by_id(rerun.run_id).tags


def test_a_clean_feed_file_mails_nobody(stack, tmp_path):
    feed = next(feed for feed in stack["config"].feeds if feed.name == FEED)
    email, name = upload_feed_rows(stack, tmp_path, "Hal Analyst",
                                   sample_rows(feed, 3, start=7200))

    report = run_sync(stack, f"drive_feed_{FEED}_inbound_sensor", ROWS_SENSOR)

    [run] = [run for run in report.runs if run.partition.endswith(name)]
    assert run.success
    assert mail_to(stack, email) == []


def test_a_rejected_rows_message_the_mail_server_did_not_take_is_sent_on_a_later_tick(
        stack, tmp_path):
    feed = next(feed for feed in stack["config"].feeds if feed.name == FEED)
    rows = sample_rows(feed, 2, start=7300)
    rows[0]["date_of_birth"] = "1990-02-31"  # sheet row 2
    email, name = upload_feed_rows(stack, tmp_path, "Ida Analyst", rows)
    port = os.environ["CREDFLOW_SMTP_PORT"]
    os.environ["CREDFLOW_SMTP_PORT"] = str(free_port())  # nothing listens: the server is down
    try:
        report = run_sync(stack, f"drive_feed_{FEED}_inbound_sensor", ROWS_SENSOR)
    finally:
        os.environ["CREDFLOW_SMTP_PORT"] = port
    [run] = [run for run in report.runs if run.partition.endswith(name)]
    assert run.success and not report.sensor_errors
    assert mail_to(stack, email) == []
    assert stack["instance"].get_run_by_id(run.run_id).tags[PENDING_TAG] == "drive_feeds"

    run_sync(stack, RETRY_SENSOR_NAME)
    [message] = mail_to(stack, email)
    assert message.subject == f"credflow: 1 row of {name} was not loaded"
    assert "(row 2)" in message.text and "1990-02-31" not in message.text
    run_sync(stack, RETRY_SENSOR_NAME, ROWS_SENSOR)
    assert len(mail_to(stack, email)) == 1


# --- therapists ---------------------------------------------------------------------------------


def test_a_therapist_upload_that_fails_is_told_to_the_success_team(stack):
    therapist = str(900000 + uuid.uuid4().int % 99999)
    stack["s3"].put_object(Bucket=stack["config"].buckets.signup,
                           Key=f"{therapist}/license.txt", Body=b"a license")
    before = len(mail_to(stack, SUCCESS_TEAM))

    report = run_sync(stack, "signup_upload_sensor")

    assert [run for run in report.failed if run.partition == therapist]
    messages = mail_to(stack, SUCCESS_TEAM)[before:]
    assert len(messages) == 1
    assert therapist in messages[0].subject
    assert "is not in the therapist directory" in messages[0].text


def test_a_run_dagster_will_retry_sends_nothing_and_its_last_attempt_sends_one(stack):
    uploader = f"{unique('eve')}@example.com"
    name = f"{unique('claims_retried')}.csv"
    key = put_staged(stack, name, {"uploaded-by": uploader})
    partition = partition_key_for(key)
    stack["instance"].add_dynamic_partitions(table_partitions("claims").name, [partition])

    run = stack["defs"].resolve_job_def(job_name("claims")).execute_in_process(
        instance=stack["instance"], partition_key=partition, raise_on_error=False)
    assert not run.success
    # Dagster's decision for a transient failure under `run_retries` (this rejection is
    # permanent, so Dagster said false): the sync requests the retry, which fails the same way.
    stack["instance"].add_run_tags(run.run_id, {"dagster/will_retry": "true"})
    run_sync(stack)

    retry_id = stack["instance"].get_run_by_id(run.run_id).tags["dagster/auto_retry_run_id"]
    [message] = mail_to(stack, uploader)
    assert f"(credflow run {retry_id})" in message.text  # the last attempt's, not the first's
