"""The production path, run for real: deploy/dagster.celery.yaml with its own processes.

An analyst's CSV lands in `staging/claims/`; `staging_events_sensor`, ticking under
`dagster-daemon run`, requests a run; the daemon's run queue hands it to the `CeleryRunLauncher`,
which publishes it to RabbitMQ; a `dagster-celery` worker (deploy/celery.yaml) consumes it and
executes the run in its own pool process; everything is stored in PostgreSQL, where the test reads
the run back. The test's own process only sets the scene (sensor states, the upload) and checks.
Two files are uploaded, so that one pool process executes two runs, one after the other, on the
instance it keeps (`credflow_assets/celery_worker.py`, the app the worker is started with). Last,
`dagster-webserver` on the same dagster.yaml shows both runs as the UI would (GraphQL).

What the worker needs, as in production: the run executes inside its pool process, which loads
the code location itself from the run's origin (module `credflow_assets.definitions`). So the
worker needs credflow installed and the code location's environment (CREDFLOW_CONFIG and the
config's {env: …} variables), plus DAGSTER_HOME with the same dagster.yaml and its DAGSTER_PG_*
variables, since the task opens the instance with `DagsterInstance.get()`.

Isolation, so that the test sees only its own file and its own run:
- a stack of its own (moto, sshd, the Drive server): the daemon ticks every sensor that is
  running, and on the session's shared stack it would consume other modules' S3 events and move
  their files;
- every sensor but `staging_events_sensor` is stopped before the daemon starts, as an operator
  would stop them in the UI: the staging reconciliation sensor would otherwise also request a run
  for the same upload whenever its first tick comes before the event sensor's (the daemon shuffles
  the order), and the second run would check the promoted copy again: two runs, not one;
- a Celery queue of its own (the launcher's `default_queue`, the worker's `-q`), deleted
  afterwards: RabbitMQ's default vhost is shared by every test session on this machine, and a
  worker of another session would take this run and fail to find it in its own database.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlparse

import boto3
import pytest
import sqlalchemy as sa
import yaml

from credflow_assets.local.process import free_port, wait_for_port
from credflow_assets.staged_tables.layout import partition_key_for
from credflow_assets_tests.conftest import DEFAULT_CONFIG, REPO, running_stack
from credflow_assets_tests.dagster_ui import (
    CAPTURED_LOGS_QUERY,
    RUN_EVENTS_QUERY,
    post_graphql,
    unwrap,
)

BIN = Path(sys.executable).parent
BROKER_URL = os.environ.get("CREDFLOW_TEST_RABBITMQ_URL", "amqp://guest:guest@127.0.0.1:5672//")


def backend_url(postgres_url: str) -> str:
    """Celery's result backend: the deployment's PostgreSQL database, which every process reads
    (run monitoring asks it for each started run's task state; `rpc://` would answer PENDING)."""
    return "db+" + postgres_url

SENSOR = "staging_events_sensor"
BUCKET = "credflow-adhoc"
LOGS_BUCKET = "credflow-logs"
DATABASE = "credflow_adhoc"
TABLE = "claims"
INGEST_DATE = "2024-05-31"
CLAIMS_CSV = (
    "claim_id,first_name,last_name,service_date,amount_usd,status\n"
    "C-3001,Nicholas,Lamb,2024-05-02,120.50,paid\n"
    "C-3002,Erin,Adams,2024-05-19,80.00,submitted\n"
)

# From the daemon's start to the runs' end takes 12-26 s on this 2-core machine (busier: longer).
RUN_DEADLINE_SECONDS = 90
SECOND_TICK_DEADLINE_SECONDS = 60
WEBSERVER_DEADLINE_SECONDS = 120
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    with running_stack(tmp_path_factory.mktemp("production_celery") / "home") as (_, _, variables):
        yield variables


def require_rabbitmq() -> None:
    """Fail (never skip) with the way to start it when RabbitMQ does not accept our login."""
    import kombu

    connection = kombu.Connection(BROKER_URL, connect_timeout=5)
    try:
        with connection:
            connection.connect()
    except Exception as error:  # noqa: BLE001 - any failure to connect means the same thing
        pytest.fail(
            f"RabbitMQ is not reachable at {connection.as_uri()} ({error}). Start it with "
            "`scripts/test-services.sh` (`make test` runs it) or `rabbitmq-server -detached`; "
            "install it with `scripts/system-deps.sh --test` (apt-get install rabbitmq-server). "
            "Set CREDFLOW_TEST_RABBITMQ_URL to use another broker."
        )


@pytest.fixture
def broker_queue():
    """A Celery queue name for this test alone; the queue, and the direct exchange Celery names
    after it, are deleted afterwards."""
    import kombu

    name = f"credflow-test-{uuid.uuid4().hex[:12]}"
    yield name
    with kombu.Connection(BROKER_URL, connect_timeout=5) as connection:
        try:
            connection.connect()
        except Exception:  # noqa: BLE001 - no broker, no queue: the test failed saying so
            return
        channel = connection.channel()
        channel.queue_delete(name)
        channel.exchange_delete(name)


# --- the deployment's processes --------------------------------------------------------------


@dataclass
class Service:
    """A process started in its own session (process group), its output in `log_path`."""

    name: str
    process: subprocess.Popen
    log_path: Path
    started: float = field(default_factory=time.monotonic)

    @property
    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""

    def require_running(self) -> None:
        if self.process.poll() is not None:
            raise AssertionError(f"{self.name} exited with status {self.process.returncode}:\n"
                                 f"{self.log[-4000:]}")


def _signal_group(group: int, sig: signal.Signals) -> None:
    try:
        os.killpg(group, sig)
    except ProcessLookupError:
        pass


def _group_exists(group: int) -> bool:
    try:
        os.killpg(group, 0)
    except ProcessLookupError:
        return False
    return True


def stop_services(services: list[Service], timeout: float = 15.0) -> None:
    """SIGTERM to each service's whole group (the daemon's code server, Celery's pool process),
    both at once since each takes a few seconds to shut down; SIGKILL to whatever is left after
    `timeout`."""
    for service in services:
        _signal_group(service.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        for service in services:
            service.process.poll()  # reap the leader, or its group never empties
        if not any(_group_exists(service.process.pid) for service in services):
            return
        time.sleep(0.1)
    for service in services:
        _signal_group(service.process.pid, signal.SIGKILL)
        service.process.wait(timeout=5)


def start_service(name: str, command: list[str], log_path: Path, env: dict[str, str]) -> Service:
    with open(log_path, "wb") as log:
        process = subprocess.Popen(command, stdin=subprocess.DEVNULL, stdout=log,
                                   stderr=subprocess.STDOUT, env=env, cwd=REPO,
                                   start_new_session=True)
    return Service(name, process, log_path)


# --- helpers -----------------------------------------------------------------------------------


def write_dagster_home(home: Path, queue: str, compute_logs_dir: Path) -> Path:
    """DAGSTER_HOME/dagster.yaml: deploy/dagster.celery.yaml as shipped, but for the launcher's
    queue, which is this test's own, and the compute logs' local folder (by default the
    system's temporary directory), this test's own."""
    home.mkdir()
    config = yaml.safe_load((REPO / "deploy" / "dagster.celery.yaml").read_text())
    assert config["run_launcher"]["class"] == "CeleryRunLauncher"
    config["run_launcher"]["config"]["default_queue"] = queue
    assert config["compute_logs"]["class"] == "S3ComputeLogManager"
    config["compute_logs"]["config"]["local_dir"] = str(compute_logs_dir)
    (home / "dagster.yaml").write_text(yaml.safe_dump(config, sort_keys=False))
    return home


def postgres_variables(postgres_url: str) -> dict[str, str]:
    parsed = urlparse(postgres_url.replace("+psycopg2", ""))
    # deploy/dagster.celery.yaml names port 5432; another server is reached only there.
    assert (parsed.port or 5432) == 5432, f"deploy/dagster.celery.yaml expects port 5432: {parsed}"
    return {"DAGSTER_PG_HOST": parsed.hostname, "DAGSTER_PG_DB": parsed.path.lstrip("/"),
            "DAGSTER_PG_USER": parsed.username, "DAGSTER_PG_PASSWORD": parsed.password}


def stop_every_sensor_but(instance, keep: str) -> list[str]:
    """Stop, in the instance, every sensor of the code location except `keep` (what the UI's
    toggle does); the daemon then ticks `keep` alone. Returns the stopped sensors' names."""
    from credflow_assets.config import load_config
    from credflow_assets.common.dagster_compat import stop_sensor
    from credflow_assets.definitions import build_definitions

    sensors = build_definitions(load_config(DEFAULT_CONFIG)).get_repository_def().sensor_defs
    assert keep in {sensor.name for sensor in sensors}
    stopped = []
    for sensor in sensors:
        if sensor.name != keep:
            stop_sensor(instance, sensor)
            stopped.append(sensor.name)
    return stopped


def runs_of_partition(engine, partition_key: str) -> list[tuple[str, str]]:
    """(run_id, status) of every run of `partition_key`, from PostgreSQL's own tables."""
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(sa.text(
            "SELECT runs.run_id, runs.status FROM runs JOIN run_tags "
            "ON run_tags.run_id = runs.run_id "
            "WHERE run_tags.key = 'dagster/partition' AND run_tags.value = :partition "
            "ORDER BY runs.create_timestamp"), {"partition": partition_key})]


def run_tags(engine, run_id: str) -> dict[str, str]:
    with engine.connect() as connection:
        return dict(connection.execute(sa.text(
            "SELECT key, value FROM run_tags WHERE run_id = :run_id"), {"run_id": run_id}).all())


def postgres_connections_opened(engine, pid: int) -> list[float]:
    """When each TCP connection that process `pid` holds to PostgreSQL was opened (epoch
    seconds): its sockets, read from /proc, matched by client port to `pg_stat_activity`."""
    sockets = set()
    for descriptor in Path(f"/proc/{pid}/fd").iterdir():
        try:
            target = os.readlink(descriptor)
        except OSError:  # closed while we looked
            continue
        if target.startswith("socket:["):
            sockets.add(target[len("socket:["):-1])
    client_ports = set()
    for table in ("tcp", "tcp6"):
        for line in Path(f"/proc/{pid}/net/{table}").read_text().splitlines()[1:]:
            fields = line.split()
            local, remote, inode = fields[1], fields[2], fields[9]
            if inode in sockets and int(remote.rsplit(":", 1)[1], 16) == 5432:
                client_ports.add(int(local.rsplit(":", 1)[1], 16))
    with engine.connect() as connection:
        started = connection.execute(sa.text(
            "SELECT client_port, extract(epoch FROM backend_start) FROM pg_stat_activity "
            "WHERE client_port IS NOT NULL")).all()
    return sorted(float(opened) for port, opened in started if port in client_ports)


def finished_ticks(engine) -> int:
    """How many sensor and schedule ticks the daemon has finished, from PostgreSQL's table."""
    with engine.connect() as connection:
        return connection.execute(sa.text(
            "SELECT count(*) FROM job_ticks WHERE status <> 'STARTED'")).scalar_one()


def s3_keys(s3, prefix: str) -> set[str]:
    """Every key under `prefix` of the logs bucket (the test's objects are few: one page)."""
    listed = s3.list_objects_v2(Bucket=LOGS_BUCKET, Prefix=prefix)
    assert not listed["IsTruncated"], prefix
    return {item["Key"] for item in listed.get("Contents", [])}


def wait_for(what: str, condition, deadline: float, services: list[Service],
             poll: float = 0.25):
    """Poll `condition` every `poll` seconds until it returns something truthy; fail naming
    `what` at the deadline, or at once if one of the deployment's processes died."""
    while True:
        value = condition()
        if value:
            return value
        for service in services:
            service.require_running()
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(poll)


def ancestors(pid: int) -> list[int]:
    """The parent, grandparent, … of a live process, from /proc."""
    chain = []
    while pid > 1:
        status = Path(f"/proc/{pid}/status").read_text()
        pid = int(next(line.split()[1] for line in status.splitlines()
                       if line.startswith("PPid:")))
        chain.append(pid)
    return chain


# --- the test ----------------------------------------------------------------------------------


@pytest.mark.postgres
def test_a_sensor_launched_run_executes_on_a_celery_worker(stack, postgres_url, broker_queue,
                                                           tmp_path, monkeypatch):
    import dagster as dg

    require_rabbitmq()
    timings: dict[str, float] = {}
    began = time.monotonic()
    compute_logs_dir = tmp_path / "compute_logs"
    home = write_dagster_home(tmp_path / "dagster_home", broker_queue, compute_logs_dir)
    deployment_env = {
        **postgres_variables(postgres_url),
        "DAGSTER_HOME": str(home),
        "DAGSTER_COMPUTE_LOGS_BUCKET": LOGS_BUCKET,
        "DAGSTER_CELERY_BROKER_URL": BROKER_URL,
        "DAGSTER_CELERY_BACKEND_URL": backend_url(postgres_url),
    }
    for name, value in deployment_env.items():
        monkeypatch.setenv(name, value)
    # `dagster-celery worker start` runs `celery` from PATH: the venv's, as an activated venv would.
    child_env = {**os.environ, "PATH": f"{BIN}{os.pathsep}{os.environ.get('PATH', '')}",
                 "PYTHONUNBUFFERED": "1"}

    # Opening the instance here creates its tables, before the daemon and the worker start on
    # the database together.
    with dg.DagsterInstance.get() as instance:
        stopped = stop_every_sensor_but(instance, SENSOR)
    timings["instance and sensor states"] = time.monotonic() - began

    # The uploads come before the daemon: the sensor's first tick (at the daemon's start) finds
    # their events, instead of the next one 30 s later. Their runs go one after the other (one
    # table's staged files never run at once, and the worker has one pool process).
    names = [f"celery-{uuid.uuid4().hex[:8]}-{part}.csv" for part in ("a", "b")]
    staged_keys = [f"staging/{TABLE}/{name}" for name in names]
    s3 = boto3.client("s3", endpoint_url=stack["AWS_ENDPOINT_URL"])
    glue = boto3.client("glue", endpoint_url=stack["AWS_ENDPOINT_URL"])
    for staged_key in staged_keys:
        s3.put_object(Bucket=BUCKET, Key=staged_key, Body=CLAIMS_CSV.encode(),
                      ContentType="text/csv", Metadata={"uploaded-by": "ana.analyst@example.com",
                                                        "ingest-date": INGEST_DATE})

    services = [
        start_service("dagster-celery worker", [
            str(BIN / "dagster-celery"), "worker", "start", "-A", "credflow_assets.celery_worker",
            "-y", str(REPO / "deploy" / "celery.yaml"), "-q", broker_queue, "-n", broker_queue,
            # One pool process: this machine has two cores, and the daemon needs one.
            "--", "--concurrency", "1",
        ], tmp_path / "worker.log", child_env),
        start_service("dagster-daemon", [
            str(BIN / "dagster-daemon"), "run", "-w", str(REPO / "workspace.yaml"),
        ], tmp_path / "daemon.log", child_env),
    ]
    daemon = services[1]
    engine = sa.create_engine(postgres_url)
    partition_keys = [partition_key_for(staged_key) for staged_key in staged_keys]
    try:
        deadline = time.monotonic() + RUN_DEADLINE_SECONDS
        wait_for(f"a run of {partition_keys[0]}",
                 lambda: runs_of_partition(engine, partition_keys[0]), deadline, services)
        timings["daemon start to run created"] = time.monotonic() - daemon.started
        wait_for("both runs to finish",
                 lambda: all(run[1] in TERMINAL_STATUSES
                             for key in partition_keys for run in runs_of_partition(engine, key))
                 and all(runs_of_partition(engine, key) for key in partition_keys),
                 deadline, services)
        timings["daemon start to runs finished"] = time.monotonic() - daemon.started
        checked = [check_celery_run(engine, services, staged_key, partition_key, broker_queue,
                                    deadline, s3, glue)
                   for staged_key, partition_key in zip(staged_keys, partition_keys)]
        with dg.DagsterInstance.get() as instance:
            ends = {run_id: instance.get_run_record_by_id(run_id).end_time
                    for run_id, _ in checked}

        # One pool process executed both runs, on the instance it keeps: the three connections
        # its storage opened to PostgreSQL in the first run (runs one, events two) are still
        # open after the second, ready for the next. dagster-celery's own app closes them at
        # each run's end, leaving only the one Celery's result store holds.
        (first_id, first_pid), (_, second_pid) = sorted(checked, key=lambda run: ends[run[0]])
        assert first_pid == second_pid, checked
        kept = postgres_connections_opened(engine, first_pid)
        assert len([opened for opened in kept if opened < ends[first_id]]) >= 3, (kept, ends)

        # Each run's step output went to S3, and the worker's machine kept nothing of it: no
        # file, no folder (the daemon keeps one folder per sensor there for its ticks' logs).
        for run_id, _ in checked:
            stored = s3.list_objects_v2(Bucket=LOGS_BUCKET,
                                        Prefix=f"compute_logs/storage/{run_id}/compute_logs/")
            # (Its stdout is empty, and no object is made for an empty one.)
            assert {Path(item["Key"]).suffix for item in stored.get("Contents", [])} == \
                {".err"}, stored.get("Contents")
        left = [path for path in compute_logs_dir.rglob("*")
                if path.is_file() or any(run_id in path.parts for run_id, _ in checked)]
        assert not left, left

        # What the UI shows, from the webserver on the same dagster.yaml (its storage swaps the
        # kept connections for a pool of its own): each run succeeded, in the worker's process,
        # and materialized its file.
        port = free_port()
        services.append(start_service("dagster-webserver", [
            str(BIN / "dagster-webserver"), "-w", str(REPO / "workspace.yaml"),
            "-h", "127.0.0.1", "-p", str(port)], tmp_path / "webserver.log", child_env))
        started = time.monotonic()
        wait_for_port("dagster-webserver", port, process=services[-1].process,
                      log_path=services[-1].log_path, timeout=WEBSERVER_DEADLINE_SECONDS)
        timings["webserver start"] = time.monotonic() - started
        for (run_id, run_pid), staged_key in zip(checked, staged_keys):
            shown = unwrap(post_graphql(f"http://127.0.0.1:{port}", RUN_EVENTS_QUERY,
                                        {"runId": run_id})["runOrError"], "Run")
            assert shown["status"] == "SUCCESS", shown["status"]
            events = shown["eventConnection"]["events"]
            messages = [event.get("message") or "" for event in events]
            assert f"Started process for run (pid: {run_pid})." in messages, messages
            assert "MaterializationEvent" in {event["__typename"] for event in events}
            # The run's stderr tab: the step's log lines, which the webserver reads from S3
            # (Celery would have sent them to the worker's own log: deploy/celery.yaml).
            [captured] = [event for event in events
                          if event["__typename"] == "LogsCapturedEvent"]
            logs = post_graphql(f"http://127.0.0.1:{port}", CAPTURED_LOGS_QUERY,
                                {"logKey": [run_id, "compute_logs", captured["fileKey"]]})
            assert f"s3://{BUCKET}/{staged_key}: both checks passed; promoting" in \
                (logs["capturedLogs"]["stderr"] or ""), logs

        # The retention prune, as an operator runs it on any host of the deployment, deletes
        # the runs' step output and the old ticks' logs from S3: the sensor's tick that found
        # the uploads wrote a line, in an object of its own (its quiet ticks have none).
        tick_logs_before = s3_keys(s3, "compute_logs/storage/__repository__/")
        assert tick_logs_before, "no sensor tick wrote a log"
        # The prune keeps each sensor's newest tick: wait for the one after it (the sensor ticks
        # every 30 s, the only one running).
        wait_for("the sensor's second tick", lambda: finished_ticks(engine) >= 2,
                 time.monotonic() + SECOND_TICK_DEADLINE_SECONDS, services)
        pruned = subprocess.run(
            [str(BIN / "credflow"), "--config", str(DEFAULT_CONFIG), "instance", "prune",
             "--older-than", "0d", "--ticks-older-than", "0d", "--json"],
            capture_output=True, text=True, env=child_env, cwd=REPO, timeout=120)
        assert pruned.returncode == 0, pruned.stderr
        report = json.loads(pruned.stdout)
        assert report["ticks_removed"] > 0 and report["tick_log_files_removed"] is None, report
        for run_id, _ in checked:
            assert not s3_keys(s3, f"compute_logs/storage/{run_id}/"), run_id
        # Each sensor keeps its newest tick, and that tick's log if it wrote one.
        kept = s3_keys(s3, "compute_logs/storage/__repository__/")
        kept_ticks_by_sensor: dict[str, set[str]] = {}
        for key in kept:
            kept_ticks_by_sensor.setdefault(str(Path(key).parent), set()).add(Path(key).stem)
        assert all(len(ticks) == 1 for ticks in kept_ticks_by_sensor.values()), kept
        assert tick_logs_before - kept, "no tick log was deleted"
    except BaseException:
        for service in services:
            print(f"===== {service.name} ({service.log_path}) =====\n{service.log}")
        raise
    finally:
        stopping = time.monotonic()
        stop_services(services)
        timings["stopping the daemon and the worker"] = time.monotonic() - stopping
        engine.dispose()
        timings["total"] = time.monotonic() - began
        print(f"stopped sensors: {', '.join(stopped)}")
        print("timings: " + ", ".join(f"{what} {seconds:.1f}s"
                                      for what, seconds in timings.items()))


def check_celery_run(engine, services: list[Service], staged_key: str, partition_key: str,
                     broker_queue: str, deadline: float, s3, glue) -> tuple[str, int]:
    """What one upload's run should show; returns its run id and its run's process id."""
    import dagster as dg

    worker, daemon = services[:2]

    # One upload, one run, and it succeeded: read from PostgreSQL's `runs` table.
    runs = runs_of_partition(engine, partition_key)
    assert len(runs) == 1, runs
    run_id, status = runs[0]
    assert status == "SUCCESS", f"run {run_id} ended {status}"
    tags = run_tags(engine, run_id)
    assert tags["dagster/sensor_name"] == SENSOR
    assert tags["credflow/staged_key"] == staged_key

    # The launcher published it to this test's queue as a Celery task...
    with dg.DagsterInstance.get() as instance:
        engine_events = [entry.dagster_event for entry in instance.all_logs(
            run_id, of_type=dg.DagsterEventType.ENGINE_EVENT)]
    # (The instance prefixes a launcher's engine events with its class name.)
    forwarded = next(event for event in engine_events if event.message ==
                     "[CeleryRunLauncher] Celery task has been forwarded to the broker.")
    forwarded_metadata = {key: value.value for key, value in
                          forwarded.engine_event_data.metadata.items()}
    task_id = tags["dagster-celery/task_id"]
    assert forwarded_metadata["Celery Task ID"] == task_id
    assert forwarded_metadata["Celery Queue"] == broker_queue

    # ...that the worker received and finished (its log names the task)...
    wait_for(f"the worker to log task {task_id} succeeded",
             lambda: f"execute_job[{task_id}] succeeded" in worker.log, deadline, services)
    assert f"execute_job[{task_id}] received" in worker.log

    # ...and the run's process was one of the worker's pool processes, not a daemon child.
    started = next(event for event in engine_events
                   if event.message.startswith("Started process for run"))
    run_pid = int(started.engine_event_data.metadata["pid"].value)
    lineage = ancestors(run_pid)
    assert worker.process.pid in lineage, (run_pid, lineage)
    assert daemon.process.pid not in lineage, (run_pid, lineage)
    assert os.getpgid(run_pid) == worker.process.pid
    assert b"celery" in Path(f"/proc/{run_pid}/cmdline").read_bytes()

    # What Dagster's run monitoring reads of the run's worker, from another process than
    # the one that sent the task: finished, not PENDING (which would fail a running run).
    with dg.DagsterInstance.get() as instance:
        health = instance.run_launcher.check_run_worker_health(instance.get_run_by_id(run_id))
    assert health.status.name == "SUCCESS", health

    # What the analyst sees: the file promoted to prod (and gone from staging), the Glue
    # partition registered over its folder.
    prod_key = f"prod/{TABLE}/ingest_date={INGEST_DATE}/{staged_key.rsplit('/', 1)[1]}"
    promoted = s3.head_object(Bucket=BUCKET, Key=prod_key)
    assert promoted["Metadata"]["credflow-run-id"] == run_id
    assert s3.list_objects_v2(Bucket=BUCKET, Prefix=staged_key).get("KeyCount") == 0
    partition = glue.get_partition(DatabaseName=DATABASE, TableName=TABLE,
                                   PartitionValues=[INGEST_DATE])["Partition"]
    assert partition["StorageDescriptor"]["Location"] == \
        f"s3://{BUCKET}/prod/{TABLE}/ingest_date={INGEST_DATE}/"
    return run_id, run_pid
