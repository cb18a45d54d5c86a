"""One sensor per feed: new inbound file revisions → one run each, keyed by Drive id + revision.

The sensor watches Drive's changes feed (`changes.list` from a page token kept in its cursor),
so a tick costs the changes since the last one, whatever the folder holds. It keeps the changes
whose file has the feed's inbound folder among its `parents`, and requests a run for each new
(file id, revision). The cursor takes the token after the last change list read whole (or after
the last page read whole, when a busy tick stops at `max_files_per_tick`): a tick that fails
part-way reads the same changes again, and run keys keep it from launching anything twice.
Nothing is missed across restarts.

The first tick takes `changes.getStartPageToken` first, then lists the inbound folder once
(the listing below, `max_files_per_tick` at a time over as many ticks as it takes), so files
already there are requested and a file added meanwhile is in both: requested once. A token
Drive no longer accepts (400/404) starts that over, logged.

A file trashed, deleted or moved out of the folder before it was processed is noted in the
tick's log (by Drive id: names can be personal) and its dynamic partition is left alone; a run
already queued for it fails saying so (assets.py), never half-processing it.

The listing: `modifiedTime >= cursor - lookback`, oldest first. Equal timestamps are normal (a
batch of uploads in one second; a tick that stopped mid-batch): the listing cursor keeps the
files it has seen inside the lookback window, by id and modifiedTime, so a file is neither
missed nor requested twice.

The partition key is `{feed}/{drive file id}/{revision}/{file name}`, in the feed's own
partition set: two files with the same name are two ids; a corrected re-upload is a new
revision (or a new id); each is processed once. The run key is `{feed}/{drive file id}/
{revision}`, so a change read twice launches nothing twice, and a renamed file (same revision)
is not processed again.
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
    DriveError,
    DriveResource,
    escape_query_literal,
)

# Who made the revision, too: its run is tagged with their address, which a failure e-mails.
LIST_FIELDS = ("id,name,mimeType,modifiedTime,md5Checksum,size,trashed,"
               + LAST_MODIFYING_USER_FIELDS)
# A change, with the file's folders: the feed keeps the changes in its inbound folder.
CHANGE_FIELDS = f"fileId,removed,file({LIST_FIELDS},parents)"
FOLDER_MIME = "application/vnd.google-apps.folder"
# Listing calls a tick may make while what it lists was requested before (a listing started
# over after Drive refused the token).
LISTING_ROUNDS = 20
# Runs not over yet: a file gone before one of these started was not processed.
_NOT_STARTED = [dg.DagsterRunStatus.QUEUED, dg.DagsterRunStatus.NOT_STARTED,
                dg.DagsterRunStatus.STARTING]


def parse_time(text: str) -> datetime:
    return datetime.fromisoformat(text.replace("Z", "+00:00"))


def format_time(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


@dataclass
class FeedCursor:
    """The listing's cursor: the newest modifiedTime seen, and the files seen within the
    lookback window before it (file id → the modifiedTime it had when seen)."""

    newest: str | None = None
    seen: dict[str, str] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str | None) -> "FeedCursor":
        if not text:
            return cls()
        return cls.from_dict(json.loads(text))

    @classmethod
    def from_dict(cls, data: dict) -> "FeedCursor":
        return cls(newest=data.get("newest"), seen=dict(data.get("seen", {})))

    def to_dict(self) -> dict:
        return {"newest": self.newest, "seen": self.seen}

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), sort_keys=True)

    def window_start(self, lookback: timedelta) -> str | None:
        return format_time(parse_time(self.newest) - lookback) if self.newest else None


@dataclass
class WatchCursor:
    """The sensor's cursor: the changes feed's page token, and while the inbound folder's
    one full listing is under way, that listing's cursor (None once it is done). A cursor of
    the modifiedTime sensor before it (`{"newest", "seen"}`) reads as a listing under way
    without a token: the next tick takes one and finishes that listing."""

    token: str | None = None
    listing: FeedCursor | None = None

    @classmethod
    def from_json(cls, text: str | None) -> "WatchCursor":
        data = json.loads(text) if text else {}
        if "token" not in data:
            return cls(token=None, listing=FeedCursor.from_dict(data))
        listing = data.get("listing")
        return cls(token=data["token"],
                   listing=None if listing is None else FeedCursor.from_dict(listing))

    def to_json(self) -> str:
        listing = None if self.listing is None else self.listing.to_dict()
        return json.dumps({"token": self.token, "listing": listing}, sort_keys=True)


def inbound_query(folder_id: str, since: str | None) -> str:
    q = (f"'{escape_query_literal(folder_id)}' in parents and trashed = false "
         f"and mimeType != '{FOLDER_MIME}'")
    if since:
        q += f" and modifiedTime >= '{since}'"
    return q


def select_new_files(files, cursor: FeedCursor, limit: int,
                     lookback: timedelta) -> tuple[list[dict], FeedCursor]:
    """From files listed oldest first, the (at most `limit`) not seen before, and the cursor
    after them. Pure: the listing's whole bookkeeping, testable without Drive."""
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


@dataclass
class Gone:
    """A change saying a file left the inbound folder: trashed, deleted or moved out."""

    file_id: str
    how: str  # "trashed", "deleted from Drive", "moved out of the inbound folder"


def sort_change(change: dict, folder_id: str) -> dict | Gone | None:
    """What a change means to the feed: a file in its inbound folder (to request), a file
    gone (to note, if it was the feed's), or nothing (a folder). Pure."""
    file = change.get("file")
    if change.get("removed") or file is None:
        return Gone(change["fileId"], "deleted from Drive")
    if file.get("mimeType") == FOLDER_MIME:
        return None
    if folder_id not in (file.get("parents") or []):
        return Gone(file["id"], "moved out of the inbound folder")
    if file.get("trashed"):
        return Gone(file["id"], "trashed")
    return file


def build_inbound_sensor(feed: FeedConfig, job) -> dg.SensorDefinition:
    @dg.sensor(
        name=f"drive_feed_{feed.name}_inbound_sensor",
        job=job,
        minimum_interval_seconds=60,
        default_status=dg.DefaultSensorStatus.RUNNING,
        description=f"New revisions of sheets in the {feed.name} feed's inbound Drive folder "
        f"({feed.inbound_folder_id}), one run each, from Drive's changes feed.",
    )
    def inbound_sensor(
        context: dg.SensorEvaluationContext,
        drive: DriveResource,
        drive_feed_settings: DriveFeedSettings,
    ) -> dg.SensorResult:
        tick = _Tick(context, feed, drive, drive_feed_settings)
        return tick.evaluate(WatchCursor.from_json(context.cursor))

    return inbound_sensor


class _Tick:
    """One evaluation of a feed's sensor: the run requests, the notes and the next cursor."""

    def __init__(self, context: dg.SensorEvaluationContext, feed: FeedConfig,
                 drive: DriveResource, settings: DriveFeedSettings) -> None:
        self.context, self.feed, self.drive, self.settings = context, feed, drive, settings
        self.limit = settings.max_files_per_tick
        self.keys: list[str] = []
        self.requests: list[dg.RunRequest] = []
        self.notes = 0

    def evaluate(self, cursor: WatchCursor) -> dg.SensorResult:
        if cursor.token is None:
            # The token first: a file added while the folder is listed is in both.
            cursor = WatchCursor(token=self.drive.start_page_token(),
                                 listing=cursor.listing or FeedCursor())
            self.context.log.info(f"{self.feed.name}: watching Drive's changes feed; listing "
                                  "the inbound folder once for the files already there")
        if cursor.listing is None:
            try:
                cursor = self._read_changes(cursor)
            except DriveError as error:
                if error.status not in (400, 404):
                    raise
                self.context.log.warning(
                    f"{self.feed.name}: Drive no longer accepts the sensor's changes page token "
                    f"(HTTP {error.status} {error.reason}); listing the inbound folder again "
                    "from a new token")
                cursor = WatchCursor(token=self.drive.start_page_token(), listing=FeedCursor())
        if cursor.listing is not None:
            cursor = self._list_folder(cursor)
        return self._result(cursor)

    # -- the changes feed ---------------------------------------------------------------------

    def _read_changes(self, cursor: WatchCursor) -> WatchCursor:
        """Request the changes since the token; the next token is after the last page read
        whole, or this page's own when it held more new files than the tick may request."""
        page_size = min(1000, max(100, 2 * self.limit))
        token = cursor.token
        for page in self.drive.change_pages(cursor.token, fields=CHANGE_FIELDS,
                                            page_size=page_size):
            sorted_changes = [sort_change(change, self.feed.inbound_folder_id)
                              for change in page.changes]
            files = [item for item in sorted_changes if isinstance(item, dict)]
            self._note_gone([item for item in sorted_changes if isinstance(item, Gone)])
            if not self._request_files(files):
                return WatchCursor(token=page.token)  # read this page again next tick
            token = page.next_token or page.new_start_token
            if len(self.requests) >= self.limit:
                break
        return WatchCursor(token=token)

    def _note_gone(self, gone: list[Gone]) -> None:
        """Log the files of this feed that left the folder before they were processed: those
        with a run not started yet, and trashed ones never requested. One query per page."""
        if not gone:
            return
        ids = list({item.file_id for item in gone})
        runs = self.context.instance.get_runs(dg.RunsFilter(
            tags={FEED_TAG: self.feed.name, FILE_TAG: ids}))
        waiting = {run.tags[FILE_TAG] for run in runs if run.status in _NOT_STARTED}
        known = {run.tags[FILE_TAG] for run in runs}
        for item in gone:
            if item.file_id in waiting:
                what = "its queued run will fail saying so"
            elif item.how == "trashed" and item.file_id not in known:
                what = "no run requested"
            else:
                continue  # processed already, or never the feed's
            self.notes += 1
            self.context.log.warning(f"{self.feed.name}: Drive file {item.file_id} was "
                                     f"{item.how} before it was processed; {what}")

    # -- the one full listing -----------------------------------------------------------------

    def _list_folder(self, cursor: WatchCursor) -> WatchCursor:
        """List on from the listing's cursor, `max_files_per_tick` files a round, until as
        many new revisions are requested or the folder is listed (then the changes feed takes
        over). Files requested before (a listing started over) do not count, so a folder of
        processed files is passed over in a few ticks, at most LISTING_ROUNDS rounds each."""
        lookback = timedelta(seconds=self.settings.lookback_seconds)
        listing = cursor.listing
        for _round in range(LISTING_ROUNDS):
            found = self.drive.list_files(
                inbound_query(self.feed.inbound_folder_id, listing.window_start(lookback)),
                fields=LIST_FIELDS, order_by="modifiedTime",
                page_size=min(1000, self.limit + 100))
            files, listing = select_new_files(found, listing, self.limit, lookback)
            self._request_files(files, capped=False)
            if len(files) < self.limit:
                self.context.log.info(f"{self.feed.name}: inbound folder listed; from now on "
                                      "the sensor reads Drive's changes feed")
                return WatchCursor(token=cursor.token)
            if len(self.requests) >= self.limit:
                break
        return WatchCursor(token=cursor.token, listing=listing)

    # -- requests -----------------------------------------------------------------------------

    def _request_files(self, files: list[dict], *, capped: bool = True) -> bool:
        """Request a run for each new revision among `files`; False when the tick's limit
        stopped it before the last one (`capped=False`: the listing, capped already)."""
        from credflow_assets.drive_feeds.sheets import revision_of

        for file in files:
            revision = revision_of(file)
            if revision is None:
                self.context.log.info(f"{self.feed.name}: skipping Drive file {file['id']}: "
                                      f"{file['mimeType']} is not a sheet")
                continue
            key = partition_key(self.feed.name, file["id"], revision, file["name"])
            if not is_valid_partition_key(key):
                self.context.log.warning(f"{self.feed.name}: skipping Drive file {file['id']}:"
                                         f" {key!r} cannot be a partition key")
                continue
            # The run key is the revision's identity, without the name: a revision seen before
            # (a rename changes the key's name, not the content) already has its partition and
            # run, and is not requested again.
            run_key = revision_run_key(self.feed.name, file["id"], revision)
            if key in self.keys or _requested_before(self.context.instance, run_key):
                continue
            if capped and len(self.requests) >= self.limit:
                return False
            self.keys.append(key)
            self.requests.append(dg.RunRequest(
                partition_key=key, run_key=run_key,
                tags={FEED_TAG: self.feed.name, FILE_TAG: file["id"], **_uploader_tag(file)},
            ))
        return True

    def _result(self, cursor: WatchCursor) -> dg.SensorResult:
        if self.requests:
            self.context.log.info(f"{self.feed.name}: {len(self.requests)} new inbound file "
                                  "revision(s)")
        skip = None
        if self.notes and not self.requests:
            skip = (f"{self.notes} inbound file(s) left the folder before they were processed "
                    "(see the tick's log)")
        return dg.SensorResult(
            run_requests=self.requests, skip_reason=skip,
            dynamic_partitions_requests=(
                [feed_partitions(self.feed.name).build_add_request(self.keys)]
                if self.keys else []),
            cursor=cursor.to_json(),
        )


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
