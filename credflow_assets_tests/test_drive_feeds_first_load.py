"""A feed's first file into its empty table: it skips the stage (PostgreSQL copies the rows
straight into the table, SQLite inserts them without the stage's id index), and must end exactly
as a file that goes through the stage does: the same rejections and counts, duplicates rejected
whichever rows they are on, nothing written when the file fails part-way."""

from __future__ import annotations

import datetime as dt

import pandas as pd
import pandera.pandas as pandera
import pytest
import sqlalchemy as sa
from pandera.typing import Series

from credflow_assets.config import FeedConfig, load_config
from credflow_assets.drive_feeds.ingest import SourceFile
from credflow_assets.drive_feeds import schemas
from credflow_assets.drive_feeds.first_load import FirstLoad
from credflow_assets.drive_feeds.sheets import SheetError
from credflow_assets.drive_feeds.store import FeedTables, files_table, rejections_table
from credflow_assets.drive_feeds.validation import build_plan
from credflow_assets.local.seed_drive_feeds import sample_rows, write_csv
from credflow_assets.resources.sql import create_engine
from credflow_assets_tests.conftest import DEFAULT_CONFIG
from credflow_assets_tests.feed_ingest import assert_nothing_written, engine_for, ingest

NSSS = next(feed for feed in load_config(DEFAULT_CONFIG).feeds if feed.name == "nsss")
BACKENDS = ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)]


def _rejections(engine, revision: str) -> list[tuple]:
    with engine.connect() as connection:
        return [tuple(row) for row in connection.execute(
            sa.select(rejections_table.c.row_number, rejections_table.c.column_name,
                      rejections_table.c.reason, rejections_table.c.value)
            .where(rejections_table.c.revision == revision)
            .order_by(rejections_table.c.rejection_id))]


def _stored(engine, feed: FeedConfig) -> dict:
    records = FeedTables(build_plan(feed)).records
    with engine.connect() as connection:
        return {row.nss_id: row for row in connection.execute(sa.select(records))}


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_first_load_rejects_and_counts_as_the_stage_does(backend, tmp_path, request):
    """The same file twice: first into the empty table (no stage), then as a new revision of it
    (through the stage, every good row unchanged). Rejections, their order, the report's
    sample and reasons must be the same."""
    engine = engine_for(backend, tmp_path, request)
    rows = sample_rows(NSSS, 14)
    rows[1]["email"] = "not an address"  # sheet row 3
    rows[4]["date_of_birth"] = "31/02/1990"  # row 6: no such day
    rows[5]["postcode"] = "12345"  # row 7, in the second chunk of 4
    rows[5]["email"] = "also not"
    rows[9]["first_name"] = ""  # row 11, third chunk
    path = write_csv(tmp_path / "first.csv", NSSS, rows)
    try:
        first = ingest(engine, NSSS, path, "r1")
        again = ingest(engine, NSSS, path, "r2")
        first_rejections, again_rejections = _rejections(engine, "r1"), _rejections(engine, "r2")
        stored = _stored(engine, NSSS)
        with engine.connect() as connection:
            counts = {row.revision: row for row in connection.execute(sa.select(files_table))}
    finally:
        engine.dispose()
    assert (first.inserted, first.rejected, first.rows_read) == (10, 4, 14)
    assert (again.inserted, again.unchanged, again.rejected) == (0, 10, 4)
    assert first_rejections == again_rejections
    assert [(row, column) for row, column, _, _ in first_rejections] == [
        (3, "email"), (6, "date_of_birth"), (7, "email"), (7, "postcode"), (11, "first_name")]
    assert first.rejection_sample == again.rejection_sample
    assert first.reasons == again.reasons
    assert counts["r1"].inserted == 10 and counts["r1"].history_rows == 0
    assert len(stored) == 10 and rows[1]["nss_id"] not in stored
    assert {row.source_revision for row in stored.values()} == {"r1"}
    assert isinstance(stored[rows[0]["nss_id"]].date_of_birth, dt.date)


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("bad_row", [False, True], ids=["good-rows", "a-rejected-row"])
def test_an_id_twice_in_a_first_file_rejects_every_row_with_it(backend, bad_row, tmp_path,
                                                               request):
    """Whether the repeat is on two good rows (the table's key refuses it) or on a row that was
    rejected anyway, every row with that id is rejected, naming the other."""
    engine = engine_for(backend, tmp_path, request)
    rows = sample_rows(NSSS, 10)
    rows[8]["nss_id"] = rows[2]["nss_id"]  # sheet rows 4 and 10, in the first and third chunks
    if bad_row:
        rows[8]["email"] = "not an address"
    try:
        report = ingest(engine, NSSS, write_csv(tmp_path / "twice.csv", NSSS, rows), "r1")
        rejections = _rejections(engine, "r1")
        stored = _stored(engine, NSSS)
    finally:
        engine.dispose()
    assert (report.inserted, report.rejected) == (8, 2)
    assert ((4, "nss_id", "duplicate nss_id in this file (also row 10)", rows[2]["nss_id"])
            in rejections)
    assert ((10, "nss_id", "duplicate nss_id in this file (also row 4)", rows[2]["nss_id"])
            in rejections)
    assert rows[2]["nss_id"] not in stored and len(stored) == 8


@pytest.mark.parametrize("backend", BACKENDS)
def test_a_first_file_that_fails_part_way_leaves_the_tables_as_they_were(backend, tmp_path,
                                                                         request):
    engine = engine_for(backend, tmp_path, request)
    rows = sample_rows(NSSS, 12)
    rows[1]["email"] = "not an address"  # a rejection written before the file fails
    path = write_csv(tmp_path / "broken.csv", NSSS, rows)
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('N9,"a quote that never closes\n')
    try:
        with pytest.raises(SheetError, match="row 14 opens a quoted cell that never closes"):
            ingest(engine, NSSS, path, "r1")  # three chunks of 4 written first
        assert_nothing_written(engine, NSSS)
    finally:
        engine.dispose()


@pytest.mark.postgres
def test_a_table_changed_by_hand_is_loaded_through_the_stage(tmp_path, postgres_url):
    """A column whose type is not the model's (here a timestamp for a date) is not copied in
    binary: the stage's insert lets PostgreSQL cast the value."""
    engine = create_engine(postgres_url)
    rows = sample_rows(NSSS, 5)
    try:
        FeedTables(build_plan(NSSS)).ensure(engine)
        with engine.begin() as connection:
            connection.exec_driver_sql(
                f"ALTER TABLE {NSSS.table} ALTER COLUMN date_of_birth TYPE timestamp")
        report = ingest(engine, NSSS, write_csv(tmp_path / "first.csv", NSSS, rows), "r1")
        with engine.connect() as connection:
            born = connection.exec_driver_sql(
                f"SELECT date_of_birth FROM {NSSS.table} WHERE nss_id = %(id)s",
                {"id": rows[0]["nss_id"]}).scalar_one()
    finally:
        engine.dispose()
    assert report.inserted == 5
    assert born == dt.datetime.strptime(rows[0]["date_of_birth"], "%d/%m/%Y")


class EveryKindRecord(pandera.DataFrameModel):
    """A feed with a column of each kind the model's tables have, all but the id nullable."""

    item_id: Series[str] = pandera.Field(nullable=False, unique=True)
    note: Series[str] = pandera.Field(nullable=True)
    born: Series[pandera.DateTime] = pandera.Field(nullable=True)
    seen: Series[pandera.DateTime] = pandera.Field(nullable=True)
    count: Series[pd.Int64Dtype] = pandera.Field(nullable=True, coerce=True)
    score: Series[float] = pandera.Field(nullable=True, coerce=True)
    active: Series[pd.BooleanDtype] = pandera.Field(nullable=True)  # read by the engine

    class Config:
        strict = True


@pytest.mark.postgres
def test_a_first_load_writes_every_kind_of_value_as_postgresql_reads_it(tmp_path, postgres_url,
                                                                        monkeypatch):
    """Text (quotes, a line break, empty), date, timestamp, bigint, double precision, boolean,
    NULLs in each, and the engine's columns, as they land in PostgreSQL."""
    monkeypatch.setattr(schemas, "EveryKindRecord", EveryKindRecord, raising=False)
    feed = FeedConfig.model_validate({**NSSS.model_dump(by_alias=True), "name": "every_kind",
                                      "table": "every_kind", "schema": "EveryKindRecord",
                                      "id_column": "item_id", "tracked_columns": [],
                                      "date_formats": {"born": "%d/%m/%Y"}})
    path = tmp_path / "every_kind.csv"
    path.write_text(
        "item_id,note,born,seen,count,score,active\n"
        'a,plain,02/01/2020,2020-01-02T03:04:05.000006,1,1.5,true\n'
        "b,,,,,,\n"
        'c,"Zoë, ""quoted""\nand a line",31/12/1901,1950-06-01,-4611686018427387904,-0.25,false\n'
        "d,x,01/01/2262,1999-12-31 23:59:59,0,1e300,True\n", encoding="utf-8")
    engine = create_engine(postgres_url)
    plan = build_plan(feed)
    try:
        tables = FeedTables(plan)
        tables.ensure(engine)
        with engine.connect() as connection, connection.begin() as transaction:
            # The table's types are the ones the binary copy writes: this file does not fall
            # back to the stage.
            copies_in_binary = FirstLoad(connection, plan, tables,
                                         SourceFile(feed.name, "file-1", "r1", path.name),
                                         dt.datetime.now(dt.timezone.utc), 5).start()
            transaction.rollback()
        before = dt.datetime.now(dt.timezone.utc)
        report = ingest(engine, feed, path, "r1")
        after = dt.datetime.now(dt.timezone.utc)
        with engine.connect() as connection:
            stored = connection.exec_driver_sql(
                "SELECT item_id, note, born, seen, count, score, active, source_file_id, "
                "source_revision, first_ingested_at = last_changed_at, "
                "pg_typeof(born)::text, pg_typeof(seen)::text FROM every_kind ORDER BY item_id"
            ).all()
            ingested_at = connection.exec_driver_sql(
                "SELECT DISTINCT first_ingested_at FROM every_kind").scalars().all()
    finally:
        engine.dispose()
    assert copies_in_binary
    assert (report.inserted, report.rejected, report.history_rows) == (4, 0, 0)
    assert len(ingested_at) == 1 and before <= ingested_at[0] <= after
    kinds = ("date", "timestamp without time zone")
    assert [tuple(row) for row in stored] == [
        ("a", "plain", dt.date(2020, 1, 2), dt.datetime(2020, 1, 2, 3, 4, 5, 6), 1, 1.5, True,
         "file-1", "r1", True, *kinds),
        ("b", None, None, None, None, None, None, "file-1", "r1", True, *kinds),
        ("c", 'Zoë, "quoted"\nand a line', dt.date(1901, 12, 31), dt.datetime(1950, 6, 1),
         -2**62, -0.25, False, "file-1", "r1", True, *kinds),
        ("d", "x", dt.date(2262, 1, 1), dt.datetime(1999, 12, 31, 23, 59, 59), 0, 1e300, True,
         "file-1", "r1", True, *kinds),
    ]


@pytest.mark.parametrize("backend", BACKENDS)
def test_yes_no_cells_are_read_as_booleans_and_anything_else_is_rejected(backend, tmp_path,
                                                                         request, monkeypatch):
    """A boolean column as people and spreadsheets write it, on the first load and, for a
    corrected file, through the stage."""
    monkeypatch.setattr(schemas, "EveryKindRecord", EveryKindRecord, raising=False)
    feed = FeedConfig.model_validate({**NSSS.model_dump(by_alias=True), "name": "every_kind",
                                      "table": "every_kind", "schema": "EveryKindRecord",
                                      "id_column": "item_id", "tracked_columns": [],
                                      "date_formats": {}})
    header = "item_id,note,born,seen,count,score,active\n"
    cells = ["TRUE", " no ", "1", "y", "False", "", "maybe", "2"]
    first = tmp_path / "first.csv"
    first.write_text(header + "".join(f"i{n},,,,,,{cell}\n" for n, cell in enumerate(cells)),
                     encoding="utf-8")
    corrected = tmp_path / "corrected.csv"
    corrected.write_text(header + "i0,,,,,,f\ni6,,,,,,Yes\n", encoding="utf-8")
    engine = engine_for(backend, tmp_path, request)
    records = FeedTables(build_plan(feed)).records
    try:
        loaded = ingest(engine, feed, first, "r1")
        rejected = _rejections(engine, "r1")
        again = ingest(engine, feed, corrected, "r2")
        with engine.connect() as connection:
            active = dict(connection.execute(sa.select(records.c.item_id, records.c.active)).all())
    finally:
        engine.dispose()
    assert (loaded.inserted, loaded.rejected) == (6, 2)
    reason = "not true or false (true/false, yes/no or 1/0)"
    assert rejected == [(8, "active", reason, "maybe"), (9, "active", reason, "2")]
    assert (again.inserted, again.updated) == (1, 1)
    assert active == {"i0": False, "i1": False, "i2": True, "i3": True, "i4": False, "i5": None,
                      "i6": True}
