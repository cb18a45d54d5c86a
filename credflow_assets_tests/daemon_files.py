"""One new file in each flow's source on the `dagster_ui` stack, and the daemon's runs for it.

`daemon_processed_files` (a session fixture; conftest.py registers this module as a plugin): one new file dropped into each flow's source on that stack (a
  therapist upload, a provider's encrypted SFTP file, a sheet in a feed's inbound Drive folder,
  a CSV in `staging/{table}/`), all at once, and the runs the daemon's sensors launched for
  them, waited for until they finish. Later UI tests reuse these partitions. Meanwhile a
  second staged upload is arranged so both staging sensors see it before its promotion
  (`BothStagingSensors`; kept apart, as `staged_seen_by_both_sensors`).
"""

from __future__ import annotations

import os
import secrets
import shutil
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from credflow_assets.drive_feeds import names as feed_names
from credflow_assets.provider_feeds import names as provider_names
from credflow_assets.staged_tables import names as staged_names
from credflow_assets.therapists import names as therapist_names
from credflow_assets_tests.dagster_ui import (
    DAEMON_DEADLINE_SECONDS,
    PARTITION_TAG,
    POLL_SECONDS,
    SENSOR_TAG,
    TERMINAL_STATUSES,
    DagsterUI,
)

# ------------------------------------------------------------------------------ the four drops


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
    folder_key = therapist_names.MPF_FOLDER_KEY
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
    landed_key = provider_names.landed_asset_key(provider.name)
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
    records_key = feed_names.records_key(feed.name)
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
    prod_key = staged_names.prod_file_key(table)
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
        job = staged_names.job_name(after.details["table"])
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
