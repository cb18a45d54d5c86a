"""The SFTP resource: where the server is, who we are, how its host key is pinned, and how
patient to be. `open_session` is the way in."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Optional

import dagster as dg
from pydantic import Field

from credflow_assets.resources.sftp.session import SftpSession


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
    read_request_size: int = Field(
        default=252 * 1024, ge=4096, le=252 * 1024,
        description="Bytes per SFTP read request. OpenSSH answers 252 KiB reads whole; set "
        "32768 for a server that answers less (it still works, but more slowly).",
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
