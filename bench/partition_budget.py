"""Benchmark 5: the partition budget. One asset with 10k, 50k and 100k partitions, then archived.

    .venv/bin/python bench/partition_budget.py                 # SQLite: 10,000, 50,000, 100,000
    .venv/bin/python bench/partition_budget.py --quick         # 2,000 then 10,000
    .venv/bin/python bench/partition_budget.py --postgres postgresql://USER:PASSWORD@HOST:5432
    options: --sizes 10000,100000  --archived 0.9  --repeat 3  --json FILE

Dagster advises at most 100,000 partitions per asset. This fills a real Dagster instance (the
local stack's SQLite one, or a fresh PostgreSQL database with `--postgres SERVER_URL`) with N
partitions of one real credflow asset, `s3/staging/claims_staged_csv` (partition set
`staged_claims_files`), each with one materialization as a promoted staged file leaves it, and
times, at each size:

- the UI's partition page: `dagster-webserver` on that instance, the GraphQL query the asset's
  Partitions tab sends (`PartitionHealthQuery`, copied from Dagster's UI: every key and its
  status), the first time (cold: Dagster computes and stores the asset's status cache) and
  again (warm, the median of `--repeat`); once more after one new file came in (a new key
  changes the partition set, and Dagster rebuilds the asset's status cache from every
  materialized partition: what the page costs on a busy flow); and the catalog's
  `partitionStats`;
- one tick of the flow's sensors with nothing new (`staging_events_sensor`: its queue is
  empty; `staging_reconciliation_sensor`: staging is empty), in-process, built as
  `credflow sync` builds them;
- `credflow lineage KEY` of one file, in-process (the click command through CliRunner, what
  a person runs minus the interpreter start).

Then at the largest size the oldest `--archived` share (files dated 400 days ago; the rest a
day ago) is archived by `archive_partitions(older_than=365 days)`, timed, and everything is
timed again: the same instance, the same webserver. The fill writes partitions 10,000 a call
and materializations in batches (`dagster_compat.store_runless_materializations`); its time is
printed too (SQLite stores events one by one: about 16-60 ms each here).
"""

from __future__ import annotations

import argparse
import os
import statistics
import subprocess
import sys
import time
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import requests

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import REPO, bench_stack, bench_workdir, print_machine, table, write_json  # noqa: E402

TABLE = "claims"
OLD_DAYS, RECENT_DAYS = 400, 1
NEW_FILES = 10_000_000  # the numbers of the files that come in between measures
ARCHIVE_AGE = timedelta(days=365)
PARTITION_HEALTH_QUERY = """
query PartitionHealthQuery($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    __typename
    ... on AssetNode {
      id
      partitionKeysByDimension { name type partitionKeys }
      assetPartitionStatuses {
        ... on DefaultPartitionStatuses {
          materializedPartitions materializingPartitions failedPartitions
        }
      }
    }
    ... on AssetNotFoundError { message }
  }
}
"""
PARTITION_STATS_QUERY = """
query CatalogStats($assetKey: AssetKeyInput!) {
  assetNodeOrError(assetKey: $assetKey) {
    ... on AssetNode {
      partitionStats { numMaterialized numMaterializing numFailed numPartitions }
    }
  }
}
"""


def file_key(index: int) -> str:
    return f"staging/{TABLE}/upload-{index:07d}.csv"


# ------------------------------------------------------------------------------ instance


def postgres_home(work: Path, server_url: str) -> tuple[Path, str]:
    """A DAGSTER_HOME on a fresh PostgreSQL database; returns (home, database name)."""
    import sqlalchemy as sa

    name = f"credflow_bench_{uuid.uuid4().hex[:10]}"
    admin = sa.create_engine(f"{_sqlalchemy_url(server_url)}/postgres",
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    admin.dispose()
    home = work / "pg-dagster"
    home.mkdir()
    (home / "dagster.yaml").write_text(
        "telemetry:\n  enabled: false\nstorage:\n  postgres:\n"
        f"    postgres_url: {server_url.replace('postgresql+psycopg2://', 'postgresql://')}/{name}\n")
    return home, name


def drop_database(server_url: str, name: str) -> None:
    import sqlalchemy as sa

    admin = sa.create_engine(f"{_sqlalchemy_url(server_url)}/postgres",
                             isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def _sqlalchemy_url(server_url: str) -> str:
    return server_url.replace("postgresql://", "postgresql+psycopg2://", 1) \
        if server_url.startswith("postgresql://") else server_url


def fill(instance, start: int, stop: int, old_until: int, now: datetime, *,
         quiet: bool = False) -> float:
    """Partitions `start`…`stop` with one materialization each: those below `old_until` dated
    OLD_DAYS ago, the rest RECENT_DAYS ago (in key order, as files arrive)."""
    import dagster as dg

    from credflow_assets.common.dagster_compat import store_runless_materializations
    from credflow_assets.staged_tables.layout import partition_key_for
    from credflow_assets.staged_tables.names import staging_file_key, table_partitions

    started = time.monotonic()
    asset, partitions = staging_file_key(TABLE), table_partitions(TABLE).name
    for first in range(start, stop, 10_000):
        keys = [partition_key_for(file_key(i)) for i in range(first, min(first + 10_000, stop))]
        instance.add_dynamic_partitions(partitions, keys)
        events = []
        for offset, key in enumerate(keys):
            index = first + offset
            days = OLD_DAYS if index < old_until else RECENT_DAYS
            stamp = (now - timedelta(days=days)).timestamp() + index / 1000
            events.append((dg.AssetMaterialization(
                asset_key=asset, partition=key,
                metadata={"version": f"{index:032x}:{int(stamp)}", "checks_passed": True,
                          "size": 2048, "rows": 20, "uploader": "analyst"}), stamp))
        store_runless_materializations(instance, events)
        if not quiet:
            print(f"  filled {first + len(keys):,} of {stop:,} "
                  f"({time.monotonic() - started:.0f}s)", flush=True)
    return time.monotonic() - started


# ------------------------------------------------------------------------------ webserver


class Webserver:
    def __init__(self, home: Path, work: Path):
        from credflow_assets.local.process import free_port

        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / f"webserver-{home.name}.log"
        env = {**os.environ, "DAGSTER_HOME": str(home), "PYTHONPATH": str(REPO)}
        self.process = subprocess.Popen(
            [str(Path(sys.executable).parent / "dagster-webserver"), "-h", "127.0.0.1",
             "-p", str(self.port), "-w", str(REPO / "workspace.yaml")],
            cwd=str(REPO), env=env, stdout=open(self.log, "w"), stderr=subprocess.STDOUT,
            start_new_session=True)

    def query(self, text: str, path: list[str]) -> tuple[dict, float]:
        started = time.monotonic()
        response = requests.post(f"{self.url}/graphql", timeout=600, json={
            "query": text, "variables": {"assetKey": {"path": path}}})
        seconds = time.monotonic() - started
        if response.status_code != 200:
            raise RuntimeError(f"GraphQL HTTP {response.status_code}: {response.text[:500]}")
        payload = response.json()
        if payload.get("errors"):
            raise RuntimeError(f"GraphQL errors: {payload['errors']}")
        return payload["data"]["assetNodeOrError"], seconds

    def wait_for_asset(self, path: list[str], deadline: float = 180) -> None:
        until = time.monotonic() + deadline
        while time.monotonic() < until:
            try:
                node, _ = self.query(PARTITION_STATS_QUERY, path)
                if node.get("partitionStats") is not None:
                    return
            except (requests.RequestException, RuntimeError, TypeError, KeyError):
                pass
            time.sleep(2)
        raise RuntimeError(f"the webserver did not serve {path} in {deadline}s: see {self.log}")

    def stop(self) -> None:
        import signal

        try:
            os.killpg(self.process.pid, signal.SIGTERM)
            self.process.wait(timeout=20)
        except (ProcessLookupError, subprocess.TimeoutExpired):
            os.killpg(self.process.pid, signal.SIGKILL)


# ------------------------------------------------------------------------------ measures


def time_ui(web: Webserver, path: list[str], repeat: int) -> dict:
    node, cold = web.query(PARTITION_HEALTH_QUERY, path)
    keys = len(node["partitionKeysByDimension"][0]["partitionKeys"])
    warm = statistics.median(web.query(PARTITION_HEALTH_QUERY, path)[1] for _ in range(repeat))
    stats, stats_seconds = web.query(PARTITION_STATS_QUERY, path)
    return {"ui_keys": keys, "ui_cold_s": cold, "ui_warm_s": warm,
            "stats_s": stats_seconds,
            "materialized": stats["partitionStats"]["numMaterialized"]}


def time_ui_after_new_file(web: Webserver, instance, path: list[str], number: int) -> dict:
    """The page once one more file has come in: a new key changes the partition set, and
    Dagster then rebuilds the asset's status cache from every materialized partition."""
    now = datetime.now(timezone.utc)
    fill(instance, NEW_FILES + number, NEW_FILES + number + 1, 0, now, quiet=True)
    return {"ui_new_file_s": web.query(PARTITION_HEALTH_QUERY, path)[1]}


def time_ticks(defs, instance, repeat: int) -> dict:
    import dagster as dg

    repository = defs.get_repository_def()
    resources = repository.get_top_level_resources()
    found = {}
    for name in ("staging_events_sensor", "staging_reconciliation_sensor"):
        sensor = next(s for s in repository.sensor_defs if s.name == name)
        samples = []
        for _ in range(repeat):
            started = time.monotonic()
            with dg.partition_loading_context(dynamic_partitions_store=instance):
                with dg.build_sensor_context(
                    instance=instance, definitions=defs, sensor_name=name,
                    resources={key: resources[key] for key in sensor.required_resource_keys},
                ) as context:
                    result = sensor.evaluate_tick(context)
            samples.append(time.monotonic() - started)
            assert not result.run_requests, f"{name} asked for runs: nothing is new"
        found[name] = statistics.median(samples)
    return {"tick_events_s": found["staging_events_sensor"],
            "tick_reconcile_s": found["staging_reconciliation_sensor"]}


def time_lineage(home: Path, index: int, repeat: int) -> dict:
    from click.testing import CliRunner

    from credflow_assets.cli.main import main

    samples, output = [], ""
    for _ in range(repeat):
        started = time.monotonic()
        result = CliRunner().invoke(main, ["lineage", file_key(index)],
                                    env={"DAGSTER_HOME": str(home)})
        samples.append(time.monotonic() - started)
        output = result.output
        if result.exit_code != 0:
            raise RuntimeError(f"credflow lineage {file_key(index)} failed: {output}")
    return {"lineage_s": statistics.median(samples),
            "lineage_says_archived": "archived" in output}


def measure(label: str, size: int, web, defs, instance, home: Path, repeat: int) -> dict:
    from credflow_assets.staged_tables.names import staging_file_key

    path = staging_file_key(TABLE).path
    row = {"state": label, "partitions": size, **time_ui(web, path, repeat),
           **time_ui_after_new_file(web, instance, path, size),
           **time_ticks(defs, instance, repeat), **time_lineage(home, 0, repeat),
           "load_1m": round(os.getloadavg()[0], 1)}
    print(f"  {label}: page {row['ui_cold_s']:.2f}s cold / {row['ui_warm_s']:.2f}s warm "
          f"/ {row['ui_new_file_s']:.2f}s after a new file "
          f"({row['ui_keys']:,} keys), ticks {row['tick_events_s']:.2f}s / "
          f"{row['tick_reconcile_s']:.2f}s, lineage {row['lineage_s']:.2f}s "
          f"(load {row['load_1m']})", flush=True)
    return row


# ------------------------------------------------------------------------------ main


def run(args, work: Path, config, home: Path) -> tuple[list[dict], dict]:
    import dagster as dg

    from credflow_assets.common.partition_archive import PartitionSet, archive_partitions
    from credflow_assets.definitions import build_definitions
    from credflow_assets.staged_tables.names import job_name, staging_file_key, table_partitions

    defs = build_definitions(config)
    largest = max(args.sizes)
    old_until = int(largest * args.archived)
    now = datetime.now(timezone.utc)
    rows, extra = [], {}
    web = Webserver(home, work)
    try:
        with dg.DagsterInstance.from_config(str(home)) as instance:
            web.wait_for_asset(staging_file_key(TABLE).path)
            filled = 0
            for size in args.sizes:
                print(f"\n== {size:,} partitions", flush=True)
                seconds = fill(instance, filled, size, old_until, now)
                extra[f"fill_{size}_s"] = seconds
                rows.append({**measure("before", size, web, defs, instance, home, args.repeat),
                             "fill_s": seconds, "fill_per_1k_s": 1000 * seconds / (size - filled)})
                filled = size
            target = PartitionSet("staged_tables", table_partitions(TABLE).name,
                                  staging_file_key(TABLE), job_name(TABLE))
            print(f"\n== archiving files older than {ARCHIVE_AGE.days} days", flush=True)
            report = archive_partitions(instance, [target], ARCHIVE_AGE, progress=print)
            extra.update(archive_s=report.seconds, archived=report.total_archived)
            print(f"  archived {report.total_archived:,} in {report.seconds:.1f}s", flush=True)
            rows.append({**measure("after archive", largest, web, defs, instance, home,
                                   args.repeat), "archive_s": report.seconds,
                         "archived": report.total_archived})
    finally:
        web.stop()
    return rows, extra


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--sizes", help="comma-separated partition counts, ascending")
    parser.add_argument("--archived", type=float, default=0.9,
                        help="share of the largest size dated old enough to archive")
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--postgres", help="a PostgreSQL server URL (no database): measure a "
                        "PostgreSQL instance instead of the stack's SQLite one")
    parser.add_argument("--json")
    args = parser.parse_args()
    args.sizes = ([int(s) for s in args.sizes.split(",")] if args.sizes
                  else [2_000, 10_000] if args.quick else [10_000, 50_000, 100_000])
    info = print_machine()
    database = None
    with bench_workdir("parts") as work, bench_stack(work) as (state, config, env):
        home = Path(env["DAGSTER_HOME"])
        if args.postgres:
            home, database = postgres_home(work, args.postgres)
        try:
            rows, extra = run(args, work, config, home)
        finally:
            if database:
                drop_database(args.postgres, database)
    storage = "PostgreSQL" if args.postgres else "SQLite"
    print(f"\nPartition budget, {storage} instance; Dagster's advice: at most 100,000 partitions "
          "per asset (the limit, measured against in the same run)")
    print(table(
        ["state", "partitions", "UI page cold s", "UI page warm s", "page after a new file s",
         "catalog stats s", "events tick s", "reconcile tick s", "lineage s", "load"],
        [[r["state"], r["partitions"], r["ui_cold_s"], r["ui_warm_s"], r["ui_new_file_s"],
          r["stats_s"],
          r["tick_events_s"], r["tick_reconcile_s"], r["lineage_s"], r["load_1m"]]
         for r in rows]))
    fills = ", ".join(f"{row['partitions']:,} in {row['fill_s']:.0f}s"
                      for row in rows if "fill_s" in row)
    print(f"fill: {fills}; archive: {extra['archived']:,} partitions in "
          f"{extra['archive_s']:.1f}s; "
          f"lineage after archiving says archived: {rows[-1]['lineage_says_archived']}")
    write_json(args.json, {"machine": info, "storage": storage, "rows": rows, **extra})


if __name__ == "__main__":
    main()
