"""Staged CSVs → prod → Glue, end to end on a stack of its own (moto S3, SQS and Glue), driven by
`credflow sync` in-process: the sensors see the uploads, one run per staged file, blocking checks.

The tests tell one story in order (module-scoped stack and instance), as an analyst would live it.
"""

from __future__ import annotations

import csv
import io
import json
from urllib.parse import unquote
import logging

import boto3
import dagster as dg
import pytest
from click.testing import CliRunner

from credflow_assets.common.dagster_compat import sensor_cursor, store_sensor_cursor
from credflow_assets.definitions import build_definitions
from credflow_assets.resources.glue import table_columns
from credflow_assets.staged_tables.layout import partition_key_for
from credflow_assets.staged_tables.names import (
    glue_table_key,
    job_name,
    prod_file_key,
    staging_file_key,
    table_partitions,
)
from credflow_assets.cli.sync import sync
from credflow_assets_tests.conftest import DEFAULT_CONFIG, running_stack

BUCKET = "credflow-adhoc"
DATABASE = "credflow_adhoc"
CLAIMS = "claim_id,first_name,last_name,service_date,amount_usd,status"
ROWS = ["C-2001,Nicholas,Lamb,2024-01-03,120.50,paid",
        "C-2002,Erin,Adams,2024-01-09,80.00,submitted"]


@pytest.fixture(scope="module")
def flow(tmp_path_factory):
    home = tmp_path_factory.mktemp("staged_tables") / "home"
    with running_stack(home) as (_, config, variables):
        defs = build_definitions(config)
        endpoint = variables["AWS_ENDPOINT_URL"]
        instance = dg.DagsterInstance.get()
        try:
            yield {"config": config, "defs": defs, "instance": instance, "env": variables,
                   "s3": boto3.client("s3", endpoint_url=endpoint),
                   "glue": boto3.client("glue", endpoint_url=endpoint)}
        finally:
            instance.dispose()


# --- helpers ----------------------------------------------------------------------------------


def upload(flow, table: str, name: str, header: str, rows=ROWS, *, ingest_date=None,
           uploader="ana.analyst@example.com") -> str:
    key = f"staging/{table}/{name}"
    metadata = {"uploaded-by": uploader}
    if ingest_date:
        metadata["ingest-date"] = ingest_date
    flow["s3"].put_object(Bucket=BUCKET, Key=key, Body=("\n".join([header, *rows]) + "\n").encode(),
                          Metadata=metadata)
    return key


EVENTS = ["staging_events_sensor"]
EVENTS_AND_NOTIFICATIONS = [*EVENTS, "failure_notifications"]


def run_sync(flow, sensor_names=EVENTS):
    """`credflow sync`, in-process; by default only this flow's event sensor (the other sensors
    cost a second or so each and find nothing new here)."""
    return sync(flow["defs"], flow["instance"], sensor_names=sensor_names,
                progress=lambda line: None)


def keys(flow, prefix: str) -> list[str]:
    page = flow["s3"].list_objects_v2(Bucket=BUCKET, Prefix=prefix)
    return sorted(item["Key"] for item in page.get("Contents", []))


def partitions(flow, table: str) -> dict[str, str]:
    found = flow["glue"].get_partitions(DatabaseName=DATABASE, TableName=table)["Partitions"]
    return {p["Values"][0]: p["StorageDescriptor"]["Location"] for p in found}


def checks_of(flow, key: str) -> dict[str, dict]:
    """The check results of the latest run for the staged file at `key`."""
    instance = flow["instance"]
    run = instance.get_runs(
        filters=dg.RunsFilter(tags={"dagster/partition": partition_key_for(key)}), limit=1)[0]
    results = {}
    for entry in instance.all_logs(run.run_id,
                                   of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION):
        evaluation = entry.dagster_event.event_specific_data
        results[evaluation.check_name] = {
            "passed": evaluation.passed, "description": evaluation.description,
            **{name: value.value for name, value in evaluation.metadata.items()},
        }
    return results


# --- the story --------------------------------------------------------------------------------

WRONG = "staging/claims/2024-04_claims_wrong_columns.csv"
# What a person reads about it, in `credflow sync`, the run's failure and the notification.
WRONG_SENTENCE = (f"{WRONG}: columns out of order: last_name, first_name; extra column: notes. "
                  "Upload a corrected file to the same key.")


def step_failures(flow, run_id: str) -> list:
    """The run's step failures as the instance's event log (the UI's run page) holds them."""
    return [entry.dagster_event.step_failure_data for entry in flow["instance"].all_logs(
        run_id, of_type=dg.DagsterEventType.STEP_FAILURE)]


def event_log_text(flow, run_id: str) -> str:
    """Everything the instance stores about a run's events, serialized: what the UI can show."""
    return "\n".join(dg.serialize_value(entry) for entry in flow["instance"].all_logs(run_id))


def error_report_of(flow, metadata: dict) -> str:
    key = metadata["errors_uri"].removeprefix("s3://credflow-logs/")
    return flow["s3"].get_object(Bucket="credflow-logs", Key=key)["Body"].read().decode()


def test_the_demo_uploads_found_tables_add_partitions_and_normalize_headers(flow):
    from credflow_assets.local.seed_staged_tables import UPLOADER, seed_staged_tables

    lines = seed_staged_tables(flow["config"], flow["s3"])
    assert [line.rsplit(" ", 1)[1] for line in lines] == ["uploaded"] * 5
    report = run_sync(flow, sensor_names=None)  # every sensor of the code location
    founding = "staging/claims/2024-01_claims.csv"
    assert [run.partition for run in report.runs][0] == founding  # upload order
    assert {run.partition for run in report.runs if run.success} == {
        founding, "staging/claims/2024-02_claims.csv",
        "staging/claims/2024-03_claims_excel_export.csv", "staging/licenses/2024-q1_licenses.csv"}
    assert [run.partition for run in report.failed] == [WRONG]
    assert report.failed[0].error == WRONG_SENTENCE

    # The first file founded the table: its columns, types inferred conservatively.
    table = flow["glue"].get_table(DatabaseName=DATABASE, Name="claims")["Table"]
    assert table_columns(table) == [
        ("claim_id", "string"), ("first_name", "string"), ("last_name", "string"),
        ("service_date", "string"), ("amount_usd", "double"), ("status", "string")]
    assert [k["Name"] for k in table["PartitionKeys"]] == ["ingest_date"]
    licenses = flow["glue"].get_table(DatabaseName=DATABASE, Name="licenses")["Table"]
    assert table_columns(licenses) == [
        ("license_number", "string"), ("state", "string"), ("holder", "string"),
        ("expires_on", "string"), ("active", "boolean")]
    # Each good file added its partition; `Claim ID, First Name, …` normalized and went through.
    assert partitions(flow, "claims") == {
        date: f"s3://{BUCKET}/prod/claims/ingest_date={date}/"
        for date in ("2024-01-31", "2024-02-29", "2024-03-31")}
    assert keys(flow, "prod/claims/") == [
        "prod/claims/ingest_date=2024-01-31/2024-01_claims.csv",
        "prod/claims/ingest_date=2024-02-29/2024-02_claims.csv",
        "prod/claims/ingest_date=2024-03-31/2024-03_claims_excel_export.csv"]
    head = flow["s3"].head_object(Bucket=BUCKET,
                                  Key="prod/claims/ingest_date=2024-01-31/2024-01_claims.csv")
    assert head["Metadata"]["uploaded-by"] == UPLOADER
    assert head["Metadata"]["credflow-staged-key"] == founding
    # Promoted files leave staging: what stays there needs attention.
    assert keys(flow, "staging/") == [WRONG]

    checks = checks_of(flow, founding)
    assert checks["columns_match_table"]["passed"]
    assert "founds table claims" in checks["columns_match_table"]["description"]
    assert checks["rows_match_schema"]["passed"]
    assert checks_of(flow, "staging/claims/2024-03_claims_excel_export.csv")[
        "columns_match_table"]["passed"]
    # Each parse leaves its own log beside the data, linked from the observation.
    from credflow_assets.common.parse_logs import read_log
    from credflow_assets.staged_tables.sensors import last_observation

    observation = last_observation(flow["instance"], partition_key_for(WRONG))
    log_uri = observation["log_uri"]
    assert log_uri.startswith("s3://credflow-logs/parsing_logs/staged_tables/")
    log_text = read_log(flow["s3"], "credflow-logs", log_uri.split("/", 3)[3])
    assert f"{WRONG_SENTENCE} The file stays in staging." in log_text
    assert "Lamb" not in log_text  # no cell values in the log
    wrong = checks_of(flow, WRONG)["columns_match_table"]
    assert not wrong["passed"] and wrong["extra_columns"] == ["notes"]
    assert [item["column"] for item in wrong["reordered_columns"]] == ["last_name", "first_name"]
    # Beside the log, the error report: one line per problem (a header's have no row).
    assert wrong["errors_uri"] == observation["errors_uri"] == log_uri.replace(
        ".log.gz", ".errors.csv")
    assert error_report_of(flow, wrong).splitlines()[:4] == [
        "row,column,rule,value",
        ",last_name,\"out of order: table position 3, file position 2\",",
        ",first_name,\"out of order: table position 2, file position 3\",",
        ",notes,extra column (not in the table),"]

    # The step fails with the file's sentence, once: the checks are recorded (blocking, ERROR)
    # and Dagster's own "2 blocking asset checks failed" error is not raised over it.
    wrong_run = report.failed[0].run_id
    [failure] = step_failures(flow, wrong_run)
    assert failure.user_failure_data.description == WRONG_SENTENCE
    assert "DagsterAssetCheckFailedError" not in failure.error.to_string()
    assert failure.user_failure_data.metadata["errors_uri"].value == wrong["errors_uri"]
    evaluations = {entry.dagster_event.event_specific_data.check_name:
                   entry.dagster_event.event_specific_data
                   for entry in flow["instance"].all_logs(
                       wrong_run, of_type=dg.DagsterEventType.ASSET_CHECK_EVALUATION)}
    assert set(evaluations) == {"columns_match_table", "rows_match_schema"}
    for evaluation in evaluations.values():
        assert not evaluation.passed and evaluation.blocking
        assert evaluation.severity == dg.AssetCheckSeverity.ERROR
    # Blocking: the prod and Glue steps of the run never started.
    assert [stats.step_key for stats in flow["instance"].get_run_step_stats(wrong_run)] == [
        "s3__staging__claims_staged_csv"]
    # The UI shows each check result on the file's own partition.
    for check_name in ("columns_match_table", "rows_match_schema"):
        history = flow["instance"].event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(staging_file_key("claims"), check_name), limit=10)
        latest = next(record for record in history if record.run_id == wrong_run)
        assert latest.partition == partition_key_for(WRONG)


def test_each_table_lists_only_its_own_files_and_its_own_failures(flow):
    """Each table's assets are partitioned by its own staged files: the licenses table lists no
    claims file, and the rejected claims file shows as failed on the claims table only."""
    instance = flow["instance"]
    claims = {partition_key_for(key) for key in (
        "staging/claims/2024-01_claims.csv", "staging/claims/2024-02_claims.csv",
        "staging/claims/2024-03_claims_excel_export.csv", WRONG)}
    licenses = {partition_key_for("staging/licenses/2024-q1_licenses.csv")}
    assert set(instance.get_dynamic_partitions(table_partitions("claims").name)) == claims
    assert set(instance.get_dynamic_partitions(table_partitions("licenses").name)) == licenses

    materialized = dg.AssetPartitionStatus.MATERIALIZED
    for key in (staging_file_key("licenses"), prod_file_key("licenses"),
                glue_table_key(DATABASE, "licenses")):
        assert instance.get_status_by_partition(
            key, sorted(licenses), table_partitions("licenses")) == dict.fromkeys(
                licenses, materialized), key
        assert not instance.fetch_failed_materializations(key, limit=10).records, key
    for check_name in ("columns_match_table", "rows_match_schema"):
        latest = instance.get_latest_asset_check_evaluation_record(
            dg.AssetCheckKey(staging_file_key("licenses"), check_name))
        assert latest.partition in licenses
        assert latest.event.dagster_event.event_specific_data.passed

    # The claims table shows its own rejected file: checked, then neither promoted nor
    # registered.
    for key in (prod_file_key("claims"), glue_table_key(DATABASE, "claims")):
        assert instance.get_status_by_partition(key, sorted(claims), table_partitions(
            "claims")) == {**dict.fromkeys(claims, materialized),
                           partition_key_for(WRONG): dg.AssetPartitionStatus.FAILED}, key
    # The staged file itself was observed (its step failed only after the observation and
    # the checks were recorded): it is not shown as failed.
    assert instance.get_status_by_partition(
        staging_file_key("claims"), sorted(claims), table_partitions("claims")) == \
        dict.fromkeys(claims, materialized)


def test_bad_files_stay_in_staging_with_results_naming_the_columns(flow, caplog):
    extra = upload(flow, "claims", "extra.csv", CLAIMS + ",notes",
                   [row + ",call back" for row in ROWS])
    missing = upload(flow, "claims", "missing.csv",
                     "claim_id,first_name,last_name,service_date,status",
                     ["C-2003,Ann,Lee,2024-01-03,paid"])
    swapped = upload(flow, "claims", "swapped.csv",
                     "claim_id,last_name,first_name,service_date,amount_usd,status",
                     uploader="bo.analyst@example.com")
    bad_values = upload(flow, "claims", "bad values.csv", CLAIMS,
                        ["C-2004,Zebulon,Quixley,2024-13-03,-5,lost",
                         "C-2005,Bo,Ng,2024-01-03,1,paid,x"])
    before = {k: flow["s3"].head_object(Bucket=BUCKET, Key=k)["ETag"]
              for k in (extra, missing, swapped, bad_values)}
    prod_before, partitions_before = keys(flow, "prod/"), partitions(flow, "claims")

    with caplog.at_level(logging.WARNING, logger="credflow.notifications"):
        report = run_sync(flow, EVENTS_AND_NOTIFICATIONS)
    assert sorted(run.partition for run in report.failed) == sorted(
        partition_key_for(k) for k in before)
    # Untouched in staging; nothing new in prod or Glue.
    assert {k: flow["s3"].head_object(Bucket=BUCKET, Key=k)["ETag"] for k in before} == before
    assert keys(flow, "prod/") == prod_before
    assert partitions(flow, "claims") == partitions_before

    result = checks_of(flow, extra)["columns_match_table"]
    assert not result["passed"] and result["extra_columns"] == ["notes"]
    assert result["uploader_key"] == extra and result["file"] == f"s3://{BUCKET}/{extra}"
    assert "extra column(s) notes" in result["description"]
    result = checks_of(flow, missing)["columns_match_table"]
    assert result["missing_columns"] == ["amount_usd"] and not result["extra_columns"]
    result = checks_of(flow, swapped)["columns_match_table"]
    assert [item["column"] for item in result["reordered_columns"]] == ["last_name", "first_name"]
    assert result["uploader"] == "bo.analyst@example.com"
    assert checks_of(flow, swapped)["rows_match_schema"]["failing_columns"] == [
        "first_name", "last_name"]  # the model's column order

    values = checks_of(flow, bad_values)
    assert values["columns_match_table"]["passed"]
    rows = values["rows_match_schema"]
    assert not rows["passed"]
    assert {"service_date", "amount_usd", "status", "(extra fields)"} <= set(
        rows["failing_columns"])
    assert {case["row"] for case in rows["failure_cases_sample"]} == {1, 2}
    assert rows["failing_rows"] == 2 and rows["failing_row_numbers"] == [1, 2]

    # Each run fails with a sentence about its file: columns, rules and rows, never a value.
    errors = {run.partition: run.error for run in report.failed}
    assert errors[partition_key_for(extra)] == (
        f"{extra}: extra column: notes. Upload a corrected file to the same key.")
    assert errors[partition_key_for(missing)] == (
        f"{missing}: missing column: amount_usd. Upload a corrected file to the same key.")
    swapped_sentence = (f"{swapped}: columns out of order: last_name, first_name. "
                        "Upload a corrected file to the same key.")
    assert errors[partition_key_for(swapped)] == swapped_sentence
    assert errors[partition_key_for(bad_values)] == (
        f"{bad_values}: rows 1, 2 break the table's rules (service_date, amount_usd, status, "
        "more fields than the header); its error report lists each value. "
        "Upload a corrected file to the same key.")

    # Personal data stays in the data: the values are in the file's error report only, not in
    # the run's events (check, materialization and failure metadata), nor in its parse log.
    bad_run = next(run.run_id for run in report.failed
                   if run.partition == partition_key_for(bad_values))
    from credflow_assets.common.parse_logs import read_log

    parse_log = read_log(flow["s3"], "credflow-logs", rows["errors_uri"].removeprefix(
        "s3://credflow-logs/").replace(".errors.csv", ".log.gz"))
    for text in (event_log_text(flow, bad_run), parse_log):
        for value in ("Zebulon", "Quixley", "2024-13-03", ",lost"):
            assert value not in text
    assert rows["errors_url"].startswith("http://") and rows["errors_url"].endswith(
        f"/{bad_run}.errors.csv")
    report_lines = error_report_of(flow, rows).splitlines()
    assert report_lines[0] == "row,column,rule,value"
    assert set(report_lines[1:]) == {
        "2,(extra fields),field count: more fields than the header,x",
        "1,service_date,ClaimsRecord: coerce_dtype('datetime64[ns]'),2024-13-03",
        "1,service_date,ClaimsRecord: dtype('datetime64[ns]'),2024-13-03",
        "1,amount_usd,ClaimsRecord: greater_than_or_equal_to(0),-5",  # as uploaded
        "1,status,\"ClaimsRecord: isin(['submitted', 'paid', 'denied'])\",lost"}
    # `credflow logs --errors` prints it.
    from credflow_assets.cli.main import main

    printed = CliRunner().invoke(main, ["--config", str(DEFAULT_CONFIG), "logs", "--errors",
                                        partition_key_for(bad_values)])
    assert printed.exit_code == 0, printed.output
    assert printed.stdout.splitlines() == report_lines

    # The notifier tells the same sentence, with the table, the uploader and the error report.
    messages = [record.getMessage() for record in caplog.records]
    swapped_run = next(run.run_id for run in report.failed
                       if run.partition == partition_key_for(swapped))
    assert next(m for m in messages if swapped in m) == "\n".join([
        f"*credflow: staged file rejected — {swapped}*",
        swapped_sentence,
        "table: claims",
        "uploaded by: bo.analyst@example.com",
        f"error report: {checks_of(flow, swapped)['columns_match_table']['errors_url']}",
        f"run: {swapped_run}"])
    assert errors[partition_key_for(extra)] in next(m for m in messages if extra in m)
    assert errors[partition_key_for(missing)] in next(m for m in messages if missing in m)

    # A second sync does not retry rejected files.
    again = run_sync(flow)
    assert again.ok and not again.runs


def test_a_corrected_upload_then_passes(flow):
    swapped = upload(flow, "claims", "swapped.csv", CLAIMS, ["C-2006,Bo,Ng,2024-02-10,5,paid"],
                     ingest_date="2024-02-29", uploader="bo.analyst@example.com")
    report = run_sync(flow)
    assert report.ok, report
    assert [run.partition for run in report.runs] == [partition_key_for(swapped)]
    assert swapped not in keys(flow, "staging/claims/")
    # Several files share one ingest_date partition.
    assert keys(flow, "prod/claims/ingest_date=2024-02-29/") == [
        "prod/claims/ingest_date=2024-02-29/2024-02_claims.csv",
        "prod/claims/ingest_date=2024-02-29/swapped.csv"]
    assert checks_of(flow, swapped)["columns_match_table"]["passed"]


def test_what_athena_would_misread_stays_in_staging_and_is_named(flow):
    """Three files valid as CSV that the table must not take: a quoted value holding a line
    break (Athena's CSV reader splits rows at every line break, so analysts would get two
    broken rows) and a backslash (an escape character to it, dropped), blank lines and a row of separators only (rows of nulls or empty strings to
    Athena), and a row that is not UTF-8 under a good header (the header is fine: the sentence
    must name the rows, not the header)."""
    multiline = upload(flow, "claims", "multiline.csv", CLAIMS,
                       ['C-2101,"Ann\r\nMarie",Lee,2024-01-03,5,paid',
                        "C-2102,Bo,Ng\\Lee,2024-01-03,5,paid"])
    blank = upload(flow, "claims", "blank lines.csv", CLAIMS,
                   ["C-2104,Bo,Ng,2024-01-03,5,paid", "", "C-2105,Bo,Ng,2024-01-03,5,paid",
                    ",,,,,", ""])
    latin1 = "staging/claims/latin1 rows.csv"
    flow["s3"].put_object(Bucket=BUCKET, Key=latin1, Metadata={"uploaded-by": "ana@example.com"},
                          Body=(CLAIMS + "\nC-2103,Jos\xe9,P\xe9rez,2024-01-03,5,paid\n")
                          .encode("latin-1"))
    prod_before, partitions_before = keys(flow, "prod/"), partitions(flow, "claims")

    report = run_sync(flow)
    errors = {run.partition: run.error for run in report.failed}
    assert errors == {
        partition_key_for(multiline): (
            f"{multiline}: rows 1, 2 break the table's rules (first_name: a line break inside "
            "a value, last_name: a backslash in a value); its error report lists each value. "
            "Upload a corrected file to the same key."),
        partition_key_for(blank): (
            f"{blank}: rows 2, 4, 5 break the table's rules (no value in any column); its error "
            "report lists each value. Upload a corrected file to the same key."),
        partition_key_for(latin1): (
            f"{latin1}: not UTF-8 text (at row 1 or after): save the file as CSV UTF-8. "
            "Upload a corrected file to the same key.")}
    assert keys(flow, "prod/") == prod_before and partitions(flow, "claims") == partitions_before
    assert {multiline, blank, latin1} <= set(keys(flow, "staging/claims/"))

    rows = checks_of(flow, multiline)["rows_match_schema"]
    assert rows["failing_row_numbers"] == [1, 2]
    assert rows["failing_columns"] == ["first_name", "last_name"]
    assert list(csv.reader(io.StringIO(error_report_of(flow, rows), newline="")))[1:] == [
        ["1", "first_name", "Athena's CSV reader: a line break inside the value (Athena would "
         "read each line as a row)", "Ann\r\nMarie"],
        ["2", "last_name", "Athena's CSV reader: a backslash in the value (Athena's CSV reader "
         "takes it as an escape and drops it)", "Ng\\Lee"]]
    assert checks_of(flow, latin1)["columns_match_table"]["passed"]
    for key in (multiline, blank, latin1):  # withdrawn (the later audit lists rejected files)
        flow["s3"].delete_object(Bucket=BUCKET, Key=key)


def test_an_ingest_date_that_is_not_a_date_keeps_the_file_in_staging(flow):
    """A typo in the partition an analyst asks for must not land the rows in another one (the
    upload's date, where nobody would look for them)."""
    typo = upload(flow, "claims", "typo date.csv", CLAIMS, ["C-2201,Bo,Ng,2024-01-03,5,paid"],
                  ingest_date="2024-13-31")
    prod_before, partitions_before = keys(flow, "prod/"), partitions(flow, "claims")

    report = run_sync(flow)
    assert [(run.partition, run.error) for run in report.failed] == [(
        partition_key_for(typo),
        f"{typo}: its ingest-date metadata '2024-13-31' is not a YYYY-MM-DD date (leave it out "
        "to use the upload's date). Upload a corrected file to the same key.")]
    assert keys(flow, "prod/") == prod_before and partitions(flow, "claims") == partitions_before
    assert typo in keys(flow, "staging/claims/")

    # Uploaded again with the date meant, it joins that partition.
    upload(flow, "claims", "typo date.csv", CLAIMS, ["C-2201,Bo,Ng,2024-01-03,5,paid"],
           ingest_date="2024-12-31")
    assert run_sync(flow).ok
    assert "prod/claims/ingest_date=2024-12-31/typo date.csv" in keys(flow, "prod/")


def test_reconciliation_finds_an_upload_whose_event_was_lost(flow):
    sqs = boto3.client("sqs", endpoint_url=flow["env"]["AWS_ENDPOINT_URL"])
    key = upload(flow, "claims", "missing.csv", CLAIMS, ["C-2007,Ann,Lee,2024-01-03,9,paid"])
    queue = sqs.get_queue_url(QueueName=flow["config"].events.staging_uploads.queue)["QueueUrl"]
    sqs.purge_queue(QueueUrl=queue)
    assert not run_sync(flow, sensor_names=["staging_events_sensor"]).runs
    report = run_sync(flow, sensor_names=["staging_reconciliation_sensor"])
    assert [run.partition for run in report.runs] == [partition_key_for(key)] and report.ok
    assert key not in keys(flow, "staging/")
    # Rejected files are left alone until a new upload replaces them.
    assert not run_sync(flow, sensor_names=["staging_reconciliation_sensor"]).runs


def test_an_upload_the_reconciliation_requested_first_is_not_requested_again_by_its_event(flow):
    """Under the daemon the slow pass can tick between an upload and the event sensor's tick;
    while its run waits in the queue, the event must not make a second run (which would find
    the file promoted, fail, and send a failure notice for a good file)."""
    instance = flow["instance"]
    key = upload(flow, "claims", "race.csv", CLAIMS, ["C-2011,Ann,Lee,2024-01-03,9,paid"])

    reconciled = tick(flow, "staging_reconciliation_sensor")
    [request] = [r for r in reconciled.run_requests if r.partition_key == partition_key_for(key)]
    # The daemon has made the run the pass asked for; it has not started yet.
    queued = instance.create_run_for_job(
        job_def=flow["defs"].resolve_job_def(request.job_name),
        tags={**request.tags, "dagster/partition": request.partition_key},
        status=dg.DagsterRunStatus.NOT_STARTED)
    events = tick(flow, "staging_events_sensor")

    assert partition_key_for(key) not in [r.partition_key for r in events.run_requests]
    instance.delete_run(queued.run_id)
    assert run_sync(flow, sensor_names=["staging_reconciliation_sensor"]).ok
    assert key not in keys(flow, "staging/")


def tick(flow, sensor_name: str):
    """One tick of a sensor as the daemon evaluates it, its cursor stored after."""
    repository = flow["defs"].get_repository_def()
    sensor = repository.get_sensor_def(sensor_name)
    resources = {name: resource for name, resource in repository.get_top_level_resources().items()
                 if name in sensor.required_resource_keys}
    with dg.build_sensor_context(instance=flow["instance"], definitions=flow["defs"],
                                 cursor=sensor_cursor(flow["instance"], sensor_name),
                                 resources=resources,
                                 instance_ref=flow["instance"].get_ref()) as context:
        result = sensor.evaluate_tick(context)
    if result.cursor:
        store_sensor_cursor(flow["instance"], sensor, result.cursor)
    return result


def test_seeding_again_uploads_nothing(flow):
    from credflow_assets.local.seed_staged_tables import seed_staged_tables

    again = seed_staged_tables(flow["config"], flow["s3"])
    assert sum("already promoted" in line for line in again) == 4
    assert sum("already staged" in line for line in again) == 1
    assert not run_sync(flow).runs


def test_a_run_for_an_upload_that_was_replaced_fails_as_superseded(flow):
    from credflow_assets.staged_tables.names import VERSION_TAG

    result = flow["defs"].resolve_job_def(job_name("claims")).execute_in_process(
        instance=flow["instance"], partition_key=partition_key_for(WRONG),
        tags={VERSION_TAG: "0123abcd:1700000000"}, raise_on_error=False)
    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    assert "superseded" in failure.step_failure_data.error.message
    assert WRONG in keys(flow, "staging/claims/")


def test_the_audit_finds_a_planted_bad_prod_file_and_a_dangling_partition(flow, tmp_path):
    from credflow_assets.cli import main

    s3, glue = flow["s3"], flow["glue"]
    planted = "prod/claims/ingest_date=2024-05-31/planted.csv"
    s3.put_object(Bucket=BUCKET, Key=planted, Body=b"claim_id,status,first_name\nC-1,paid,Ann\n")
    lost = "prod/claims/ingest_date=2024-06-30/lost.csv"
    s3.put_object(Bucket=BUCKET, Key=lost, Body=(CLAIMS + "\n" + ROWS[0] + "\n").encode())
    table = glue.get_table(DatabaseName=DATABASE, Name="claims")["Table"]
    glue.batch_create_partition(DatabaseName=DATABASE, TableName="claims", PartitionInputList=[{
        "Values": ["2023-12-31"],
        "StorageDescriptor": {**table["StorageDescriptor"],
                              "Location": f"s3://{BUCKET}/prod/claims/ingest_date=2023-12-31/"},
    }])
    before = keys(flow, "")
    registered = set(partitions(flow, "claims"))
    output = tmp_path / "audit.json"

    runner = CliRunner()

    def tables(*args: str):
        return runner.invoke(main, ["--config", str(DEFAULT_CONFIG), "tables", *args])

    result = tables("audit", "--json", "--output", str(output))
    assert result.exit_code == 1, result.output
    report = json.loads(result.output)
    assert json.loads(output.read_text()) == report
    assert keys(flow, "") == before  # the audit changes nothing
    claims = next(t for t in report["tables"] if t["table"] == "claims")
    by_kind = {}
    for finding in claims["findings"]:
        by_kind.setdefault(finding["kind"], []).append(finding)
    mismatched = {f["location"]: f for f in by_kind["column_mismatch"]}
    assert mismatched[f"s3://{BUCKET}/{planted}"]["details"]["missing"] == [
        "last_name", "service_date", "amount_usd"]
    assert {f"s3://{BUCKET}/staging/claims/extra.csv", f"s3://{BUCKET}/{WRONG}"} <= set(
        mismatched)
    assert [f["details"]["values"] for f in by_kind["dangling_partition"]] == [["2023-12-31"]]
    not_in_glue = {f["location"]: f for f in by_kind["prod_file_not_in_glue"]}
    assert set(not_in_glue) == {f"s3://{BUCKET}/{planted}", f"s3://{BUCKET}/{lost}"}
    assert not not_in_glue[f"s3://{BUCKET}/{planted}"]["fixable"]
    assert {f["location"] for f in by_kind["rejected_staging_file"]} == {
        f"s3://{BUCKET}/staging/claims/{name}"
        for name in ("extra.csv", "bad values.csv", WRONG.rsplit("/", 1)[1])}
    assert "unprocessed_staging_file" not in by_kind

    text = tables("audit").output
    assert "dangling_partition" in text and planted in text

    # The same audit as a job in the UI, reporting through its metadata.
    job = flow["defs"].resolve_job_def("staged_tables_audit_job")
    result = job.execute_in_process(instance=flow["instance"])
    outputs = [e for e in result.all_events if e.event_type_value == "STEP_OUTPUT"]
    output_metadata = outputs[0].event_specific_data.metadata
    assert output_metadata["open_findings"].value == len(
        [f for t in report["tables"] for f in t["findings"]])
    assert output_metadata["dangling_partition"].value == 1
    assert keys(flow, "") == before

    fixed = tables("audit", "--fix")
    assert fixed.exit_code == 1  # the bad files are a person's to fix
    assert set(partitions(flow, "claims")) == registered - {"2023-12-31"} | {"2024-06-30"}
    assert keys(flow, "") == before  # --fix touches the catalog only
    after = json.loads(tables("audit", "--json").output)
    kinds = {f["kind"] for t in after["tables"] for f in t["findings"]}
    assert "dangling_partition" not in kinds
    assert [f["location"] for t in after["tables"] for f in t["findings"]
            if f["kind"] == "prod_file_not_in_glue"] == [f"s3://{BUCKET}/{planted}"]


def test_big_files_are_promoted_with_a_managed_copy(flow):
    from credflow_assets.staged_tables.assets import promote_object

    s3 = flow["s3"]
    body = (CLAIMS + "\n" + (ROWS[0] + "\n") * 150_000).encode()  # ~6.6 MB
    s3.put_object(Bucket=BUCKET, Key="staging/claims/big.csv", Body=body)
    etag = s3.head_object(Bucket=BUCKET, Key="staging/claims/big.csv")["ETag"].strip('"')
    copy = promote_object(s3, BUCKET, "staging/claims/big.csv", etag, "prod/claims/x/big.csv",
                          managed_copy_threshold=5 * 1024 * 1024, run_id="test",
                          part_size=5 * 1024 * 1024)
    assert copy["method"] == "managed multipart copy" and copy["size"] == len(body)
    head = s3.head_object(Bucket=BUCKET, Key="prod/claims/x/big.csv")
    assert head["ETag"].strip('"').endswith("-2")  # it went in parts
    assert head["Metadata"]["credflow-staged-etag"] == etag
    with pytest.raises(dg.Failure, match="changed after it was checked"):
        promote_object(s3, BUCKET, "staging/claims/big.csv", "not-the-etag",
                       "prod/claims/x/other.csv", managed_copy_threshold=0)
    assert keys(flow, "prod/claims/x/") == ["prod/claims/x/big.csv"]
    s3.delete_object(Bucket=BUCKET, Key="prod/claims/x/big.csv")
    s3.delete_object(Bucket=BUCKET, Key="staging/claims/big.csv")


def rerun(flow, key: str):
    """The partition's run again, as the UI's Materialize button or a re-execution makes it."""
    return flow["defs"].resolve_job_def(job_name("claims")).execute_in_process(
        instance=flow["instance"], partition_key=partition_key_for(key), raise_on_error=False)


def latest_metadata(flow, asset_key: dg.AssetKey, key: str) -> dict:
    record = flow["instance"].fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, asset_partitions=[partition_key_for(key)]),
        limit=1, ascending=False).records[0]
    return {"run_id": record.run_id, **{name: value.value for name, value
                                        in record.asset_materialization.metadata.items()}}


def failure_sentence(result) -> str:
    """The step failure's own sentence (the UI shows it under Dagster's class name)."""
    failure = next(e for e in result.all_events if e.is_step_failure).step_failure_data
    return failure.user_failure_data.description


def test_a_rerun_of_a_promoted_file_checks_its_prod_copy_and_registers_its_partition_again(flow):
    """A promoted file has left staging; rerunning its partition (say, after its Glue partition
    was dropped by hand) checks the prod copy again and registers the partition again, instead
    of failing the partition for a file that did nothing wrong."""
    key = upload(flow, "claims", "rerun.csv", CLAIMS, ["C-2021,Al,Ro,2024-03-02,7,paid"],
                 ingest_date="2024-03-31")
    assert run_sync(flow).ok
    prod_key = "prod/claims/ingest_date=2024-03-31/rerun.csv"
    promoted = latest_metadata(flow, prod_file_key("claims"), key)
    uploaded = latest_metadata(flow, staging_file_key("claims"), key)
    assert key not in keys(flow, "staging/") and prod_key in keys(flow, "prod/")
    body = flow["s3"].get_object(Bucket=BUCKET, Key=prod_key)["Body"].read()
    flow["glue"].delete_partition(DatabaseName=DATABASE, TableName="claims",
                                  PartitionValues=["2024-03-31"])

    result = rerun(flow, key)

    assert result.success
    assert partitions(flow, "claims")["2024-03-31"].endswith("/prod/claims/ingest_date=2024-03-31/")
    assert flow["s3"].get_object(Bucket=BUCKET, Key=prod_key)["Body"].read() == body
    assert key not in keys(flow, "staging/")
    checked = latest_metadata(flow, staging_file_key("claims"), key)
    assert checked["run_id"] == result.run_id
    assert checked["uploader_key"] == key and checked["rows"] == 1 and checked["checks_passed"]
    assert checked["read_from"] == f"s3://{BUCKET}/{prod_key}"
    assert checked["promoted_by_run"] == promoted["run_id"]
    # Still named as the upload that was promoted, not as its copy.
    assert [checked[name] for name in ("version", "last_modified", "etag", "ingest_date")] == \
        [uploaded[name] for name in ("version", "last_modified", "etag", "ingest_date")]
    assert unquote(checked["file_url"]).endswith(prod_key)  # the link goes where the bytes are
    assert checks_of(flow, key)["columns_match_table"]["passed"]
    again = latest_metadata(flow, prod_file_key("claims"), key)
    assert again["copy_method"] == f"already in prod (promoted by run {promoted['run_id']})"
    assert again["promoted_by_run"] == promoted["promoted_by_run"] == promoted["run_id"]
    assert again["source_etag"] == promoted["source_etag"]
    glue = latest_metadata(flow, glue_table_key(DATABASE, "claims"), key)
    assert glue["partition_action"] == "created" and glue["run_id"] == result.run_id
    assert glue["staged_file"] == "already gone from staging"
    assert rerun(flow, key).success  # and again: nothing else depends on the first promotion

    # Its prod copy deleted since: the rerun says so, and what to do.
    flow["s3"].delete_object(Bucket=BUCKET, Key=prod_key)
    failed = rerun(flow, key)
    assert not failed.success
    assert failure_sentence(failed) == (
        f"s3://{BUCKET}/{key} is no longer in staging: run {promoted['run_id']} promoted it to "
        f"s3://{BUCKET}/{prod_key}, which has been deleted since. Upload the file again to "
        "restore it.")
    flow["glue"].delete_partition(DatabaseName=DATABASE, TableName="claims",
                                  PartitionValues=["2024-03-31"])


def test_a_rerun_of_a_file_deleted_before_its_check_says_so(flow):
    key = upload(flow, "claims", "deleted.csv", CLAIMS)
    flow["instance"].add_dynamic_partitions(table_partitions("claims").name,
                                            [partition_key_for(key)])
    flow["s3"].delete_object(Bucket=BUCKET, Key=key)
    result = rerun(flow, key)
    assert not result.success
    assert failure_sentence(result) == (
        f"s3://{BUCKET}/{key} is no longer in staging, and no run promoted it: it was deleted "
        "before it was checked. Upload it again to process it.")
