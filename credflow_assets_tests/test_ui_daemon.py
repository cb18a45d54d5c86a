"""End to end under the Dagster daemon: four files dropped, no `credflow sync`, the outcomes a
user checks.

`daemon_processed_files` (dagster_ui.py) drops one new file into each flow's source of the UI's
own stack while `credflow dev` runs, and waits until the runs the daemon's sensors launched have
finished. These tests read the results as a user would: the therapist's MPF folder on Drive, the
feed's table, the provider bucket's `data/`, prod and Glue, and each run through GraphQL.
"""

from __future__ import annotations

import csv
import io
import os
import time
from pathlib import Path

import pytest
import sqlalchemy as sa

from credflow_assets_tests.dagster_ui import PARTITION_TAG, SENSOR_TAG

INSTANCE_QUERY = """
query UiTestInstance {
  instance {
    info
    daemonHealth { allDaemonStatuses { daemonType required healthy } }
  }
}
"""


def test_the_ui_serves_its_own_stacks_instance_with_a_healthy_daemon(dagster_ui):
    # The session stack's variables stay this process's; `credflow dev` adopted the UI stack's.
    assert os.environ.get("DAGSTER_HOME") != dagster_ui.env["DAGSTER_HOME"]
    assert os.environ.get("AWS_ENDPOINT_URL") != dagster_ui.env["AWS_ENDPOINT_URL"]
    deadline = time.monotonic() + 60  # a daemon is healthy once its first heartbeat is in
    while True:
        instance = dagster_ui.graphql(INSTANCE_QUERY)["instance"]
        unhealthy = [status["daemonType"] for status in
                     instance["daemonHealth"]["allDaemonStatuses"]
                     if status["required"] and not status["healthy"]]
        if not unhealthy or time.monotonic() > deadline:
            break
        time.sleep(1)
    assert dagster_ui.env["DAGSTER_HOME"] in (instance["info"] or ""), instance["info"]
    assert not unhealthy, f"daemons not healthy: {unhealthy}\n{dagster_ui.log_tail(40)}"


def test_credflow_dev_starts_the_ui_with_dagsters_current_tooling_and_no_warning(dagster_ui):
    """`credflow dev` runs `dg dev`: no "superseded" notice, deprecation or supersession
    warning reaches its terminal."""
    log = dagster_ui.log_path.read_text(errors="replace")
    assert "dg dev" in log or "Serving dagster-webserver" in log, dagster_ui.log_tail(40)
    for word in ("superseded", "SupersessionWarning", "DeprecationWarning", "deprecated"):
        assert word not in log, f"{word!r} in `credflow dev`'s output:\n{dagster_ui.log_tail(60)}"


# dagster_graphql 1.13.27's client calls gql 4 the deprecated way (its own code, not ours).
@pytest.mark.filterwarnings("ignore:Using variable_values and operation_name:DeprecationWarning")
def test_each_file_was_run_by_a_sensor_of_its_job_and_succeeded(dagster_ui,
                                                                  daemon_processed_files):
    targets = {sensor["name"]: {target["pipelineName"] for target in sensor["targets"] or []}
               for sensor in dagster_ui.sensors()}
    problems = []
    for processed in daemon_processed_files:
        where = f"{processed.flow} ({processed.source})"
        if not processed.runs:
            problems.append(f"{where}: no run")
            continue
        for run in processed.runs:
            tags = run["tag_map"]
            sensor = tags.get(SENSOR_TAG)
            # Dagster's public Python client reads the same status as the UI's runs list.
            status = dagster_ui.client.get_run_status(run["runId"])
            if status.value != run["status"]:
                problems.append(f"{where}: run {run['runId']}: DagsterGraphQLClient says "
                                f"{status.value}, runsOrError {run['status']}")
            if run["status"] != "SUCCESS":
                problems.append(f"{where}: run {run['runId']} of {run['jobName']} "
                                f"(sensor {sensor}) is {run['status']}:\n"
                                f"{dagster_ui.run_failure(run['runId'])}")
            if not sensor:
                problems.append(f"{where}: run {run['runId']} has no {SENSOR_TAG} tag: {tags}")
            elif run["jobName"] not in targets.get(sensor, set()):
                problems.append(f"{where}: run {run['runId']}'s sensor {sensor!r} is not a sensor "
                                f"of job {run['jobName']} (sensors: {targets})")
            origin = run["repositoryOrigin"] or {}
            if origin.get("repositoryLocationName") != dagster_ui.location_name:
                problems.append(f"{where}: run {run['runId']} has repository origin {origin}: "
                                "the UI cannot re-execute it")
        materialized = {(tuple(m["assetKey"]["path"]), m["partition"])
                        for run in processed.runs for m in run["assetMaterializations"]}
        wanted = (tuple(processed.main_asset), processed.run["tag_map"].get(PARTITION_TAG))
        if processed.run["status"] == "SUCCESS" and wanted not in materialized:
            problems.append(f"{where}: {'/'.join(wanted[0])} was not materialized for partition "
                            f"{wanted[1]} (materialized: {sorted(materialized)})")
    assert not problems, "\n".join(problems)


def test_the_therapists_mpf_folder_holds_the_upload_and_its_pdf(dagster_ui,
                                                                  daemon_processed_files):
    from credflow_assets.therapists import mpf
    from credflow_assets.therapists.directory import Therapist

    processed = daemon_processed_files["therapists"]
    therapist_id, key = processed.details["therapist_id"], processed.details["s3_key"]
    root_id = dagster_ui.config.drive.mpf_root_folder_id
    folders = mpf.find_therapist_folders(dagster_ui.drive, root_id, therapist_id)
    assert len(folders) == 1, f"{therapist_id} has {len(folders)} MPF folders: {folders}"
    folder = folders[0]
    assert folder["parents"] == [root_id]
    first, last = processed.details["name"]
    assert folder["name"] == mpf.folder_label(Therapist(therapist_id, first, last))
    placed = {((f.get("appProperties") or {}).get(mpf.S3_KEY),
               (f.get("appProperties") or {}).get(mpf.RENDITION))
              for f in mpf.list_children(dagster_ui.drive, folder["id"])}
    assert {(key, "original"), (key, "pdf")} <= placed, placed


def test_the_feeds_table_has_the_sheets_rows(dagster_ui, daemon_processed_files):
    details = daemon_processed_files["drive_feeds"].details
    id_column = sa.column(details["id_column"])
    query = sa.select(id_column).select_from(sa.table(details["table"])).where(
        id_column.in_(details["ids"]))
    with dagster_ui.engine("CREDFLOW_TABLES_DB_URL").connect() as connection:
        found = sorted(row[0] for row in connection.execute(query))
    assert found == sorted(details["ids"])


def test_the_providers_file_landed_in_data(dagster_ui, daemon_processed_files):
    details = daemon_processed_files["provider_feeds"].details
    bucket = dagster_ui.config.buckets.provider_data
    listing = dagster_ui.aws("s3").list_objects_v2(Bucket=bucket, Prefix="data/")
    keys = [item["Key"] for item in listing.get("Contents", [])]
    landed = [key for key in keys
              if key.endswith(f"/{details['folder']}/{details['landed_name']}")]
    assert landed, f"nothing landed for {details['remote_name']} in s3://{bucket}/data/: {keys}"
    body = dagster_ui.aws("s3").get_object(Bucket=bucket, Key=landed[0])["Body"].read()
    rows = list(csv.reader(io.StringIO(body.decode())))  # decrypted: a header and the rows
    assert len(rows) == details["rows"] + 1, rows
    assert rows[1][0].startswith(details["row_prefix"]), rows[:2]


def test_the_staged_file_is_in_prod_and_its_glue_partition_is_registered(
        dagster_ui, daemon_processed_files):
    details = daemon_processed_files["staged_tables"].details
    settings = dagster_ui.config.staged_tables
    bucket, table = dagster_ui.config.buckets.adhoc, details["table"]
    s3 = dagster_ui.aws("s3")
    prod = settings.prod_prefix.rstrip("/") + f"/{table}/"
    keys = [item["Key"] for item in
            s3.list_objects_v2(Bucket=bucket, Prefix=prod).get("Contents", [])]
    promoted = [key for key in keys if key.endswith(f"/{details['name']}")]
    assert len(promoted) == 1, f"s3://{bucket}/{prod}: {keys}"
    if details["ingest_date"]:
        assert f"={details['ingest_date']}/" in promoted[0]
    staged = s3.list_objects_v2(Bucket=bucket, Prefix=details["key"]).get("Contents", [])
    assert not staged, f"{details['key']} is still in staging after its promotion"

    folder = promoted[0].rsplit("/", 1)[0]
    partitions = dagster_ui.aws("glue").get_partitions(
        DatabaseName=settings.glue_database, TableName=table)["Partitions"]
    locations = {p["StorageDescriptor"]["Location"].rstrip("/"): p["Values"] for p in partitions}
    assert f"s3://{bucket}/{folder}" in locations, locations
    if details["ingest_date"]:
        assert locations[f"s3://{bucket}/{folder}"] == [details["ingest_date"]]


def test_a_staged_upload_both_staging_sensors_see_is_run_once(dagster_ui, daemon_processed_files):
    """The staging events sensor and the reconciliation sensor tick on their own under the
    daemon; an upload both see before its promotion must still make one run, which succeeds
    (see `BothStagingSensors` in dagster_ui.py for how the fixture arranges it)."""
    processed = daemon_processed_files.staged_seen_by_both_sensors
    events, reconciliation = daemon_processed_files.staging_sensors
    runs = [f"{run['runId']} by {run['tag_map'].get(SENSOR_TAG)}: {run['status']}"
            + (f" ({dagster_ui.run_failure(run['runId'])})" if run["status"] != "SUCCESS" else "")
            for run in reversed(processed.runs)]
    assert len(processed.runs) == 1 and processed.run["status"] == "SUCCESS", (
        f"{processed.source}, seen by {reconciliation} and then by {events} before its "
        f"promotion, made {len(processed.runs)} run(s):\n  " + "\n  ".join(runs))


def test_a_sensor_tick_that_wrote_no_line_left_no_log(dagster_ui, daemon_processed_files):
    """A tick's captured log is a file under the instance's storage (with deploy/'s S3 compute
    logs, two objects): one left by a tick that wrote nothing would be one per tick, 17,000 a
    day for a sensor ticking every 5 s (common/tick_log.py). By now the daemon has ticked every
    sensor many times, and processed four files."""
    # A run-status sensor's tick opens its log for each run it is told of (Dagster hands the
    # log to the sensor's context): one per run, not per tick.
    per_run = {sensor["name"] for sensor in dagster_ui.sensors()
               if sensor["sensorType"] == "RUN_STATUS"}
    assert per_run
    logs = Path(dagster_ui.env["DAGSTER_HOME"]) / "storage" / "__repository__"
    written = [path for path in logs.rglob("*")
               if path.is_file() and path.parent.name not in per_run]
    empty = [str(path.relative_to(logs)) for path in written if path.stat().st_size == 0]

    assert not empty, f"{len(empty)} empty tick log(s) of {len(written)}: {empty[:10]}"
