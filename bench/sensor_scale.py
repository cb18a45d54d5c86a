"""Benchmark 3: one sensor tick against buckets holding 10k and 100k objects, then 100 new ones.

    .venv/bin/python bench/sensor_scale.py            # 10,000 then 100,000 existing objects
    .venv/bin/python bench/sensor_scale.py --quick    # 1,000 then 5,000
    options: --sizes 10000,100000  --new 100  --repeat 3  --json FILE

Both S3-event flows: the signup bucket (`{therapist_id}/{file}`, 3 files a therapist) and the
adhoc bucket's staging prefix (`staging/claims/{file}.csv`). For each size:

1. the buckets are filled up to the size (a thread pool of put_object; each put also sends its
   S3 event to the flow's queue, as on AWS), and the existing objects that one reconciliation
   tick visits are put in their steady state in the Dagster instance: each such therapist has
   its partition and an MPF materialization whose `source_fingerprint` matches its uploads (what
   a finished run records); each such staged file has its partition and a rejected observation
   of its version (`checks_passed: False`: promoted files leave staging, so what stays there is
   what was rejected). (Recording all 133k would take ~10 ms each in the SQLite instance.)
2. both event queues are purged, then 100 new objects are put in each (100 new therapists; 100
   new staged CSVs) and their 100 events wait in each queue;
3. one tick of `signup_upload_sensor` and one of `staging_events_sensor` (the fast, SQS-driven
   sensors) are timed (`--repeat` times, each with 100 fresh objects; the median is reported),
   built exactly as `credflow sync` builds them;
4. one tick of each reconciliation sensor (`signup_reconciliation_sensor`,
   `staging_reconciliation_sensor`) is timed from an empty cursor: it pages through a bounded
   number of pages per tick.

Time inside S3 and SQS calls is counted separately (a wrapper around botocore's
`_make_api_call`), because moto's listing walks the whole bucket on every call (real S3 does
not); `list page` is the time of one 1,000-key `list_objects_v2` call at that size.
"""

from __future__ import annotations

import argparse
import hashlib
import statistics
import sys
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
    """Seconds and calls per AWS operation, for everything botocore sends in this process."""

    def __init__(self) -> None:
        self.seconds: dict[str, float] = defaultdict(float)
        self.calls: dict[str, int] = defaultdict(int)
        self.active = False

    def install(self) -> None:
        from botocore.client import BaseClient

        original = BaseClient._make_api_call
        clock = self

        def timed_call(client, operation_name, api_params):
            if not clock.active:
                return original(client, operation_name, api_params)
            started = time.monotonic()
            try:
                return original(client, operation_name, api_params)
            finally:
                clock.seconds[operation_name] += time.monotonic() - started
                clock.calls[operation_name] += 1

        BaseClient._make_api_call = timed_call

    @contextmanager
    def measuring(self):
        self.seconds.clear()
        self.calls.clear()
        self.active = True
        try:
            yield self
        finally:
            self.active = False

    def total(self) -> float:
        return sum(self.seconds.values())

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

    from credflow_assets.partitions import staged_file_partitions, therapist_partitions
    from credflow_assets.resources.s3 import iter_objects
    from credflow_assets.staged_tables.layout import partition_key_for
    from credflow_assets.staged_tables.settings import STAGING_FILE_KEY, object_version
    from credflow_assets.therapists.sensors import MPF_FOLDER_KEY

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
            metadata={"source_fingerprint": fingerprint(uploads[tid])}))
    staged = []
    for item in iter_objects(client, config.buckets.adhoc, prefix="staging/"):
        if len(staged) >= staged_limit:
            break
        staged.append((partition_key_for(item["Key"]),
                       object_version(item["ETag"], item["LastModified"])))
    known = set(instance.get_dynamic_partitions(staged_file_partitions.name))
    staged = [(key, version) for key, version in staged if key not in known]
    instance.add_dynamic_partitions(staged_file_partitions.name, [key for key, _ in staged])
    for key, version in staged:
        instance.report_runless_asset_event(dg.AssetMaterialization(
            asset_key=STAGING_FILE_KEY, partition=key,
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


def tick(defs, instance, name: str, cursor: str | None = None) -> dict:
    """One evaluation of sensor `name`, built as credflow sync builds it."""
    import dagster as dg

    repository = defs.get_repository_def()
    sensor = next(s for s in repository.sensor_defs if s.name == name)
    resources = repository.get_top_level_resources()
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


# ------------------------------------------------------------------------------ proposed fix
# Prototypes of the reconciliation ticks proposed in RESULTS.md, measured against the same
# buckets and instance and checked to request the same partitions as the sensors' first tick.
# They differ only in how they look things up: S3 listed flat, 1,000 keys a call, instead of
# a prefix listing plus one listing per therapist; the instance asked once per page
# (latest materialization per partition, then those records by storage id; active runs once)
# instead of two or three queries per object.


def latest_metadata_by_partition(instance, asset_key, partitions: list[str]) -> dict[str, dict]:
    import dagster as dg
    from dagster._core.events import DagsterEventType

    if not partitions:
        return {}
    ids = instance.event_log_storage.get_latest_storage_id_by_partition(
        asset_key, DagsterEventType.ASSET_MATERIALIZATION, partitions=set(partitions))
    if not ids:
        return {}
    records = instance.fetch_materializations(
        dg.AssetRecordsFilter(asset_key=asset_key, storage_ids=list(ids.values())),
        limit=len(ids)).records
    return {record.partition_key: {name: value.value for name, value
                                   in record.asset_materialization.metadata.items()}
            for record in records}


def proto_staging_reconciliation(instance, client, bucket: str, pages: int,
                                 tables: tuple[str, ...]) -> dict:
    import dagster as dg
    from dagster._core.storage.dagster_run import RunsFilter

    from credflow_assets.staged_tables.layout import Layout
    from credflow_assets.staged_tables.sensors import ACTIVE_STATUSES
    from credflow_assets.staged_tables.settings import JOB_NAME, STAGING_FILE_KEY, object_version

    with CLOCK.measuring():
        started = time.monotonic()
        layout = Layout(bucket=bucket, staging_prefix="staging/", prod_prefix="prod/",
                        tables=tables)
        kwargs = {"Bucket": bucket, "Prefix": "staging/", "MaxKeys": 1000}
        objects = []
        for _ in range(pages):
            page = client.list_objects_v2(**kwargs)
            objects.extend(page.get("Contents", []))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        staged = {}
        for item in objects:
            staged_file = layout.staged_file(item["Key"])
            if staged_file is not None:
                staged[staged_file.partition_key] = object_version(item["ETag"],
                                                                   item["LastModified"])
        observed = {}
        keys = list(staged)
        for start in range(0, len(keys), 1000):  # a page of keys at a time
            observed.update(latest_metadata_by_partition(instance, STAGING_FILE_KEY,
                                                         keys[start:start + 1000]))
        active = {run.tags.get("dagster/partition") for run in instance.get_runs(
            filters=RunsFilter(job_name=JOB_NAME, statuses=ACTIVE_STATUSES))}
        requested = sorted(
            key for key, version in staged.items()
            if key not in active and not (observed.get(key, {}).get("version") == version
                                          and not observed[key].get("checks_passed")))
        seconds = time.monotonic() - started
        return {"seconds": seconds, "aws_seconds": CLOCK.total(), "aws_calls": CLOCK.describe(),
                "run_requests": len(requested), "partitions": requested}


def proto_signup_reconciliation(instance, client, bucket: str, therapists: int) -> dict:
    from credflow_assets.therapists.sensors import MPF_FOLDER_KEY
    from credflow_assets.therapists.uploads import therapist_id_of, uploads_fingerprint

    with CLOCK.measuring():
        started = time.monotonic()
        kwargs = {"Bucket": bucket, "MaxKeys": 1000}
        uploads: dict[str, list[tuple[str, str]]] = defaultdict(list)
        done = False
        while not done:
            page = client.list_objects_v2(**kwargs)
            for item in page.get("Contents", []):
                tid = therapist_id_of(item["Key"])
                if tid is None:
                    continue
                if tid not in uploads and len(uploads) >= therapists:
                    done = True  # the next tick starts at this therapist
                    break
                uploads[tid].append((item["Key"], item["ETag"].strip('"')))
            if not page.get("IsTruncated"):
                break
            kwargs["ContinuationToken"] = page["NextContinuationToken"]
        observed = {}
        therapist_ids = list(uploads)
        for start in range(0, len(therapist_ids), 1000):
            observed.update(latest_metadata_by_partition(instance, MPF_FOLDER_KEY,
                                                         therapist_ids[start:start + 1000]))
        requested = sorted(
            tid for tid, objects in uploads.items()
            if observed.get(tid, {}).get("source_fingerprint") != uploads_fingerprint(objects))
        seconds = time.monotonic() - started
        return {"seconds": seconds, "aws_seconds": CLOCK.total(), "aws_calls": CLOCK.describe(),
                "run_requests": len(requested), "partitions": requested}


def list_page_seconds(client, bucket: str, prefix: str = "") -> float:
    samples = []
    for _ in range(3):
        started = time.monotonic()
        client.list_objects_v2(Bucket=bucket, Prefix=prefix, MaxKeys=1000)
        samples.append(time.monotonic() - started)
    return statistics.median(samples)


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated existing-object counts")
    parser.add_argument("--new", type=int, default=100)
    parser.add_argument("--repeat", type=int, default=3)
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

        s3 = boto3.client("s3", endpoint_url=env["AWS_ENDPOINT_URL"])
        sqs = boto3.client("sqs", endpoint_url=env["AWS_ENDPOINT_URL"])
        signup_queue = sqs.get_queue_url(QueueName=config.events.signup_uploads.queue)["QueueUrl"]
        staging_queue = sqs.get_queue_url(
            QueueName=config.events.staging_uploads.queue)["QueueUrl"]
        signup_bucket, adhoc = config.buckets.signup, config.buckets.adhoc
        defs = build_definitions(config)
        existing = 0
        next_new = 10_000_000  # new objects' numbers, after every existing one
        from credflow_assets.staged_tables.settings import StagedTablesSettings
        from credflow_assets.therapists.settings import TherapistFlowSettings

        # The config does not set them: the resources' defaults are what the sensors use.
        signup_pages = TherapistFlowSettings.model_fields["max_reconcile_pages_per_tick"].default
        staging_pages = StagedTablesSettings.model_fields["max_reconcile_pages_per_tick"].default
        with dg.DagsterInstance.get() as instance:
            for size in sizes:
                print(f"\n== {size:,} existing objects in each of s3://{signup_bucket} and "
                      f"s3://{adhoc}/staging/")
                with events_off(s3, [signup_bucket, adhoc]):
                    put_seconds = put_many(s3, signup_bucket,
                                           signup_keys(existing, size - existing))
                    put_seconds += put_many(s3, adhoc, staging_keys(existing, size - existing))
                print(f"   put {2 * (size - existing):,} objects in {put_seconds:.0f}s")
                marked, therapists, staged = mark_handled(
                    instance, s3, config, therapists_limit=100 * signup_pages,
                    staged_limit=1000 * staging_pages)
                print(f"   steady state recorded for {therapists:,} more therapists and "
                      f"{staged:,} more staged files in {marked:.0f}s")
                existing = size
                for queue in (signup_queue, staging_queue):
                    purge(sqs, queue)  # the existing objects' events
                entry = {"existing": size, "put_seconds": put_seconds,
                         "list_page_signup": list_page_seconds(s3, signup_bucket),
                         "list_page_staging": list_page_seconds(s3, adhoc, "staging/")}
                for sensor_name, bucket, queue, make_keys in (
                    ("signup_upload_sensor", signup_bucket, signup_queue,
                     lambda first, n: [f"{therapist_id(first + i)}/license.pdf" for i in range(n)]),
                    ("staging_events_sensor", adhoc, staging_queue, staging_keys),
                ):
                    samples = []
                    for _ in range(args.repeat):
                        put_many(s3, bucket, make_keys(next_new, args.new))
                        next_new += args.new
                        wait_for_messages(sqs, queue, args.new)
                        samples.append(tick(defs, instance, sensor_name))
                        acknowledge(sqs, queue, samples[-1]["cursor"])
                    best = sorted(samples, key=lambda s: s["seconds"])[len(samples) // 2]
                    print(f"   {sensor_name}: " + ", ".join(f"{s['seconds']:.2f}s" for s in samples)
                          + f" ({best['run_requests']} run requests; AWS {best['aws_calls']})")
                    entry[sensor_name] = {**best, "samples": [s["seconds"] for s in samples]}
                for sensor_name in ("signup_reconciliation_sensor",
                                    "staging_reconciliation_sensor"):
                    result = tick(defs, instance, sensor_name)
                    print(f"   {sensor_name}: {result['seconds']:.2f}s, "
                          f"{result['run_requests']} run requests; AWS {result['aws_seconds']:.2f}s "
                          f"({result['aws_calls']})")
                    entry[sensor_name] = result
                    if sensor_name == "signup_reconciliation_sensor":
                        proto = proto_signup_reconciliation(instance, s3, signup_bucket,
                                                            100 * signup_pages)
                    else:
                        proto = proto_staging_reconciliation(
                            instance, s3, adhoc, staging_pages,
                            tuple(table.name for table in config.staged_tables.tables))
                    same = proto["partitions"] == result["partitions"]
                    print(f"   {sensor_name}, proposed lookups (prototype): "
                          f"{proto['seconds']:.2f}s, {proto['run_requests']} run requests "
                          f"({'same' if same else 'DIFFERENT'} partitions); AWS "
                          f"{proto['aws_seconds']:.2f}s ({proto['aws_calls']})")
                    entry[sensor_name + " (proposed)"] = {**proto, "same_partitions": same}
                results.append(entry)

    rows = []
    for sensor_name, label in (
            ("signup_upload_sensor", "signup, SQS events (fast)"),
            ("staging_events_sensor", "staging, SQS events (fast)"),
            ("signup_reconciliation_sensor", "signup, reconciliation"),
            ("signup_reconciliation_sensor (proposed)", "signup, reconciliation, proposed (prototype)"),
            ("staging_reconciliation_sensor", "staging, reconciliation"),
            ("staging_reconciliation_sensor (proposed)",
             "staging, reconciliation, proposed (prototype)")):
        row = [label]
        for entry in results:
            tick_result = entry[sensor_name]
            row += [f"{tick_result['seconds']:.2f} s",
                    f"{tick_result['aws_seconds']:.2f} s",
                    tick_result["run_requests"]]
        first, last = results[0][sensor_name]["seconds"], results[-1][sensor_name]["seconds"]
        row.append(f"{last / first:.2f}")
        rows.append(row)
    headers = ["sensor tick"]
    for entry in results:
        headers += [f"{entry['existing']:,}: tick", "in AWS calls", "runs"]
    headers.append(f"ratio {results[-1]['existing']:,}/{results[0]['existing']:,}")
    print(f"\nSensor scale: one tick with {args.new} new objects, by existing objects")
    print(table(headers, rows))
    print("moto list_objects_v2 (1,000 keys): " + ", ".join(
        f"{e['existing']:,} objects: signup {e['list_page_signup'] * 1000:.0f} ms, staging "
        f"{e['list_page_staging'] * 1000:.0f} ms" for e in results))
    print("target: ≤ 2 s a tick, flat from the smallest to the largest size")
    for entry in results:
        for tick_result in entry.values():
            if isinstance(tick_result, dict):
                tick_result.pop("partitions", None)
    write_json(args.json, {"machine": info, "sizes": sizes, "new": args.new, "results": results})


if __name__ == "__main__":
    main()
