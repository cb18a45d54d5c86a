"""`python bench/feed_engine.py [ROWS] [FEED]`: ingest a generated sheet of ROWS
rows (default 1,000,000) into a throwaway SQLite database, twice (all inserts, then all
unchanged), and print the time and the peak memory. Shows there is no row cap and that memory
follows the chunk size, not the file size."""

from __future__ import annotations

import csv
import resource
import sys
import tempfile
import time
from pathlib import Path


def main(rows: int = 1_000_000, feed_name: str = "contact_tracing") -> None:
    from credflow_assets.config import load_config
    from credflow_assets.drive_feeds.ingest import SourceFile, ingest_file
    from credflow_assets.drive_feeds.sheets import SheetReader
    from credflow_assets.drive_feeds.validation import build_plan
    from credflow_assets.local.seed_drive_feeds import columns_of, header_for, sample_rows
    from credflow_assets.resources.sql import create_engine

    feed = next(f for f in load_config().feeds if f.name == feed_name)
    plan = build_plan(feed)
    with tempfile.TemporaryDirectory(prefix="credflow-bench-") as work:
        path = Path(work) / "sheet.csv"
        columns = columns_of(feed)
        with open(path, "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow([header_for(column) for column in columns])
            for start in range(0, rows, 50_000):
                for row in sample_rows(feed, min(50_000, rows - start), start=start):
                    writer.writerow([row[column] for column in columns])
        print(f"{feed_name}: {rows:,} rows, {path.stat().st_size / 2**20:.0f} MiB of CSV")
        engine = create_engine(f"sqlite:///{Path(work) / 'tables.db'}")
        for revision in ("first", "again"):
            started = time.monotonic()
            report = ingest_file(engine, plan, SheetReader(path, "csv", feed.date_formats),
                                 SourceFile(feed_name, "bench", revision, path.name))
            seconds = time.monotonic() - started
            print(f"  {revision}: {report.inserted:,} inserted, {report.unchanged:,} unchanged, "
                  f"{report.rejected:,} rejected in {seconds:.1f}s "
                  f"({report.rows_read / seconds:,.0f} rows/s)")
        engine.dispose()
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(f"  peak memory: {peak:.0f} MiB")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1_000_000,
         sys.argv[2] if len(sys.argv) > 2 else "contact_tracing")
