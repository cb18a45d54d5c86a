"""SFTP: pinned host keys, streaming downloads that resume after a dropped connection.

    sftp = SftpResource(host=..., username=..., private_key_file=EnvVar("SFTP_KEY_FILE"),
                        known_hosts_file=EnvVar("SFTP_KNOWN_HOSTS"))
    with sftp.open_session() as session:
        for remote in session.list_dir("outbound"):
            result = session.download(remote.path, local_dir / remote.name)

Host keys are pinned: the server's key must be in `known_hosts_file` (OpenSSH format, port
entries as `[host]:port`) or match `host_key_fingerprint` (`SHA256:…`, as `ssh-keygen -lf`
prints). An unknown or changed key is refused with `SftpHostKeyError`; nothing is ever added.

Downloads stream into `<local>.part` in bounded memory: a window of pipelined 32 KiB read
requests (`SFTPFile.readv`) at a time, with unread replies held back by the SSH channel's
flow-control window, so memory stays around 2 MiB for any file size. Plain `prefetch()` was
not used: it queues a request per 32 KiB of the whole file up front, and with
`max_concurrent_requests` it was both slower and used ~10x the memory in measurement.
If the connection drops, the session reconnects with exponential backoff (up to
`max_attempts` connections for one operation) and continues from the size of the `.part`
file; a file whose size or mtime changed in between is refused rather than stitched. A
finished download is checked against the remote size and mtime, then renamed into place,
so `local_path` only ever holds a complete file. `download` returns a `DownloadResult`
(size, attempts, the offsets it resumed from) rather than a bare byte count.

A session is one connection and is not thread-safe; open one per thread.

paramiko is imported on first use; nothing happens at import time.
"""

from __future__ import annotations

import errno
import os
import posixpath
import random
import socket
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Optional

import dagster as dg
from pydantic import Field

if TYPE_CHECKING:
    import paramiko

REQUEST_SIZE = 32768  # paramiko's SFTPFile.MAX_REQUEST_SIZE: larger reads are split anyway
WINDOW_REQUESTS = 256  # read requests pipelined per window (8 MiB of file per window)
BACKOFF_FIRST_SECONDS = 0.5
BACKOFF_MAX_SECONDS = 20.0

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(bytes_done, total_bytes)` after every chunk written locally."""


# --------------------------------------------------------------------------- errors


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


# --------------------------------------------------------------------------- results


@dataclass(frozen=True)
class RemoteFile:
    name: str
    path: str  # as passed to list_dir joined with name; relative paths are served-root relative
    size: int
    mtime: int  # seconds since the epoch, as the server reports it
    is_dir: bool = False


@dataclass(frozen=True)
class DownloadResult:
    remote_path: str
    local_path: Path
    size: int
    mtime: int
    attempts: int  # connections used for this download; 1 when nothing dropped
    resumed_from: tuple[int, ...]  # byte offsets at which a reconnect continued
    seconds: float

    @property
    def resumed(self) -> bool:
        return bool(self.resumed_from)


# --------------------------------------------------------------------------- resource


class SftpResource(dg.ConfigurableResource):
    """An SFTP server reached with a private key and a pinned host key."""

    host: str
    port: int = 22
    username: str
    private_key_file: str = Field(description="Path to the private key; pass an EnvVar.")
    known_hosts_file: Optional[str] = Field(
        default=None, description="OpenSSH known_hosts holding the server's key."
    )
    host_key_fingerprint: Optional[str] = Field(
        default=None, description="The server's key as `ssh-keygen -lf` prints it: SHA256:…"
    )
    connect_timeout: float = 15
    max_attempts: int = Field(
        default=5, description="Connections tried per operation before giving up."
    )
    read_timeout: float = Field(
        default=60, description="Seconds without data from the server before a read fails."
    )

    @contextmanager
    def open_session(self) -> Iterator[SftpSession]:
        """Connect (with retries) and yield a session; the connection closes on exit."""
        session = SftpSession(self)
        try:
            session.connect()
            yield session
        finally:
            session.close()

    # -- internals used by SftpSession ------------------------------------------------

    @property
    def _where(self) -> str:
        return f"{self.username}@{self.host}:{self.port}"

    def _expected_fingerprint(self) -> Optional[str]:
        if not self.host_key_fingerprint:
            return None
        tokens = [t for t in self.host_key_fingerprint.split() if t.startswith("SHA256:")]
        if not tokens:
            raise SftpConfigError(
                f"SFTP {self.host}:{self.port}: host_key_fingerprint must be a SHA256:… "
                f"fingerprint as `ssh-keygen -lf` prints it, got {self.host_key_fingerprint!r}"
            )
        return tokens[0].rstrip("=")

    def _connect(self) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
        import paramiko

        expected = self._expected_fingerprint()
        if not self.known_hosts_file and not expected:
            raise SftpConfigError(
                f"SFTP {self.host}:{self.port}: no pinned host key; set known_hosts_file or "
                "host_key_fingerprint (host keys are never trusted on first use)"
            )
        pkey = self._load_private_key(paramiko)

        client = paramiko.SSHClient()
        # Only the pinned sources count: no ~/.ssh/known_hosts, no system files.
        if self.known_hosts_file:
            try:
                client.get_host_keys().load(self.known_hosts_file)
            except OSError as exc:
                raise SftpConfigError(
                    f"SFTP {self.host}:{self.port}: cannot read known_hosts_file "
                    f"{self.known_hosts_file}: {exc.strerror or exc}"
                ) from exc
        client.set_missing_host_key_policy(_pinned_host_key_policy(self, expected))
        try:
            client.connect(
                hostname=self.host,
                port=self.port,
                username=self.username,
                pkey=pkey,
                timeout=self.connect_timeout,
                banner_timeout=self.connect_timeout,
                auth_timeout=self.connect_timeout,
                channel_timeout=self.connect_timeout,
                allow_agent=False,
                look_for_keys=False,
            )
            if expected and self.known_hosts_file:
                # known_hosts already matched (before auth); the fingerprint must agree too.
                offered = client.get_transport().get_remote_server_key()
                if offered.fingerprint != expected:
                    raise SftpHostKeyError(
                        f"SFTP host key for {self.host}:{self.port} does not match "
                        f"host_key_fingerprint: the server offered {offered.get_name()} "
                        f"{offered.fingerprint} (accepted by {self.known_hosts_file}), "
                        f"expected {expected}; refusing to continue"
                    )
            sftp = client.open_sftp()
            sftp.get_channel().settimeout(self.read_timeout)
            return client, sftp
        except SftpError:
            client.close()
            raise
        except paramiko.BadHostKeyException as exc:
            client.close()
            raise SftpHostKeyError(
                f"SFTP host key for {self.host}:{self.port} has CHANGED: the server offered "
                f"{exc.key.get_name()} {exc.key.fingerprint}, but {self.known_hosts_file} "
                f"pins {exc.expected_key.get_name()} {exc.expected_key.fingerprint}. This is "
                "either a re-keyed server or a man-in-the-middle; refusing to connect. If the "
                "change is legitimate, replace the entry in the known_hosts file."
            ) from None
        except paramiko.AuthenticationException as exc:
            client.close()
            raise SftpAuthError(
                f"SFTP authentication failed for user {self.username!r} at "
                f"{self.host}:{self.port} with private key file {self.private_key_file} "
                f"({pkey.get_name()} {pkey.fingerprint}): {exc}"
            ) from None
        except socket.gaierror as exc:
            client.close()
            raise SftpConnectionError(
                f"SFTP cannot resolve host {self.host!r}: {exc.strerror or exc}"
            ) from exc
        except (OSError, EOFError, paramiko.SSHException) as exc:
            client.close()
            raise SftpConnectionError(
                f"SFTP cannot connect to {self.host}:{self.port}: {_describe(exc)}"
            ) from exc

    def _load_private_key(self, paramiko: Any) -> paramiko.PKey:
        path = self.private_key_file
        try:
            return paramiko.PKey.from_path(path)
        except FileNotFoundError:
            raise SftpConfigError(
                f"SFTP {self.host}:{self.port}: private key file not found: {path}"
            ) from None
        except PermissionError:
            raise SftpConfigError(
                f"SFTP {self.host}:{self.port}: private key file not readable: {path}"
            ) from None
        except paramiko.PasswordRequiredException:
            raise SftpAuthError(
                f"SFTP {self.host}:{self.port}: private key file {path} is encrypted; "
                "credflow expects an unencrypted key file protected by file permissions"
            ) from None
        except (paramiko.SSHException, ValueError, UnicodeDecodeError) as exc:
            # The message of a parse error never contains key material, but keep it short.
            raise SftpAuthError(
                f"SFTP {self.host}:{self.port}: cannot load private key file {path}: "
                f"not a supported OpenSSH/PEM private key ({type(exc).__name__})"
            ) from None


def _pinned_host_key_policy(resource: SftpResource, expected: Optional[str]) -> Any:
    """A RejectPolicy that accepts an unknown host only when its key has the pinned fingerprint."""
    import paramiko

    class PinnedHostKeyPolicy(paramiko.RejectPolicy):
        def missing_host_key(self, client, hostname, key):  # noqa: ANN001 (paramiko API)
            if expected is not None and key.fingerprint == expected:
                return  # accepted for this connection only; never written anywhere
            if expected is not None:
                wanted = f"expected {expected} (host_key_fingerprint)"
            else:
                wanted = f"{resource.known_hosts_file} has no entry for {hostname}"
            raise SftpHostKeyError(
                f"SFTP host key for {resource.host}:{resource.port} is not trusted: the server "
                f"offered {key.get_name()} {key.fingerprint}, {wanted}. Refusing to connect; "
                "unknown host keys are never added automatically."
            )

    return PinnedHostKeyPolicy()


def _describe(exc: BaseException) -> str:
    text = str(exc) or type(exc).__name__
    return text if type(exc).__name__ in text else f"{type(exc).__name__}: {text}"


# --------------------------------------------------------------------------- session


class SftpSession:
    """One SFTP connection, re-established transparently when it drops."""

    def __init__(self, resource: SftpResource):
        self._resource = resource
        self._client: Optional[paramiko.SSHClient] = None
        self._sftp: Optional[paramiko.SFTPClient] = None
        self.connections = 0  # connections made over the session's life

    # -- public API ----------------------------------------------------------------------

    def list_dir(self, path: str = ".") -> list[RemoteFile]:
        """Entries of a remote directory (files and subdirectories), sorted by name."""

        def op(sftp: paramiko.SFTPClient, _attempt: int) -> list[RemoteFile]:
            return [
                _remote_file(posixpath.join(path, attr.filename), attr)
                for attr in sftp.listdir_attr(path)
            ]

        return sorted(self._retrying("list", path, op), key=lambda f: f.name)

    def stat(self, path: str) -> RemoteFile:
        def op(sftp: paramiko.SFTPClient, _attempt: int) -> RemoteFile:
            return _remote_file(path, sftp.stat(path))

        return self._retrying("stat", path, op)

    def download(
        self,
        remote_path: str,
        local_path: str | os.PathLike,
        *,
        progress: Optional[ProgressCallback] = None,
    ) -> DownloadResult:
        """Stream `remote_path` to `local_path`, resuming after dropped connections.

        Writes `<local_path>.part`, continues from its size after a reconnect, verifies the
        final size against the remote stat and renames it into place. On failure the
        partial file is removed and an `SftpError` names the server, the path and the cause.
        """
        _quiet_prefetch_thread_errors()
        local_path = Path(local_path)
        part = local_path.with_name(local_path.name + ".part")
        started = time.monotonic()
        pinned: dict[str, int] = {}  # size and mtime seen by the first attempt
        resumed_from: list[int] = []
        try:
            part.parent.mkdir(parents=True, exist_ok=True)
            part.unlink(missing_ok=True)
        except OSError as exc:
            raise self._local_error(local_path, exc) from exc

        def attempt_download(sftp: paramiko.SFTPClient, attempt: int) -> int:
            return self._download_attempt(
                sftp, remote_path, part, pinned, resumed_from, attempt, progress
            )

        try:
            attempts = self._retrying("download", remote_path, attempt_download, count=True)
            final = self._retrying("stat", remote_path, lambda sftp, _a: sftp.stat(remote_path))
            if (final.st_size, int(final.st_mtime or 0)) != (pinned["size"], pinned["mtime"]):
                raise SftpFileChanged(
                    self._message(
                        "download",
                        remote_path,
                        f"the file changed while downloading (size {pinned['size']} -> "
                        f"{final.st_size}, mtime {pinned['mtime']} -> {final.st_mtime})",
                    )
                )
            local_size = part.stat().st_size
            if local_size != final.st_size:
                raise SftpIncompleteDownload(
                    self._message(
                        "download",
                        remote_path,
                        f"got {local_size} bytes, the server reports {final.st_size}",
                    )
                )
            os.replace(part, local_path)
        except BaseException:
            part.unlink(missing_ok=True)
            raise
        return DownloadResult(
            remote_path=remote_path,
            local_path=local_path,
            size=pinned["size"],
            mtime=pinned["mtime"],
            attempts=attempts,
            resumed_from=tuple(resumed_from),
            seconds=time.monotonic() - started,
        )

    def connect(self) -> None:
        self._retrying("connect", "", lambda _sftp, _attempt: None)

    def close(self) -> None:
        client, self._client, self._sftp = self._client, None, None
        if client is not None:
            try:
                client.close()
            except Exception:  # noqa: BLE001 - closing a dead connection must not mask errors
                pass

    # -- internals -----------------------------------------------------------------------

    def _download_attempt(
        self,
        sftp: paramiko.SFTPClient,
        remote_path: str,
        part: Path,
        pinned: dict[str, int],
        resumed_from: list[int],
        attempt: int,
        progress: Optional[ProgressCallback],
    ) -> int:
        attributes = sftp.stat(remote_path)
        if attributes.st_mode is not None and not stat_module.S_ISREG(attributes.st_mode):
            is_dir = stat_module.S_ISDIR(attributes.st_mode)
            kind = "a directory" if is_dir else "not a regular file"
            raise SftpNotAFile(self._message("download", remote_path, f"it is {kind}"))
        size, mtime = attributes.st_size, int(attributes.st_mtime or 0)
        if not pinned:
            pinned.update(size=size, mtime=mtime)
        elif (size, mtime) != (pinned["size"], pinned["mtime"]):
            raise SftpFileChanged(
                self._message(
                    "download",
                    remote_path,
                    f"the file changed between connection attempts (size {pinned['size']} -> "
                    f"{size}, mtime {pinned['mtime']} -> {mtime}); not stitching two versions",
                )
            )
        try:
            local = open(part, "ab")  # appends: continue from what earlier attempts wrote
        except OSError as exc:
            raise self._local_error(part, exc) from exc
        with local, sftp.open(remote_path, "rb") as remote:
            offset = os.fstat(local.fileno()).st_size
            if attempt > 1:
                resumed_from.append(offset)
                dg.get_dagster_logger().info(
                    f"SFTP {self._resource._where}: resuming {remote_path} at byte "
                    f"{offset:,} of {size:,} (connection {attempt})"
                )
            while offset < size:
                end = min(size, offset + WINDOW_REQUESTS * REQUEST_SIZE)
                chunks = [
                    (start, min(REQUEST_SIZE, end - start))
                    for start in range(offset, end, REQUEST_SIZE)
                ]
                for (chunk_offset, length), data in zip(chunks, remote.readv(chunks)):
                    if len(data) != length:
                        raise SftpFileChanged(
                            self._message(
                                "download",
                                remote_path,
                                f"short read at byte {chunk_offset} (the file shrank?)",
                            )
                        )
                    try:
                        local.write(data)
                    except OSError as exc:
                        raise self._local_error(part, exc) from exc
                    offset += length
                    if progress is not None:
                        progress(offset, size)
            try:
                local.flush()
            except OSError as exc:
                raise self._local_error(part, exc) from exc
        return offset

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
                    self._client, self._sftp = resource._connect()
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
                self._message(what, path, f"connection lost: {_describe(exc)}")
            )
        return SftpError(self._message(what, path, _describe(exc)))

    def _message(self, what: str, path: str, cause: str) -> str:
        target = f" {path!r}" if path else ""
        return f"SFTP {what}{target} on {self._resource._where} failed: {cause}"

    def _local_error(self, path: Path, exc: OSError) -> SftpLocalFileError:
        return SftpLocalFileError(
            f"SFTP download from {self._resource._where}: cannot write local file "
            f"{path}: {exc.strerror or exc}"
        )


def _quiet_prefetch_thread_errors() -> None:
    """Silence the traceback of paramiko's read-request thread when the connection drops.

    `SFTPFile.readv` issues its requests from a helper thread with no error handling
    (paramiko/paramiko#2379): a drop while it is still sending makes it die with EOFError or
    OSError and print "Exception in thread … (_prefetch_thread)", although the reading side
    gets the same failure and the session reconnects. This filter drops exactly those and
    hands everything else to the previous hook. Installed on first download, not at import.
    """
    import paramiko

    current = threading.excepthook
    if getattr(current, "_credflow_sftp_prefetch_filter", False):
        return

    def hook(args: threading.ExceptHookArgs) -> None:
        if (
            args.thread is not None
            and "_prefetch_thread" in args.thread.name
            and isinstance(args.exc_value, (EOFError, OSError, paramiko.SSHException))
        ):
            dg.get_dagster_logger().debug(
                f"SFTP read-request thread stopped by the dropped connection: {args.exc_value!r}"
            )
            return
        current(args)

    hook._credflow_sftp_prefetch_filter = True  # type: ignore[attr-defined]
    threading.excepthook = hook


def _remote_file(path: str, attributes: Any) -> RemoteFile:
    path = path[2:] if path.startswith("./") else path
    mode = attributes.st_mode or 0
    return RemoteFile(
        name=posixpath.basename(path.rstrip("/")) or path,
        path=path,
        size=attributes.st_size or 0,
        mtime=int(attributes.st_mtime or 0),
        is_dir=stat_module.S_ISDIR(mode),
    )
