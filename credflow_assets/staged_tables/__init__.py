"""Analysts' staged CSVs → prod → Glue partitions, guarded by blocking schema checks (doc 003).

Reads top to bottom: sensors.py (new uploads, lost events, failure notifications) → assets.py
(staged file, prod copy, Glue table and partition) → checks.py (the two blocking checks).
layout.py says where files live and how object keys become partition keys, columns.py compares
a file's header with its table, validation.py streams the rows through pandera, schemas.py holds
the tables' pandera models, audit.py crawls staging, prod and Glue, commands.py is
`credflow tables audit`.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import dagster as dg

    from credflow_assets.config import CredflowConfig


def build_defs(config: CredflowConfig) -> dg.Definitions:
    """The flow's assets, jobs, sensors and settings resource."""
    import dagster as dg

    from credflow_assets.staged_tables.assets import (
        build_glue_asset,
        prod_file,
        staged_file,
        staged_file_job,
    )
    from credflow_assets.staged_tables.audit import build_audit_job
    from credflow_assets.staged_tables.sensors import (
        build_staged_file_failure_sensor,
        staging_events_sensor,
        staging_reconciliation_sensor,
    )
    from credflow_assets.staged_tables.settings import settings_from_config

    flow_settings = settings_from_config(config)
    glue_asset = build_glue_asset(flow_settings)
    return dg.Definitions(
        assets=[staged_file, prod_file, *([glue_asset] if glue_asset else [])],
        jobs=[staged_file_job, build_audit_job()],
        sensors=[staging_events_sensor, staging_reconciliation_sensor,
                 build_staged_file_failure_sensor(staged_file_job)],
        resources={"staged_tables_settings": flow_settings},
    )
