"""Drive inbound feeds → parsed tables, change history and outbound summaries (source doc 001).

Reads top to bottom: names.py (its asset keys, jobs, partition sets, run tags) → sensors.py
(new inbound file revisions, one partition each) → assets.py (the inbound sheet, the feed's
table, the outbound summary) → checks.py (the pandera schema as a blocking check) →
records_metadata.py (what the UI shows of a feed's table and of each file ingested into it).
Then the engine: schemas.py (one DataFrameModel per feed), model_columns.py (their columns,
read from a committed digest so that loading the definitions imports no pandas or pandera) and
validation.py (a feed's plan, a chunk validated); sheets.py (a file read in chunks), with csv_text.py (which text a CSV holds),
workbook.py (which sheet of an XLSX), dates.py (date cells read with a feed's format) and
sheet_errors.py (what the readers share); ingest.py (one file into the table), staging.py (where
its rows wait), first_load.py (a PostgreSQL table's first file, copied straight in) and
store.py (the tables); downloads.py (how long a run keeps its download);
summary.py (the outbound file); error_lines.py (the file's error report); status.py (a
terminal report, which commands.py prints: `credflow feeds status`); lineage.py (a file's chain
for `credflow lineage`); settings.py (how much a step or a tick does at a time).

A feed is a config entry plus a DataFrameModel: `build_defs` makes each feed's table asset, job
and sensor from the config, and checks every feed against its model's columns when the code
location loads (pandera itself is imported by a run that validates rows).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig
    from credflow_assets.drive_feeds.settings import DriveFeedSettings

def build_defs(config: CredflowConfig, settings: DriveFeedSettings | None = None) -> dg.Definitions:
    import dagster as dg

    from credflow_assets.drive_feeds.assets import (
        build_feed_job,
        build_inbound_asset,
        build_records_asset,
        build_summary_asset,
    )
    from credflow_assets.drive_feeds.sensors import build_inbound_sensor
    from credflow_assets.drive_feeds.settings import DriveFeedSettings
    from credflow_assets.drive_feeds.validation import build_plan

    if not config.feeds:
        return dg.Definitions()
    plans = [build_plan(feed) for feed in config.feeds]
    jobs = {feed.name: build_feed_job(feed) for feed in config.feeds}
    from credflow_assets.common.freshness import with_expected_cadence

    return dg.Definitions(
        assets=with_expected_cadence([
            *(build_inbound_asset(feed) for feed in config.feeds),
            *(build_records_asset(plan) for plan in plans),
            *(build_summary_asset(feed) for feed in config.feeds),
        ], quiet_sources(config)),
        jobs=list(jobs.values()),
        sensors=[build_inbound_sensor(feed, jobs[feed.name]) for feed in config.feeds],
        resources={
            "drive_feed_settings": settings or DriveFeedSettings(logs_bucket=config.buckets.logs)
        },
    )


def quiet_sources(config: CredflowConfig) -> list:
    """The feeds whose config says how often a sheet arrives (`expect_every`)."""
    from credflow_assets.common.freshness import QuietSource
    from credflow_assets.drive_feeds.names import inbound_key

    return [QuietSource(inbound_key(f.name), "feed", f.name,
                        f"its Drive inbound folder ({f.inbound_folder_id})", f.expect_every,
                        f.owner)
            for f in config.feeds if f.expect_every is not None]
