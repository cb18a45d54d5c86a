"""Where one ingest's rows wait while its file is read: two staging tables, filled from Arrow.

The rows go in chunk by chunk, as Arrow tables, through the database's own bulk path:

- **SQLite**: ADBC's SQLite driver writes them into a scratch database file, in C and with the
  GIL released, so the next chunk is read and validated on the other core meanwhile. Binding
  each value through Python's `sqlite3` cost more than reading and validating the file did.
  The scratch file is attached to the ingest's connection for the apply, then deleted.
- **PostgreSQL**: temporary tables, filled by `COPY` of CSV that Arrow writes.

Either way the feed's table is not touched until the apply, so a file that fails part-way has
written nothing.
"""

from __future__ import annotations

import io
import tempfile
import uuid
from abc import ABC, abstractmethod
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa

from credflow_assets.drive_feeds.store import SQL_TYPES
from credflow_assets.drive_feeds.validation import ChunkResult, FeedPlan

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import Connection

ROW, OK = "_row", "_ok"  # staging columns: spreadsheet row number, passed validation


@dataclass
class StagedChunk:
    """One chunk's rows as the staging tables take them."""

    good: pa.Table
    # Rejected rows that have an id (_row, _ok false and the id), staged only so that a
    # duplicate id is seen whichever of its rows were bad.
    rejected_with_id: pa.Table
    rejections: pa.Table
    # The good rows' first and last ids, and whether the ids between rise (`Staging.ids_in_order`)
    id_range: tuple[Any, Any, bool] = (None, None, False)


def staged_chunk(plan: FeedPlan, result: ChunkResult, *, dates_as_text: bool = True) -> StagedChunk:
    """The chunk's rows as Arrow tables. Text stays the Arrow strings the reader made (no copy);
    dates become ISO text (`dates_as_text`), the form SQLAlchemy's SQLite Date and DateTime
    store and PostgreSQL casts, or stay Arrow timestamps (for a binary COPY, first_load.py)."""
    import pyarrow as pa

    good = result.good
    columns = {ROW: pa.array(good.index.to_numpy(), pa.int64()),
               OK: pa.array([True] * len(good), pa.bool_())}
    for column in plan.columns:
        kind = column.kind if dates_as_text else "as read"
        columns[column.name] = _arrow_values(kind, good[column.name])
    bad = result.rejected_ids
    rejections = result.rejections
    return StagedChunk(
        good=pa.table(columns),
        id_range=_id_range(columns[plan.id_column]),
        rejected_with_id=pa.table({
            ROW: pa.array([number for number, _ in bad], pa.int64()),
            OK: pa.array([False] * len(bad), pa.bool_()),
            plan.id_column: pa.array([str(value) for _, value in bad], pa.large_string()),
        }),
        rejections=pa.table({
            ROW: pa.array([r.row_number for r in rejections], pa.int64()),
            "column_name": pa.array([r.column for r in rejections], pa.large_string()),
            "reason": pa.array([r.reason for r in rejections], pa.large_string()),
            "value": pa.array([r.value for r in rejections], pa.large_string()),
        }),
    )


def _id_range(ids: pa.Array) -> tuple[Any, Any, bool]:
    """(first id, last id, whether each id is greater than the one before), compared as the
    databases compare them: text byte by byte, numbers as numbers. Worked out on the reading
    thread, so that the writing one has only to compare two values."""
    import pyarrow.compute as pc

    if not len(ids):
        return None, None, True
    rising = len(ids) == 1 or (not ids.null_count
                               and pc.all(pc.less(ids[:-1], ids[1:])).as_py() is True)
    return ids[0].as_py(), ids[-1].as_py(), rising


def _arrow_values(kind: str, series) -> pa.Array:
    import pyarrow as pa
    import pyarrow.compute as pc

    values = pa.array(series, from_pandas=True)  # NaN and NaT become null
    # Arrow's casts to text write ISO dates, and cost a tenth of `pc.strftime`.
    if kind == "date":  # "2020-01-02"
        return pc.cast(pc.cast(values, pa.date32(), safe=False), pa.string())
    if kind == "datetime":  # "2020-01-02 03:04:05.000000", in UTC for zone-aware values
        return pc.cast(pc.cast(values, pa.timestamp("us"), safe=False), pa.string())
    return values


class Staging(ABC):
    """The staging tables of one ingest: `rows` (every staged row, by spreadsheet row number)
    and `rejections` (row, column, reason, value)."""

    def __init__(self, plan: FeedPlan, *, schema: str | None, prefixes: list[str]):
        suffix = uuid.uuid4().hex[:12]
        metadata = sa.MetaData(schema=schema)
        self.rows = sa.Table(
            f"credflow_stage_{suffix}", metadata,
            sa.Column(ROW, sa.BigInteger().with_variant(sa.Integer, "sqlite"), primary_key=True),
            sa.Column(OK, sa.Boolean, nullable=False),
            *(sa.Column(c.name, SQL_TYPES[c.kind]()) for c in plan.columns),
            prefixes=prefixes,
        )
        self.rejections = sa.Table(
            f"credflow_rejects_{suffix}", metadata,
            sa.Column(ROW, sa.BigInteger, nullable=False),
            sa.Column("column_name", sa.Text, nullable=False),
            sa.Column("reason", sa.Text, nullable=False),
            sa.Column("value", sa.Text),
            prefixes=prefixes,
        )
        # The duplicate check and the joins look rows up by id. Built once the rows are in
        # (`seal`): one sort costs less than keeping a B-tree in order row by row. Built as a
        # unique index first: when that succeeds, as it does for most files, no id occurs
        # twice and the apply skips its duplicate search. A first load into an empty SQLite
        # table needs none (ingest.py, `_insert_into_empty_table`): `ids_indexed` says.
        self.id_index, self.id_column = f"credflow_stage_{suffix}_id", plan.id_column
        self.ids_indexed = False
        self.ids_unique = False  # known once indexed
        self.rejected_rows_with_id = 0  # staged with _ok false, for the duplicate check only
        # Whether the good rows' ids came in ascending order: then they go into the feed's
        # table in that order without a sort.
        self.ids_in_order, self._last_id = True, None

    @abstractmethod
    def open(self, connection: Connection) -> None:
        """Create the staging tables."""

    @abstractmethod
    def append(self, connection: Connection, chunk: StagedChunk) -> None:
        """Stage one chunk."""

    @abstractmethod
    def seal(self, connection: Connection, *, index_ids: bool = True) -> None:
        """All rows are in: index their ids (unless not `index_ids`) and make them readable by
        `connection`."""

    def index_ids_now(self, connection: Connection) -> None:
        """The id index of a stage sealed without it, built by `connection` in its transaction:
        not unique (a failed unique index cannot be undone in a stage without a journal), so
        the apply looks for repeated ids itself."""
        quote = connection.dialect.identifier_preparer.quote
        schema = f"{quote(self.rows.schema)}." if self.rows.schema else ""
        connection.exec_driver_sql(f"CREATE INDEX {schema}{quote(self.id_index)} "
                                   f"ON {quote(self.rows.name)} ({quote(self.id_column)})")
        self.ids_indexed, self.ids_unique = True, False

    @abstractmethod
    def close(self, connection: Connection) -> None:
        """Drop what `open` made; safe to call whatever state the staging is in."""

    def _index_ids(self, quote, execute, duplicate_error: type[Exception]) -> None:
        """The id index, unique when no id occurs twice (`ids_unique` says which); `execute`
        runs one statement so that a failure undoes only that statement."""
        def create(unique: bool) -> None:
            execute(f"CREATE {'UNIQUE ' if unique else ''}INDEX {quote(self.id_index)} "
                    f"ON {quote(self.rows.name)} ({quote(self.id_column)})")

        try:
            create(unique=True)
            self.ids_unique = True
        except duplicate_error:
            create(unique=False)
        self.ids_indexed = True

    def _count(self, chunk: StagedChunk) -> None:
        self.rejected_rows_with_id += chunk.rejected_with_id.num_rows
        first, last, rising = chunk.id_range
        if self.ids_in_order and first is not None:
            self.ids_in_order = rising and (self._last_id is None or self._last_id < first)
            self._last_id = last


def staging_for(connection: Connection, plan: FeedPlan) -> Staging:
    dialect = connection.dialect.name
    if dialect == "sqlite":
        return ScratchFileStaging(plan)
    if dialect == "postgresql":
        return TemporaryTableStaging(plan)
    raise NotImplementedError(f"feed tables support SQLite and PostgreSQL, not {dialect}")


class ScratchFileStaging(Staging):
    """SQLite: a scratch database file written by ADBC, attached to the connection to apply."""

    def __init__(self, plan: FeedPlan):
        self.schema = f"credflow_stage_{uuid.uuid4().hex[:12]}"
        super().__init__(plan, schema=self.schema, prefixes=[])
        self._directory: tempfile.TemporaryDirectory | None = None
        self._writer = self._cursor = None
        self._attached = False

    def open(self, connection: Connection) -> None:
        import adbc_driver_sqlite.dbapi

        self._directory = tempfile.TemporaryDirectory(prefix="credflow-stage-")
        self.path = Path(self._directory.name) / "stage.sqlite"
        self._writer = adbc_driver_sqlite.dbapi.connect(str(self.path), autocommit=True)
        self._cursor = self._writer.cursor()
        # A scratch file, deleted whatever happens: nothing to sync, and the journal only has
        # to undo a failed statement (`seal`), which it can in memory (a new file's pages are
        # not journaled).
        self._cursor.execute("PRAGMA journal_mode=MEMORY")
        self._cursor.execute("PRAGMA synchronous=OFF")
        unqualified = sa.MetaData()
        for table in (self.rows, self.rejections):
            ddl = sa.schema.CreateTable(table.to_metadata(unqualified, schema=None))
            self._cursor.execute(str(ddl.compile(dialect=connection.dialect)))
        self._cursor.execute("BEGIN")

    def append(self, connection: Connection, chunk: StagedChunk) -> None:
        for table, rows in ((self.rows, chunk.good), (self.rows, chunk.rejected_with_id),
                            (self.rejections, chunk.rejections)):
            if rows.num_rows:
                self._cursor.adbc_ingest(table.name, rows, mode="append")
        self._count(chunk)

    def seal(self, connection: Connection, *, index_ids: bool = True) -> None:
        import adbc_driver_manager

        quote = connection.dialect.identifier_preparer.quote
        if index_ids:
            self._index_ids(quote, self._cursor.execute, adbc_driver_manager.IntegrityError)
        self._cursor.execute("COMMIT")
        self._close_writer()
        with connection.begin():  # ATTACH may not run inside a transaction; this one is empty
            connection.exec_driver_sql(f"ATTACH DATABASE ? AS {quote(self.schema)}",
                                       (str(self.path),))
            self._attached = True
            # The apply deletes staged rows it will not write; a rollback discards the file.
            connection.exec_driver_sql(f"PRAGMA {quote(self.schema)}.journal_mode=OFF")

    def close(self, connection: Connection) -> None:
        self._close_writer()
        if self._attached:
            quote = connection.dialect.identifier_preparer.quote
            try:
                with connection.begin():
                    connection.exec_driver_sql(f"DETACH DATABASE {quote(self.schema)}")
            except sa.exc.DBAPIError:
                connection.invalidate()  # never back in the pool with the scratch attached
            self._attached = False
        if self._directory is not None:
            self._directory.cleanup()
            self._directory = None

    def _close_writer(self) -> None:
        if self._cursor is not None:
            self._cursor.close()
            self._cursor = None
        if self._writer is not None:
            self._writer.close()  # rolls back what was not committed
            self._writer = None


class TemporaryTableStaging(Staging):
    """PostgreSQL: temporary tables of the connection, filled by COPY."""

    def __init__(self, plan: FeedPlan):
        super().__init__(plan, schema=None, prefixes=["TEMPORARY"])

    def open(self, connection: Connection) -> None:
        with connection.begin():
            self.rows.create(connection)
            self.rejections.create(connection)

    def append(self, connection: Connection, chunk: StagedChunk) -> None:
        with connection.begin():
            copy_csv(connection, self.rows, chunk.good)
            copy_csv(connection, self.rows, chunk.rejected_with_id)
            copy_csv(connection, self.rejections, chunk.rejections)
        self._count(chunk)

    def seal(self, connection: Connection, *, index_ids: bool = True) -> None:
        # Always indexed: on PostgreSQL a failed statement ends the apply's whole transaction,
        # so the apply cannot try an insert and fall back (first_load.py loads an empty table).
        def execute(statement: str) -> None:
            with connection.begin():
                connection.exec_driver_sql(statement)

        self._index_ids(connection.dialect.identifier_preparer.quote, execute,
                        sa.exc.IntegrityError)

    def close(self, connection: Connection) -> None:
        with connection.begin():
            self.rows.drop(connection, checkfirst=True)
            self.rejections.drop(connection, checkfirst=True)


def copy_csv(connection: Connection, table: sa.Table, rows: pa.Table) -> None:
    """PostgreSQL: `rows` into `table` by COPY in CSV, where an unquoted empty field is NULL
    and a quoted one is ''; the columns are `rows`' own."""
    import pyarrow.csv

    if not rows.num_rows:
        return
    text = io.BytesIO()
    pyarrow.csv.write_csv(rows, text, pyarrow.csv.WriteOptions(include_header=False))
    text.seek(0)
    preparer = connection.dialect.identifier_preparer
    column_list = ", ".join(preparer.quote(name) for name in rows.column_names)
    cursor = connection.connection.cursor()
    try:
        cursor.copy_expert(f"COPY {preparer.format_table(table)} ({column_list}) "
                           "FROM STDIN WITH (FORMAT csv)", text)
    finally:
        cursor.close()
