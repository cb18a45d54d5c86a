"""The one module that touches Dagster internals (`dagster._…`), each use with its reason.

`credflow sync` and in-process reparses execute runs in this process (about 0.5 s a run, against
about 4 s for a run the daemon launches). Dagster's public in-process API
(`JobDefinition.execute_in_process`) makes runs with no code-location origin: the UI leaves them
off the timeline and its job's Runs tab, and cannot re-execute them (`CheckError: Expected
non-None value`), and the daemon's run-key dedupe only half recognises them. So the runs are
created here the way the sensor daemon creates its own (`dagster._daemon.sensor.
_create_sensor_run`): with the origin of the code location the webserver and daemon load
(`LOCATION_NAME`, the name in `workspace.yaml` and in the workspace `credflow dev` writes), then
executed in this process.

Sensor cursors: the daemon keeps a sensor's cursor in its instigator state. `credflow sync`
reads and writes that same state, so the two advance one cursor per sensor. No public API
reads or writes a sensor's cursor outside a tick.
"""

from __future__ import annotations

import sys
from collections.abc import Mapping, Sequence
from functools import cache

import dagster as dg

# The code location's name, as `workspace.yaml`, `pyproject.toml` and `credflow dev` give it.
LOCATION_NAME = "credflow_assets"
DEFINITIONS_MODULE = "credflow_assets.definitions"
DEFINITIONS_ATTRIBUTE = "defs"
# A code location with one `Definitions` holds one repository of this name.
REPOSITORY_NAME = "__repository__"


@cache
def _repository_origin():
    from dagster._core.remote_origin import (
        ManagedGrpcPythonEnvCodeLocationOrigin,
        RemoteRepositoryOrigin,
    )
    from dagster._core.types.loadable_target_origin import LoadableTargetOrigin

    # Runs and instigator states are matched to a code location by its name and repository
    # name (their selector); the rest of the origin only describes how to load it.
    location = ManagedGrpcPythonEnvCodeLocationOrigin(
        loadable_target_origin=LoadableTargetOrigin(
            executable_path=sys.executable, module_name=DEFINITIONS_MODULE,
        ),
        location_name=LOCATION_NAME,
    )
    return RemoteRepositoryOrigin(code_location_origin=location, repository_name=REPOSITORY_NAME)


def _job_python_origin(job_name: str):
    from dagster._core.definitions.reconstruct import ReconstructableRepository

    repository = ReconstructableRepository.for_module(DEFINITIONS_MODULE, DEFINITIONS_ATTRIBUTE)
    return repository.get_reconstructable_job(job_name).get_python_origin()


def execute_run_in_process(
    defs: dg.Definitions,
    instance: dg.DagsterInstance,
    job_name: str,
    *,
    partition_key: str | None = None,
    tags: Mapping[str, str] | None = None,
    run_config: Mapping | None = None,
    asset_selection: Sequence[dg.AssetKey] | None = None,
    run_id: str | None = None,
    parent_run_id: str | None = None,
    root_run_id: str | None = None,
):
    """Create a run of `job_name` as the daemon would (origin, job tags, partition tags) and
    execute it here. Returns Dagster's execution result (`success`, `run_id`, `all_events`).
    A retry names its parent and root run, so that Dagster counts it in the run's group."""
    from dagster._core.definitions.job_base import InMemoryJob
    from dagster._core.execution.api import execute_run
    from dagster._core.execution.execute_in_process import merge_run_tags
    from dagster._core.remote_origin import RemoteJobOrigin

    job_def = defs.resolve_job_def(job_name)
    selection = list(asset_selection) if asset_selection else None
    run_config = dict(run_config or {})
    if not run_config and partition_key and job_def.partitioned_config:
        run_config = dict(
            job_def.partitioned_config.get_run_config_for_partition_key(partition_key))
    run_tags = merge_run_tags(job_def=job_def, partition_key=partition_key, tags=tags,
                              asset_selection=selection, instance=instance,
                              run_config=run_config)
    run = instance.create_run_for_job(
        job_def=job_def,
        run_config=run_config,
        tags=run_tags,
        asset_selection=frozenset(selection) if selection else None,
        run_id=run_id, parent_run_id=parent_run_id, root_run_id=root_run_id,
        remote_job_origin=RemoteJobOrigin(repository_origin=_repository_origin(),
                                          job_name=job_name),
        job_code_origin=_job_python_origin(job_name),
    )
    return execute_run(InMemoryJob(job_def), run, instance)


def execute_celery_launched_run(instance: dg.DagsterInstance, packed_run_args) -> int:
    """Execute a run that dagster-celery's `CeleryRunLauncher` sent, as its `execute_job` task
    does, but on an instance the caller keeps between runs (`credflow_assets/celery_worker.py`).
    The task's body is Dagster's `execute_run` command body; no public API executes a launched
    run by its id on a given instance. Returns the command's exit code."""
    from dagster._cli.api import _execute_run_command_body
    from dagster._grpc.types import ExecuteRunArgs
    from dagster_shared.serdes import unpack_value

    args = unpack_value(val=packed_run_args, as_type=ExecuteRunArgs)
    try:
        return _execute_run_command_body(
            run_id=args.run_id, instance=instance, write_stream_fn=lambda _event: None,
            set_exit_code_on_failure=(True if args.set_exit_code_on_failure is None
                                      else args.set_exit_code_on_failure))
    finally:
        remove_emptied_compute_log_folders(instance, args.run_id)


def remove_emptied_compute_log_folders(instance: dg.DagsterInstance, run_id: str) -> None:
    """Remove the folders a cloud compute-log manager (deploy/'s `S3ComputeLogManager`) leaves
    on this machine for a finished run.

    Such a manager writes a step's output under `{local_dir}/{run_id}/compute_logs/`, uploads
    it and deletes the files, but not their folders: a long-lived Celery worker would gather two
    empty folders a run. A folder still holding a file (its upload failed) stays. Dagster's
    manager classes are not public API."""
    import contextlib
    from pathlib import Path

    from dagster._core.storage.cloud_storage_compute_log_manager import (
        CloudStorageComputeLogManager,
    )

    manager = instance.compute_log_manager
    if not isinstance(manager, CloudStorageComputeLogManager):
        return
    logs = Path(manager.local_manager.get_captured_local_path(
        [run_id, "compute_logs", "any"], "err")).parent
    for folder in (logs, logs.parent):
        with contextlib.suppress(OSError):  # gone already, or holding a file not uploaded
            folder.rmdir()


# -- sensor cursors ----------------------------------------------------------------------------

def _instigator_origin(sensor_name: str):
    from dagster._core.remote_origin import RemoteInstigatorOrigin

    return RemoteInstigatorOrigin(repository_origin=_repository_origin(),
                                  instigator_name=sensor_name)


def _stored_state(instance: dg.DagsterInstance, sensor_name: str):
    origin = _instigator_origin(sensor_name)
    # Looked up by selector (location, repository and sensor names), as the daemon does.
    return instance.get_instigator_state(origin.get_id(), origin.get_selector().get_id())


def sensor_cursor(instance: dg.DagsterInstance, sensor_name: str) -> str | None:
    """The cursor the daemon's last tick (or the last `credflow sync`) left for a sensor."""
    state = _stored_state(instance, sensor_name)
    data = state.instigator_data if state else None
    return getattr(data, "cursor", None)


def sensor_stopped(instance: dg.DagsterInstance, sensor_name: str) -> bool:
    """Whether someone stopped the sensor (the UI's toggle); a sensor never toggled runs as its
    code says."""
    from dagster._core.scheduler.instigation import InstigatorStatus

    state = _stored_state(instance, sensor_name)
    return state is not None and state.status == InstigatorStatus.STOPPED


def store_sensor_cursor(instance: dg.DagsterInstance, sensor: dg.SensorDefinition,
                        cursor: str | None) -> None:
    """Store a sensor's cursor where the daemon reads it on its next tick."""
    from dagster._core.scheduler.instigation import InstigatorStatus, SensorInstigatorData

    state = _stored_state(instance, sensor.name)
    if state is None:
        # The status the daemon itself records for a sensor whose status is set in code.
        _add_sensor_state(instance, sensor, InstigatorStatus.DECLARED_IN_CODE, cursor)
        return
    data = state.instigator_data or SensorInstigatorData(sensor_type=sensor.sensor_type)
    instance.update_instigator_state(state.with_data(data._replace(cursor=cursor)))


def _add_sensor_state(instance: dg.DagsterInstance, sensor: dg.SensorDefinition, status,
                      cursor: str | None = None) -> None:
    from dagster._core.scheduler.instigation import (
        InstigatorState,
        InstigatorType,
        SensorInstigatorData,
    )

    instance.add_instigator_state(InstigatorState(
        _instigator_origin(sensor.name), InstigatorType.SENSOR, status,
        SensorInstigatorData(cursor=cursor, sensor_type=sensor.sensor_type,
                             min_interval=sensor.minimum_interval_seconds),
    ))


def sensor_context(instance: dg.DagsterInstance, defs: dg.Definitions, sensor_name: str,
                   cursor: str | None, resources: Mapping[str, object]):
    """A sensor's evaluation context as the daemon builds it, with the code location's origin.

    `dg.build_sensor_context` leaves the origin out, and a run-status sensor only sees the runs
    of its own code location: evaluated by `credflow sync` without one, the failure notifiers
    would never see a run that carries the origin.
    """
    from dagster._core.execution.build_resources import wrap_resources_for_execution

    return dg.SensorEvaluationContext(
        instance_ref=instance.get_ref(),
        last_tick_completion_time=None,
        last_run_key=None,
        cursor=cursor,
        log_key=None,
        repository_name=REPOSITORY_NAME,
        repository_def=defs.get_repository_def(),
        instance=instance,
        sensor_name=sensor_name,
        resources=wrap_resources_for_execution(resources),
        code_location_origin=_repository_origin().code_location_origin,
    )


def stop_sensor(instance: dg.DagsterInstance, sensor: dg.SensorDefinition) -> None:
    """Stop a sensor in the instance, as the UI's toggle does (its cursor stays): the daemon
    reads the state by its selector. For a deployment test that lets one sensor tick alone;
    no public API stops a sensor without a webserver."""
    from dagster._core.scheduler.instigation import InstigatorStatus

    state = _stored_state(instance, sensor.name)
    if state is None:
        _add_sensor_state(instance, sensor, InstigatorStatus.STOPPED)
    else:
        instance.update_instigator_state(state.with_status(InstigatorStatus.STOPPED))


def instance_config_errors(dagster_home: str, section: str, config_class) -> list[str]:
    """The problems Dagster finds in one section of `DAGSTER_HOME/dagster.yaml` (e.g. a run
    launcher's config) without building it: the Kubernetes launcher cannot be built without a
    cluster, and no public API validates a configurable class's config alone."""
    from dagster._config import process_config
    from dagster._core.instance.config import dagster_instance_config

    instance_config, _ = dagster_instance_config(dagster_home)
    processed = process_config(config_class.config_type(), instance_config[section]["config"])
    return [] if processed.success else [str(error) for error in processed.errors]


# -- instance retention (common/instance_retention.py) -----------------------------------------
# Dagster deletes a run's event log only whole, with the run (`delete_run`), and purges ticks
# one sensor or schedule at a time without saying how many went; no public API keeps a run and
# its lineage while dropping its log lines, nor counts what a purge removed. Retention reads and
# deletes those rows in the storages' own SQL tables (SQLite or PostgreSQL, whichever the
# instance has), and keeps its progress in the run storage's key-value table, as Dagster's own
# daemons keep theirs.

def _event_rows_to_prune(table, run_ids, kept_types):
    import sqlalchemy as sa

    return sa.and_(table.c.run_id.in_(list(run_ids)),
                   sa.or_(table.c.dagster_event_type.is_(None),
                          table.c.dagster_event_type.notin_(sorted(kept_types))))


def _count_and_delete(connection, table, where, text_column, dry_run: bool) -> tuple[int, int]:
    """(rows, characters of their serialized body) matching `where`; deleted unless dry_run."""
    import sqlalchemy as sa

    rows, size = connection.execute(
        sa.select(sa.func.count(), sa.func.coalesce(sa.func.sum(sa.func.length(text_column)), 0))
        .select_from(table).where(where)).one()
    if rows and not dry_run:
        connection.execute(table.delete().where(where))
    return int(rows), int(size)


def prune_run_event_logs(instance: dg.DagsterInstance, run_ids: Sequence[str],
                         kept_types: frozenset[str], *, dry_run: bool) -> tuple[int, int, int]:
    """Delete the event-log rows of `run_ids` whose type is not in `kept_types` (plain log
    lines have no type, and go). Returns (rows, bytes of their records, bytes freed on disk).

    SQLite's default storage keeps each run's log in a file of its own (a shard), and mirrors
    the asset, check and run-status events into an index file: those are all kept types, so
    only the run files change, and each is compacted (VACUUM) to give the space back. A single
    database (PostgreSQL, consolidated SQLite) deletes in one statement per batch; PostgreSQL
    reuses the space after its autovacuum (a VACUUM FULL would lock the table)."""
    import os

    from dagster._core.storage.event_log.schema import SqlEventLogStorageTable as table

    storage = instance.event_log_storage
    if not storage.is_run_sharded:
        with storage.index_transaction() as connection:
            rows, size = _count_and_delete(connection, table,
                                           _event_rows_to_prune(table, run_ids, kept_types),
                                           table.c.event, dry_run)
        return rows, size, 0
    rows = size = freed = 0
    for run_id in run_ids:
        path = storage.path_for_shard(run_id)
        if not os.path.exists(path):  # opening a missing shard would create it
            continue
        with storage.run_connection(run_id) as connection:
            shard_rows, shard_size = _count_and_delete(
                connection, table, _event_rows_to_prune(table, [run_id], kept_types),
                table.c.event, dry_run)
        rows, size = rows + shard_rows, size + shard_size
        if shard_rows and not dry_run:
            freed += _vacuum_sqlite(path)
    return rows, size, freed


def _vacuum_sqlite(path: str) -> int:
    """Compact one SQLite file; the bytes it shrank by (0 when another process holds it)."""
    import os
    import sqlite3

    def size() -> int:
        return sum(os.path.getsize(p) for p in (path, f"{path}-wal") if os.path.exists(p))

    before = size()
    connection = sqlite3.connect(path, timeout=30, isolation_level=None)
    try:
        connection.execute("VACUUM")
        connection.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    except sqlite3.OperationalError:
        return 0  # busy: the rows are gone all the same, the file shrinks at the next prune
    finally:
        connection.close()
    return max(before - size(), 0)


def prune_ticks(instance: dg.DagsterInstance, before: float, *, batch_size: int,
                dry_run: bool, progress=None) -> tuple[int, int, int | None]:
    """Delete sensor and schedule ticks older than `before` (a Unix time), in batches, except
    each sensor's or schedule's newest: the daemon resumes an interrupted tick from it; and the
    captured log of each, wherever the compute-log manager keeps it. Returns (ticks, bytes of
    their records, the local manager's log files deleted: None for a remote manager, whose
    objects are deleted uncounted, and 0 for a dry run, which does not look)."""
    import sqlalchemy as sa
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
    from dagster._core.storage.schedules.schema import JobTickTable as ticks
    from dagster._time import datetime_from_timestamp

    storage = instance.schedule_storage
    if storage is None:
        return 0, 0, 0
    instigator = sa.func.coalesce(ticks.c.selector_id, ticks.c.job_origin_id)
    with _schedule_transaction(storage) as connection:
        newest = [row[0] for row in connection.execute(
            sa.select(sa.func.max(ticks.c.id)).group_by(instigator))]
    old = sa.and_(ticks.c.timestamp < datetime_from_timestamp(before), ticks.c.id.notin_(newest))
    if dry_run:
        with _schedule_transaction(storage) as connection:
            return (*_count_and_delete(connection, ticks, old, ticks.c.tick_body, dry_run=True),
                    0)
    removed = size = 0
    log_files = 0 if isinstance(instance.compute_log_manager, LocalComputeLogManager) else None
    while True:
        with _schedule_transaction(storage) as connection:
            rows = connection.execute(sa.select(ticks.c.id, ticks.c.tick_body).where(old)
                                      .order_by(ticks.c.id).limit(batch_size)).all()
            if not rows:
                return removed, size, log_files
            batch_rows, batch_size_chars = _count_and_delete(
                connection, ticks, ticks.c.id.in_([row[0] for row in rows]), ticks.c.tick_body,
                dry_run=False)
        deleted = _delete_tick_logs(instance, [row[1] for row in rows])
        log_files = None if log_files is None else log_files + deleted
        removed, size = removed + batch_rows, size + batch_size_chars
        if progress:
            progress(f"ticks: {removed} removed")


def _delete_tick_logs(instance: dg.DagsterInstance, tick_bodies: Sequence[str]) -> int:
    """Delete these ticks' captured logs (a tick's record names its log key, when the tick
    wrote a line) through the instance's compute-log manager: the local manager's files, or a
    cloud manager's objects (S3's: one DeleteObjects request a tick, with no listing, since
    the key names them). Returns how many files the local manager had; a cloud manager's
    objects are not counted (that would be a request an object)."""
    import os

    from dagster._core.scheduler.instigation import TickData
    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager
    from dagster_shared.serdes import deserialize_value

    manager = instance.compute_log_manager
    counted = isinstance(manager, LocalComputeLogManager)
    deleted = 0
    for body in tick_bodies:
        log_key = deserialize_value(body, TickData).log_key
        if not log_key:
            continue
        if counted:
            deleted += sum(os.path.isfile(manager.get_captured_local_path(log_key, extension))
                           for extension in ("err", "out", "complete"))
        manager.delete_logs(log_key=log_key)  # its partial uploads too
    return deleted


def _schedule_transaction(storage):
    from contextlib import contextmanager

    @contextmanager
    def transaction():
        with storage.connect() as connection:
            if connection.in_transaction():
                yield connection
            else:
                with connection.begin():
                    yield connection
    return transaction()


def delete_compute_logs(instance: dg.DagsterInstance, run_id: str,
                        *, dry_run: bool) -> tuple[int | None, int | None]:
    """Delete a run's captured stdout/stderr through the instance's compute log manager.
    Returns (files, bytes) for the local manager (whose files can be counted), (None, None)
    for another (S3, Azure…), which deletes without saying what."""
    import os

    from dagster._core.storage.local_compute_log_manager import LocalComputeLogManager

    manager = instance.compute_log_manager
    prefix = [run_id, "compute_logs"]
    if not isinstance(manager, LocalComputeLogManager):
        if not dry_run:
            manager.delete_logs(prefix=prefix)
        return None, None
    # The directory the prefix names: where any log key under it would be written.
    folder = os.path.dirname(manager.get_captured_local_path([*prefix, "_"], "out"))
    files = size = 0
    for parent, _, names in os.walk(folder):
        for name in names:
            files += 1
            size += os.path.getsize(os.path.join(parent, name))
    if files and not dry_run:
        manager.delete_logs(prefix=prefix)
        try:
            os.rmdir(os.path.dirname(folder))  # the run's folder, when nothing else is in it
        except OSError:
            pass
    return files, size


def retention_watermark(instance: dg.DagsterInstance, key: str) -> float | None:
    """The Unix time a finished prune reached, stored under `key` (None before the first)."""
    value = instance.run_storage.get_cursor_values({key}).get(key)
    return float(value) if value else None


def store_retention_watermark(instance: dg.DagsterInstance, key: str, value: float) -> None:
    instance.run_storage.set_cursor_values({key: repr(value)})


# -- an append-only log in the instance's database (common/partition_archive.py) ---------------
# The run storage's key-value table lives in the instance's own database (SQLite under
# DAGSTER_HOME, or the deployment's PostgreSQL), so every process of a deployment reads the same
# rows, whichever machine or pod it runs on. Its calls (`get_cursor_values`, `set_cursor_values`)
# overwrite a key that exists; a log that two writers append to needs an insert the table's
# unique key refuses instead, so that they never take the same entry.

def read_instance_values(instance: dg.DagsterInstance, keys: set[str]) -> Mapping[str, str]:
    """The values stored under those of `keys` that exist."""
    return instance.run_storage.get_cursor_values(keys)


def insert_instance_value(instance: dg.DagsterInstance, key: str, value: str) -> bool:
    """Store `value` under `key` unless the key exists (then False, and nothing is written)."""
    from dagster._core.storage.runs.schema import KeyValueStoreTable
    from sqlalchemy.exc import IntegrityError

    try:
        with instance.run_storage.connect() as connection:
            connection.execute(KeyValueStoreTable.insert().values(key=key, value=value))
    except IntegrityError:
        return False
    return True

# -- dynamic partitions in bulk ----------------------------------------------------------------

# Keys per DELETE statement (and per batch of events): well under SQLite's 32,766 bound
# parameters.
BULK_CHUNK = 1000


def delete_dynamic_partitions(instance: dg.DagsterInstance, partitions_def_name: str,
                              keys: Sequence[str]) -> None:
    """Delete many keys of a dynamic partition set, 1,000 per statement.

    The public `DagsterInstance.delete_dynamic_partition` deletes one key per statement and
    connection: 15-40 ms each here, so archiving 90,000 partitions took 20-60 minutes
    (bench/RESULTS.md §6). Dagster's SQL storages keep the keys in one table, which this deletes
    from as the public method does, with `IN` over a chunk of keys; any other storage gets the
    public method, key by key.
    """
    from dagster._core.storage.event_log.schema import DynamicPartitionsTable
    from dagster._core.storage.event_log.sql_event_log import SqlEventLogStorage

    storage = instance.event_log_storage
    if not isinstance(storage, SqlEventLogStorage):
        for key in keys:
            instance.delete_dynamic_partition(partitions_def_name, key)
        return
    table = DynamicPartitionsTable
    for start in range(0, len(keys), BULK_CHUNK):
        chunk = list(keys[start:start + BULK_CHUNK])
        with storage.index_connection() as connection:
            connection.execute(table.delete().where(
                (table.c.partitions_def_name == partitions_def_name)
                & table.c.partition.in_(chunk)))


def store_runless_materializations(instance: dg.DagsterInstance,
                                   materializations: Sequence[tuple[dg.AssetMaterialization,
                                                                    float]]) -> None:
    """Store (materialization, timestamp) pairs as runless events, in one batch.

    For the benchmarks' fills only (bench/partition_budget.py): the public
    `report_runless_asset_event` writes one event per transaction at the current time (16-23 ms
    each here, 100,000 take half an hour), and a file processed long ago needs its own time.
    PostgreSQL's storage writes a batch in one INSERT; SQLite's stores the events one by one.
    """
    from dagster._core.events import DagsterEvent, DagsterEventType, StepMaterializationData
    from dagster._core.events.log import EventLogEntry
    from dagster._core.instance.utils import RUNLESS_JOB_NAME, RUNLESS_RUN_ID

    entries = [EventLogEntry(
        error_info=None, level=20, user_message="", run_id=RUNLESS_RUN_ID, timestamp=timestamp,
        dagster_event=DagsterEvent(
            event_type_value=DagsterEventType.ASSET_MATERIALIZATION.value,
            job_name=RUNLESS_JOB_NAME,
            event_specific_data=StepMaterializationData(materialization)))
        for materialization, timestamp in materializations]
    for start in range(0, len(entries), BULK_CHUNK):
        instance.event_log_storage.store_event_batch(entries[start:start + BULK_CHUNK])


# -- per-partition indexes (common/reconciliation.py, common/partition_archive.py) -------------
# Each partition's latest materialization, and each partition's latest run, come from Dagster's
# own indexes in one query per asset or job (what the UI's partition page reads), through
# instance methods Dagster does not mark public; the public record queries would cost a query
# per partition, which is what keeps a reconciliation tick or an archive of 100,000 partitions
# cheap.

def latest_materialization_ids(instance: dg.DagsterInstance, asset_key: dg.AssetKey,
                               partitions: set[str] | None = None) -> Mapping[str, int]:
    """Partition key → the storage id of its latest materialization (only materialized ones;
    `partitions`: these only, never an empty set, which Dagster reads as all)."""
    return instance.get_latest_storage_id_by_partition(
        asset_key, dg.DagsterEventType.ASSET_MATERIALIZATION, partitions=partitions)


def run_partition_data(instance: dg.DagsterInstance, runs_filter: dg.RunsFilter) -> Sequence:
    """Each partition's newest run among `runs_filter`'s: run id, status, start and end time."""
    return instance.get_run_partition_data(runs_filter)


# -- the local stack's SQLite event log (local/dagster.yaml, `event_log_storage`) --------------
# Dagster's SQLite event log keeps each run in a database file of its own (a shard) and builds
# each one from nothing when the run's first event is written: some 20 tables with their
# indexes, then an Alembic stamp that parses every migration script. That costs as much as 10 to
# 20 of the run's 23 event writes (50-300 ms a run here, bench/RESULTS.md §4, session 9), and no
# setting changes it. This subclass builds one empty shard per process, keeps its bytes, and
# writes them for each new run: the same database Dagster builds (its schema, its Alembic
# revision, WAL mode). Every other case goes to Dagster's own code: the index shard, a shard
# that exists, one that another process creates at the same moment.
#
# It also keeps the connections a run's events are written through. Dagster opens a new engine
# and connection for every use, and since that connection is the file's only one, closing it
# checkpoints the WAL into the file and removes -wal/-shm: some 5 of the 6 ms an event write to
# the run's file takes, and as much for each of the index's (asset, check and run-status events
# are copied there): bench/event_timing/, RESULTS §4 session 10. Here the process writing a
# run's events keeps one connection to that run's file, and one to the index while it holds any
# run's, each event still its own transaction, committed with its fsync as before
# (synchronous=FULL unchanged: no durability given up). At the run's end event (RUN_SUCCESS,
# RUN_FAILURE, RUN_CANCELED) the run's is closed, and the index's if no other run's is held,
# leaving the files as Dagster leaves them. At most HELD_RUN_SHARDS run files are held (the least
# recently written is closed first), so a `credflow sync` of 1,000 runs, or the daemon writing
# a few events for each run it queues and starts (it never sees their end: it may hold its
# last few runs' files, and the index, for as long as it runs), never holds many files open.
# What others rely on stays:
# - each event is committed before store_event returns: any other connection or process
#   (the webserver, the daemon's sensors, `credflow instance prune`) reads it, as before;
# - only store_event's writes use the held connections; every read, and every other use of a
#   file (prune's deletes and VACUUM, wipe, upgrade), keeps Dagster's connection per use; a held
#   connection holds no lock between events, so VACUUM and other writers go through;
# - the UI's live run log (Dagster's watchdog on the run's .db file) is woken by a change to the
#   .db file itself, which Dagster's checkpoint at each close made: the file's times are set
#   after each commit instead (an inotify attribute change, which watchdog reports as modified);
# - a held file that was deleted or replaced meanwhile is let go, and the write goes to the
#   file now at that path (built anew if none: Dagster's own write would fail on an empty file
#   there); wipe and dispose close every held one;
# - a forked child does not use its parent's connections (SQLite forbids it): it opens its own.
#
# dagster.yaml names the class; it is made on first use (module `__getattr__`), so importing
# this module does not import Dagster's storage (Alembic and its templates, about 0.4 s).

PREBUILT_SHARD_STORAGE = "PrebuiltShardSqliteEventLogStorage"
# Run files a process keeps a connection to: `credflow sync` writes one run at a time, a run
# process one, the daemon's run queue up to its max_concurrent_runs (4) at once.
HELD_RUN_SHARDS = 4


def __getattr__(name: str):
    if name == PREBUILT_SHARD_STORAGE:
        return _prebuilt_shard_storage_class()
    if name == POOLED_POSTGRES_STORAGE:
        return _pooled_postgres_storage_class()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


@cache
def _prebuilt_shard_storage_class():
    import os
    import tempfile
    import threading
    from collections import OrderedDict
    from contextlib import contextmanager, suppress
    from typing import NamedTuple

    import sqlalchemy as sa
    from dagster._core.storage.event_log import SqliteEventLogStorage
    from dagster._core.storage.event_log.sqlite.sqlite_event_log import INDEX_SHARD_NAME
    from dagster._core.storage.sqlite import SQLITE_BUSY_TIMEOUT_SECONDS

    run_ends = frozenset({dg.DagsterEventType.RUN_SUCCESS, dg.DagsterEventType.RUN_FAILURE,
                          dg.DagsterEventType.RUN_CANCELED})

    class HeldShard(NamedTuple):
        engine: sa.Engine
        connection: sa.Connection
        inode: int | None  # the file it was opened on: another at that path means it was replaced

    def close_held(held: HeldShard) -> None:
        with suppress(Exception):  # a connection that is unusable is let go all the same
            held.connection.close()  # the file's last connection: the WAL checkpointed into it
        held.engine.dispose()

    shard_bytes: list[bytes] = []
    lock = threading.Lock()

    def empty_shard(storage) -> bytes:
        with lock:
            if not shard_bytes:
                with tempfile.TemporaryDirectory(prefix="credflow-shard-") as directory:
                    path = os.path.join(directory, "shard.db")
                    engine = sa.create_engine(f"sqlite:///{path}", poolclass=sa.pool.NullPool)
                    SqliteEventLogStorage._initdb(storage, engine)
                    engine.dispose()  # the last connection closes: WAL checkpointed into the file
                    with open(path, "rb") as built:
                        shard_bytes.append(built.read())
            return shard_bytes[0]

    class PrebuiltShardSqliteEventLogStorage(SqliteEventLogStorage):
        """SQLite event log whose run shards are copies of one built per process.

        `base_dir` defaults to Dagster's own (`$DAGSTER_HOME/history/runs/`, from the instance's
        home), so that the same dagster.yaml serves any home it is copied to."""

        def __init__(self, base_dir: str | None = None, inst_data=None):
            self._deferred_inst_data = inst_data
            self._writing = threading.local()  # the run whose event this thread is writing
            if base_dir is not None:
                super().__init__(base_dir, inst_data)

        @classmethod
        def config_type(cls):
            return {"base_dir": dg.Field(dg.StringSource, is_required=False)}

        @classmethod
        def from_config_value(cls, inst_data, config_value):
            return cls(inst_data=inst_data, **config_value)

        def register_instance(self, instance) -> None:
            if not hasattr(self, "_base_dir"):  # no base_dir configured: the instance's home
                super().__init__(os.path.join(instance.root_directory, "history", "runs", ""),
                                 self._deferred_inst_data)
            super().register_instance(instance)

        def _initdb(self, engine, for_index_shard=False) -> None:
            path = engine.url.database
            if (for_index_shard or os.path.exists(path)
                    or os.path.basename(path) == f"{INDEX_SHARD_NAME}.db"):
                return super()._initdb(engine, for_index_shard)
            partial = f"{path}.{os.getpid()}-{threading.get_ident()}.partial"
            try:
                with open(partial, "wb") as copy:
                    copy.write(empty_shard(self))
                os.link(partial, path)  # the shard appears whole, or not if another made it
            except OSError:  # made meanwhile (FileExistsError), or no hard links here
                super()._initdb(engine, for_index_shard)
            finally:
                if os.path.exists(partial):
                    os.unlink(partial)

        # -- the connection a run's events are written through (see the module comment) -------

        def store_event(self, event) -> None:
            writing = self._writing
            writing.run_id = event.run_id  # run_connection() below gives this run's held one
            try:
                super().store_event(event)
            finally:
                writing.run_id = None
            if event.is_dagster_event and event.dagster_event_type in run_ends:
                self._let_go(event.run_id)

        def run_connection(self, run_id=None):
            if run_id and run_id == getattr(self._writing, "run_id", None):
                return self._held_connection(run_id)
            return super().run_connection(run_id)

        def index_connection(self):
            if self.hold_index and getattr(self._writing, "run_id", None):
                return self._held_connection(INDEX_SHARD_NAME)
            return super().index_connection()

        hold_index = True  # False: only the run's file held (bench/event_timing compares them)

        @contextmanager
        def _held_connection(self, shard: str):
            path = self.path_for_shard(shard)
            with self._db_lock:  # Dagster's own lock for its connections, one thread at a time
                shards = self._held_shards()
                held = shards.pop(shard, None)
                if held is not None and held.inode != _inode(path):  # deleted or replaced
                    close_held(held)
                    held = None
                    self._initialized_dbs.discard(shard)  # a deleted one is built again
                if held is None:
                    held = self._open_held(shard, path)
                try:
                    with held.connection.begin():
                        yield held.connection
                except BaseException:
                    close_held(held)  # as Dagster's would be; the next event opens another
                    raise
                shards[shard] = held  # the most recently written last
                if shard != INDEX_SHARD_NAME:
                    with suppress(OSError):  # wakes the UI's live run log (Dagster's watchdog)
                        os.utime(path)
                runs = [name for name in shards if name != INDEX_SHARD_NAME]
                for oldest in runs[:max(len(runs) - HELD_RUN_SHARDS, 0)]:
                    close_held(shards.pop(oldest))

        def _open_held(self, shard: str, path: str) -> HeldShard:
            engine = sa.create_engine(
                self.conn_string_for_shard(shard), poolclass=sa.pool.NullPool,
                # used under _db_lock by whichever thread writes the run's events
                connect_args={"timeout": SQLITE_BUSY_TIMEOUT_SECONDS,
                              "check_same_thread": False})
            if shard not in self._initialized_dbs:
                self._initdb(engine)
                self._initialized_dbs.add(shard)
            connection = engine.connect()
            return HeldShard(engine, connection, _inode(path))

        def _held_shards(self) -> OrderedDict:
            """This process's held connections (a forked child starts with none of its own)."""
            if getattr(self, "_held_pid", None) != os.getpid():
                self._held, self._held_pid = OrderedDict(), os.getpid()
            return self._held

        def _let_go(self, run_id: str | None = None) -> None:
            """Close the held connection of `run_id` (and the index's, when no run's is left
            held), or all of them."""
            with self._db_lock:
                shards = self._held_shards()
                for shard in [run_id] if run_id else list(shards):
                    held = shards.pop(shard, None)
                    if held is not None:
                        close_held(held)
                if list(shards) == [INDEX_SHARD_NAME]:
                    close_held(shards.pop(INDEX_SHARD_NAME))

        def wipe(self) -> None:
            self._let_go()  # before Dagster deletes the files
            super().wipe()

        def dispose(self) -> None:
            self._let_go()
            super().dispose()

    def _inode(path: str) -> int | None:
        try:
            return os.stat(path).st_ino
        except FileNotFoundError:
            return None

    PrebuiltShardSqliteEventLogStorage.__module__ = __name__
    PrebuiltShardSqliteEventLogStorage.__qualname__ = PREBUILT_SHARD_STORAGE
    return PrebuiltShardSqliteEventLogStorage


# -- production PostgreSQL storage (deploy/dagster.celery.yaml, dagster.k8s.yaml: `storage`) ----
# dagster-postgres gives its run and event-log storages an engine without a pool ("not holding
# any connections open to prevent accumulating connections per DagsterInstance"), so each read
# and each write opens a new connection: a TCP handshake, authentication and a new server
# process, 2.4 ms here against 0.13 ms through a kept one, for every one of a run's ~28 event
# writes and its run-status updates, and on the server a process forked for each
# (bench/RESULTS.md §7, session 11). `PooledPostgresStorage` is Dagster's own PostgreSQL storage
# (its tables, statements, transactions, migrations) whose run and event-log storages keep
# their connections between uses:
# - the run storage keeps one idle connection, the event log two, since Dagster opens a second
#   inside the first for each materialization or check result it stores (its tags table
#   check); a further use at the same time (another thread) opens another, closed after it
#   (the overflow is unbounded, as a pool-less engine never blocked). So a process using an
#   instance keeps 3: the daemon, and each Celery pool process, which keeps its instance
#   between runs (credflow_assets/celery_worker.py);
# - a kept connection is pinged before each use, so a restarted server or a connection a proxy
#   dropped is replaced, not raised, and it is replaced after POOL_RECYCLE_SECONDS anyway;
# - a forked child never uses its parent's connections: it opens its own;
# - the webserver replaces the engine with its own pool, as before (`optimize_for_webserver`);
#   the schedule storage (the daemon's ticks, a few statements a tick) keeps Dagster's engine,
#   since the instance never disposes it.

POOLED_POSTGRES_STORAGE = "PooledPostgresStorage"
POOL_RECYCLE_SECONDS = 3600


@cache
def _pooled_postgres_storage_class():
    import os
    import weakref

    import sqlalchemy as sa
    from dagster._core.storage.base_storage import DagsterStorage
    from dagster_postgres import PostgresEventLogStorage, PostgresRunStorage
    from dagster_postgres.schedule_storage import PostgresScheduleStorage
    from dagster_postgres.storage import DagsterPostgresStorage
    from dagster_postgres.utils import (
        create_pg_engine,
        get_token_provider_from_config,
        pg_url_from_config,
    )

    # In a forked child every kept engine starts a new pool, leaving the parent's connections
    # untouched (SQLAlchemy's `dispose(close=False)` recipe for os.fork; psycopg2 closes a
    # connection only in the process that opened it). A check at checkout would come too late:
    # the pre-ping would already have written to the parent's socket.
    kept_engines: weakref.WeakSet[sa.Engine] = weakref.WeakSet()

    def forget_the_parents_connections() -> None:
        for engine in list(kept_engines):
            engine.dispose(close=False)

    os.register_at_fork(after_in_child=forget_the_parents_connections)

    def kept_connection_engine(storage, kept_connections: int) -> sa.Engine:
        options = storage._engine.url.query.get("options")
        engine = create_pg_engine(
            storage.postgres_url, storage._token_provider, isolation_level="AUTOCOMMIT",
            pool_size=kept_connections, max_overflow=-1, pool_pre_ping=True,
            pool_recycle=POOL_RECYCLE_SECONDS,
            **({"connect_args": {"options": options}} if options else {}))

        kept_engines.add(engine)
        return engine

    def keeping_connections(storage_class, kept_connections: int):
        class Kept(storage_class):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **kwargs)  # Dagster's table check, on its own engine
                self._engine = kept_connection_engine(self, kept_connections)

            def optimize_for_webserver(self, *args, **kwargs) -> None:
                self._engine.dispose()  # the webserver's own pool replaces this one
                super().optimize_for_webserver(*args, **kwargs)

            def dispose(self) -> None:
                super().dispose()
                self._engine.dispose()

        Kept.__name__ = Kept.__qualname__ = f"Pooled{storage_class.__name__}"
        Kept.__module__ = __name__
        return Kept

    run_storage_class = keeping_connections(PostgresRunStorage, kept_connections=1)
    event_log_storage_class = keeping_connections(PostgresEventLogStorage, kept_connections=2)

    class PooledPostgresStorage(DagsterPostgresStorage):
        """Dagster's PostgreSQL storage, its run and event-log storages keeping connections."""

        def __init__(self, postgres_url: str, should_autocreate_tables: bool = True,
                     inst_data=None, token_provider=None):
            self.postgres_url = postgres_url
            self.should_autocreate_tables = should_autocreate_tables
            self._inst_data = inst_data
            self._run_storage = run_storage_class(
                postgres_url, should_autocreate_tables, token_provider=token_provider)
            self._event_log_storage = event_log_storage_class(
                postgres_url, should_autocreate_tables, token_provider=token_provider)
            self._schedule_storage = PostgresScheduleStorage(
                postgres_url, should_autocreate_tables, token_provider=token_provider)
            DagsterStorage.__init__(self)

        @classmethod
        def from_config_value(cls, inst_data, config_value):
            return cls(inst_data=inst_data, postgres_url=pg_url_from_config(config_value),
                       should_autocreate_tables=config_value.get("should_autocreate_tables", True),
                       token_provider=get_token_provider_from_config(config_value))

    PooledPostgresStorage.__module__ = __name__
    return PooledPostgresStorage
