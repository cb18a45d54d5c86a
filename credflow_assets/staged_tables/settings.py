"""Where the staged-tables flow reads and writes, from the config file (a resource)."""

from __future__ import annotations

import dagster as dg

from credflow_assets.staged_tables.layout import Layout


class StagedTablesSettings(dg.ConfigurableResource):
    adhoc_bucket: str
    logs_bucket: str  # per-file parse logs (parse_logs.py)
    glue_database: str
    staging_prefix: str = "staging/"
    prod_prefix: str = "prod/"
    staging_queue: str
    tables: list[str]
    # table → pandera model name in staged_tables/schemas.py (tables without one: absent).
    table_models: dict[str, str] = {}
    chunk_rows: int = 50_000
    # Above this size the promotion is a managed (multipart, parallel) copy; below, copy_object.
    managed_copy_threshold_bytes: int = 256 * 1024 * 1024
    # Per sensor tick: at most this many SQS messages, and S3 pages in a reconciliation tick.
    max_events_per_tick: int = 100
    # SQS long poll per receive: an empty queue costs a tick this long (0: short polling).
    event_wait_seconds: int = 1
    # Pages of 1,000 keys a reconciliation tick lists: one keeps a tick about a second
    # whatever the bucket holds (bench/sensor_scale.py); more makes a pass shorter.
    max_reconcile_pages_per_tick: int = 1
    # Failure cases (and at most 10 failing rows) kept in a check's metadata.
    failure_sample_size: int = 20

    @property
    def layout(self) -> Layout:
        return Layout(bucket=self.adhoc_bucket, staging_prefix=self.staging_prefix,
                      prod_prefix=self.prod_prefix, tables=tuple(self.tables))


def settings_from_config(config) -> StagedTablesSettings:
    """The flow's settings from the config file."""
    staged = config.staged_tables
    fields = dict(
        adhoc_bucket=config.buckets.adhoc,
        logs_bucket=config.buckets.logs,
        glue_database=staged.glue_database,
        staging_prefix=staged.staging_prefix,
        prod_prefix=staged.prod_prefix,
        staging_queue=config.events.staging_uploads.queue,
        tables=[table.name for table in staged.tables],
        table_models={table.name: table.schema_name for table in staged.tables
                      if table.schema_name},
    )
    return StagedTablesSettings(**fields)
