"""A file into a PostgreSQL feed table that holds no rows yet (a first load): the rows are copied
straight into the table as they are read, with no stage.

The stage (staging.py) is there to compare a file with the table before anything is written, and
to see a repeated id anywhere in the file. Into an empty table there is nothing to compare: every
good row is new, no change history is written, no row of the table is newer. So the good rows are
copied into the table chunk by chunk, in binary, in the one transaction that also records the
file and its rejected rows, under the feed's lock: a file that fails part-way is rolled back
whole, as before, and readers see the table empty until the commit.

What the stage would have caught, the load refuses, rolling back: the file then goes through the
stage after all, which rejects those rows naming each other (`FirstLoad.refusal`):
- an id on two good rows: the table's primary key refuses the second;
- an id on a rejected row and on another row: looked for before the commit.
A table that is not empty, or whose columns are of types the load does not encode (a table
changed by hand), goes through the stage from the start.

SQLite has no such load: ADBC's SQLite is a second copy of SQLite in the process, and two copies
must never have one database file open at once (their POSIX locks undo each other, sqlite.org's
"How To Corrupt"). Its first load skips the stage's index instead (ingest.py).

Why binary: four columns are the same on every row (the file, its revision, when). As CSV the
server parses each of them again on every row: two timestamps and two texts cost it 1.5 s of CPU
per 1M rows, as much as the rest of the row. In binary a value is its bytes (a timestamp is 8).
pgpq encodes the Arrow columns (in Rust), each chunk a COPY of its own; each column is first cast
to the Arrow type whose binary form the table's column reads (`_arrow_type`), and the table's
types are checked against what pgpq says it writes (`_RECEIVES`).
"""

from __future__ import annotations

import io
import uuid
from dataclasses import dataclass, field
from datetime import datetime
from typing import TYPE_CHECKING

import sqlalchemy as sa

from credflow_assets.drive_feeds.staging import ROW, copy_csv, staged_chunk
from credflow_assets.drive_feeds.store import SQL_TYPES, FeedTables, rejections_table
from credflow_assets.drive_feeds.validation import (
    FIRST_INGESTED_AT,
    LAST_CHANGED_AT,
    SOURCE_FILE_ID,
    SOURCE_REVISION,
    ChunkResult,
    FeedPlan,
)

if TYPE_CHECKING:
    import pyarrow as pa
    from sqlalchemy.engine import Connection

    from credflow_assets.drive_feeds.ingest import IngestReport, SourceFile

_ENGINE_COLUMNS = {SOURCE_FILE_ID: "text", SOURCE_REVISION: "text",
                   FIRST_INGESTED_AT: "datetime", LAST_CHANGED_AT: "datetime"}
# What pgpq writes (its `schema()`) → PostgreSQL's names (`format_type`) of the column types that
# read it: a table whose column has another type (changed by hand) is loaded through the stage,
# which lets PostgreSQL cast. A timestamp's binary form is microseconds, in UTC for timestamptz.
_RECEIVES = {
    "Text": {"text", "character varying"}, "Date": {"date"},
    "Timestamp": {"timestamp without time zone", "timestamp with time zone"},
    "Int8": {"bigint"}, "Float8": {"double precision"}, "Bool": {"boolean"},
}


def _arrow_type(kind: str) -> pa.DataType:
    """The Arrow type a column of this kind is cast to, so that pgpq writes the binary form of
    the model's column type (zone-aware timestamps count in UTC, as PostgreSQL's do)."""
    import pyarrow as pa

    return {"text": pa.string(), "date": pa.date32(), "datetime": pa.timestamp("us"),
            "integer": pa.int64(), "float": pa.float64(), "boolean": pa.bool_()}[kind]


def _cast(values: pa.ChunkedArray, arrow_type: pa.DataType) -> pa.ChunkedArray:
    import pyarrow as pa
    import pyarrow.compute as pc

    # A date read with a time of day keeps its day; a timestamp in ns keeps its microseconds.
    return pc.cast(values, arrow_type, safe=not pa.types.is_temporal(arrow_type))


@dataclass(frozen=True)
class _Chunk:
    """A chunk ready to write: its good rows as a binary COPY, its rejections, and the row
    numbers and ids of its rejected rows."""

    rows: int
    body: bytes | None
    rejections: pa.Table
    rejected_ids: pa.Table


@dataclass
class RejectionTally:
    """The report's account of the rejected rows, kept as the chunks go by (the stage's is a
    query over its rejections table): rows, the first `sample_size` reasons, counts by rule."""

    sample_size: int
    rows: int = 0
    sample: list[tuple[int, str, str]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)

    def add(self, result: ChunkResult) -> None:
        from credflow_assets.drive_feeds.ingest import rule_of

        rejections = result.rejections  # in row order, then column, as the stage orders them
        self.rows += len({rejection.row_number for rejection in rejections})
        for rejection in rejections[:max(0, self.sample_size - len(self.sample))]:
            self.sample.append((rejection.row_number, rejection.column, rejection.reason))
        for rejection in rejections:
            kind = rule_of(rejection.column, rejection.reason)
            self.reasons[kind] = self.reasons.get(kind, 0) + 1


class FirstLoad:
    """One file's first load, in the caller's transaction on `connection` (PostgreSQL), which
    holds the feed's lock: `start`, `append` each chunk, `finish`. Any of them may refuse
    (False, or `refusal` raised by `append`): the caller then rolls back."""

    def __init__(self, connection: Connection, plan: FeedPlan, tables: FeedTables,
                 source: SourceFile, now: datetime, sample_size: int):
        self.connection, self.plan, self.tables, self.source = connection, plan, tables, source
        self.records = tables.records
        self.columns = [*plan.column_names, *_ENGINE_COLUMNS]
        self.schema = _schema(plan)
        # The engine's columns are the same on every row: repeated per chunk by `pa.repeat`
        # (pgpq takes no dictionary arrays; building them from a list doubles the encoding CPU).
        self.constants = [_constant(source.file_id, "text"), _constant(source.revision, "text"),
                          _constant(now, "datetime"), _constant(now, "datetime")]
        self.rejected_ids = sa.Table(
            f"credflow_rejected_ids_{uuid.uuid4().hex[:12]}", sa.MetaData(),
            sa.Column(ROW, sa.BigInteger, nullable=False),
            sa.Column(plan.id_column, SQL_TYPES[plan.by_name[plan.id_column].kind]()),
            prefixes=["TEMPORARY"], postgresql_on_commit="DROP",
        )
        self.tally = RejectionTally(sample_size)
        self.inserted = self.rejected_with_id = 0
        # Raised by `append` when the table's key refuses a row: an id twice in the file.
        self.refusal = connection.dialect.dbapi.IntegrityError

    def start(self) -> bool:
        """Whether the load can go ahead: the table is empty and its columns are of the types
        it writes."""
        import pgpq

        connection = self.connection
        if connection.execute(sa.select(sa.literal(1)).select_from(self.records).limit(1)) \
                .first() is not None:
            return False
        types = dict(connection.execute(
            sa.text("SELECT attname, format_type(atttypid, NULL) FROM pg_attribute "
                    "WHERE attrelid = CAST(:table AS regclass) AND attnum > 0 "
                    "AND NOT attisdropped"),
            {"table": connection.dialect.identifier_preparer.format_table(self.records)}).all())
        writes = pgpq.ArrowToPostgresBinaryEncoder(self.schema).schema().columns
        if any(types.get(column.name) not in _RECEIVES.get(type(column.data_type).__name__, ())
               for column in writes):
            return False
        self.rejected_ids.create(connection)
        return True

    def prepare(self, result: ChunkResult) -> _Chunk:
        """One chunk made ready to write; runs on the reading thread, beside the COPY of the
        chunk before (psycopg2 waits on the server outside the GIL)."""
        import pgpq
        import pyarrow as pa

        staged = staged_chunk(self.plan, result, dates_as_text=False)
        good, body = staged.good, None
        if good.num_rows:
            columns = [_cast(good.column(name), arrow_type)
                       for name, arrow_type in zip(self.plan.column_names, self.schema.types)]
            columns += [pa.repeat(value, good.num_rows) for value in self.constants]
            encoder = pgpq.ArrowToPostgresBinaryEncoder(self.schema)
            parts = [encoder.write_header()]
            parts += [encoder.write_batch(batch)
                      for batch in pa.table(columns, schema=self.schema).to_batches()]
            parts.append(encoder.finish())
            body = b"".join(parts)
        return _Chunk(good.num_rows, body, _for_rejections_table(staged.rejections, self.source),
                      staged.rejected_with_id.select([ROW, self.plan.id_column]))

    def append(self, result: ChunkResult, chunk: _Chunk) -> None:
        """One chunk: its good rows into the table, its rejections into the feed's rejections,
        the ids of its rejected rows aside (for `finish`)."""
        if chunk.body is not None:
            self._copy_binary(io.BytesIO(chunk.body))
            self.inserted += chunk.rows
        copy_csv(self.connection, rejections_table, chunk.rejections)
        copy_csv(self.connection, self.rejected_ids, chunk.rejected_ids)
        self.rejected_with_id += chunk.rejected_ids.num_rows
        self.tally.add(result)

    def finish(self, report: IngestReport) -> bool:
        """The report's counts; False when a rejected row's id is also another row's (the stage
        rejects all of them, naming each other)."""
        if self.rejected_with_id and self._rejected_id_repeats():
            return False
        report.inserted = report.table_rows = self.inserted
        report.rejected = self.tally.rows
        report.rejection_sample = self.tally.sample
        report.reasons = dict(sorted(self.tally.reasons.items(),
                                     key=lambda item: (-item[1], item[0])))
        return True

    def _rejected_id_repeats(self) -> bool:
        rejected, records = self.rejected_ids, self.records
        id_column = self.plan.id_column
        in_table = sa.select(sa.literal(1)).where(records.c[id_column] == rejected.c[id_column])
        repeated = (sa.select(rejected.c[id_column]).group_by(rejected.c[id_column])
                    .having(sa.func.count() > 1))
        query = sa.union_all(
            sa.select(sa.literal(1)).select_from(rejected).where(in_table.exists()),
            sa.select(sa.literal(1)).select_from(repeated.subquery()),
        ).limit(1)
        return self.connection.execute(query).first() is not None

    def _copy_binary(self, stream: io.BytesIO) -> None:
        preparer = self.connection.dialect.identifier_preparer
        column_list = ", ".join(preparer.quote(name) for name in self.columns)
        cursor = self.connection.connection.cursor()
        try:
            cursor.copy_expert(f"COPY {preparer.format_table(self.records)} ({column_list}) "
                               "FROM STDIN WITH (FORMAT binary)", stream, size=1 << 20)
        finally:
            cursor.close()


def _schema(plan: FeedPlan) -> pa.Schema:
    """The rows as pgpq encodes them: the model's columns, then the engine's."""
    import pyarrow as pa

    kinds = {**{column.name: column.kind for column in plan.columns}, **_ENGINE_COLUMNS}
    return pa.schema([(name, _arrow_type(kind)) for name, kind in kinds.items()])


def _constant(value, kind: str) -> pa.Scalar:
    import pyarrow as pa

    return _cast(pa.chunked_array([pa.array([value])]), _arrow_type(kind))[0]


def _for_rejections_table(rejections, source: SourceFile):
    """A chunk's rejections as rows of the feed's rejections table."""
    import pyarrow as pa

    count = rejections.num_rows

    def same(value: str) -> pa.Array:
        return pa.repeat(pa.scalar(value, pa.large_string()), count)

    return pa.table({
        "feed": same(source.feed), "file_id": same(source.file_id),
        "revision": same(source.revision), "row_number": rejections.column(ROW),
        "column_name": rejections.column("column_name"), "reason": rejections.column("reason"),
        "value": rejections.column("value"),
    })
