"""Drive inbound feeds end to end, on a stack of its own, driven by `credflow sync` in-process.

Every scenario runs for each of the three default feeds (contact tracing, NSSS, SPL): sheets are
uploaded to the feed's inbound folder on the local Drive server, `sync` runs the feed sensors and
the runs they request, and the assertions read what a user would: the SQL table and its history,
the summary file in the outbound folder, the run's failure message, the check's result, the
webhook message a local HTTP server received.
"""

from __future__ import annotations

import datetime as dt
import json
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import dagster as dg
import pytest
import sqlalchemy as sa

from credflow_assets import drive_feeds
from credflow_assets.common.flow import REPARSE_TAG
from credflow_assets.config import NotificationsConfig, load_config
from credflow_assets.definitions import build_definitions, failure_notifications
from credflow_assets.drive_feeds.names import (
    SUMMARY_INBOUND_ID,
    SUMMARY_INBOUND_REVISION,
    feed_partitions,
    partition_key,
    records_key,
    summary_key,
)
from credflow_assets.drive_feeds.store import FeedTables
from credflow_assets.drive_feeds.summary import find_summary, parse_summary
from credflow_assets.drive_feeds.validation import build_plan
from credflow_assets.local.seed_drive_feeds import (
    CSV_MIME,
    XLSX_MIME,
    columns_of,
    header_for,
    sample_rows,
    seed_drive_feeds,
    write_csv,
    write_xlsx,
)
from credflow_assets.resources.drive import DriveResource
from credflow_assets.resources.from_config import build_resources
from credflow_assets.cli.sync import sync
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

FEEDS = ["contact_tracing", "nsss", "spl"]
FLOW_RESOURCES = ("drive", "tables_db", "notifier", "s3")
WEBHOOK_ENV = "CREDFLOW_TEST_DRIVE_FEEDS_WEBHOOK"


class _Webhook(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802 (http.server's naming)
        body = self.rfile.read(int(self.headers.get("Content-Length", 0)))
        self.server.received.append(
            {"path": self.path, "content_type": self.headers.get("Content-Type"),
             "body": json.loads(body)})
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *args) -> None:
        pass


@pytest.fixture(scope="module")
def webhook():
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Webhook)
    server.received = []
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


@pytest.fixture(scope="module")
def flow(tmp_path_factory, webhook):
    """A stack of its own; failures go to the local webhook; the feed sensors only."""
    home = tmp_path_factory.mktemp("drive_feeds") / "home"
    config = load_config(DEFAULT_CONFIG)
    config = config.model_copy(update={"notifications": NotificationsConfig.model_validate(
        {"webhook_url": {"env": WEBHOOK_ENV}})})
    webhook_url = f"http://127.0.0.1:{webhook.server_port}/hooks/credflow"
    with running_stack(home, config=config, extra_env={WEBHOOK_ENV: webhook_url}) as (
            state, config, variables):
        feed_defs = drive_feeds.build_defs(config)
        # The flow with the resources it uses; test_the_flow_merges_into_the_code_location
        # checks the full merge.
        resources = build_resources(config)
        defs = dg.Definitions.merge(
            dg.Definitions(resources={key: resources[key] for key in FLOW_RESOURCES},
                           sensors=[failure_notifications()]),
            feed_defs)
        drive = DriveResource(api_url=variables["CREDFLOW_DRIVE_URL"],
                              token=variables["CREDFLOW_DRIVE_TOKEN"])
        engine = sa.create_engine(variables["CREDFLOW_TABLES_DB_URL"])
        instance = dg.DagsterInstance.from_config(str(state.dagster_home))
        try:
            yield {
                "config": config, "defs": defs, "drive": drive, "engine": engine,
                "instance": instance, "webhook": webhook,
                "feeds": {feed.name: feed for feed in config.feeds},
            }
        finally:
            instance.dispose()
            engine.dispose()


# -- helpers ------------------------------------------------------------------------------------

def run_sync(flow):
    return sync(flow["defs"], flow["instance"], progress=lambda line: None)


def upload(flow, feed: str, path: Path, name: str | None = None) -> dict:
    mime = XLSX_MIME if path.suffix == ".xlsx" else CSV_MIME
    return flow["drive"].upload_file(path, name or path.name,
                                     flow["feeds"][feed].inbound_folder_id, mime_type=mime)


def key_of(feed: str, file: dict) -> str:
    return partition_key(feed, file["id"], file["md5Checksum"], file["name"])


def outcome(report, feed: str, file: dict):
    runs = [run for run in report.runs if run.partition == key_of(feed, file)]
    assert len(runs) == 1, f"expected one run for {file['name']}, got {report.runs}"
    return runs[0]


def rows_by_id(flow, feed: str, ids) -> dict:
    tables = FeedTables(build_plan(flow["feeds"][feed]))
    tables.ensure(flow["engine"])
    id_column = tables.plan.id_column
    with flow["engine"].connect() as connection:
        rows = connection.execute(
            sa.select(tables.records).where(tables.records.c[id_column].in_(list(ids)))
        ).mappings().all()
    return {row[id_column]: dict(row) for row in rows}


def history_of(flow, feed: str, ids) -> list[dict]:
    tables = FeedTables(build_plan(flow["feeds"][feed]))
    tables.ensure(flow["engine"])
    with flow["engine"].connect() as connection:
        rows = connection.execute(
            sa.select(tables.history)
            .where(tables.history.c[tables.plan.id_column].in_(list(ids)))
            .order_by(tables.history.c.change_id)
        ).mappings().all()
    return [dict(row) for row in rows]


def summary_of(flow, feed: str, file: dict, tmp_path: Path) -> tuple[dict, dict]:
    summaries = find_summary(flow["drive"], flow["feeds"][feed], file["id"], file["md5Checksum"])
    assert len(summaries) == 1, f"{len(summaries)} summaries for {file['name']}"
    local = flow["drive"].download_file(summaries[0]["id"], tmp_path / f"{file['id']}.txt")
    return summaries[0], parse_summary(local.read_text(encoding="utf-8"))


def materialization(flow, key: dg.AssetKey, partition: str):
    records = flow["instance"].fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1,
        ascending=False).records
    return records[0].asset_materialization if records else None


def check_evaluations(flow, run_id: str) -> list:
    return [event.dagster_event.event_specific_data for event in flow["instance"].all_logs(
        run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]


def ids_of(feed_config, rows) -> list[str]:
    return [row[feed_config.id_column] for row in rows]


def birth_date(feed_config, text: str) -> dt.date:
    return dt.datetime.strptime(text, feed_config.date_formats["date_of_birth"]).date()


# -- scenarios, for each feed -------------------------------------------------------------------

@pytest.mark.parametrize("feed", FEEDS)
def test_a_good_file_is_upserted_and_summarized(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    rows = sample_rows(config, 30, start=1000)
    file = upload(flow, feed, write_csv(tmp_path / f"{feed} good.csv", config, rows))

    report = run_sync(flow)

    run = outcome(report, feed, file)
    assert run.success, run.error
    stored = rows_by_id(flow, feed, ids_of(config, rows))
    assert len(stored) == 30
    first = stored[rows[0][config.id_column]]
    assert first["date_of_birth"] == birth_date(config, rows[0]["date_of_birth"])
    assert first["last_name"] == rows[0]["last_name"]
    assert (first["source_file_id"], first["source_revision"]) == (file["id"], file["md5Checksum"])

    summary, parsed = summary_of(flow, feed, file, tmp_path)
    assert summary["parents"] == [config.outbound_folder_id]
    assert summary["appProperties"][SUMMARY_INBOUND_ID] == file["id"]
    assert summary["appProperties"][SUMMARY_INBOUND_REVISION] == file["md5Checksum"]
    assert parsed["counts"] == {"rows read": 30, "inserted": 30, "updated": 0, "unchanged": 0,
                                "kept as a later-modified file wrote them": 0,
                                "rejected": 0, "blank rows skipped": 0,
                                "change-history rows": 0}

    metadata = materialization(flow, records_key(feed), key_of(feed, file)).metadata
    schema = metadata["dagster/column_schema"].schema
    assert [column.name for column in schema.columns][:len(columns_of(config))] == columns_of(config)
    id_column = next(c for c in schema.columns if c.name == config.id_column)
    assert id_column.constraints.unique and not id_column.constraints.nullable
    assert metadata["inserted"].value == 30 and metadata["rejected"].value == 0
    assert metadata["dagster/partition_row_count"].value == 30
    [evaluation] = check_evaluations(flow, run.run_id)
    assert evaluation.passed and evaluation.check_name == "pandera_schema"


@pytest.mark.parametrize("feed", FEEDS)
def test_a_renamed_header_fails_the_file_before_anything_is_written(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    rows = sample_rows(config, 5, start=2000)
    name = f"{feed} renamed header.csv"
    file = upload(flow, feed, write_csv(tmp_path / name, config, rows,
                                        headers={"date_of_birth": "DOB"}))
    received_before = len(flow["webhook"].received)

    report = run_sync(flow)

    run = outcome(report, feed, file)
    assert not run.success
    assert f"feed {feed}" in run.error and name in run.error
    assert "missing column(s) date_of_birth" in run.error
    assert "unexpected column(s) 'DOB'" in run.error
    assert rows_by_id(flow, feed, ids_of(config, rows)) == {}
    assert find_summary(flow["drive"], config, file["id"], file["md5Checksum"]) == []
    [evaluation] = check_evaluations(flow, run.run_id)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.ERROR
    assert evaluation.blocking
    assert evaluation.metadata["missing_columns"].value == ["date_of_birth"]
    assert evaluation.metadata["unexpected_columns"].value == ["DOB"]
    # The notifier's webhook got a Slack-compatible message naming the feed, file and cause.
    messages = flow["webhook"].received[received_before:]
    assert len(messages) == 1
    assert messages[0]["path"] == "/hooks/credflow"
    assert messages[0]["content_type"] == "application/json"
    text = messages[0]["body"]["text"]
    assert f"drive_feed_{feed}_job" in text and key_of(feed, file) in text
    assert name in text and "date_of_birth" in text


@pytest.mark.parametrize("feed", FEEDS)
def test_bad_dates_and_empty_ids_reject_only_their_rows(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    rows = sample_rows(config, 20, start=3000)
    rows[4]["date_of_birth"] = "31/02/1980"  # row 6 of the sheet
    empty_id_row = rows[9][config.id_column]
    rows[9][config.id_column] = ""  # row 11
    rows[12]["date_of_birth"] = "not a date"  # row 14
    file = upload(flow, feed, write_csv(tmp_path / f"{feed} with errors.csv", config, rows))

    report = run_sync(flow)

    run = outcome(report, feed, file)
    assert run.success, run.error
    good_ids = [row[config.id_column] for i, row in enumerate(rows) if i not in (4, 9, 12)]
    assert set(rows_by_id(flow, feed, [*good_ids, empty_id_row, rows[4][config.id_column],
                                       rows[12][config.id_column]])) == set(good_ids)
    _summary, parsed = summary_of(flow, feed, file, tmp_path)
    assert parsed["counts"]["inserted"] == 17 and parsed["counts"]["rejected"] == 3
    rejected = {(int(r["row"]), r["column"]): r for r in parsed["rejected_rows"]}
    assert set(rejected) == {(6, "date_of_birth"), (11, config.id_column), (14, "date_of_birth")}
    assert rejected[(6, "date_of_birth")]["reason"].startswith("not a date in the format")
    assert rejected[(6, "date_of_birth")]["value"] == "31/02/1980"
    assert rejected[(11, config.id_column)]["reason"] == "empty"
    [evaluation] = check_evaluations(flow, run.run_id)
    assert not evaluation.passed and evaluation.severity == dg.AssetCheckSeverity.WARN
    assert evaluation.metadata["rejected_rows"].value == 3
    # Row numbers, columns and kinds of problem only: no cell values in Dagster's records.
    assert "31/02/1980" not in evaluation.metadata["sample"].value


@pytest.mark.parametrize("feed", FEEDS)
def test_the_same_file_uploaded_twice_adds_no_duplicate_rows(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    rows = sample_rows(config, 15, start=4000)
    path = write_csv(tmp_path / f"{feed} twice.csv", config, rows)
    first = upload(flow, feed, path)
    second = upload(flow, feed, path)  # same bytes, another Drive file
    assert first["id"] != second["id"] and first["md5Checksum"] == second["md5Checksum"]

    report = run_sync(flow)

    assert outcome(report, feed, first).success and outcome(report, feed, second).success
    assert len(rows_by_id(flow, feed, ids_of(config, rows))) == 15
    counts = [summary_of(flow, feed, file, tmp_path)[1]["counts"] for file in (first, second)]
    assert (counts[0]["inserted"], counts[1]["inserted"], counts[1]["unchanged"]) == (15, 0, 15)
    assert history_of(flow, feed, ids_of(config, rows)) == []

    # The same bytes again as a new revision of the same file: same md5, nothing to do.
    flow["drive"].update_file(first["id"], local_path=path, mime_type=CSV_MIME)
    assert run_sync(flow).runs == []


@pytest.mark.parametrize("feed", FEEDS)
def test_a_corrected_reupload_updates_changed_rows_and_keeps_history(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    original = sample_rows(config, 10, start=5000)
    file = upload(flow, feed, write_csv(tmp_path / f"{feed} v1.csv", config, original))
    assert outcome(run_sync(flow), feed, file).success
    before = rows_by_id(flow, feed, ids_of(config, original))

    corrected = original[:5] + sample_rows(config, 5, start=5005, variant=1)  # new phone, address
    corrected.append(sample_rows(config, 1, start=5010)[0])  # and one new resident
    updated = flow["drive"].update_file(
        file["id"], local_path=write_csv(tmp_path / f"{feed} v2.csv", config, corrected),
        mime_type=CSV_MIME)
    assert updated["md5Checksum"] != file["md5Checksum"]

    report = run_sync(flow)

    assert outcome(report, feed, updated).success
    _summary, parsed = summary_of(flow, feed, updated, tmp_path)
    assert {k: parsed["counts"][k] for k in ("inserted", "updated", "unchanged", "rejected")} == \
        {"inserted": 1, "updated": 5, "unchanged": 5, "rejected": 0}
    after = rows_by_id(flow, feed, ids_of(config, corrected))
    for row in original[:5]:  # unchanged rows are not touched
        assert after[row[config.id_column]] == before[row[config.id_column]]
    for row in corrected[5:10]:
        stored = after[row[config.id_column]]
        assert stored["phone_number"] == row["phone_number"]
        assert stored["source_revision"] == updated["md5Checksum"]
        assert stored["first_ingested_at"] == before[row[config.id_column]]["first_ingested_at"]
    history = history_of(flow, feed, ids_of(config, corrected))
    assert [h[config.id_column] for h in history] == ids_of(config, corrected[5:10])
    change = json.loads(history[0]["changes"])
    assert change["phone_number"] == {"from": original[5]["phone_number"],
                                      "to": corrected[5]["phone_number"]}
    assert history[0]["source_file_id"] == file["id"]
    assert history[0]["source_revision"] == updated["md5Checksum"]
    assert history[0]["source_file_name"] == file["name"]
    assert "phone_number" in history[0]["changed_columns"].split(",")


@pytest.mark.parametrize("feed", FEEDS)
def test_two_files_with_the_same_name_on_one_day_are_both_processed(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    morning = sample_rows(config, 5, start=6000)
    afternoon = sample_rows(config, 5, start=6100)
    (tmp_path / "am").mkdir()
    (tmp_path / "pm").mkdir()
    first = upload(flow, feed, write_csv(tmp_path / "am" / "referrals.csv", config, morning))
    second = upload(flow, feed, write_csv(tmp_path / "pm" / "referrals.csv", config, afternoon))
    assert first["name"] == second["name"] == "referrals.csv"

    report = run_sync(flow)

    assert outcome(report, feed, first).success and outcome(report, feed, second).success
    assert len(rows_by_id(flow, feed, ids_of(config, morning + afternoon))) == 10
    for file in (first, second):
        assert summary_of(flow, feed, file, tmp_path)[1]["counts"]["inserted"] == 5


def test_a_google_sheet_is_exported_as_csv_and_keyed_by_modified_time(flow, tmp_path):
    feed = "spl"
    config = flow["feeds"][feed]
    rows = sample_rows(config, 8, start=7000)
    sheet = flow["drive"].upload_file(
        write_csv(tmp_path / "spl referrals (sheet).csv", config, rows), "spl referrals",
        config.inbound_folder_id, mime_type=CSV_MIME,
        convert_to="application/vnd.google-apps.spreadsheet")

    report = run_sync(flow)

    runs = [run for run in report.runs if f"/{sheet['id']}/" in (run.partition or "")]
    assert len(runs) == 1 and runs[0].success, runs
    assert len(rows_by_id(flow, feed, ids_of(config, rows))) == 8
    assert run_sync(flow).runs == []  # the same modifiedTime is the same revision


@pytest.mark.parametrize("feed", FEEDS)
def test_an_xlsx_file_with_date_cells(flow, feed, tmp_path):
    config = flow["feeds"][feed]
    rows = sample_rows(config, 12, start=7000, dates_as_text=False)
    rows[2]["date_of_birth"] = rows[2]["date_of_birth"].strftime(
        config.date_formats["date_of_birth"])  # typed as text in the feed's format
    file = upload(flow, feed, write_xlsx(tmp_path / f"{feed} referrals.xlsx", config, rows))

    report = run_sync(flow)

    assert outcome(report, feed, file).success
    stored = rows_by_id(flow, feed, ids_of(config, rows))
    assert len(stored) == 12
    assert stored[rows[0][config.id_column]]["date_of_birth"] == rows[0]["date_of_birth"]
    assert stored[rows[2][config.id_column]]["date_of_birth"] == birth_date(
        config, rows[2]["date_of_birth"])


# -- processing state, sensors, volume, demo -------------------------------------------------------

def test_deleting_a_summary_does_not_cause_reprocessing(flow, tmp_path):
    feed = "nsss"
    config = flow["feeds"][feed]
    file = upload(flow, feed, write_csv(tmp_path / "x.csv", config,
                                        sample_rows(config, 3, start=8000)))
    assert outcome(run_sync(flow), feed, file).success
    summary, _ = summary_of(flow, feed, file, tmp_path)
    flow["drive"].delete_file(summary["id"])

    assert run_sync(flow).runs == []
    assert find_summary(flow["drive"], config, file["id"], file["md5Checksum"]) == []


def test_files_with_equal_modified_times_are_each_processed_once(flow, tmp_path):
    feed = "spl"
    config = flow["feeds"][feed]
    files = [upload(flow, feed, write_csv(tmp_path / f"tie{i}.csv", config,
                                          sample_rows(config, 2, start=8100 + 10 * i)))
             for i in range(3)]
    # Drive keeps millisecond times; several uploads in one millisecond is what this models.
    same = files[0]["modifiedTime"]
    for file in files[1:]:
        flow["drive"]._files().update(fileId=file["id"], body={"modifiedTime": same}).execute()

    report = run_sync(flow)

    assert sorted(run.partition for run in report.runs) == sorted(key_of(feed, f) for f in files)
    assert all(run.success for run in report.runs)
    later = upload(flow, feed, write_csv(tmp_path / "later.csv", config,
                                         sample_rows(config, 2, start=8200)))
    report = run_sync(flow)
    assert [run.partition for run in report.runs] == [key_of(feed, later)]


def test_a_200k_row_file_ingests(flow, tmp_path):
    feed = "contact_tracing"
    config = flow["feeds"][feed]
    columns = columns_of(config)
    path = tmp_path / "big.csv"
    with open(path, "w", encoding="utf-8", newline="") as handle:
        import csv

        writer = csv.writer(handle)
        writer.writerow([header_for(column) for column in columns])
        for start in range(0, 200_000, 50_000):
            for row in sample_rows(config, 50_000, start=100_000 + start):
                writer.writerow([row[column] for column in columns])
    file = upload(flow, feed, path)
    started = time.monotonic()

    report = run_sync(flow)

    run = outcome(report, feed, file)
    assert run.success, run.error
    metadata = materialization(flow, records_key(feed), key_of(feed, file)).metadata
    assert (metadata["rows_read"].value, metadata["inserted"].value) == (200_000, 200_000)
    assert metadata["dagster/row_count"].value >= 200_000
    assert time.monotonic() - started < 60
    with flow["engine"].connect() as connection:
        count = connection.execute(sa.text(
            f"SELECT count(*) FROM {config.table} WHERE ctas_id >= 'CTAS0100000'")).scalar_one()
    assert count == 200_000
    summary = materialization(flow, summary_key(feed), key_of(feed, file)).metadata
    assert summary["inserted"].value == 200_000


def test_the_demo_seed_is_idempotent_and_its_files_go_through(flow):
    first = seed_drive_feeds(flow["config"], flow["drive"])
    second = seed_drive_feeds(flow["config"], flow["drive"])
    assert len(first) == len(second) == 10
    assert all("uploaded" in line for line in first)
    assert all("already" in line for line in second)

    report = run_sync(flow)

    assert len(report.runs) == 10 and all(run.success for run in report.runs)
    assert run_sync(flow).runs == []
    with flow["engine"].connect() as connection:
        processed = connection.execute(sa.text(
            "SELECT file_name, inserted, updated, unchanged, rejected FROM drive_feed_files "
            "WHERE feed = 'nsss' AND file_name LIKE 'nsss referrals 2020-11-0%'")).all()
    counts = {row.file_name: tuple(row[1:]) for row in processed}
    assert counts == {
        "nsss referrals 2020-11-02.csv": (40, 0, 0, 0),
        "nsss referrals 2020-11-02 (corrected).csv": (0, 5, 35, 0),
        "nsss referrals 2020-11-03.csv": (10, 0, 0, 2),
        "nsss referrals 2020-11-04.xlsx": (25, 0, 0, 0),
    }


def test_the_flow_merges_into_the_code_location(flow):
    defs = build_definitions(flow["config"])
    dg.Definitions.validate_loadable(defs)
    repository = defs.get_repository_def()
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert {f"{kind}/{feed}_{suffix}" for feed in FEEDS for kind, suffix in (
        ("drive/inbound", "sheet"), ("tables", "records"), ("drive/outbound", "summary"))} <= keys
    assert {f"drive_feed_{feed}_job" for feed in FEEDS} <= set(repository.job_names)
    assert {f"drive_feed_{feed}_inbound_sensor" for feed in FEEDS} | {
        "failure_notifications"} <= {sensor.name for sensor in repository.sensor_defs}


def test_a_file_that_is_not_a_sheet_fails_naming_the_feed_and_file(flow, tmp_path):
    path = tmp_path / "scan.pdf"
    path.write_bytes(b"%PDF-1.4 not a sheet")
    file = flow["drive"].upload_file(path, "scan.pdf", flow["feeds"]["spl"].inbound_folder_id,
                                     mime_type="application/pdf")

    run = outcome(run_sync(flow), "spl", file)

    assert not run.success
    assert run.error.endswith(f"feed spl: file 'scan.pdf' (Drive id {file['id']}, revision "
                         f"{file['md5Checksum']}): unsupported file type .pdf: expected CSV, "
                         "XLSX or a Google Sheet")


def test_a_revision_replaced_before_its_run_is_skipped_not_misread(flow, tmp_path):
    feed = "contact_tracing"
    config = flow["feeds"][feed]
    rows = sample_rows(config, 3, start=9000)
    file = upload(flow, feed, write_csv(tmp_path / "v1.csv", config, rows))
    stale = key_of(feed, file)
    flow["drive"].update_file(file["id"], mime_type=CSV_MIME, local_path=write_csv(
        tmp_path / "v2.csv", config, sample_rows(config, 3, start=9000, variant=1)))
    # The sensor saw v1; v2 replaced it before v1's run started.
    flow["instance"].add_dynamic_partitions(feed_partitions(feed).name, [stale])

    result = flow["defs"].resolve_job_def(f"drive_feed_{feed}_job").execute_in_process(
        partition_key=stale, instance=flow["instance"])

    assert result.success
    assert rows_by_id(flow, feed, ids_of(config, rows)) == {}
    assert "superseded" in materialization(flow, records_key(feed), stale).metadata[
        "skipped"].value
    report = run_sync(flow)  # v2 is its own partition, processed as usual
    assert [run.partition for run in report.runs if run.success] == [
        key_of(feed, flow["drive"].get_file(file["id"]))]


def test_feed_status_names_counts_and_files_only(flow):
    from credflow_assets.drive_feeds.status import feed_status_lines

    lines = feed_status_lines(flow["config"], flow["engine"], flow["drive"])
    text = "\n".join(lines)
    assert lines[0].startswith("contact_tracing: ") and "row(s) in contact_tracing_records" in text
    assert "summary file(s)" in text
    assert "@example.org" not in text and "Adeyemi" not in text


# -- the changes feed ----------------------------------------------------------------------------

def sensor_name(feed: str) -> str:
    return f"drive_feed_{feed}_inbound_sensor"


def sync_feed(flow, feed: str):
    """One feed's sensor only, and its runs: as a daemon tick and its runs would."""
    return sync(flow["defs"], flow["instance"], progress=lambda line: None,
                sensor_names=[sensor_name(feed)])


def stored_cursor(flow, feed: str) -> str:
    from credflow_assets.common.dagster_compat import sensor_cursor

    return sensor_cursor(flow["instance"], sensor_name(feed))


def tick(flow, feed: str, cursor: str | None) -> dg.SensorResult:
    """Evaluate the feed's sensor from `cursor`, as the daemon would; nothing is stored."""
    repository = flow["defs"].get_repository_def()
    sensor = repository.get_sensor_def(sensor_name(feed))
    resources = repository.get_top_level_resources()
    with dg.build_sensor_context(instance=flow["instance"], cursor=cursor, resources={
            key: resources[key] for key in sensor.required_resource_keys}) as context:
        return sensor(context)


def drive_requests(flow, action) -> int:
    """How many Drive API calls `action` made (the local server's request counter)."""
    from credflow_assets.local import drive_server

    url, token = flow["drive"].api_url, flow["drive"].token
    drive_server.set_faults(url, token)  # no faults; the counter starts at 0
    action()
    return drive_server.fault_state(url, token)["requests"]


def run_failure(flow, feed: str, request: dg.RunRequest) -> str:
    """The failure `credflow sync` shows for the requested run, executed in-process."""
    from credflow_assets.cli.sync import failure_reason

    flow["instance"].add_dynamic_partitions(feed_partitions(feed).name, [request.partition_key])
    result = flow["defs"].resolve_job_def(f"drive_feed_{feed}_job").execute_in_process(
        partition_key=request.partition_key, instance=flow["instance"], tags=request.tags,
        raise_on_error=False)
    assert not result.success
    return failure_reason(result)


def test_a_new_file_and_a_new_revision_each_make_one_run_and_a_rename_none(flow, tmp_path):
    feed = "nsss"
    config = flow["feeds"][feed]
    sync_feed(flow, feed)  # whatever earlier tests left
    file = upload(flow, feed, write_csv(tmp_path / "v1.csv", config,
                                        sample_rows(config, 2, start=7000)))
    assert [run.partition for run in sync_feed(flow, feed).runs] == [key_of(feed, file)]

    revised = flow["drive"].update_file(file["id"], mime_type=CSV_MIME, local_path=write_csv(
        tmp_path / "v2.csv", config, sample_rows(config, 2, start=7000, variant=1)))
    report = sync_feed(flow, feed)
    assert [run.partition for run in report.runs] == [key_of(feed, revised)]
    assert all(run.success for run in report.runs)

    flow["drive"].update_file(file["id"], name="renamed.csv")
    assert sync_feed(flow, feed).runs == []
    assert json.loads(stored_cursor(flow, feed))["listing"] is None  # on the changes feed


def test_a_tick_with_no_changes_makes_one_changes_list_call(flow):
    feed = "spl"
    sync_feed(flow, feed)
    sync_feed(flow, feed)  # the first one's runs wrote summaries: changes of their own
    before = stored_cursor(flow, feed)
    calls = drive_requests(flow, lambda: tick(flow, feed, before))
    assert calls == 1
    result = tick(flow, feed, before)
    assert result.run_requests == [] and result.cursor == before


def test_a_restarted_sensor_misses_nothing_and_duplicates_nothing(flow, tmp_path):
    feed = "contact_tracing"
    config = flow["feeds"][feed]
    sync_feed(flow, feed)
    stale = stored_cursor(flow, feed)
    first = upload(flow, feed, write_csv(tmp_path / "a.csv", config,
                                         sample_rows(config, 2, start=7100)))
    assert [run.partition for run in sync_feed(flow, feed).runs] == [key_of(feed, first)]
    second = upload(flow, feed, write_csv(tmp_path / "b.csv", config,
                                          sample_rows(config, 2, start=7200)))
    # A daemon that launched the first run and died before storing its cursor restarts from
    # the older one: it reads both changes again and requests only the second file.
    result = tick(flow, feed, stale)
    assert [request.partition_key for request in result.run_requests] == [key_of(feed, second)]
    assert [run.partition for run in sync_feed(flow, feed).runs] == [key_of(feed, second)]
    assert sync_feed(flow, feed).runs == []


def test_a_file_trashed_before_it_was_processed_is_noted_and_its_run_fails(flow, tmp_path):
    feed = "nsss"
    config = flow["feeds"][feed]
    sync_feed(flow, feed)
    cursor = stored_cursor(flow, feed)
    file = upload(flow, feed, write_csv(tmp_path / "t.csv", config,
                                        sample_rows(config, 2, start=7300)))
    [request] = tick(flow, feed, cursor).run_requests
    flow["drive"]._files().update(fileId=file["id"], body={"trashed": True}).execute()

    later = tick(flow, feed, cursor)  # the change now says: trashed
    assert later.run_requests == []
    assert later.skip_reason.skip_message == (
        "1 inbound file(s) left the folder before they were processed (see the tick's log)")
    message = run_failure(flow, feed, request)
    assert message == (f"feed {feed}: Drive file {file['id']} (revision {file['md5Checksum']}):"
                       " the file was trashed before it was processed; nothing was read or "
                       "written")
    assert rows_by_id(flow, feed, ids_of(config, sample_rows(config, 2, start=7300))) == {}


def test_a_file_moved_out_before_it_was_processed_fails_its_queued_run(flow, tmp_path):
    feed = "spl"
    config = flow["feeds"][feed]
    sync_feed(flow, feed)
    file = upload(flow, feed, write_csv(tmp_path / "m.csv", config,
                                        sample_rows(config, 2, start=7400)))
    cursor = stored_cursor(flow, feed)
    [request] = tick(flow, feed, cursor).run_requests
    # Its run is made but not started (as a queued one, without the daemon's origin).
    queued = flow["instance"].add_run(dg.DagsterRun(
        job_name=f"drive_feed_{feed}_job", status=dg.DagsterRunStatus.NOT_STARTED,
        tags={**request.tags, "dagster/partition": request.partition_key}))
    flow["drive"].update_file(file["id"], add_parents=config.outbound_folder_id,
                              remove_parents=config.inbound_folder_id)
    try:
        later = tick(flow, feed, cursor)  # the change now says: moved out, run queued
        assert later.run_requests == [] and later.skip_reason.skip_message.startswith(
            "1 inbound file(s) left the folder before they were processed")
        assert "the file was moved out of the inbound folder before it was processed" in \
            run_failure(flow, feed, request)
    finally:
        flow["instance"].delete_run(queued.run_id)
    assert sync_feed(flow, feed).runs == []  # out of the folder: not the feed's
    # Asked for by hand (`credflow reparse`), the file is read where it is now.
    reparsed = flow["defs"].resolve_job_def(f"drive_feed_{feed}_job").execute_in_process(
        partition_key=request.partition_key, instance=flow["instance"],
        tags={**request.tags, REPARSE_TAG: "by-hand"}, raise_on_error=False)
    assert reparsed.success
    assert set(rows_by_id(flow, feed, ids_of(config, sample_rows(config, 2, start=7400)))) == \
        set(ids_of(config, sample_rows(config, 2, start=7400)))


def test_a_page_token_drive_refuses_falls_back_to_listing_the_folder(flow, tmp_path):
    feed = "contact_tracing"
    config = flow["feeds"][feed]
    sync_feed(flow, feed)
    file = upload(flow, feed, write_csv(tmp_path / "f.csv", config,
                                        sample_rows(config, 2, start=7500)))

    result = tick(flow, feed, json.dumps({"token": "not-a-token", "listing": None}))

    assert [request.partition_key for request in result.run_requests] == [key_of(feed, file)]
    token = json.loads(result.cursor)["token"]
    assert token.isdigit() and token == flow["drive"].start_page_token()


def test_what_a_change_means_to_a_feed_and_an_older_cursor_carries_over():
    from credflow_assets.drive_feeds.sensors import FeedCursor, Gone, WatchCursor, sort_change

    file = {"id": "f", "mimeType": CSV_MIME, "parents": ["in"], "trashed": False}
    assert sort_change({"fileId": "f", "removed": False, "file": file}, "in") is file
    assert sort_change({"fileId": "f", "removed": False, "file": {**file, "trashed": True}},
                       "in") == Gone("f", "trashed")
    assert sort_change({"fileId": "f", "removed": False, "file": {**file, "parents": ["out"]}},
                       "in") == Gone("f", "moved out of the inbound folder")
    assert sort_change({"fileId": "f", "removed": True}, "in") == Gone("f", "deleted from Drive")
    assert sort_change({"fileId": "d", "removed": False, "file": {
        **file, "mimeType": "application/vnd.google-apps.folder"}}, "in") is None
    # The modifiedTime sensor's cursor: its listing goes on, under a token taken next tick.
    old = json.dumps({"newest": "2026-12-01T10:00:00.000Z", "seen": {"f": "x"}})
    assert WatchCursor.from_json(old) == WatchCursor(None, FeedCursor(
        "2026-12-01T10:00:00.000Z", {"f": "x"}))
    assert WatchCursor.from_json(None) == WatchCursor(None, FeedCursor())
    steady = WatchCursor("42", None)
    assert WatchCursor.from_json(steady.to_json()) == steady
