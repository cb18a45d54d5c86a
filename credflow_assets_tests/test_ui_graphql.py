"""What people do in the Dagster UI, done through the webserver's GraphQL API as the UI does it.

Against `credflow dev` (webserver and daemon) on a stack of its own (`dagster_ui`), after the
daemon processed one new file of each flow (`daemon_processed_files`): the Materialize button,
a backfill, re-executions of a sync-made run and of a failed one, `credflow sync` beside the
daemon, and what the asset pages show per partition.
"""

from __future__ import annotations

import json
import subprocess
import time

from credflow_assets.common.dagster_compat import LOCATION_NAME
from credflow_assets.drive_feeds.names import (
    FEED_TAG,
    inbound_key,
    job_name,
    records_key,
    summary_key,
)
from credflow_assets.staged_tables.names import (
    TABLE_TAG,
    prod_file_key,
    staging_file_key,
    table_asset_keys,
)
from credflow_assets.therapists.names import (
    ASSET_KEYS,
    MPF_AUDIT_CHECK,
    MPF_FOLDER_KEY,
    THERAPIST_TAG,
)
from credflow_assets_tests.dagster_ui import (
    BIN,
    DEFAULT_CONFIG,
    RUN_EVENTS_QUERY,
    child_environment,
    unwrap,
)

THERAPIST_ASSETS = [list(key.path) for key in ASSET_KEYS]

LAUNCH_RUN = """
mutation UiTestLaunch($params: ExecutionParams!) {
  launchRun(executionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId status tags { key value } } }
    ... on InvalidSubsetError { message }
    ... on PythonError { message }
  }
}
"""

LAUNCH_BACKFILL = """
mutation UiTestBackfill($params: LaunchBackfillParams!) {
  launchPartitionBackfill(backfillParams: $params) {
    __typename
    ... on LaunchBackfillSuccess { backfillId }
    ... on PythonError { message }
    ... on PartitionSetNotFoundError { message }
    ... on InvalidStepError { invalidStepKey }
    ... on InvalidOutputError { invalidOutputName }
  }
}
"""

MATERIALIZATIONS = """
query UiTestMaterializations($asset: AssetKeyInput!, $partition: String!) {
  assetOrError(assetKey: $asset) {
    ... on Asset {
      assetMaterializations(partitions: [$partition], limit: 1) {
        runId
        metadataEntries {
          label
          ... on PathMetadataEntry { path }
          ... on TextMetadataEntry { text }
          ... on UrlMetadataEntry { url }
        }
      }
    }
  }
}
"""

REEXECUTE = """
mutation UiTestReexecute($params: ReexecutionParams!) {
  launchRunReexecution(reexecutionParams: $params) {
    __typename
    ... on LaunchRunSuccess { run { runId } }
    ... on PythonError { message }
  }
}
"""

PARTITION_STATS = """
query UiTestPartitionStats {
  assetNodes {
    assetKey { path }
    partitionStats { numMaterialized numPartitions numFailed }
  }
}
"""

CHECK_EXECUTIONS = """
query UiTestChecks($asset: AssetKeyInput!, $check: String!, $partition: String) {
  assetCheckExecutions(assetKey: $asset, checkName: $check, partition: $partition, limit: 5) {
    runId status partition
    evaluation { success description partition }
  }
}
"""

SENSOR_STATE = """
query UiTestSensor($selector: SensorSelector!) {
  sensorOrError(sensorSelector: $selector) {
    __typename
    ... on Sensor {
      sensorState {
        id status
        typeSpecificData { ... on SensorData { lastCursor } }
      }
    }
  }
}
"""

STOP_SENSOR = """
mutation UiTestStop($id: String!) {
  stopSensor(id: $id) { __typename ... on PythonError { message } }
}
"""

START_SENSOR = """
mutation UiTestStart($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) { __typename ... on PythonError { message } }
}
"""


def launch(ui, job: str, partition: str, assets: list[list[str]],
           checks: list[tuple[list[str], str]] = ()) -> dict:
    """What the asset page's Materialize button sends for one partition."""
    answer = ui.graphql(LAUNCH_RUN, {"params": {
        "selector": {**ui.repository_selector, "jobName": job,
                     "assetSelection": [{"path": path} for path in assets],
                     "assetCheckSelection": [{"assetKey": {"path": path}, "name": name}
                                             for path, name in checks]},
        "executionMetadata": {"tags": [{"key": "dagster/partition", "value": partition}]},
    }})["launchRun"]
    return unwrap(answer, "LaunchRunSuccess")["run"]


def finished(ui, run_id: str, timeout: float = 120) -> dict:
    (run,) = ui.wait_for_runs(lambda run: run["runId"] == run_id, timeout=timeout)
    return run


def backfill_one(ui, partition_key: str, asset_keys, title: str) -> dict:
    """A backfill of one partition of `asset_keys`, as the UI (or `credflow reparse`) launches
    it; its one run, finished."""
    answer = ui.graphql(LAUNCH_BACKFILL, {"params": {
        "partitionNames": [partition_key],
        "assetSelection": [{"path": list(key.path)} for key in asset_keys],
        "title": title,
    }})["launchPartitionBackfill"]
    backfill_id = unwrap(answer, "LaunchBackfillSuccess")["backfillId"]
    (run,) = ui.wait_for_runs(lambda run: True, tags={"dagster/backfill": backfill_id},
                              timeout=150)
    return run


def test_each_asset_lists_only_the_partitions_it_can_fill(dagster_ui, daemon_processed_files):
    feed = daemon_processed_files["drive_feeds"]
    other_feeds = [f.name for f in dagster_ui.config.feeds if f.name != feed.details["feed"]]
    stats = {"/".join(node["assetKey"]["path"]): node["partitionStats"]
             for node in dagster_ui.graphql(PARTITION_STATS)["assetNodes"]}

    # The dropped sheet is its own feed's partition only: the other feeds' tables do not list
    # it as missing.
    for key in (inbound_key, records_key, summary_key):
        assert stats[key(feed.details["feed"]).to_user_string()]["numPartitions"] >= 1
        for other in other_feeds:
            assert stats[key(other).to_user_string()]["numPartitions"] == 0, other
    # Nothing the daemon did failed, so no asset shows a failed partition.
    assert {key: stat["numFailed"] for key, stat in stats.items()
            if stat and stat["numFailed"]} == {}
    # Every partitioned asset's partitions are all filled.
    assert {key: stat for key, stat in stats.items()
            if stat and stat["numMaterialized"] != stat["numPartitions"]} == {}


def test_check_results_belong_to_each_file_and_therapist(dagster_ui, daemon_processed_files):
    therapist = daemon_processed_files["therapists"]
    feed = daemon_processed_files["drive_feeds"]

    audits = dagster_ui.graphql(CHECK_EXECUTIONS, {
        "asset": {"path": list(MPF_FOLDER_KEY.path)}, "check": MPF_AUDIT_CHECK,
        "partition": therapist.partition_key})["assetCheckExecutions"]
    schema = dagster_ui.graphql(CHECK_EXECUTIONS, {
        "asset": {"path": list(records_key(feed.details["feed"]).path)},
        "check": "pandera_schema", "partition": feed.partition_key})["assetCheckExecutions"]

    assert audits and audits[0]["partition"] == therapist.partition_key
    assert audits[0]["evaluation"]["success"] is True
    assert audits[0]["evaluation"]["description"] == \
        f"therapist {therapist.partition_key}: MPF folder clean"
    assert schema and schema[0]["partition"] == feed.partition_key
    assert schema[0]["evaluation"]["description"] == "all 8 row(s) valid"


def test_the_materialize_button_holds_one_run_per_therapist(dagster_ui, daemon_processed_files):
    ui = dagster_ui
    therapist_id = daemon_processed_files["therapists"].partition_key
    checks = [(list(MPF_FOLDER_KEY.path), MPF_AUDIT_CHECK)]

    first = launch(ui, "__ASSET_JOB", therapist_id, THERAPIST_ASSETS, checks)
    second = launch(ui, "__ASSET_JOB", therapist_id, THERAPIST_ASSETS, checks)

    # The run coordinator gave both the therapist's concurrency key as they were queued...
    for run in (first, second):
        assert {"key": THERAPIST_TAG, "value": therapist_id} in run["tags"]
    runs = sorted((finished(ui, run["runId"]) for run in (first, second)),
                  key=lambda run: run["startTime"])
    assert [run["status"] for run in runs] == ["SUCCESS", "SUCCESS"]
    # ...so the queue ran them one after the other, never at once.
    assert runs[1]["startTime"] >= runs[0]["endTime"]
    for run in runs:
        assert run["repositoryOrigin"]["repositoryLocationName"] == LOCATION_NAME
        assert {tuple(m["assetKey"]["path"]) for m in run["assetMaterializations"]} == \
            {tuple(path) for path in THERAPIST_ASSETS}
    # `credflow status` counts the button's runs as the flow's (they are the implicit asset job's).
    status = credflow_command(ui, "status", "--json")
    assert status.returncode == 0, status.stderr
    last = json.loads(status.stdout)["therapists"]["last_success"]
    assert (last["run_id"], last["job"], last["partition"]) == \
        (second["runId"], "__ASSET_JOB", therapist_id)


def test_a_backfill_runs_each_file_with_its_flows_tags(dagster_ui, daemon_processed_files):
    ui = dagster_ui
    feed = daemon_processed_files["drive_feeds"]
    name = feed.details["feed"]

    run = backfill_one(ui, feed.partition_key,
                       [key(name) for key in (inbound_key, records_key, summary_key)],
                       "ui test: reparse one sheet")
    assert run["status"] == "SUCCESS", ui.run_failure(run["runId"])
    assert run["tag_map"][FEED_TAG] == name
    assert run["tag_map"]["dagster/partition"] == feed.partition_key


def test_a_backfill_of_a_promoted_staged_file_checks_its_prod_copy_again(
        dagster_ui, daemon_processed_files):
    """What `credflow reparse --flow staged_tables` asks of the webserver: a promoted file has
    left staging, and its partition's rerun reads the prod copy instead of failing."""
    ui = dagster_ui
    staged = daemon_processed_files["staged_tables"]
    table = staged.details["table"]
    database = ui.config.staged_tables.glue_database
    glue = ui.aws("glue")

    def shown(asset_key) -> tuple[str, dict[str, str]]:
        """(run id, metadata) of the asset's latest materialization of the file, as the UI's
        partition page shows them."""
        found = ui.graphql(MATERIALIZATIONS, {"asset": {"path": list(asset_key.path)},
                                              "partition": staged.partition_key})
        [materialization] = found["assetOrError"]["assetMaterializations"]
        return materialization["runId"], {
            entry["label"]: entry.get("path") or entry.get("text") or entry.get("url")
            for entry in materialization["metadataEntries"]}

    promoting_run, promotion = shown(prod_file_key(table))
    ingest_date = promotion["ingest_date"]
    glue.delete_partition(DatabaseName=database, TableName=table,
                          PartitionValues=[ingest_date])  # dropped by hand, say

    run = backfill_one(ui, staged.partition_key, table_asset_keys(database, table),
                       "ui test: reparse a promoted staged file")

    assert run["status"] == "SUCCESS", ui.run_failure(run["runId"])
    (checked_by, checked), (copied_by, copied) = (shown(staging_file_key(table)),
                                                  shown(prod_file_key(table)))
    assert checked_by == copied_by == run["runId"]
    assert checked["read_from"] == copied["file"] == promotion["file"]
    assert copied["copy_method"] == f"already in prod (promoted by run {promoting_run})"
    assert glue.get_partition(DatabaseName=database, TableName=table,
                              PartitionValues=[ingest_date])["Partition"]["StorageDescriptor"][
        "Location"].rstrip("/") == promotion["file"].rsplit("/", 1)[0]


def test_sync_and_the_daemon_share_one_cursor_and_sync_runs_re_execute(
        dagster_ui, daemon_processed_files, tmp_path):
    from credflow_assets.local.seed_drive_feeds import CSV_MIME, sample_rows, write_csv

    ui = dagster_ui
    feed = ui.config.feeds[-1]
    sensor = {**ui.repository_selector, "sensorName": f"drive_feed_{feed.name}_inbound_sensor"}
    state = unwrap(ui.graphql(SENSOR_STATE, {"selector": sensor})["sensorOrError"],
                   "Sensor")["sensorState"]
    before = state["typeSpecificData"]["lastCursor"]
    # Stopped in the UI (the cursor stays), so that this file is sync's, not the daemon's.
    unwrap(ui.graphql(STOP_SENSOR, {"id": state["id"]})["stopSensor"], "StopSensorMutationResult")
    try:
        path = write_csv(tmp_path / "late.csv", feed, sample_rows(feed, 4, start=8800))
        file = ui.drive.upload_file(path, f"{feed.name} late upload.csv",
                                    feed.inbound_folder_id, mime_type=CSV_MIME)
        # Stopped in the UI, the sensor is paused for a plain sync too...
        paused = credflow_sync(ui)
        assert f"sensor {sensor['sensorName']} is stopped in the Dagster UI; skipped" in \
            paused.stdout, paused.stdout + paused.stderr
        assert file["id"] not in paused.stdout
        # ...and ticks when named.
        sync = credflow_sync(ui, "--sensor", sensor["sensorName"])
        assert sync.returncode == 0, sync.stdout + sync.stderr
        assert "1 run(s), 1 succeeded" in sync.stdout

        # The daemon's own state holds the cursor sync advanced: its next tick reads Drive's
        # changes from after this file's.
        cursor = unwrap(ui.graphql(SENSOR_STATE, {"selector": sensor})["sensorOrError"],
                        "Sensor")["sensorState"]["typeSpecificData"]["lastCursor"]
        assert int(json.loads(cursor)["token"]) > int(json.loads(before)["token"])
    finally:
        unwrap(ui.graphql(START_SENSOR, {"selector": sensor})["startSensor"], "Sensor")

    # The sync-made run is listed under its job, as the daemon's are, and re-executes.
    made_by_sync = [run for run in ui.runs(job_name=job_name(feed.name))
                    if file["id"] in run["tag_map"].get("dagster/partition", "")]
    assert len(made_by_sync) == 1
    parent = made_by_sync[0]
    assert parent["repositoryOrigin"]["repositoryLocationName"] == LOCATION_NAME
    assert parent["tag_map"]["dagster/sensor_name"] == sensor["sensorName"]
    assert parent["tag_map"][FEED_TAG] == feed.name
    answer = ui.graphql(REEXECUTE, {"params": {"parentRunId": parent["runId"],
                                              "strategy": "ALL_STEPS"}})["launchRunReexecution"]
    rerun = finished(ui, unwrap(answer, "LaunchRunSuccess")["run"]["runId"])
    assert rerun["status"] == "SUCCESS", ui.run_failure(rerun["runId"])
    assert rerun["tag_map"]["dagster/parent_run_id"] == parent["runId"]
    assert rerun["tag_map"]["dagster/partition"] == parent["tag_map"]["dagster/partition"]


def credflow_sync(ui, *args: str) -> subprocess.CompletedProcess:
    return credflow_command(ui, "sync", *args)


def credflow_command(ui, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run(
        [str(BIN / "credflow"), "--config", str(DEFAULT_CONFIG), "--home", str(ui.home),
         *args],
        env={**child_environment(ui.env), **ui.env}, capture_output=True, text=True, timeout=300)


def test_a_failed_run_re_executes_and_its_failure_is_told(dagster_ui, daemon_processed_files):
    ui = dagster_ui
    staged = daemon_processed_files["staged_tables"]
    table = staged.details["table"]
    key = staged.details["key"].replace(staged.details["name"], "wrong_columns.csv")
    ui.aws("s3").put_object(Bucket=ui.config.buckets.adhoc, Key=key,
                            Body=b"not,the,columns\n1,2,3\n", ContentType="text/csv")
    (failed,) = ui.wait_for_runs(
        lambda run: run["tag_map"].get("dagster/partition") == key, timeout=150)
    assert failed["status"] == "FAILURE"

    answer = ui.graphql(REEXECUTE, {"params": {"parentRunId": failed["runId"],
                                              "strategy": "FROM_FAILURE"}})["launchRunReexecution"]
    rerun = finished(ui, unwrap(answer, "LaunchRunSuccess")["run"]["runId"])

    # Still the same wrong columns: it fails again, with its table's key, and the check on the
    # file's own partition says which columns.
    assert rerun["status"] == "FAILURE"
    assert rerun["tag_map"][TABLE_TAG] == table
    verdicts = ui.graphql(CHECK_EXECUTIONS, {
        "asset": {"path": list(staging_file_key(table).path)}, "check": "columns_match_table",
        "partition": key})["assetCheckExecutions"]
    assert verdicts[0]["runId"] == rerun["runId"] and verdicts[0]["partition"] == key
    assert verdicts[0]["evaluation"]["success"] is False
    assert "extra column(s) not, the, columns" in verdicts[0]["evaluation"]["description"]
    # The failure sensor saw the rerun, whatever launched it.
    deadline = time.monotonic() + 90
    while "failure_notifications" not in _engine_messages(ui, rerun["runId"]):
        assert time.monotonic() < deadline, "no failure notification for the re-execution"
        time.sleep(2)


def _engine_messages(ui, run_id: str) -> str:
    answer = unwrap(ui.graphql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"], "Run")
    return "\n".join(event.get("message") or "" for event in answer["eventConnection"]["events"])
