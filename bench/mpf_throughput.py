"""Benchmark 4: the MPF flow end to end, and where its wall time goes.

    .venv/bin/python bench/mpf_throughput.py                    # 1,000 therapists × 3 files
    .venv/bin/python bench/mpf_throughput.py --therapists 100   # 13 min of sync here, under load
    .venv/bin/python bench/mpf_throughput.py --quick            # 5 therapists
    options: --profile FILE (pyinstrument of the sync)  --json FILE

Data: N therapists in the directory database, each with a one-page PDF, an 8×8 PNG and a text CV
in the signup bucket (the demo seed's files), whose S3 events wait in the signup queue.

1. credflow, one run per therapist: in a child process, `sync(…, sensor_names=
   ["signup_upload_sensor"])`, as `credflow sync` does (each run in-process against the stack's
   SQLite Dagster instance). Work is the time inside the flow's compute (from each step's last
   input event to its last output, check or failure event), minus the time Dagster spends
   storing events meanwhile (`handle_new_event`: materializations and log lines written while the
   step runs are Dagster's cost, not the flow's). Dagster run overhead is the rest of each run
   (run creation, resource initialisation, step and output events, storage writes); sensor time
   is the ticks and sync's own bookkeeping. LibreOffice time is measured around its subprocess;
   the initialisation of each run's event-log database (inside its first event write) is timed
   in the instance's storage class.
2. batched runs, measured on no-op jobs of the flow's shapes (three dynamic-partitioned assets
   with a check, in-process executor, a fresh SQLite instance): one run per partition with three
   steps (the flow's former shape), with one step (its shape now), and one run over a range of
   the same partitions. The flow's assets read `context.partition_key` (one therapist per run),
   so a batched run of the real job cannot be executed; its wall time is projected as measured
   work + the range run's per-partition overhead, and labelled so.
3. LibreOffice alone: K text files converted by K `soffice` calls with a new profile each, K
   calls sharing one profile, and one call for all K.
"""

from __future__ import annotations

import argparse
import bisect
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections import defaultdict
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    bench_stack,
    bench_workdir,
    child_result,
    print_machine,
    run_child,
    table,
    write_json,
)

FILES = ("license.pdf", "headshot.png", "cv.txt")
FIRST = ("Amara", "Ben", "Chloe", "Dev", "Ebony", "Femi", "Grace", "Hassan", "Isla", "Jamal")
LAST = ("Adeyemi", "Brown", "Chen", "Doherty", "Evans", "Fernandes", "Green", "Hussain")


# ------------------------------------------------------------------------------ data


def seed(config, env, therapists: int, prefix: str = "b") -> float:
    """Directory rows and 3 uploads per therapist (ids `{prefix}-00000`…); returns seconds."""
    from concurrent.futures import ThreadPoolExecutor

    import boto3
    import sqlalchemy as sa

    from credflow_assets.local.seed_mpf import _content
    from credflow_assets.therapists import directory
    from credflow_assets.therapists.renditions import mime_type_of

    started = time.monotonic()
    engine = sa.create_engine(env["CREDFLOW_DIRECTORY_DB_URL"])
    directory.metadata.create_all(engine)
    people = [(f"{prefix}-{index:05d}", FIRST[index % len(FIRST)],
               f"{LAST[index % len(LAST)]}{index}") for index in range(therapists)]
    with engine.begin() as connection:
        connection.execute(directory.therapists_table.insert(), [
            {"id": tid, "first_name": first, "last_name": last,
             "email": f"{tid}@therapists.example"} for tid, first, last in people])
    engine.dispose()
    client = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])

    def upload(person) -> None:
        tid, first, last = person
        for name in FILES:
            client.put_object(Bucket=config.buckets.signup, Key=f"{tid}/{name}",
                              ContentType=mime_type_of(name),
                              Body=_content(name, f"{first} {last}", tid))

    with ThreadPoolExecutor(8) as pool:
        list(pool.map(upload, people))
    return time.monotonic() - started


# ------------------------------------------------------------------------------ credflow


STEP_INPUT_EVENTS = {"STEP_START", "LOADED_INPUT", "STEP_INPUT"}
STEP_END_EVENTS = {"STEP_OUTPUT", "ASSET_CHECK_EVALUATION", "STEP_FAILURE"}


def compute_windows(instance, run_id: str) -> dict[str, tuple[float, float]]:
    """Per step: (start, end) from its last input event to its last output/check/failure event."""
    starts: dict[str, float] = {}
    ends: dict[str, float] = {}
    for entry in instance.all_logs(run_id):
        event = entry.dagster_event
        if event is None or not event.step_key:
            continue
        kind = event.event_type_value
        if kind in STEP_INPUT_EVENTS:
            starts[event.step_key] = entry.timestamp
        elif kind in STEP_END_EVENTS:
            ends[event.step_key] = entry.timestamp
    return {step: (starts[step], ends[step]) for step in ends if step in starts}


def seconds_inside(intervals: list[tuple[float, float]], start: float, end: float) -> float:
    """Seconds of `intervals` (sorted by start, not overlapping) that fall within start..end."""
    first = max(0, bisect.bisect_left(intervals, (start, start)) - 1)
    total = 0.0
    for begin, finish in intervals[first:]:
        if begin >= end:
            break
        total += max(0.0, min(end, finish) - max(start, begin))
    return total


def child_sync(options: dict) -> None:
    import dagster as dg

    from credflow_assets.config import load_config
    from credflow_assets.definitions import build_definitions
    from credflow_assets.cli.sync import sync
    from credflow_assets.therapists import renditions

    timings: dict[str, list[float]] = defaultdict(list)

    def timed(name, function):
        def wrapper(*args, **kwargs):
            started = time.monotonic()
            try:
                return function(*args, **kwargs)
            finally:
                timings[name].append(time.monotonic() - started)
        return wrapper

    # Instrumentation only (this process): the conversions credflow makes, timed.
    # (`_office_to_pdf`: the code before one call per run, for before/after comparisons.)
    soffice_call = "_run_soffice" if hasattr(renditions, "_run_soffice") else "_office_to_pdf"
    setattr(renditions, soffice_call, timed("libreoffice", getattr(renditions, soffice_call)))
    renditions._image_to_pdf = timed("image_to_pdf", renditions._image_to_pdf)
    from dagster_aws.s3 import S3Resource

    from credflow_assets.resources.drive import DriveResource

    S3Resource.get_client = timed("s3_get_client", S3Resource.get_client)
    event_intervals: list[tuple[float, float]] = []
    handle_new_event = dg.DagsterInstance.handle_new_event

    def timed_handle_new_event(self, *args, **kwargs):
        started = time.time()  # the event log's clock, to match its timestamps
        try:
            return handle_new_event(self, *args, **kwargs)
        finally:
            event_intervals.append((started, time.time()))

    dg.DagsterInstance.handle_new_event = timed_handle_new_event
    DriveResource._build_service = timed("drive_build_service", DriveResource._build_service)
    DriveResource._files = timed("drive_files", DriveResource._files)

    defs = build_definitions(load_config(os.environ["CREDFLOW_CONFIG"]))
    profiler = None
    if options.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.005)
    with dg.DagsterInstance.get() as instance:
        # Building each run's database (SQLite's per-run shard: created with the run's first
        # event, inside that event's write), timed in the class this instance uses.
        storage_class = type(instance.event_log_storage)
        if hasattr(storage_class, "_initdb"):
            storage_class._initdb = timed("event_log_db_init", storage_class._initdb)
        if profiler:
            profiler.start()
        started = time.monotonic()
        report = sync(defs, instance, sensor_names=["signup_upload_sensor"],
                      progress=lambda line: None)
        wall = time.monotonic() - started
        if profiler:
            profiler.stop()
            Path(options["profile"]).write_text(profiler.output_text(unicode=True))
            Path(options["profile"] + ".all").write_text(
                profiler.output_text(unicode=True, show_all=True))
        steps: dict[str, float] = defaultdict(float)
        events_in_compute = 0.0
        for run in report.runs:
            for step, (start, end) in compute_windows(instance, run.run_id).items():
                steps[step] += end - start
                events_in_compute += seconds_inside(event_intervals, start, end)
    runs_seconds = sum(run.seconds for run in report.runs)
    child_result({
        "wall_seconds_sync": wall,
        "runs": len(report.runs),
        "therapists": len({run.partition for run in report.runs}),
        "failed": [f"{run.partition}: {run.error}" for run in report.failed][:5],
        "failed_count": len(report.failed),
        "runs_seconds": runs_seconds,
        "run_seconds_median": statistics.median([r.seconds for r in report.runs] or [0]),
        "work_seconds_by_step": dict(steps),
        "event_seconds_in_compute": events_in_compute,
        "event_seconds": sum(e - s for s, e in event_intervals),
        "events": len(event_intervals),
        "work_seconds": sum(steps.values()) - events_in_compute,
        "libreoffice_seconds": sum(timings["libreoffice"]),
        "libreoffice_calls": len(timings["libreoffice"]),
        "image_to_pdf_seconds": sum(timings["image_to_pdf"]),
        "event_log_db_inits": len(timings["event_log_db_init"]),
        "event_log_db_init_seconds": sum(timings["event_log_db_init"]),
        "client_calls": {name: len(timings[name]) for name in
                         ("s3_get_client", "drive_build_service", "drive_files")},
        "client_seconds": {name: sum(timings[name]) for name in
                           ("s3_get_client", "drive_build_service", "drive_files")},
    })


# ------------------------------------------------------------------------------ batched runs


def child_noop(options: dict) -> None:
    """No-op jobs of the flow's shapes: three steps or one step per run, against one range run."""
    import dagster as dg

    # Dagster's run tags for a partition range run (dagster._core.storage.tags).
    ASSET_PARTITION_RANGE_START_TAG = "dagster/asset_partition_range_start"
    ASSET_PARTITION_RANGE_END_TAG = "dagster/asset_partition_range_end"

    partitions = dg.DynamicPartitionsDefinition(name="bench_noop")
    count = options["partitions"]
    single_run = dg.BackfillPolicy.single_run()

    # The former shape: three assets, three steps, values through the IO manager.
    @dg.asset(partitions_def=partitions)
    def uploads(context) -> list:
        context.log.info("uploads")
        return [{"key": context.partition_key}]

    @dg.asset(partitions_def=partitions)
    def renditions_(context, uploads: list) -> list:
        context.log.info("renditions")
        return uploads

    @dg.asset(partitions_def=partitions, check_specs=[dg.AssetCheckSpec("audit", asset="folder")])
    def folder(context, uploads: list, renditions_: list):
        context.log.info("folder")
        yield dg.MaterializeResult(metadata={"files": len(renditions_)})
        yield dg.AssetCheckResult(check_name="audit", asset_key="folder", passed=True)

    # The shape now: the same three assets in one step, nothing through the IO manager (a range
    # run cannot store one output for many partitions anyway).
    keys = [dg.AssetKey("uploads_1"), dg.AssetKey("renditions_1"), dg.AssetKey("folder_1")]

    @dg.multi_asset(
        partitions_def=partitions, backfill_policy=single_run,
        specs=[dg.AssetSpec(keys[0]), dg.AssetSpec(keys[1], deps=[keys[0]]),
               dg.AssetSpec(keys[2], deps=keys[:2])],
        check_specs=[dg.AssetCheckSpec("audit", asset=keys[2])],
    )
    def one_step(context):
        for key in keys:
            context.log.info(f"{key.to_user_string()}: {len(context.partition_keys)} partition(s)")
            yield dg.MaterializeResult(asset_key=key, metadata={"partitions": len(
                context.partition_keys)})
        yield dg.AssetCheckResult(check_name="audit", asset_key=keys[2], passed=True)

    jobs = [dg.define_asset_job("three_steps", selection=[uploads, renditions_, folder],
                                executor_def=dg.in_process_executor),
            dg.define_asset_job("one_step", selection=[one_step],
                                executor_def=dg.in_process_executor)]
    defs = dg.Definitions(assets=[uploads, renditions_, folder, one_step], jobs=jobs)
    quiet = {"loggers": {"console": {"config": {"log_level": "WARNING"}}}}
    modes = {"per partition, three steps": "three_steps", "per partition, one step": "one_step"}
    results = dict.fromkeys([*modes, "one range run"], 0.0)
    with dg.DagsterInstance.get() as instance:
        # The per-partition modes alternate run by run, so that load from elsewhere on the
        # machine weighs on both alike.
        for index in range(count):
            order = list(modes) if index % 2 else list(reversed(modes))
            for mode in order:
                key = f"{modes[mode]}-{index:05d}"
                instance.add_dynamic_partitions("bench_noop", [key])
                started = time.monotonic()
                assert defs.resolve_job_def(modes[mode]).execute_in_process(
                    instance=instance, partition_key=key, run_config=quiet).success
                results[mode] += (time.monotonic() - started) / count
        range_keys = [f"range-{index:05d}" for index in range(count)]
        instance.add_dynamic_partitions("bench_noop", range_keys)
        started = time.monotonic()
        assert defs.resolve_job_def("one_step").execute_in_process(
            instance=instance, run_config=quiet, tags={
                ASSET_PARTITION_RANGE_START_TAG: range_keys[0],
                ASSET_PARTITION_RANGE_END_TAG: range_keys[-1]}).success
        results["one range run"] = (time.monotonic() - started) / count
    child_result({"per_partition_seconds": results})


# ------------------------------------------------------------------------------ clients


def client_construction(env: dict, repeat: int = 10) -> dict:
    """What each step pays for its clients: dagster-aws's S3Resource builds a new boto3 session
    and client on every `get_client()` (Dagster calls it once per step to put the client on the
    context, and the assets call it again); DriveResource builds its service once per resource
    instance (one per run) and the `files()` collection on every call."""
    from dagster_aws.s3 import S3Resource

    from credflow_assets.resources.drive import DriveResource

    resource = S3Resource(region_name="us-east-1", endpoint_url=env["AWS_ENDPOINT_URL"])
    resource.get_client()  # imports and first-time loads out of the way
    started = time.monotonic()
    for _ in range(repeat):
        resource.get_client()
    s3_seconds = (time.monotonic() - started) / repeat
    client = resource.get_client()
    started = time.monotonic()
    for _ in range(repeat):
        client.meta.region_name  # a cached client: nothing to build
    cached_seconds = (time.monotonic() - started) / repeat
    DriveResource(api_url=env["CREDFLOW_DRIVE_URL"], token=env["CREDFLOW_DRIVE_TOKEN"])._files()
    started = time.monotonic()
    for _ in range(repeat):
        DriveResource(api_url=env["CREDFLOW_DRIVE_URL"], token=env["CREDFLOW_DRIVE_TOKEN"])._files()
    drive_service = (time.monotonic() - started) / repeat
    drive = DriveResource(api_url=env["CREDFLOW_DRIVE_URL"], token=env["CREDFLOW_DRIVE_TOKEN"])
    drive._files()
    started = time.monotonic()
    for _ in range(repeat):
        drive._files()
    drive_files = (time.monotonic() - started) / repeat
    return {"s3_get_client": s3_seconds, "s3_cached_client": cached_seconds,
            "drive_new_resource_files": drive_service, "drive_files_call": drive_files}


# ------------------------------------------------------------------------------ LibreOffice


def libreoffice(count: int) -> dict:
    soffice = shutil.which("soffice") or shutil.which("libreoffice")
    if soffice is None:
        return {}
    with tempfile.TemporaryDirectory(prefix="cfb-lo-") as work:
        work_path = Path(work)
        sources = []
        for index in range(count):
            path = work_path / f"cv-{index}.txt"
            path.write_text(f"Curriculum vitae of therapist {index}\n")
            sources.append(path)

        def convert(files: list[Path], outdir: Path, profile: str | None = None) -> float:
            outdir.mkdir()
            with tempfile.TemporaryDirectory(prefix="cfb-lo-profile-") as new_profile:
                started = time.monotonic()
                subprocess.run([soffice, f"-env:UserInstallation=file://{profile or new_profile}",
                                "--headless", "--norestore", "--nolockcheck", "--convert-to",
                                "pdf", "--outdir", str(outdir), *map(str, files)],
                               check=True, capture_output=True, timeout=600)
                seconds = time.monotonic() - started
            assert len(list(outdir.glob("*.pdf"))) == len(files)
            return seconds

        separate = sum(convert([path], work_path / f"one-{index}")
                       for index, path in enumerate(sources))
        shared = work_path / "shared-profile"
        convert(sources[:1], work_path / "warm-up", str(shared))  # a profile's first start
        separate_shared = sum(convert([path], work_path / f"shared-{index}", str(shared))
                              for index, path in enumerate(sources))
        together = convert(sources, work_path / "all")
    return {"files": count, "separate_seconds": separate,
            "separate_shared_profile_seconds": separate_shared, "one_call_seconds": together}


# ------------------------------------------------------------------------------ main


def split_row(mode: str, wall: float, files: int, work: float, overhead: float,
              sensors: float) -> list[str]:
    return [mode, f"{wall:.0f}", f"{files / wall * 60:.0f}", f"{work:.0f} ({work / wall:.0%})",
            f"{overhead:.0f} ({overhead / wall:.0%})", f"{sensors:.0f} ({sensors / wall:.0%})"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--therapists", type=int)
    parser.add_argument("--noop-partitions", type=int)
    parser.add_argument("--lo-files", type=int)
    parser.add_argument("--profile")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    parser.add_argument("--child-noop", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_sync(json.loads(args.child))
        return
    if args.child_noop:
        child_noop(json.loads(args.child_noop))
        return

    therapists = args.therapists or (5 if args.quick else 1_000)
    noop_partitions = args.noop_partitions or (10 if args.quick else 200)
    lo_files = args.lo_files or (3 if args.quick else 20)
    info = print_machine()
    with bench_workdir("mpf") as work, bench_stack(work) as (state, config, env):
        seconds = seed(config, env, therapists)
        print(f"seeded {therapists:,} therapists, {3 * therapists:,} uploads in {seconds:.0f}s")
        print(f"\n== credflow sync, one run per therapist ({therapists:,} therapists)")
        cred = run_child([__file__, "--child", json.dumps({"profile": args.profile})], echo=False)
        if cred["failed_count"]:
            print(f"   {cred['failed_count']} run(s) failed, e.g. {cred['failed']}")
        print(f"\n== no-op job of the same shape, {noop_partitions} partitions")
        home = work / "dagster-noop"
        home.mkdir()
        shutil.copyfile(Path(env["DAGSTER_HOME"]) / "dagster.yaml", home / "dagster.yaml")
        noop = run_child([__file__, "--child-noop", json.dumps({"partitions": noop_partitions})],
                         env={"DAGSTER_HOME": str(home)})
        print("\n== client construction")
        clients = client_construction(env)
    print(f"\n== LibreOffice: {lo_files} text files")
    lo = libreoffice(lo_files)

    files = 3 * cred["therapists"]
    wall = cred["wall_seconds_sync"]
    work_seconds = cred["work_seconds"]
    run_overhead = cred["runs_seconds"] - work_seconds
    sensor_seconds = wall - cred["runs_seconds"]
    per_partition = noop["per_partition_seconds"]
    batched_overhead = per_partition["one range run"] * cred["therapists"]
    batched_wall = work_seconds + sensor_seconds + batched_overhead
    rows = [split_row("one run per therapist (measured)", wall, files, work_seconds,
                      run_overhead, sensor_seconds),
            split_row("batched runs (projected: measured work + no-op range-run overhead)",
                      batched_wall, files, work_seconds, batched_overhead, sensor_seconds)]
    if lo and cred["libreoffice_calls"]:
        # A range run would also convert every therapist's text file in one soffice call.
        lo_batched = lo["one_call_seconds"] / lo["files"] * cred["therapists"]
        batched_work = work_seconds - cred["libreoffice_seconds"] + lo_batched
        rows.append(split_row("batched runs, one soffice call for the range (projected)",
                              batched_work + sensor_seconds + batched_overhead, files,
                              batched_work, batched_overhead, sensor_seconds))
    print(f"\nMPF end to end: {cred['therapists']:,} therapists × 3 files (pdf, png, txt), "
          f"{cred['runs']:,} runs")
    print(table(["mode", "wall s", "files/min", "work s (share)", "Dagster run overhead s (share)",
                 "sensor ticks + sync s (share)"], rows))
    print("work by step (s, before Dagster's event writes inside it are taken out): "
          + ", ".join(f"{k} {v:.0f}" for k, v in cred["work_seconds_by_step"].items())
          + f"; Dagster event writes: {cred['events']:,} events, {cred['event_seconds']:.0f}s, "
          f"{cred['event_seconds_in_compute']:.0f}s of them inside steps; "
          f"{cred['events'] / max(cred['runs'], 1):.1f} a run, "
          f"{cred['event_seconds'] / max(cred['events'], 1) * 1000:.1f} ms each; run databases "
          f"initialised inside those writes: {cred['event_log_db_inits']}, "
          f"{cred['event_log_db_init_seconds']:.1f}s")
    print(f"Dagster run overhead per run: "
          f"{run_overhead / max(cred['runs'], 1) * 1000:.0f} ms")
    print(f"LibreOffice inside the runs: {cred['libreoffice_calls']} calls, "
          f"{cred['libreoffice_seconds']:.0f}s ({cred['libreoffice_seconds'] / wall:.0%} of wall); "
          f"images → PDF {cred['image_to_pdf_seconds']:.1f}s")
    print(f"per run: median {cred['run_seconds_median']:.2f}s; peak RSS {cred['peak_rss_mb']:.0f} MB")
    print("client construction inside the sync: " + ", ".join(
        f"{name} {cred['client_calls'][name]}× {cred['client_seconds'][name]:.1f}s"
        for name in cred["client_calls"]) + f" (S3 clients: "
        f"{cred['client_seconds']['s3_get_client'] / wall:.0%} of wall)")
    print(table(["no-op job", "seconds per partition"],
                [[mode, f"{seconds:.3f}"] for mode, seconds in per_partition.items()]))
    if lo:
        print(table(["LibreOffice, text → PDF", "seconds", "per file"], [
            [f"{lo['files']} separate soffice calls, a new profile each",
             f"{lo['separate_seconds']:.1f}", f"{lo['separate_seconds'] / lo['files']:.2f}"],
            [f"{lo['files']} separate soffice calls, one profile reused",
             f"{lo['separate_shared_profile_seconds']:.1f}",
             f"{lo['separate_shared_profile_seconds'] / lo['files']:.2f}"],
            [f"one soffice call for all {lo['files']}", f"{lo['one_call_seconds']:.1f}",
             f"{lo['one_call_seconds'] / lo['files']:.2f}"]]))
    print(table(["client construction (per call)", "seconds"], [
        ["S3Resource.get_client() (new boto3 session + client)", f"{clients['s3_get_client']:.3f}"],
        ["a cached boto3 client", f"{clients['s3_cached_client']:.6f}"],
        ["DriveResource: new resource, first files()", f"{clients['drive_new_resource_files']:.3f}"],
        ["DriveResource.files() on a built service", f"{clients['drive_files_call']:.3f}"]]))
    print("target: Dagster run overhead ≤ 15 % of wall time at 1,000 therapists (issue 20)")
    write_json(args.json, {"machine": info, "therapists": therapists, "credflow": cred,
                           "noop": noop, "libreoffice": lo, "clients": clients})


if __name__ == "__main__":
    main()
