"""Listings and the remote identity of a file: name, path, size and mtime as the server
reports them (what the sensors key their cursors and run keys on)."""

from __future__ import annotations

import posixpath
import stat as stat_module
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    import paramiko


@dataclass(frozen=True)
class RemoteFile:
    name: str
    path: str  # as passed to list_dir joined with name; relative paths are served-root relative
    size: int
    mtime: int  # seconds since the epoch, as the server reports it
    is_dir: bool = False


class Listing:
    """Mixed into SftpSession: directory listings and stat, retried like every operation."""

    def list_dir(self, path: str = ".") -> list[RemoteFile]:
        """Entries of a remote directory (files and subdirectories), sorted by name."""

        def op(sftp: paramiko.SFTPClient, _attempt: int) -> list[RemoteFile]:
            return [
                remote_file(posixpath.join(path, attr.filename), attr)
                for attr in sftp.listdir_attr(path)
            ]

        return sorted(self._retrying("list", path, op), key=lambda f: f.name)

    def stat(self, path: str) -> RemoteFile:
        def op(sftp: paramiko.SFTPClient, _attempt: int) -> RemoteFile:
            return remote_file(path, sftp.stat(path))

        return self._retrying("stat", path, op)


def remote_file(path: str, attributes: Any) -> RemoteFile:
    path = path[2:] if path.startswith("./") else path
    mode = attributes.st_mode or 0
    return RemoteFile(
        name=posixpath.basename(path.rstrip("/")) or path,
        path=path,
        size=attributes.st_size or 0,
        mtime=int(attributes.st_mtime or 0),
        is_dir=stat_module.S_ISDIR(mode),
    )
