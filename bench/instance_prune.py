"""Instance retention: what `prune_instance` removes from old runs, and what it costs.

    .venv/bin/python bench/instance_prune.py            # 300 runs of 200 log lines each
    .venv/bin/python bench/instance_prune.py --quick    # 20 runs of 50 log lines
    options: --runs N  --lines N  --no-postgres  --json FILE

A throwaway Dagster instance (SQLite under /tmp; then PostgreSQL when one answers on
127.0.0.1:5432) gets N real runs of a two-asset job on a dynamic partition each: the assets log
L lines and print to stdout (captured compute logs), one carries a check. The baseline, in the
same run on the same instance: the runs' own execution time (what a prune costs against what
the runs cost) and the instance's size before. Then `prune_instance(older_than=0)` removes the
runs' log lines, step events and compute logs; the benchmark prints its time, the rows, bytes
and disk space it removed, Python's peak allocation during the prune (batches keep it flat),
the time of a second prune (which looks only at runs finished since the first), and checks that
every materialization and check result is still readable. No local stack is needed.
"""

from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
import tracemalloc
from datetime import timedelta
from pathlib import Path

from _common import MiB, bench_workdir, print_machine, table, write_json

POSTGRES_SERVER_URL = os.environ.get(
    "CREDFLOW_TEST_POSTGRES_URL", "postgresql+psycopg2://credflow:credflow@127.0.0.1:5432")


def build_job(lines: int):
    import dagster as dg

    files = dg.DynamicPartitionsDefinition(name="bench_files")

    @dg.asset(partitions_def=files)
    def raw(context):
        for number in range(lines):
            context.log.info(f"row {number} of {context.partition_key}: parsed, 12 columns, "
                             "3 normalised, nothing rejected")
        print(f"stdout of {context.partition_key}\n" * 20)
        return dg.MaterializeResult(metadata={"rows": lines})

    @dg.asset(partitions_def=files, deps=[raw],
              check_specs=[dg.AssetCheckSpec("rows_match", asset="landed")])
    def landed(context):
        context.log.info(f"landed {context.partition_key}")
        yield dg.MaterializeResult(metadata={"key": f"data/csv/{context.partition_key}"})
        yield dg.AssetCheckResult(check_name="rows_match", passed=True)

    return files, [raw, landed]


def event_log_bytes(home: Path) -> int:
    history = home / "history"
    return sum(path.stat().st_size for path in history.rglob("*") if path.is_file()) \
        if history.exists() else 0


def measure(label: str, home: Path, runs: int, lines: int) -> dict:
    import dagster as dg

    from credflow_assets.common.instance_retention import prune_instance

    files, assets = build_job(lines)
    with dg.DagsterInstance.from_config(str(home)) as instance:
        keys = [f"file_{number:05d}.csv" for number in range(runs)]
        instance.add_dynamic_partitions(files.name, keys)
        started = time.monotonic()
        for key in keys:
            assert dg.materialize(assets, instance=instance, partition_key=key).success
        run_seconds = time.monotonic() - started
        materialized = _materialized(instance)
        size_before = event_log_bytes(home)
        tracemalloc.start()
        started = time.monotonic()
        report = prune_instance(instance, timedelta(0))
        prune_seconds = time.monotonic() - started
        _, peak = tracemalloc.get_traced_memory()
        tracemalloc.stop()
        started = time.monotonic()
        again = prune_instance(instance, timedelta(0))
        again_seconds = time.monotonic() - started
        assert _materialized(instance) == materialized, "a materialization or check went missing"
    print(f"{label}: {report.summary()}", flush=True)
    return {
        "storage": label, "runs": runs, "log_lines_per_run": lines,
        "runs_seconds": round(run_seconds, 1), "prune_seconds": round(prune_seconds, 2),
        "prune_share_of_run_cost_pct": round(100 * prune_seconds / run_seconds, 2),
        "runs_pruned_per_s": round(report.runs_examined / prune_seconds, 1),
        "event_rows_removed": report.event_rows_removed,
        "event_mib_removed": round(report.event_bytes_removed / MiB, 2),
        "sqlite_mib_before": round(size_before / MiB, 2) if size_before else None,
        "sqlite_mib_after": round(event_log_bytes(home) / MiB, 2) if size_before else None,
        "compute_log_files_removed": report.compute_log_files_removed,
        "prune_peak_python_mib": round(peak / MiB, 1),
        "second_prune_runs_examined": again.runs_examined,
        "second_prune_seconds": round(again_seconds, 2),
    }


def _materialized(instance) -> tuple[int, int]:
    import dagster as dg

    counts = []
    for key in ("raw", "landed"):
        counts.append(len(instance.fetch_materializations(
            dg.AssetKey(key), limit=10_000).records))
    check = instance.get_latest_asset_check_evaluation_record(
        dg.AssetCheckKey(dg.AssetKey("landed"), "rows_match"))
    return tuple(counts) + ((check.run_id if check else None),)


def postgres_database():
    """A fresh database on the local PostgreSQL server, or None when none answers."""
    import uuid

    import sqlalchemy as sa

    admin = sa.create_engine(f"{POSTGRES_SERVER_URL}/postgres", isolation_level="AUTOCOMMIT")
    name = f"credflow_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError:
        return None, None
    return admin, name


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--runs", type=int)
    parser.add_argument("--lines", type=int)
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--json")
    args = parser.parse_args()
    runs = args.runs or (20 if args.quick else 300)
    lines = args.lines or (50 if args.quick else 200)
    info = print_machine()
    results = []
    with bench_workdir("prune") as work:
        home = work / "sqlite"
        home.mkdir()
        (home / "dagster.yaml").write_text("telemetry:\n  enabled: false\n")
        results.append(measure("SQLite", home, runs, lines))
        shutil.rmtree(home, ignore_errors=True)
        admin, name = (None, None) if args.no_postgres else postgres_database()
        if admin is not None:
            import sqlalchemy as sa

            try:
                home = work / "postgres"
                home.mkdir()
                (home / "dagster.yaml").write_text(
                    "telemetry:\n  enabled: false\nstorage:\n  postgres:\n"
                    f"    postgres_url: {POSTGRES_SERVER_URL}/{name}\n")
                results.append(measure("PostgreSQL", home, runs, lines))
            finally:
                with admin.connect() as connection:
                    connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
                admin.dispose()
    headers = list(results[0])
    print(table(headers, [[row[h] for h in headers] for row in results]))
    print(f"load average after: {[round(v, 2) for v in os.getloadavg()]}")
    write_json(args.json, {"machine": info, "results": results})


if __name__ == "__main__":
    sys.exit(main())
