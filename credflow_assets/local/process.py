"""Process plumbing shared by the local services: free ports, detached daemons, readiness, stop.

Every local service runs as its own detached process (its own session), so it outlives the
`credflow local up` command that started it and is stopped by pid from the recorded state.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

LOOPBACK = "127.0.0.1"


class ServiceStartError(RuntimeError):
    """A local service did not come up; the message names the service and its log file."""


def free_port() -> int:
    """A TCP port on loopback that is free right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((LOOPBACK, 0))
        return sock.getsockname()[1]


def spawn_detached(
    name: str,
    command: Sequence[str],
    log_path: Path,
    *,
    env: Mapping[str, str] | None = None,
    cwd: Path | None = None,
) -> subprocess.Popen:
    """Start `command` in its own session, stdout and stderr appended to `log_path`."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "ab") as log:
        try:
            return subprocess.Popen(
                list(command),
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env={**os.environ, **(env or {})},
                cwd=cwd,
                start_new_session=True,
            )
        except OSError as error:
            raise ServiceStartError(f"{name}: cannot start {command[0]!r}: {error}") from error


def wait_for_port(
    name: str,
    port: int,
    *,
    process: subprocess.Popen | None = None,
    log_path: Path | None = None,
    timeout: float = 20.0,
) -> None:
    """Block until something accepts TCP connections on loopback:`port`, or fail clearly."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process is not None and process.poll() is not None:
            raise ServiceStartError(
                f"{name} exited with status {process.returncode} before listening on port {port}"
                + _log_hint(log_path)
            )
        try:
            with socket.create_connection((LOOPBACK, port), timeout=0.5):
                return
        except OSError:
            time.sleep(0.05)
    raise ServiceStartError(
        f"{name} did not listen on {LOOPBACK}:{port} within {timeout:.0f}s" + _log_hint(log_path)
    )


def pid_is_running(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    # A zombie child of this process still answers kill(0); reap it if it is ours.
    try:
        reaped, _ = os.waitpid(pid, os.WNOHANG)
        return reaped == 0
    except ChildProcessError:
        return True


def stop_pid(pid: int, *, timeout: float = 10.0) -> None:
    """Stop a detached service and its process group: SIGTERM, then SIGKILL after `timeout`."""
    if not pid_is_running(pid):
        return
    _signal_group(pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if not pid_is_running(pid):
            return
        time.sleep(0.05)
    _signal_group(pid, signal.SIGKILL)


def _signal_group(pid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pid, sig)
    except (ProcessLookupError, PermissionError):
        try:
            os.kill(pid, sig)
        except ProcessLookupError:
            pass


def _log_hint(log_path: Path | None) -> str:
    if log_path is None or not log_path.exists():
        return ""
    tail = log_path.read_text(errors="replace").splitlines()[-15:]
    return f"; see {log_path}:\n" + "\n".join(tail)
