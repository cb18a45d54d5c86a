"""Downloads: a remote file streamed to disk, resumed after a dropped connection, verified,
then renamed into place.

Downloads stream into `<local>.part` in bounded memory: windows of pipelined read requests
(`SFTPFile.readv`), two windows in flight on two handles of the file, so the server is already
answering the next window while this one is written (one window at a time drained the pipe at
every window's end). Requests are `read_request_size` bytes (default 252 KiB, inside the
256 KiB packets the channel accepts: connection.py): 8x fewer requests, replies and SSH
packets than paramiko's 32 KiB, which is most of paramiko's CPU. A server that answers a read
with less still works (paramiko requests the rest), only more slowly; for such a server set
`read_request_size` to 32768. Unread replies are bounded by the two windows (about 8 MiB).
Plain `prefetch()` was not used: it queues a request per 32 KiB of the whole file up front,
and with `max_concurrent_requests` it was both slower and used ~10x the memory in measurement
(bench/provider_landing.py --sftp-read compares them with OpenSSH `sftp`).
If the connection drops, the session reconnects (session.py) and the download continues from
the size of the `.part` file; a file whose size or mtime changed in between is refused rather
than stitched. A finished download is checked against the remote size and mtime, then renamed
into place, so `local_path` only ever holds a complete file.
"""

from __future__ import annotations

import itertools
import os
import stat as stat_module
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import ExitStack
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

import dagster as dg

from credflow_assets.resources.sftp.errors import (
    SftpFileChanged,
    SftpIncompleteDownload,
    SftpLocalFileError,
    SftpNotAFile,
)

if TYPE_CHECKING:
    import paramiko

WINDOW_BYTES = 4 * 1024 * 1024  # file bytes requested per window; two windows in flight
WINDOWS_IN_FLIGHT = 2

ProgressCallback = Callable[[int, int], None]
"""Called as `progress(bytes_done, total_bytes)` after every chunk written locally."""


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


class Downloads:
    """Mixed into SftpSession: `download` and its attempts."""

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
        with local, ExitStack() as handles:
            # Two handles: each window's readv runs on its own, so one can be answered while
            # the other is written (paramiko keeps one read-ahead per handle).
            remotes = [handles.enter_context(sftp.open(remote_path, "rb"))
                       for _ in range(WINDOWS_IN_FLIGHT)]
            request_size = self._resource.read_request_size
            for remote in remotes:
                remote.MAX_REQUEST_SIZE = request_size  # paramiko splits larger reads at this
            offset = os.fstat(local.fileno()).st_size
            if attempt > 1:
                resumed_from.append(offset)
                dg.get_dagster_logger().info(
                    f"SFTP {self._resource._where}: resuming {remote_path} at byte "
                    f"{offset:,} of {size:,} (connection {attempt})"
                )
            in_flight: list = []  # (its chunks, their data) of the windows requested
            for index, chunks in enumerate(_windows(offset, size, request_size)):
                in_flight.append((chunks, _requested(remotes[index % WINDOWS_IN_FLIGHT],
                                                     chunks)))
                if len(in_flight) == WINDOWS_IN_FLIGHT:
                    offset = self._write_window(*in_flight.pop(0), local, part, remote_path,
                                                size, progress)
            for chunks, replies in in_flight:
                offset = self._write_window(chunks, replies, local, part, remote_path, size,
                                            progress)
            try:
                local.flush()
            except OSError as exc:
                raise self._local_error(part, exc) from exc
        return offset

    def _write_window(self, chunks, replies, local, part: Path, remote_path: str, size: int,
                      progress: Optional[ProgressCallback]) -> int:
        """Write one window's replies in order; the offset after it."""
        offset = chunks[0][0]
        for (chunk_offset, length), data in zip(chunks, replies):
            if len(data) != length:
                raise SftpFileChanged(
                    self._message("download", remote_path,
                                  f"short read at byte {chunk_offset} (the file shrank?)")
                )
            try:
                local.write(data)
            except OSError as exc:
                raise self._local_error(part, exc) from exc
            offset += length
            if progress is not None:
                progress(offset, size)
        return offset

    def _local_error(self, path: Path, exc: OSError) -> SftpLocalFileError:
        return SftpLocalFileError(
            f"SFTP download from {self._resource._where}: cannot write local file "
            f"{path}: {exc.strerror or exc}"
        )


def _requested(remote: paramiko.SFTPFile, chunks: list[tuple[int, int]]) -> Iterator[bytes]:
    """The replies to `chunks`, requested now: `readv` is a generator that sends nothing until
    its first item is asked for, so that item is taken here (it arrives first)."""
    replies = remote.readv(chunks)
    first = next(replies)
    return itertools.chain([first], replies)


def _windows(offset: int, size: int, request_size: int) -> Iterator[list[tuple[int, int]]]:
    """The (offset, length) read requests from `offset` to `size`, a window at a time."""
    window = max(request_size, WINDOW_BYTES // request_size * request_size)
    for start in range(offset, size, window):
        end = min(size, start + window)
        yield [(at, min(request_size, end - at)) for at in range(start, end, request_size)]


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
