"""Give the heap memory freed by a large upload back to the operating system.

A multipart upload allocates its part buffers (`part_size`, 8 MiB and up) in several threads,
so glibc's malloc spreads them over several arenas and keeps the freed space of each for
reuse instead of returning it: the process's resident size then climbs from file to file
although nothing holds the data. `malloc_trim(0)` returns that free space after each upload
(measured on the provider landing benchmark: a lower peak RSS, no slower).
Linux with glibc only; elsewhere (macOS, musl) it does nothing, and it never fails a run.
"""

from __future__ import annotations

import ctypes
import sys
from typing import Any, Optional

_UNSET: Any = object()
_libc: Any = _UNSET


def _glibc() -> Optional[Any]:
    """The process's glibc (None elsewhere, or without `malloc_trim`), looked up once."""
    global _libc
    if _libc is _UNSET:
        _libc = None
        if sys.platform.startswith("linux"):
            try:
                libc = ctypes.CDLL(None)  # the C library the interpreter is linked against
                libc.malloc_trim.argtypes = [ctypes.c_size_t]
                libc.malloc_trim.restype = ctypes.c_int
                _libc = libc
            except (OSError, AttributeError):  # not glibc (musl has no malloc_trim)
                pass
    return _libc


def release_freed_memory() -> None:
    """Return freed heap memory to the OS (glibc `malloc_trim(0)`); a no-op elsewhere."""
    try:
        libc = _glibc()
        if libc is not None:
            libc.malloc_trim(0)
    except Exception:  # noqa: BLE001 - an optimisation only: never fail the run because of it
        pass
