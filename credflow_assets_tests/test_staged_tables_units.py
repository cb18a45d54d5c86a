"""The staged-tables flow's pure parts: keys, column comparison, type inference, streaming
validation, the rejection sentence, the notification text. No services."""

from __future__ import annotations

import io

import dagster as dg
import pytest

from credflow_assets.config import load_config
from credflow_assets.common.partitions import is_valid_partition_key
from credflow_assets.staged_tables.checks import requested_ingest_date, uploader_of
from credflow_assets.common.csv_columns import normalize_headers
from credflow_assets.staged_tables.columns import compare_columns
from credflow_assets.staged_tables.layout import (
    Layout,
    object_key_for,
    partition_key_for,
    table_of_partition,
)
from credflow_assets.staged_tables.names import job_name, table_partitions
from credflow_assets.staged_tables.validation import infer_glue_type, validate_rows
from credflow_assets_tests.conftest import DEFAULT_CONFIG

LAYOUT = Layout(bucket="adhoc", staging_prefix="staging", prod_prefix="prod/",
                tables=("claims", "licenses"))
CLAIMS = ["claim_id", "first_name", "last_name", "service_date", "amount_usd", "status"]


@pytest.mark.parametrize("key", [
    "staging/claims/2024-01 claims.csv",
    "staging/claims/a,b.csv",
    "staging/claims/wait....csv",
    "staging/claims/100%.csv",
    "staging/claims/tab\there.csv",
    "staging/claims/josé ñ.csv",
    "staging/claims/%2C already encoded.csv",
])
def test_partition_keys_are_valid_and_reversible(key):
    partition_key = partition_key_for(key)
    assert is_valid_partition_key(partition_key)
    assert object_key_for(partition_key) == key
    if "," not in key and "%" not in key and "..." not in key and key.isprintable():
        assert partition_key == key  # ordinary keys are their own partition key


def test_which_objects_are_staged_files():
    assert LAYOUT.staged_file("staging/claims/jan.CSV").table == "claims"
    assert LAYOUT.why_ignored("staging/unknown/jan.csv").startswith("staging/unknown/ is not")
    assert LAYOUT.why_ignored("staging/claims/2024/jan.csv").startswith("in a sub-folder")
    assert LAYOUT.why_ignored("staging/claims/jan.xlsx") == "not a .csv file"
    assert LAYOUT.why_ignored("staging/claims/") == "a folder marker"
    assert LAYOUT.prod_key("claims", "2024-01-31", "jan.csv") == \
        "prod/claims/ingest_date=2024-01-31/jan.csv"
    assert LAYOUT.partition_location("claims", "2024-01-31") == \
        "s3://adhoc/prod/claims/ingest_date=2024-01-31/"
    assert LAYOUT.prod_file("prod/claims/ingest_date=2024-01-31/jan.csv").ingest_date == \
        "2024-01-31"
    assert LAYOUT.prod_file("prod/claims/jan.csv") is None


def test_normalization_and_column_comparison():
    assert normalize_headers(["\ufeffClaim ID", " First  Name ", "STATUS"]) == \
        ["claim_id", "first_name", "status"]
    assert compare_columns(list(CLAIMS), CLAIMS).passed
    swapped = compare_columns(
        ["claim_id", "last_name", "first_name", "service_date", "amount_usd", "status"], CLAIMS)
    assert not swapped.passed and not swapped.missing and not swapped.extra
    assert swapped.reordered == [
        {"column": "last_name", "table_position": 3, "file_position": 2},
        {"column": "first_name", "table_position": 2, "file_position": 3}]
    shifted = compare_columns(CLAIMS[1:] + ["notes"], CLAIMS)
    assert shifted.missing == ["claim_id"] and shifted.extra == ["notes"]
    assert not shifted.reordered  # the shared columns keep their order
    duplicated = compare_columns(CLAIMS + ["status"], CLAIMS)
    assert duplicated.duplicates == ["status"]
    founding = compare_columns(["id", "amount_($)", "", "ingest_date"], None)
    assert founding.invalid_names == ["amount_($)"] and founding.unnamed_positions == [3]
    assert founding.partition_column_clash and not founding.passed
    assert compare_columns(["id", "2020_total"], None).passed


def test_type_inference_is_conservative():
    header = "id,zip,amount,flag,when,note,blank\n"
    rows = ("1,01234,1.5,true,2024-01-01,x,\n"
            "22,10001,-2,FALSE,2024-01-02,7,\n")
    report = validate_rows(io.BytesIO((header + rows).encode()),
                           ["id", "zip", "amount", "flag", "when", "note", "blank"],
                           infer_types=True, chunk_rows=1)
    assert report.passed, report.summary()
    assert report.inferred_types == {"id": "bigint", "zip": "string", "amount": "double",
                                     "flag": "boolean", "when": "string", "note": "string",
                                     "blank": "string"}
    assert infer_glue_type({"bigint"}, rows=0, has_null=False) == "string"


def test_rows_are_validated_in_chunks_with_failures_located():
    from credflow_assets.staged_tables.schemas import ClaimsRecord

    good = "C-1001,Ann,Lee,2024-01-03,12.50,paid"
    lines = [",".join(CLAIMS)] + [good] * 5 + [
        "C-1002,,Lee,2024-02-30,-1,lost",  # row 6
        good,
        "C-1003,Bo,Ng,2024-01-03,1,paid,extra",  # row 8: one field too many
    ]
    problems = []
    report = validate_rows(io.BytesIO("\n".join(lines).encode()), CLAIMS, model=ClaimsRecord,
                           glue_types={"amount_usd": "double", "claim_id": "string"},
                           chunk_rows=2, report_problem=lambda *problem: problems.append(problem))
    assert report.rows == 8 and not report.passed
    assert report.schemas == ["ClaimsRecord", "glue column types"]
    assert set(report.failing_columns) == {"first_name", "service_date", "amount_usd", "status",
                                           "(extra fields)"}
    assert report.failing_row_count == 2 and report.failing_row_numbers == [6, 8]
    # The report says where (row, column, check); the values go to `report_problem` only.
    assert all(set(case) == {"row", "column", "check", "schema"} for case in report.cases)
    assert (8, "(extra fields)", "field count: more fields than the header", "extra") in problems
    assert (6, "first_name", "ClaimsRecord: not_nullable", None) in problems
    assert (6, "amount_usd", "ClaimsRecord: greater_than_or_equal_to(0)", "-1") in problems
    assert len(problems) == report.failure_count
    typed = []
    validate_rows(io.BytesIO(b"id,n\n1,2\n2,\n3,x\n"), ["id", "n"], glue_types={"n": "bigint"},
                  report_problem=lambda row, column, rule, value: typed.append((row, value)))
    assert set(typed) == {(2, None), (3, "x")}


def test_a_rejected_file_is_told_in_one_sentence_naming_columns_rules_and_rows():
    from credflow_assets.staged_tables.rejection import rejection_sentence

    key = "staging/claims/x.csv"
    swapped = compare_columns(["claim_id", "last_name", "first_name", "service_date",
                               "amount_usd", "status", "notes"], CLAIMS)
    assert rejection_sentence(key, swapped, None, None) == (
        "staging/claims/x.csv: columns out of order: last_name, first_name; extra column: notes. "
        "Upload a corrected file to the same key.")
    founding = compare_columns(["id", "amount_($)", "", "ingest_date", "id"], None)
    assert rejection_sentence(key, founding, None, None) == (
        "staging/claims/x.csv: duplicate column: id; unnamed column at position: 3; column name "
        "Athena cannot use (only a-z, 0-9, _): amount_($); a column named ingest_date, the "
        "table's partition column. Upload a corrected file to the same key.")
    assert rejection_sentence(key, None, "the file is empty: no header line", None) == (
        "staging/claims/x.csv: the file is empty: no header line. "
        "Upload a corrected file to the same key.")
    many = validate_rows(io.BytesIO(("id,n\n" + "".join(f"{i},x\n" for i in range(1, 13))
                                     ).encode()), ["id", "n"], glue_types={"n": "bigint"})
    assert rejection_sentence(key, compare_columns(["id", "n"], ["id", "n"]), None, many,
                              error_report_stored=True) == (
        "staging/claims/x.csv: rows 1, 2, 3, 4, 5 and 7 more break the table's rules (n); its "
        "error report lists each value. Upload a corrected file to the same key.")
    unreadable = validate_rows(io.BytesIO(b"a,b\n1,\xff\n"), ["a", "b"])
    assert rejection_sentence(key, compare_columns(["a", "b"], ["a", "b"]), None, unreadable,
                              error_report_stored=True).startswith(
        "staging/claims/x.csv: not UTF-8 text (")


def test_unreadable_files_fail_with_a_reason():
    assert "not UTF-8" in validate_rows(io.BytesIO(b"a,b\n1,\xff\n"), ["a", "b"]).file_error
    assert "not valid CSV" in validate_rows(io.BytesIO(b'a,b\n1,"open\n'), ["a", "b"]).file_error


def test_upload_metadata():
    assert uploader_of({"Uploaded-By": "ana@example.com"}) == "ana@example.com"
    assert uploader_of({}) is None
    assert requested_ingest_date({"ingest-date": "2024-01-31"}) == ("2024-01-31", None)
    date, warning = requested_ingest_date({"ingest-date": "Jan 31"})
    assert date is None and "not a YYYY-MM-DD date" in warning


def test_every_configured_model_exists_and_the_definitions_load():
    from credflow_assets.definitions import build_definitions
    from credflow_assets.staged_tables.schemas import resolve_model

    config = load_config(DEFAULT_CONFIG)
    for table in config.staged_tables.tables:
        if table.schema_name:
            resolve_model(table.schema_name)
    with pytest.raises(KeyError, match="known: ClaimsRecord"):
        resolve_model("NoSuchRecord")
    defs = build_definitions(config)
    dg.Definitions.validate_loadable(defs)
    for table in ("claims", "licenses"):
        job = defs.resolve_job_def(job_name(table))
        assert {key.to_user_string() for key in job.asset_layer.asset_graph.get_all_asset_keys()
                } == {f"s3/staging/{table}_staged_csv", f"s3/prod/{table}_prod_csv",
                      f"glue/credflow_adhoc/{table}"}
        assert {check.name for check in job.asset_layer.asset_graph.asset_check_keys} == {
            "columns_match_table", "rows_match_schema"}
        assert job.partitions_def == table_partitions(table)
    assert defs.resolve_job_def("staged_tables_audit_job")


def test_each_file_belongs_to_its_table():
    assert table_of_partition(partition_key_for("staging/claims/a,b.csv")) == "claims"
    assert table_of_partition(partition_key_for("team/staging/licenses/q1.csv")) == "licenses"
    assert table_of_partition("no-folder.csv") is None


def test_a_failed_run_launched_from_the_ui_names_its_table_and_file():
    """A run of Dagster's implicit asset job (the UI's Materialize) may carry only its asset
    selection and partition: the notification still names the table and the file."""
    from credflow_assets.staged_tables.sensors import describe_failed_run
    from credflow_assets.staged_tables.names import glue_table_key

    key = "staging/licenses/2024 q1, final.csv"
    run = dg.DagsterRun(job_name="__ASSET_JOB",
                        asset_selection=frozenset({glue_table_key("credflow_adhoc", "licenses")}),
                        tags={"dagster/partition": partition_key_for(key)})
    with dg.DagsterInstance.ephemeral() as instance:
        title, lines = describe_failed_run(instance, run, "Glue is down")
    assert title == f"credflow: staged file {key} failed"
    assert lines[:3] == ["table: licenses", f"uploader's key: {key}", "cause: Glue is down"]
