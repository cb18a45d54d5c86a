"""Per-file parse logs: scoped, redacted, stored in S3 (moto) also when the parse fails."""


import logging
import threading

import boto3
import dagster as dg
import pytest

from credflow_assets.common.parse_logs import diff_logs, list_logs, parse_log, read_log

logger = logging.getLogger("credflow.tests.parser")
files = dg.DynamicPartitionsDefinition(name="parse_log_test_files")


class LogsBucket(dg.ConfigurableResource):
    name: str

    def client(self):
        return boto3.client("s3")


@pytest.fixture
def logs_bucket(local_stack, credflow_config):
    return credflow_config.buckets.logs


def parsing_asset(behaviour: dict):
    @dg.asset(partitions_def=files, name="parsed_file")
    def parsed_file(context: dg.AssetExecutionContext, logs: LogsBucket) -> dg.MaterializeResult:
        with parse_log(context, flow="tests", s3_client=logs.client(), bucket=logs.name) as log:
            log.redact_values(["Nicholas", "Lambert", "CT-99881"])
            logger.info("row 12: Nicholas Lambert, born 1984-07-09, nick@example.com, CT-99881")
            context.log.info(f"{behaviour.get('rows', 3)} rows validated")
            if behaviour.get("fail"):
                raise ValueError("row 12: date_of_birth '09/07/1984' does not match %Y-%m-%d")
        return dg.MaterializeResult(metadata=log.metadata())

    return parsed_file


def materialize(behaviour, bucket, instance, partition="feed/file-1/rev-1"):
    instance.add_dynamic_partitions(files.name, [partition])
    return dg.materialize([parsing_asset(behaviour)], partition_key=partition, instance=instance,
                          resources={"logs": LogsBucket(name=bucket)}, raise_on_error=False)


@pytest.fixture
def instance():
    with dg.instance_for_test() as instance:
        yield instance


def test_a_failed_parse_leaves_a_redacted_log_linked_from_the_failure(logs_bucket, instance):
    result = materialize({"fail": True}, logs_bucket, instance)

    assert not result.success
    failure = next(e for e in result.all_events if e.is_step_failure)
    log_uri = failure.step_failure_data.user_failure_data.metadata["log_uri"].value
    key = log_uri.removeprefix(f"s3://{logs_bucket}/")
    assert key == f"parsing_logs/tests/feed/file-1/rev-1/{result.run_id}.log.gz"
    text = read_log(boto3.client("s3"), logs_bucket, key)
    assert "does not match %Y-%m-%d" in text and "ValueError" in text
    assert "3 rows validated" in text and "row 12" in text
    for personal in ("Nicholas", "Lambert", "1984", "nick@example.com", "99881", "09/07"):
        assert personal not in text


def test_a_successful_parse_links_its_log_and_two_parses_give_two_logs_and_a_diff(
        logs_bucket, instance):
    first = materialize({"rows": 3}, logs_bucket, instance, partition="feed/file-2/rev-1")
    second = materialize({"rows": 5}, logs_bucket, instance, partition="feed/file-2/rev-1")
    assert first.success and second.success
    materialization = second.asset_materializations_for_node("parsed_file")[0]
    assert materialization.metadata["log_uri"].value.endswith(f"/{second.run_id}.log.gz")

    client = boto3.client("s3")
    logs = list_logs(client, logs_bucket, "feed/file-2/rev-1")
    assert [entry["run_id"] for entry in logs] == [first.run_id, second.run_id]
    older, newer = (read_log(client, logs_bucket, entry["key"]) for entry in logs)
    diff = diff_logs(older, newer, first.run_id, second.run_id)
    assert "-INFO" in diff and "3 rows validated" in diff and "+INFO" in diff
    assert "5 rows validated" in diff


def test_logs_of_two_partitions_parsed_at_once_in_one_process_do_not_mix(logs_bucket):
    client = boto3.client("s3")
    barrier = threading.Barrier(2, timeout=20)
    keys, errors = {}, []

    def parse(name: str) -> None:
        context = dg.build_asset_context(partition_key=f"mix/{name}")
        try:
            with parse_log(context, flow="tests", s3_client=client, bucket=logs_bucket,
                           run_id=f"run-{name}") as log:
                for step in range(20):
                    logger.info("%s step %d", name, step)
                    context.log.info(f"{name} context step {step}")
                    if step == 5:
                        barrier.wait()  # both partitions are mid-parse at the same time
            keys[name] = log.key
        except Exception as error:  # surfaced by the assertion below
            errors.append(error)

    threads = [threading.Thread(target=parse, args=(name,), daemon=True)
               for name in ("alpha", "beta")]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=60)
    assert not errors and set(keys) == {"alpha", "beta"}
    alpha = read_log(client, logs_bucket, keys["alpha"])
    beta = read_log(client, logs_bucket, keys["beta"])
    assert alpha.count("alpha step") == 20 and alpha.count("alpha context step") == 20
    assert beta.count("beta step") == 20 and beta.count("beta context step") == 20
    assert "beta" not in alpha and "alpha" not in beta


def test_a_log_that_cannot_be_stored_does_not_hide_the_outcome(local_stack, instance):
    result = materialize({"rows": 2}, "no-such-bucket", instance, partition="feed/file-3/rev-1")
    assert result.success
    metadata = result.asset_materializations_for_node("parsed_file")[0].metadata
    assert metadata["log_uri"].value.startswith("not stored: ")
    assert "NoSuchBucket" in metadata["log_uri"].value
    assert "Error:" not in metadata["log_uri"].value  # the message, not the exception's class


def test_a_parse_log_opens_in_a_browser_from_its_link(logs_bucket, instance):
    """The materialization's `log_url` is what a person clicks in the UI: it answers with no
    credentials, and the browser shows the gzip-encoded log as text."""
    import gzip
    import urllib.request

    result = materialize({"rows": 4}, logs_bucket, instance, partition="feed/file-3/rev-1")
    metadata = result.asset_materializations_for_node("parsed_file")[0].metadata
    url = metadata["log_url"].value

    with urllib.request.urlopen(url, timeout=10) as response:  # no signature, no token
        assert response.status == 200
        assert response.headers["Content-Type"].startswith("text/plain")
        assert response.headers["Content-Encoding"] == "gzip"  # a browser inflates it
        text = gzip.decompress(response.read()).decode()
    assert "4 rows validated" in text
    assert url.endswith(f"/{logs_bucket}/" + metadata["log_uri"].value.removeprefix(
        f"s3://{logs_bucket}/"))


def timed_asset():
    """A parse that logs, as real parses do, what differs on every run though nothing changed:
    its run id and how long it took."""
    import random

    @dg.asset(partitions_def=files, name="parsed_file")
    def parsed_file(context: dg.AssetExecutionContext, logs: LogsBucket) -> dg.MaterializeResult:
        with parse_log(context, flow="tests", s3_client=logs.client(), bucket=logs.name) as log:
            context.log.info(f"run {context.run.run_id}: 3 rows validated in "
                             f"{random.uniform(0, 9):.1f}s ({random.randint(1, 9_999):,} rows/s)")
            logger.info("upserted in %d ms", random.randint(1, 999))
        return dg.MaterializeResult(metadata=log.metadata())

    return parsed_file


def test_two_identical_parses_diff_to_nothing_changed(logs_bucket, instance):
    from click.testing import CliRunner

    from credflow_assets.cli.main import main
    from credflow_assets_tests.conftest import DEFAULT_CONFIG

    partition = "feed/file-4/rev-1"
    instance.add_dynamic_partitions(files.name, [partition])
    runs = [dg.materialize([timed_asset()], partition_key=partition, instance=instance,
                           resources={"logs": LogsBucket(name=logs_bucket)})
            for _ in range(2)]
    client = boto3.client("s3")
    older, newer = (read_log(client, logs_bucket, entry["key"])
                    for entry in list_logs(client, logs_bucket, partition))
    assert older != newer  # timestamps, run ids, durations
    # The log holds what the code logged, not Dagster's `job - run_id - step - ` before it.
    assert f"__ASSET_JOB - {runs[0].run_id}" not in older
    assert f"INFO dagster: run {runs[0].run_id}: 3 rows validated in " in older
    assert diff_logs(older, newer, "a", "b") == ""

    result = CliRunner().invoke(main, ["--config", str(DEFAULT_CONFIG), "logs", "diff",
                                       partition])
    assert result.exit_code == 0, result.output
    assert result.output == (f"nothing changed: runs {runs[0].run_id} and {runs[1].run_id} "
                             "logged the same lines (timestamps, run ids and durations aside)\n")


def test_a_diff_ignores_what_differs_per_run_in_logs_written_before(logs_bucket):
    """Logs stored before the prefix was dropped still compare by what they logged."""
    from credflow_assets.common.parse_logs import comparable_line

    def line(stamp, run_id, seconds):
        return (f"2026-11-22 12:00:{stamp},123 INFO dagster: staged_claims_job - {run_id} - "
                f"s3__staging__claims_staged_csv - s3://b/staging/claims/x.csv: 2 row(s) valid "
                f"in {seconds}s")

    older = line("01", "04ef0a22-f470-4b15-b53d-0eda7c9f7a04", "0.4")
    newer = line("59", "9c1d7e30-2b7a-4c55-a0f3-6d2b8e1f0a99", "12.0")
    assert comparable_line(older) == comparable_line(newer) == (
        "INFO dagster: s3://b/staging/claims/x.csv: 2 row(s) valid in <duration>")
    assert comparable_line("INFO credflow.x: checked (0.4s), 1,200 rows/s") == \
        "INFO credflow.x: checked (<duration>), <n> rows/s"
    assert diff_logs(older, newer, "a", "b") == ""
    assert diff_logs(older, older.replace("2 row(s)", "3 row(s)"), "a", "b")


def test_redaction_keeps_keys_uris_and_the_files_own_name():
    from credflow_assets.common.parse_logs import Redactor

    redact = Redactor()
    redact.add(["Nicholas", "Lambert"])
    redact.keep_as_is(["staging/claims/Lambert 2024-01-31.csv"])
    text = redact(
        "s3://adhoc/staging/claims/2024-01-31_claims.csv → prod/claims/ingest_date=2024-01-31/"
        "2024-01-31_claims.csv (http://127.0.0.1:9000/adhoc/x/2024-01-31.csv); "
        "'staging/claims/Lambert 2024-01-31.csv': row 3: Nicholas Lambert, born 1984-07-09 "
        "(09/07/1984), nick@example.com, 555-867-5309, ingest_date=2024-01-31")
    assert text == (
        "s3://adhoc/staging/claims/2024-01-31_claims.csv → prod/claims/ingest_date=2024-01-31/"
        "2024-01-31_claims.csv (http://127.0.0.1:9000/adhoc/x/2024-01-31.csv); "
        "'staging/claims/Lambert 2024-01-31.csv': row 3: [redacted] [redacted], born [date] "
        "([date]), [email], [phone], ingest_date=[date]")


def test_a_parse_log_names_its_own_file_though_its_name_holds_a_date(logs_bucket, instance):
    partition = "claims/2024-01-31 claims.csv"

    @dg.asset(partitions_def=files, name="parsed_file")
    def parsed_file(context: dg.AssetExecutionContext, logs: LogsBucket) -> dg.MaterializeResult:
        with parse_log(context, flow="tests", s3_client=logs.client(), bucket=logs.name) as log:
            logger.info("read %s: 2024-01-31 claims.csv, 3 rows", context.partition_key)
            logger.warning("row 2: date_of_birth 1984-07-09 is in the future")
        return dg.MaterializeResult(metadata=log.metadata())

    instance.add_dynamic_partitions(files.name, [partition])
    result = dg.materialize([parsed_file], partition_key=partition, instance=instance,
                            resources={"logs": LogsBucket(name=logs_bucket)})
    key = result.asset_materializations_for_node("parsed_file")[0].metadata[
        "log_uri"].value.removeprefix(f"s3://{logs_bucket}/")
    text = read_log(boto3.client("s3"), logs_bucket, key)
    assert "read claims/2024-01-31 claims.csv: 2024-01-31 claims.csv, 3 rows" in text
    assert "row 2: date_of_birth [date] is in the future" in text
