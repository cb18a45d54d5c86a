"""One SFTP connection, re-established with exponential backoff when it drops: every
operation runs through `_retrying`, and a failure is classified as an `SftpError` by cause
(connection lost, no such file, permission denied, …), retried only when a reconnect can cure
it."""

from __future__ import annotations

import errno
import random
import socket
import time
from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Optional

import dagster as dg

from credflow_assets.resources.sftp.connection import connect
from credflow_assets.resources.sftp.download import Downloads
from credflow_assets.resources.sftp.errors import (
    SftpConnectionError,
    SftpError,
    SftpNoSuchFile,
    SftpPermissionDenied,
    describe,
)
from credflow_assets.resources.sftp.listing import Listing

if TYPE_CHECKING:
    import paramiko

    from credflow_assets.resources.sftp.resource import SftpResource

BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 20.0


class SftpSession(Listing, Downloads):
    """One SFTP connection, re-established transparently when it drops."""

    def __init__(self, resource: SftpResource):
        self._resource = resource
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self.connections = 0  # connections made over the session's life

    def connect(self) -> None:
        self._retrying("connect", "", lambda _sftp, _attempt: None)

    def close(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection must not mask errors
                pass

    def _retrying(
        self,
        what: str,
        path: str,
        operation: Callable[[paramiko.SFTPClient, int], Any],
        *,
        count: bool = False,
    ) -> Any:
        """Run `operation(sftp, attempt)`; on a dropped connection reconnect with backoff.

        With `count=True` return the number of attempts used instead of the result.
        """
        resource = self._resource
        attempts = max(1, resource.max_attempts)
        for attempt in range(1, attempts + 1):
            try:
                if self._sftp is None:
                    self._client, self._sftp = connect(resource)
                    self.connections += 1
                result = operation(self._sftp, attempt)
                return attempt if count else result
            except SftpError as exc:
                failure: SftpError = exc
                cause: BaseException = exc
            except Exception as exc:  # noqa: BLE001 - classified below, never swallowed
                classified = self._classify(what, path, exc)
                if classified is None:
                    raise  # not an SFTP failure (e.g. raised by a progress callback)
                failure, cause = classified, exc
            if not failure.retryable:
                if failure is cause:
                    raise failure
                raise failure from cause
            self.close()
            if attempt == attempts:
                raise SftpConnectionError(
                    f"{failure} (gave up after {attempts} connection attempts)"
                ) from cause
            delay = min(BACKOFF_MAX_SECONDS, BACKOFF_FIRST_SECONDS * 2 ** (attempt - 1))
            delay *= random.uniform(0.8, 1.2)
            dg.get_dagster_logger().warning(
                f"{failure}; reconnecting in {delay:.1f}s (attempt {attempt + 1}/{attempts})"
            )
            time.sleep(delay)
        raise AssertionError("unreachable")

    def _classify(self, what: str, path: str, exc: BaseException) -> Optional[SftpError]:
        import paramiko

        if not isinstance(exc, (OSError, EOFError, paramiko.SSHException, paramiko.SFTPError)):
            return None
        code = getattr(exc, "errno", None)
        if isinstance(exc, OSError) and code == errno.ENOENT:
            return SftpNoSuchFile(self._message(what, path, "no such file or directory"))
        if isinstance(exc, OSError) and code in (errno.EACCES, errno.EPERM):
            return SftpPermissionDenied(self._message(what, path, "permission denied"))
        transport = self._client.get_transport() if self._client is not None else None
        dropped = transport is None or not transport.is_active()
        if dropped or isinstance(
            exc, (EOFError, socket.timeout, ConnectionError, paramiko.SSHException)
        ):
            return SftpConnectionError(
                self._message(what, path, f"connection lost: {describe(exc)}")
            )
        return SftpError(self._message(what, path, describe(exc)))

    def _message(self, what: str, path: str, cause: str) -> str:
        target = f" {path!r}" if path else ""
        return f"SFTP {what}{target} on {self._resource._where} failed: {cause}"
