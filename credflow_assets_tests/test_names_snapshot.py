"""Every name the Dagster UI, run history and operators depend on, pinned for the default config.

Asset keys, check names, jobs, sensors and schedules are where an instance's history lives: a renamed asset
starts with no materializations, a renamed sensor with no cursor. A change here must be on
purpose (and said in the README and the closing note), never a side effect of a refactor. This
is the one place these names are written out; the code reads them from each flow's names.
"""

from credflow_assets.config import load_config
from credflow_assets.definitions import build_definitions
from credflow_assets_tests.conftest import DEFAULT_CONFIG

ASSETS = {
    "s3/signup/uploads", "therapists/renditions", "drive/mpf/folder",
    *(f"drive/inbound/{feed}_sheet" for feed in ("contact_tracing", "nsss", "spl")),
    *(f"tables/{feed}_records" for feed in ("contact_tracing", "nsss", "spl")),
    *(f"drive/outbound/{feed}_summary" for feed in ("contact_tracing", "nsss", "spl")),
    "s3/provider_feeds/acme_health_raw", "s3/provider_feeds/acme_health_landed",
    *(f"s3/staging/{table}_staged_csv" for table in ("claims", "licenses")),
    *(f"s3/prod/{table}_prod_csv" for table in ("claims", "licenses")),
    *(f"glue/credflow_adhoc/{table}" for table in ("claims", "licenses")),
}
CHECKS = {
    "drive/mpf/folder:mpf_audit",
    *(f"tables/{feed}_records:pandera_schema" for feed in ("contact_tracing", "nsss", "spl")),
    *(f"s3/staging/{table}_staged_csv:{check}" for table in ("claims", "licenses")
      for check in ("columns_match_table", "rows_match_schema")),
}
JOBS = {
    "therapist_mpf_job", "mpf_repair_job",
    *(f"drive_feed_{feed}_job" for feed in ("contact_tracing", "nsss", "spl")),
    "provider_feed_acme_health_job",
    "staged_claims_job", "staged_licenses_job", "staged_tables_audit_job",
    "instance_retention_job",
}
SENSORS = {
    "signup_upload_sensor", "signup_reconciliation_sensor",
    *(f"drive_feed_{feed}_inbound_sensor" for feed in ("contact_tracing", "nsss", "spl")),
    "provider_feed_acme_health_sensor",
    "staging_events_sensor", "staging_reconciliation_sensor",
    "failure_notifications", "uploader_mail_retries", "rejected_rows_mail",
    "stopped_runs_sensor",
    "quiet_sources_sensor",
}
SCHEDULES = {"instance_retention_schedule"}


def test_the_code_locations_names_are_the_pinned_ones():
    repository = build_definitions(load_config(DEFAULT_CONFIG)).get_repository_def()
    graph = repository.asset_graph

    assert {key.to_user_string() for key in graph.get_all_asset_keys()} == ASSETS
    assert {f"{check.asset_key.to_user_string()}:{check.name}"
            for check in graph.asset_check_keys} == CHECKS
    assert set(repository.job_names) - {"__ASSET_JOB"} == JOBS
    assert {sensor.name for sensor in repository.sensor_defs} == SENSORS
    assert {schedule.name for schedule in repository.schedule_defs} == SCHEDULES


def test_every_asset_check_job_and_sensor_says_what_it_is():
    repository = build_definitions(load_config(DEFAULT_CONFIG)).get_repository_def()
    graph = repository.asset_graph

    assert [key for key in graph.get_all_asset_keys() if not graph.get(key).description] == []
    assert [check for check in graph.asset_check_keys
            if not graph.get_check_spec(check).description] == []
    assert [job.name for job in repository.get_all_jobs()
            if job.name != "__ASSET_JOB" and not job.description] == []
    assert [sensor.name for sensor in repository.sensor_defs if not sensor.description] == []
    assert [schedule.name for schedule in repository.schedule_defs
            if not schedule.description] == []
