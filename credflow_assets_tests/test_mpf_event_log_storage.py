"""The local stack's event log: each run's SQLite database is a copy of one built per process.

Building a run's database from nothing was a fifth of an MPF run's overhead under `credflow
sync` (bench/RESULTS.md §4, session 9). What a user sees must not change: the same database
Dagster builds, in the same place, with every event, materialization and check result.
"""

import shutil
import sqlite3
import uuid
from pathlib import Path

import dagster as dg

from credflow_assets.common.dagster_compat import PREBUILT_SHARD_STORAGE

LOCAL_DAGSTER_YAML = Path(__file__).resolve().parents[1] / "credflow_assets/local/dagster.yaml"

files = dg.DynamicPartitionsDefinition(name="files")


@dg.asset(partitions_def=files, check_specs=[dg.AssetCheckSpec("has_rows", asset="landed")])
def landed(context: dg.AssetExecutionContext):
    context.log.info(f"landing {context.partition_key}")
    yield dg.MaterializeResult(metadata={"rows": 3})
    yield dg.AssetCheckResult(check_name="has_rows", passed=True)


def _home(tmp_path: Path) -> Path:
    """A DAGSTER_HOME with the local stack's dagster.yaml, as `credflow local up` writes it
    (DAGSTER_HOME itself need not be set: the shards go under the instance's own home)."""
    home = tmp_path / "dagster"
    home.mkdir()
    shutil.copyfile(LOCAL_DAGSTER_YAML, home / "dagster.yaml")
    return home


def _schema(path: Path) -> tuple[list, list, str]:
    with sqlite3.connect(path) as connection:
        return (sorted(connection.execute("SELECT type, name, sql FROM sqlite_master")),
                connection.execute("SELECT version_num FROM alembic_version").fetchall(),
                connection.execute("PRAGMA journal_mode").fetchone()[0])


def test_each_run_gets_the_database_dagster_builds_with_all_its_events(tmp_path):
    home = _home(tmp_path)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        storage = instance.event_log_storage
        assert type(storage).__name__ == PREBUILT_SHARD_STORAGE
        instance.add_dynamic_partitions(files.name, ["a.csv", "b.csv"])
        runs = [dg.materialize([landed], instance=instance, partition_key=key).run_id
                for key in ("a.csv", "b.csv")]

        runs_dir = home / "history" / "runs"
        assert Path(storage.path_for_shard(runs[0])) == runs_dir / f"{runs[0]}.db"
        assert sorted(path.name for path in runs_dir.glob("*.db")) == sorted(
            [f"{run}.db" for run in runs] + ["index.db"])
        assert not list(runs_dir.glob("*.partial"))
        for run_id in runs:
            kinds = [entry.dagster_event_type for entry in instance.all_logs(run_id)
                     if entry.is_dagster_event]
            assert dg.DagsterEventType.RUN_SUCCESS in kinds
            assert kinds.count(dg.DagsterEventType.ASSET_MATERIALIZATION) == 1
        # What lineage and the UI's partition pages read, from the index.
        latest = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=dg.AssetKey("landed"), asset_partitions=["b.csv"]),
            limit=1).records[0]
        assert latest.run_id == runs[1]
        assert latest.asset_materialization.metadata["rows"].value == 3
        check = instance.event_log_storage.get_asset_check_execution_history(
            dg.AssetCheckKey(dg.AssetKey("landed"), "has_rows"), limit=2)
        assert {execution.run_id for execution in check} == set(runs)

    # The same database Dagster's own storage builds for a run.
    plain = tmp_path / "plain"
    plain.mkdir()
    with dg.DagsterInstance.from_config(str(plain)) as instance:
        instance.add_dynamic_partitions(files.name, ["a.csv"])
        plain_run = dg.materialize([landed], instance=instance, partition_key="a.csv").run_id
    assert _schema(runs_dir / f"{runs[0]}.db") == _schema(
        plain / "history" / "runs" / f"{plain_run}.db")
    assert _schema(runs_dir / f"{runs[0]}.db")[2] == "wal"


@dg.op
def hello(context: dg.OpExecutionContext) -> None:
    context.log.info("still here")


@dg.job
def hello_job():
    hello()


def test_a_run_database_another_process_began_is_left_to_dagster(tmp_path):
    """Opening a missing SQLite file creates it empty: another process that got there first
    leaves such a file, and Dagster's own initialisation then builds it, as before."""
    home = _home(tmp_path)
    run_id = str(uuid.uuid4())
    with dg.DagsterInstance.from_config(str(home)) as instance:
        shard = Path(instance.event_log_storage.path_for_shard(run_id))
        shard.touch()
        assert hello_job.execute_in_process(instance=instance, run_id=run_id).success
        messages = [entry.user_message for entry in instance.all_logs(run_id)]
    assert "still here" in messages
    assert _schema(shard)[1:] == _schema(home / "history" / "runs" / "index.db")[1:]
