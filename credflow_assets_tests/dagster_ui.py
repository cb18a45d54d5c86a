"""The Dagster webserver and daemon on a stack of their own, driven as the UI drives them.

One session fixture, for any test module (conftest.py registers this module as a plugin):

- `dagster_ui`: a fresh local stack under a temporary home, and `credflow --home HOME dev
  --port P` started as a user starts it (webserver, daemon and code server: the sensors run by
  themselves). The object has the stack's variables (`env`, never exported into os.environ:
  other modules rely on the session stack's), clients built explicitly against that stack, and
  GraphQL helpers (`graphql`, `runs`, `wait_for_runs`, `sensors`, `start_sensor`,
  `stop_sensor`, `run_failure`; `client` is Dagster's public `DagsterGraphQLClient`).
(`daemon_files.py` drops one file into each flow's source on this stack.)

Why a stack of its own: the daemon's sensors drain SQS queues and list SFTP and Drive folders;
on the session stack they would take events and files that other modules wait for.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
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
      status
      eventConnection(limit: 5000) {
        events {
          __typename
          ... on MessageEvent { message }
          ... on ExecutionStepFailureEvent { stepKey error { message } }
          ... on LogsCapturedEvent { fileKey stepKeys }
        }
      }
    }
    ... on RunNotFoundError { message }
    ... on PythonError { message }
  }
}
"""

# What the run page's stdout/stderr tabs load for a step (its log key: the run id,
# "compute_logs", and the LogsCapturedEvent's fileKey).
CAPTURED_LOGS_QUERY = """
query UiTestCapturedLogs($logKey: [String!]!) {
  capturedLogs(logKey: $logKey) { stdout stderr }
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
        id name minIntervalSeconds sensorType
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
        return post_graphql(self.url, query, variables)

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


def post_graphql(url: str, query: str, variables: dict[str, Any] | None = None) -> dict:
    """POST `url`/graphql (a webserver's API, what its UI asks); the `data`, or GraphQLError
    naming the errors."""
    response = requests.post(f"{url}/graphql",
                             json={"query": query, "variables": variables or {}}, timeout=60)
    try:
        payload = response.json()
    except ValueError:
        raise GraphQLError(f"POST {url}/graphql: HTTP {response.status_code}: "
                           f"{response.text[:2000]}") from None
    if payload.get("errors"):
        messages = "; ".join(error.get("message", str(error)) for error in payload["errors"])
        raise GraphQLError(f"GraphQL errors: {messages}")
    if response.status_code != 200 or payload.get("data") is None:
        raise GraphQLError(f"POST {url}/graphql: HTTP {response.status_code}: {payload}")
    return payload["data"]


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
