"""`credflow sync` against a small real code location: a directory sensor and a per-file asset."""

import json
import time
from pathlib import Path
from types import SimpleNamespace

import dagster as dg
import pytest

from credflow_assets.common.dagster_compat import LOCATION_NAME, sensor_cursor, store_sensor_cursor
from credflow_assets.cli.sync import sync

inbox_files = dg.DynamicPartitionsDefinition(name="inbox_files")


class Folders(dg.ConfigurableResource):
    inbox: str
    outbox: str


@dg.asset(partitions_def=inbox_files)
def copied_file(context: dg.AssetExecutionContext, folders: Folders) -> None:
    source = Path(folders.inbox) / context.partition_key
    text = source.read_text()
    if text == "broken":
        raise ValueError(f"{context.partition_key}: content is broken")
    (Path(folders.outbox) / context.partition_key).write_text(text.upper())


copy_job = dg.define_asset_job(
    "copy_job", selection=[copied_file], executor_def=dg.in_process_executor,
)


@dg.sensor(job=copy_job)
def inbox_sensor(context: dg.SensorEvaluationContext, folders: Folders) -> dg.SensorResult:
    seen = set(json.loads(context.cursor or "[]"))
    new = sorted(p.name for p in Path(folders.inbox).iterdir() if p.name not in seen)
    new = new[:2]  # a bounded batch per tick, as the real sensors do
    return dg.SensorResult(
        run_requests=[
            dg.RunRequest(partition_key=name,
                          run_key=f"{name}:{(Path(folders.inbox) / name).stat().st_size}")
            for name in new
        ],
        dynamic_partitions_requests=[inbox_files.build_add_request(new)] if new else [],
        cursor=json.dumps(sorted(seen | set(new))),
    )


@pytest.fixture
def folders(tmp_path):
    inbox, outbox = tmp_path / "inbox", tmp_path / "outbox"
    inbox.mkdir()
    outbox.mkdir()
    return Folders(inbox=str(inbox), outbox=str(outbox))


@pytest.fixture
def defs(folders):
    return dg.Definitions(assets=[copied_file], jobs=[copy_job], sensors=[inbox_sensor],
                          resources={"folders": folders})


@pytest.fixture
def instance(tmp_path):
    (tmp_path / "dagster_home").mkdir()
    with dg.instance_for_test(temp_dir=str(tmp_path / "dagster_home")) as instance:
        yield instance


def test_sync_runs_every_new_file_once_and_names_failures(defs, folders, instance):
    inbox = Path(folders.inbox)
    for name, text in [("a.txt", "alpha"), ("b.txt", "beta"), ("c.txt", "broken")]:
        (inbox / name).write_text(text)
    lines = []

    report = sync(defs, instance, progress=lines.append)

    assert sorted(p.name for p in Path(folders.outbox).iterdir()) == ["a.txt", "b.txt"]
    assert (Path(folders.outbox) / "a.txt").read_text() == "ALPHA"
    assert report.partitions_added == 3
    assert [run.partition for run in report.failed] == ["c.txt"]
    assert report.failed[0].error == "c.txt: content is broken"  # no "ValueError: "
    assert not report.ok
    assert len(lines) == 3 and any("partition c.txt" in line and "FAILED" in line for line in lines)
    runs = instance.get_runs()
    assert {run.tags["dagster/sensor_name"] for run in runs} == {"inbox_sensor"}
    assert {run.tags["dagster/run_key"] for run in runs} == {"a.txt:5", "b.txt:4", "c.txt:6"}

    second = sync(defs, instance, progress=lines.append)
    assert second.runs == [] and second.skipped_run_keys == 0
    assert len(instance.get_runs()) == 3


def test_sync_runs_belong_to_the_code_location_as_the_daemons_do(defs, folders, instance):
    (Path(folders.inbox) / "a.txt").write_text("alpha")

    sync(defs, instance, progress=lambda _: None)

    (run,) = instance.get_runs()
    # What the UI needs to list a run under its job and re-execute it: its code location.
    assert run.remote_job_origin is not None
    assert run.remote_job_origin.location_name == LOCATION_NAME
    assert run.remote_job_origin.job_name == "copy_job"
    assert run.tags["dagster/partition"] == "a.txt"
    assert run.job_code_origin is not None


def test_sync_keeps_the_cursor_where_the_daemon_keeps_it(defs, folders, instance):
    (Path(folders.inbox) / "a.txt").write_text("alpha")

    sync(defs, instance, progress=lambda _: None)

    # The daemon reads the same sensor state: its next tick starts after a.txt.
    assert json.loads(sensor_cursor(instance, "inbox_sensor")) == ["a.txt"]
    (Path(folders.inbox) / "b.txt").write_text("beta")
    store_sensor_cursor(instance, inbox_sensor, json.dumps(["a.txt", "b.txt"]))  # as a tick would
    assert sync(defs, instance, progress=lambda _: None).runs == []


def test_run_keys_stop_duplicates_when_the_cursor_is_lost(defs, folders, instance):
    (Path(folders.inbox) / "a.txt").write_text("alpha")
    assert len(sync(defs, instance, progress=lambda _: None).runs) == 1
    store_sensor_cursor(instance, inbox_sensor, "[]")

    again = sync(defs, instance, progress=lambda _: None)

    assert again.runs == [] and again.skipped_run_keys == 1
    assert len(instance.get_runs()) == 1


def test_a_changed_file_gets_a_new_run(defs, folders, instance):
    path = Path(folders.inbox) / "a.txt"
    path.write_text("alpha")
    sync(defs, instance, progress=lambda _: None)
    path.write_text("alpha, corrected")
    store_sensor_cursor(instance, inbox_sensor, "[]")

    again = sync(defs, instance, progress=lambda _: None)

    assert [run.partition for run in again.runs] == ["a.txt"]
    assert (Path(folders.outbox) / "a.txt").read_text() == "ALPHA, CORRECTED"


def test_sync_leaves_the_sensors_to_a_live_daemon_and_takes_them_back_once_it_stopped(
        defs, folders, instance):
    """A daemon that stopped (`credflow dev` ended, a crash) leaves its last heartbeat behind:
    a few minutes later sync ticks the sensors again, not half an hour later."""
    from dagster._daemon.types import DaemonHeartbeat  # what a daemon writes (test scaffolding)

    (Path(folders.inbox) / "a.txt").write_text("a")
    lines: list[str] = []

    def heartbeat(seconds_ago: float) -> None:
        instance.add_daemon_heartbeat(DaemonHeartbeat(
            timestamp=time.time() - seconds_ago, daemon_type="SENSOR", daemon_id="daemon-1",
            errors=[]))

    heartbeat(10)
    assert sync(defs, instance, progress=lines.append).runs == []
    assert "sensor inbox_sensor: the Dagster daemon is running it; skipped" in lines
    heartbeat(5 * 60)  # Dagster's own status still calls it healthy (for 30 minutes)
    assert instance.get_daemon_statuses(["SENSOR"])["SENSOR"].healthy
    report = sync(defs, instance, progress=lines.append)
    assert [run.partition for run in report.runs] == ["a.txt"] and report.ok


def test_a_sensor_that_fails_is_reported_by_its_message(defs, folders, instance):
    Path(folders.inbox).rmdir()  # what the sensor reads is gone (an outage, for a real one)
    lines: list[str] = []
    report = sync(defs, instance, progress=lines.append)
    said = f"[Errno 2] No such file or directory: '{folders.inbox}'"
    assert report.sensor_errors == {"inbox_sensor": said} and not report.ok
    assert f"sensor inbox_sensor failed: {said}" in lines
    assert not any("FileNotFoundError" in line for line in lines)


def test_an_unknown_sensor_name_is_refused(defs, instance):
    with pytest.raises(ValueError, match="no such sensor: nope"):
        sync(defs, instance, sensor_names=["nope"])


@pytest.mark.parametrize(("message", "cls_name", "read"), [
    ("dagster._core.definitions.events.Failure: staging/claims/x.csv: extra column: notes\n",
     "Failure", "staging/claims/x.csv: extra column: notes"),
    ("ValueError: row 3: not a date\n", "ValueError", "row 3: not a date"),
    # A message announcing a list keeps its items, on one line.
    ("dagster._core.errors.DagsterAssetCheckFailedError: 2 blocking asset checks failed with "
     "ERROR severity:\ns3/staging/claims_staged_csv: columns_match_table,rows_match_schema\n",
     "DagsterAssetCheckFailedError",
     "2 blocking asset checks failed with ERROR severity: "
     "s3/staging/claims_staged_csv: columns_match_table,rows_match_schema"),
    ("botocore.exceptions.ClientError: An error occurred (NoSuchBucket)\n", None,
     "An error occurred (NoSuchBucket)"),
    # Only the class is stripped: a message that itself mentions an error keeps it.
    ("dagster._core.definitions.events.Failure: KeyError: 'x' in feed spl\n", "Failure",
     "KeyError: 'x' in feed spl"),
    ("KeyError\n", "KeyError", "KeyError"),  # no message: the bare class is all there is
])
def test_a_failure_reads_as_its_message_without_the_exception_class(message, cls_name, read):
    from credflow_assets.cli.sync import innermost_error_message

    # The shape of Dagster's error info (a step failure's `error`): message, class, cause.
    wrapped = SimpleNamespace(
        message="dagster._core.errors.DagsterExecutionStepExecutionError: Error occurred while "
        'executing op "x":\n', stack=[], cls_name="DagsterExecutionStepExecutionError",
        cause=SimpleNamespace(message=message, stack=[], cls_name=cls_name, cause=None))
    assert innermost_error_message(wrapped) == read
