"""Scratch directories that say whose they are, so that a killed run's are found and removed.

A landing writes the raw file, gpg's plaintext and extracted members (personal data) under the
work dir. The `finally` that removes them does not run when the process is killed (`kill -9`,
the OOM killer), so each scratch directory names its owner:

- its name holds the owning process's pid (`credflow-provider-{provider}-p{pid}-{random}`), so
  it is known from the moment it exists;
- a marker file (`OWNER_FILE`) adds the host, the process's start time (a pid is reused; its
  start time is not) and the run id.

`dead_scratch_dirs` finds the directories whose owner is gone: same host, and the pid is not
running, is a zombie, or is another process with the same pid. A directory of another host, or
of a process that may still run, is never touched. The cleanup itself (removing the files,
failing the run, aborting its uploads) is `cleanup.py`'s.
"""

from __future__ import annotations

import json
import os
import re
import socket
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

from credflow_assets.common import processes

WORK_DIR_PREFIX = "credflow-provider-"
OWNER_FILE = ".credflow-owner.json"
_PID_IN_NAME = re.compile(r"-p(\d+)-[^-]+$")


@dataclass
class Owner:
    pid: int
    host: Optional[str] = None
    started: Optional[str] = None  # the process's start time in clock ticks (/proc/PID/stat)
    run_id: Optional[str] = None


def make_scratch_dir(work_dir: Optional[str], provider: str, *,
                     run_id: Optional[str] = None) -> Path:
    """A new private (0700) directory under `work_dir` (None: the system temp dir) that names
    this process and `run_id` as its owner."""
    if work_dir:
        Path(work_dir).mkdir(parents=True, exist_ok=True)
    pid = os.getpid()
    path = Path(tempfile.mkdtemp(prefix=f"{WORK_DIR_PREFIX}{provider}-p{pid}-",
                                 dir=work_dir))
    _write_owner(path, Owner(pid=pid, host=socket.gethostname(),
                             started=processes.start_ticks(pid), run_id=run_id))
    return path


def scratch_dirs(work_dir: Optional[str]) -> Iterator[Path]:
    base = Path(work_dir) if work_dir else Path(tempfile.gettempdir())
    try:
        entries = list(os.scandir(base))
    except FileNotFoundError:
        return
    for entry in entries:
        if entry.name.startswith(WORK_DIR_PREFIX) and entry.is_dir(follow_symlinks=False):
            yield Path(entry.path)


def read_owner(path: Path) -> Optional[Owner]:
    """The directory's owner, from its marker, else from its name (the marker is written just
    after the directory is made); None for a directory of an older credflow."""
    try:
        data = json.loads((path / OWNER_FILE).read_text())
        return Owner(pid=int(data["pid"]), host=data.get("host"), started=data.get("started"),
                     run_id=data.get("run_id"))
    except (OSError, ValueError, KeyError, TypeError):
        match = _PID_IN_NAME.search(path.name)
        return Owner(pid=int(match.group(1))) if match else None


def dead_scratch_dirs(work_dir: Optional[str]) -> list[tuple[Path, Owner]]:
    """Scratch directories whose owning process is gone (see the module docstring)."""
    dead = []
    for path in scratch_dirs(work_dir):
        owner = read_owner(path)
        if owner is not None and not owner_may_be_alive(owner):
            dead.append((path, owner))
    return dead


def owner_may_be_alive(owner: Owner) -> bool:
    """False only when the owner is certainly gone; True when it runs or cannot be known."""
    if owner.host is not None and owner.host != socket.gethostname():
        return True  # another machine's process: its pid means nothing here
    if owner.pid == os.getpid():
        return True
    if not processes.exists(owner.pid):
        return False
    started = processes.start_ticks(owner.pid)
    if started == processes.ZOMBIE:
        return False  # killed, not yet reaped by its parent: it runs no more code
    if owner.started is not None and started is not None and started != owner.started:
        return False  # the pid was reused by a later process
    return True


def _write_owner(path: Path, owner: Owner) -> None:
    """Replace the marker atomically: a reader sees the old one or the new one, never half."""
    temporary = path / f"{OWNER_FILE}.tmp"
    temporary.write_text(json.dumps(owner.__dict__))
    os.replace(temporary, path / OWNER_FILE)
