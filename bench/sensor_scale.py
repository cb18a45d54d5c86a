"""Benchmark 3: one sensor tick against buckets holding 10k and 100k objects, then 100 new ones.

    .venv/bin/python bench/sensor_scale.py            # 10,000 then 100,000 existing objects
    .venv/bin/python bench/sensor_scale.py --quick    # 1,000 then 5,000
    options: --sizes 10000,100000  --new 100  --repeat 3  --reconcile-pages N
             --previous DIR  --json FILE

Both S3-event flows: the signup bucket (`{therapist_id}/{file}`, 3 files a therapist) and the
adhoc bucket's staging prefix (`staging/claims/{file}.csv`). For each size:

1. the buckets are filled up to the size (a thread pool of put_object, with the buckets' event
   notifications off), and the existing objects that one reconciliation tick visits are put in
   their steady state in the Dagster instance: each such therapist has its partition and an MPF
   materialization whose `source_fingerprint` matches its uploads (what a finished run records);
   each such staged file has its partition and a rejected observation of its version
   (`checks_passed: False`: promoted files leave staging, so what stays there is what was
   rejected). (Recording all of them would take 20-60 ms each in the SQLite instance.)
2. both event queues are purged, then 100 new objects are put in each (100 new therapists; 100
   new staged CSVs) and their 100 events wait in each queue;
3. one tick of `signup_upload_sensor` and one of `staging_events_sensor` (the fast, SQS-driven
   sensors) are timed (`--repeat` times, each with 100 fresh objects; the median is reported),
   built exactly as `credflow sync` builds them;
4. one tick of each reconciliation sensor (`signup_reconciliation_sensor`,
   `staging_reconciliation_sensor`) is timed from an empty cursor, with a budget of
   `--reconcile-pages` pages of keys (default: the settings' `max_reconcile_pages_per_tick`).

`--previous DIR` also times, in the same run and on the same state, the sensors of an earlier
credflow tree in DIR (e.g. `git archive HEAD credflow_assets | tar -x -C DIR`): before and after
under the same machine load. Its reconciliation ticks get the same page budget. Only sensors
defined at module level are found there (the staged-table sensors are built per table since
staged tables have their own assets: a tree from then on times only its signup sensors as
"previous"), and the steady state is recorded under this tree's names
(`s3/staging/claims_staged_csv` in `staged_claims_files`), which an earlier tree's
`s3/staging/file` does not read.

Time inside S3 and SQS calls is counted separately (a wrapper around botocore's
`_make_api_call`), because moto's listing walks the whole bucket on every call (real S3 does
not); `list page` is the time of one 1,000-key `list_objects_v2` call at that size.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import threading
import time
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from contextlib import contextmanager
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import bench_stack, bench_workdir, print_machine, table, write_json  # noqa: E402

FILES = ("license.pdf", "headshot.png", "cv.txt")
STAGED_TABLE = "claims"


# ------------------------------------------------------------------------------ AWS call clock


class CallClock:
    """Seconds and calls per AWS operation, for everything botocore sends in this process.

    Calls made in parallel (the staging sensor's HEADs) each count in their operation's seconds,
    but `total()` is wall time with at least one call in flight, so it never exceeds the tick.
    """

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.active = False
        self._lock = threading.Lock()
        self._in_flight = 0
        self._busy_since = 0.0
        self._busy = 0.0

    def install(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        clock = self

        def timed_call(client, operation_name, api_params):
            if not clock.active:
                return original(client, operation_name, api_params)
            started = clock._enter()
            try:
                return original(client, operation_name, api_params)
            finally:
                clock._leave(operation_name, started)

        BaseClient._make_api_call = timed_call

    def _enter(self) -> float:
        with self._lock:
            now = time.monotonic()
            if self._in_flight == 0:
                self._busy_since = now
            self._in_flight += 1
            return now

    def _leave(self, operation_name: str, started: float) -> None:
        with self._lock:
            now = time.monotonic()
            self.seconds[operation_name] += now - started
            self.calls[operation_name] += 1
            self._in_flight -= 1
            if self._in_flight == 0:
                self._busy += now - self._busy_since

    @contextmanager
    def measuring(self):
        self.seconds.clear()
        self.calls.clear()
        self._busy = 0.0
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def total(self) -> float:
        return self._busy

    def describe(self) -> str:
        return ", ".join(f"{name} {self.calls[name]}× {seconds:.2f}s"
                         for name, seconds in sorted(self.seconds.items(), key=lambda i: -i[1]))


CLOCK = CallClock()


# ------------------------------------------------------------------------------ data


def therapist_id(index: int) -> str:
    return f"t-{index:07d}"


@contextmanager
def events_off(client, buckets: list[str]):
    """Existing objects go in with the buckets' event notifications switched off: moto delivers
    an event per put at 20-40 puts/s, against ~250/s without. The configuration is restored
    after (S3 then sends a test event, which the sensors skip)."""
    saved = {}
    for bucket in buckets:
        config = client.get_bucket_notification_configuration(Bucket=bucket)
        config.pop("ResponseMetadata", None)
        saved[bucket] = config
        client.put_bucket_notification_configuration(Bucket=bucket, NotificationConfiguration={})
    try:
        yield
    finally:
        for bucket, config in saved.items():
            client.put_bucket_notification_configuration(Bucket=bucket,
                                                         NotificationConfiguration=config)


def put_many(client, bucket: str, keys: list[str], threads: int = 16) -> float:
    started = time.monotonic()

    def put(key: str) -> None:
        client.put_object(Bucket=bucket, Key=key, Body=f"{key}\n".encode())

    with ThreadPoolExecutor(threads) as pool:
        list(pool.map(put, keys, chunksize=64))
    return time.monotonic() - started


def signup_keys(first: int, count: int) -> list[str]:
    """Objects `first`…`first + count` of the signup bucket, 3 per therapist."""
    return [f"{therapist_id(index // 3)}/{FILES[index % 3]}"
            for index in range(first, first + count)]


def staging_keys(first: int, count: int, prefix: str = "staging/") -> list[str]:
    return [f"{prefix}{STAGED_TABLE}/upload-{index:07d}.csv" for index in range(first, first + count)]


def fingerprint(objects: list[tuple[str, str]]) -> str:
    # credflow_assets.therapists.uploads.uploads_fingerprint, recomputed here from the listing
    from credflow_assets.therapists.uploads import uploads_fingerprint

    return uploads_fingerprint(objects)


def mark_handled(instance, client, config, *, therapists_limit: int,
                 staged_limit: int) -> tuple[float, int, int]:
    """Steady state for the objects one reconciliation tick visits (the first `therapists_limit`
    therapists, the first `staged_limit` staged files): their partitions and the
    materializations a finished run leaves. Objects already marked are skipped.
    Returns (seconds, therapists marked, staged files marked)."""
    import dagster as dg

    from credflow_assets.resources.s3 import iter_objects
    from credflow_assets.staged_tables.layout import partition_key_for
    from credflow_assets.staged_tables.names import (
        object_version,
        staging_file_key,
        table_partitions,
    )
    from credflow_assets.therapists.names import (
        MPF_FOLDER_KEY,
        SOURCE_FINGERPRINT_METADATA,
        therapist_partitions,
    )

    started = time.monotonic()
    uploads: dict[str, list[tuple[str, str]]] = defaultdict(list)
    for item in iter_objects(client, config.buckets.signup):
        tid = item["Key"].split("/", 1)[0]
        if tid not in uploads and len(uploads) >= therapists_limit:
            break
        uploads[tid].append((item["Key"], item["ETag"].strip('"')))
    known = set(instance.get_dynamic_partitions(therapist_partitions.name))
    new = [tid for tid in uploads if tid not in known]
    instance.add_dynamic_partitions(therapist_partitions.name, new)
    for tid in new:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=MPF_FOLDER_KEY, partition=tid,
            metadata={SOURCE_FINGERPRINT_METADATA: fingerprint(uploads[tid])}))
    staged = []
    for item in iter_objects(client, config.buckets.adhoc, prefix="staging/"):
        if len(staged) >= staged_limit:
            break
        staged.append((partition_key_for(item["Key"]),
                       object_version(item["ETag"], item["LastModified"])))
    # Every staged file here is one of STAGED_TABLE's: its own partition set and asset.
    staged_partitions = table_partitions(STAGED_TABLE).name
    known = set(instance.get_dynamic_partitions(staged_partitions))
    staged = [(key, version) for key, version in staged if key not in known]
    instance.add_dynamic_partitions(staged_partitions, [key for key, _ in staged])
    for key, version in staged:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=staging_file_key(STAGED_TABLE), partition=key,
            metadata={"version": version, "checks_passed": False}))
    return time.monotonic() - started, len(new), len(staged)


def purge(sqs, queue_url: str) -> None:
    """PurgeQueue, waiting out its one-a-minute limit."""
    deadline = time.monotonic() + 70
    while True:
        try:
            sqs.purge_queue(QueueUrl=queue_url)
            return
        except sqs.exceptions.PurgeQueueInProgress:
            if time.monotonic() > deadline:
                raise
            time.sleep(5)


def acknowledge(sqs, queue_url: str, cursor: str | None) -> None:
    """Delete what a tick received (the next tick would, from its cursor)."""
    from credflow_assets.resources.sqs import S3EventCursor

    receipts = list(S3EventCursor.from_json(cursor).pending_receipts)
    for start in range(0, len(receipts), 10):
        sqs.delete_message_batch(QueueUrl=queue_url, Entries=[
            {"Id": str(i), "ReceiptHandle": r} for i, r in enumerate(receipts[start:start + 10])])


def wait_for_messages(sqs, queue_url: str, count: int, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        attributes = sqs.get_queue_attributes(
            QueueUrl=queue_url, AttributeNames=["ApproximateNumberOfMessages"])["Attributes"]
        if int(attributes["ApproximateNumberOfMessages"]) >= count:
            return
        time.sleep(0.1)
    raise RuntimeError(f"{queue_url}: {count} messages did not arrive within {timeout}s")


# ------------------------------------------------------------------------------ ticks


def tick(defs, instance, name: str, cursor: str | None = None, *, sensor=None,
         settings: dict | None = None) -> dict:
    """One evaluation of sensor `name` (or of `sensor`, an earlier version of it), built as
    credflow sync builds it; `settings` replaces resources (the page budget)."""
    import dagster as dg

    repository = defs.get_repository_def()
    sensor = sensor or next(s for s in repository.sensor_defs if s.name == name)
    resources = {**repository.get_top_level_resources(), **(settings or {})}
    with CLOCK.measuring():
        started = time.monotonic()
        with dg.partition_loading_context(dynamic_partitions_store=instance):
            with dg.build_sensor_context(
                instance=instance, cursor=cursor, definitions=defs, sensor_name=name,
                resources={key: resources[key] for key in sensor.required_resource_keys},
                instance_ref=instance.get_ref(),
            ) as context:
                result = sensor.evaluate_tick(context)
        seconds = time.monotonic() - started
        aws_seconds, aws = CLOCK.total(), CLOCK.describe()
    return {"seconds": seconds, "aws_seconds": aws_seconds, "aws_calls": aws,
            "run_requests": len(result.run_requests or []), "cursor": result.cursor,
            "partitions": sorted(r.partition_key for r in result.run_requests or [])}


def with_page_budget(defs, pages: int) -> dict:
    """The two flows' settings resources with `max_reconcile_pages_per_tick = pages`."""
    return {key: type(defs.resources[key])(**{**defs.resources[key].model_dump(),
                                              "max_reconcile_pages_per_tick": pages})
            for key in ("therapist_settings", "staged_tables_settings")}


# ------------------------------------------------------------------------------ previous tree


def load_previous_sensors(tree: Path) -> dict:
    """The sensor definitions of an earlier credflow tree, by name. Their modules are loaded
    under other names and import the rest of credflow from this tree."""
    import importlib.util

    import dagster as dg

    sensors = {}
    for flow in ("therapists", "staged_tables"):
        path = tree / "credflow_assets" / flow / "sensors.py"
        spec = importlib.util.spec_from_file_location(f"previous_{flow}_sensors", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        sensors.update({value.name: value for value in vars(module).values()
                        if isinstance(value, dg.SensorDefinition)})
    missing = [name for name in (*FAST, *RECONCILIATION) if name not in sensors]
    if missing:
        print(f"previous tree {tree}: no module-level {', '.join(missing)}; the current "
              "one(s) are timed in their place")
    return sensors


def list_page_seconds(client, bucket: str, prefix: str = "") -> float:
    samples = []
    for _ in range(3):
        started = time.monotonic()
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1000)
        samples.append(time.monotonic() - started)
    return statistics.median(samples)


# ------------------------------------------------------------------------------ main


FAST = ("signup_upload_sensor", "staging_events_sensor")
RECONCILIATION = ("signup_reconciliation_sensor", "staging_reconciliation_sensor")
LABELS = {"signup_upload_sensor": "signup, SQS events (fast)",
          "staging_events_sensor": "staging, SQS events (fast)",
          "signup_reconciliation_sensor": "signup, reconciliation",
          "staging_reconciliation_sensor": "staging, reconciliation"}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated existing-object counts")
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--reconcile-pages", type=int,
                        help="pages of 1,000 keys a reconciliation tick lists (default: the "
                             "settings' max_reconcile_pages_per_tick)")
    parser.add_argument("--previous", type=Path,
                        help="an earlier tree holding credflow_assets/: its sensors are timed too")
    parser.add_argument("--json")
    args = parser.parse_args()
    sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
             else [1_000, 5_000] if args.quick else [10_000, 100_000])
    info = print_machine()
    CLOCK.install()
    results = []
    with bench_workdir("sensors") as work, bench_stack(work) as (state, config, env):
        import boto3
        import dagster as dg

        from credflow_assets.definitions import build_definitions
        from credflow_assets.therapists.settings import TherapistFlowSettings

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"])
        signup_queue = sqs.get_queue_url(QueueName=config.events.signup_uploads.queue)["QueueUrl"]
        staging_queue = sqs.get_queue_url(
            QueueName=config.events.staging_uploads.queue)["QueueUrl"]
        signup_bucket, adhoc = config.buckets.signup, config.buckets.adhoc
        defs = build_definitions(config)
        previous = load_previous_sensors(args.previous) if args.previous else {}
        versions = {"current": {}, **({"previous": previous} if previous else {})}
        # The config does not set the budget: the resources' default is what the sensors use.
        pages = (args.reconcile_pages or
                 TherapistFlowSettings.model_fields["max_reconcile_pages_per_tick"].default)
        settings = with_page_budget(defs, pages)
        print(f"reconciliation budget: {pages} page(s) a tick"
              + (f"; previous sensors from {args.previous}" if previous else ""))
        existing = 0
        next_new = 10_000_000  # new objects' numbers, after every existing one
        with dg.DagsterInstance.get() as instance:
            for size in sizes:
                print(f"\n== {size:,} existing objects in each of s3://{signup_bucket} and "
                      f"s3://{adhoc}/staging/")
                with events_off(s3, [signup_bucket, adhoc]):
                    put_seconds = put_many(s3, signup_bucket,
                                           signup_keys(existing, size - existing))
                    put_seconds += put_many(s3, adhoc, staging_keys(existing, size - existing))
                print(f"   put {2 * (size - existing):,} objects in {put_seconds:.0f}s")
                # What one tick visits: the current sensors list 1,000 keys a page (3 per
                # therapist, plus the next therapist's); the previous signup sensor listed 100
                # therapist prefixes a page.
                marked, therapists, staged = mark_handled(
                    instance, s3, config,
                    therapists_limit=max(1000 * pages // 3 + 1, 100 * pages),
                    staged_limit=1000 * pages)
                print(f"   steady state recorded for {therapists:,} more therapists and "
                      f"{staged:,} more staged files in {marked:.0f}s")
                existing = size
                for queue in (signup_queue, staging_queue):
                    purge(sqs, queue)  # the existing objects' events
                entry = {"existing": size, "put_seconds": put_seconds,
                         "list_page_signup": list_page_seconds(s3, signup_bucket),
                         "list_page_staging": list_page_seconds(s3, adhoc, "staging/")}
                for version, sensors in versions.items():
                    for sensor_name, bucket, queue, make_keys in (
                        ("signup_upload_sensor", signup_bucket, signup_queue,
                         lambda first, n: [f"{therapist_id(first + i)}/license.pdf"
                                           for i in range(n)]),
                        ("staging_events_sensor", adhoc, staging_queue, staging_keys),
                    ):
                        samples = []
                        for _ in range(args.repeat):
                            put_many(s3, bucket, make_keys(next_new, args.new))
                            next_new += args.new
                            wait_for_messages(sqs, queue, args.new)
                            samples.append(tick(defs, instance, sensor_name,
                                                sensor=sensors.get(sensor_name)))
                            acknowledge(sqs, queue, samples[-1]["cursor"])
                        best = sorted(samples, key=lambda s: s["seconds"])[len(samples) // 2]
                        print(f"   {version} {sensor_name}: "
                              + ", ".join(f"{s['seconds']:.2f}s" for s in samples)
                              + f" ({best['run_requests']} run requests; AWS {best['aws_calls']})")
                        entry[f"{version} {sensor_name}"] = {
                            **best, "samples": [s["seconds"] for s in samples]}
                    for sensor_name in RECONCILIATION:
                        result = tick(defs, instance, sensor_name, sensor=sensors.get(sensor_name),
                                      settings=settings)
                        print(f"   {version} {sensor_name}: {result['seconds']:.2f}s, "
                              f"{result['run_requests']} run requests; AWS "
                              f"{result['aws_seconds']:.2f}s ({result['aws_calls']})")
                        entry[f"{version} {sensor_name}"] = result
                results.append(entry)

    rows = []
    for version in versions:
        for sensor_name in (*FAST, *RECONCILIATION):
            row = [f"{LABELS[sensor_name]}" + (f" [{version}]" if previous else "")]
            for entry in results:
                tick_result = entry[f"{version} {sensor_name}"]
                row += [f"{tick_result['seconds']:.2f} s",
                        f"{tick_result['seconds'] - tick_result['aws_seconds']:.2f} s",
                        tick_result["run_requests"]]
            first = results[0][f"{version} {sensor_name}"]["seconds"]
            last = results[-1][f"{version} {sensor_name}"]["seconds"]
            row.append(f"{last / first:.2f}")
            rows.append(row)
    headers = ["sensor tick"]
    for entry in results:
        headers += [f"{entry['existing']:,}: tick", "outside AWS calls", "runs"]
    headers.append(f"ratio {results[-1]['existing']:,}/{results[0]['existing']:,}")
    print(f"\nSensor scale: one tick with {args.new} new objects, by existing objects "
          f"(reconciliation: {pages} page(s) of keys a tick)")
    print(table(headers, rows))
    print("moto list_objects_v2 (1,000 keys): " + ", ".join(
        f"{e['existing']:,} objects: signup {e['list_page_signup'] * 1000:.0f} ms, staging "
        f"{e['list_page_staging'] * 1000:.0f} ms" for e in results))
    print("target: ≤ 2 s a tick, flat from the smallest to the largest size")
    for entry in results:
        for tick_result in entry.values():
            if isinstance(tick_result, dict):
                tick_result.pop("partitions", None)
    write_json(args.json, {"machine": info, "sizes": sizes, "new": args.new,
                           "reconcile_pages": pages, "results": results})


if __name__ == "__main__":
    main()
