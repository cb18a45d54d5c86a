"""Tunables of the Drive feeds flow, and the names its runs and Drive files carry."""

import dagster as dg

GROUP = "drive_feeds"
INBOUND_KEY = dg.AssetKey(["drive", "inbound", "sheet"])
SUMMARY_KEY = dg.AssetKey(["drive", "outbound", "summary"])

# Run tags: the feed (a tag concurrency limit of 1 per value keeps one feed's files applied one
# at a time, in the order the sensor saw them) and the inbound Drive file.
FEED_TAG = "credflow/drive_feed"
FILE_TAG = "credflow/drive_file_id"

# appProperties on a summary file: what links it to the inbound file and revision it reports.
SUMMARY_FEED = "credflow_feed"
SUMMARY_INBOUND_ID = "credflow_inbound_file_id"
SUMMARY_INBOUND_REVISION = "credflow_inbound_revision"


def partition_key(feed: str, file_id: str, revision: str) -> str:
    """One inbound file revision: `{feed}/{drive file id}/{revision}`."""
    return f"{feed}/{file_id}/{revision}"


def parse_partition_key(key: str) -> tuple[str, str, str]:
    """`{feed}/{drive file id}/{revision}` → (feed, file id, revision)."""
    parts = key.split("/")
    if len(parts) != 3 or not all(parts):
        raise dg.Failure(f"partition {key!r} is not {{feed}}/{{drive file id}}/{{revision}}")
    return parts[0], parts[1], parts[2]


def records_key(feed_name: str) -> dg.AssetKey:
    return dg.AssetKey(["tables", feed_name, "records"])


def job_name(feed_name: str) -> str:
    return f"drive_feed_{feed_name}_job"


class DriveFeedSettings(dg.ConfigurableResource):
    """How much work one step or tick does at a time."""

    # Where each parse's log goes (parsing_logs/drive_feeds/{partition}/{run_id}.log.gz).
    logs_bucket: str
    # Rows read, validated and staged at a time: memory follows this, not the file's size.
    chunk_rows: int = 10_000
    # New inbound files turned into runs per sensor tick (the rest wait for the next tick).
    max_files_per_tick: int = 50
    # Each tick re-lists files modified this long before the newest one it has seen, so a file
    # that Drive lists late (or whose upload kept an older modifiedTime) is still found.
    lookback_seconds: int = 300
    # Rejected rows shown in a materialization's metadata (the summary file lists them all).
    metadata_sample_rows: int = 20
