"""A run whose process died is found and finished; a transient failure is retried, a permanent
one is not; two syncs at once run a file once. Against a real instance (SQLite) and real
processes, killed with SIGKILL."""

from __future__ import annotations

import fcntl
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import dagster as dg
import pytest
import yaml

from credflow_assets.local.process import stop_pid
from credflow_assets.common.run_recovery import FAILURE_KIND_TAG
from credflow_assets.cli.sync import sync
from credflow_assets_tests.faults.run_recovery_location import definitions

# What credflow's dagster.yaml says (local/dagster.yaml and deploy/).
RUN_RETRIES = {"enabled": True, "max_retries": 2, "retry_on_asset_or_op_failure": False}


@pytest.fixture
def home(tmp_path, monkeypatch):
    home = tmp_path / "dagster_home"
    home.mkdir()
    (home / "dagster.yaml").write_text(yaml.safe_dump(
        {"run_retries": RUN_RETRIES, "telemetry": {"enabled": False}}))
    monkeypatch.setenv("DAGSTER_HOME", str(home))
    return home


@pytest.fixture
def folders(tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    return inbox, outbox


def run_sync(folders, lines=None):
    with dg.DagsterInstance.get() as instance:
        return sync(definitions(*map(str, folders)), instance,
                    progress=(lines.append if lines is not None else lambda _: None))


def runs_of(partition: str) -> list[dg.DagsterRun]:
    with dg.DagsterInstance.get() as instance:
        return list(reversed(instance.get_runs(
            dg.RunsFilter(tags={"dagster/partition": partition}))))


def wait_for(condition, seconds: float, what: str):
    deadline = time.monotonic() + seconds
    while not condition():
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.1)


def test_a_killed_sync_leaves_no_file_behind(home, folders):
    inbox, outbox = folders
    (inbox / "a.csv").write_text("hang")
    killed = subprocess.Popen(
        [sys.executable, "-m", "credflow_assets_tests.faults.run_recovery_location", *map(str, folders)],
        env=os.environ.copy(), stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        wait_for(lambda: (outbox / "a.csv.started").exists(), 60, "the run to start")
        os.kill(killed.pid, signal.SIGKILL)
        killed.wait(10)
    finally:
        stop_pid(killed.pid)
    assert [run.status for run in runs_of("a.csv")] == [dg.DagsterRunStatus.STARTED]
    (outbox / "release").write_text("")  # the retry must not hang
    lines: list[str] = []

    report = run_sync(folders, lines)

    first, retry = runs_of("a.csv")
    assert first.status == dg.DagsterRunStatus.FAILURE
    assert first.tags[FAILURE_KIND_TAG] == "process_stopped"
    assert any("a.csv: the process running it stopped" in line for line in lines), lines
    assert retry.status == dg.DagsterRunStatus.SUCCESS
    assert retry.tags["dagster/parent_run_id"] == first.run_id
    assert [run.partition for run in report.runs] == ["a.csv"] and report.ok
    assert (outbox / "a.csv").read_text() == "HANG"  # landed exactly once
    assert run_sync(folders).runs == []  # and never again


def test_a_transient_failure_is_retried_later_and_a_permanent_one_is_not(home, folders):
    inbox, outbox = folders
    (inbox / "flaky.csv").write_text("flaky")
    (inbox / "broken.csv").write_text("broken")

    first = run_sync(folders)
    assert sorted(run.partition for run in first.failed) == ["broken.csv", "flaky.csv"]
    (outbox / "up").write_text("")  # the outage ends
    second = run_sync(folders)

    assert [run.partition for run in second.runs] == ["flaky.csv"] and second.ok
    assert (outbox / "flaky.csv").read_text() == "FLAKY"
    assert runs_of("flaky.csv")[0].tags[FAILURE_KIND_TAG] == "transient"
    # The broken file waits for a corrected upload: no retry, now or later.
    assert [run.status for run in runs_of("broken.csv")] == [dg.DagsterRunStatus.FAILURE]
    assert runs_of("broken.csv")[0].tags[FAILURE_KIND_TAG] == "permanent"
    assert run_sync(folders).runs == []


def test_a_transient_failure_is_retried_a_bounded_number_of_times(home, folders):
    inbox, _ = folders
    (inbox / "down.csv").write_text("flaky")  # the outage never ends

    attempts = [len(run_sync(folders).runs) for _ in range(5)]

    assert attempts == [1, 1, 1, 0, 0]  # the first run, then max_retries (2) retries
    assert [run.status for run in runs_of("down.csv")] == [dg.DagsterRunStatus.FAILURE] * 3


def test_every_failure_of_a_sync_is_told_not_only_the_first_few(home, folders):
    inbox, outbox = folders
    names = [f"broken-{number}.csv" for number in range(8)]  # Dagster hands a failure
    for name in names:                                        # sensor 5 runs a tick
        (inbox / name).write_text("broken")

    report = run_sync(folders)

    assert sorted(run.partition for run in report.failed) == sorted(names)
    assert sorted(path.name for path in outbox.glob("*.told")) == sorted(
        f"{name}.told" for name in names)


def test_two_syncs_at_once_run_each_file_once(home, folders):
    inbox, outbox = folders
    run_sync(folders)  # the instance exists before two processes race to create it
    for name in ("d.csv", "e.csv", "f.csv"):
        (inbox / name).write_text(name)

    # A third sync (this test) holds the instance while two more start, then lets them go.
    with open(home / "credflow-sync.lock", "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        syncs = [subprocess.Popen(
            [sys.executable, "-m", "credflow_assets_tests.faults.run_recovery_location",
             *map(str, folders)],
            env=os.environ.copy(), stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
            for _ in range(2)]
        for sync_process in syncs:  # both have opened the lock: they wait for it
            wait_for(lambda: holds_open(sync_process.pid, home / "credflow-sync.lock"), 60,
                     "the syncs to reach the lock")
        time.sleep(0.5)  # from opening the lock to trying it, and saying that it waits
        fcntl.flock(lock, fcntl.LOCK_UN)
    outputs = [sync_process.communicate(timeout=120)[0] for sync_process in syncs]

    for name in ("d.csv", "e.csv", "f.csv"):
        assert (outbox / name).read_text() == name.upper()
        assert len(runs_of(name)) == 1
    assert any("another credflow sync" in output and "waiting" in output
               for output in outputs), outputs


def holds_open(pid: int, path: Path) -> bool:
    try:
        return any(os.readlink(fd) == str(path) for fd in Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return False


def test_what_counts_as_transient():
    from botocore.exceptions import EndpointConnectionError
    from paramiko.ssh_exception import SSHException

    from credflow_assets.resources.drive import DriveError
    from credflow_assets.common.run_recovery import is_transient

    def caused_by(error: BaseException) -> dg.Failure:
        try:
            raise dg.Failure("feed nsss: file 'x.csv' could not be downloaded") from error
        except dg.Failure as failure:
            return failure

    assert is_transient(DriveError("download x", 503, "backendError", "try later"))
    assert is_transient(DriveError("download x", 429, "rateLimitExceeded", "slow down"))
    assert is_transient(DriveError("download x", None, "ConnectionRefusedError", "refused"))
    assert not is_transient(DriveError("download x", 404, "notFound", "File not found"))
    assert is_transient(caused_by(EndpointConnectionError(endpoint_url="http://s3")))
    assert is_transient(caused_by(SSHException("Error reading SSH protocol banner")))
    assert is_transient(dg.Failure("x", metadata={"failure_kind": "transient"}))
    # A file's own problem is permanent, even when an outage happened on the way.
    assert not is_transient(dg.Failure("bad signature", metadata={"failure_kind": "permanent"}))
    assert not is_transient(ValueError("row 3 has 7 fields, the header 6"))
