"""The errors of the SFTP resource, one class per cause; `retryable` marks the ones a
reconnect can cure."""

from __future__ import annotations


class SftpError(Exception):
    """An SFTP operation failed; the message names the server, the path and the cause."""

    retryable = False


class SftpConfigError(SftpError):
    """The resource is misconfigured (no pinned host key, unreadable key file, …)."""


class SftpConnectionError(SftpError):
    """The server could not be reached or the connection dropped (after all retries)."""

    retryable = True


class SftpHostKeyError(SftpError):
    """The server's host key is unknown or differs from the pinned one."""


class SftpAuthError(SftpError):
    """The server refused our user or private key."""


class SftpNoSuchFile(SftpError):
    """The remote path does not exist."""


class SftpPermissionDenied(SftpError):
    """The server refused access to the remote path."""


class SftpNotAFile(SftpError):
    """A download was asked for something that is not a regular file (e.g. a directory)."""


class SftpFileChanged(SftpError):
    """The remote file changed (size or mtime) while it was being downloaded."""


class SftpIncompleteDownload(SftpError):
    """The downloaded size does not match the remote size."""


class SftpLocalFileError(SftpError):
    """Writing the local copy failed (disk full, permissions, …)."""


def describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"
