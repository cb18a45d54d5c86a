"""The partition budget: `archive-partitions` takes processed files off the instance's dynamic
partitions, lineage still answers for them and says they are archived, a failed file is kept,
a reparse brings a file back, and a dry run changes nothing.

On the session stack (`local_stack`), with a Dagster instance of this module's own (the
archive must not take other modules' partitions), two real runs of `staged_claims_job`: a good
file, promoted, and a file with a wrong header, rejected. The uploads go in with the bucket's
event notifications off, so no other module's sensor receives their events.
"""

from __future__ import annotations

import contextlib
import json
import uuid
from pathlib import Path

import boto3
import dagster as dg
import pytest
import yaml
from click.testing import CliRunner

from credflow_assets.cli.main import main
from credflow_assets.cli.reparse import reparse, select_partitions
from credflow_assets.common.partition_archive import read_archive
from credflow_assets.staged_tables.layout import partition_key_for
from credflow_assets.staged_tables.names import table_partitions
from credflow_assets_tests.conftest import DEFAULT_CONFIG

CLAIMS = "claim_id,first_name,last_name,service_date,amount_usd,status"
ROWS = ["C-2001,Nicholas,Lamb,2024-01-03,120.50,paid"]
CLAIMS_FILES = table_partitions("claims").name


@pytest.fixture(scope="module")
def story(local_stack, credflow_config, tmp_path_factory):
    home = tmp_path_factory.mktemp("archive_dagster_home")
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    with processed_files(home, credflow_config) as told:
        yield told


@contextlib.contextmanager
def processed_files(home: Path, credflow_config):
    """Two staged claims files through `staged_claims_job` on the instance at `home`: one
    promoted ("good"), one rejected for its header ("bad")."""
    stamp = uuid.uuid4().hex[:8]
    good, bad = (f"staging/claims/archive-{stamp}-{name}.csv" for name in ("good", "bad"))
    s3 = boto3.client("s3")
    bucket = credflow_config.buckets.adhoc
    saved = s3.get_bucket_notification_configuration(Bucket=bucket)
    saved.pop("ResponseMetadata", None)
    s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    try:
        s3.put_object(Bucket=bucket, Key=good, Body="\n".join([CLAIMS, *ROWS]).encode())
        s3.put_object(Bucket=bucket, Key=bad, Body="\n".join([CLAIMS + ",notes", *ROWS]).encode())
    finally:
        s3.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration=saved)
    keys = {"good": partition_key_for(good), "bad": partition_key_for(bad)}
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(CLAIMS_FILES, list(keys.values()))
        report = reparse(credflow_config, instance, "staged_tables", list(keys.values()),
                         workers=1, progress=lambda line: None)
        assert [run.success for run in report.runs] == [True, False], report.runs
        yield {"home": home, "instance": instance, "config": credflow_config, **keys}


def archive(story, *args: str):
    result = CliRunner().invoke(main, ["--config", str(DEFAULT_CONFIG), "instance",
                                       "archive-partitions", "--json", *args],
                                env={"DAGSTER_HOME": str(story["home"])})
    assert result.exit_code == 0, result.output
    return json.loads(result.output)


def lineage(story, key: str, *args: str) -> str:
    result = CliRunner().invoke(main, ["--config", str(DEFAULT_CONFIG), "lineage", key, *args],
                                env={"DAGSTER_HOME": str(story["home"])})
    assert result.exit_code == 0, result.output
    return result.output


def live(story) -> list[str]:
    return list(story["instance"].get_dynamic_partitions(CLAIMS_FILES))


def test_a_dry_run_names_the_processed_file_and_changes_nothing(story):
    before = live(story)

    report = archive(story, "--older-than", "0d", "--dry-run")

    assert report["archived_keys"][CLAIMS_FILES] == [story["good"]]
    assert report["kept"][CLAIMS_FILES] == {"failed": 1}
    assert live(story) == before == [story["good"], story["bad"]]
    assert read_archive(story["instance"], CLAIMS_FILES) == {}


def test_nothing_younger_than_the_age_is_archived(story):
    report = archive(story, "--older-than", "365d")

    assert report["archived"][CLAIMS_FILES] == 0
    assert live(story) == [story["good"], story["bad"]]


def test_archiving_takes_the_processed_file_off_and_keeps_the_failed_one(story):
    report = archive(story, "--older-than", "0d")

    assert report["archived"][CLAIMS_FILES] == 1
    assert live(story) == [story["bad"]]
    assert list(read_archive(story["instance"], CLAIMS_FILES)) == [story["good"]]


def test_lineage_of_the_archived_file_still_answers_and_says_it_is_archived(story):
    text = lineage(story, story["good"])
    found = json.loads(lineage(story, story["good"], "--json"))

    assert "archived         on 20" in text and "promoted to prod" in text
    assert found["archived_on"] == read_archive(story["instance"], CLAIMS_FILES)[story["good"]]
    assert found["outcome"] == "promoted to prod"
    assert found["runs"][0]["status"] == "SUCCESS" and found["prod"]["key"].startswith("prod/")
    # The failed file is live: its lineage says nothing of an archive.
    assert "archived" not in lineage(story, story["bad"])


def test_a_reparse_of_the_archived_file_adds_its_partition_again(story):
    chosen = select_partitions(story["instance"], story["config"], "staged_tables",
                               partitions=[story["good"]])

    assert chosen == [story["good"]]
    assert story["instance"].has_dynamic_partition(CLAIMS_FILES, story["good"])
    assert read_archive(story["instance"], CLAIMS_FILES) == {}
    assert json.loads(lineage(story, story["good"], "--json"))["archived_on"] is None


def test_the_scheduled_retention_job_archives_too(story):
    """What `instance_retention_schedule` runs: the prune, then the archive (its launchpad's
    `archive_partitions_days`; 0 here, so the file processed a minute ago goes)."""
    from credflow_assets.common.instance_retention import JOB_NAME, build_retention_defs
    from credflow_assets.common.partition_archive import partition_sets
    from credflow_assets.flows import all_flows

    config = story["config"]
    job = build_retention_defs(config.retention, partition_sets(all_flows(), config)) \
        .resolve_job_def(JOB_NAME)
    result = job.execute_in_process(instance=story["instance"], run_config={"ops": {
        "prune_instance": {"config": {"archive_partitions_days": 0}}}})

    assert result.success
    [output] = [event for event in result.all_events if event.event_type_value == "STEP_OUTPUT"]
    assert output.event_specific_data.metadata["partitions_archived"].value == 1
    assert live(story) == [story["bad"]]
    assert list(read_archive(story["instance"], CLAIMS_FILES)) == [story["good"]]


def postgres_home(home: Path, postgres_url: str) -> Path:
    """A machine of a production deployment: its own DAGSTER_HOME and storage directory, the
    instance in the shared PostgreSQL database (deploy/'s storage)."""
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump({
        "telemetry": {"enabled": False},
        "storage": {"custom": {
            "module": "credflow_assets.common.dagster_compat", "class": "PooledPostgresStorage",
            "config": {"postgres_url": postgres_url.replace("+psycopg2", "")}}}}))
    return home


def test_on_postgresql_another_machine_answers_for_a_file_archived_elsewhere(
        local_stack, credflow_config, tmp_path, postgres_url):
    """The retention job archives wherever the deployment runs it (a Celery worker, a
    Kubernetes pod whose disk goes with it); `credflow lineage` on an engineer's machine, whose
    storage directory is its own, still finds the archived file and says when it went."""
    worker, laptop = (postgres_home(tmp_path / name, postgres_url)
                      for name in ("worker", "laptop"))
    with processed_files(worker, credflow_config) as told:
        report = archive(told, "--older-than", "0d")

        assert report["archived_keys"][CLAIMS_FILES] == [told["good"]]
        found = json.loads(lineage({"home": laptop}, told["good"], "--json"))
        assert found["archived_on"] == read_archive(told["instance"], CLAIMS_FILES)[told["good"]]
        assert found["outcome"] == "promoted to prod"
        # A reparse chosen on the laptop brings it back, for every machine.
        with dg.DagsterInstance.from_config(str(laptop)) as instance:
            assert select_partitions(instance, credflow_config, "staged_tables",
                                     partitions=[told["good"]]) == [told["good"]]
        assert json.loads(lineage(told, told["good"], "--json"))["archived_on"] is None
    assert not list(tmp_path.glob("*/storage/partition_archive"))


def test_an_archive_kept_in_files_by_an_earlier_version_is_moved_into_the_instance(tmp_path):
    home = tmp_path / "home"
    folder = home / "storage" / "partition_archive" / CLAIMS_FILES
    folder.mkdir(parents=True)
    (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
    lines = [{"key": "a.csv", "archived": "2025-01-02T03:04:05+00:00"},
             {"key": "b.csv", "archived": "2025-01-02T03:04:05+00:00"},
             {"key": "a.csv", "restored": "2025-02-01T00:00:00+00:00"}]
    (folder / "2025.jsonl").write_text("".join(json.dumps(line) + "\n" for line in lines))

    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert read_archive(instance, CLAIMS_FILES) == {"b.csv": "2025-01-02T03:04:05+00:00"}
    assert sorted(path.name for path in folder.iterdir()) == ["2025.jsonl.imported"]
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert read_archive(instance, CLAIMS_FILES) == {"b.csv": "2025-01-02T03:04:05+00:00"}
