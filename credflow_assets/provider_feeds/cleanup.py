"""What a killed run leaves behind, removed by the next run or sensor tick of the flow.

A run killed mid-landing (`kill -9`, the OOM killer, a lost machine) leaves:
- its scratch directory, holding the raw file, decrypted plaintext and extracted members;
- its run, still "started" in the Dagster instance: nothing will ever finish it;
- its open multipart uploads in the provider bucket, whose parts S3 keeps until aborted.

`clean_up_after_dead_runs`, called at the start of every provider step and every tick of a
provider's sensor, removes each scratch directory whose process is certainly gone
(`scratch.dead_scratch_dirs`: same host, pid not running or reused), marks its run failed
when the instance still shows it under way (so the UI, the failure notification and a rerun
see it as over), and then aborts the open uploads recorded by every provider run that is
over (`open_uploads.py`). A live run's directory and uploads are never touched; what a run
on another machine left is aborted once Dagster knows that run is over (run monitoring), and
the bucket's lifecycle rule (AbortIncompleteMultipartUpload) is the last resort.
"""

from __future__ import annotations

import shutil
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, Optional

import dagster as dg

from credflow_assets.provider_feeds.open_uploads import (
    OPEN_UPLOADS_TAG,
    mark_closed,
    recorded_uploads,
)
from credflow_assets.provider_feeds.scratch import OWNER_FILE, Owner, dead_scratch_dirs
from credflow_assets.resources.s3 import abort_multipart_upload

FINISHED = [dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED,
            dg.DagsterRunStatus.SUCCESS]
# Older runs' uploads are the lifecycle rule's (1 day): no need to look further back.
LOOKBACK = timedelta(days=3)
# A marker of a run this instance does not know is kept this long for the instance that does.
FOREIGN_MARKER_AGE = timedelta(days=7)
# The daemon ticks several providers' sensors in threads of one process: one cleanup at a time,
# so that a dead run is failed once.
_one_at_a_time = threading.Lock()


def clean_up_after_dead_runs(instance: dg.DagsterInstance, client: Any,
                             work_dir: Optional[str], log: Any) -> list[str]:
    """Remove dead runs' scratch, fail their runs and abort their uploads; a line for each
    thing done (also logged). Never raises: a cleanup that fails is tried again next time."""
    done: list[str] = []
    try:
        with _one_at_a_time:
            for path, owner in dead_scratch_dirs(work_dir):
                line = _remove_scratch(instance, path, owner)
                if line is not None:
                    done.append(line)
            done += _abort_uploads_of_finished_runs(instance, client)
    except Exception as error:  # noqa: BLE001 - housekeeping must not fail a run or a tick
        log.warning(f"provider feeds: cleaning up after dead runs stopped: {error}; "
                    "it is tried again by the next run or sensor tick")
    for line in done:
        log.warning(line)
    return done


def _remove_scratch(instance: dg.DagsterInstance, path: Path, owner: Owner) -> Optional[str]:
    """Remove a dead process's scratch directory and fail its run; None when there was
    nothing left to do."""
    files, size = _contents(path)
    run = instance.get_run_by_id(owner.run_id) if owner.run_id else None
    if owner.run_id and run is None and not _older_than(path / OWNER_FILE, FOREIGN_MARKER_AGE):
        # A run of another Dagster instance sharing this work dir (two local stacks, say):
        # its files go now, but its marker stays until that instance's own cleanup fails the
        # run and aborts its uploads.
        _remove_all_but(path, OWNER_FILE)
        if not files:
            return None
        return (f"provider feeds: removed {files} file(s), {size:,} bytes, from {path.name}, "
                f"the scratch directory of a process that is gone (pid {owner.pid}, run "
                f"{owner.run_id} of another Dagster instance, whose next provider run removes "
                "the rest)")
    shutil.rmtree(path, ignore_errors=True)
    line = (f"provider feeds: removed {path.name}, the scratch directory of a process that is "
            f"gone (pid {owner.pid}" + (f", run {owner.run_id}" if owner.run_id else "")
            + f"): {files} file(s), {size:,} bytes")
    if run is not None and not run.is_finished:
        instance.report_run_failed(run, message=(
            f"The process running this run (pid {owner.pid}) died while the run was under "
            "way (killed, or out of memory). Its scratch files were removed and its open "
            "uploads are aborted; nothing it was landing was kept. Rerun the file."))
        line += f"; run {run.run_id} marked failed (its process is gone)"
    return line


def _remove_all_but(path: Path, keep: str) -> None:
    for item in path.iterdir():
        if item.name == keep:
            continue
        if item.is_dir() and not item.is_symlink():
            shutil.rmtree(item, ignore_errors=True)
        else:
            item.unlink(missing_ok=True)


def _older_than(path: Path, age: timedelta) -> bool:
    try:
        return time.time() - path.stat().st_mtime > age.total_seconds()
    except OSError:
        return True


def _abort_uploads_of_finished_runs(instance: dg.DagsterInstance, client: Any) -> list[str]:
    done = []
    runs = instance.get_runs(filters=dg.RunsFilter(
        statuses=FINISHED, tags={OPEN_UPLOADS_TAG: "yes"},
        updated_after=datetime.now(timezone.utc) - LOOKBACK))
    for run in runs:
        aborted = []
        for bucket, key, upload_id in recorded_uploads(run):
            if abort_multipart_upload(client, bucket, key, upload_id):
                aborted.append(f"s3://{bucket}/{key}")
        mark_closed(instance, run.run_id)
        if aborted:
            done.append(f"provider feeds: aborted the multipart upload(s) run {run.run_id} "
                        f"left open when it ended: {', '.join(aborted)}")
    return done


def _contents(path: Path) -> tuple[int, int]:
    files = size = 0
    for item in path.rglob("*"):
        try:
            if item.is_file() and not item.is_symlink() and item.name != OWNER_FILE:
                files += 1
                size += item.stat().st_size
        except OSError:
            continue
    return files, size
