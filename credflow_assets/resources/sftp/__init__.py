"""SFTP: pinned host keys, streaming downloads that resume after a dropped connection.

    sftp = SftpResource(host=..., username=..., private_key_file=EnvVar("SFTP_KEY_FILE"),
                        known_hosts_file=EnvVar("SFTP_KNOWN_HOSTS"))
    with sftp.open_session() as session:
        for remote in session.list_dir("outbound"):
            result = session.download(remote.path, local_dir / remote.name)

Host keys are pinned: the server's key must be in `known_hosts_file` (OpenSSH format, port
entries as `[host]:port`) or match `host_key_fingerprint` (`SHA256:…`, as `ssh-keygen -lf`
prints). An unknown or changed key is refused with `SftpHostKeyError`; nothing is ever added.

Downloads stream into `<local>.part` in bounded memory and, if the connection drops, continue
from its size after a reconnect with exponential backoff (up to `max_attempts` connections for
one operation); a file whose size or mtime changed in between is refused rather than stitched.
A finished download is checked against the remote size and mtime, then renamed into place, so
`local_path` only ever holds a complete file. `download` returns a `DownloadResult` (size,
attempts, the offsets it resumed from) rather than a bare byte count.

A session is one connection and is not thread-safe; open one per thread.

paramiko is imported on first use; nothing happens at import time.

One module per idea: resource.py (the configuration), connection.py (connecting, the private
key, host-key pinning), session.py (one connection, re-established with backoff; failures
classified), listing.py (directory listings and the remote identity of a file), download.py
(streaming a file to disk, resuming, verifying), errors.py (the errors, by cause).
"""

from credflow_assets.resources.sftp.download import (
    WINDOW_BYTES,
    WINDOWS_IN_FLIGHT,
    DownloadResult,
    ProgressCallback,
)
from credflow_assets.resources.sftp.errors import (
    SftpAuthError,
    SftpConfigError,
    SftpConnectionError,
    SftpError,
    SftpFileChanged,
    SftpHostKeyError,
    SftpIncompleteDownload,
    SftpLocalFileError,
    SftpNoSuchFile,
    SftpNotAFile,
    SftpPermissionDenied,
)
from credflow_assets.resources.sftp.listing import RemoteFile
from credflow_assets.resources.sftp.resource import SftpResource
from credflow_assets.resources.sftp.session import (
    BACKOFF_FIRST_SECONDS,
    BACKOFF_MAX_SECONDS,
    SftpSession,
)

__all__ = [
    "BACKOFF_FIRST_SECONDS",
    "BACKOFF_MAX_SECONDS",
    "WINDOW_BYTES",
    "WINDOWS_IN_FLIGHT",
    "DownloadResult",
    "ProgressCallback",
    "RemoteFile",
    "SftpAuthError",
    "SftpConfigError",
    "SftpConnectionError",
    "SftpError",
    "SftpFileChanged",
    "SftpHostKeyError",
    "SftpIncompleteDownload",
    "SftpLocalFileError",
    "SftpNoSuchFile",
    "SftpNotAFile",
    "SftpPermissionDenied",
    "SftpResource",
    "SftpSession",
    "sftp_resource_key",
]


def sftp_resource_key(name: str) -> str:
    """The Definitions resource key of the SFTP server named `name` (a provider's)."""
    return f"sftp_{name}"
