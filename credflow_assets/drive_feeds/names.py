"""The Drive feeds flow's names: its asset keys, jobs, partition sets, run tags, reparse lanes

Each feed has its own partition set, assets and job: a feed's partitions are its own inbound
file revisions, so no asset lists another feed's files as missing.
"""

from functools import cache

import dagster as dg

from credflow_assets.common.flow import Flow, FlowPartitions, FlowRuns, first_segment

GROUP = "drive_feeds"


def inbound_key(feed_name: str) -> dg.AssetKey:
    return dg.AssetKey(["drive", "inbound", f"{feed_name}_sheet"])


def records_key(feed_name: str) -> dg.AssetKey:
    return dg.AssetKey(["tables", f"{feed_name}_records"])


def summary_key(feed_name: str) -> dg.AssetKey:
    return dg.AssetKey(["drive", "outbound", f"{feed_name}_summary"])


def job_name(feed_name: str) -> str:
    return f"drive_feed_{feed_name}_job"


@cache
def feed_partitions(feed_name: str) -> dg.DynamicPartitionsDefinition:
    """One partition per revision of a file in the feed's inbound folder (`partition_key`)."""
    return dg.DynamicPartitionsDefinition(name=f"drive_feed_{feed_name}_files")


# Run tags: the feed (a tag concurrency limit of 1 per value keeps one feed's files applied one
# at a time, in the order the sensor saw them) and the inbound Drive file.
FEED_TAG = "credflow/drive_feed"
FILE_TAG = "credflow/drive_file_id"
# Who put the revision there: its `lastModifyingUser.emailAddress` on Drive, as listed.
UPLOADER_TAG = "credflow/uploader"

# appProperties on a summary file: what links it to the inbound file and revision it reports.
SUMMARY_FEED = "credflow_feed"
SUMMARY_INBOUND_ID = "credflow_inbound_file_id"
SUMMARY_INBOUND_REVISION = "credflow_inbound_revision"

# The file's name, shown at the end of its partition key; it decides nothing.
_NAME_IN_KEY_CHARS = 80


def name_in_key(name: str) -> str:
    """The file's name made a valid part of a partition key: Dagster refuses `...` and
    control characters, and commas break UI backfills."""
    text = "".join(char if char.isprintable() and char != "," else " " for char in name)
    while "..." in text:
        text = text.replace("...", "..")
    return " ".join(text.split())[:_NAME_IN_KEY_CHARS] or "unnamed"


def partition_key(feed: str, file_id: str, revision: str, name: str) -> str:
    """One inbound file revision: `{feed}/{drive file id}/{revision}/{file name}`. The id and
    the revision make it unique; the name is there for people (the UI shows a key's start and
    end when it is too long to show whole)."""
    return f"{feed}/{file_id}/{revision}/{name_in_key(name)}"


def parse_partition_key(key: str) -> tuple[str, str, str]:
    """`{feed}/{drive file id}/{revision}/{name}` → (feed, file id, revision)."""
    parts = key.split("/", 3)
    if len(parts) != 4 or not all(parts):
        raise dg.Failure(
            f"partition {key!r} is not {{feed}}/{{drive file id}}/{{revision}}/{{file name}}")
    return parts[0], parts[1], parts[2]


def _run_tags(key: str, _job: str, _assets: list[dg.AssetKey]) -> dict[str, str]:
    try:
        feed, file_id, _revision = parse_partition_key(key)
    except dg.Failure as error:
        raise ValueError(str(error)) from None
    return {FEED_TAG: feed, FILE_TAG: file_id}


FLOW_RUNS = FlowRuns(
    job_names=lambda name: name.startswith("drive_feed_") and name.endswith("_job"),
    asset_key_prefixes=(("drive", "inbound"), ("tables",), ("drive", "outbound")),
    tags=_run_tags,
    file_tags=(UPLOADER_TAG,),
)


# A feed's files upsert the same rows, so a reparse reruns them in the order they were added.
FLOW = Flow(
    name="drive_feeds",
    label="drive feed",
    runs=FLOW_RUNS,
    partitions=FlowPartitions(
        name_option="feed",
        names=lambda config: [feed.name for feed in config.feeds],
        partitions_of=lambda feed: feed_partitions(feed).name,
        asset_of=inbound_key,
        name_of=first_segment,
        job_for=job_name,
        lane_of=first_segment,
    ),
)
