"""`credflow reparse`: 50 feed files reparsed leave the table as it was, each run logged apart."""

import os
import subprocess
import sys
from pathlib import Path

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa

from credflow_assets.definitions import build_definitions
from credflow_assets.local.process import free_port, stop_pid, wait_for_port
from credflow_assets.local.seed_drive_feeds import CSV_MIME, sample_rows, write_csv
from credflow_assets.common.parse_logs import list_logs, read_log
from credflow_assets.cli.reparse import REPARSE_TAG, ReparseError, reparse, select_partitions
from credflow_assets.resources.drive import DriveResource
from credflow_assets.cli.sync import sync
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

BIN = Path(sys.executable).parent
FILES = 50
FEED = "contact_tracing"
CORRECTED_FEED = "nsss"  # two files of the same rows: an upload, then its correction


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    home = tmp_path_factory.mktemp("reparse") / "home"
    work = tmp_path_factory.mktemp("reparse_files")
    with running_stack(home) as (state, config, variables):
        feed = next(feed for feed in config.feeds if feed.name == FEED)
        drive = DriveResource(api_url=variables["CREDFLOW_DRIVE_URL"],
                              token=variables["CREDFLOW_DRIVE_TOKEN"])
        for number in range(FILES):
            rows = sample_rows(feed, 20, start=number * 20)
            path = write_csv(work / f"referrals {number:02d}.csv", feed, rows)
            drive.upload_file(path, path.name, feed.inbound_folder_id, mime_type=CSV_MIME)
        defs = build_definitions(config)
        instance = dg.DagsterInstance.get()
        report = sync(defs, instance, sensor_names=[f"drive_feed_{FEED}_inbound_sensor"],
                      progress=lambda line: None)
        assert len(report.runs) == FILES and report.ok, report.failed[:3]
        corrected = next(feed for feed in config.feeds if feed.name == CORRECTED_FEED)
        for variant in (0, 1):
            rows = sample_rows(corrected, 10, variant=variant)
            path = write_csv(work / f"nsss v{variant}.csv", corrected, rows)
            drive.upload_file(path, path.name, corrected.inbound_folder_id, mime_type=CSV_MIME)
            report = sync(defs, instance, sensor_names=[f"drive_feed_{CORRECTED_FEED}_inbound_sensor"],
                          progress=lambda line: None)
            assert len(report.runs) == 1 and report.ok, report.failed
        engine = sa.create_engine(variables["CREDFLOW_TABLES_DB_URL"])
        try:
            yield {"home": home, "config": config, "defs": defs, "instance": instance,
                   "engine": engine, "table": feed.table, "logs_bucket": config.buckets.logs,
                   "corrected": corrected}
        finally:
            engine.dispose()
            instance.dispose()


def snapshot(flow, table: str | None = None, id_column: str = "ctas_id") -> tuple[list, int]:
    table = table or flow["table"]
    with flow["engine"].connect() as connection:
        rows = connection.execute(sa.text(f"SELECT * FROM {table} ORDER BY {id_column}")).all()
        history = connection.execute(sa.text(f"SELECT count(*) FROM {table}_history")).scalar_one()
    return [tuple(row) for row in rows], history


def test_a_reparse_of_50_feed_files_leaves_the_table_unchanged(flow):
    before_rows, before_history = snapshot(flow)
    assert len(before_rows) == FILES * 20
    partitions = select_partitions(flow["instance"], flow["config"], "drive_feeds", name=FEED)
    assert len(partitions) == FILES

    report = reparse(flow["config"], flow["instance"], "drive_feeds", partitions,
                     progress=lambda line: None)

    assert len(report.runs) == FILES and not report.failed
    assert snapshot(flow) == (before_rows, before_history)
    tagged = flow["instance"].get_runs(
        filters=dg.RunsFilter(tags={REPARSE_TAG: report.reparse_id}))
    assert len(tagged) == FILES
    # Each file now has two parse logs, its first parse and the reparse, side by side.
    client = boto3.client("s3")
    logs = list_logs(client, flow["logs_bucket"], partitions[0], flow="drive_feeds")
    assert [entry["run_id"] for entry in logs][-1] == next(
        run.run_id for run in report.runs if run.partition == partitions[0])
    assert len(logs) == 2
    assert "0 inserted" in read_log(client, flow["logs_bucket"], logs[-1]["key"])


def test_feeds_reparse_side_by_side_and_each_feed_keeps_its_file_order(flow):
    corrected = flow["corrected"]
    tables = [(flow["table"], "ctas_id"), (corrected.table, corrected.id_column)]
    before = [snapshot(flow, table, id_column) for table, id_column in tables]
    assert before[1][1] > 0  # the correction changed tracked columns: history rows exist
    upload, correction = select_partitions(flow["instance"], flow["config"], "drive_feeds", name=CORRECTED_FEED)
    some_files = select_partitions(flow["instance"], flow["config"], "drive_feeds", name=FEED)[:10]
    partitions = select_partitions(flow["instance"], flow["config"], "drive_feeds",
                                   partitions=[*some_files, upload, correction])
    lines = []

    report = reparse(flow["config"], flow["instance"], "drive_feeds", partitions, workers=2,
                     progress=lines.append)

    assert "in 2 lane(s), 2 at a time" in lines[0]
    assert not report.failed and [run.partition for run in report.runs] == partitions
    # Run in the wrong order, the upload would overwrite its correction and add history rows.
    assert [snapshot(flow, table, id_column) for table, id_column in tables] == before
    runs = {run.partition: flow["instance"].get_run_record_by_id(run.run_id)
            for run in report.runs if run.partition in (upload, correction)}
    assert runs[upload].end_time <= runs[correction].start_time


def test_the_reparse_command_selects_one_partition_and_logs_diff(flow):
    partition = select_partitions(flow["instance"], flow["config"], "drive_feeds", name=FEED)[3]
    env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
           "CREDFLOW_HOME": str(flow["home"]), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG)}

    def credflow(*args):
        return subprocess.run([str(BIN / "credflow"), *args], env=env, capture_output=True,
                              text=True, timeout=300)

    done = credflow("reparse", "--flow", "drive_feeds", "--partition", partition, "--in-process")
    assert done.returncode == 0, done.stdout + done.stderr
    assert ": 1 run(s) in " in done.stdout and ", 0 failed" in done.stdout
    assert "credflow/reparse_id=" in done.stdout
    diff = credflow("logs", "diff", partition)
    assert diff.returncode == 0, diff.stderr
    assert diff.stdout.startswith("--- run ") or "the same lines" in diff.stdout
    unknown = credflow("reparse", "--flow", "drive_feeds", "--partition", "nope/x/y",
                       "--in-process")
    assert unknown.returncode == 1 and "no such partition(s): nope/x/y" in unknown.stderr


def test_an_unknown_name_option_is_refused(flow):
    with pytest.raises(ReparseError, match="therapists has no --feed"):
        select_partitions(flow["instance"], flow["config"], "therapists", name="x")


def test_with_a_webserver_running_a_reparse_is_a_tagged_backfill(flow, tmp_path):
    port = free_port()
    env = {**os.environ, "PATH": f"{BIN}:/usr/bin:/bin"}
    webserver = subprocess.Popen(
        [str(BIN / "dagster-webserver"), "-m", "credflow_assets.definitions",
         "-h", "127.0.0.1", "-p", str(port)],
        env=env, stdout=open(tmp_path / "webserver.log", "w"), stderr=subprocess.STDOUT,
        start_new_session=True,
    )
    try:
        wait_for_port("dagster-webserver", port, process=webserver,
                      log_path=tmp_path / "webserver.log", timeout=120)
        partitions = select_partitions(flow["instance"], flow["config"], "drive_feeds", name=FEED)[:3]
        args = ["reparse", "--flow", "drive_feeds", "--webserver", f"http://127.0.0.1:{port}"]
        for key in partitions:
            args += ["--partition", key]
        cli_env = {"PATH": f"{BIN}:/usr/bin:/bin", "HOME": os.environ.get("HOME", "/root"),
                   "CREDFLOW_HOME": str(flow["home"]), "CREDFLOW_CONFIG": str(DEFAULT_CONFIG)}
        done = subprocess.run([str(BIN / "credflow"), *args], env=cli_env, capture_output=True,
                              text=True, timeout=300)
        assert done.returncode == 0, done.stdout + done.stderr
        assert "as 1 backfill(s)" in done.stdout
        backfill_id = done.stdout.split("backfill ", 2)[-1].split(":")[0].strip()
        reparse_id = done.stdout.split()[1].rstrip(":")
        backfill = flow["instance"].get_backfill(backfill_id)
        assert backfill.tags[REPARSE_TAG] == reparse_id
        assert sorted(backfill.partition_names) == sorted(partitions)
    finally:
        stop_pid(webserver.pid)
