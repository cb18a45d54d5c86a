"""One file into a feed's tables, as the feed tests drive the engine (no Dagster run), and what
those tests check after an ingest that failed."""

from __future__ import annotations

from pathlib import Path

import sqlalchemy as sa

from credflow_assets.config import FeedConfig
from credflow_assets.drive_feeds.ingest import SourceFile, ingest_file
from credflow_assets.drive_feeds.sheets import SheetReader
from credflow_assets.drive_feeds.store import FeedTables, files_table, rejections_table
from credflow_assets.drive_feeds.validation import build_plan
from credflow_assets.resources.sql import create_engine


def engine_for(backend: str, tmp_path: Path, request):
    """A tables database on `backend`: a SQLite file, or a fresh PostgreSQL database."""
    url = (f"sqlite:///{tmp_path / 'tables.db'}" if backend == "sqlite"
           else request.getfixturevalue("postgres_url"))
    return create_engine(url)


def ingest(engine, feed: FeedConfig, path: Path, revision: str, chunk_rows: int = 4):
    """The CSV at `path` as revision `revision` of Drive file `file-1`, `chunk_rows` a chunk."""
    return ingest_file(engine, build_plan(feed), SheetReader(path, "csv", feed.date_formats),
                       SourceFile(feed.name, "file-1", revision, path.name),
                       chunk_rows=chunk_rows, run_id=f"run-{revision}")


def assert_nothing_written(engine, feed: FeedConfig) -> None:
    """No row in the feed's table, its rejections or its files: a failed file left no trace."""
    records = FeedTables(build_plan(feed)).records
    with engine.connect() as connection:
        for table in (records, rejections_table, files_table):
            assert connection.execute(
                sa.select(sa.func.count()).select_from(table)).scalar() == 0, table.name
