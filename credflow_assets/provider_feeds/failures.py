"""Per-file failures: a sentence naming provider, file, cause and what to do; retry only what
may pass.

Every failure of a provider file becomes a `dg.Failure` whose message reads
`provider {name}: file {remote path}: {stage} failed: {cause}. {what to do}`, with no exception
class and no traceback (an unforeseen error's traceback goes to the run's log only). Two kinds
read differently, because their cause is already a whole sentence: a file refused by its
unpacking limits (`provider P: file F: the decrypted content passed 100 MB
(max_extracted_bytes); refused, nothing landed. …`) and a provider whose environment
variable is missing (`provider P: environment variable V is not set; its files wait until it
is. …`).

Transient SFTP and S3 errors (dropped connections, timeouts, throttling, 5xx) allow the
asset's `RetryPolicy`; everything else (a bad signature, a wrong passphrase, a corrupt file,
permission denied) fails at once: retrying would give the same answer. The failure's metadata
says which (`failure_kind`: `transient` or `permanent`).
"""

from __future__ import annotations

import traceback
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from credflow_assets.provider_feeds.limits import ExtractionLimitExceeded
from credflow_assets.provider_feeds.names import parse_partition_key, partition_key
from credflow_assets.provider_feeds.settings import MissingVariable
from credflow_assets.provider_feeds.unpack import CorruptArchive, UnpackError, UnsafeMember
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

class RawCopyDamaged(Exception):
    """The raw copy read back from S3 does not match the sha256 recorded when it was stored."""


# The cause in words, and what to do, by error class (first match wins).
_CAUSES: list[tuple[type[BaseException], str, str]] = [
    (GpgBadPassphrase, "wrong GPG passphrase",
     "check the passphrase variable of this provider, then rerun the file"),
    (GpgNoSecretKey, "not encrypted for our key",
     "ask the provider to encrypt to credflow's current public key and send it again"),
    (GpgBadSignature, "bad signature", "ask the provider to send the file and its .sig again"),
    (GpgCorruptInput, "corrupt encrypted data", "ask the provider to send the file again"),
    (SftpPermissionDenied, "SFTP permission denied",
     "ask the provider to let credflow's SFTP user read it"),
    (SftpNoSuchFile, "not on the SFTP server",
     "nothing to do if the provider removed it on purpose"),
    (UnsafeMember, "unsafe archive member",
     "the whole archive is refused; ask the provider for one without it"),
    (CorruptArchive, "corrupt or truncated compressed data",
     "ask the provider to send the file again"),
    (RawCopyDamaged, "raw copy damaged",
     "the raw copy no longer matches its sha256; restore it from the bucket's versions or "
     "ask the provider to send the file again"),
]
TRANSIENT_ADVICE = "it is retried automatically; if it keeps failing, check the server"
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
            raise dg.Failure(description=f"partition {key!r}: {error}; rerun a partition the "
                             "provider's sensor made", metadata={"failure_kind": "permanent"},
                             allow_retries=False) from None
        return cls(provider, remote_path)

    def __str__(self) -> str:
        return f"provider {self.provider}: file {self.remote_path}"


def _advice(error: BaseException | str, transient: bool) -> str:
    if transient:
        return TRANSIENT_ADVICE
    if isinstance(error, BaseException):
        for error_class, _words, advice in _CAUSES:
            if isinstance(error, error_class):
                return advice
    return ""


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
    """A Failure for one file: `provider P: file F: {stage} failed: {cause}. {what to do}`
    (or one of the two whole-sentence forms of the module docstring), with `failure_kind`.

    Raise it `from None`: Dagster (and `credflow sync`) report the innermost cause of a
    failure, which must be this message rather than the library error it rephrases. An error
    of no known kind (a bug, an unforeseen library error) has its traceback logged to `log`.
    """
    if isinstance(error, BaseException) and not isinstance(
        error, (SftpError, GpgError, UnpackError, ExtractionLimitExceeded, MissingVariable,
                RawCopyDamaged)
    ) and log is not None:
        log.error(f"{ref}: {stage}: unexpected error\n" + "".join(
            traceback.format_exception(type(error), error, error.__traceback__)))
    cause = describe(error) if isinstance(error, BaseException) else error
    # Local scratch paths mean nothing to the reader; show the file's name instead.
    for local, shown in sorted((scrub or {}).items(), key=lambda item: -len(item[0])):
        cause = cause.replace(local, shown)
    if transient is None:
        transient = isinstance(error, BaseException) and is_transient(error)
    if isinstance(error, MissingVariable):
        description = (f"{cause}. This file ({ref.remote_path}) is not landed: set the "
                       "variable where the code location runs, then rerun it: credflow reparse "
                       "--flow provider_feeds --partition "
                       f"'{partition_key(ref.provider, ref.remote_path)}'")
    elif isinstance(error, ExtractionLimitExceeded):
        description = f"{ref}: {cause}"  # a whole sentence already, with what to do
    else:
        advice = _advice(error, transient)
        description = f"{ref}: {stage} failed: {cause}"
        if advice:
            description = f"{description.rstrip('.!')}. {advice[0].upper()}{advice[1:]}"
    return dg.Failure(
        description=description,
        metadata={
            "provider": ref.provider,
            "remote_path": ref.remote_path,
            "stage": stage,
            "failure_kind": "transient" if transient else "permanent",
            "retryable": transient,
            **(metadata or {}),
        },
        allow_retries=transient,
    )


@contextmanager
def one_file_failure(ref: FileRef, stage: str, log: Any) -> Iterator[None]:
    """Anything unforeseen still fails as this file's failure (retried only if transient)."""
    try:
        yield
    except dg.Failure:
        raise
    except Exception as error:  # noqa: BLE001 - classified in file_failure
        raise file_failure(ref, stage, error, log=log) from None


def scratch_scrub(work: Path) -> dict[str, str]:
    """`file_failure`'s `scrub` for a file's scratch directory: its files by their names."""
    return {f"{work}/raw/": "", f"{work}/plain/": "", f"{work}/sig/": "",
            str(work): "(scratch)"}


def describe(error: BaseException) -> str:
    """The cause in words: never an exception class (see `file_failure` for the traceback)."""
    message = " ".join(str(error).split())
    for error_class, words, _advice_words in _CAUSES:
        if isinstance(error, error_class):
            return f"{words}: {message}" if message else words
    if isinstance(error, (SftpError, GpgError, UnpackError, ExtractionLimitExceeded,
                          MissingVariable)):
        return message or "no detail given"
    if _is_aws_error(error):
        return f"S3 request failed: {message or 'no detail given'}"
    return (f"unexpected error: {message or 'no detail given'} (the run's log has the "
            "details)")


def is_transient(error: BaseException) -> bool:
    """A dropped SFTP connection, an S3 timeout, throttle or 5xx: worth another attempt."""
    seen: set[int] = set()
    current: Optional[BaseException] = error
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        if isinstance(current, SftpError):
            return current.retryable or isinstance(current, SftpFileChanged)
        if isinstance(current, (GpgError, CorruptArchive, UnsafeMember, ExtractionLimitExceeded,
                                MissingVariable, RawCopyDamaged)):
            return False
        if _is_transient_aws(current):
            return True
        # boto3 raises S3UploadFailedError inside `except ClientError` (implicit context).
        current = current.__cause__ or current.__context__
    return False


def _is_aws_error(error: BaseException) -> bool:
    try:
        from boto3.exceptions import Boto3Error
        from botocore.exceptions import BotoCoreError, ClientError
    except ImportError:  # pragma: no cover - boto3 is a dependency
        return False
    return isinstance(error, (Boto3Error, BotoCoreError, ClientError))


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
