"""The code location: `defs` is built from the config file when Dagster loads it, not at import."""

from __future__ import annotations

import os

import dagster as dg

from credflow_assets.config import CredflowConfig, load_config, resolve_config_path


def build_definitions(config: CredflowConfig) -> dg.Definitions:
    from credflow_assets import drive_feeds, provider_feeds, staged_tables, therapists
    from credflow_assets.common.console import one_line_console
    from credflow_assets.common.freshness import build_quiet_sources_sensor
    from credflow_assets.common.instance_retention import build_retention_defs
    from credflow_assets.common.partition_archive import partition_sets
    from credflow_assets.flows import all_flows
    from credflow_assets.common.run_recovery import stopped_runs_sensor
    from credflow_assets.resources.from_config import build_resources

    # Providers, feeds and staged tables with `expect_every`: told once when they go quiet.
    quiet = [source for flow in (provider_feeds, drive_feeds, staged_tables)
             for source in flow.quiet_sources(config)]
    return dg.Definitions.merge(
        dg.Definitions(resources=build_resources(config),
                       sensors=[failure_notifications(config), uploader_mail_retries(config),
                                rejected_rows_mail(config),
                                stopped_runs_sensor, build_quiet_sources_sensor(quiet)],
                       loggers={"console": one_line_console}),
        therapists.build_defs(config),
        staged_tables.build_defs(config),
        drive_feeds.build_defs(config),
        provider_feeds.build_defs(config),
        build_retention_defs(config.retention, partition_sets(all_flows(), config)),
    )


def failure_notifications(config: CredflowConfig | None = None) -> dg.RunStatusSensorDefinition:
    """One failure sensor for every flow, each failed run told with its flow's message, and
    (given the config, which says who they are) its file's uploader e-mailed
    (common/uploader_mail.py)."""
    from credflow_assets.common.notifications import FlowFailures, build_failure_notification_sensor
    from credflow_assets.flows import all_flows
    from credflow_assets.staged_tables.sensors import describe_failure

    # A staged file's failure names the columns that differ; every other flow's, the error.
    describe = {"staged_tables": describe_failure}
    uploaders = uploaders_by_flow(config) if config is not None else {}
    return build_failure_notification_sensor([
        FlowFailures(flow.label, flow.runs, describe=describe.get(flow.name), name=flow.name,
                     uploader=uploaders.get(flow.name))
        for flow in all_flows()
    ])


def uploaders_by_flow(config: CredflowConfig) -> dict:
    """Who each flow e-mails about a failed file (provider files: nobody, a machine sent them)."""
    from credflow_assets.drive_feeds.sensors import feed_uploader
    from credflow_assets.staged_tables.sensors import staged_uploader
    from credflow_assets.therapists.names import therapist_uploader

    notifications = config.notifications
    return {"therapists": therapist_uploader(notifications.success_team),
            "drive_feeds": feed_uploader(list(config.feeds)),
            "staged_tables": staged_uploader(dict(notifications.staged_uploaders))}


def rejected_rows_by_flow(config: CredflowConfig) -> dict:
    """Who each flow e-mails about the rows of a loaded file it rejected: a feed file's
    uploader (the other flows fail a file whole, or reject no rows)."""
    from credflow_assets.drive_feeds.sensors import feed_rejected_rows

    return {"drive_feeds": feed_rejected_rows(list(config.feeds))}


def rejected_rows_mail(config: CredflowConfig) -> dg.RunStatusSensorDefinition:
    """One success sensor for every flow that rejects rows (common/rejected_rows_mail.py)."""
    from credflow_assets.common.rejected_rows_mail import FlowRows, build_rejected_rows_sensor
    from credflow_assets.flows import all_flows

    rows_of = rejected_rows_by_flow(config)
    return build_rejected_rows_sensor([FlowRows(flow.name, flow.runs, rows_of[flow.name])
                                       for flow in all_flows() if flow.name in rows_of])


def uploader_mail_retries(config: CredflowConfig) -> dg.SensorDefinition:
    from credflow_assets.common.rejected_rows_mail import rows_teller
    from credflow_assets.common.uploader_mail import build_uploader_mail_retry_sensor

    tellers = {flow: rows_teller(flow, rows_of)
               for flow, rows_of in rejected_rows_by_flow(config).items()}
    return build_uploader_mail_retry_sensor(uploaders_by_flow(config), tellers)


@dg.definitions
def defs() -> dg.Definitions:
    # The config file decides which feeds, providers and tables exist, so it is read when the
    # code location loads ($CREDFLOW_CONFIG, else ./credflow.yaml), never at import.
    path = resolve_config_path()
    try:
        stat = path.stat()
    except OSError:
        return build_definitions(load_config(path))  # load_config names the file and why
    return _built_once((str(path), stat.st_mtime_ns, stat.st_size),
                       lambda: build_definitions(load_config(path)))


# (config file identity, the environment after the build, the definitions): the last build.
_last_build: list[tuple[tuple, dict, dg.Definitions]] = []


def _built_once(config_identity: tuple, build) -> dg.Definitions:
    """One build per config file (as it is now) and environment, in a process that loads the
    code location for every run: a Celery worker's pool process does, since dagster-celery
    reconstructs the job from its origin for each task (0.25-0.5 s a run, bench/RESULTS.md §7).
    The environment is compared as it was after the build, since building imports libraries
    that set variables of their own (pandera sets PYARROW_IGNORE_TIMEZONE)."""
    if _last_build:
        identity, environment, built = _last_build[0]
        if identity == config_identity and environment == dict(os.environ):
            return built
    built = build()
    _last_build[:] = [(config_identity, dict(os.environ), built)]
    return built
