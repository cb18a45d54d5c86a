"""One sensor per feed: new inbound file revisions → one run each, keyed by Drive id + revision.

Each tick lists the inbound folder from a modifiedTime cursor (`modifiedTime >= cursor - lookback`,
oldest first), so it costs what changed, not what the folder holds. Equal timestamps are normal
(a batch of uploads in one second; a tick that stopped mid-batch): the cursor keeps the files it
has seen inside the lookback window, by id and modifiedTime, so a file is neither missed nor
requested twice. The lookback also catches a file Drive lists a little late. The partition key
is `{feed}/{drive file id}/{revision}/{file name}`, in the feed's own partition set: two files
with the same name are two ids; a corrected re-upload is a new revision (or a new id); each is
processed once. The run key is `{feed}/{drive file id}/{revision}`, so a tick that runs twice
launches nothing twice, and a renamed file (same revision) is not processed again.
"""


import json
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone

import dagster as dg

from credflow_assets.config import FeedConfig
from credflow_assets.drive_feeds.settings import DriveFeedSettings
from credflow_assets.drive_feeds.names import (
    FEED_TAG,
    FILE_TAG,
    UPLOADER_TAG,
    feed_partitions,
    parse_partition_key,
    partition_key,
    records_key,
)
from credflow_assets.common.partitions import is_valid_partition_key
from credflow_assets.common.rejected_rows_mail import RejectedRows, row_numbers
from credflow_assets.common.uploader_mail import SAME_FOLDER, UploaderNotice
from credflow_assets.resources.drive import (
    LAST_MODIFYING_USER_FIELDS,
    DriveResource,
    escape_query_literal,
)

# Who made the revision, too: its run is tagged with their address, which a failure e-mails.
LIST_FIELDS = ("id,name,mimeType,modifiedTime,md5Checksum,size,trashed,"
               + LAST_MODIFYING_USER_FIELDS)
FOLDER_MIME = "application/vnd.google-apps.folder"


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class FeedCursor:
    """The newest modifiedTime seen, and the files seen within the lookback window before it
    (file id → the modifiedTime it had when seen)."""

    newest: str | None = None
    seen: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> "FeedCursor":
        if not text:
            return cls()
        data = json.loads(text)
        return cls(newest=data.get("newest"), seen=dict(data.get("seen", {})))

    def to_json(self) -> str:
        return json.dumps({"newest": self.newest, "seen": self.seen}, sort_keys=True)

    def window_start(self, lookback: timedelta) -> str | None:
        return format_time(parse_time(self.newest) - lookback) if self.newest else None


def inbound_query(folder_id: str, since: str | None) -> str:
    q = (f"'{escape_query_literal(folder_id)}' in parents and trashed = false "
         f"and mimeType != '{FOLDER_MIME}'")
    if since:
        q += f" and modifiedTime >= '{since}'"
    return q


def select_new_files(files, cursor: FeedCursor, limit: int,
                     lookback: timedelta) -> tuple[list[dict], FeedCursor]:
    """From files listed oldest first, the (at most `limit`) not seen before, and the cursor
    after them. Pure: the sensor's whole bookkeeping, testable without Drive."""
    seen = dict(cursor.seen)
    newest = cursor.newest
    newest_time = parse_time(newest) if newest else None
    chosen: list[dict] = []
    for file in files:
        modified = file["modifiedTime"]
        if seen.get(file["id"]) == modified:
            continue
        if len(chosen) >= limit:
            break  # the rest (not older than these) are listed again next tick
        chosen.append(file)
        seen[file["id"]] = modified
        moment = parse_time(modified)
        if newest_time is None or moment > newest_time:
            newest_time, newest = moment, modified
    if newest_time is not None:
        horizon = newest_time - lookback
        seen = {file_id: modified for file_id, modified in seen.items()
                if parse_time(modified) >= horizon}
    return chosen, FeedCursor(newest=newest, seen=seen)


def build_inbound_sensor(feed: FeedConfig, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"drive_feed_{feed.name}_inbound_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New revisions of sheets in the {feed.name} feed's inbound Drive folder "
        f"({feed.inbound_folder_id}), one run each.",
    )
    def inbound_sensor(
        context: dg.SensorEvaluationContext,
        drive: DriveResource,
        drive_feed_settings: DriveFeedSettings,
    ) -> dg.SensorResult:
        from credflow_assets.drive_feeds.sheets import revision_of

        cursor = FeedCursor.from_json(context.cursor)
        lookback = timedelta(seconds=drive_feed_settings.lookback_seconds)
        listing = drive.list_files(
            inbound_query(feed.inbound_folder_id, cursor.window_start(lookback)),
            fields=LIST_FIELDS, order_by="modifiedTime",
            page_size=min(1000, drive_feed_settings.max_files_per_tick + 100),
        )
        files, next_cursor = select_new_files(
            listing, cursor, drive_feed_settings.max_files_per_tick, lookback)
        keys, requests = [], []
        for file in files:
            revision = revision_of(file)
            if revision is None:
                context.log.info(f"{feed.name}: skipping Drive file {file['id']}: "
                                 f"{file['mimeType']} is not a sheet")
                continue
            key = partition_key(feed.name, file["id"], revision, file["name"])
            if not is_valid_partition_key(key):
                context.log.warning(f"{feed.name}: skipping Drive file {file['id']}: "
                                    f"{key!r} cannot be a partition key")
                continue
            # The run key is the revision's identity, without the name: a revision seen before
            # (a rename changes modifiedTime and the key's name, not the content) already has
            # its partition and run, and is not requested again.
            run_key = revision_run_key(feed.name, file["id"], revision)
            if _requested_before(context.instance, run_key):
                continue
            keys.append(key)
            requests.append(dg.RunRequest(
                partition_key=key, run_key=run_key,
                tags={FEED_TAG: feed.name, FILE_TAG: file["id"], **_uploader_tag(file)},
            ))
        if requests:
            context.log.info(f"{feed.name}: {len(requests)} new inbound file revision(s)")
        return dg.SensorResult(
            run_requests=requests,
            dynamic_partitions_requests=(
                [feed_partitions(feed.name).build_add_request(keys)] if keys else []),
            cursor=next_cursor.to_json(),
        )

    return inbound_sensor


def revision_run_key(feed: str, file_id: str, revision: str) -> str:
    return f"{feed}/{file_id}/{revision}"


def _requested_before(instance: dg.DagsterInstance, run_key: str) -> bool:
    # One indexed tag lookup per new file listed, not a scan of the feed's partitions.
    return bool(instance.get_run_ids(dg.RunsFilter(tags={"dagster/run_key": run_key}), limit=1))


def _uploader_tag(file: dict) -> dict[str, str]:
    address = (file.get("lastModifyingUser") or {}).get("emailAddress")
    return {UPLOADER_TAG: address} if address else {}


def feed_uploader(feeds: list[FeedConfig]):
    """Who is e-mailed about a feed file that was not loaded: whoever made its revision on
    Drive (the run's UPLOADER_TAG); nobody when Drive did not say (`common.uploader_mail`)."""
    folders = {feed.name: feed.inbound_folder_id for feed in feeds}

    def uploader_of_run(_instance: dg.DagsterInstance, run: dg.DagsterRun,
                        _sentence: str) -> UploaderNotice | None:
        address = run.tags.get(UPLOADER_TAG)
        key = run.tags.get("dagster/partition", "")
        if not address or key.count("/") < 3:
            return None
        feed, _file_id, _revision = parse_partition_key(key)
        name = key.split("/", 3)[3]
        folder = folders.get(feed, "?")
        return UploaderNotice(
            to=address, file_name=name,
            where=f"{name} in the {feed} feed's inbound folder on Google Drive "
                  f"(folder id {folder})",
            fix=f"{SAME_FOLDER} (the {feed} feed's inbound folder)")

    return uploader_of_run


# Rows a file's run wrote or left as a later file wrote them: the rows loaded.
LOADED_COUNTS = ("inserted", "updated", "unchanged", "kept_newer")


def feed_rejected_rows(feeds: list[FeedConfig]):
    """Who is e-mailed about a loaded feed file's rejected rows, and what: its uploader (as for
    a failed file, `feed_uploader`), the counts and the rules broken by column and row, read
    from the run's materialization of the feed's table (records_metadata.py: no values)."""
    uploader_of = feed_uploader(feeds)

    def rejected_rows_of(instance: dg.DagsterInstance,
                         run: dg.DagsterRun) -> RejectedRows | None:
        notice = uploader_of(instance, run, "")
        if notice is None:
            return None
        feed, _file_id, _revision = parse_partition_key(run.tags["dagster/partition"])
        metadata = _materialization_metadata(instance, run.run_id, records_key(feed))
        rejected = int(metadata.get("rejected") or 0)
        if not rejected:
            return None
        return RejectedRows(
            to=notice.to, file_name=notice.file_name, where=notice.where,
            loaded=sum(int(metadata.get(name) or 0) for name in LOADED_COUNTS),
            rejected=rejected,
            rules=_rules_in_words(metadata.get("rejections_by_reason") or {},
                                  metadata.get("rejected_rows_by_rule") or {}),
            fix=f"fix these rows and upload the corrected file to the same folder (the "
                f"{feed} feed's inbound folder); the rows already loaded are updated, not "
                "duplicated")

    return rejected_rows_of


def _materialization_metadata(instance: dg.DagsterInstance, run_id: str,
                              key: dg.AssetKey) -> dict:
    """The raw metadata values of the run's materialization of `key` ({} when it has none)."""
    records = instance.get_records_for_run(
        run_id, of_type=dg.DagsterEventType.ASSET_MATERIALIZATION).records
    for record in records:
        materialization = record.event_log_entry.asset_materialization
        if materialization is not None and materialization.asset_key == key:
            return {name: getattr(value, "value", value)
                    for name, value in materialization.metadata.items()}
    return {}


def _rules_in_words(counts: dict[str, int], numbers: dict[str, list[int]]) -> tuple[str, ...]:
    """`date_of_birth: not a date in the format YYYY-MM-DD (rows 3, 7)`, one a rule, the
    rule that rejected most rows first."""
    return tuple(f"{rule} {row_numbers(list(numbers.get(rule, [])), int(count))}"
                 for rule, count in counts.items())
