"""One inbound file → the feed's table, in bulk, streamed in chunks: no row cap.

Phase 1 reads the file chunk by chunk, validates each chunk (pandera, lazily) and stages the
rows (`staging.py`): the feed's table is not touched, so a file that fails part-way (a
malformed line, the wrong encoding) has written nothing. Phase 2, in one transaction, rejects
ids that occur more than once in the file, writes a history row for each row whose tracked
columns really changed, updates the changed rows and inserts the new ones (an unchanged row is
not written at all), and records the file, its counts and its rejected rows.
Memory follows the chunk size, not the file size.

A first load (the feed's table empty) costs less: on PostgreSQL the rows skip the stage and are
copied straight into the table in one transaction (`first_load.py`); on SQLite the stage skips
its id index and its rows go into the table in one statement (`_insert_into_empty_table`).
Either way a repeated id anywhere in the file sends it through the whole of the above.
"""

from __future__ import annotations

import gc
import itertools
import json
import queue
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import TYPE_CHECKING

import sqlalchemy as sa

from credflow_assets.drive_feeds.first_load import FirstLoad
from credflow_assets.drive_feeds.sheets import HeaderProblem, SheetReader, check_header
from credflow_assets.drive_feeds.staging import OK, ROW, Staging, staged_chunk, staging_for
from credflow_assets.drive_feeds.store import (
    FeedTables,
    files_table,
    rejections_table,
)
from credflow_assets.drive_feeds.validation import (
    FIRST_INGESTED_AT,
    LAST_CHANGED_AT,
    SOURCE_FILE_ID,
    SOURCE_REVISION,
    FeedPlan,
    validate_chunk,
)

if TYPE_CHECKING:
    from sqlalchemy.engine import Engine

PAGE_ROWS = 10_000
# A progress line in the run's log this often while a file is read. Each is an event Dagster
# writes to its storage (about 50 ms on a loaded machine): every 100,000 rows, as it was, cost
# a fast 1M-row ingest 0.5 s of its writing thread.
PROGRESS_EVERY_SECONDS = 10
GC_EVERY_CHUNKS = 5
READ_AHEAD_CHUNKS = 2  # chunks read and validated ahead of the one being staged


class HeaderMismatch(ValueError):
    def __init__(self, problem: HeaderProblem, header: list[str]):
        self.problem, self.header = problem, header
        super().__init__(problem.describe())


@dataclass(frozen=True)
class SourceFile:
    feed: str
    file_id: str
    revision: str
    name: str
    mime_type: str | None = None
    modified_time: str | None = None


@dataclass
class IngestReport:
    rows_read: int = 0
    blank_rows: int = 0
    inserted: int = 0
    updated: int = 0
    unchanged: int = 0
    rejected: int = 0
    kept_newer: int = 0  # rows a later-modified file of the feed wrote: left as they are
    history_rows: int = 0
    table_rows: int = 0
    seconds: float = 0.0
    # (row number, column, reason): no values, safe for logs and metadata
    rejection_sample: list[tuple[int, str, str]] = field(default_factory=list)
    reasons: dict[str, int] = field(default_factory=dict)  # "column: reason" → rows
    # What of the file was not read as rows, and how it was read (`SheetReader.notes`)
    notes: list[str] = field(default_factory=list)

    @property
    def accepted(self) -> int:
        return self.inserted + self.updated + self.unchanged + self.kept_newer


def ingest_file(
    engine: Engine,
    plan: FeedPlan,
    reader: SheetReader,
    source: SourceFile,
    *,
    chunk_rows: int = 10_000,
    run_id: str | None = None,
    sample_size: int = 20,
    log: Callable[[str], None] = lambda message: None,
) -> IngestReport:
    """Validate and upsert one file; HeaderMismatch (nothing written) when its header is wrong."""
    started = time.monotonic()
    names, problem = check_header(reader.header, plan.column_names)
    if problem is not None:
        raise HeaderMismatch(problem, reader.header)
    tables = FeedTables(plan)
    tables.ensure(engine)
    read = _Reading(plan, reader, names, chunk_rows, log)
    with engine.connect() as connection:
        report = None
        if connection.dialect.name == "postgresql":
            report = _load_first_file(connection, plan, tables, read, source, run_id, sample_size)
        if report is None:
            report = _ingest_through_stage(connection, plan, tables, read, source, run_id,
                                           sample_size)
    report.seconds = time.monotonic() - started
    return report


def _ingest_through_stage(connection, plan: FeedPlan, tables: FeedTables, read: _Reading,
                          source: SourceFile, run_id, sample_size) -> IngestReport:
    report = IngestReport()
    # Into an empty SQLite table the stage needs no id index (`_insert_into_empty_table`). On
    # PostgreSQL an empty table comes here only when its first load found an id twice, and the
    # stage is always indexed: a failed statement there ends the apply's whole transaction.
    with connection.begin():
        first_load = connection.dialect.name == "sqlite" and _is_empty(connection,
                                                                        tables.records)
    staging = staging_for(connection, plan)
    try:
        staging.open(connection)
        read.into(lambda result, staged: staging.append(connection, staged), report,
                  lambda result: staged_chunk(plan, result))
        staging.seal(connection, index_ids=not first_load)
        with connection.begin():
            _apply(connection, plan, tables, staging, source, report, run_id, sample_size)
    finally:
        staging.close(connection)
    return report


def _load_first_file(connection, plan: FeedPlan, tables: FeedTables, read: _Reading,
                     source: SourceFile, run_id, sample_size) -> IngestReport | None:
    """The file straight into the feed's empty table (`first_load.py`), or None, with nothing
    written, when the table has rows or the file has an id twice (the stage then takes it)."""
    now = datetime.now(timezone.utc)
    report = IngestReport()
    load = FirstLoad(connection, plan, tables, source, now, sample_size)
    with connection.begin() as transaction:
        _become_the_feeds_writer(connection, plan, source)
        if not load.start():
            transaction.rollback()
            return None
        try:
            read.into(load.append, report, load.prepare)
            refused = not load.finish(report)
        except load.refusal:  # the table's key refused a row: an id twice among the good rows
            refused = True
        if refused:
            transaction.rollback()
            read.log(f"{plan.name}: an id occurs more than once in the file; reading it again "
                     "through the stage, which rejects those rows")
            return None
        _record_file(connection, _insert(connection.dialect.name), source, report, run_id, now)
    return report


def _is_empty(connection, table: sa.Table) -> bool:
    return connection.execute(sa.select(sa.literal(1)).select_from(table).limit(1)).first() \
        is None


@dataclass
class _Reading:
    """The file's chunks, read, validated and made ready to write (`prepare`) by a thread of
    their own, handed to a sink one by one (`into`); the report counts them."""

    plan: FeedPlan
    reader: SheetReader
    names: list
    chunk_rows: int
    log: Callable[[str], None]

    def into(self, sink: Callable, report: IngestReport, prepare: Callable) -> None:
        """`sink(result, prepare(result))` for each chunk's validation `result`."""
        # What is alive now (in a run: Dagster, its modules, the event log) stays alive: frozen,
        # it is left out of the full collections below, which then cost what the chunks left.
        gc.freeze()
        try:
            self._chunks_into(sink, report, prepare)
        finally:
            gc.unfreeze()
        report.notes = self.reader.notes

    def _chunks_into(self, sink, report: IngestReport, prepare) -> None:
        next_progress = time.monotonic() + PROGRESS_EVERY_SECONDS
        rejected_rows = chunks = 0
        prepared = _read_ahead(self._prepared(prepare), READ_AHEAD_CHUNKS)
        for result, staged in prepared:
            report.rows_read += result.rows
            report.blank_rows += result.blank_rows
            sink(result, staged)
            rejected_rows += len({r.row_number for r in result.rejections})
            del result, staged
            chunks += 1
            if chunks % GC_EVERY_CHUNKS == 0:
                # pandas and pandera leave each chunk in reference cycles, which only a full
                # collection frees: without this, memory grows until the collector gets round
                # to it.
                gc.collect()
            if time.monotonic() >= next_progress:
                self.log(f"{self.plan.name}: {report.rows_read:,} rows read, "
                         f"{rejected_rows:,} rejected so far")
                next_progress = time.monotonic() + PROGRESS_EVERY_SECONDS

    def _prepared(self, prepare):
        """Each chunk read, validated and made ready to write."""
        for chunk in self.reader.chunks(self.names, self.chunk_rows):
            result = validate_chunk(self.plan, chunk)
            yield result, prepare(result)


def _read_ahead(items, depth: int):
    """`items`, computed by a thread of their own up to `depth` ahead of the caller.

    Reading and validating a chunk (Python) then overlaps with staging the one before, whose
    database work runs outside the GIL. An error in the thread is raised here; when the caller
    stops early (an error of its own), the thread stops too.
    """
    handover: queue.Queue = queue.Queue(maxsize=depth)
    stopped = threading.Event()
    done = object()

    def hand(item) -> bool:
        while not stopped.is_set():
            try:
                handover.put(item, timeout=0.1)
                return True
            except queue.Full:
                continue
        return False

    def produce() -> None:
        try:
            for item in items:
                if not hand((item, None)):
                    return
            hand((done, None))
        except BaseException as error:  # raised again in the caller's thread
            hand((done, error))

    thread = threading.Thread(target=produce, name="credflow-feed-reader", daemon=True)
    thread.start()
    try:
        while True:
            item, error = handover.get()
            if error is not None:
                raise error
            if item is done:
                return
            yield item
    finally:
        stopped.set()
        thread.join()


def _insert(engine_dialect: str):
    if engine_dialect == "sqlite":
        from sqlalchemy.dialects.sqlite import insert
    elif engine_dialect == "postgresql":
        from sqlalchemy.dialects.postgresql import insert
    else:
        raise NotImplementedError(f"feed tables support SQLite and PostgreSQL, not {engine_dialect}")
    return insert


def _apply(connection, plan, tables: FeedTables, staging: Staging, source: SourceFile,
           report: IngestReport, run_id, sample_size) -> None:
    """Phase 2, in the caller's transaction: the staged rows into the feed's table, then the
    file's rejections and counts into the bookkeeping tables."""
    insert = _insert(connection.dialect.name)
    now = datetime.now(timezone.utc)
    _become_the_feeds_writer(connection, plan, source)
    if staging.ids_indexed or not _insert_into_empty_table(connection, plan, tables, staging,
                                                           source, report, now):
        if not staging.ids_indexed:
            staging.index_ids_now(connection)
        _unstage_rows_not_to_write(connection, plan, tables, staging, source, report)
        _upsert_staged_rows(connection, plan, tables, staging.rows, source, report, run_id, now)
    _record_rejections(connection, staging.rejections, source, report, sample_size)
    _record_file(connection, insert, source, report, run_id, now)


def _insert_into_empty_table(connection, plan: FeedPlan, tables: FeedTables, staging: Staging,
                             source: SourceFile, report: IngestReport, now) -> bool:
    """A first load (SQLite): the good staged rows into the empty table in one statement, with
    no id index on the stage. False, with nothing written, when the table is not empty after
    all or an id occurs twice in the file: the table's primary key refuses a good row's
    repeat (SQLite then undoes the statement, not the transaction), and a rejected row's id is
    looked for among the others first."""
    records, stage, id_column = tables.records, staging.rows, plan.id_column
    if not _is_empty(connection, records):
        return False
    if staging.rejected_rows_with_id:
        rejected = sa.select(stage.c[id_column]).where(stage.c[OK].is_(False))
        repeated = (sa.select(sa.literal(1)).where(stage.c[id_column].in_(rejected))
                    .group_by(stage.c[id_column]).having(sa.func.count() > 1).limit(1))
        if connection.execute(repeated).first() is not None:
            return False
    rows = sa.select(*(stage.c[c] for c in plan.column_names),
                     sa.literal(source.file_id, sa.Text), sa.literal(source.revision, sa.Text),
                     sa.literal(now, sa.DateTime(timezone=True)),
                     sa.literal(now, sa.DateTime(timezone=True))).where(stage.c[OK].is_(True))
    if not staging.ids_in_order:  # the table's id index then grows at one end (see below)
        rows = rows.order_by(stage.c[id_column])
    try:
        inserted = connection.execute(records.insert().from_select(
            [*plan.column_names, SOURCE_FILE_ID, SOURCE_REVISION, FIRST_INGESTED_AT,
             LAST_CHANGED_AT], rows)).rowcount
    except sa.exc.IntegrityError:
        return False
    report.inserted = report.table_rows = inserted
    return True


def _become_the_feeds_writer(connection, plan: FeedPlan, source: SourceFile) -> None:
    """Take the feed's write lock, and clear the file's rejections from an earlier run."""
    key = (rejections_table.c.feed == source.feed) & (rejections_table.c.file_id == source.file_id) \
        & (rejections_table.c.revision == source.revision)
    # One writer per feed from here on: PostgreSQL by an advisory lock on the feed, SQLite by
    # this first write (the database's write lock, held to the end of the transaction).
    if connection.dialect.name == "postgresql":
        connection.execute(sa.select(sa.func.pg_advisory_xact_lock(
            sa.func.hashtext(f"credflow.drive_feed.{plan.name}"))))
    connection.execute(rejections_table.delete().where(key))


def _unstage_rows_not_to_write(connection, plan: FeedPlan, tables: FeedTables, staging: Staging,
                               source: SourceFile, report: IngestReport) -> None:
    """Rejected rows, and rows a newer file of the feed already wrote, leave the stage."""
    stage = staging.rows
    if not staging.ids_unique:
        _reject_duplicate_ids(connection, plan, staging)
    if staging.rejected_rows_with_id:
        connection.execute(stage.delete().where(stage.c[OK].is_(False)))
    report.kept_newer = _drop_rows_a_newer_file_wrote(connection, plan, tables, stage, source)


def _upsert_staged_rows(connection, plan: FeedPlan, tables: FeedTables, stage,
                        source: SourceFile, report: IngestReport, run_id, now) -> None:
    """History for the changed rows, then the changed rows updated and the new ones inserted;
    counts what was inserted, updated and left unchanged."""
    records = tables.records
    # New rows are counted as the table's growth (this transaction is the feed's only writer):
    # cheaper than a second join of the staged rows against the table.
    count_records = sa.select(sa.func.count()).select_from(records)
    rows_before = connection.execute(count_records).scalar_one()
    staged = connection.execute(sa.select(sa.func.count()).select_from(stage)).scalar_one()

    same = sa.and_(sa.true(), *(records.c[c].is_not_distinct_from(stage.c[c])
                                for c in plan.value_columns))
    report.updated, report.history_rows = _write_history(
        connection, plan, tables, stage, same, source, run_id, now)

    # Changed rows, then new ones, as two plain statements. An upsert (`ON CONFLICT DO
    # UPDATE`) was measured slower on both databases: PostgreSQL inserts each row
    # speculatively (10.1 s per 1M rows against 4.8 s for a plain insert), and SQLite tries
    # every unchanged row (2.8 s per 1M against 0.9 s). No row can appear between the two
    # statements: this transaction is the feed's only writer.
    if report.updated:
        _update_changed_rows(connection, plan, records, stage, same, source, now)
    _insert_new_rows(connection, plan, records, stage, source, now,
                     table_was_empty=not rows_before)
    report.table_rows = connection.execute(count_records).scalar_one()
    report.inserted = report.table_rows - rows_before
    report.unchanged = staged - report.inserted - report.updated


def _update_changed_rows(connection, plan: FeedPlan, records, stage, same, source: SourceFile,
                         now) -> None:
    id_column = plan.id_column
    connection.execute(
        records.update()
        .where(records.c[id_column] == stage.c[id_column], ~same)
        .values({**{c: stage.c[c] for c in plan.value_columns},
                 SOURCE_FILE_ID: source.file_id, SOURCE_REVISION: source.revision,
                 LAST_CHANGED_AT: now}))


def _insert_new_rows(connection, plan: FeedPlan, records, stage, source: SourceFile, now, *,
                     table_was_empty: bool) -> None:
    id_column = plan.id_column
    new_rows = (
        sa.select(*(stage.c[c] for c in plan.column_names),
                  sa.literal(source.file_id, sa.Text), sa.literal(source.revision, sa.Text),
                  sa.literal(now, sa.DateTime(timezone=True)),
                  sa.literal(now, sa.DateTime(timezone=True)))
        # In id order, the table's id index grows at one end instead of everywhere: measured,
        # 1.6 times as fast for a file in random id order, 7 % slower for one already sorted.
        .order_by(stage.c[id_column])
    )
    if not table_was_empty:  # into an empty table (a first load), every staged row is new
        in_table = sa.select(records.c[id_column]).where(
            records.c[id_column] == stage.c[id_column])
        new_rows = new_rows.where(~in_table.exists())
    connection.execute(records.insert().from_select(
        [*plan.column_names, SOURCE_FILE_ID, SOURCE_REVISION, FIRST_INGESTED_AT, LAST_CHANGED_AT],
        new_rows))


def rule_of(column: str, reason: str) -> str:
    """`column: rule`, what rows are counted by (`IngestReport.reasons`): a duplicate's reason
    names the row it repeats, its rule does not."""
    return f"{column}: {reason.split(' (also row')[0]}"


def _record_rejections(connection, rejects, source: SourceFile, report: IngestReport,
                       sample_size) -> None:
    """The file's rejected rows into the feed's rejections (for the outbound summary), and
    their count, a sample and the reasons into the report (no values: those may be personal
    data)."""
    connection.execute(rejections_table.insert().from_select(
        ["feed", "file_id", "revision", "row_number", "column_name", "reason", "value"],
        sa.select(sa.literal(source.feed, sa.Text), sa.literal(source.file_id, sa.Text),
                  sa.literal(source.revision, sa.Text), rejects.c[ROW], rejects.c.column_name,
                  rejects.c.reason, rejects.c.value)
        .order_by(rejects.c[ROW], rejects.c.column_name),
    ))
    report.rejected = connection.execute(
        sa.select(sa.func.count(sa.distinct(rejects.c[ROW])))).scalar_one()
    report.rejection_sample = [
        (row[0], row[1], row[2]) for row in connection.execute(
            sa.select(rejects.c[ROW], rejects.c.column_name, rejects.c.reason)
            .order_by(rejects.c[ROW], rejects.c.column_name).limit(sample_size))
    ]
    reasons: dict[str, int] = {}
    for column, reason, count in connection.execute(
            sa.select(rejects.c.column_name, rejects.c.reason, sa.func.count())
            .group_by(rejects.c.column_name, rejects.c.reason)):
        kind = rule_of(column, reason)
        reasons[kind] = reasons.get(kind, 0) + count
    report.reasons = dict(sorted(reasons.items(), key=lambda item: (-item[1], item[0])))


def _record_file(connection, insert, source: SourceFile, report: IngestReport, run_id,
                 now) -> None:
    """The file revision and its counts, replacing those of an earlier run of it."""
    values = {
        "file_name": source.name, "mime_type": source.mime_type,
        "modified_time": source.modified_time, "rows_read": report.rows_read,
        "blank_rows": report.blank_rows, "inserted": report.inserted, "updated": report.updated,
        "unchanged": report.unchanged, "rejected": report.rejected,
        "kept_newer": report.kept_newer,
        "history_rows": report.history_rows, "processed_at": now, "run_id": run_id,
        "notes": "\n".join(report.notes) or None,
    }
    connection.execute(
        insert(files_table)
        .values(feed=source.feed, file_id=source.file_id, revision=source.revision, **values)
        .on_conflict_do_update(index_elements=["feed", "file_id", "revision"], set_=values)
    )


def _drop_rows_a_newer_file_wrote(connection, plan: FeedPlan, tables: FeedTables, stage,
                                  source: SourceFile) -> int:
    """Unstage the rows whose table row came from a file of the feed modified after this one;
    returns how many.

    The newest file wins, whatever order files are processed in: a reparse of an upload (or a
    late run of it) must not undo the correction uploaded after it, nor write history for the
    round trip. Files are ordered by Drive's modifiedTime (RFC 3339 in UTC, so ordered as
    text); a file without one does not outrank anything.
    """
    if not source.modified_time:
        return 0
    newer_file = sa.select(files_table.c.file_id).where(
        files_table.c.feed == source.feed, files_table.c.modified_time > source.modified_time)
    if connection.execute(newer_file.limit(1)).first() is None:
        return 0  # the usual case, the newest file: no per-row lookup on the hot path
    records = tables.records
    written_by_newer_file = (
        sa.select(sa.literal(1))
        .select_from(records.join(files_table, sa.and_(
            files_table.c.feed == source.feed,
            files_table.c.file_id == records.c[SOURCE_FILE_ID],
            files_table.c.revision == records.c[SOURCE_REVISION])))
        .where(records.c[plan.id_column] == stage.c[plan.id_column],
               files_table.c.modified_time > source.modified_time)
        .correlate(stage)
        .exists()
    )
    return connection.execute(stage.delete().where(written_by_newer_file)).rowcount


def _reject_duplicate_ids(connection, plan: FeedPlan, staging: Staging) -> None:
    """An id on more than one row of the file: every one of those rows is rejected (which of
    them is right cannot be told), naming the other rows."""
    stage, id_column = staging.rows, plan.id_column
    duplicated = (sa.select(stage.c[id_column]).group_by(stage.c[id_column])
                  .having(sa.func.count() > 1))
    rows = connection.execute(
        sa.select(stage.c[ROW], stage.c[id_column])
        .where(stage.c[id_column].in_(duplicated))
        .order_by(stage.c[id_column], stage.c[ROW])
    )
    batch: list[dict] = []
    for value, group in itertools.groupby(rows, key=lambda row: row[1]):
        numbers = [row[0] for row in group]
        for number in numbers:
            others = [n for n in numbers if n != number]
            shown = ", ".join(str(n) for n in others[:10]) + (" …" if len(others) > 10 else "")
            batch.append({ROW: number, "column_name": id_column,
                          "reason": f"duplicate {id_column} in this file (also row {shown})",
                          "value": str(value)})
    # Written after reading: a cursor and writes on one SQLite connection do not mix well.
    for start in range(0, len(batch), PAGE_ROWS):
        connection.execute(staging.rejections.insert(), batch[start:start + PAGE_ROWS])
    if batch:
        connection.execute(stage.delete().where(stage.c[id_column].in_(duplicated)))


def _write_history(connection, plan, tables: FeedTables, stage, same, source, run_id, now):
    """History rows for rows whose tracked columns changed, page by page; returns (rows that
    differ in any column, history rows written)."""
    records, id_column = tables.records, plan.id_column
    value_columns = plan.value_columns
    if not value_columns:
        return 0, 0
    tracked = set(plan.tracked)
    query = (
        sa.select(stage.c[ROW], stage.c[id_column],
                  *(stage.c[c] for c in value_columns),
                  *(records.c[c].label(f"old__{c}") for c in value_columns))
        .join(records, records.c[id_column] == stage.c[id_column])
        .where(~same)
        .order_by(stage.c[ROW])
        .limit(PAGE_ROWS)
    )
    changed_rows = history_rows = 0
    last = -1
    while True:
        page = connection.execute(query.where(stage.c[ROW] > last)).mappings().all()
        if not page:
            return changed_rows, history_rows
        last = page[-1][ROW]
        changed_rows += len(page)
        entries = []
        for row in page:
            changes = {c: {"from": _jsonable(row[f"old__{c}"]), "to": _jsonable(row[c])}
                       for c in value_columns
                       if c in tracked and row[f"old__{c}"] != row[c]}
            if changes:
                entries.append({
                    id_column: row[id_column], "changed_columns": ",".join(changes),
                    "changes": json.dumps(changes, ensure_ascii=False),
                    "source_file_id": source.file_id, "source_file_name": source.name,
                    "source_revision": source.revision, "run_id": run_id, "changed_at": now,
                })
        if entries:
            connection.execute(tables.history.insert(), entries)
            history_rows += len(entries)


def _jsonable(value):
    if value is None or isinstance(value, (str, int, float, bool)):
        return value
    if hasattr(value, "isoformat"):
        return value.isoformat()
    return str(value)
