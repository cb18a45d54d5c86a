"""The local stack's event log: each run's SQLite database is a copy of one built per process,
and the process writing a run's events keeps one connection to it until the run ends.

Building a run's database from nothing was a fifth of an MPF run's overhead under `credflow
sync` (bench/RESULTS.md §4, session 9), and opening, checkpointing and closing it for each event
most of what remained (session 10). What a user sees must not change: the same database Dagster
builds, in the same place, with every event, materialization and check result; each event
readable by another process (the webserver) while the run goes on, the UI's live log woken by
it; nothing held open once the run has ended, and never more than a few files at once; prune
working on a file another process holds.
"""

import os
import shutil
import sqlite3
import subprocess
import sys
import threading
import time
import uuid
from pathlib import Path

import dagster as dg

from credflow_assets.common import dagster_compat
from credflow_assets.common.dagster_compat import HELD_RUN_SHARDS, PREBUILT_SHARD_STORAGE
from credflow_assets.common.instance_retention import KEPT_EVENT_TYPES

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


def _open_files(directory: Path) -> list[str]:
    """The files under `directory` this process has open (Linux's /proc)."""
    opened = []
    for fd in os.listdir("/proc/self/fd"):
        try:
            target = os.readlink(f"/proc/self/fd/{fd}")
        except OSError:  # closed meanwhile (listdir's own descriptor)
            continue
        if target.startswith(f"{directory}/"):
            opened.append(Path(target).name)
    return sorted(opened)


def _log_line(run_id: str, message: str) -> dg.EventLogEntry:
    return dg.EventLogEntry(error_info=None, level="INFO", user_message=message, run_id=run_id,
                            timestamp=time.time())


def test_a_run_leaves_its_database_closed_and_whole(tmp_path):
    home = _home(tmp_path)
    runs_dir = home / "history" / "runs"
    with dg.DagsterInstance.from_config(str(home)) as instance:
        instance.add_dynamic_partitions(files.name, ["a.csv"])
        run_id = dg.materialize([landed], instance=instance, partition_key="a.csv").run_id
        events = len(instance.all_logs(run_id))
        # Closed at RUN_SUCCESS, as Dagster leaves it: the WAL checkpointed into the file and
        # removed, every event in the file itself.
        assert _open_files(runs_dir) == []  # neither the run's file nor the index held
        assert sorted(path.name for path in runs_dir.glob(f"{run_id}*")) == [f"{run_id}.db"]
        connection = sqlite3.connect(f"file:{runs_dir / run_id}.db?mode=ro", uri=True)
        assert connection.execute("SELECT count(*) FROM event_logs").fetchone()[0] == events > 10
        connection.close()


def test_at_most_a_few_run_databases_are_held_open_and_each_event_is_readable(tmp_path):
    home = _home(tmp_path)
    runs_dir = home / "history" / "runs"
    runs = [str(uuid.uuid4()) for _ in range(HELD_RUN_SHARDS + 6)]
    with dg.DagsterInstance.from_config(str(home)) as writer, \
            dg.DagsterInstance.from_config(str(home)) as reader:
        for round_ in range(2):  # runs that never end (a process killed mid-run)
            for n, run_id in enumerate(runs):
                writer.event_log_storage.store_event(_log_line(run_id, f"line {round_}"))
                held = {name.split(".")[0] for name in _open_files(runs_dir)} - {"index"}
                assert run_id in held
                assert len(held) == min(n + 1 + round_ * len(runs), HELD_RUN_SHARDS)
                # Committed before store_event returned: another connection reads it now.
                assert [entry.user_message for entry in reader.all_logs(run_id)][-1] == \
                    f"line {round_}"
        # A held file deleted meanwhile (by another process's wipe, or by hand) is let go: the
        # next event goes to a new file at the run's path, where readers look.
        last = runs[-1]
        for suffix in (".db", ".db-wal", ".db-shm"):
            (runs_dir / f"{last}{suffix}").unlink(missing_ok=True)
        writer.event_log_storage.store_event(_log_line(last, "after the delete"))
        assert [entry.user_message for entry in reader.all_logs(last)] == ["after the delete"]
    assert _open_files(runs_dir) == []  # disposing of the instance closes what it held


def test_prune_compacts_a_run_database_another_process_holds(tmp_path):
    """The daemon may still hold a finished run's file (it wrote the run's first events) when
    `credflow instance prune` deletes the run's log lines and VACUUMs the file."""
    home = _home(tmp_path)
    run_id = str(uuid.uuid4())
    with dg.DagsterInstance.from_config(str(home)) as holder, \
            dg.DagsterInstance.from_config(str(home)) as pruner:
        for n in range(200):
            holder.event_log_storage.store_event(_log_line(run_id, f"line {n} " + "x" * 500))
        rows, size, freed = dagster_compat.prune_run_event_logs(
            pruner, [run_id], KEPT_EVENT_TYPES, dry_run=False)
        assert (rows, freed > 0) == (200, True)
        assert size > 200 * 500
        holder.event_log_storage.store_event(_log_line(run_id, "written after the prune"))
        assert [entry.user_message for entry in pruner.all_logs(run_id)] == [
            "written after the prune"]


@dg.op
def wait_to_be_seen(context: dg.OpExecutionContext) -> None:
    context.log.info("still here")
    seen = Path(os.environ["SEEN_FLAG"])
    for _ in range(600):  # 60 s at most, then the run fails and the test with it
        if seen.exists():
            return
        time.sleep(0.1)
    raise RuntimeError(f"nobody read the run's log line: {seen} never appeared")


@dg.job
def wait_to_be_seen_job():
    wait_to_be_seen()


WRITER = """
import sys
import dagster as dg
from credflow_assets_tests.test_mpf_event_log_storage import wait_to_be_seen_job
with dg.DagsterInstance.from_config(sys.argv[1]) as instance:
    result = wait_to_be_seen_job.execute_in_process(instance=instance, run_id=sys.argv[2],
                                                    raise_on_error=False)
sys.exit(0 if result.success else 1)
"""


def test_the_ui_live_log_sees_each_event_while_another_process_runs_the_run(tmp_path):
    """The webserver's live run log is Dagster's watchdog on the run's file, read by its own
    connection: the line must reach it while the run, in another process, is still going
    (the run waits until this test has seen the line)."""
    home = _home(tmp_path)
    run_id = str(uuid.uuid4())
    seen_flag = tmp_path / "seen"
    seen = threading.Event()

    def on_event(entry, _cursor):
        if entry.user_message == "still here":
            seen_flag.touch()
            seen.set()

    with dg.DagsterInstance.from_config(str(home)) as webserver:
        webserver.event_log_storage.watch(run_id, None, on_event)
        writer = subprocess.run(
            [sys.executable, "-c", WRITER, str(home), run_id], capture_output=True, text=True,
            env={**os.environ, "SEEN_FLAG": str(seen_flag)}, timeout=300)
        assert writer.returncode == 0, writer.stderr[-3000:]
        assert seen.is_set()
        kinds = [entry.dagster_event_type for entry in webserver.all_logs(run_id)
                 if entry.is_dagster_event]
        assert kinds[-1] == dg.DagsterEventType.RUN_SUCCESS
        webserver.event_log_storage.end_watch(run_id, on_event)
