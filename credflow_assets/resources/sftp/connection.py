"""Connecting: the private key, host-key pinning and the SSH login, each failure reported as
the `SftpError` for its cause.

Host keys are pinned: the server's key must be in `known_hosts_file` or match
`host_key_fingerprint`; only those sources count (no ~/.ssh/known_hosts, no system files), an
unknown or changed key is refused with `SftpHostKeyError`, and nothing is ever added.
"""

from __future__ import annotations

import socket
from typing import TYPE_CHECKING, Any, Optional

from credflow_assets.resources.sftp.errors import (
    SftpAuthError,
    SftpConfigError,
    SftpConnectionError,
    SftpError,
    SftpHostKeyError,
    describe,
)

if TYPE_CHECKING:
    import paramiko

    from credflow_assets.resources.sftp.resource import SftpResource

CHANNEL_WINDOW_BYTES = 16 * 1024 * 1024
CHANNEL_MAX_PACKET_BYTES = 256 * 1024  # holds one 252 KiB read reply and its headers


def connect(resource: SftpResource) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
    """One connection to the resource's server, its host key pinned, logged in with its key."""
    import paramiko

    expected = expected_fingerprint(resource)
    if not resource.known_hosts_file and not expected:
        raise SftpConfigError(
            f"SFTP {resource.host}:{resource.port}: no pinned host key; set known_hosts_file or "
            "host_key_fingerprint (host keys are never trusted on first use)"
        )
    pkey = load_private_key(resource, paramiko)
    client = _pinned_client(resource, expected)
    try:
        return _login(resource, client, pkey, expected)
    except SftpError:
        client.close()
        raise
    except paramiko.BadHostKeyException as exc:
        client.close()
        raise SftpHostKeyError(
            f"SFTP host key for {resource.host}:{resource.port} has CHANGED: the server offered "
            f"{exc.key.get_name()} {exc.key.fingerprint}, but {resource.known_hosts_file} "
            f"pins {exc.expected_key.get_name()} {exc.expected_key.fingerprint}. This is "
            "either a re-keyed server or a man-in-the-middle; refusing to connect. If the "
            "change is legitimate, replace the entry in the known_hosts file."
        ) from None
    except paramiko.AuthenticationException as exc:
        client.close()
        raise SftpAuthError(
            f"SFTP authentication failed for user {resource.username!r} at "
            f"{resource.host}:{resource.port} with private key file {resource.private_key_file} "
            f"({pkey.get_name()} {pkey.fingerprint}): {exc}"
        ) from None
    except socket.gaierror as exc:
        client.close()
        raise SftpConnectionError(
            f"SFTP cannot resolve host {resource.host!r}: {exc.strerror or exc}"
        ) from exc
    except (OSError, EOFError, paramiko.SSHException) as exc:
        client.close()
        raise SftpConnectionError(
            f"SFTP cannot connect to {resource.host}:{resource.port}: {describe(exc)}"
        ) from exc


def expected_fingerprint(resource: SftpResource) -> Optional[str]:
    """The pinned `SHA256:…` fingerprint (without base64 padding), or None when not set."""
    if not resource.host_key_fingerprint:
        return None
    tokens = [t for t in resource.host_key_fingerprint.split() if t.startswith("SHA256:")]
    if not tokens:
        raise SftpConfigError(
            f"SFTP {resource.host}:{resource.port}: host_key_fingerprint must be a SHA256:… "
            f"fingerprint as `ssh-keygen -lf` prints it, got {resource.host_key_fingerprint!r}"
        )
    return tokens[0].rstrip("=")


def load_private_key(resource: SftpResource, paramiko: Any) -> paramiko.PKey:
    path = resource.private_key_file
    try:
        return paramiko.PKey.from_path(path)
    except FileNotFoundError:
        raise SftpConfigError(
            f"SFTP {resource.host}:{resource.port}: private key file not found: {path}"
        ) from None
    except PermissionError:
        raise SftpConfigError(
            f"SFTP {resource.host}:{resource.port}: private key file not readable: {path}"
        ) from None
    except paramiko.PasswordRequiredException:
        raise SftpAuthError(
            f"SFTP {resource.host}:{resource.port}: private key file {path} is encrypted; "
            "credflow expects an unencrypted key file protected by file permissions"
        ) from None
    except (paramiko.SSHException, ValueError, UnicodeDecodeError) as exc:
        # The message of a parse error never contains key material, but keep it short.
        raise SftpAuthError(
            f"SFTP {resource.host}:{resource.port}: cannot load private key file {path}: "
            f"not a supported OpenSSH/PEM private key ({type(exc).__name__})"
        ) from None


def _pinned_client(resource: SftpResource, expected: Optional[str]) -> paramiko.SSHClient:
    """An SSHClient that trusts only the pinned sources: no ~/.ssh/known_hosts, no system files."""
    import paramiko

    client = paramiko.SSHClient()
    if resource.known_hosts_file:
        try:
            client.get_host_keys().load(resource.known_hosts_file)
        except OSError as exc:
            raise SftpConfigError(
                f"SFTP {resource.host}:{resource.port}: cannot read known_hosts_file "
                f"{resource.known_hosts_file}: {exc.strerror or exc}"
            ) from exc
    client.set_missing_host_key_policy(_pinned_host_key_policy(resource, expected))
    return client


def _login(
    resource: SftpResource,
    client: paramiko.SSHClient,
    pkey: paramiko.PKey,
    expected: Optional[str],
) -> tuple[paramiko.SSHClient, paramiko.SFTPClient]:
    client.connect(
        hostname=resource.host,
        port=resource.port,
        username=resource.username,
        pkey=pkey,
        timeout=resource.connect_timeout,
        banner_timeout=resource.connect_timeout,
        auth_timeout=resource.connect_timeout,
        channel_timeout=resource.connect_timeout,
        allow_agent=False,
        look_for_keys=False,
    )
    if expected and resource.known_hosts_file:
        # known_hosts already matched (before auth); the fingerprint must agree too.
        offered = client.get_transport().get_remote_server_key()
        if offered.fingerprint != expected:
            raise SftpHostKeyError(
                f"SFTP host key for {resource.host}:{resource.port} does not match "
                f"host_key_fingerprint: the server offered {offered.get_name()} "
                f"{offered.fingerprint} (accepted by {resource.known_hosts_file}), "
                f"expected {expected}; refusing to continue"
            )
    import paramiko

    # A 16 MiB window and 256 KiB packets: large read requests arrive in one SSH packet each
    # and the server never waits for window space (download.py; bench/provider_landing.py
    # --sftp-read measured it: about a quarter less of paramiko's CPU than 32 KiB packets).
    sftp = paramiko.SFTPClient.from_transport(client.get_transport(),
                                              window_size=CHANNEL_WINDOW_BYTES,
                                              max_packet_size=CHANNEL_MAX_PACKET_BYTES)
    sftp.get_channel().settimeout(resource.read_timeout)
    return client, sftp


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
