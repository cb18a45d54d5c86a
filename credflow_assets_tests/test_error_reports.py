"""Per-file error reports: the values that broke a rule, beside the parse log in S3 (moto)."""

import boto3
import pytest

from credflow_assets.common.error_reports import error_report, list_error_reports, read_error_report


@pytest.fixture
def logs_bucket(local_stack, credflow_config):
    return credflow_config.buckets.logs


def test_problems_are_stored_beside_the_parse_log_with_links(logs_bucket):
    client = boto3.client("s3")
    with error_report(flow="tests", partition="feed/a, b.csv", run_id="run-1", s3_client=client,
                      bucket=logs_bucket) as errors:
        errors.add(3, "date_of_birth", "a YYYY-MM-DD date", "31/02/1980")
        errors.add(None, "notes", "extra column")
    assert errors.problems == 2
    key = "parsing_logs/tests/feed/a, b.csv/run-1.errors.csv"
    metadata = errors.metadata()
    assert metadata["errors_uri"].value == f"s3://{logs_bucket}/{key}"
    assert metadata["errors_url"].value.startswith("http://")
    assert read_error_report(client, logs_bucket, key).splitlines() == [
        "row,column,rule,value", "3,date_of_birth,a YYYY-MM-DD date,31/02/1980",
        ",notes,extra column,"]
    # Listed as the parse logs are, and only the reports.
    client.put_object(Bucket=logs_bucket, Key="parsing_logs/tests/feed/a, b.csv/run-1.log.gz",
                      Body=b"")
    assert [entry["run_id"] for entry in list_error_reports(client, logs_bucket,
                                                             "feed/a, b.csv")] == ["run-1"]


def test_nothing_is_stored_for_a_file_without_problems(logs_bucket):
    client = boto3.client("s3")
    with error_report(flow="tests", partition="feed/clean.csv", run_id="run-2", s3_client=client,
                      bucket=logs_bucket) as errors:
        pass
    assert errors.metadata() == {}
    assert list_error_reports(client, logs_bucket, "feed/clean.csv") == []


def test_a_report_that_cannot_be_stored_says_so(local_stack):
    with error_report(flow="tests", partition="feed/x.csv", run_id="run-3",
                      s3_client=boto3.client("s3"), bucket="no-such-bucket") as errors:
        errors.add(1, "id", "not empty", None)
    said = errors.metadata()["errors_uri"].value
    assert said.startswith("not stored: ") and "NoSuchBucket" in said
    assert "Error:" not in said  # the message, not the exception's class
