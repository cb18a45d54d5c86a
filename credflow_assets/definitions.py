"""The code location: `defs` is built from the config file when Dagster loads it, not at import."""

from __future__ import annotations

import dagster as dg

from credflow_assets.config import CredflowConfig, load_config


def build_definitions(config: CredflowConfig) -> dg.Definitions:
    from credflow_assets import drive_feeds, provider_feeds, staged_tables, therapists
    from credflow_assets.resources.from_config import build_resources

    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(config)),
        therapists.build_defs(config),
        staged_tables.build_defs(config),
        drive_feeds.build_defs(config),
        provider_feeds.build_defs(config),
    )


@dg.definitions
def defs() -> dg.Definitions:
    # The config file decides which feeds, providers and tables exist, so it is read when the
    # code location loads ($CREDFLOW_CONFIG, else ./credflow.yaml), never at import.
    return build_definitions(load_config())
