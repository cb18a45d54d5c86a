"""How much work the Drive feeds flow does at a time (a resource, from the config file)."""

import dagster as dg


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
