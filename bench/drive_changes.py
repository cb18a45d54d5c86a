"""Benchmark 3, Drive part: one tick of a feed's inbound sensor on Drive's changes feed, with
10,000 files already in the inbound folder.

    .venv/bin/python bench/drive_changes.py            # 10,000 files in the folder
    .venv/bin/python bench/drive_changes.py --quick    # 2,000
    options: --files N  --new 100  --repeat 3  --json FILE

On a local Drive server of its own (a real process, its HTTP API), the inbound folder is filled
with N files (written into the server's store before it starts: N uploads over HTTP would time
the upload, not the sensor). Then, timed, each against the same folder:

1. the first tick (no cursor): `getStartPageToken`, then the folder listed once, up to
   `max_files_per_tick` files requested;
2. a tick with no changes since its token: what every quiet minute costs;
3. a tick after `--new` new uploads (over HTTP): their changes read, up to the limit requested;
4. the baseline, in the same run: listing the whole folder once (10 pages of 1,000 at 10,000
   files), which is what a tick that lists the folder pays when its window covers the folder
   (the modifiedTime sensor's, whenever the files are newer than its 5-minute lookback).

Each tick is evaluated as the daemon evaluates it, with an ephemeral Dagster instance (no runs
in it: every revision is new to it). Drive calls are counted by the server's request counter.
The limit is benchmark 3's: a tick at most 2 s, flat in the folder's size.
"""

from __future__ import annotations

import argparse
import json
import secrets
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_workdir, print_machine, table, write_json  # noqa: E402

REPO = Path(__file__).resolve().parent.parent
TICK_LIMIT_S = 2.0


def fill_store(state_dir: Path, files: int) -> str:
    """A folder of `files` CSV files, straight into the server's store; returns its id."""
    from credflow_assets.local.drive_server.store import Store

    store = Store(state_dir)
    try:
        folder = store.create({"name": "inbound", "mimeType": "application/vnd.google-apps.folder"},
                              None, "")
        for index in range(files):
            store.create({"name": f"file {index:06d}.csv", "mimeType": "text/csv",
                          "parents": [folder["id"]]}, None, "")
        return folder["id"]
    finally:
        store.close()


def feed_sensor(folder_id: str):
    """The first configured feed's sensor, watching the benchmark's folder."""
    from credflow_assets.config import load_config
    from credflow_assets.drive_feeds.assets import build_feed_job
    from credflow_assets.drive_feeds.sensors import build_inbound_sensor

    config = load_config(REPO / "credflow.yaml")
    feed = config.feeds[0].model_copy(update={"inbound_folder_id": folder_id})
    return build_inbound_sensor(feed, build_feed_job(feed))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--files", type=int, default=10_000)
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--json")
    args = parser.parse_args()
    files = 2_000 if args.quick else args.files
    info = print_machine()

    from credflow_assets.drive_feeds.settings import DriveFeedSettings
    from credflow_assets.local import drive_server
    from credflow_assets.local.process import stop_pid
    from credflow_assets.resources.drive import DriveResource

    with bench_workdir("drive_changes") as work:
        started = time.monotonic()
        folder_id = fill_store(work / "drive", files)
        print(f"{files:,} files written to the store in {time.monotonic() - started:.1f} s")
        token = secrets.token_hex(16)
        server = drive_server.start(work, token=token)
        try:
            drive = DriveResource(api_url=server["url"], token=token)
            results = run_ticks(drive, folder_id, files, args, DriveFeedSettings(
                logs_bucket="bench"), drive_server, server["url"], token)
        finally:
            stop_pid(server["pid"])
    rows = [(name, f"{r['seconds']:.3f} s", r["drive_calls"], r["requests"])
            for name, r in results.items()]
    print(table(("at " + f"{files:,} files", "tick (median)", "Drive calls", "runs requested"),
                rows))
    quiet = results["tick, no changes"]["seconds"]
    print(f"no-change tick {quiet:.3f} s against the full listing's "
          f"{results['baseline: one full listing']['seconds']:.3f} s "
          f"(limit {TICK_LIMIT_S:.0f} s); load {info['load_average_1_5_15']}")
    write_json(args.json, {"machine": info, "files": files, "results": results})


def run_ticks(drive, folder_id, files, args, settings, drive_server, url, token) -> dict:
    import dagster as dg

    sensor = feed_sensor(folder_id)
    instance = dg.DagsterInstance.ephemeral()

    def tick(cursor):
        with dg.build_sensor_context(instance=instance, cursor=cursor, resources={
                "drive": drive, "drive_feed_settings": settings}) as context:
            return sensor(context)

    def measured(action) -> dict:
        seconds, calls, value = [], 0, None
        for _ in range(args.repeat):
            drive_server.set_faults(url, token)  # resets the request counter
            began = time.monotonic()
            value = action()
            seconds.append(time.monotonic() - began)
            calls = drive_server.fault_state(url, token)["requests"]
        requested = len(value.run_requests) if hasattr(value, "run_requests") else 0
        return {"seconds": statistics.median(seconds), "drive_calls": calls,
                "requests": requested, "value": value}

    results = {}
    results["first tick (token + listing)"] = measured(lambda: tick(None))
    steady = json.dumps({"token": drive.start_page_token(), "listing": None})
    results["tick, no changes"] = measured(lambda: tick(steady))
    source = Path(drive_server.__file__).parent / "__init__.py"  # any small file will do
    for index in range(args.new):
        drive.upload_file(source, f"new {index:04d}.csv", folder_id, mime_type="text/csv")
    results[f"tick after {args.new} uploads"] = measured(lambda: tick(steady))
    results["baseline: one full listing"] = measured(lambda: sum(
        1 for _ in drive.list_files(f"'{folder_id}' in parents and trashed = false",
                                    fields="id,modifiedTime", order_by="modifiedTime")))
    assert results["baseline: one full listing"]["value"] == files + args.new
    for result in results.values():
        result.pop("value")
    return results


if __name__ == "__main__":
    main()
