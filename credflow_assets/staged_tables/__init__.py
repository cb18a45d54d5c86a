"""Analysts' staged CSVs → prod → Glue partitions, guarded by blocking schema checks (doc 003).

Reads top to bottom: names.py (each table's asset keys, partition set, job, run tags and reparse
lanes) → sensors.py (new uploads, lost events; `describe_failure`, a failed run's
message) → assets.py (per table: staged file, prod copy, Glue table and partition) →
observation.py (the staged file's step: observe the upload, check it) → checks.py (the two
blocking checks) → rejection.py (the sentence a rejected file fails with, and its error report's
header lines). settings.py is the flow's resource (from the config file), layout.py says
where files live and how object keys become partition keys, columns.py compares a file's header
with its table, validation.py streams the rows through pandera (with the flows' one CSV engine,
common/csv_chunks.py), schemas.py holds the tables' pandera models, audit.py crawls staging,
prod and Glue, commands.py is `credflow tables audit`, lineage.py a file's chain for
`credflow lineage`.

Each configured table has its own three assets, partition set and job, built here from the
config: a table's assets list only its own staged files.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig


def build_defs(config: CredflowConfig) -> dg.Definitions:
    """The flow's assets and jobs (three assets and one job per table), sensors and settings
    resource."""
    import dagster as dg

    from credflow_assets.staged_tables.assets import build_table_assets, build_table_job
    from credflow_assets.staged_tables.audit import build_audit_job
    from credflow_assets.staged_tables.sensors import (
        build_staging_events_sensor,
        build_staging_reconciliation_sensor,
    )
    from credflow_assets.staged_tables.settings import settings_from_config

    flow_settings = settings_from_config(config)
    database, layout = flow_settings.glue_database, flow_settings.layout
    tables = list(flow_settings.tables)
    jobs = {table: build_table_job(table, database, layout) for table in tables}
    from credflow_assets.common.freshness import with_expected_cadence

    return dg.Definitions(
        assets=with_expected_cadence([asset for table in tables
                                      for asset in build_table_assets(table, database, layout)],
                                     quiet_sources(config)),
        jobs=[*jobs.values(), build_audit_job()],
        sensors=[build_staging_events_sensor(jobs, layout),
                 build_staging_reconciliation_sensor(jobs, layout)],
        resources={"staged_tables_settings": flow_settings},
    )


def quiet_sources(config: CredflowConfig) -> list:
    """The staged tables whose config says how often a file is uploaded (`expect_every`)."""
    from credflow_assets.common.freshness import QuietSource
    from credflow_assets.staged_tables.names import staging_file_key

    bucket, prefix = config.buckets.adhoc, config.staged_tables.staging_prefix
    return [QuietSource(staging_file_key(t.name), "staged table", t.name,
                        f"s3://{bucket}/{prefix}{t.name}/", t.expect_every, t.owner)
            for t in config.staged_tables.tables if t.expect_every is not None]
