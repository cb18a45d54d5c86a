"""An outage that outlasts a run's own retries fails the file as transient, and the file lands
later, once: a Drive storm of 500s while a feed file is downloaded, against the real local
Drive server and a real instance with credflow's `run_retries`."""

from __future__ import annotations

import dagster as dg
import pytest
import sqlalchemy as sa

from credflow_assets.config import load_config
from credflow_assets.common.dagster_compat import execute_run_in_process, sensor_context
from credflow_assets.definitions import build_definitions
from credflow_assets.drive_feeds.names import records_key
from credflow_assets.local import drive_server
from credflow_assets.local.seed_drive_feeds import CSV_MIME, sample_rows, write_csv
from credflow_assets.resources.drive import DriveResource
from credflow_assets.common.run_recovery import FAILURE_KIND_TAG
from credflow_assets.cli.sync import sync
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

FEED = "spl"
SENSOR = f"drive_feed_{FEED}_inbound_sensor"


@pytest.fixture(scope="module")
def outage(tmp_path_factory):
    base = tmp_path_factory.mktemp("outages")
    config = load_config(DEFAULT_CONFIG)
    # One Drive retry, not five: the storm outlasts the run in a second, not in half a minute.
    config = config.model_copy(update={"drive": config.drive.model_copy(
        update={"num_retries": 1})})
    with running_stack(base / "home", config=config) as (state, config, variables):
        with dg.DagsterInstance.from_config(str(state.dagster_home)) as instance:
            yield {"base": base, "config": config, "env": variables, "instance": instance,
                   "defs": build_definitions(config),
                   "drive": DriveResource(api_url=variables["CREDFLOW_DRIVE_URL"],
                                          token=variables["CREDFLOW_DRIVE_TOKEN"])}


def test_a_drive_storm_during_a_download_is_retried_later_and_the_file_lands_once(outage):
    defs, instance, env = outage["defs"], outage["instance"], outage["env"]
    feed = next(feed for feed in outage["config"].feeds if feed.name == FEED)
    rows = sample_rows(feed, 5, start=6100)
    outage["drive"].upload_file(write_csv(outage["base"] / "storm.csv", feed, rows),
                                "storm.csv", feed.inbound_folder_id, mime_type=CSV_MIME)
    # The sensor sees the file...
    request = _tick(defs, instance)
    # ...and Drive fails every call while the run downloads it.
    drive_server.set_faults(env["CREDFLOW_DRIVE_URL"], env["CREDFLOW_DRIVE_TOKEN"],
                            fail_next=1000, status=500)
    try:
        failed = execute_run_in_process(
            defs, instance, request.job_name, partition_key=request.partition_key,
            tags={**request.tags, "dagster/run_key": request.run_key,
                  "dagster/sensor_name": SENSOR})
    finally:
        drive_server.set_faults(env["CREDFLOW_DRIVE_URL"], env["CREDFLOW_DRIVE_TOKEN"])

    assert not failed.success
    run = instance.get_run_by_id(failed.run_id)
    assert run.tags[FAILURE_KIND_TAG] == "transient"
    assert run.tags["dagster/will_retry"] == "true"

    # The storm is over: the next sync runs it again (the daemon's run retries would).
    report = sync(defs, instance, sensor_names=[SENSOR], progress=lambda _: None)

    assert [outcome.success for outcome in report.runs] == [True]
    retry = instance.get_run_by_id(report.runs[0].run_id)
    assert retry.tags["dagster/parent_run_id"] == failed.run_id
    with sa.create_engine(env["CREDFLOW_TABLES_DB_URL"]).connect() as connection:
        ids = connection.execute(sa.text(
            f"SELECT {feed.id_column} FROM {feed.table} WHERE {feed.id_column} IN "
            f"({', '.join(repr(row[feed.id_column]) for row in rows)})")).scalars().all()
    assert sorted(ids) == sorted(row[feed.id_column] for row in rows)
    materialized = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=records_key(FEED),
                              asset_partitions=[request.partition_key]), limit=10).records
    assert len(materialized) == 1  # landed once
    assert sync(defs, instance, sensor_names=[SENSOR], progress=lambda _: None).runs == []


def _tick(defs, instance) -> dg.RunRequest:
    """The feed sensor's tick as the daemon evaluates it; its partitions added."""
    repository = defs.get_repository_def()
    sensor = repository.get_sensor_def(SENSOR)
    resources = {name: resource for name, resource in repository.get_top_level_resources().items()
                 if name in sensor.required_resource_keys}
    with dg.partition_loading_context(dynamic_partitions_store=instance):
        with sensor_context(instance, defs, SENSOR, None, resources) as context:
            result = sensor.evaluate_tick(context)
    for partitions in result.dynamic_partitions_requests or []:
        instance.add_dynamic_partitions(partitions.partitions_def_name,
                                        list(partitions.partition_keys))
    (request,) = result.run_requests
    return request.with_replaced_attrs(job_name=request.job_name or sensor.job_name)
