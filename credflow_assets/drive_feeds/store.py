"""The feed tables in the tables database (SQLite locally, PostgreSQL in production).

Per feed: `{table}` (one row per id, typed from the model, plus where each row last came from)
and `{table}_history` (one row per real change of tracked columns: what changed, from which
file and revision, in which run, when). For every feed: `drive_feed_files` (each processed file
revision, its counts and notes) and `drive_feed_rejections` (its rejected rows, with reasons
and the offending value, for the outbound summary).
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import sqlalchemy as sa

from credflow_assets.drive_feeds.validation import (
    FIRST_INGESTED_AT,
    LAST_CHANGED_AT,
    SOURCE_FILE_ID,
    SOURCE_REVISION,
    FeedPlan,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Connection, Engine

SQL_TYPES = {
    "text": sa.Text, "date": sa.Date, "datetime": sa.DateTime, "integer": sa.BigInteger,
    "float": sa.Float, "boolean": sa.Boolean,
}

bookkeeping = sa.MetaData()

files_table = sa.Table(
    "drive_feed_files", bookkeeping,
    sa.Column("feed", sa.Text, primary_key=True),
    sa.Column("file_id", sa.Text, primary_key=True),
    sa.Column("revision", sa.Text, primary_key=True),
    sa.Column("file_name", sa.Text, nullable=False),
    sa.Column("mime_type", sa.Text),
    sa.Column("modified_time", sa.Text),
    sa.Column("rows_read", sa.BigInteger, nullable=False),
    sa.Column("blank_rows", sa.BigInteger, nullable=False),
    sa.Column("inserted", sa.BigInteger, nullable=False),
    sa.Column("updated", sa.BigInteger, nullable=False),
    sa.Column("unchanged", sa.BigInteger, nullable=False),
    sa.Column("rejected", sa.BigInteger, nullable=False),
    # Rows a later-modified file of the feed wrote, left as they are (nullable: added later).
    sa.Column("kept_newer", sa.BigInteger),
    sa.Column("history_rows", sa.BigInteger, nullable=False),
    sa.Column("processed_at", sa.DateTime(timezone=True), nullable=False),
    sa.Column("run_id", sa.Text),
    # What of the file was not read as rows (empty sheets, empty unnamed columns) and how it
    # was read (its encoding), one note a line: nothing is left out without a word.
    sa.Column("notes", sa.Text),
)

rejections_table = sa.Table(
    "drive_feed_rejections", bookkeeping,
    sa.Column("rejection_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
              primary_key=True, autoincrement=True),
    sa.Column("feed", sa.Text, nullable=False),
    sa.Column("file_id", sa.Text, nullable=False),
    sa.Column("revision", sa.Text, nullable=False),
    sa.Column("row_number", sa.BigInteger, nullable=False),
    sa.Column("column_name", sa.Text, nullable=False),
    sa.Column("reason", sa.Text, nullable=False),
    sa.Column("value", sa.Text),
    sa.Index("drive_feed_rejections_by_file", "feed", "file_id", "revision", "row_number"),
)


class FeedTables:
    """The SQLAlchemy tables of one feed."""

    def __init__(self, plan: FeedPlan):
        self.plan = plan
        metadata = sa.MetaData()
        id_column = plan.id_column
        columns = [
            sa.Column(c.name, SQL_TYPES[c.kind](), primary_key=c.name == id_column,
                      nullable=c.name != id_column, comment=c.description)
            for c in plan.columns
        ]
        self.records = sa.Table(
            plan.feed.table, metadata, *columns,
            sa.Column(SOURCE_FILE_ID, sa.Text, comment="Drive id of the file that last changed the row"),
            sa.Column(SOURCE_REVISION, sa.Text, comment="revision of that file"),
            sa.Column(FIRST_INGESTED_AT, sa.DateTime(timezone=True)),
            sa.Column(LAST_CHANGED_AT, sa.DateTime(timezone=True)),
        )
        self.history = sa.Table(
            f"{plan.feed.table}_history", metadata,
            sa.Column("change_id", sa.BigInteger().with_variant(sa.Integer, "sqlite"),
                      primary_key=True, autoincrement=True),
            sa.Column(id_column, SQL_TYPES[plan.by_name[id_column].kind](), nullable=False,
                      index=True),
            sa.Column("changed_columns", sa.Text, nullable=False),
            sa.Column("changes", sa.Text, nullable=False, comment="JSON: column → {from, to}"),
            sa.Column("source_file_id", sa.Text, nullable=False),
            sa.Column("source_file_name", sa.Text),
            sa.Column("source_revision", sa.Text, nullable=False),
            sa.Column("run_id", sa.Text),
            sa.Column("changed_at", sa.DateTime(timezone=True), nullable=False),
        )

    def ensure(self, engine: Engine) -> None:
        """Create what is missing; add columns a model gained since the table was made."""
        for attempt in range(2):
            try:
                bookkeeping.create_all(engine, checkfirst=True)
                self.records.metadata.create_all(engine, checkfirst=True)
                break
            except sa.exc.OperationalError:  # another run created it between check and create
                if attempt:
                    raise
            except sa.exc.ProgrammingError:
                if attempt:
                    raise
        _add_missing_columns(engine, self.records)
        _add_missing_columns(engine, files_table)


def _add_missing_columns(engine: Engine, table: sa.Table) -> None:
    """Columns the code gained since the table was made (nullable ones: no backfill)."""
    existing = {column["name"] for column in sa.inspect(engine).get_columns(table.name)}
    missing = [column for column in table.columns if column.name not in existing]
    if missing:
        with engine.begin() as connection:
            for column in missing:
                type_sql = column.type.compile(dialect=engine.dialect)
                preparer = engine.dialect.identifier_preparer
                connection.execute(sa.text(
                    f"ALTER TABLE {preparer.format_table(table)} "
                    f"ADD COLUMN {preparer.format_column(column)} {type_sql}"
                ))


def ensure_bookkeeping(engine: Engine) -> None:
    bookkeeping.create_all(engine, checkfirst=True)
    _add_missing_columns(engine, files_table)


def processed_file(connection: Connection, feed: str, file_id: str, revision: str) -> dict | None:
    row = connection.execute(
        sa.select(files_table).where(
            files_table.c.feed == feed, files_table.c.file_id == file_id,
            files_table.c.revision == revision,
        )
    ).mappings().first()
    return dict(row) if row else None


def rejections_of(connection: Connection, feed: str, file_id: str, revision: str, batch: int = 10_000):
    """The file's rejected rows in row order, streamed in pages."""
    table = rejections_table
    last = -1
    while True:
        rows = connection.execute(
            sa.select(table.c.rejection_id, table.c.row_number, table.c.column_name,
                      table.c.reason, table.c.value)
            .where(table.c.feed == feed, table.c.file_id == file_id,
                   table.c.revision == revision, table.c.rejection_id > last)
            .order_by(table.c.rejection_id).limit(batch)
        ).all()
        if not rows:
            return
        yield from rows
        last = rows[-1].rejection_id
