"""The local AWS stand-in and the S3, SQS and Glue resources, against a real moto server.

One moto server for the module (started with `local.moto_server.start`, stopped by pid), reset
between tests. Real boto3 and dagster-aws clients; nothing of ours is mocked.
"""

from __future__ import annotations

import hashlib
import io
import logging
import time
import tracemalloc
from concurrent.futures import ThreadPoolExecutor

import pytest
from dagster import build_resources

from credflow_assets.local import moto_server
from credflow_assets.local.moto_server import (
    LOCAL_AWS_ENV,
    LOCAL_REGION,
    ensure_bucket,
    ensure_glue_database,
    ensure_s3_event_queue,
)
from credflow_assets.local.process import pid_is_running, stop_pid
from credflow_assets.resources.glue import GlueError, GlueResource, table_columns
from credflow_assets.resources.s3 import iter_objects, s3_resource, upload_stream
from credflow_assets.resources.sqs import (
    S3EventCursor,
    SqsResource,
    parse_s3_event_message,
)

BUCKET = "credflow-test"
MiB = 1024 * 1024


@pytest.fixture(scope="module")
def moto(tmp_path_factory):
    home = tmp_path_factory.mktemp("moto-home")
    with pytest.MonkeyPatch.context() as mp:
        for name, value in LOCAL_AWS_ENV.items():
            mp.setenv(name, value)
        for name in ("AWS_ENDPOINT_URL", "AWS_ENDPOINT_URL_S3", "AWS_PROFILE", "AWS_SESSION_TOKEN"):
            mp.delenv(name, raising=False)
        # No ~/.aws config or credentials can leak in.
        mp.setenv("AWS_CONFIG_FILE", str(home / "no-aws-config"))
        mp.setenv("AWS_SHARED_CREDENTIALS_FILE", str(home / "no-aws-credentials"))
        info = moto_server.start(home)
        try:
            yield {**info, "home": home}
        finally:
            stop_pid(info["pid"])
    assert not pid_is_running(info["pid"])


@pytest.fixture
def endpoint(moto):
    moto_server.reset(moto["endpoint_url"])
    return moto["endpoint_url"]


@pytest.fixture
def s3(endpoint):
    ensure_bucket(endpoint, LOCAL_REGION, BUCKET)
    return s3_resource(LOCAL_REGION, endpoint).get_client()


@pytest.fixture
def sqs(endpoint):
    return SqsResource(region_name=LOCAL_REGION, endpoint_url=endpoint)


def _queue_depth(sqs: SqsResource, queue_url: str) -> tuple[int, int]:
    attributes = sqs.client.get_queue_attributes(
        QueueUrl=queue_url,
        AttributeNames=["ApproximateNumberOfMessages", "ApproximateNumberOfMessagesNotVisible"],
    )["Attributes"]
    return (
        int(attributes["ApproximateNumberOfMessages"]),
        int(attributes["ApproximateNumberOfMessagesNotVisible"]),
    )


# --- the server -----------------------------------------------------------------------------


def test_start_returns_a_running_server_with_a_log(moto):
    assert moto["endpoint_url"] == f"http://127.0.0.1:{moto['port']}"
    assert pid_is_running(moto["pid"])
    assert (moto["home"] / "logs" / "moto.log").exists()
    ensure_bucket(moto["endpoint_url"], LOCAL_REGION, BUCKET)
    ensure_bucket(moto["endpoint_url"], LOCAL_REGION, BUCKET)  # idempotent


def test_every_bucket_aborts_incomplete_uploads_after_a_day_and_keeps_its_policy(moto):
    import boto3

    s3 = boto3.client("s3", endpoint_url=moto["endpoint_url"], region_name=LOCAL_REGION,
                      aws_access_key_id="testing", aws_secret_access_key="testing")
    ensure_bucket(moto["endpoint_url"], LOCAL_REGION, BUCKET)
    expire = {"ID": "someone-elses-rule", "Status": "Enabled", "Filter": {"Prefix": "tmp/"},
              "Expiration": {"Days": 7}}
    s3.put_bucket_lifecycle_configuration(Bucket=BUCKET, LifecycleConfiguration={"Rules": [
        expire, *s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]]})
    ensure_bucket(moto["endpoint_url"], LOCAL_REGION, BUCKET)  # again: one rule of ours
    rules = {rule["ID"]: rule for rule in
             s3.get_bucket_lifecycle_configuration(Bucket=BUCKET)["Rules"]}
    assert set(rules) == {"someone-elses-rule", "credflow-abort-incomplete-multipart-uploads"}
    assert rules["credflow-abort-incomplete-multipart-uploads"][
        "AbortIncompleteMultipartUpload"] == {"DaysAfterInitiation": 1}
    assert rules["credflow-abort-incomplete-multipart-uploads"]["Filter"] == {"Prefix": ""}
    assert "CredflowLocalLinks" in s3.get_bucket_policy(Bucket=BUCKET)["Policy"]


# --- S3 -------------------------------------------------------------------------------------


def test_iter_objects_pages_past_1000_keys_and_resumes_after_a_cursor(s3):
    keys = [f"staging/claims/{i:05d}.csv" for i in range(1050)]
    with ThreadPoolExecutor(max_workers=16) as pool:
        list(pool.map(lambda key: s3.put_object(Bucket=BUCKET, Key=key, Body=b"x"), keys))
    s3.put_object(Bucket=BUCKET, Key="prod/claims/00001.csv", Body=b"y")

    calls = []
    s3.meta.events.register("before-call.s3.ListObjectsV2", lambda **kw: calls.append(1))
    listed = [obj["Key"] for obj in iter_objects(s3, BUCKET, "staging/")]
    assert listed == keys
    assert len(calls) == 2  # 1,000 + 50: the ContinuationToken was followed

    after = [obj["Key"] for obj in iter_objects(s3, BUCKET, "staging/", start_after=keys[999])]
    assert after == keys[1000:]

    small_pages = list(iter_objects(s3, BUCKET, "staging/", start_after=keys[1040], page_size=3))
    assert [obj["Key"] for obj in small_pages] == keys[1041:]
    assert {obj["Size"] for obj in small_pages} == {1}


class _GeneratedStream(io.RawIOBase):
    """A non-seekable stream of `size` deterministic bytes, generated as it is read."""

    def __init__(self, size: int):
        self.remaining = size
        self.block = hashlib.sha256(b"credflow").digest() * 2048  # 64 KiB

    def readable(self) -> bool:
        return True

    def readinto(self, buffer) -> int:
        n = min(len(buffer), self.remaining, len(self.block))
        buffer[:n] = self.block[:n]
        self.remaining -= n
        return n


def _expected_sha256(size: int) -> str:
    digest, stream = hashlib.sha256(), _GeneratedStream(size)
    while chunk := stream.read(MiB):
        digest.update(chunk)
    return digest.hexdigest()


def test_upload_stream_is_multipart_with_bounded_memory(s3):
    size = 48 * MiB + 123
    tracemalloc.start()
    try:
        result = upload_stream(
            s3,
            io.BufferedReader(_GeneratedStream(size), buffer_size=MiB),
            BUCKET,
            "data/csv/provider-a/big.csv",
            part_size=5 * MiB,
            max_concurrency=2,
        )
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()

    assert result["size"] == size
    assert result["etag"].endswith("-10")  # 10 parts of 5 MiB: a multipart upload
    # ~2 x max_concurrency x part_size (~20 MiB); s3transfer's defaults would buffer it all.
    assert peak < 30 * MiB, f"peak {peak / MiB:.1f} MiB for a {size / MiB:.0f} MiB stream"

    digest = hashlib.sha256()
    for chunk in s3.get_object(Bucket=BUCKET, Key=result["key"])["Body"].iter_chunks(MiB):
        digest.update(chunk)
    assert digest.hexdigest() == _expected_sha256(size)


def test_s3_resource_get_client_with_explicit_endpoint_and_credentials(endpoint):
    resource = s3_resource(
        LOCAL_REGION, endpoint, aws_access_key_id="testing", aws_secret_access_key="testing"
    )
    client = resource.get_client()
    assert client.meta.endpoint_url == endpoint
    assert client.meta.region_name == LOCAL_REGION
    ensure_bucket(endpoint, LOCAL_REGION, BUCKET)
    client.put_object(Bucket=BUCKET, Key="signup/42/license.pdf", Body=b"%PDF")
    assert client.get_object(Bucket=BUCKET, Key="signup/42/license.pdf")["Body"].read() == b"%PDF"


def test_clients_without_an_endpoint_follow_AWS_ENDPOINT_URL(endpoint, monkeypatch):
    monkeypatch.setenv("AWS_ENDPOINT_URL", endpoint)
    ensure_bucket(endpoint, LOCAL_REGION, BUCKET)

    client = s3_resource(LOCAL_REGION, None).get_client()
    assert client.meta.endpoint_url == endpoint
    assert BUCKET in [b["Name"] for b in client.list_buckets()["Buckets"]]

    sqs = SqsResource(region_name=LOCAL_REGION)
    assert sqs.client.meta.endpoint_url == endpoint
    sqs.client.create_queue(QueueName="via-env")
    assert sqs.queue_url("via-env").endswith("/via-env")


# --- S3 events through SQS ------------------------------------------------------------------


def test_drain_returns_exactly_the_watched_keys_url_decoded(s3, sqs, endpoint):
    queue_url = ensure_s3_event_queue(
        endpoint, LOCAL_REGION, bucket=BUCKET, prefix="staging/", queue_name="staged-events"
    )
    watched = {
        "staging/claims/jan 2024.csv": b"a,b\n1,2\n",
        "staging/123/license+v2.pdf": b"%PDF-1",
        "staging/claims/100%.csv": b"x",
    }
    for key, body in watched.items():
        s3.put_object(Bucket=BUCKET, Key=key, Body=body)
    for key in ("prod/claims/jan 2024.csv", "stagingx/claims.csv", "staging"):
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"not watched")

    batch = sqs.drain_s3_events(queue_url, max_messages=100, wait_time_seconds=0)

    assert sorted(e.key for e in batch.events) == sorted(watched)
    assert batch.skipped == 1  # the s3:TestEvent sent when notifications were configured
    assert batch.received == len(watched) + 1 == len(batch.receipts)
    for event in batch.events:
        head = s3.head_object(Bucket=BUCKET, Key=event.key)  # the decoded key is the real key
        assert event.bucket == BUCKET
        assert event.size == len(watched[event.key]) == head["ContentLength"]
        assert event.etag == head["ETag"].strip('"')
        assert event.event_time and event.event_name.startswith("ObjectCreated:")
        assert event.identity == f"{BUCKET}/{event.key}@{event.etag}"


def test_parse_decodes_keys_like_aws_sends_them():
    body = (
        '{"Records": [{"eventName": "ObjectCreated:Put", "eventTime": "2024-01-02T03:04:05.000Z",'
        ' "s3": {"bucket": {"name": "b"}, "object": {"key": "123%2Flicense+copy.pdf",'
        ' "size": 5, "eTag": "abc", "sequencer": "0055AED6DCD90281E5"}}}]}'
    )
    (event,) = parse_s3_event_message(body)
    assert event.key == "123/license copy.pdf"
    assert (event.size, event.etag, event.sequencer) == (5, "abc", "0055AED6DCD90281E5")
    assert parse_s3_event_message('{"Event": "s3:TestEvent", "Bucket": "b"}') == []
    assert parse_s3_event_message("not json") is None
    assert parse_s3_event_message('{"Records": [{"s3": {}}]}') is None


def test_a_tick_takes_a_bounded_batch_and_the_cursor_walks_the_rest(s3, sqs, endpoint):
    queue_url = ensure_s3_event_queue(
        endpoint, LOCAL_REGION, bucket=BUCKET, prefix="staging/", queue_name="staged-events"
    )
    keys = {f"staging/t/{i:02d}.csv" for i in range(25)}
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    first = sqs.drain_s3_events(queue_url, max_messages=10, wait_time_seconds=0)
    assert first.received == 10 and len(first.events) <= 10 and first.full

    cursor, seen, ticks = S3EventCursor().advance(first, ticks=1), [e.key for e in first.events], 1
    while True:
        cursor = S3EventCursor.from_json(cursor.to_json())  # what Dagster stores and gives back
        batch = sqs.drain_s3_events(
            queue_url, acknowledge=cursor.pending_receipts, max_messages=10, wait_time_seconds=0
        )
        ticks += 1
        assert batch.acknowledged == len(cursor.pending_receipts)
        seen += [e.key for e in batch.events]
        cursor = cursor.advance(batch, ticks=ticks)
        if not batch.received:
            break
    assert sorted(seen) == sorted(keys)  # each exactly once: nothing reappeared
    assert cursor.state == {"ticks": ticks} and cursor.pending_receipts == ()
    assert _queue_depth(sqs, queue_url) == (0, 0)


def test_messages_are_deleted_only_when_acknowledged_on_the_next_tick(s3, sqs, endpoint):
    queue_url = ensure_s3_event_queue(
        endpoint,
        LOCAL_REGION,
        bucket=BUCKET,
        prefix="staging/",
        queue_name="short-visibility",
        visibility_timeout_s=1,
    )
    keys = {"staging/a.csv", "staging/b c.csv", "staging/d/e.csv"}
    for key in keys:
        s3.put_object(Bucket=BUCKET, Key=key, Body=b"x")

    tick1 = sqs.drain_s3_events(queue_url, wait_time_seconds=0)
    assert {e.key for e in tick1.events} == keys
    assert _queue_depth(sqs, queue_url) == (0, 4)  # received, invisible, NOT deleted

    # The tick's result was lost (cursor never committed): after the visibility timeout the
    # same events come back.
    time.sleep(1.3)
    tick2 = sqs.drain_s3_events(queue_url, wait_time_seconds=0)
    assert {e.key for e in tick2.events} == keys
    assert set(tick2.receipts).isdisjoint(tick1.receipts)

    # The next tick starts from tick2's committed cursor: it deletes those messages first.
    tick3 = sqs.drain_s3_events(queue_url, acknowledge=tick2.receipts, wait_time_seconds=0)
    assert tick3.acknowledged == 4 and tick3.acknowledge_failed == 0
    assert tick3.events == [] and tick3.receipts == []
    assert _queue_depth(sqs, queue_url) == (0, 0)

    time.sleep(1.3)  # past the visibility timeout: acknowledged messages never reappear
    tick4 = sqs.drain_s3_events(queue_url, acknowledge=tick3.receipts, wait_time_seconds=0)
    assert tick4.received == 0 and tick4.events == []

    # Acknowledging stale handles again is tolerated.
    sqs.drain_s3_events(queue_url, acknowledge=tick1.receipts + tick2.receipts, wait_time_seconds=0)


def test_malformed_messages_are_skipped_with_a_warning_and_acknowledged(sqs, caplog):
    queue_url = sqs.client.create_queue(QueueName="poison")["QueueUrl"]
    for body in ("not json", '{"Records": [{"s3": {"object": {}}}]}', "[1, 2]"):
        sqs.client.send_message(QueueUrl=queue_url, MessageBody=body)

    with caplog.at_level(logging.WARNING, logger="credflow_assets.resources.sqs"):
        batch = sqs.drain_s3_events(queue_url, wait_time_seconds=0)
    assert batch.events == [] and batch.skipped == 3 and len(batch.receipts) == 3
    assert sum("malformed" in r.message for r in caplog.records) == 3

    following = sqs.drain_s3_events(queue_url, acknowledge=batch.receipts, wait_time_seconds=0)
    assert following.acknowledged == 3
    assert _queue_depth(sqs, queue_url) == (0, 0)


def test_two_prefixes_of_one_bucket_each_reach_their_own_queue(s3, sqs, endpoint):
    staged = ensure_s3_event_queue(
        endpoint, LOCAL_REGION, bucket=BUCKET, prefix="staging/", queue_name="staged"
    )
    signup = ensure_s3_event_queue(
        endpoint, LOCAL_REGION, bucket=BUCKET, prefix="signup/", queue_name="signup"
    )
    # Re-provisioning (the stack starting again) keeps both.
    assert staged == ensure_s3_event_queue(
        endpoint, LOCAL_REGION, bucket=BUCKET, prefix="staging/", queue_name="staged"
    )
    config = s3.get_bucket_notification_configuration(Bucket=BUCKET)["QueueConfigurations"]
    assert sorted(c["QueueArn"].rsplit(":", 1)[1] for c in config) == ["signup", "staged"]

    with pytest.raises(ValueError, match="overlaps"):
        ensure_s3_event_queue(
            endpoint, LOCAL_REGION, bucket=BUCKET, prefix="staging/claims/", queue_name="other"
        )

    s3.put_object(Bucket=BUCKET, Key="staging/claims/1.csv", Body=b"1")
    s3.put_object(Bucket=BUCKET, Key="signup/42/license.pdf", Body=b"2")
    s3.put_object(Bucket=BUCKET, Key="elsewhere/3.csv", Body=b"3")

    staged_batch = sqs.drain_s3_events(staged, wait_time_seconds=0)
    signup_batch = sqs.drain_s3_events(signup, wait_time_seconds=0)
    assert [e.key for e in staged_batch.events] == ["staging/claims/1.csv"]
    assert [e.key for e in signup_batch.events] == ["signup/42/license.pdf"]

    # An empty prefix watches a whole bucket.
    ensure_bucket(endpoint, LOCAL_REGION, "credflow-whole")
    whole = ensure_s3_event_queue(
        endpoint, LOCAL_REGION, bucket="credflow-whole", prefix="", queue_name="whole"
    )
    for key in ("a.csv", "deep/b.csv"):
        s3.put_object(Bucket="credflow-whole", Key=key, Body=b"x")
    whole_batch = sqs.drain_s3_events(whole, wait_time_seconds=0)
    assert sorted(e.key for e in whole_batch.events) == ["a.csv", "deep/b.csv"]


def test_cursor_json_round_trip():
    assert S3EventCursor.from_json(None) == S3EventCursor()
    cursor = S3EventCursor(("r1", "r2"), {"reconciled_at": "2024-01-01T00:00:00Z"})
    assert S3EventCursor.from_json(cursor.to_json()) == cursor


def test_resources_initialise_under_dagster(endpoint):
    with build_resources(
        {
            "sqs": SqsResource(region_name=LOCAL_REGION, endpoint_url=endpoint),
            "glue": GlueResource(region_name=LOCAL_REGION, endpoint_url=endpoint),
        }
    ) as resources:
        queue_url = resources.sqs.client.create_queue(QueueName="in-dagster")["QueueUrl"]
        assert resources.sqs.queue_url("in-dagster") == queue_url
        assert resources.glue.get_table("nope", "nope") is None


# --- Glue -----------------------------------------------------------------------------------


def test_glue_table_and_partition_round_trip(endpoint):
    glue = GlueResource(region_name=LOCAL_REGION, endpoint_url=endpoint)
    columns = [("claim_id", "string"), ("amount", "double"), ("therapist_id", "bigint")]

    with pytest.raises(GlueError, match="database 'credflow' does not exist"):
        glue.create_table("credflow", "claims", columns, f"s3://{BUCKET}/prod/claims/")

    ensure_glue_database(endpoint, LOCAL_REGION, "credflow")
    ensure_glue_database(endpoint, LOCAL_REGION, "credflow")  # idempotent
    table = glue.create_table("credflow", "claims", columns, f"s3://{BUCKET}/prod/claims/")
    assert table_columns(table) == columns
    assert table["PartitionKeys"] == [{"Name": "ingest_date", "Type": "string"}]
    assert table["Parameters"]["skip.header.line.count"] == "1"
    assert "OpenCSVSerde" in table["StorageDescriptor"]["SerdeInfo"]["SerializationLibrary"]
    assert glue.get_table("credflow", "claims")["Name"] == "claims"
    assert glue.get_table("credflow", "missing") is None
    with pytest.raises(GlueError, match=r"credflow\.claims already exists"):
        glue.create_table("credflow", "claims", columns, f"s3://{BUCKET}/prod/claims/")

    def location(day: str) -> str:
        return f"s3://{BUCKET}/prod/claims/ingest_date={day}/"

    for day in ("2024-01-01", "2024-01-02", "2024-01-03"):
        assert glue.add_or_update_partition("credflow", "claims", [day], location(day)) == "created"
    assert (
        glue.add_or_update_partition("credflow", "claims", ["2024-01-02"], location("2024-01-02"))
        == "unchanged"
    )

    found = glue.get_partitions("credflow", "claims", expression="ingest_date = '2024-01-02'")
    assert [p["Values"] for p in found] == [["2024-01-02"]]
    later = glue.get_partitions("credflow", "claims", expression="ingest_date >= '2024-01-02'")
    assert sorted(p["Values"][0] for p in later) == ["2024-01-02", "2024-01-03"]
    assert len(glue.get_partitions("credflow", "claims")) == 3

    partition = glue.get_partition("credflow", "claims", ["2024-01-02"])
    assert partition["StorageDescriptor"]["Location"] == location("2024-01-02")
    assert table_columns(partition) == columns  # the partition carries the table's schema

    moved = f"s3://{BUCKET}/prod/claims/rerun/ingest_date=2024-01-02/"
    assert glue.add_or_update_partition("credflow", "claims", ["2024-01-02"], moved) == "updated"
    partition = glue.get_partition("credflow", "claims", ["2024-01-02"])
    assert partition["StorageDescriptor"]["Location"] == moved
    assert len(glue.get_partitions("credflow", "claims")) == 3
    assert glue.get_partition("credflow", "claims", ["2099-01-01"]) is None

    with pytest.raises(GlueError, match=r"credflow\.missing does not exist"):
        glue.add_or_update_partition("credflow", "missing", ["2024-01-01"], location("x"))
    with pytest.raises(GlueError, match="partition keys"):
        glue.add_or_update_partition("credflow", "claims", ["a", "b"], location("x"))
