"""The Dagster webserver and daemon on a stack of their own, driven as the UI drives them.

Two session fixtures, for any test module (conftest.py registers this module as a plugin):

- `dagster_ui`: a fresh local stack under a temporary home, and `credflow --home HOME dev
  --port P` started as a user starts it (webserver, daemon and code server: the sensors run by
  themselves). The object has the stack's variables (`env`, never exported into os.environ:
  other modules rely on the session stack's), clients built explicitly against that stack, and
  GraphQL helpers (`graphql`, `runs`, `wait_for_runs`, `sensors`, `start_sensor`,
  `stop_sensor`, `run_failure`; `client` is Dagster's public `DagsterGraphQLClient`).
- `daemon_processed_files`: one new file dropped into each flow's source on that stack (a
  therapist upload, a provider's encrypted SFTP file, a sheet in a feed's inbound Drive folder,
  a CSV in `staging/{table}/`), all at once, and the runs the daemon's sensors launched for
  them, waited for until they finish. Later UI tests reuse these partitions. Meanwhile a
  second staged upload is arranged so both staging sensors see it before its promotion
  (`BothStagingSensors`; kept apart, as `staged_seen_by_both_sensors`).

Why a stack of its own: the daemon's sensors drain SQS queues and list SFTP and Drive folders;
on the session stack they would take events and files that other modules wait for.
"""

from __future__ import annotations

import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from importlib import import_module
from pathlib import Path
from typing import Any

import pytest
import requests

REPO = Path(__file__).resolve().parents[1]
DEFAULT_CONFIG = REPO / "credflow.yaml"
BIN = Path(sys.executable).parent

# `credflow dev` answers GraphQL 10–18 s after start here (SERVICES.md); the code location loads
# in the code server after that.
GRAPHQL_DEADLINE_SECONDS = 90.0
# Drop-to-success under the daemon has been 6–74 s (sensor intervals 30–60 s, a run ~4 s).
DAEMON_DEADLINE_SECONDS = 180.0
# `dagster dev` may ignore SIGTERM when started in the background: KILL after this.
STOP_DEADLINE_SECONDS = 20.0
POLL_SECONDS = 2.0

# Dagster's own run tags (its public UI and GraphQL API show them under these names).
PARTITION_TAG = "dagster/partition"
SENSOR_TAG = "dagster/sensor_name"
TERMINAL_STATUSES = {"SUCCESS", "FAILURE", "CANCELED"}
# The stack's variables (`credflow local env`), and the families they belong to: the child gets
# none of the session stack's, so `credflow dev` adopts the UI stack's as it does for a user.
STACK_VARIABLE_PREFIXES = ("CREDFLOW_", "AWS_", "DAGSTER_")

FLOWS = ("therapists", "provider_feeds", "drive_feeds", "staged_tables")


class GraphQLError(AssertionError):
    """The webserver answered with errors (or an error type where data was expected)."""


# ------------------------------------------------------------------------------ GraphQL text

RUN_FIELDS = """
fragment RunFields on Run {
  runId status jobName creationTime startTime endTime
  tags { key value }
  repositoryOrigin { repositoryLocationName repositoryName }
  assetSelection { path }
  assetMaterializations { assetKey { path } partition }
}
"""

RUNS_QUERY = RUN_FIELDS + """
query UiTestRuns($filter: RunsFilter, $limit: Int) {
  runsOrError(filter: $filter, limit: $limit) {
    __typename
    ... on Runs { results { ...RunFields } }
    ... on InvalidPipelineRunsFilterError { message }
    ... on PythonError { message stack }
  }
}
"""

RUN_EVENTS_QUERY = """
query UiTestRunEvents($runId: ID!) {
  runOrError(runId: $runId) {
    __typename
    ... on Run {
      eventConnection(limit: 5000) {
        events {
          __typename
          ... on MessageEvent { message }
          ... on ExecutionStepFailureEvent { stepKey error { message } }
        }
      }
    }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

WORKSPACE_QUERY = """
query UiTestWorkspace {
  workspaceOrError {
    __typename
    ... on Workspace {
      locationEntries {
        name loadStatus
        locationOrLoadError {
          __typename
          ... on RepositoryLocation { name repositories { name } }
          ... on PythonError { message errorChain { error { message } } }
        }
      }
    }
    ... on PythonError { message }
  }
}
"""

START_SENSOR = """
mutation UiTestStartSensor($selector: SensorSelector!) {
  startSensor(sensorSelector: $selector) {
    __typename
    ... on Sensor { name sensorState { status } }
    ... on SensorNotFoundError { message }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

STOP_SENSOR = """
mutation UiTestStopSensor($id: String!) {
  stopSensor(id: $id) {
    __typename
    ... on StopSensorMutationResult { instigationState { status } }
    ... on UnauthorizedError { message }
    ... on PythonError { message }
  }
}
"""

SENSORS_QUERY = """
query UiTestSensors($selector: RepositorySelector!) {
  sensorsOrError(repositorySelector: $selector) {
    __typename
    ... on Sensors {
      results {
        id name minIntervalSeconds
        targets { pipelineName }
        sensorState {
          status
          ticks(limit: 5) { status timestamp runIds skipReason error { message } }
        }
      }
    }
    ... on RepositoryNotFoundError { message }
    ... on PythonError { message }
  }
}
"""


# ------------------------------------------------------------------------------ the UI


@dataclass
class DagsterUI:
    """`credflow dev` on a stack of its own, and what a test needs to talk to both."""

    url: str
    port: int
    home: Path
    state: Any  # credflow_assets.local.stack.StackState
    config: Any  # credflow_assets.config.CredflowConfig
    env: dict[str, str]  # the UI stack's variables (`credflow local env`), NOT in os.environ
    process: subprocess.Popen
    log_path: Path
    location_name: str = ""
    repository_name: str = ""
    startup_seconds: float = 0.0  # stack up + `credflow dev` until the code location loaded
    _clients: dict[str, Any] = field(default_factory=dict, repr=False)

    # --- GraphQL ---------------------------------------------------------------------------

    @property
    def client(self):
        """Dagster's public Python GraphQL client, pointed at this webserver."""
        if "graphql" not in self._clients:
            from dagster_graphql import DagsterGraphQLClient

            self._clients["graphql"] = DagsterGraphQLClient("127.0.0.1", port_number=self.port,
                                                           timeout=60)
        return self._clients["graphql"]

    def graphql(self, query: str, variables: dict[str, Any] | None = None) -> dict:
        """POST /graphql; the `data`, or GraphQLError naming the errors."""
        response = requests.post(f"{self.url}/graphql",
                                 json={"query": query, "variables": variables or {}}, timeout=60)
        try:
            payload = response.json()
        except ValueError:
            raise GraphQLError(f"POST {self.url}/graphql: HTTP {response.status_code}: "
                               f"{response.text[:2000]}") from None
        if payload.get("errors"):
            messages = "; ".join(error.get("message", str(error)) for error in payload["errors"])
            raise GraphQLError(f"GraphQL errors: {messages}")
        if response.status_code != 200 or payload.get("data") is None:
            raise GraphQLError(f"POST {self.url}/graphql: HTTP {response.status_code}: {payload}")
        return payload["data"]

    def runs(self, *, tags: dict[str, str] | None = None, job_name: str | None = None,
             statuses: Iterable[str] | None = None, limit: int = 200) -> list[dict]:
        """Runs (newest first), each with status, tags (as a dict under `tag_map`),
        repositoryOrigin, asset selection and materializations."""
        run_filter: dict[str, Any] = {}
        if tags:
            run_filter["tags"] = [{"key": key, "value": value} for key, value in tags.items()]
        if job_name:
            run_filter["pipelineName"] = job_name
        if statuses:
            run_filter["statuses"] = list(statuses)
        answer = self.graphql(RUNS_QUERY, {"filter": run_filter or None,
                                           "limit": limit})["runsOrError"]
        results = unwrap(answer, "Runs")["results"]
        for run in results:
            run["tag_map"] = {tag["key"]: tag["value"] for tag in run["tags"]}
        return results

    def run_failure(self, run_id: str) -> str:
        """The step failures and run failure message of a run, one line each ('' if none)."""
        answer = unwrap(self.graphql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"], "Run")
        lines = []
        for event in answer["eventConnection"]["events"]:
            if event["__typename"] == "ExecutionStepFailureEvent":
                lines.append(f"{event.get('stepKey')}: {(event.get('error') or {}).get('message')}")
            elif event["__typename"] == "RunFailureEvent":
                lines.append(f"run: {event.get('message')}")
        return "\n".join(line.strip() for line in lines)

    def wait_for_runs(self, matches: Callable[[dict], bool], *, count: int = 1,
                      timeout: float = DAEMON_DEADLINE_SECONDS, **filters) -> list[dict]:
        """Wait until at least `count` runs match and every matching run has finished."""
        deadline = time.monotonic() + timeout
        found: list[dict] = []
        while time.monotonic() < deadline:
            found = [run for run in self.runs(**filters) if matches(run)]
            if len(found) >= count and all(run["status"] in TERMINAL_STATUSES for run in found):
                return found
            time.sleep(POLL_SECONDS)
        raise AssertionError(
            f"after {timeout:.0f}s, {len(found)} matching run(s) (wanted {count}, finished): "
            + ", ".join(f"{run['runId']} {run['status']}" for run in found)
            + f"\n{self.sensor_report()}")

    @property
    def repository_selector(self) -> dict[str, str]:
        return {"repositoryLocationName": self.location_name,
                "repositoryName": self.repository_name}

    def sensors(self) -> list[dict]:
        """Every sensor of the code location: name, targets, status, its latest ticks."""
        answer = self.graphql(SENSORS_QUERY, {"selector": self.repository_selector})
        return unwrap(answer["sensorsOrError"], "Sensors")["results"]

    def sensor(self, name: str) -> dict:
        found = [sensor for sensor in self.sensors() if sensor["name"] == name]
        assert found, f"no sensor {name} in {self.location_name}"
        return found[0]

    def start_sensor(self, name: str) -> None:
        """What the sensor's toggle in the UI does (the cursor is kept)."""
        answer = self.graphql(START_SENSOR, {"selector": {**self.repository_selector,
                                                          "sensorName": name}})
        unwrap(answer["startSensor"], "Sensor")

    def stop_sensor(self, name: str) -> None:
        answer = self.graphql(STOP_SENSOR, {"id": self.sensor(name)["id"]})
        unwrap(answer["stopSensor"], "StopSensorMutationResult")

    def sensors_of_job(self, job_name: str) -> list[dict]:
        return [sensor for sensor in self.sensors()
                if job_name in {target["pipelineName"] for target in sensor["targets"] or []}]

    def wait_for_first_ticks(self, timeout: float = GRAPHQL_DEADLINE_SECONDS) -> None:
        """Until every running sensor has ticked once: the daemon is in its steady state."""
        deadline = time.monotonic() + timeout
        while True:
            waiting = [sensor["name"] for sensor in self.sensors()
                       if sensor["sensorState"]["status"] == "RUNNING"
                       and not any(tick["status"] != "STARTED"
                                   for tick in sensor["sensorState"]["ticks"])]
            if not waiting:
                return
            if time.monotonic() > deadline:
                pytest.fail(f"sensors without a tick after {timeout:.0f}s: {waiting}\n"
                            f"{self.log_tail(40)}")
            time.sleep(0.5)

    def sensor_report(self) -> str:
        """The sensors' latest ticks, one line each, for a failure message."""
        try:
            sensors = self.sensors()
        except Exception as error:  # noqa: BLE001 - a report must not hide the first failure
            return f"(sensors unavailable: {error})"
        lines = []
        for sensor in sensors:
            state = sensor["sensorState"]
            ticks = [f"{tick['status']}"
                     + (f" runs={len(tick['runIds'])}" if tick["runIds"] else "")
                     + (f" error={tick['error']['message'][:300]!r}" if tick["error"] else "")
                     for tick in state["ticks"]]
            lines.append(f"  {sensor['name']} [{state['status']}]: {'; '.join(ticks) or 'no ticks'}")
        return "sensors:\n" + "\n".join(lines)

    def log_tail(self, lines: int = 60) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join(text.splitlines()[-lines:])

    # --- the UI stack's services, reached explicitly ---------------------------------------

    def aws(self, service: str):
        """A boto3 client for the UI stack's moto server (never through os.environ)."""
        if service not in self._clients:
            import boto3

            self._clients[service] = boto3.client(
                service, endpoint_url=self.env["AWS_ENDPOINT_URL"],
                region_name=self.env["AWS_REGION"],
                aws_access_key_id=self.env["AWS_ACCESS_KEY_ID"],
                aws_secret_access_key=self.env["AWS_SECRET_ACCESS_KEY"])
        return self._clients[service]

    @property
    def drive(self):
        if "drive" not in self._clients:
            from credflow_assets.resources.drive import DriveResource

            self._clients["drive"] = DriveResource(api_url=self.env["CREDFLOW_DRIVE_URL"],
                                                   token=self.env["CREDFLOW_DRIVE_TOKEN"])
        return self._clients["drive"]

    def engine(self, variable: str):
        """A SQLAlchemy engine on one of the stack's databases (`CREDFLOW_*_DB_URL`)."""
        if variable not in self._clients:
            import sqlalchemy as sa

            self._clients[variable] = sa.create_engine(self.env[variable])
        return self._clients[variable]

    def close_clients(self) -> None:
        for name, client in self._clients.items():
            if name.endswith("_DB_URL"):
                client.dispose()
        self._clients.clear()


def unwrap(answer: dict, expected: str) -> dict:
    """A GraphQL union's member of type `expected`, or GraphQLError with its message."""
    if answer.get("__typename") != expected:
        raise GraphQLError(f"expected {expected}, got {answer.get('__typename')}: "
                           f"{answer.get('message', answer)}")
    return answer


# ------------------------------------------------------------------------------ process plumbing


def child_environment(stack_variables: Iterable[str]) -> dict[str, str]:
    """os.environ without any stack's variables: `credflow dev` then adopts its home's stack.

    The session `local_stack` exports its stack into os.environ, and `credflow` lets variables
    already set win over the stack's, so passing them on would point the UI at the wrong stack.
    """
    names = set(stack_variables)
    return {name: value for name, value in os.environ.items()
            if name not in names and not name.startswith(STACK_VARIABLE_PREFIXES)}


def free_port() -> int:
    from credflow_assets.local.process import free_port as pick

    return pick()


def stop_process_group(process: subprocess.Popen, deadline: float = STOP_DEADLINE_SECONDS) -> str:
    """TERM the process group `process` leads, KILL it after `deadline`; returns what it took."""
    pgid = process.pid  # start_new_session: the child leads its own session and group
    if not _group_alive(pgid) and process.poll() is not None:
        return "already gone"
    _signal_group(pgid, signal.SIGTERM)
    end = time.monotonic() + deadline
    while time.monotonic() < end:
        process.poll()
        if process.returncode is not None and not _group_alive(pgid):
            return "stopped by SIGTERM"
        time.sleep(0.2)
    _signal_group(pgid, signal.SIGKILL)
    try:
        process.wait(timeout=10)
    except subprocess.TimeoutExpired:
        pass
    end = time.monotonic() + 10
    while _group_alive(pgid) and time.monotonic() < end:
        time.sleep(0.1)
    return f"SIGTERM ignored for {deadline:.0f}s: killed"


def _signal_group(pgid: int, signum: int) -> None:
    try:
        os.killpg(pgid, signum)
    except ProcessLookupError:
        pass


def _group_alive(pgid: int) -> bool:
    """A live (not zombie) process is still in the group."""
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        # fields[0] is the state, fields[2] the process group
        if int(fields[2]) == pgid and fields[0] != "Z":
            return True
    return False


def _wait_for_graphql(url: str, process: subprocess.Popen, log_path: Path,
                      deadline: float) -> None:
    end = time.monotonic() + deadline
    last_error = "no answer yet"
    while time.monotonic() < end:
        if process.poll() is not None:
            pytest.fail(f"`credflow dev` exited with {process.returncode} before GraphQL "
                        f"answered; its log:\n{_tail(log_path)}")
        try:
            response = requests.post(f"{url}/graphql", json={"query": "{ version }"}, timeout=5)
            if response.status_code == 200 and response.json().get("data", {}).get("version"):
                return
            last_error = f"HTTP {response.status_code}: {response.text[:200]}"
        except (requests.RequestException, ValueError) as error:
            last_error = str(error)
        time.sleep(0.5)
    pytest.fail(f"GraphQL at {url} did not answer within {deadline:.0f}s ({last_error}); "
                f"`credflow dev`'s log:\n{_tail(log_path)}")


def _wait_for_code_location(ui: DagsterUI, deadline: float) -> None:
    """Until the code location is loaded; fails with its load error."""
    end = time.monotonic() + deadline
    entries: list[dict] = []
    while time.monotonic() < end:
        workspace = unwrap(ui.graphql(WORKSPACE_QUERY)["workspaceOrError"], "Workspace")
        entries = workspace["locationEntries"]
        for entry in entries:
            location = entry.get("locationOrLoadError") or {}
            if location.get("__typename") == "PythonError":
                causes = [link["error"]["message"] for link in location.get("errorChain") or []]
                pytest.fail(f"code location {entry['name']} failed to load: "
                            f"{location['message']}" + "".join(f"\ncaused by: {cause}"
                                                           for cause in causes))
        loaded = [entry for entry in entries if entry["loadStatus"] == "LOADED"
                  and (entry.get("locationOrLoadError") or {}).get("__typename")
                  == "RepositoryLocation"]
        if entries and len(loaded) == len(entries):
            location = loaded[0]["locationOrLoadError"]
            ui.location_name = location["name"]
            ui.repository_name = location["repositories"][0]["name"]
            return
        time.sleep(0.5)
    pytest.fail(f"the code location did not load within {deadline:.0f}s: {entries}\n"
                f"{_tail(ui.log_path)}")


def _tail(path: Path, lines: int = 80) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


@pytest.fixture(scope="session")
def dagster_ui(tmp_path_factory):
    """`credflow --home HOME dev --port P` on a fresh stack of its own (see module docstring)."""
    from credflow_assets.config import load_config
    from credflow_assets.local import stack

    base = tmp_path_factory.mktemp("ui")
    home = base / "home"
    config = load_config(DEFAULT_CONFIG)
    started = time.monotonic()
    state = stack.up(home, config, DEFAULT_CONFIG)
    process = None
    ui = None
    try:
        variables = stack.environment(state, config)
        port = free_port()
        log_path = base / "credflow-dev.log"
        with open(log_path, "wb") as log:
            process = subprocess.Popen(
                [str(BIN / "credflow"), "--config", str(DEFAULT_CONFIG), "--home", str(home),
                 "dev", "--port", str(port)],
                stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT,
                env=child_environment(variables), cwd=base, start_new_session=True,
            )
        url = f"http://127.0.0.1:{port}"
        ui = DagsterUI(url=url, port=port, home=home, state=state, config=config,
                       env=variables, process=process, log_path=log_path)
        _wait_for_graphql(url, process, log_path, GRAPHQL_DEADLINE_SECONDS)
        _wait_for_code_location(ui, GRAPHQL_DEADLINE_SECONDS)
        ui.startup_seconds = time.monotonic() - started
        yield ui
    finally:
        if ui is not None:
            ui.close_clients()
        if process is not None:
            outcome = stop_process_group(process)
            sys.stderr.write(f"\n[dagster_ui] credflow dev: {outcome}\n")
        stack.down(home)


# ------------------------------------------------------------------------------ the four drops


def flow_name(flow: str, attributes: str | tuple[str, ...], *modules: str, arg: Any = None):
    """A name the flow's code defines, never a copy of its value: the first of `attributes`
    found in the flow's `names.py` (DESIGN.md), else in `modules` (where it lives today). A
    function (e.g. `records_key(feed)`) is called with `arg`."""
    attributes = (attributes,) if isinstance(attributes, str) else attributes
    for attribute in attributes:
        for module_name in (f"credflow_assets.{flow}.names", *modules):
            try:
                module = import_module(module_name)
            except ModuleNotFoundError as error:
                if error.name == module_name:
                    continue
                raise
            value = getattr(module, attribute, None)
            if value is None:
                continue
            if callable(value):
                return value(arg) if arg is not None else value()
            return value
    raise AssertionError(f"none of {attributes} in credflow_assets.{flow}.names or {modules}")


@dataclass
class ProcessedFile:
    """One file dropped into a flow's source, and the daemon's runs for it."""

    flow: str
    token: str  # what names the file in its partition key (therapist id, file name, file id)
    source: str  # where it was dropped, for messages
    dropped_at: float  # time.time()
    details: dict[str, Any]
    main_asset: list[str]  # the asset a user opens for it (its key path)
    runs: list[dict] = field(default_factory=list)  # newest first

    @property
    def partition_key(self) -> str:
        keys = {run["tag_map"].get(PARTITION_TAG) for run in self.runs}
        assert len(keys) == 1, f"{self.flow}: runs for {self.source} name partitions {keys}"
        return keys.pop()

    @property
    def run(self) -> dict:
        """The latest run for the file."""
        return self.runs[0]

    def matches(self, run: dict) -> bool:
        return self.token in (run["tag_map"].get(PARTITION_TAG) or "")

    @property
    def seconds_to_finish(self) -> float | None:
        ends = [run["endTime"] for run in self.runs if run.get("endTime")]
        return round(max(ends) - self.dropped_at, 1) if ends else None


@dataclass
class ProcessedFiles:
    files: dict[str, ProcessedFile]
    seconds: float  # from the first drop until every run finished
    # A second staged upload that both staging sensors saw before its promotion (see
    # `BothStagingSensors`); kept apart from `files`, whose partitions later UI tests reuse.
    staged_seen_by_both_sensors: ProcessedFile | None = None
    staging_sensors: tuple[str, str] = ("", "")  # (events sensor, reconciliation sensor)

    def __getitem__(self, flow: str) -> ProcessedFile:
        return self.files[flow]

    def __iter__(self):
        return iter(self.files.values())


def _drop_therapist_upload(ui: DagsterUI, token: str) -> ProcessedFile:
    """A new therapist (a directory row) and their headshot in the signup bucket."""
    import datetime as dt

    from credflow_assets.therapists import directory
    from credflow_assets_tests.files import png_bytes

    therapist_id = f"t-{token}"
    engine = ui.engine("CREDFLOW_DIRECTORY_DB_URL")
    directory.metadata.create_all(engine)
    with engine.begin() as connection:
        connection.execute(directory.therapists_table.insert().values(
            id=therapist_id, first_name="Uma", last_name="Interface",
            email=f"{therapist_id}@therapists.example",
            updated_at=dt.datetime.now(dt.UTC)))
    key = f"{therapist_id}/headshot.png"
    ui.aws("s3").put_object(Bucket=ui.config.buckets.signup, Key=key, Body=png_bytes(),
                            ContentType="image/png")
    folder_key = flow_name("therapists", "MPF_FOLDER_KEY")
    return ProcessedFile(
        "therapists", therapist_id, f"s3://{ui.config.buckets.signup}/{key}", time.time(),
        {"therapist_id": therapist_id, "s3_key": key,
         "name": ("Uma", "Interface")},
        list(folder_key.path))


def _drop_provider_file(ui: DagsterUI, token: str) -> ProcessedFile:
    """A gzip-less CSV roster encrypted to credflow's key, on one provider's SFTP outbox."""
    from credflow_assets.local.gpg_keys import encrypt_file, export_public_key
    from credflow_assets.local.seed_provider_feeds import members_csv
    from credflow_assets.resources.gpg import kill_agent, open_gpg

    provider = ui.config.providers[0]
    plain_name = f"roster_{token}.csv"
    name = f"{plain_name}.gpg"
    outbox = Path(ui.env["CREDFLOW_SFTP_ROOT"]) / provider.remote_dir
    outbox.mkdir(parents=True, exist_ok=True)
    credflow_key = open_gpg(ui.state.gpg_home).list_keys(secret=True)[0]["fingerprint"]
    sender = Path(tempfile.mkdtemp(dir="/tmp", prefix="cf-ui-gpg-"))  # short: agent socket
    try:
        imported = open_gpg(sender).import_keys(export_public_key(ui.state.gpg_home,
                                                                  credflow_key))
        assert imported.fingerprints, "cannot import credflow's public key"
        plain = sender / plain_name
        plain.write_bytes(members_csv(12, prefix=token))  # a quoted comma and line break too
        encrypted = encrypt_file(sender, plain, sender / name, [credflow_key])
        hidden = outbox / f".{name}.uploading"  # the sensor skips dot-names: never half a file
        shutil.copyfile(encrypted, hidden)
        os.replace(hidden, outbox / name)
    finally:
        kill_agent(sender)
        shutil.rmtree(sender, ignore_errors=True)
    landed_key = flow_name("provider_feeds", "landed_asset_key",
                           "credflow_assets.provider_feeds.names", arg=provider.name)
    return ProcessedFile(
        "provider_feeds", name, f"sftp:{provider.remote_dir}/{name}", time.time(),
        {"provider": provider.name, "folder": provider.folder, "remote_name": name,
         "landed_name": plain_name, "rows": 12, "row_prefix": token},
        list(landed_key.path))


def _drop_feed_sheet(ui: DagsterUI, token: str, work: Path) -> ProcessedFile:
    """A good CSV sheet in the first feed's inbound Drive folder."""
    from credflow_assets.local.seed_drive_feeds import CSV_MIME, sample_rows, write_csv

    feed = ui.config.feeds[0]
    rows = sample_rows(feed, 8, start=7000)
    path = write_csv(work / f"{feed.name}-{token}.csv", feed, rows)
    name = f"{feed.name} referrals {token}.csv"
    uploaded = ui.drive.upload_file(path, name, feed.inbound_folder_id, mime_type=CSV_MIME)
    records_key = flow_name("drive_feeds", "records_key", "credflow_assets.drive_feeds.names",
                            arg=feed.name)
    return ProcessedFile(
        "drive_feeds", uploaded["id"], f"Drive {feed.inbound_folder_id}/{name}", time.time(),
        {"feed": feed.name, "table": feed.table, "id_column": feed.id_column,
         "ids": [row[feed.id_column] for row in rows], "file_id": uploaded["id"], "name": name},
        list(records_key.path))


def _drop_staged_csv(ui: DagsterUI, token: str) -> ProcessedFile:
    """The demo's first good CSV (it founds its table), under a new name in staging/{table}/."""
    from credflow_assets.local.seed_staged_tables import DEMO_FILES, UPLOADER

    table, demo_name, ingest_date, text = DEMO_FILES[0]
    tables = [table.name for table in ui.config.staged_tables.tables]
    assert table in tables, f"the demo's first staged table {table} is not configured: {tables}"
    staging = ui.config.staged_tables.staging_prefix.rstrip("/") + "/"
    name = f"{token}_{demo_name}"
    key = f"{staging}{table}/{name}"
    metadata = {"uploaded-by": UPLOADER, **({"ingest-date": ingest_date} if ingest_date else {})}
    ui.aws("s3").put_object(Bucket=ui.config.buckets.adhoc, Key=key, Body=text.encode(),
                            ContentType="text/csv", Metadata=metadata)
    prod_key = flow_name("staged_tables", ("prod_file_key", "PROD_FILE_KEY"),
                         "credflow_assets.staged_tables.names", arg=table)
    return ProcessedFile(
        "staged_tables", name, f"s3://{ui.config.buckets.adhoc}/{key}", time.time(),
        {"table": table, "key": key, "name": name, "ingest_date": ingest_date,
         "rows": len(text.strip().splitlines()) - 1},
        list(prod_key.path))


class BothStagingSensors:
    """A staged upload that both staging sensors see before it is promoted.

    Under the daemon the staged flow's two sensors tick on their own: the events sensor drains
    S3 events every 30 s, the reconciliation sensor lists staging/ every minute. Here the events
    sensor is stopped (its toggle in the UI; the cursor is kept) when a second file is uploaded;
    the reconciliation sensor's next tick requests its run; as soon as that run exists the events
    sensor is started again, and drains the upload's event while the run has yet to promote the
    file, as when an event arrives late or both sensors tick within the same seconds. The right
    outcome is still one run per upload, and it succeeds. Steps run from the fixture's poll loop
    once the main staged file is done, so they cost no wall time of their own.
    """

    def __init__(self, ui: DagsterUI, token: str, after: ProcessedFile):
        self.ui, self.token, self.after = ui, token, after
        job = flow_name("staged_tables", ("job_name", "JOB_NAME"),
                        "credflow_assets.staged_tables.names", arg=after.details["table"])
        sensors = sorted(ui.sensors_of_job(job), key=lambda sensor: sensor["minIntervalSeconds"])
        intervals = [sensor["minIntervalSeconds"] for sensor in sensors]
        assert len(sensors) == 2 and intervals[0] < intervals[1], (
            f"expected an events sensor and a slower reconciliation sensor for {job}: "
            f"{[(sensor['name'], sensor['minIntervalSeconds']) for sensor in sensors]}")
        self.events, self.reconciliation = sensors[0]["name"], sensors[1]["name"]
        self.state = "waiting for the main staged file"
        self.file: ProcessedFile | None = None
        self.events_stopped = False
        self.restarted_at: float | None = None

    @property
    def done(self) -> bool:
        return self.state == "done"

    def step(self, runs: list[dict]) -> None:
        if self.file is not None:
            self.file.runs = [run for run in runs if self.file.matches(run)]
        if self.state == "waiting for the main staged file":
            if self.after.runs and all(run["status"] in TERMINAL_STATUSES
                                       for run in self.after.runs):
                self.ui.stop_sensor(self.events)
                self.events_stopped = True
                self.file = _drop_staged_csv(self.ui, f"{self.token}both")
                self.state = "waiting for the reconciliation sensor's run"
        elif self.state == "waiting for the reconciliation sensor's run":
            if any(run["tag_map"].get(SENSOR_TAG) == self.reconciliation
                   for run in self.file.runs):
                self.ui.start_sensor(self.events)
                self.events_stopped = False
                self.restarted_at = time.time()
                self.state = "waiting for the events sensor's tick"
        elif self.state == "waiting for the events sensor's tick":
            ticks = self.ui.sensor(self.events)["sensorState"]["ticks"]
            ticked = any(tick["timestamp"] >= self.restarted_at and tick["status"] != "STARTED"
                         for tick in ticks)
            if ticked and all(run["status"] in TERMINAL_STATUSES for run in self.file.runs):
                self.state = "done"

    def restore(self) -> None:
        if self.events_stopped:
            self.ui.start_sensor(self.events)
            self.events_stopped = False


@pytest.fixture(scope="session")
def daemon_processed_files(dagster_ui, tmp_path_factory) -> ProcessedFiles:
    """One new file in each flow's source, all at once, and the daemon's finished runs for them.

    No `credflow sync`: the daemon's sensors find the files and launch the runs. The files are
    dropped once every sensor has ticked (the daemon's steady state, as a user meets it), so
    each is found by its sensor's next tick. Every run whose partition key names a dropped file
    is waited for until it has finished (success or not: the tests say which); a flow with no
    run by the deadline fails here, with the sensors' latest ticks. Meanwhile a second staged
    upload goes through `BothStagingSensors`.
    """
    ui = dagster_ui
    ui.wait_for_first_ticks()
    token = f"ui{secrets.token_hex(3)}"
    work = tmp_path_factory.mktemp("ui-drops")
    started = time.monotonic()
    files = {
        "therapists": _drop_therapist_upload(ui, token),
        "provider_feeds": _drop_provider_file(ui, token),
        "drive_feeds": _drop_feed_sheet(ui, token, work),
        "staged_tables": _drop_staged_csv(ui, token),
    }
    both = BothStagingSensors(ui, token, files["staged_tables"])
    deadline = started + DAEMON_DEADLINE_SECONDS
    try:
        while True:
            runs = ui.runs()
            for processed in files.values():
                processed.runs = [run for run in runs if processed.matches(run)]
            both.step(runs)
            waiting = [processed for processed in files.values()
                       if not processed.runs
                       or any(run["status"] not in TERMINAL_STATUSES for run in processed.runs)]
            if not waiting and both.done:
                break
            if time.monotonic() > deadline:
                pytest.fail(
                    f"after {DAEMON_DEADLINE_SECONDS:.0f}s the daemon has not finished every "
                    "drop:\n"
                    + "\n".join(f"  {p.flow}: {p.source}: "
                                + (", ".join(f"{r['runId']} {r['status']}" for r in p.runs)
                                   or "no run") for p in waiting)
                    + f"\n  second staged upload: {both.state}"
                    + f"\n{ui.sensor_report()}\n`credflow dev`'s log (tail):\n"
                    + ui.log_tail(40))
            time.sleep(POLL_SECONDS)
    finally:
        both.restore()
    processed = ProcessedFiles(files, round(time.monotonic() - started, 1),
                               staged_seen_by_both_sensors=both.file,
                               staging_sensors=(both.events, both.reconciliation))
    sys.stderr.write(
        f"\n[dagster_ui] startup {ui.startup_seconds:.1f}s; drops finished in "
        f"{processed.seconds}s: "
        + ", ".join(f"{p.flow} {p.seconds_to_finish}s" for p in processed) + "\n")
    return processed
