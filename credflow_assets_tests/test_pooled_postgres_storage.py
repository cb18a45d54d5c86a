"""Production's Dagster storage on PostgreSQL: Dagster's own, keeping its connections between uses.

dagster-postgres opens a new connection for every statement (a new server process each time),
most of what a run's event writes cost under Celery (bench/RESULTS.md §7, session 11).
deploy/dagster.celery.yaml and dagster.k8s.yaml name `PooledPostgresStorage`, whose run and
event-log storages keep their connections (one for runs, two for events). What a user relies on
must not change: every event committed and readable by the webserver at once, nothing held once
the instance is done with, a restarted server or dropped connection not failing the next run,
and a forked process never writing through its parent's connection.
"""

import os
import signal
import time
from pathlib import Path
from urllib.parse import urlparse

import dagster as dg
import pytest
import sqlalchemy as sa
import yaml

from credflow_assets_tests.conftest import POSTGRES_SERVER_URL, REPO

files = dg.DynamicPartitionsDefinition(name="files")
# Ten runs take about a second here.
FORK_DEADLINE_SECONDS = 60
CLOSED_CONNECTION_GRACE_SECONDS = 10


def _connections(database: str) -> list[tuple[int, str]]:
    """(server pid, state) of every connection to `database`, from another database."""
    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", poolclass=sa.pool.NullPool)
    with admin.connect() as connection:
        rows = connection.execute(sa.text(
            "SELECT pid, state FROM pg_stat_activity WHERE datname = :name ORDER BY pid"),
            {"name": database}).all()
    return [tuple(row) for row in rows]


def _connections_once_closed_ones_end(database: str, at_most: int) -> list[tuple[int, str]]:
    """The connections to `database` once those whose client has gone have ended.

    A server process ends a moment after its client closes the socket or exits, so a count
    taken at once can still hold it (CI saw the forked child's fourth for one read). Connections
    a live client keeps never end, so a count above `at_most` is still seen after the wait.
    """
    deadline = time.monotonic() + CLOSED_CONNECTION_GRACE_SECONDS
    while len(seen := _connections(database)) > at_most and time.monotonic() < deadline:
        time.sleep(0.1)
    return seen


@dg.asset(partitions_def=files, check_specs=[dg.AssetCheckSpec("has_rows", asset="landed")])
def landed(context: dg.AssetExecutionContext):
    context.log.info(f"landing {context.partition_key}")
    seen = _connections(os.environ["DAGSTER_PG_DB"])
    context.log.info(f"second line of {context.partition_key}")
    yield dg.MaterializeResult(metadata={"rows": 3, "connections_seen": dg.MetadataValue.json(
        [list(row) for row in seen])})
    yield dg.AssetCheckResult(check_name="has_rows", passed=True)


def _home(directory: Path, storage: dict) -> Path:
    directory.mkdir()
    (directory / "dagster.yaml").write_text(
        yaml.safe_dump({"storage": storage, "telemetry": {"enabled": False}}))
    return directory


@pytest.fixture
def production_home(tmp_path: Path, postgres_url: str, monkeypatch) -> tuple[Path, str]:
    """A DAGSTER_HOME whose storage is deploy/dagster.celery.yaml's, as shipped."""
    shipped = yaml.safe_load((REPO / "deploy" / "dagster.celery.yaml").read_text())
    home = _home(tmp_path / "dagster", shipped["storage"])
    parsed = urlparse(postgres_url.replace("+psycopg2", ""))
    for name, value in {"DAGSTER_PG_HOST": parsed.hostname, "DAGSTER_PG_USER": parsed.username,
                        "DAGSTER_PG_DB": parsed.path.lstrip("/"),
                        "DAGSTER_PG_PASSWORD": parsed.password}.items():
        monkeypatch.setenv(name, value)
    return home, parsed.path.lstrip("/")


def _land(instance: dg.DagsterInstance, key: str) -> dg.ExecuteInProcessResult:
    instance.add_dynamic_partitions("files", [key])
    return dg.materialize([landed], instance=instance, partition_key=key)


def test_runs_write_through_the_storages_kept_connections_and_dispose_lets_them_go(
        production_home, tmp_path):
    home, database = production_home
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert type(instance.run_storage).__name__ == "PooledPostgresRunStorage"
        assert type(instance.event_log_storage).__name__ == "PooledPostgresEventLogStorage"
        first = _land(instance, "a.csv")
        second = _land(instance, "b.csv")
        assert first.success and second.success
        seen = [dict(result.asset_materializations_for_node("landed")[0].metadata)
                ["connections_seen"].value for result in (first, second)]
        # Mid-step, between two event writes, the run storage's connection and the event
        # log's two (Dagster opens one inside the other to store a materialization's tags) are
        # open and idle (a storage without a pool has none open then), and the second run
        # writes through the same three: none was closed and opened again.
        for connections in seen:
            assert len(connections) == 3 and all(state == "idle" for _, state in connections)
        assert seen[0] == seen[1]
        assert len(_connections(database)) == 3
    # The instance disposed: nothing left open.
    assert _connections_once_closed_ones_end(database, at_most=0) == []

    # Every event was committed: Dagster's stock storage (`storage: postgres`) on the same
    # database, as another process would read it, sees them all.
    stock = {"postgres": yaml.safe_load((home / "dagster.yaml").read_text())
             ["storage"]["custom"]["config"]}
    reader = dg.DagsterInstance.from_config(str(_home(tmp_path / "reader", stock)))
    records = reader.fetch_materializations(dg.AssetKey("landed"), limit=10).records
    assert sorted(record.partition_key for record in records) == ["a.csv", "b.csv"]
    assert reader.get_run_by_id(second.run_id).status == dg.DagsterRunStatus.SUCCESS
    messages = [entry.user_message for entry in reader.all_logs(first.run_id)]
    assert "landing a.csv" in messages and "second line of a.csv" in messages
    check = reader.event_log_storage.get_latest_asset_check_execution_by_key(
        [dg.AssetCheckKey(dg.AssetKey("landed"), "has_rows")])
    assert check[dg.AssetCheckKey(dg.AssetKey("landed"), "has_rows")].run_id == second.run_id
    reader.dispose()


def test_a_connection_the_server_dropped_is_replaced_not_raised(production_home):
    home, database = production_home
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert _land(instance, "a.csv").success
        kept = [pid for pid, _ in _connections(database)]
        admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", poolclass=sa.pool.NullPool)
        with admin.connect() as connection:  # what a server restart or a proxy's timeout does
            for pid in kept:
                connection.execute(sa.text("SELECT pg_terminate_backend(:pid)"), {"pid": pid})
        admin.dispose()

        again = _land(instance, "b.csv")
        assert again.success
        assert instance.get_run_by_id(again.run_id).status == dg.DagsterRunStatus.SUCCESS
        assert not set(kept) & {pid for pid, _ in _connections(database)}


def test_a_forked_process_never_writes_through_its_parents_connections(production_home):
    """Parent and child write runs at the same time: had the child used the parent's kept
    connections, their statements would interleave on one socket, and both would fail or wait
    on each other's replies (which this test ends after FORK_DEADLINE_SECONDS)."""
    home, database = production_home
    with dg.DagsterInstance.from_config(str(home)) as instance:
        assert _land(instance, "before-fork.csv").success
        child = os.fork()
        if child == 0:  # pragma: no cover (reported through the exit code)
            signal.alarm(FORK_DEADLINE_SECONDS)
            try:
                ok = all(_land(instance, f"child-{n}.csv").success for n in range(4))
            except BaseException:  # noqa: BLE001 (a child must exit, never return to pytest)
                ok = False
            os._exit(0 if ok else 1)

        def stuck(*_):
            raise TimeoutError(f"the parent's runs did not end in {FORK_DEADLINE_SECONDS} s")

        previous = signal.signal(signal.SIGALRM, stuck)
        signal.alarm(FORK_DEADLINE_SECONDS)
        try:
            in_parent = [_land(instance, f"parent-{n}.csv").success for n in range(4)]
        finally:
            signal.alarm(0)
            signal.signal(signal.SIGALRM, previous)
            _, status = os.waitpid(child, 0)  # the child's own alarm ends it, if stuck
        assert in_parent == [True] * 4
        assert os.waitstatus_to_exitcode(status) == 0
        # The parent still keeps at most its three, whatever the child opened and left.
        assert len(_connections_once_closed_ones_end(database, at_most=3)) == 3
        keys = instance.get_materialized_partitions(dg.AssetKey("landed"))
        assert keys == {"before-fork.csv", *(f"{who}-{n}.csv" for who in ("child", "parent")
                                             for n in range(4))}
