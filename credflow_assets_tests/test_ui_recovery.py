"""Under the daemon, a run whose worker process is killed is found, failed, and run again by
Dagster's run retries; the file lands once.

The run worker of the default launcher is a process of its own on this machine (its pid is in
the run's "Started process for run" event). The code server that started it notices its death;
should the code server be gone too, credflow's `stopped_runs_sensor` does.
"""

from __future__ import annotations

import os
import shutil
import signal
import tempfile
import time
from pathlib import Path

from credflow_assets_tests.dagster_ui import POLL_SECONDS, RUN_EVENTS_QUERY, unwrap

ROWS = 1_500_000  # 50 MB encrypted, landed in about a second
KILL_POLL_SECONDS = 0.1  # a run worker needs far longer than this to load the code location


def test_a_killed_run_worker_is_failed_and_retried_by_the_daemon(dagster_ui,
                                                                 daemon_processed_files):
    ui = dagster_ui
    provider = ui.config.providers[0]
    running_before = _run_workers(ui)
    name = _drop_big_provider_file(ui, provider)

    # The run worker is killed as soon as it exists, while it still loads the code location: the
    # landing itself takes about a second here, so a kill timed from the UI (the run's "Started
    # process" event, polled) could come after the run's end and test nothing.
    pid = _wait(lambda: next(iter(_run_workers(ui) - running_before), None), 150,
                "the sensor's run for the big file to start its worker", poll=KILL_POLL_SECONDS)
    os.kill(pid, signal.SIGKILL)
    first = _wait(lambda: _runs_of(ui, name), 30, "the big file's run")[-1]

    runs = _wait(lambda: [run for run in _runs_of(ui, name) if run["status"] == "SUCCESS"]
                 and _runs_of(ui, name), 240, "the retry to land the file")
    killed = next(run for run in runs if run["runId"] == first["runId"])
    retry = next(run for run in runs if run["status"] == "SUCCESS")
    assert killed["status"] == "FAILURE"
    assert _worker_pid(ui, killed["runId"]) in (None, pid)  # None: killed before it said so
    # Whoever noticed first says so: Dagster's code server (it watches the run worker it
    # started), the provider flow's scratch cleanup, or credflow's stopped_runs_sensor.
    assert any(reason in _messages(ui, killed["runId"]) for reason in (
        "marked as failed from outside the execution context",
        "The process running this run", "the process running it stopped"))
    assert retry["tag_map"]["dagster/parent_run_id"] == killed["runId"]
    assert retry["tag_map"].get("dagster/retry_number") == "1"
    landed = ui.aws("s3").list_objects_v2(
        Bucket=ui.config.buckets.provider_data,
        Prefix=f"data/csv/{provider.folder}/{name.removesuffix('.gpg')}")["Contents"]
    assert len(landed) == 1  # landed once


def _drop_big_provider_file(ui, provider) -> str:
    from credflow_assets.local.gpg_keys import encrypt_file, export_public_key
    from credflow_assets.resources.gpg import kill_agent, open_gpg

    name = f"big_roster_{int(time.time())}.csv.gpg"
    outbox = Path(ui.env["CREDFLOW_SFTP_ROOT"]) / provider.remote_dir
    credflow_key = open_gpg(ui.state.gpg_home).list_keys(secret=True)[0]["fingerprint"]
    sender = Path(tempfile.mkdtemp(dir="/tmp", prefix="cf-kill-gpg-"))
    try:
        open_gpg(sender).import_keys(export_public_key(ui.state.gpg_home, credflow_key))
        plain = sender / name.removesuffix(".gpg")
        with open(plain, "w") as out:
            out.write("member_id,first_name,last_name,npi,license_state,notes\n")
            row = "M{:08d},Ann,Lee,1234567890,NY,ok\n"
            out.writelines(row.format(index) for index in range(ROWS))
        encrypted = encrypt_file(sender, plain, sender / name, [credflow_key])
        hidden = outbox / f".{name}.uploading"  # the sensor skips dot-names
        shutil.copyfile(encrypted, hidden)
        os.replace(hidden, outbox / name)
    finally:
        kill_agent(sender)
        shutil.rmtree(sender, ignore_errors=True)
    return name


def _runs_of(ui, name: str) -> list[dict]:
    return list(reversed([run for run in ui.runs()
                          if name in run["tag_map"].get("dagster/partition", "")]))


def _worker_pid(ui, run_id: str) -> int | None:
    answer = unwrap(ui.graphql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"], "Run")
    for event in answer["eventConnection"]["events"]:
        message = event.get("message") or ""
        if message.startswith("Started process for run (pid: "):
            return int(message.split("pid: ", 1)[1].rstrip(").").strip())
    return None


def _run_workers(ui) -> set[int]:
    """The run workers of this UI's stack: the default launcher's code server starts each run in
    a `multiprocessing` spawn child, which inherits the stack's DAGSTER_HOME."""
    home = f"DAGSTER_HOME={ui.env['DAGSTER_HOME']}".encode()
    workers = set()
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            if (b"spawn_main" in (entry / "cmdline").read_bytes()
                    and home in (entry / "environ").read_bytes().split(b"\0")):
                workers.add(int(entry.name))
        except OSError:  # exited while we looked
            continue
    return workers


def _messages(ui, run_id: str) -> str:
    answer = unwrap(ui.graphql(RUN_EVENTS_QUERY, {"runId": run_id})["runOrError"], "Run")
    return "\n".join(event.get("message") or "" for event in answer["eventConnection"]["events"])


def _wait(found, seconds: float, what: str, poll: float = POLL_SECONDS):
    deadline = time.monotonic() + seconds
    while True:
        value = found()
        if value:
            return value
        assert time.monotonic() < deadline, f"timed out after {seconds:.0f}s waiting for {what}"
        time.sleep(poll)
