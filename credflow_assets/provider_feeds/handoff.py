"""The raw step's downloaded file, kept for the landed step of the same run in this process.

The raw step uploads the file it downloaded to S3 as the raw copy; the landed step used to
fetch that copy straight back, which cost as much as the download (and far more on moto). The
job runs both steps in one process (`in_process_executor`), so the raw step now keeps its
local file here and the landed step takes it when it is the recorded raw copy: same key and
size at once, and same sha256 once `TakenRawFile.verified` returns. The sha256 is computed in
a thread, so that it overlaps the signature check and the decryption (gpg processes); the
landed step waits for it before anything is uploaded. Anything else (another run, a retry,
a rerun whose raw copy was reused, a step in another process) finds nothing here and fetches
from S3, so a reparse never needs the SFTP server.

Nothing is lost or leaked: a kept file sits in its own private directory under the
provider-feeds work dir; `take` moves it into the landed step's scratch directory, which is
removed on success and failure alike; a file whose run ended without taking it is removed
when the next one is kept, and whatever is left is removed when the process exits, or, if it
is killed, by the next run (its directory names its process: `scratch.py`).
"""

from __future__ import annotations

import atexit
import os
import shutil
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Optional

from credflow_assets.provider_feeds.scratch import make_scratch_dir


@dataclass(frozen=True)
class KeptRawFile:
    path: Path
    key: str
    size: int
    sha256: str


@dataclass(frozen=True)
class TakenRawFile:
    path: Path
    expected_sha256: str
    digest: Future  # the sha256 of `path`, being computed

    def verified(self) -> bool:
        """Whether the file is the recorded raw copy, byte for byte (waits for the hash)."""
        return self.digest.result() == self.expected_sha256


_kept: dict[tuple[str, str], KeptRawFile] = {}
_lock = threading.Lock()


def keep(run_id: str, partition: str, local: Path, *, key: str, size: int, sha256: str,
         work_dir: Optional[str], provider: str,
         run_is_over: Callable[[str], bool]) -> None:
    """Move `local` (the file just stored as raw copy `key`) aside for this run's landing."""
    _drop_finished_runs(run_is_over)
    directory = make_scratch_dir(work_dir, provider, run_id=run_id, purpose="kept")
    target = directory / local.name
    try:
        os.replace(local, target)  # same file system as the scratch directory: a rename
    except OSError:
        shutil.rmtree(directory, ignore_errors=True)
        raise
    with _lock:
        previous = _kept.pop((run_id, partition), None)
        _kept[(run_id, partition)] = KeptRawFile(target, key, size, sha256)
    if previous is not None:
        _remove(previous)


def take(run_id: str, partition: str, copy: dict[str, Any], destination: Path,
         sha256_file: Callable[[Path], str]) -> tuple[Optional[TakenRawFile], str]:
    """(the kept file, moved to `destination`, its sha256 being checked; why) when its key and
    size are the recorded raw copy `copy`'s; (None, why not) otherwise: the caller then
    fetches the raw copy from S3."""
    with _lock:
        kept = _kept.pop((run_id, partition), None)
    if kept is None:
        return None, "no local file kept by this run's raw step in this process"
    try:
        if kept.key != copy["key"] or kept.sha256 != copy["sha256"]:
            return None, f"the local file is {kept.key}, not the recorded {copy['key']}"
        if not kept.path.is_file() or kept.path.stat().st_size != copy["size"]:
            return None, "the local file is missing or its size differs from the raw copy's"
        destination.parent.mkdir(parents=True, exist_ok=True)
        os.replace(kept.path, destination)
    finally:
        _remove(kept)
    digest: Future = Future()

    def compute() -> None:
        try:
            digest.set_result(sha256_file(destination))
        except BaseException as error:  # noqa: BLE001 - handed to whoever waits for it
            digest.set_exception(error)

    threading.Thread(target=compute, name="credflow-raw-sha256", daemon=True).start()
    return (TakenRawFile(destination, copy["sha256"], digest),
            "the raw step's local file (key and size match; sha256 checked before upload)")


def discard(run_id: str, partition: str) -> None:
    """Remove what the raw step kept for this run's landing, if the landing did not take it
    (it failed first, e.g. on a missing variable)."""
    with _lock:
        kept = _kept.pop((run_id, partition), None)
    if kept is not None:
        _remove(kept)


def _drop_finished_runs(run_is_over: Callable[[str], bool]) -> None:
    with _lock:
        stale = [key for key in _kept if run_is_over(key[0])]
        removed = [_kept.pop(key) for key in stale]
    for kept in removed:
        _remove(kept)


def _remove(kept: KeptRawFile) -> None:
    shutil.rmtree(kept.path.parent, ignore_errors=True)


@atexit.register
def _remove_all() -> None:
    with _lock:
        left = list(_kept.values())
        _kept.clear()
    for kept in left:
        _remove(kept)
