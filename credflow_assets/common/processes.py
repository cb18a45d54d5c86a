"""What `/proc` says of a process on this machine: whether it still runs code, and since when.

A run or a scratch directory records the process that owns it; the next run, sync or sensor tick
asks here whether that process is gone (killed, or a zombie its parent has not reaped) or its
pid now belongs to a later process.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

ZOMBIE = "zombie"


def start_ticks(pid: int) -> Optional[str]:
    """The process's start time in clock ticks since boot, `ZOMBIE` for a dead process not yet
    reaped, None where /proc cannot tell (not Linux, or no such process)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    # The command name (field 2) is in parentheses and may hold spaces: split after it.
    fields = stat.rsplit(")", 1)[-1].split()
    if fields and fields[0] in ("Z", "X"):
        return ZOMBIE
    return fields[19] if len(fields) > 19 else None


def exists(pid: int) -> bool:
    """Whether a process `pid` exists (another user's included), zombies too."""
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        pass  # another user's process: it exists
    return True


def started_at(ticks: str) -> Optional[float]:
    """A start time in clock ticks since boot, as a Unix timestamp."""
    try:
        with open("/proc/stat") as system:
            boot = next(float(line.split()[1]) for line in system if line.startswith("btime"))
    except (OSError, StopIteration, IndexError, ValueError):
        return None
    return boot + int(ticks) / os.sysconf("SC_CLK_TCK")
