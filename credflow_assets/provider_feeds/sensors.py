"""A sensor per provider: new files on its SFTP server → one partition and one run each.

Each tick lists the provider's remote directory (one SFTP round trip) and compares every file's
identity (size, mtime, and its `.sig`'s when there is one) with what the cursor records as
requested. What is new must hold still: a file seen for the first time (or changed) is listed
again `settle_seconds` later in the same tick, or compared with the previous tick's listing;
a file whose size or mtime moved in between is still being written and waits. `X.sig` is the
detached signature of `X`: it is part of `X`'s identity, never a partition of its own, so a
signature that arrives after its file makes the file's run again (now verified).

The cursor is JSON: `{"requested": {path: [size, mtime, sig size, sig mtime]}, "pending": {…}}`,
pruned to what the server still lists. Without a cursor (a reset sensor), a file whose partition
already has a raw copy of the same identity is recorded, not requested: the instance's
partitions and their raw copies are the record, never an S3 listing by name. Run keys are
`{provider}/{path}@{size}:{mtime}` (plus `+sig@{size}:{mtime}`), so a repeated tick launches
nothing twice. Each tick first cleans up after runs that were killed (cleanup.py).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from fnmatch import fnmatchcase

import dagster as dg

from credflow_assets.config import ProviderConfig
from credflow_assets.provider_feeds.raw_copy import identity_of, latest_raw_copy
from credflow_assets.provider_feeds.cleanup import clean_up_after_dead_runs
from credflow_assets.resources.sftp import sftp_resource_key
from credflow_assets.provider_feeds.names import (
    PROVIDER_TAG,
    REMOTE_PATH_TAG,
    SIGNATURE_SUFFIX,
    RemoteIdentity,
    job_name,
    partition_key,
    provider_partitions,
    sensor_name,
)
from credflow_assets.provider_feeds.settings import (
    SETTINGS_KEY,
    ProviderFeed,
    ProviderFeedsSettings,
    provider_feed_resource_key,
    s3_client_of,
)
from credflow_assets.resources.sftp import SftpError, SftpResource, SftpSession
from credflow_assets.common.tick_log import TickLog


class ProviderListingError(Exception):
    """The provider's remote directory could not be listed; names the provider and the cause."""


@dataclass
class FeedCursor:
    requested: dict[str, RemoteIdentity] = field(default_factory=dict)
    pending: dict[str, RemoteIdentity] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> FeedCursor:
        if not text:
            return cls()
        data = json.loads(text)
        return cls(
            requested={p: RemoteIdentity.from_json(v)
                       for p, v in data.get("requested", {}).items()},
            pending={p: RemoteIdentity.from_json(v) for p, v in data.get("pending", {}).items()},
        )

    def to_json(self) -> str:
        return json.dumps(
            {"requested": {p: i.to_json() for p, i in sorted(self.requested.items())},
             "pending": {p: i.to_json() for p, i in sorted(self.pending.items())}},
            separators=(",", ":"),
        )


def build_provider_sensor(provider: ProviderConfig) -> dg.SensorDefinition:
    """The sensor of one provider (one per provider: the factory's two-plus real callers)."""
    sftp_key = sftp_resource_key(provider.name)
    feed_key = provider_feed_resource_key(provider.name)

    @dg.sensor(
        name=sensor_name(provider.name),
        job_name=job_name(provider.name),
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        required_resource_keys={sftp_key, feed_key, SETTINGS_KEY, "s3"},
        description=f"New files in {provider.name}'s SFTP directory {provider.remote_dir!r} "
        f"(pattern {provider.pattern!r}) → one partition and run each.",
    )
    def _sensor(context: dg.SensorEvaluationContext) -> dg.SensorResult:
        settings: ProviderFeedsSettings = getattr(context.resources, SETTINGS_KEY)
        # What a killed run left (scratch files, an unfinished run, open uploads) goes now,
        # not only when the next file arrives (cleanup.py).
        clean_up_after_dead_runs(context.instance, s3_client_of(context), settings.work_dir,
                                 TickLog(context))
        return evaluate_provider_feed(
            context,
            getattr(context.resources, feed_key),
            getattr(context.resources, sftp_key),
            settings,
        )

    return _sensor


def list_feed(session: SftpSession, feed: ProviderFeed) -> dict[str, RemoteIdentity]:
    """The provider's files by remote path, each with its `.sig`'s identity when present.

    Skipped: directories, names starting with `.` (uploads in progress by convention), names
    not matching the pattern, and `.sig` files (they belong to their file, if it exists).
    """
    entries = {entry.name: entry for entry in session.list_dir(feed.remote_dir)
               if not entry.is_dir}
    files = {}
    for name, entry in entries.items():
        if (name.startswith(".") or name.endswith(SIGNATURE_SUFFIX)
                or not fnmatchcase(name, feed.pattern)):
            continue
        signature = entries.get(name + SIGNATURE_SUFFIX)
        files[entry.path] = RemoteIdentity(
            entry.size, entry.mtime, (signature.size, signature.mtime) if signature else None
        )
    return files


def evaluate_provider_feed(
    context: dg.SensorEvaluationContext,
    feed: ProviderFeed,
    sftp: SftpResource,
    settings: ProviderFeedsSettings,
    *,
    sleep: Callable[[float], None] = time.sleep,
) -> dg.SensorResult:
    cursor = FeedCursor.from_json(context.cursor)
    try:
        with sftp.open_session() as session:
            listing = list_feed(session, feed)
            new = {path: ident for path, ident in listing.items()
                   if cursor.requested.get(path) != ident}
            # Unchanged since the previous tick's listing: it has held still.
            settled = {path: ident for path, ident in new.items()
                       if cursor.pending.get(path) == ident}
            unsettled = {path: ident for path, ident in new.items() if path not in settled}
            changing: dict[str, RemoteIdentity] = {}
            if unsettled and settings.settle_seconds > 0:
                sleep(settings.settle_seconds)
                again = list_feed(session, feed)
                for path, ident in unsettled.items():
                    if again.get(path) == ident:
                        settled[path] = ident
                    elif path in again:
                        changing[path] = again[path]
            else:
                settled.update(unsettled)
    except SftpError as error:
        raise ProviderListingError(
            f"provider {feed.name}: cannot list {feed.remote_dir!r}: {error}"
        ) from error

    ready = sorted(settled)
    batch, later = ready[: settings.max_files_per_tick], ready[settings.max_files_per_tick:]
    requested = {path: ident for path, ident in cursor.requested.items() if path in listing}
    partitions = provider_partitions(feed.name)
    run_requests, new_keys, already = [], [], 0
    for path in batch:
        ident = settled[path]
        key = partition_key(feed.name, path)
        requested[path] = ident
        if _already_stored(context.instance, partitions.name, key, ident):
            already += 1
            continue
        new_keys.append(key)
        run_requests.append(dg.RunRequest(
            job_name=job_name(feed.name),
            partition_key=key,
            run_key=ident.run_key(key),
            tags={PROVIDER_TAG: feed.name, REMOTE_PATH_TAG: path, **ident.tags()},
        ))
    pending = {**{path: settled[path] for path in later}, **changing}
    if run_requests or changing or later:  # a quiet tick writes no log (common/tick_log.py)
        context.log.info(
            f"provider {feed.name}: {len(listing)} file(s) in {feed.remote_dir!r}: "
            f"{len(run_requests)} to run, {len(changing)} still being written, "
            f"{len(later)} left for the next tick, {already} already stored"
        )
    return dg.SensorResult(
        run_requests=run_requests,
        dynamic_partitions_requests=(
            [partitions.build_add_request(new_keys)] if new_keys else []
        ),
        cursor=FeedCursor(requested=requested, pending=pending).to_json(),
    )


def _already_stored(instance: dg.DagsterInstance, partitions_name: str, key: str,
                    ident: RemoteIdentity) -> bool:
    """The partition exists and its raw copy is of this very version (cursor-less recovery)."""
    if not instance.has_dynamic_partition(partitions_name, key):
        return False
    copy = latest_raw_copy(instance, key)
    return copy is not None and identity_of(copy) == ident
