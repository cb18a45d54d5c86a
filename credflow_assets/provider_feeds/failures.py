"""Per-file failures: a message naming provider, file and cause; retry only what may pass.

Every failure of a provider file becomes a `dg.Failure` whose first line reads
`provider {name}: file {remote path}: {stage} failed: {cause}`. Transient SFTP and S3 errors
(dropped connections, timeouts, throttling, 5xx) allow the asset's `RetryPolicy`; everything
else (a bad signature, a wrong passphrase, a corrupt file, permission denied) fails at once:
retrying would give the same answer.
"""

from __future__ import annotations

import traceback
from dataclasses import dataclass
from typing import Any, Optional

import dagster as dg

from credflow_assets.provider_feeds.naming import parse_partition_key
from credflow_assets.provider_feeds.unpack import (
    CorruptArchive,
    ExtractionLimitExceeded,
    UnpackError,
    UnsafeMember,
)
from credflow_assets.resources.gpg import (
    GpgBadPassphrase,
    GpgBadSignature,
    GpgCorruptInput,
    GpgError,
    GpgNoSecretKey,
)
from credflow_assets.resources.sftp import (
    SftpError,
    SftpFileChanged,
    SftpNoSuchFile,
    SftpPermissionDenied,
)

# The cause, in words, by error class (first match wins).
_CAUSES: list[tuple[type[BaseException], str]] = [
    (GpgBadPassphrase, "wrong GPG passphrase"),
    (GpgNoSecretKey, "not encrypted for our key"),
    (GpgBadSignature, "bad signature"),
    (GpgCorruptInput, "corrupt encrypted data"),
    (SftpPermissionDenied, "SFTP permission denied"),
    (SftpNoSuchFile, "not on the SFTP server"),
    (UnsafeMember, "unsafe archive member"),
    (ExtractionLimitExceeded, "decompression limit exceeded"),
    (CorruptArchive, "corrupt or truncated compressed data"),
]
_TRANSIENT_S3_CODES = {
    "RequestTimeout", "SlowDown", "Throttling", "ThrottlingException", "InternalError",
    "ServiceUnavailable", "RequestLimitExceeded", "500", "502", "503", "504",
}


@dataclass(frozen=True)
class FileRef:
    provider: str
    remote_path: str

    @classmethod
    def from_partition_key(cls, key: str) -> FileRef:
        try:
            provider, remote_path = parse_partition_key(key)
        except ValueError as error:
            raise dg.Failure(description=f"partition {key!r}: {error}",
                             allow_retries=False) from None
        return cls(provider, remote_path)

    def __str__(self) -> str:
        return f"provider {self.provider}: file {self.remote_path}"


def file_failure(
    ref: FileRef,
    stage: str,
    error: BaseException | str,
    *,
    scrub: Optional[dict[str, str]] = None,
    metadata: Optional[dict[str, Any]] = None,
    transient: Optional[bool] = None,
    log: Any = None,
) -> dg.Failure:
    """A Failure for one file: `provider P: file F: {stage} failed: {cause}`.

    Raise it `from None`: Dagster (and `credflow sync`) report the innermost cause of a
    failure, which must be this message rather than the library error it rephrases. An error
    of no known kind (a bug, an unforeseen library error) has its traceback logged to `log`.
    """
    if isinstance(error, BaseException) and not isinstance(
        error, (SftpError, GpgError, UnpackError)
    ) and log is not None:
        log.error(f"{ref}: {stage}: unexpected error\n" + "".join(
            traceback.format_exception(type(error), error, error.__traceback__)))
    cause = describe(error) if isinstance(error, BaseException) else error
    # Local scratch paths mean nothing to the reader; show the file's name instead.
    for local, shown in sorted((scrub or {}).items(), key=lambda item: -len(item[0])):
        cause = cause.replace(local, shown)
    if transient is None:
        transient = isinstance(error, BaseException) and is_transient(error)
    return dg.Failure(
        description=f"{ref}: {stage} failed: {cause}",
        metadata={
            "provider": ref.provider,
            "remote_path": ref.remote_path,
            "stage": stage,
            "retryable": transient,
            **(metadata or {}),
        },
        allow_retries=transient,
    )


def describe(error: BaseException) -> str:
    message = " ".join(str(error).split()) or type(error).__name__
    for error_class, words in _CAUSES:
        if isinstance(error, error_class):
            return f"{words}: {message}"
    if isinstance(error, (SftpError, GpgError)):
        return message
    return f"{type(error).__name__}: {message}"


def is_transient(error: BaseException) -> bool:
    """A dropped SFTP connection, an S3 timeout, throttle or 5xx: worth another attempt."""
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SftpError):
            return current.retryable or isinstance(current, SftpFileChanged)
        if isinstance(current, (GpgError, CorruptArchive, UnsafeMember, ExtractionLimitExceeded)):
            return False
        if _is_transient_aws(current):
            return True
        # boto3 raises S3UploadFailedError inside `except ClientError` (implicit context).
        current = current.__cause__ or current.__context__
    return False


def _is_transient_aws(error: BaseException) -> bool:
    try:
        from boto3.exceptions import RetriesExceededError
        from botocore.exceptions import ClientError, ConnectionError, HTTPClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    if isinstance(error, (ConnectionError, HTTPClientError, RetriesExceededError)):
        return True
    if isinstance(error, ClientError):
        code = str(error.response.get("Error", {}).get("Code", ""))
        status = error.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        return code in _TRANSIENT_S3_CODES or status >= 500
    return False
