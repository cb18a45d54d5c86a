"""Error reports of Drive feed files and provider files, end to end on a stack of their own.

Files are put where their users put them (a sheet in a feed's inbound Drive folder, a file in a
provider's SFTP outbox), `credflow sync` runs them in-process, and the assertions read what a
person would: the error report in the logs bucket (through the materialization's or the
failure's http link), the feed's rejections table, `credflow logs --errors PARTITION`, and the
run's events and parse log, which must not hold a rejected value.
"""

from __future__ import annotations

import csv
import io
import tarfile
import urllib.request
from pathlib import Path

import boto3
import dagster as dg
import pytest
import sqlalchemy as sa
from click.testing import CliRunner

from credflow_assets import drive_feeds, provider_feeds
from credflow_assets.cli.main import main
from credflow_assets.cli.sync import sync
from credflow_assets.common.parse_logs import read_log
from credflow_assets.drive_feeds.names import partition_key as feed_partition_key
from credflow_assets.drive_feeds.names import records_key
from credflow_assets.drive_feeds.store import rejections_table
from credflow_assets.local import seed_provider_feeds as seed
from credflow_assets.local.gpg_keys import encrypt_file
from credflow_assets.local.seed_drive_feeds import CSV_MIME, sample_rows, write_csv
from credflow_assets.provider_feeds.names import landed_asset_key
from credflow_assets.provider_feeds.names import partition_key as provider_partition_key
from credflow_assets.provider_feeds.settings import ProviderFeedsSettings
from credflow_assets.resources.drive import DriveResource
from credflow_assets.resources.from_config import build_resources
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

FEED = "contact_tracing"
PROVIDER = "acme_health"
OUTBOX = "acme_health/outbox"


@pytest.fixture(scope="module")
def flows(tmp_path_factory):
    """One stack; the Drive feeds and the provider feeds with the resources they use."""
    base = tmp_path_factory.mktemp("error_reports_flows")
    with running_stack(base / "home") as (state, config, variables):
        resources = build_resources(config)
        shared = {key: resource for key, resource in resources.items()
                  if key in {"drive", "tables_db", "s3"} or key.startswith("sftp_")}
        settings = ProviderFeedsSettings(bucket=config.buckets.provider_data,
                                         work_dir=str(base / "scratch"),
                                         logs_bucket=config.buckets.logs, settle_seconds=0.3)
        defs = dg.Definitions.merge(
            dg.Definitions(resources=shared), drive_feeds.build_defs(config),
            provider_feeds.build_defs(config, settings=settings))
        engine = sa.create_engine(variables["CREDFLOW_TABLES_DB_URL"])
        (base / "dagster").mkdir()
        try:
            with dg.instance_for_test(temp_dir=str(base / "dagster")) as instance:
                yield {
                    "base": base, "config": config, "env": variables, "defs": defs,
                    "instance": instance, "engine": engine,
                    "drive": DriveResource(api_url=variables["CREDFLOW_DRIVE_URL"],
                                           token=variables["CREDFLOW_DRIVE_TOKEN"]),
                    "s3": boto3.client("s3", endpoint_url=variables["AWS_ENDPOINT_URL"]),
                    "logs": config.buckets.logs,
                    "sftp_root": Path(state.services["sshd"]["root"]),
                }
        finally:
            engine.dispose()


# -- helpers ------------------------------------------------------------------------------------

def run_sync(flows):
    report = sync(flows["defs"], flows["instance"], progress=lambda line: None)
    assert report.sensor_errors == {}
    return report


def the_run(report, partition: str):
    [run] = [run for run in report.runs if run.partition == partition]
    return run


def fetched(url: str) -> str:
    """What a person's browser gets from the link."""
    with urllib.request.urlopen(url, timeout=10) as response:
        assert response.status == 200
        return response.read().decode("utf-8")


def report_rows(text: str) -> list[tuple[str, str, str, str]]:
    lines = list(csv.reader(io.StringIO(text)))
    assert lines[0] == ["row", "column", "rule", "value"]
    return [tuple(line) for line in lines[1:]]


def event_log_text(flows, run_id: str) -> str:
    """Every event the instance stores of the run, serialized: messages and all metadata."""
    return "\n".join(dg.serialize_value(entry) for entry in flows["instance"].all_logs(run_id))


def latest_metadata(flows, key: dg.AssetKey, partition: str) -> dict:
    records = flows["instance"].fetch_materializations(
        dg.AssetRecordsFilter(asset_key=key, asset_partitions=[partition]), limit=1,
        ascending=False).records
    assert records, f"no materialization of {key.to_user_string()} for {partition}"
    return {name: value.value for name, value in records[0].asset_materialization.metadata.items()}


def check_metadata(flows, run_id: str) -> dict:
    [evaluation] = [event.dagster_event.event_specific_data for event in flows["instance"]
                    .all_logs(run_id, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)]
    return {name: value.value for name, value in evaluation.metadata.items()}


def failure_metadata(flows, run_id: str) -> dict:
    """The failed step's metadata (the `dg.Failure`'s)."""
    [event] = [record.dagster_event for record in flows["instance"].all_logs(
        run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]
    user_failure = event.event_specific_data.user_failure_data
    return {name: value.value for name, value in user_failure.metadata.items()}


def parse_log_of(flows, errors_uri: str) -> str:
    key = errors_uri.removeprefix(f"s3://{flows['logs']}/").replace(".errors.csv", ".log.gz")
    return read_log(flows["s3"], flows["logs"], key)


def printed_errors(partition: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(DEFAULT_CONFIG), "logs", "--errors",
                                       partition])
    assert result.exit_code == 0, result.output
    return result.stdout


def upload_sheet(flows, path: Path) -> tuple[dict, str]:
    file = flows["drive"].upload_file(path, path.name, feed_config(flows).inbound_folder_id,
                                      mime_type=CSV_MIME)
    return file, feed_partition_key(FEED, file["id"], file["md5Checksum"], file["name"])


def feed_config(flows):
    return next(feed for feed in flows["config"].feeds if feed.name == FEED)


def drop_encrypted(flows, name: str, data: bytes) -> str:
    """As the provider sends a file: encrypted to credflow's key, in its SFTP outbox."""
    gpg_home = flows["env"]["CREDFLOW_GPG_HOME"]
    plain = flows["base"] / f"{name}.plain"
    plain.write_bytes(data)
    target = flows["sftp_root"] / OUTBOX / name
    target.parent.mkdir(parents=True, exist_ok=True)
    encrypt_file(gpg_home, plain, target, [seed._credflow_fingerprint(gpg_home)])
    return provider_partition_key(PROVIDER, f"{OUTBOX}/{name}")


def tar_gz(members: dict[str, bytes]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as archive:
        for name, data in members.items():
            info = tarfile.TarInfo(name)
            info.size = len(data)
            archive.addfile(info, io.BytesIO(data))
    return buffer.getvalue()


# -- Drive feeds --------------------------------------------------------------------------------

def test_a_feed_files_rejected_rows_are_its_error_report_and_nowhere_else(flows, tmp_path):
    config = feed_config(flows)
    rows = sample_rows(config, 12, start=8100)
    rows[2]["date_of_birth"] = "31/02/1980"  # row 4 of the sheet (the header is row 1)
    rows[5][config.id_column] = ""  # row 7
    rows[8]["date_of_birth"] = "Quintember 3"  # row 10
    file, partition = upload_sheet(flows, write_csv(tmp_path / "with errors.csv", config, rows))

    run = the_run(run_sync(flows), partition)

    assert run.success, run.error
    metadata = latest_metadata(flows, records_key(FEED), partition)
    assert metadata["rejected"] == 3
    assert metadata["errors_uri"] == (f"s3://{flows['logs']}/parsing_logs/drive_feeds/"
                                      f"{partition}/{run.run_id}.errors.csv")
    assert metadata["errors_url"].startswith("http")
    report = fetched(metadata["errors_url"])  # the link opens the report
    lines = report_rows(report)
    with flows["engine"].connect() as connection:
        table = connection.execute(
            sa.select(rejections_table.c.row_number, rejections_table.c.column_name,
                      rejections_table.c.reason, rejections_table.c.value)
            .where(rejections_table.c.file_id == file["id"])
            .order_by(rejections_table.c.row_number, rejections_table.c.column_name)).all()
    assert lines == [(str(row), column, reason, value or "") for row, column, reason, value
                     in table]
    assert {(row, column, value) for row, column, _rule, value in lines} == {
        ("4", "date_of_birth", "31/02/1980"), ("7", config.id_column, ""),
        ("10", "date_of_birth", "Quintember 3")}
    assert dict(((row, column), rule) for row, column, rule, _ in lines)[
        ("4", "date_of_birth")].startswith("not a date in the format")
    # The check's warning links the same report.
    checked = check_metadata(flows, run.run_id)
    assert checked["errors_url"] == metadata["errors_url"]
    # The values are in the report only: not in the run's events, nor in its parse log.
    for text in (event_log_text(flows, run.run_id), parse_log_of(flows, metadata["errors_uri"])):
        assert "31/02/1980" not in text and "Quintember" not in text
    assert printed_errors(partition).splitlines() == report.splitlines()


def test_a_feed_file_with_a_wrong_header_has_a_line_per_column(flows, tmp_path):
    config = feed_config(flows)
    rows = sample_rows(config, 3, start=8200)
    path = write_csv(tmp_path / "renamed header.csv", config, rows,
                     headers={"date_of_birth": "DOB"})
    _file, partition = upload_sheet(flows, path)

    run = the_run(run_sync(flows), partition)

    assert not run.success and "missing column(s) date_of_birth" in run.error
    checked = check_metadata(flows, run.run_id)
    failed = failure_metadata(flows, run.run_id)
    assert failed["errors_url"] == checked["errors_url"]
    assert failed["errors_uri"].endswith(f"/{run.run_id}.errors.csv")
    assert report_rows(fetched(checked["errors_url"])) == [
        ("", "date_of_birth", "missing column (the feed has it)", ""),
        ("", "DOB", "unexpected column (not in the feed)", "")]


def test_a_file_that_is_not_a_sheet_has_one_line(flows, tmp_path):
    path = tmp_path / "not a sheet.csv"
    path.write_bytes(b"\x00\x01\x02 binary \xff\xfe" * 50)
    _file, partition = upload_sheet(flows, path)

    run = the_run(run_sync(flows), partition)

    assert not run.success
    [(row, column, rule, value)] = report_rows(fetched(failure_metadata(
        flows, run.run_id)["errors_url"]))
    assert (row, column, value) == ("", "", "")
    assert rule and rule in run.error  # the sentence the failure tells


# -- provider feeds -----------------------------------------------------------------------------

def test_an_unsafe_archive_member_is_a_line_linked_from_the_failure(flows):
    partition = drop_encrypted(flows, "unsafe.tar.gz.gpg", tar_gz({
        "roster.csv": b"id,name\n1,Ann\n", "../../etc/cron.d/evil": b"* * * * * root sh\n"}))

    run = the_run(run_sync(flows), partition)

    assert not run.success and "'../../etc/cron.d/evil' refused" in run.error
    failed = failure_metadata(flows, run.run_id)
    assert failed["errors_uri"] == (f"s3://{flows['logs']}/parsing_logs/provider_feeds/"
                                    f"{partition}/{run.run_id}.errors.csv")
    report = fetched(failed["errors_url"])
    assert report_rows(report) == [(
        "", "../../etc/cron.d/evil", "unsafe archive member: '..' leads outside the archive; "
        "the whole archive is refused", "../../etc/cron.d/evil")]
    assert printed_errors(partition).splitlines() == report.splitlines()


def test_a_csv_ending_inside_a_quoted_field_lands_with_its_bad_row_reported(flows):
    partition = drop_encrypted(flows, "partial.csv.gpg",
                               b'id,name\n1,Ann\n2,Bo\n3,"Cy unterminated\n')

    run = the_run(run_sync(flows), partition)

    assert run.success, run.error
    metadata = latest_metadata(flows, landed_asset_key(PROVIDER), partition)
    assert metadata["errors_uri"].endswith(f"/{run.run_id}.errors.csv")
    report = fetched(metadata["errors_url"])
    assert report_rows(report) == [
        ("3", "partial.csv", "the file ends inside an unterminated quoted field; its last row "
         "is partial", "partial.csv")]
    assert printed_errors(partition).splitlines() == report.splitlines()


def test_a_clean_provider_file_has_no_error_report(flows):
    partition = drop_encrypted(flows, "clean.csv.gpg", b"id,name\n1,Ann\n")

    run = the_run(run_sync(flows), partition)

    assert run.success, run.error
    metadata = latest_metadata(flows, landed_asset_key(PROVIDER), partition)
    assert "errors_uri" not in metadata and "errors_url" not in metadata


def test_a_member_past_the_expansion_limit_is_a_line_naming_it(flows):
    # 4 MB of zeros compress to a few KB: past 200 times the file's size (at least 1 MB).
    partition = drop_encrypted(flows, "bomb.tar.gz.gpg", tar_gz({
        "readme.csv": b"id\n1\n", "data/zeros.csv": bytes(4 * 1024 * 1024)}))

    run = the_run(run_sync(flows), partition)

    assert not run.success and "max_expansion_ratio" in run.error
    [(row, column, rule, value)] = report_rows(fetched(failure_metadata(
        flows, run.run_id)["errors_url"]))
    assert (row, column, value) == ("", "data/zeros.csv", "data/zeros.csv")
    assert "max_expansion_ratio" in rule and rule in run.error
