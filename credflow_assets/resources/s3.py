"""S3: dagster-aws's `S3Resource`, plus the small helpers the flows share.

Endpoint handling. Every AWS client in credflow gets its endpoint explicitly: `S3Resource` has an
`endpoint_url` field (dagster-aws passes it to `boto3.session.Session().resource("s3", …)`), and
`AwsClientResource` below (the base of the SQS and Glue resources) has the same field. Locally it
is the moto server's URL; in production it is None and boto3 uses AWS. With `endpoint_url=None`,
boto3 (>= 1.28) also honours the `AWS_ENDPOINT_URL` / `AWS_ENDPOINT_URL_<SERVICE>` environment
variables, so a process started with `local_aws_env(...)` reaches moto even through a client built
without an endpoint; that is a fallback, not what credflow relies on.

Client cache. Building a boto3 client costs 0.2-0.3 s (a new session parses the service's JSON
model every time), which was a third of a small run's wall time. boto3 clients are thread-safe
and meant to be long-lived, so each process keeps one client per distinct configuration
(`cached_client`); credentials from the default chain still refresh inside botocore.

Nothing here touches the network or builds a client at import time; boto3 is imported lazily.
"""

from __future__ import annotations

import os
import threading
from collections.abc import Callable, Iterator
from typing import IO, Any, ClassVar
from urllib.parse import quote, urlsplit

from dagster import ConfigurableResource
from dagster_aws.s3 import S3Resource
from pydantic import Field, PrivateAttr

# S3's multipart minimum is 5 MiB (moto enforces it too); 8 MiB parts keep memory small while
# allowing files up to 80 GiB within S3's 10,000-part limit.
DEFAULT_PART_SIZE = 8 * 1024 * 1024
MIN_PART_SIZE = 5 * 1024 * 1024
MAX_PUT_OBJECT_BYTES = 5 * 1024**3  # S3's limit for one PutObject


def s3_resource(
    region: str,
    endpoint_url: str | None,
    *,
    aws_access_key_id: str | None = None,
    aws_secret_access_key: str | None = None,
) -> S3Resource:
    """dagster-aws's `S3Resource` for `region`, pointed at `endpoint_url` (None: AWS itself).

    Credentials come from the usual boto3 chain (environment, profile, instance role) unless
    given; pass `EnvVar(...)` values, never literals from the YAML.
    """
    return CachedS3Resource(
        region_name=region,
        endpoint_url=endpoint_url,
        aws_access_key_id=aws_access_key_id,
        aws_secret_access_key=aws_secret_access_key,
    )


_clients: dict[tuple, Any] = {}
_clients_lock = threading.Lock()


def cached_client(configuration: tuple, build: Callable[[], Any]) -> Any:
    """The process's client for `configuration` (every field `build` uses), built once.

    The key also holds the process id (a forked child must not share its parent's connection
    pool) and the `AWS_*` environment, which boto3 reads when a field is None (the endpoint and
    credential fallbacks), so a changed environment gets a new client.
    """
    aws_environment = tuple(sorted(
        (name, value) for name, value in os.environ.items() if name.startswith("AWS_")))
    key = (os.getpid(), configuration, aws_environment)
    with _clients_lock:  # botocore sessions are not thread-safe while building a client
        client = _clients.get(key)
        if client is None:
            client = _clients[key] = build()
    return client


class CachedS3Resource(S3Resource):
    """dagster-aws's `S3Resource`, whose `get_client()` reuses the process's client for the same
    configuration instead of building a new session each call (see the module docstring)."""

    def get_client(self) -> Any:
        configuration = (
            "s3", self.max_attempts, self.region_name, self.endpoint_url,
            self.use_unsigned_session, self.profile_name, self.use_ssl, self.verify,
            self.aws_access_key_id, self.aws_secret_access_key, self.aws_session_token,
        )
        return cached_client(configuration, self._new_client)

    def _new_client(self) -> Any:
        client = super().get_client()
        # Request bodies are not SHA256-signed (SigV4's UNSIGNED-PAYLOAD), whatever the
        # endpoint. On AWS (HTTPS, with the CRC32 checksum botocore sends by default) botocore
        # already leaves uploads unsigned; over plain HTTP (the local moto server, which does
        # not check payload hashes) it would hash every uploaded byte, about 1.5 CPU seconds
        # per GiB in the landing (RESULTS.md §1, session 9). TLS and the checksum keep the
        # body's integrity on AWS. botocore reads this from the client's config per request.
        settings = client.meta.config
        settings.s3 = {**(settings.s3 or {}), "payload_signing_enabled": False}
        return client


def s3_uri(bucket: str, key: str) -> str:
    return f"s3://{bucket}/{key}"


def object_url(client, bucket: str, key: str) -> str:
    """A link a person can open in a browser for `s3://bucket/key` (no token, no expiry).

    On AWS, the S3 console's page of the object (Open shows it; a parse log is stored as
    gzip-encoded text, so the browser shows it as text); on another endpoint (the local moto
    server), the object's own path-style URL. Presigned URLs expire, so they are not used.
    """
    console = _console(client, "object", bucket, key)
    return console or f"{_endpoint(client)}/{quote(bucket, safe='')}/{quote(key, safe='/')}"


def prefix_url(client, bucket: str, prefix: str) -> str:
    """A link to the objects under `prefix`: the console's folder view on AWS, the bucket's
    listing (S3's XML) on another endpoint."""
    console = _console(client, "buckets", bucket, prefix)
    listing = f"{_endpoint(client)}/{quote(bucket, safe='')}?prefix={quote(prefix, safe='')}"
    return console or listing


def _endpoint(client) -> str:
    return (client.meta.endpoint_url or "").rstrip("/")


def _console(client, page: str, bucket: str, prefix: str) -> str | None:
    """The S3 console's `page` (`object` or `buckets`) for a client of AWS; None elsewhere."""
    endpoint = _endpoint(client)
    if endpoint and not urlsplit(endpoint).hostname.endswith(".amazonaws.com"):
        return None
    region = client.meta.region_name or "us-east-1"
    return (f"https://console.aws.amazon.com/s3/{page}/{quote(bucket, safe='')}"
            f"?region={region}&bucketType=general&prefix={quote(prefix, safe='')}")


def head_object_or_none(client, bucket: str, key: str) -> dict[str, Any] | None:
    """`head_object`, or None when the object does not exist (any other error is raised)."""
    from botocore.exceptions import ClientError

    try:
        return client.head_object(Bucket=bucket, Key=key)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"404", "NoSuchKey", "NotFound"}:
            return None
        raise


def iter_objects(
    client: Any,
    bucket: str,
    prefix: str = "",
    start_after: str | None = None,
    *,
    page_size: int = 1000,
) -> Iterator[dict[str, Any]]:
    """Every object under `prefix` (key order), after `start_after` if given.

    Pages with `ContinuationToken`, so it goes past S3's 1,000 keys per response. Yields the
    `list_objects_v2` entries (`Key`, `Size`, `ETag`, `LastModified`, …). Keys that sort before
    `start_after` are never seen: a cursor over keys alone misses new keys that sort early (see
    SERVICES.md), which is why sensors drain the event queue and only the reconciliation pass
    lists.
    """
    kwargs: dict[str, Any] = {"Bucket": bucket, "Prefix": prefix, "MaxKeys": page_size}
    if start_after:
        kwargs["StartAfter"] = start_after
    while True:
        page = client.list_objects_v2(**kwargs)
        yield from page.get("Contents", [])
        if not page.get("IsTruncated"):
            return
        kwargs.pop("StartAfter", None)
        kwargs["ContinuationToken"] = page["NextContinuationToken"]


def transfer_config(
    *, part_size: int = DEFAULT_PART_SIZE, max_concurrency: int = 4,
    multipart_threshold: int | None = None,
) -> Any:
    """A `TransferConfig` whose memory use is bounded by about `2 * max_concurrency * part_size`.

    Multipart starts at `multipart_threshold` (default `part_size`); below it a file is sent in
    one `PutObject`, which reads a file given by path as it sends it. At most
    `max_concurrency` parts are in flight and at most as many more are buffered from a
    non-seekable stream (s3transfer's default buffers 10).
    """
    from boto3.s3.transfer import TransferConfig

    if part_size < MIN_PART_SIZE:
        raise ValueError(f"part_size {part_size} is below S3's 5 MiB multipart minimum")
    if multipart_threshold is not None and multipart_threshold > MAX_PUT_OBJECT_BYTES:
        raise ValueError(f"multipart_threshold {multipart_threshold} is above S3's "
                         f"{MAX_PUT_OBJECT_BYTES} bytes for a single PutObject")
    config = TransferConfig(
        multipart_threshold=max(part_size, multipart_threshold or 0),
        multipart_chunksize=part_size,
        max_concurrency=max_concurrency,
        max_io_queue=max_concurrency * 2,
        use_threads=max_concurrency > 1,
        preferred_transfer_client="classic",
    )
    config.max_in_memory_upload_chunks = max_concurrency
    return config


def upload_stream(
    client: Any,
    stream: IO[bytes] | str | os.PathLike,
    bucket: str,
    key: str,
    *,
    part_size: int = DEFAULT_PART_SIZE,
    max_concurrency: int = 4,
    multipart_threshold: int | None = None,
    extra_args: dict[str, Any] | None = None,
    on_multipart_started: Callable[[str], None] | None = None,
    on_multipart_ended: Callable[[str], None] | None = None,
) -> dict[str, Any]:
    """Stream a file-like object to `s3://bucket/key` (multipart from `multipart_threshold`,
    by default `part_size`; see `transfer_config`).

    Memory stays bounded whatever the size (see `transfer_config`); the stream need not be
    seekable. Returns `{"bucket", "key", "size", "etag"}` from a `head_object` afterwards, for
    materialization metadata and run keys.

    `on_multipart_started(upload_id)` is called as soon as S3 has opened the multipart upload,
    and `on_multipart_ended(upload_id)` once it is completed or aborted: a caller records the
    id, so that if this process is killed before either, someone else can abort the upload
    (S3 keeps an open upload's parts until then).
    """
    opened: list[str] = []

    def started(parsed: Any = None, **_: Any) -> None:
        # Every CreateMultipartUpload of this (shared) client passes here: keep this key's.
        if parsed and parsed.get("Bucket") == bucket and parsed.get("Key") == key \
                and parsed.get("UploadId"):
            opened.append(parsed["UploadId"])
            if on_multipart_started is not None:
                on_multipart_started(parsed["UploadId"])

    handler_id = f"credflow-upload-{id(opened)}"
    client.meta.events.register("after-call.s3.CreateMultipartUpload", started,
                                unique_id=handler_id)
    try:
        # A path is uploaded by name: s3transfer then reads each part from the file as it is
        # sent, where from an open file it reads every part in flight into memory first.
        config = transfer_config(part_size=part_size, max_concurrency=max_concurrency,
                                 multipart_threshold=multipart_threshold)
        if isinstance(stream, (str, os.PathLike)):
            client.upload_file(os.fspath(stream), bucket, key, ExtraArgs=extra_args or None,
                               Config=config)
        else:
            client.upload_fileobj(stream, bucket, key, ExtraArgs=extra_args or None,
                                  Config=config)
    finally:
        client.meta.events.unregister("after-call.s3.CreateMultipartUpload",
                                      unique_id=handler_id)
        if on_multipart_ended is not None:
            for upload_id in opened:  # completed, or aborted by s3transfer on the error
                on_multipart_ended(upload_id)
    head = client.head_object(Bucket=bucket, Key=key)
    return {
        "bucket": bucket,
        "key": key,
        "size": head["ContentLength"],
        "etag": head["ETag"].strip('"'),
    }


def abort_multipart_upload(client: Any, bucket: str, key: str, upload_id: str) -> bool:
    """Abort an open multipart upload (its parts are deleted); False when S3 no longer knows
    it (completed or aborted already). Other errors are raised."""
    from botocore.exceptions import ClientError

    try:
        client.abort_multipart_upload(Bucket=bucket, Key=key, UploadId=upload_id)
    except ClientError as error:
        if error.response.get("Error", {}).get("Code") in {"NoSuchUpload", "404"}:
            return False
        raise
    return True


class AwsClientResource(ConfigurableResource):
    """Base for credflow's own boto3-backed resources (SQS, Glue): region, endpoint, credentials.

    The client is built on first use (or in `setup_for_execution`) and kept private; nothing
    happens at import or construction. Subclasses set the class variable `service_name`.
    """

    region_name: str = Field(description="AWS region, e.g. us-east-1.")
    endpoint_url: str | None = Field(
        default=None,
        description="Custom endpoint (the local moto server); None means AWS itself.",
    )
    aws_access_key_id: str | None = Field(
        default=None, description="Access key; None uses the boto3 credential chain."
    )
    aws_secret_access_key: str | None = Field(
        default=None, description="Secret key; None uses the boto3 credential chain."
    )
    aws_session_token: str | None = Field(default=None, description="Optional session token.")
    max_attempts: int = Field(default=5, description="boto3 retry attempts (standard mode).")

    service_name: ClassVar[str] = ""

    _client: Any = PrivateAttr(default=None)

    def setup_for_execution(self, context) -> None:
        self._client = self._build_client()

    @property
    def client(self) -> Any:
        """The boto3 client (built once, lazily)."""
        if self._client is None:
            self._client = self._build_client()
        return self._client

    def _build_client(self) -> Any:
        configuration = (
            self.service_name, self.region_name, self.endpoint_url, self.aws_access_key_id,
            self.aws_secret_access_key, self.aws_session_token, self.max_attempts,
        )
        return cached_client(configuration, self._new_client)

    def _new_client(self) -> Any:
        import boto3
        from botocore.config import Config

        return boto3.session.Session().client(
            self.service_name,
            region_name=self.region_name,
            endpoint_url=self.endpoint_url,
            aws_access_key_id=self.aws_access_key_id,
            aws_secret_access_key=self.aws_secret_access_key,
            aws_session_token=self.aws_session_token,
            config=Config(retries={"max_attempts": self.max_attempts, "mode": "standard"}),
        )
