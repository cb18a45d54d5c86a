"""A real OpenSSH sshd on loopback that serves `home/sftp-root` over SFTP.

`start(home)` generates (once) an ed25519 host key and an ed25519 client key under
`home/sshd/`, writes `authorized_keys`, a `known_hosts` pinned to the host key and the
current port, and an `sshd_config`, then runs `/usr/sbin/sshd -D -e` detached. The SFTP
session starts in `home/sftp-root` (`internal-sftp -d`), so relative paths are served paths.

sshd runs as the current user. As root that is an ordinary privilege-separated sshd (it
needs `/run/sshd`, created here) that admits root by key only. As an unprivileged user
(a developer's own account) sshd runs without privilege separation and admits only that
user. It cannot read /etc/shadow, so its locked-account check sees only the passwd entry,
which is enough for ordinary and system accounts (`test_sftp.py` starts one as `daemon`).
Two exceptions seen on Debian 12: `nobody` and `root` are refused as "account is locked",
apparently because nss-systemd (`shadow: files systemd`) serves a locked shadow entry for
them that an unprivileged process can read.
"""

from __future__ import annotations

import base64
import hashlib
import os
import pwd
import shutil
import subprocess
from dataclasses import dataclass
from pathlib import Path

from credflow_assets.local.process import (
    LOOPBACK,
    ServiceStartError,
    free_port,
    spawn_detached,
    wait_for_port,
)

SSHD_BINARY = "/usr/sbin/sshd"  # absolute: sshd refuses to re-exec itself otherwise
PRIVSEP_DIR = Path("/run/sshd")


@dataclass(frozen=True)
class _SshdFiles:
    """Where one home keeps its sshd (keys, config, pid file, log) and the root it serves."""

    sshd_dir: Path
    sftp_root: Path
    log_path: Path
    host_key: Path
    client_key: Path
    authorized_keys: Path
    known_hosts: Path
    pid_file: Path
    config: Path

    @classmethod
    def of(cls, home: Path) -> _SshdFiles:
        sshd_dir = home / "sshd"
        return cls(
            sshd_dir=sshd_dir, sftp_root=home / "sftp-root", log_path=home / "logs" / "sshd.log",
            host_key=sshd_dir / "ssh_host_ed25519_key", client_key=sshd_dir / "client_ed25519",
            authorized_keys=sshd_dir / "authorized_keys", known_hosts=sshd_dir / "known_hosts",
            pid_file=sshd_dir / "sshd.pid", config=sshd_dir / "sshd_config",
        )


def start(home: Path, *, port: int | None = None) -> dict:
    """Start sshd serving `home/sftp-root` on loopback; return how to connect to it.

    Keys are generated on the first start and reused afterwards, so a client's pinned host
    key stays valid across restarts; `known_hosts` is rewritten for the port in use.
    """
    home = Path(home).resolve()
    _check_can_start(home)
    files = _SshdFiles.of(home)
    _make_directories(files)
    _write_keys(files)
    port = port or free_port()
    host_type, host_blob = _public_key_line(files.host_key).split()[:2]
    files.known_hosts.write_text(f"[{LOOPBACK}]:{port} {host_type} {host_blob}\n")
    running = _running_pid(files.pid_file, files.config)
    if running is not None:
        raise ServiceStartError(
            f"sshd for {home} is already running (pid {running}); stop it before starting "
            "another, or use the recorded one"
        )
    files.config.write_text(_sshd_config(files))
    if os.geteuid() == 0:
        PRIVSEP_DIR.mkdir(mode=0o755, parents=True, exist_ok=True)
    process = spawn_detached(
        "sshd", [SSHD_BINARY, "-D", "-e", "-f", str(files.config), "-p", str(port)],
        files.log_path,
    )
    wait_for_port("sshd", port, process=process, log_path=files.log_path)
    return _connection(files, process.pid, port)


def _check_can_start(home: Path) -> None:
    if any(ch.isspace() for ch in str(home)):
        # sshd_config and the internal-sftp command line split on whitespace.
        raise ServiceStartError(f"sshd: the home path must not contain whitespace: {home}")
    if not Path(SSHD_BINARY).exists():
        raise ServiceStartError(
            f"sshd: {SSHD_BINARY} not found; install OpenSSH server "
            "(apt-get install -y openssh-server)"
        )


def _make_directories(files: _SshdFiles) -> None:
    for directory in (files.sshd_dir, files.sftp_root, files.log_path.parent):
        directory.mkdir(parents=True, exist_ok=True)
    os.chmod(files.sshd_dir, 0o700)


def _write_keys(files: _SshdFiles) -> None:
    """The host and client keys (made once, then kept), and the client key authorized."""
    _ensure_key(files.host_key, comment="credflow-local-sshd-host")
    _ensure_key(files.client_key, comment="credflow-local-sftp-client")
    files.authorized_keys.write_text(_public_key_line(files.client_key) + "\n")


def _sshd_config(files: _SshdFiles) -> str:
    return "\n".join(
        [
            "# Written by credflow_assets.local.sshd; rewritten on every start.",
            f"ListenAddress {LOOPBACK}",
            f"HostKey {files.host_key}",
            f"PidFile {files.pid_file}",
            f"AuthorizedKeysFile {files.authorized_keys}",
            "PubkeyAuthentication yes",
            "PasswordAuthentication no",
            "KbdInteractiveAuthentication no",
            "UsePAM no",
            "StrictModes no",
            "PermitRootLogin prohibit-password",
            "AllowTcpForwarding no",
            "AllowAgentForwarding no",
            "AllowStreamLocalForwarding no",
            "X11Forwarding no",
            "PermitTunnel no",
            "PrintMotd no",
            "LogLevel INFO",
            f"Subsystem sftp internal-sftp -d {files.sftp_root}",
            "",
        ]
    )


def _connection(files: _SshdFiles, pid: int, port: int) -> dict:
    """How to connect: what `start` returns."""
    host_key = files.host_key
    return {
        "pid": pid,
        "port": port,
        "host": LOOPBACK,
        "user": pwd.getpwuid(os.geteuid()).pw_name,
        "key_file": str(files.client_key),
        "known_hosts": str(files.known_hosts),
        "root": str(files.sftp_root),
        "host_key_fingerprint": fingerprint_of(host_key.with_name(host_key.name + ".pub")),
    }


def fingerprint_of(public_key_file: Path) -> str:
    """`SHA256:…` of an OpenSSH public key file, as `ssh-keygen -lf` prints it."""
    blob = base64.b64decode(Path(public_key_file).read_text().split()[1])
    digest = base64.b64encode(hashlib.sha256(blob).digest()).decode().rstrip("=")
    return f"SHA256:{digest}"


def _ensure_key(path: Path, *, comment: str) -> None:
    public = path.with_name(path.name + ".pub")
    if path.exists() and public.exists():
        return
    keygen = shutil.which("ssh-keygen")
    if keygen is None:
        raise ServiceStartError("sshd: ssh-keygen not found; install openssh-client")
    for stale in (path, public):
        stale.unlink(missing_ok=True)
    result = subprocess.run(
        [keygen, "-q", "-t", "ed25519", "-N", "", "-C", comment, "-f", str(path)],
        stdin=subprocess.DEVNULL,
        capture_output=True,
        text=True,
    )
    if result.returncode != 0:
        raise ServiceStartError(f"sshd: ssh-keygen failed for {path}: {result.stderr.strip()}")


def _running_pid(pid_file: Path, config: Path) -> int | None:
    """The pid of an sshd still serving `config`, from its PidFile (None if there is none)."""
    try:
        pid = int(pid_file.read_text().strip())
        command = Path(f"/proc/{pid}/cmdline").read_bytes().replace(b"\0", b" ")
    except (OSError, ValueError):
        return None  # no pid file, a stale one, or no /proc to check it against
    return pid if os.fsencode(str(config)) in command else None


def _public_key_line(private_key: Path) -> str:
    return private_key.with_name(private_key.name + ".pub").read_text().strip()
