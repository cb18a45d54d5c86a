"""A pruned instance still answers `credflow lineage` and the UI's partition pages.

On the `dagster_ui` stack, after the daemon processed one file of each flow
(`daemon_processed_files`) and after every other test that uses the stack (conftest.py runs
the `prunes_dagster_ui` test last): `credflow instance prune --older-than 0d` (every finished
run) removes the runs' log lines, step starts and captured stdout/stderr, and old ticks;
lineage, the partition pages, the check results and the runs' status and tags read the same
before and after. `--dry-run` changes nothing. Then the same on PostgreSQL storage with one
small run, and the code location's retention job on a throwaway instance.
"""

from __future__ import annotations

import json
import os
import time
from datetime import timedelta
from pathlib import Path

import dagster as dg
import pytest

from credflow_assets.common.instance_retention import KEPT_EVENT_TYPES, prune_instance
from credflow_assets_tests.dagster_ui import DEFAULT_CONFIG, STACK_VARIABLE_PREFIXES, unwrap

PARTITION_PAGE = """
query RetentionPartitionPage($asset: AssetKeyInput!, $partition: String!) {
  assetNodeOrError(assetKey: $asset) {
    __typename
    ... on AssetNode {
      partitionStats { numMaterialized numPartitions numFailed numMaterializing }
      latestMaterializationByPartition(partitions: [$partition]) {
        runId partition timestamp metadataEntries { label }
      }
      latestRunForPartition(partition: $partition) { runId status }
      assetChecksOrError {
        ... on AssetChecks {
          checks { name executionForLatestMaterialization { runId status } }
        }
      }
    }
  }
}
"""

SENSOR_TICKS = """
query RetentionTicks($selector: RepositorySelector!, $before: Float) {
  sensorsOrError(repositorySelector: $selector) {
    __typename
    ... on Sensors { results { name sensorState { ticks(beforeTimestamp: $before, limit: 500) {
      timestamp } } } }
  }
}
"""


def credflow(ui, *args: str):
    """`credflow --home UI_HOME ARGS` in this process (a subprocess costs seconds of imports),
    with the UI stack's variables set for the call only, and no other stack's."""
    from click.testing import CliRunner

    from credflow_assets.cli.main import main

    others = {name: None for name in os.environ if name.startswith(STACK_VARIABLE_PREFIXES)}
    done = CliRunner().invoke(
        main, ["--config", str(DEFAULT_CONFIG), "--home", str(ui.home), *args],
        env={**others, **ui.env}, catch_exceptions=False)
    assert done.exit_code == 0, done.output
    return done


def lineage(ui, partition_key: str) -> dict:
    return json.loads(credflow(ui, "lineage", partition_key, "--json").stdout)


def prune(ui, *args: str) -> dict:
    done = credflow(ui, "instance", "prune", "--older-than", "0d", "--ticks-older-than", "0d",
                    "--json", *args)
    assert "runs: " in done.stderr  # a progress line per batch
    return json.loads(done.stdout)


def partition_page(ui, processed) -> dict:
    answer = ui.graphql(PARTITION_PAGE, {"asset": {"path": processed.main_asset},
                                         "partition": processed.partition_key})
    return unwrap(answer["assetNodeOrError"], "AssetNode")


def ticks_before(ui, moment: float) -> dict[str, int]:
    answer = ui.graphql(SENSOR_TICKS, {"selector": ui.repository_selector, "before": moment})
    return {sensor["name"]: len(sensor["sensorState"]["ticks"])
            for sensor in unwrap(answer["sensorsOrError"], "Sensors")["results"]}


def events_by_run(instance: dg.DagsterInstance, run_ids: list[str]) -> dict[str, dict]:
    """Each run's event records: {storage id: event type, None for a log line}."""
    return {run_id: {record.storage_id: (record.event_log_entry.dagster_event.event_type_value
                                         if record.event_log_entry.dagster_event else None)
                     for record in instance.get_records_for_run(run_id).records}
            for run_id in run_ids}


@pytest.mark.prunes_dagster_ui  # after the other UI tests (conftest.py): it prunes their runs
def test_a_pruned_instance_still_answers_lineage_and_the_partition_pages(
        dagster_ui, daemon_processed_files):
    ui = dagster_ui
    files = list(daemon_processed_files)
    run_ids = [run["runId"] for processed in files for run in processed.runs]
    dagster_home = Path(ui.env["DAGSTER_HOME"])
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        events = events_by_run(instance, run_ids)
    runs = {run["runId"]: run for run in ui.runs() if run["runId"] in run_ids}
    lineages = {processed.flow: lineage(ui, processed.partition_key) for processed in files}
    pages = {processed.flow: partition_page(ui, processed) for processed in files}
    logs_dirs = [dagster_home / "storage" / run_id / "compute_logs" for run_id in run_ids]
    captured = [folder for folder in logs_dirs if folder.is_dir()]
    assert captured, "no captured stdout/stderr to prune"
    # The runs had step starts and log lines to lose.
    assert all("STEP_START" in types.values() for types in events.values()), events
    assert any(None in types.values() for types in events.values()), events

    ticked = ticks_before(ui, time.time())
    assert any(count > 1 for count in ticked.values()), f"no sensor ticked twice: {ticked}"
    # Ticks that wrote a line kept it in a file of their own (per sensor, one per tick).
    tick_logs = [path for path in (dagster_home / "storage" / "__repository__").rglob("*")
                 if path.is_file()]
    assert tick_logs, "no tick log to prune"

    dry = prune(ui, "--dry-run")
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        after_dry = events_by_run(instance, run_ids)
    assert dry["dry_run"] is True and dry["event_rows_removed"] > 0
    assert all(set(events[run_id]) <= set(after_dry[run_id]) for run_id in run_ids)
    assert all(folder.is_dir() for folder in captured)

    report = prune(ui)
    cutoff = _timestamp(report["ticks_before"])
    with dg.DagsterInstance.from_config(str(dagster_home)) as instance:
        pruned = events_by_run(instance, run_ids)

    assert report["dry_run"] is False and report["event_rows_removed"] >= dry["event_rows_removed"]
    assert report["compute_log_files_removed"] > 0 and report["ticks_removed"] > 0
    assert not any(folder.exists() for folder in logs_dirs)
    for run_id in run_ids:
        # Log lines and step starts are gone; every kept event is still there, by its id.
        assert {None, "STEP_START"}.isdisjoint(pruned[run_id].values()), pruned[run_id]
        kept = {storage_id for storage_id, kind in events[run_id].items()
                if kind in KEPT_EVENT_TYPES}
        assert kept and kept <= set(pruned[run_id]), run_id
    assert sum(map(len, pruned.values())) < sum(map(len, events.values()))

    # What people read is what it was.
    assert {processed.flow: lineage(ui, processed.partition_key) for processed in files} == \
        lineages
    assert {processed.flow: partition_page(ui, processed) for processed in files} == pages
    for run in ui.runs():
        if run["runId"] in runs:
            before = runs[run["runId"]]
            assert (run["status"], run["startTime"], run["endTime"]) == \
                (before["status"], before["startTime"], before["endTime"])
            assert before["tag_map"].items() <= run["tag_map"].items()
    # Of the ticks from before the cutoff, each sensor keeps its newest only, and its log.
    assert {name: count for name, count in ticks_before(ui, cutoff).items() if count > 1} == {}
    assert report["tick_log_files_removed"] > 0
    kept_tick_logs = [path for path in tick_logs if path.exists()]
    assert len(kept_tick_logs) <= len({path.parent for path in tick_logs}), kept_tick_logs


def _timestamp(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso).timestamp()


# ------------------------------------------------------------------------------ PostgreSQL

files = dg.DynamicPartitionsDefinition(name="retention_files")


@dg.asset(partitions_def=files, check_specs=[dg.AssetCheckSpec("has_rows", asset="landed")])
def landed(context):
    context.log.info(f"landing {context.partition_key}")
    yield dg.MaterializeResult(metadata={"rows": 3})
    yield dg.AssetCheckResult(check_name="has_rows", passed=True)


@pytest.mark.postgres
def test_prune_on_postgres_keeps_materializations_checks_and_runs(postgres_url, tmp_path):
    (tmp_path / "dagster.yaml").write_text(
        f"storage:\n  postgres:\n    postgres_url: {postgres_url}\n")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        instance.add_dynamic_partitions(files.name, ["a.csv"])
        result = dg.materialize([landed], instance=instance, partition_key="a.csv",
                                tags={"credflow/test": "retention"})
        run_id = result.run_id
        before = events_by_run(instance, [run_id])[run_id]
        latest = instance.get_latest_materialization_event(dg.AssetKey("landed"))

        dry = prune_instance(instance, timedelta(0), dry_run=True)
        assert dry.event_rows_removed > 0
        assert events_by_run(instance, [run_id])[run_id] == before

        report = prune_instance(instance, timedelta(0), batch_size=1)
        after = events_by_run(instance, [run_id])[run_id]
        run = instance.get_run_by_id(run_id)

    assert report.storage == "PostgresEventLogStorage"
    assert report.event_rows_removed == dry.event_rows_removed == len(before) - len(after)
    assert {None, "STEP_START"} <= set(before.values())
    assert set(after.values()) <= KEPT_EVENT_TYPES
    assert {sid: kind for sid, kind in before.items() if kind in KEPT_EVENT_TYPES} == after
    # Named here, not read from the module: what lineage, the run page and the sensors read.
    needed = (dg.DagsterEventType.RUN_START, dg.DagsterEventType.RUN_SUCCESS,
              dg.DagsterEventType.STEP_SUCCESS, dg.DagsterEventType.ASSET_MATERIALIZATION_PLANNED,
              dg.DagsterEventType.ASSET_MATERIALIZATION, dg.DagsterEventType.ASSET_CHECK_EVALUATION)
    assert {kind.value for kind in needed} <= set(after.values())
    assert run.status == dg.DagsterRunStatus.SUCCESS and run.tags["credflow/test"] == "retention"
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("landed"), asset_partitions=["a.csv"]),
            limit=1).records[0]
        assert record.asset_materialization.metadata["rows"].value == 3
        assert instance.get_latest_materialization_event(dg.AssetKey("landed")) == latest
        assert instance.get_dynamic_partitions(files.name) == ["a.csv"]
        check = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(dg.AssetKey("landed"), "has_rows"))
        assert check.run_id == run_id and check.event.dagster_event.event_type_value == \
            "ASSET_CHECK_EVALUATION"
        assert instance.get_run_stats(run_id).end_time is not None
        # What `credflow lineage` reads of a staged file's checks.
        check_events = dg.DagsterEventType.ASSET_CHECK_EVALUATION
        assert len(instance.all_logs(run_id, of_type=check_events)) == 1


# ------------------------------------------------------------------------------ settings


def test_retention_settings_default_and_a_bad_schedule_is_refused_by_name(tmp_path):
    from credflow_assets.config import ConfigError, load_config
    from credflow_assets_tests.test_config import GOOD_MINIMAL

    path = tmp_path / "credflow.yaml"
    path.write_text(GOOD_MINIMAL)
    retention = load_config(path).retention
    assert (retention.run_events_age, retention.ticks_age, retention.schedule) == \
        (timedelta(days=30), timedelta(days=7), "0 3 * * *")

    path.write_text(GOOD_MINIMAL + "retention: {run_events_days: 0, schedule: daily}\n")
    with pytest.raises(ConfigError) as refused:
        load_config(path)
    assert "retention.run_events_days: Input should be greater than or equal to 1" in \
        str(refused.value)
    assert "retention.schedule: 'daily' is not a cron schedule" in str(refused.value)


def test_prune_refuses_an_age_it_cannot_read():
    from click.testing import CliRunner

    from credflow_assets.cli.main import main

    done = CliRunner().invoke(main, ["instance", "prune", "--older-than", "a month"])
    assert done.exit_code == 2
    assert "'a month' is not an age: write a whole number and a unit" in done.output


@dg.asset
def parsed(context):
    context.log.info("parsed 3 rows")


def test_the_retention_job_prunes_the_instance_it_runs_on(tmp_path):
    from credflow_assets.common.instance_retention import build_retention_defs
    from credflow_assets.config import load_config

    (tmp_path / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    # The job as the code location has it (test_names_snapshot.py: it is there), alone.
    job = build_retention_defs(load_config(DEFAULT_CONFIG).retention).resolve_job_def(
        "instance_retention_job")
    with dg.DagsterInstance.from_config(str(tmp_path)) as instance:
        old_run = dg.materialize([parsed], instance=instance).run_id
        result = job.execute_in_process(instance=instance, run_config={
            "ops": {"prune_instance": {"config": {"run_events_days": 0}}}})
        left = {entry.user_message for entry in instance.all_logs(old_run)}
        materialized = instance.get_latest_materialization_event(dg.AssetKey("parsed"))

    (output,) = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
    metadata = output.event_specific_data.metadata
    assert result.success and metadata["event_rows_removed"].value > 0
    assert metadata["runs_examined"].value == 1 and metadata["dry_run"].value is False
    assert "parsed 3 rows" not in left and materialized.run_id == old_run
