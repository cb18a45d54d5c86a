"""Where a run keeps its download of an inbound file, and how the download is removed.

A download holds every row of the file, dates of birth included, so it lives only as long as
the run that made it uses it. It sits in the instance's storage, in a directory of that run
(`drive_feed_downloads/{run id}/`), so that whose it is never has to be guessed:

- The run removes it when it is done with it, whatever the outcome: the records step once it
  has read it (the file went in or failed), the inbound step when the revision turned out
  superseded, when the download failed, or when the run does not ingest it.
- A run stopped before it could (a killed process) leaves it behind. Every run first removes
  the directories of runs that the instance knows to be over (succeeded, failed, canceled, or
  deleted), never one of a run still queued or going.

The outbound summary reads the file's counts and rejected rows from SQL, not the download.
"""

from __future__ import annotations

import contextlib
import shutil
from collections.abc import Iterable
from pathlib import Path

import dagster as dg

from credflow_assets.drive_feeds.names import job_name

DOWNLOADS_DIR = "drive_feed_downloads"
# Before downloads were kept per run: `drive_feeds/{feed}/{file id}/{revision}/source.*`.
LEGACY_DIR = "drive_feeds"
OVER = {dg.DagsterRunStatus.SUCCESS, dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
NOT_OVER = [status for status in dg.DagsterRunStatus if status not in OVER]


def run_download_dir(instance: dg.DagsterInstance, run_id: str) -> Path:
    return Path(instance.storage_directory()) / DOWNLOADS_DIR / run_id


def is_run_download(instance: dg.DagsterInstance, run_id: str, path: Path) -> bool:
    """Whether `path` is a file this run downloaded (and so its to read and remove)."""
    return path.is_file() and path.parent == run_download_dir(instance, run_id)


def remove_run_download(instance: dg.DagsterInstance, run_id: str) -> None:
    shutil.rmtree(run_download_dir(instance, run_id), ignore_errors=True)


def remove_leftovers(instance: dg.DagsterInstance, current_run_id: str) -> int:
    """Remove the downloads of runs that are over; returns how many directories went. Two
    runs may sweep at once: a directory the other removed first is simply gone."""
    removed = 0
    root = Path(instance.storage_directory()) / DOWNLOADS_DIR
    with contextlib.suppress(FileNotFoundError):
        run_ids = [path.name for path in root.iterdir() if path.name != current_run_id]
        for run_id in _over(instance, run_ids):
            shutil.rmtree(root / run_id, ignore_errors=True)
            removed += 1
    with contextlib.suppress(FileNotFoundError):
        removed += _remove_legacy_leftovers(instance, current_run_id)
    return removed


def _over(instance: dg.DagsterInstance, run_ids: list[str]) -> Iterable[str]:
    """The run ids among `run_ids` of runs that are over, or that the instance no longer has."""
    if not run_ids:
        return []
    known = {run.run_id: run.status
             for run in instance.get_runs(filters=dg.RunsFilter(run_ids=run_ids))}
    return [run_id for run_id in run_ids if run_id not in known or known[run_id] in OVER]


def _remove_legacy_leftovers(instance: dg.DagsterInstance, current_run_id: str) -> int:
    """Downloads kept per file revision, not per run: removed unless a run of that revision
    (by its partition key, `{feed}/{file id}/{revision}/…`) is not over yet."""
    root = Path(instance.storage_directory()) / LEGACY_DIR
    removed = 0
    for feed_dir in [path for path in root.iterdir() if path.is_dir()]:
        revisions = [revision for file_dir in feed_dir.iterdir() if file_dir.is_dir()
                     for revision in file_dir.iterdir()]
        if not revisions:
            continue
        in_use = {
            "/".join(run.tags.get("dagster/partition", "").split("/")[:3])
            for run in instance.get_runs(filters=dg.RunsFilter(
                job_name=job_name(feed_dir.name), statuses=NOT_OVER))
            if run.run_id != current_run_id
        }
        for revision in revisions:
            if f"{feed_dir.name}/{revision.parent.name}/{revision.name}" not in in_use:
                shutil.rmtree(revision, ignore_errors=True)
                removed += 1
    for directory in sorted(root.glob("**/"), key=lambda path: -len(path.parts)):
        with contextlib.suppress(OSError):  # not empty (yet), or gone
            directory.rmdir()  # deepest first: a feed's emptied tree goes whole
    return removed
