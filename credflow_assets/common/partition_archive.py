"""The partition budget: archive the partitions of files processed long ago.

Dagster advises at most 100,000 partitions per asset: the UI's partition page loads every key
of the set with its status, and slows as the set grows (bench/RESULTS.md §6). A flow's partition
set grows by one key per file, forever. `archive_partitions` takes off the instance's dynamic
partitions the keys of files whose processing finished before a cutoff, after writing each to
an archive. Their materializations, runs, parse logs and error reports all stay, so `credflow
lineage KEY` still answers (each flow's `find` reads `known_partition_keys`), and says
"archived on DATE".

What is archived: a partition whose latest materialization of its flow's dated asset
(`FlowPartitions.asset_of`) is older than the cutoff and whose latest run, when it has one (of
its job or of the UI's asset job), succeeded and ended before the cutoff. Never: a partition
whose latest run failed (the file waits for a corrected upload; `keep_failed=False` archives
those too), one with a run queued or under way, one never materialized.

The archive is a log in the instance's own database (Dagster's key-value table, beside the
retention's progress): per partition set, entries of up to 5,000 keys with the time they were
archived, about 60 bytes a file (100,000 files: 6 MB), appended to, never rewritten. Why there:
every process of a deployment reads it wherever it runs (the daemon, a Celery worker or a
Kubernetes pod running the retention job, the CLI on an engineer's machine), a backup of the
instance keeps it with the event log lineage reads, it needs no other service, and it is
written before a partition is deleted, so an interrupted archive loses nothing. (Earlier
versions kept it in files under the instance's storage directory; they are moved in when
read.)

A partition comes back (`restore_partitions`: a reparse of the file) by being added again and a
`restored` entry; a key's last entry wins. A re-uploaded file's sensor adds its key again by
itself: a live key is never reported archived.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import time
import weakref
from collections.abc import Iterable
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import dagster as dg

from credflow_assets.common.dagster_compat import (
    delete_dynamic_partitions,
    insert_instance_value,
    latest_materialization_ids,
    read_instance_values,
    run_partition_data,
)
from credflow_assets.common.flow import Flow

# Where versions before this one kept the archive, in files (`_import_archive_files`).
FILES_ARCHIVE_DIRECTORY = "partition_archive"
# The job Dagster gives a run the UI launches by the Materialize button or a backfill.
ASSET_JOB_NAME = "__ASSET_JOB"
FAILED_STATUSES = {dg.DagsterRunStatus.FAILURE, dg.DagsterRunStatus.CANCELED}
# A progress line every this many keys deleted (an archive of 90,000 keys shows it is moving).
PROGRESS_EVERY = 5000


@dataclass(frozen=True)
class PartitionSet:
    """One flow's partition set, with the asset whose materializations date its files and the
    job that runs them."""

    flow: str
    name: str
    asset_key: dg.AssetKey
    job_name: str


def partition_sets(flows: Iterable[Flow], config) -> list[PartitionSet]:
    """Every partition set the flows declare for this config (one per feed, provider, table)."""
    found: dict[str, PartitionSet] = {}
    for flow in flows:
        target = flow.partitions
        for name in target.names(config):
            set_name = target.partitions_of(name)
            found.setdefault(set_name, PartitionSet(flow.name, set_name, target.asset_of(name),
                                                    target.job_for(name)))
    return list(found.values())


@dataclass
class ArchiveReport:
    cutoff: datetime
    dry_run: bool
    archived: dict[str, list[str]] = field(default_factory=dict)  # partition set → keys
    kept: dict[str, dict[str, int]] = field(default_factory=dict)  # set → reason → count
    seconds: float = 0.0

    @property
    def total_archived(self) -> int:
        return sum(len(keys) for keys in self.archived.values())

    def to_json(self) -> dict:
        return {"cutoff": self.cutoff.isoformat(timespec="seconds"), "dry_run": self.dry_run,
                "archived": {name: len(keys) for name, keys in self.archived.items()},
                "archived_keys": self.archived, "kept": self.kept,
                "seconds": round(self.seconds, 2)}


def archive_partitions(instance: dg.DagsterInstance, flows: Iterable[PartitionSet],
                       older_than: timedelta, *, keep_failed: bool = True,
                       dry_run: bool = False, now: datetime | None = None,
                       progress=None) -> ArchiveReport:
    """Archive the partitions processed before `now - older_than` (module docstring)."""
    started = time.monotonic()
    now = now or datetime.now(timezone.utc)
    report = ArchiveReport(cutoff=now - older_than, dry_run=dry_run)
    for partition_set in flows:
        keys, kept = archivable(instance, partition_set, report.cutoff, keep_failed=keep_failed)
        report.archived[partition_set.name] = keys
        report.kept[partition_set.name] = kept
        if keys and not dry_run:
            _write_archive(instance, partition_set.name, keys, now, "archived")
            for start in range(0, len(keys), PROGRESS_EVERY):
                delete_dynamic_partitions(instance, partition_set.name,
                                          keys[start:start + PROGRESS_EVERY])
                done = min(start + PROGRESS_EVERY, len(keys))
                if progress and len(keys) > PROGRESS_EVERY:
                    progress(f"{partition_set.name}: {done:,} of {len(keys):,} archived")
    report.seconds = time.monotonic() - started
    return report


def archivable(instance: dg.DagsterInstance, partition_set: PartitionSet, cutoff: datetime, *,
               keep_failed: bool = True) -> tuple[list[str], dict[str, int]]:
    """The set's live keys processed before `cutoff`, in the order they were added, and how
    many were kept and why."""
    live = list(instance.get_dynamic_partitions(partition_set.name))
    if not live:
        return [], {}
    old = _materialized_before(instance, partition_set.asset_key, cutoff)
    latest_runs = _latest_runs(instance, partition_set, set(live))
    kept = {"processed since the cutoff or never": 0, "failed": 0, "run under way": 0}
    chosen = []
    for key in live:
        run = latest_runs.get(key)
        if run is not None and run.status in FAILED_STATUSES and keep_failed:
            kept["failed"] += 1
        elif run is not None and run.status not in FAILED_STATUSES \
                and run.status != dg.DagsterRunStatus.SUCCESS:
            kept["run under way"] += 1
        elif key not in old or (run is not None and (run.end_time or 0) >= cutoff.timestamp()):
            kept["processed since the cutoff or never"] += 1
        else:
            chosen.append(key)
    return chosen, {reason: count for reason, count in kept.items() if count}


def _materialized_before(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                         cutoff: datetime) -> set[str]:
    """Partitions materialized, but not since `cutoff`: every materialized partition (one
    query) less those materialized since (their records, a page of 1,000 at a time: what the
    cutoff's window holds, not what the asset ever held)."""
    materialized = set(latest_materialization_ids(instance, asset_key))
    records_filter = dg.AssetRecordsFilter(asset_key=asset_key,
                                           after_timestamp=cutoff.timestamp())
    cursor = None
    while True:
        page = instance.fetch_materializations(records_filter, limit=1000, cursor=cursor)
        materialized -= {record.partition_key for record in page.records}
        if not page.has_more:
            return materialized
        cursor = page.cursor


def _latest_runs(instance: dg.DagsterInstance, partition_set: PartitionSet,
                 live: set[str]) -> dict:
    """Each live key's latest run, of the set's job or of the UI's asset job: one query each
    (Dagster's run partition data, the newest run per partition)."""
    latest: dict = {}  # key → Dagster's RunPartitionData (run_id, status, start and end time)
    for job in (partition_set.job_name, ASSET_JOB_NAME):
        for data in run_partition_data(instance, dg.RunsFilter(job_name=job)):
            if data.partition not in live:
                continue
            known = latest.get(data.partition)
            if known is None or (data.start_time or 0) > (known.start_time or 0):
                latest[data.partition] = data
    return latest


# ------------------------------------------------------------------------------ the archive
# An append-only log per partition set in the instance's own database (Dagster's key-value
# table, common/dagster_compat.py): entry n of a set is stored under `{ARCHIVE_PREFIX}{set}/n`,
# n = 0, 1, 2, ... with no gap, each entry one action on up to ENTRY_KEYS keys. An entry is
# written whole in one statement, and a writer takes the next free n by an insert the table
# refuses when another writer took it first, so two archives at once never lose a line.

ARCHIVE_PREFIX = "credflow/partition_archive/"
ENTRY_KEYS = 5000
# Entries read per query: one query reads up to 64 × 5,000 keys.
ENTRIES_PER_READ = 64


@dataclass
class _ArchiveLog:
    """What a process has read of one set's log: entries never change, so only the ones
    written since are read again."""

    entries: int = 0
    archived: dict[str, str] = field(default_factory=dict)  # key → when it was archived


# Run storage → partition set → the log read so far (one instance's cache leaves with it).
_logs: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def _entry_key(partitions_def_name: str, number: int) -> str:
    return f"{ARCHIVE_PREFIX}{partitions_def_name}/{number}"


def _archive_log(instance: dg.DagsterInstance, partitions_def_name: str) -> _ArchiveLog:
    """The set's log, with the entries written since this process last read it."""
    _import_archive_files(instance, partitions_def_name)
    return _read_log(instance, partitions_def_name)


def _read_log(instance: dg.DagsterInstance, partitions_def_name: str) -> _ArchiveLog:
    log = _logs.setdefault(instance.run_storage, {}).setdefault(partitions_def_name,
                                                                  _ArchiveLog())
    while True:
        numbers = range(log.entries, log.entries + ENTRIES_PER_READ)
        values = read_instance_values(instance, {_entry_key(partitions_def_name, number)
                                                 for number in numbers})
        for number in numbers:
            value = values.get(_entry_key(partitions_def_name, number))
            if value is None:
                return log
            entry = json.loads(value)
            for key in entry["keys"]:
                if entry["action"] == "archived":
                    log.archived[key] = entry["at"]
                else:
                    log.archived.pop(key, None)
            log.entries += 1


def _write_archive(instance: dg.DagsterInstance, partitions_def_name: str, keys: list[str],
                   now: datetime, action: str) -> None:
    """Append `action` ("archived" or "restored") for `keys`, in the instance's database
    before anything is deleted."""
    _import_archive_files(instance, partitions_def_name)
    _append(instance, partitions_def_name, keys, now.isoformat(timespec="seconds"), action)


def _append(instance: dg.DagsterInstance, partitions_def_name: str, keys: list[str],
            stamp: str, action: str) -> None:
    number = _read_log(instance, partitions_def_name).entries
    for start in range(0, len(keys), ENTRY_KEYS):
        entry = json.dumps({"action": action, "at": stamp,
                            "keys": keys[start:start + ENTRY_KEYS]})
        while not insert_instance_value(instance, _entry_key(partitions_def_name, number),
                                        entry):
            number += 1  # another archive or restore wrote this entry first
        number += 1


def _import_archive_files(instance: dg.DagsterInstance, partitions_def_name: str) -> None:
    """Move an archive that earlier versions kept in files, on the machine that archived
    (`storage/partition_archive/{set}/{year}.jsonl`, a line per key), into the log, in order;
    each file is renamed `….imported` once its lines are in."""
    directory = Path(instance.storage_directory()) / FILES_ARCHIVE_DIRECTORY / \
        partitions_def_name
    if not directory.is_dir():
        return
    for path in sorted(directory.glob("*.jsonl")):
        records = [json.loads(line) for line in path.read_text(encoding="utf-8").splitlines()
                   if line.strip()]
        # A line is {"key": …, "archived" or "restored": time}; consecutive lines of one
        # action and time were written together, and go in as one entry.
        for (action, stamp), lines in itertools.groupby(
                records, key=lambda record: next((name, value) for name, value in record.items()
                                                 if name != "key")):
            _append(instance, partitions_def_name, [line["key"] for line in lines], stamp,
                    action)
        with contextlib.suppress(FileNotFoundError):  # another process imported it too
            path.rename(path.with_name(path.name + ".imported"))


def read_archive(instance: dg.DagsterInstance, partitions_def_name: str) -> dict[str, str]:
    """Each archived key and when it was archived (ISO time); restored keys are left out."""
    return dict(_archive_log(instance, partitions_def_name).archived)


def known_partition_keys(instance: dg.DagsterInstance, partitions_def_name: str) -> list[str]:
    """The set's live keys, then its archived ones: every file lineage can answer for."""
    live = list(instance.get_dynamic_partitions(partitions_def_name))
    seen = set(live)
    return live + [key for key in read_archive(instance, partitions_def_name)
                   if key not in seen]


def is_known_partition(instance: dg.DagsterInstance, partitions_def_name: str, key: str) -> bool:
    return (instance.has_dynamic_partition(partitions_def_name, key)
            or key in read_archive(instance, partitions_def_name))


def archived_on(instance: dg.DagsterInstance, partitions_def_name: str, key: str) -> str | None:
    """When this key was archived (ISO time), or None when it is live or never was."""
    if instance.has_dynamic_partition(partitions_def_name, key):
        return None
    return read_archive(instance, partitions_def_name).get(key)


def restore_partitions(instance: dg.DagsterInstance, partitions_def_name: str,
                       keys: list[str]) -> list[str]:
    """Add archived `keys` back to the set (a reparse of those files); returns those restored."""
    archived = read_archive(instance, partitions_def_name)
    restored = [key for key in keys if key in archived
                and not instance.has_dynamic_partition(partitions_def_name, key)]
    if restored:
        instance.add_dynamic_partitions(partitions_def_name, restored)
        _write_archive(instance, partitions_def_name, restored, datetime.now(timezone.utc),
                       "restored")
    return restored
