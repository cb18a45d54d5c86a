"""Benchmark 2: Drive feed ingestion, credflow's bulk path against a row-at-a-time baseline.

    .venv/bin/python bench/feed_ingest.py            # 1,000,000 rows per default feed
    .venv/bin/python bench/feed_ingest.py --quick    # contact_tracing only, 20,000 rows
    options: --rows N  --baseline-rows N  --baseline-rows-other N  --limit-repeats N
             --feeds a,b  --no-postgres  --profile DIR  --json FILE

Data: for each default feed (contact_tracing, nsss, spl), a CSV of N generated rows (the seed's
`sample_rows`: human headers, dates in the feed's own format), uploaded to the feed's inbound
folder on the local Drive server.

credflow, end to end: in a child process, `sync(…, sensor_names=[the feed's inbound sensor])`:
the sensor tick, then the run: download from Drive, parse + pandera validation + staged bulk
upsert, then the outbound summary uploaded to Drive. rows/s = rows / sync seconds; CPU s = the
child's CPU time over the same span (all threads), which a loaded machine does not inflate as
it does wall time, and of it, the CPU spent inside `ingest_file` (the rest is the run around
it); peak RSS = the child's VmHWM. Into SQLite (the stack's tables.db), then, when PostgreSQL answers on
127.0.0.1:5432 (`scripts/test-services.sh`), into a fresh PostgreSQL database (a fresh Dagster
home, so the same Drive file is found again).

Baseline, the source system's shape: for each of the first `--baseline-rows` rows, one
validation (credflow's own `validate_chunk`, i.e. the same date parsing and pandera schema, on a
one-row frame), one SELECT by id, one INSERT or UPDATE, into a fresh table of the same schema.
Two variants: all rows in one transaction (the baseline's best case; the ratio uses it) and a
commit per row. The rate measured on those rows is extrapolated to N rows and labelled so.

The limit, the database's own bulk load of the same CSV file with no validation, measured in
the same run right after credflow's figure for that database (`sqlite_limits`,
`postgres_limits`): SQLite, the `sqlite3` shell's `.import --csv` as a subprocess; PostgreSQL,
`COPY … FROM STDIN (FORMAT csv, HEADER)` through psycopg2's `copy_expert`. TEXT columns, into a
new table without a key (`fresh`) and with the id column as PRIMARY KEY (`keyed`, the shape
of the feed's table, which the ratio credflow/limit uses); the fastest of `--limit-repeats`.
"""

from __future__ import annotations

import argparse
import csv
import json
import os
import resource
import shutil
import subprocess
import sys
import time
import uuid
from datetime import datetime, timezone
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
from _common import (  # noqa: E402
    MiB,
    bench_stack,
    bench_workdir,
    child_result,
    print_machine,
    run_child,
    table,
    write_json,
)

POSTGRES_SERVER = os.environ.get(
    "CREDFLOW_TEST_POSTGRES_URL", "postgresql+psycopg2://credflow:credflow@127.0.0.1:5432")


# ------------------------------------------------------------------------------ data


def write_sheet(feed, rows: int, path: Path) -> None:
    from credflow_assets.local.seed_drive_feeds import columns_of, header_for, sample_rows

    columns = columns_of(feed)
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow([header_for(column) for column in columns])
        for start in range(0, rows, 50_000):
            for row in sample_rows(feed, min(50_000, rows - start), start=start):
                writer.writerow([row[column] for column in columns])


# ------------------------------------------------------------------------------ credflow


def child_credflow(options: dict) -> None:
    import dagster as dg

    from credflow_assets.config import load_config
    from credflow_assets.definitions import build_definitions
    from credflow_assets.drive_feeds.names import records_key
    from credflow_assets.cli.sync import sync

    feed = options["feed"]
    ingest_cpu = _time_ingest_cpu()
    defs = build_definitions(load_config(os.environ["CREDFLOW_CONFIG"]))
    profiler = None
    if options.get("profile"):
        from pyinstrument import Profiler

        profiler = Profiler(interval=0.01)
    with dg.DagsterInstance.get() as instance:
        if profiler:
            profiler.start()
        started, cpu_started = time.monotonic(), time.process_time()
        report = sync(defs, instance, sensor_names=[f"drive_feed_{feed}_inbound_sensor"],
                      progress=print)
        seconds = time.monotonic() - started
        cpu_seconds = time.process_time() - cpu_started
        if profiler:
            profiler.stop()
            Path(options["profile"]).write_text(profiler.output_text(unicode=True))
            # Every frame, Dagster's included: where the run around the ingest goes.
            Path(options["profile"]).with_suffix(".all.txt").write_text(
                profiler.output_text(unicode=True, show_all=True))
        record = instance.fetch_materializations(
            dg.AssetRecordsFilter(asset_key=records_key(feed)), limit=1, ascending=False,
        ).records
        metadata = record[0].asset_materialization.metadata if record else {}
    child_result({
        "sync_seconds": seconds,
        # All of the child's threads: on a shared machine, what the run needs of the CPU.
        "cpu_seconds": cpu_seconds,
        "ingest_cpu_seconds": ingest_cpu[0],
        "runs": len(report.runs),
        "failed": [f"{run.partition}: {run.error}" for run in report.failed],
        "run_seconds": [run.seconds for run in report.runs],
        "ingest_seconds": metadata["seconds"].value if "seconds" in metadata else None,
        "rows_read": metadata["rows_read"].value if "rows_read" in metadata else None,
        "inserted": metadata["inserted"].value if "inserted" in metadata else None,
        "rejected": metadata["rejected"].value if "rejected" in metadata else None,
    })


def _time_ingest_cpu() -> list[float]:
    """The CPU time (all threads) spent inside `ingest_file`, so that the run around the ingest
    (sensor, run, events, download, summary) is the rest of the child's CPU time."""
    from credflow_assets.drive_feeds import ingest

    spent = [0.0]
    original = ingest.ingest_file

    def timed(*args, **kwargs):
        started = time.process_time()
        try:
            return original(*args, **kwargs)
        finally:
            spent[0] += time.process_time() - started

    ingest.ingest_file = timed  # the records step imports it from the module when it runs
    return spent


# ------------------------------------------------------------------------------ baseline


def baseline(feed, sheet: Path, rows: dict[str, int], url: str) -> dict:
    """Row at a time: validate one row, SELECT its id, INSERT or UPDATE it. Two variants, each
    on its own number of rows (`rows`: variant → rows)."""
    import sqlalchemy as sa

    from credflow_assets.drive_feeds.sheets import SheetReader, check_header
    from credflow_assets.drive_feeds.store import FeedTables
    from credflow_assets.drive_feeds.validation import (
        FIRST_INGESTED_AT,
        LAST_CHANGED_AT,
        SOURCE_FILE_ID,
        SOURCE_REVISION,
        build_plan,
        validate_chunk,
    )
    from credflow_assets.resources.sql import create_engine

    plan = build_plan(feed)
    reader = SheetReader(sheet, "csv", feed.date_formats)
    names, problem = check_header(reader.header, plan.column_names)
    assert problem is None, problem
    # Reading is done in bulk, before the clock starts: the baseline gets its input for free.
    all_rows = next(iter(reader.chunks(names, max(rows.values()))))
    results = {}
    for variant in ("one transaction", "commit per row"):
        frame = all_rows.iloc[:rows[variant]]
        engine = create_engine(url)
        tables = FeedTables(plan)
        tables.ensure(engine)
        records, id_column = tables.records, plan.id_column
        accepted = rejected = 0
        started = time.monotonic()
        with engine.connect() as connection:
            transaction = connection.begin() if variant == "one transaction" else None
            for position in range(len(frame)):
                result = validate_chunk(plan, frame.iloc[[position]])
                if result.rejections or result.good.empty:
                    rejected += 1
                    continue
                values = row_values(plan, result.good)
                moment = datetime.now(timezone.utc)
                row_transaction = connection.begin() if transaction is None else None
                exists = connection.execute(
                    sa.select(records.c[id_column]).where(
                        records.c[id_column] == values[id_column])).first()
                if exists is None:
                    connection.execute(records.insert().values(
                        **values, **{SOURCE_FILE_ID: "baseline", SOURCE_REVISION: "1",
                                     FIRST_INGESTED_AT: moment, LAST_CHANGED_AT: moment}))
                else:
                    connection.execute(records.update().where(
                        records.c[id_column] == values[id_column]).values(
                        **values, **{LAST_CHANGED_AT: moment}))
                accepted += 1
                if row_transaction is not None:
                    row_transaction.commit()
            if transaction is not None:
                transaction.commit()
        seconds = time.monotonic() - started
        with engine.begin() as connection:
            records.drop(connection)
            tables.history.drop(connection, checkfirst=True)
        engine.dispose()
        results[variant] = {"rows": len(frame), "accepted": accepted, "rejected": rejected,
                            "seconds": seconds, "rows_per_second": len(frame) / seconds}
        print(f"   baseline ({variant}): {len(frame):,} rows in {seconds:.1f}s "
              f"({len(frame) / seconds:,.0f} rows/s)")
    return results


def row_values(plan, good) -> dict:
    """The one validated row as Python values, for SQLAlchemy Core (dates as date objects)."""
    import pandas as pd

    row = good.iloc[0]
    values = {}
    for column in plan.columns:
        value = row[column.name]
        if pd.isna(value):
            value = None
        elif column.kind == "date":
            value = value.date()
        elif column.kind == "datetime":
            value = value.to_pydatetime()
        values[column.name] = value
    return values


# ------------------------------------------------------------------------------ limits


def _quoted(name: str) -> str:
    return '"' + name.replace('"', '""') + '"'


def _header(sheet: Path) -> list[str]:
    with open(sheet, newline="", encoding="utf-8") as handle:
        return next(csv.reader(handle))


def sqlite_limits(sheet: Path, id_header: str, work: Path, repeats: int) -> dict:
    """SQLite's own bulk load of the same CSV, no validation: the `sqlite3` shell's
    `.import --csv`, timed as a subprocess from its start to its exit (the commit included).
    Two tables: a fresh one the shell creates from the header (every column TEXT, no key), and
    one whose id column is the PRIMARY KEY, as the feed's table's is (`keyed`, which the ratio
    uses). The fastest of `repeats` runs of each, each into a new database file."""
    sqlite3_cli = shutil.which("sqlite3")
    if sqlite3_cli is None:
        raise SystemExit("no sqlite3 shell on PATH: run scripts/system-deps.sh (it installs it)")
    columns = ", ".join(f"{_quoted(name)} TEXT" + (" PRIMARY KEY" if name == id_header else "")
                        for name in _header(sheet))
    variants = {
        "fresh": ([], f'.import --csv "{sheet}" limit_rows'),
        "keyed": ([f"CREATE TABLE limit_rows ({columns});"],
                  f'.import --csv --skip 1 "{sheet}" limit_rows'),
    }
    results = {}
    for variant, (setup, command) in variants.items():
        best = None
        for attempt in range(repeats):
            database = work / f"limit-{variant}-{attempt}.db"
            for statement in setup:
                subprocess.run([sqlite3_cli, str(database), statement], check=True)
            cpu_before = resource.getrusage(resource.RUSAGE_CHILDREN)
            started = time.monotonic()
            subprocess.run([sqlite3_cli, "-bail", str(database), command], check=True)
            seconds = time.monotonic() - started
            cpu_after = resource.getrusage(resource.RUSAGE_CHILDREN)
            rows = int(subprocess.run([sqlite3_cli, str(database), "SELECT count(*) FROM limit_rows"],
                                      check=True, capture_output=True, text=True).stdout)
            database.unlink()
            cpu = (cpu_after.ru_utime + cpu_after.ru_stime) - (cpu_before.ru_utime
                                                               + cpu_before.ru_stime)
            if best is None or seconds < best["seconds"]:
                best = {"rows": rows, "seconds": seconds, "cpu_seconds": cpu,
                        "rows_per_second": rows / seconds}
        results[variant] = best
        print(f"   sqlite3 .import ({variant}): {best['rows']:,} rows in {best['seconds']:.2f}s "
              f"({best['rows_per_second']:,.0f} rows/s, best of {repeats})")
    return results


def postgres_limits(sheet: Path, id_header: str, url: str, repeats: int) -> dict:
    """PostgreSQL's own bulk load of the same CSV, no validation: `COPY … FROM STDIN (FORMAT
    csv, HEADER)` through psycopg2's `copy_expert`, into a new table of TEXT columns, then
    committed; timed from the CREATE TABLE to the commit. `fresh`: no key; `keyed`: the id
    column is the PRIMARY KEY, as the feed's table's is (the ratio uses it)."""
    import sqlalchemy as sa

    header = _header(sheet)
    engine = sa.create_engine(url)
    results = {}
    try:
        for variant in ("fresh", "keyed"):
            columns = ", ".join(
                f"{_quoted(name)} TEXT"
                + (" PRIMARY KEY" if variant == "keyed" and name == id_header else "")
                for name in header)
            best = None
            for _ in range(repeats):
                connection = engine.raw_connection()
                try:
                    cursor = connection.cursor()
                    started = time.monotonic()
                    cursor.execute(f"CREATE TABLE limit_rows ({columns})")
                    with open(sheet, "rb") as handle:
                        cursor.copy_expert("COPY limit_rows FROM STDIN (FORMAT csv, HEADER)",
                                           handle, size=1 << 20)
                    rows = cursor.rowcount
                    connection.commit()
                    seconds = time.monotonic() - started
                    cursor.execute("DROP TABLE limit_rows")
                    connection.commit()
                finally:
                    connection.close()
                if best is None or seconds < best["seconds"]:
                    best = {"rows": rows, "seconds": seconds, "rows_per_second": rows / seconds}
            results[variant] = best
            print(f"   PostgreSQL COPY ({variant}): {best['rows']:,} rows in "
                  f"{best['seconds']:.2f}s ({best['rows_per_second']:,.0f} rows/s, "
                  f"best of {repeats})")
    finally:
        engine.dispose()
    return results


# ------------------------------------------------------------------------------ postgres


def postgres_database() -> str | None:
    """A fresh database on the local server, or None when no server answers."""
    import sqlalchemy as sa

    admin = sa.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    name = f"credflow_bench_{uuid.uuid4().hex[:10]}"
    try:
        with admin.connect() as connection:
            connection.execute(sa.text(f'CREATE DATABASE "{name}"'))
    except sa.exc.OperationalError as error:
        print(f"PostgreSQL not reachable at {POSTGRES_SERVER}: skipped ({error.orig})")
        return None
    finally:
        admin.dispose()
    return f"{POSTGRES_SERVER}/{name}"


def drop_postgres_database(url: str) -> None:
    import sqlalchemy as sa

    name = url.rsplit("/", 1)[1]
    admin = sa.create_engine(f"{POSTGRES_SERVER}/postgres", isolation_level="AUTOCOMMIT")
    with admin.connect() as connection:
        connection.execute(sa.text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
    admin.dispose()


def fresh_dagster_home(stack_home: Path, target: Path) -> Path:
    target.mkdir(parents=True)
    shutil.copyfile(stack_home / "dagster" / "dagster.yaml", target / "dagster.yaml")
    return target


# ------------------------------------------------------------------------------ main


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--rows", type=int)
    parser.add_argument("--baseline-rows", type=int, help="SQLite, one transaction (headline)")
    parser.add_argument("--baseline-rows-other", type=int,
                        help="commit-per-row and PostgreSQL variants")
    parser.add_argument("--limit-repeats", type=int,
                        help="runs of each bulk-load limit, the fastest kept (default 3; 1 quick)")
    parser.add_argument("--feeds", help="comma-separated feed names (default: every feed)")
    parser.add_argument("--no-postgres", action="store_true")
    parser.add_argument("--profile", help="directory for pyinstrument profiles of credflow")
    parser.add_argument("--json")
    parser.add_argument("--child", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child_credflow(json.loads(args.child))
        return

    rows = args.rows or (20_000 if args.quick else 1_000_000)
    baseline_rows = min(rows, args.baseline_rows or (300 if args.quick else 20_000))
    # Per-row validation costs tens of milliseconds: the headline variant (SQLite, one
    # transaction) gets `baseline_rows`; commit-per-row and PostgreSQL get fewer, which their
    # rates do not need (validation dominates either way).
    other_rows = min(baseline_rows, args.baseline_rows_other or (100 if args.quick else 2_000))
    counts = {"sqlite": {"one transaction": baseline_rows, "commit per row": other_rows},
              "postgres": {"one transaction": other_rows, "commit per row": other_rows},
              "limit_repeats": args.limit_repeats or (1 if args.quick else 3)}
    info = print_machine()
    from credflow_assets.config import load_config
    from credflow_assets_tests.conftest import DEFAULT_CONFIG

    feeds = load_config(DEFAULT_CONFIG).feeds
    if args.feeds or args.quick:
        wanted = (args.feeds or "contact_tracing").split(",")
        feeds = [feed for feed in feeds if feed.name in wanted]
    with bench_workdir("feeds") as work, bench_stack(work) as (state, config, env):
        sheets = upload_sheets(feeds, rows, work, env)
        pg_url = None if args.no_postgres else postgres_database()
        try:
            results = [measure_feed(feed, rows, sheets[feed.name], work, env, pg_url, counts,
                                    args.profile) for feed in feeds]
        finally:
            if pg_url:
                drop_postgres_database(pg_url)
    print_results(results, rows)
    write_json(args.json, {"machine": info, "rows": rows, "baseline_rows": counts["sqlite"],
                           "baseline_rows_postgres": counts["postgres"],
                           "limit_repeats": counts["limit_repeats"], "results": results})


def upload_sheets(feeds, rows: int, work: Path, env: dict) -> dict[str, Path]:
    from credflow_assets.resources.drive import DriveResource

    drive = DriveResource(api_url=env["CREDFLOW_DRIVE_URL"], token=env["CREDFLOW_DRIVE_TOKEN"])
    sheets = {}
    for feed in feeds:
        path = work / f"{feed.name}.csv"
        started = time.monotonic()
        write_sheet(feed, rows, path)
        generated = time.monotonic() - started
        started = time.monotonic()
        drive.upload_file(path, f"{feed.name} bench {rows} rows.csv", feed.inbound_folder_id,
                          mime_type="text/csv")
        print(f"{feed.name}: {rows:,} rows, {path.stat().st_size / MiB:.0f} MiB of CSV "
              f"(generated in {generated:.0f}s, uploaded to Drive in "
              f"{time.monotonic() - started:.1f}s)")
        sheets[feed.name] = path
    return sheets


def measure_feed(feed, rows: int, sheet: Path, work: Path, env: dict, pg_url: str | None,
                 counts: dict, profile: str | None) -> dict:
    """credflow end to end, then in the same run the bulk-load limits and the row-at-a-time
    baseline on the same CSV: into SQLite, then into PostgreSQL when `pg_url`."""
    from credflow_assets.local.seed_drive_feeds import header_for

    id_header = header_for(feed.id_column)
    entry = {"feed": feed.name, "rows": rows, "csv_mib": sheet.stat().st_size / MiB}
    print(f"\n== {feed.name}: credflow into SQLite  (load {os.getloadavg()[0]:.2f})")
    options = {"feed": feed.name}
    if profile:
        Path(profile).mkdir(parents=True, exist_ok=True)
        options["profile"] = str(Path(profile) / f"{feed.name}-sqlite.txt")
    entry["sqlite"] = run_child([__file__, "--child", json.dumps(options)])
    print(f"== {feed.name}: SQLite's own bulk load  (load {os.getloadavg()[0]:.2f})")
    entry["limit_sqlite"] = sqlite_limits(sheet, id_header, work, counts["limit_repeats"])
    print(f"== {feed.name}: baseline into SQLite, first {counts['sqlite']} rows")
    entry["baseline_sqlite"] = baseline(feed, sheet, counts["sqlite"],
                                        f"sqlite:///{work / 'baseline.db'}")
    if pg_url:
        print(f"== {feed.name}: credflow into PostgreSQL  (load {os.getloadavg()[0]:.2f})")
        home = fresh_dagster_home(Path(env["CREDFLOW_HOME"]), work / f"dagster-pg-{feed.name}")
        pg_options = {"feed": feed.name}
        if profile:
            pg_options["profile"] = str(Path(profile) / f"{feed.name}-postgres.txt")
        entry["postgres"] = run_child(
            [__file__, "--child", json.dumps(pg_options)],
            env={"CREDFLOW_TABLES_DB_URL": pg_url, "DAGSTER_HOME": str(home)})
        print(f"== {feed.name}: PostgreSQL's own bulk load  (load {os.getloadavg()[0]:.2f})")
        entry["limit_postgres"] = postgres_limits(sheet, id_header, pg_url,
                                                  counts["limit_repeats"])
        print(f"== {feed.name}: baseline into PostgreSQL, first {counts['postgres']} rows")
        entry["baseline_postgres"] = baseline(feed, sheet, counts["postgres"], pg_url)
    for key in ("sqlite", "postgres"):
        if entry.get(key, {}).get("failed"):
            raise SystemExit(f"{feed.name} ({key}) failed: {entry[key]['failed']}")
    entry["load_average_at_end"] = [round(value, 2) for value in os.getloadavg()]
    return entry


def print_results(results: list[dict], rows: int) -> None:
    baseline_rows, limit_rows = [], []
    for entry in results:
        for db in ("sqlite", "postgres"):
            if db not in entry:
                continue
            cred = entry[db]
            cred_rate = entry["rows"] / cred["sync_seconds"]
            ingest_rate = entry["rows"] / cred["ingest_seconds"] if cred["ingest_seconds"] else 0
            base = entry[f"baseline_{db}"]
            best = base["one transaction"]
            per_row = base["commit per row"]
            extrapolated = entry["rows"] / best["rows_per_second"]
            baseline_rows.append([
                entry["feed"], db, f"{entry['rows']:,}", cred["sync_seconds"],
                cred.get("cpu_seconds", 0), cred_rate,
                ingest_rate, f"{cred['peak_rss_mb']:.0f} MB",
                f"{best['rows_per_second']:,.0f} ({best['rows']:,} rows)",
                f"{per_row['rows_per_second']:,.0f} ({per_row['rows']:,} rows)",
                f"{extrapolated:,.0f} s (extrapolated)",
                f"{cred_rate / best['rows_per_second']:.0f}x",
            ])
            limit = entry[f"limit_{db}"]
            keyed, fresh = limit["keyed"]["rows_per_second"], limit["fresh"]["rows_per_second"]
            # CPU: the sqlite3 shell's own; PostgreSQL's COPY runs in the server (not counted)
            limit_cpu = limit["keyed"].get("cpu_seconds")
            limit_rows.append([
                entry["feed"], db, f"{entry['rows']:,}", cred_rate, ingest_rate,
                fresh, keyed, f"{cred_rate / keyed:.2f}x", f"{cred_rate / fresh:.2f}x",
                f"{ingest_rate / keyed:.2f}x", cred.get("cpu_seconds", 0),
                cred.get("ingest_cpu_seconds", 0), "-" if limit_cpu is None else limit_cpu,
                " ".join(f"{value:.2f}" for value in entry["load_average_at_end"]),
            ])
    print(f"\nFeed ingestion: {rows:,} rows per feed; the baseline is measured on the first "
          f"rows shown and extrapolated to {rows:,} (labelled)")
    print(table(["feed", "db", "rows", "credflow s (end to end)", "credflow CPU s",
                 "credflow rows/s",
                 "ingest-only rows/s", "peak RSS", "baseline rows/s (1 txn)",
                 "baseline rows/s (commit/row)", "baseline for all rows", "ratio"],
                baseline_rows))
    print("targets: ≥ 100,000 rows/s into SQLite end to end; ratio ≥ 50")
    print("\nAgainst the database's own bulk load of the same CSV, no validation (SQLite: the "
          "sqlite3 shell's .import --csv; PostgreSQL: COPY FROM STDIN (FORMAT csv, HEADER); "
          "TEXT columns, fastest of the repeats). `keyed`: the id column is the PRIMARY KEY, "
          "as in the feed's table; the ratio is credflow end to end / keyed.")
    print(table(["feed", "db", "rows", "credflow rows/s (end to end)", "ingest-only rows/s",
                 "limit rows/s (fresh)", "limit rows/s (keyed)", "ratio (keyed)",
                 "ratio (fresh)", "ingest-only ratio (keyed)", "credflow CPU s",
                 "of which ingest", "limit CPU s (keyed)", "load at end"], limit_rows))
    print("target: ratio ≥ 1.0x")


if __name__ == "__main__":
    main()
