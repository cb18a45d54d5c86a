"""The local AWS stand-in: a moto server for S3, SQS and Glue, and the provisioning it needs.

`start()` runs `moto_server` as a detached process (see `process.py`), so it outlives the command
that started it and is stopped by pid with `process.stop_pid`. The `ensure_*` functions provision
what the flows expect (buckets, the S3-event queues, Glue databases); they take plain values from
the config, are idempotent, and always use the fixed local credentials below, so they never pick
up real AWS credentials from the environment.
"""

from __future__ import annotations

import functools
import json
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

from credflow_assets.local.process import (
    LOOPBACK,
    ServiceStartError,
    free_port,
    spawn_detached,
    wait_for_port,
)

LOCAL_REGION = "us-east-1"
LOCAL_ACCESS_KEY_ID = "testing"
LOCAL_SECRET_ACCESS_KEY = "testing"

# Environment for processes that talk to the local stack (add AWS_ENDPOINT_URL with
# `local_aws_env`). Fixed dummy values: moto accepts any credentials.
LOCAL_AWS_ENV: dict[str, str] = {
    "AWS_ACCESS_KEY_ID": LOCAL_ACCESS_KEY_ID,
    "AWS_SECRET_ACCESS_KEY": LOCAL_SECRET_ACCESS_KEY,
    "AWS_DEFAULT_REGION": LOCAL_REGION,
    "AWS_REGION": LOCAL_REGION,
}

# The S3-event queue keeps a received message invisible this long. It must comfortably exceed
# the sensor's interval: an unacknowledged message reappears after it (see resources/sqs.py).
DEFAULT_EVENT_QUEUE_VISIBILITY_TIMEOUT_S = 300

_NOTIFICATION_EVENTS = ["s3:ObjectCreated:*"]


def local_aws_env(endpoint_url: str) -> dict[str, str]:
    """`LOCAL_AWS_ENV` plus `AWS_ENDPOINT_URL`, which boto3 >= 1.28 uses for every client."""
    return {**LOCAL_AWS_ENV, "AWS_ENDPOINT_URL": endpoint_url}


def start(home: Path, *, port: int | None = None, timeout: float = 30.0) -> dict[str, Any]:
    """Start a detached moto server on loopback; return `{"pid", "port", "endpoint_url"}`.

    Waits until the server answers HTTP (not just until the port is open). Logs go to
    `home/logs/moto.log`. Raises `ServiceStartError` naming the log if it does not come up.
    """
    port = port or free_port()
    log_path = Path(home) / "logs" / "moto.log"
    process = spawn_detached("moto server", _command(port), log_path)
    try:
        wait_for_port("moto server", port, process=process, log_path=log_path, timeout=timeout)
        endpoint_url = f"http://{LOOPBACK}:{port}"
        _wait_for_http(endpoint_url, process=process, log_path=log_path, timeout=timeout)
    except BaseException:
        process.kill()
        process.wait()
        raise
    return {"pid": process.pid, "port": port, "endpoint_url": endpoint_url}


def reset(endpoint_url: str) -> None:
    """Drop every bucket, queue, table… the moto server holds (`POST /moto-api/reset`)."""
    request = urllib.request.Request(f"{endpoint_url}/moto-api/reset", data=b"", method="POST")
    with urllib.request.urlopen(request, timeout=10) as response:
        response.read()


def _command(port: int) -> list[str]:
    """`moto_server` from this interpreter's bin directory, else `python -m moto.server`."""
    args = ["-H", LOOPBACK, "-p", str(port)]
    script = Path(sys.executable).parent / "moto_server"
    if script.exists():
        return [str(script), *args]
    return [sys.executable, "-m", "moto.server", *args]


def _wait_for_http(endpoint_url: str, *, process, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise ServiceStartError(
                f"moto server exited with status {process.returncode}; see {log_path}"
            )
        try:
            with urllib.request.urlopen(f"{endpoint_url}/moto-api/data.json", timeout=2) as resp:
                if resp.status == 200:
                    return
        except (urllib.error.URLError, OSError) as error:
            last_error = error
        time.sleep(0.05)
    raise ServiceStartError(
        f"moto server did not answer HTTP at {endpoint_url} within {timeout:.0f}s "
        f"({last_error}); see {log_path}"
    )


# --- provisioning ---------------------------------------------------------------------------


@functools.lru_cache(maxsize=32)
def _client(service: str, endpoint_url: str, region: str):
    """A boto3 client with the local credentials (cached: building one costs ~0.1 s)."""
    import boto3

    return boto3.session.Session().client(
        service,
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=LOCAL_ACCESS_KEY_ID,
        aws_secret_access_key=LOCAL_SECRET_ACCESS_KEY,
    )


def ensure_bucket(endpoint_url: str, region: str, bucket: str) -> None:
    """Create `bucket` unless it exists, readable without credentials (see below)."""
    from botocore.exceptions import ClientError

    s3 = _client("s3", endpoint_url, region)
    kwargs: dict[str, Any] = {"Bucket": bucket}
    if region != "us-east-1":
        kwargs["CreateBucketConfiguration"] = {"LocationConstraint": region}
    try:
        s3.create_bucket(**kwargs)
    except ClientError as error:
        code = error.response["Error"]["Code"]
        if code not in ("BucketAlreadyOwnedByYou", "BucketAlreadyExists"):
            raise
    # The links in Dagster's metadata (a parse log, a landed file) are the objects' own URLs on
    # this server, opened by a browser with no credentials; on AWS they are console pages, where
    # the person is signed in. The server listens on 127.0.0.1 only.
    s3.put_bucket_policy(Bucket=bucket, Policy=json.dumps(_read_without_credentials(bucket)))
    _abort_incomplete_uploads(s3, bucket)


# A multipart upload whose process died (kill -9, a lost machine) keeps its parts until it is
# aborted. credflow aborts the ones its runs recorded (provider_feeds/cleanup.py); this rule,
# set on every bucket as production should (README, "Pointing at real AWS"), removes any other
# after a day.
ABORT_INCOMPLETE_UPLOADS_RULE = {
    "ID": "credflow-abort-incomplete-multipart-uploads",
    "Status": "Enabled",
    "Filter": {"Prefix": ""},
    "AbortIncompleteMultipartUpload": {"DaysAfterInitiation": 1},
}


def _abort_incomplete_uploads(s3, bucket: str) -> None:
    """Add `ABORT_INCOMPLETE_UPLOADS_RULE` to the bucket's lifecycle, keeping its other rules
    (a put replaces the whole configuration)."""
    from botocore.exceptions import ClientError

    try:
        rules = s3.get_bucket_lifecycle_configuration(Bucket=bucket).get("Rules", [])
    except ClientError as error:
        if error.response["Error"]["Code"] != "NoSuchLifecycleConfiguration":
            raise
        rules = []
    rules = [rule for rule in rules if rule.get("ID") != ABORT_INCOMPLETE_UPLOADS_RULE["ID"]]
    s3.put_bucket_lifecycle_configuration(
        Bucket=bucket, LifecycleConfiguration={"Rules": [*rules, ABORT_INCOMPLETE_UPLOADS_RULE]})


def _read_without_credentials(bucket: str) -> dict[str, Any]:
    return {"Version": "2012-10-17", "Statement": [
        {"Sid": "CredflowLocalLinks", "Effect": "Allow", "Principal": "*",
         "Action": ["s3:GetObject", "s3:ListBucket"],
         "Resource": [f"arn:aws:s3:::{bucket}", f"arn:aws:s3:::{bucket}/*"]},
    ]}


def ensure_glue_database(endpoint_url: str, region: str, name: str) -> None:
    """Create the Glue database `name` unless it exists."""
    glue = _client("glue", endpoint_url, region)
    try:
        glue.create_database(DatabaseInput={"Name": name})
    except glue.exceptions.AlreadyExistsException:
        pass


def ensure_s3_event_queue(
    endpoint_url: str,
    region: str,
    *,
    bucket: str,
    prefix: str,
    queue_name: str,
    visibility_timeout_s: int = DEFAULT_EVENT_QUEUE_VISIBILITY_TIMEOUT_S,
) -> str:
    """Deliver `s3:ObjectCreated:*` events for `bucket`/`prefix` to the SQS queue `queue_name`.

    Creates the queue (with a policy letting S3 send to it from this bucket, as AWS requires) and
    adds a QueueConfiguration to the bucket's notification configuration. The configuration is
    merged: other queues' entries (another flow watching another prefix of the same bucket) and
    topic/lambda/EventBridge settings are kept; this queue's entry is replaced. An empty prefix
    watches the whole bucket. Overlapping prefixes sent to different queues are refused, as AWS
    refuses them. Returns the queue URL. Idempotent.

    After a change S3 sends an `s3:TestEvent` message to each configured queue; the drain helper
    skips it.
    """
    sqs = _client("sqs", endpoint_url, region)
    s3 = _client("s3", endpoint_url, region)

    queue_url = sqs.create_queue(
        QueueName=queue_name,
        Attributes={"VisibilityTimeout": str(int(visibility_timeout_s))},
    )["QueueUrl"]
    # create_queue leaves an existing queue's attributes alone; make the timeout what was asked.
    sqs.set_queue_attributes(
        QueueUrl=queue_url, Attributes={"VisibilityTimeout": str(int(visibility_timeout_s))}
    )
    queue_arn = sqs.get_queue_attributes(QueueUrl=queue_url, AttributeNames=["QueueArn", "Policy"])[
        "Attributes"
    ]
    policy = _queue_policy_allowing_bucket(queue_arn.get("Policy"), queue_arn["QueueArn"], bucket)
    if policy is not None:
        sqs.set_queue_attributes(QueueUrl=queue_url, Attributes={"Policy": policy})
    arn = queue_arn["QueueArn"]

    current = s3.get_bucket_notification_configuration(Bucket=bucket)
    current.pop("ResponseMetadata", None)
    wanted = {
        "Id": f"credflow-{queue_name}",
        "QueueArn": arn,
        "Events": list(_NOTIFICATION_EVENTS),
    }
    if prefix:
        wanted["Filter"] = {"Key": {"FilterRules": [{"Name": "prefix", "Value": prefix}]}}

    others = []
    for entry in current.get("QueueConfigurations", []):
        if entry.get("QueueArn") == arn:
            if _same_notification(entry, wanted):
                return queue_url  # already configured; don't resend a test event
            continue
        other_prefix = _filter_prefix(entry)
        creates = any(e.startswith("s3:ObjectCreated") for e in entry.get("Events", []))
        if creates and (other_prefix.startswith(prefix) or prefix.startswith(other_prefix)):
            raise ValueError(
                f"s3://{bucket}/{prefix}* (queue {queue_name}) overlaps s3://{bucket}/"
                f"{other_prefix}* already sent to {entry.get('QueueArn')}; S3 refuses overlapping "
                "notification prefixes for the same event type"
            )
        others.append(entry)
    current["QueueConfigurations"] = [*others, wanted]
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=current)
    return queue_url


def _filter_prefix(entry: dict[str, Any]) -> str:
    rules = entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
    return next((r["Value"] for r in rules if r.get("Name", "").lower() == "prefix"), "")


def _same_notification(entry: dict[str, Any], wanted: dict[str, Any]) -> bool:
    return (
        sorted(entry.get("Events", [])) == sorted(wanted["Events"])
        and _filter_prefix(entry) == _filter_prefix(wanted)
        and not any(
            r.get("Name", "").lower() == "suffix"
            for r in entry.get("Filter", {}).get("Key", {}).get("FilterRules", [])
        )
    )


def _queue_policy_allowing_bucket(current: str | None, queue_arn: str, bucket: str) -> str | None:
    """The queue policy with a statement letting S3 send this bucket's events; None if present."""
    policy = json.loads(current) if current else {"Version": "2012-10-17", "Statement": []}
    sid = f"credflow-s3-{bucket}"[:100]
    if any(statement.get("Sid") == sid for statement in policy.get("Statement", [])):
        return None
    policy.setdefault("Statement", []).append(
        {
            "Sid": sid,
            "Effect": "Allow",
            "Principal": {"Service": "s3.amazonaws.com"},
            "Action": "sqs:SendMessage",
            "Resource": queue_arn,
            "Condition": {"ArnLike": {"aws:SourceArn": f"arn:aws:s3:::{bucket}"}},
        }
    )
    return json.dumps(policy)
