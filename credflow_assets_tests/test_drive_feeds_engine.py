"""The Drive feeds engine without Drive: the sensor's cursor, sheet reading, validation and the
bulk upsert with change history, against SQLite files and (marked `postgres`) PostgreSQL."""

from __future__ import annotations

import datetime as dt
import json
import tempfile
from datetime import timedelta
from pathlib import Path

import openpyxl
import pandas as pd
import dagster as dg
import pytest
import sqlalchemy as sa

from credflow_assets import drive_feeds
from credflow_assets.config import FeedConfig, load_config
from credflow_assets.drive_feeds.csv_text import detect_text
from credflow_assets.drive_feeds.dates import parse_dates
from credflow_assets.drive_feeds.ingest import HeaderMismatch, SourceFile, ingest_file
from credflow_assets.drive_feeds.sensors import FeedCursor, inbound_query, select_new_files
from credflow_assets.drive_feeds.sheets import (
    GOOGLE_SHEET_MIME,
    SheetError,
    SheetReader,
    check_header,
    file_kind,
    revision_of,
)
from credflow_assets.drive_feeds.sheet_errors import column_ranges
from credflow_assets.drive_feeds.store import (
    FeedTables,
    processed_file,
    rejections_table,
)
from credflow_assets.drive_feeds.summary import parse_summary, write_summary
from credflow_assets.drive_feeds.validation import FeedConfigError, build_plan, validate_chunk
from credflow_assets.local.seed_drive_feeds import sample_rows, write_csv
from credflow_assets.resources.from_config import build_resources
from credflow_assets.resources.sql import create_engine
from credflow_assets_tests.conftest import DEFAULT_CONFIG
from credflow_assets_tests.feed_ingest import assert_nothing_written, engine_for, ingest

CONFIG = load_config(DEFAULT_CONFIG)
NSSS = next(feed for feed in CONFIG.feeds if feed.name == "nsss")
LOOKBACK = timedelta(minutes=5)


def _file(file_id: str, modified: str) -> dict:
    return {"id": file_id, "modifiedTime": modified, "md5Checksum": f"md5-{file_id}",
            "mimeType": "text/csv", "name": "x.csv"}


# -- the sensor's cursor ----------------------------------------------------------------------------

def test_files_with_the_same_modified_time_are_neither_missed_nor_repeated():
    t = "2024-05-01T10:00:00.000Z"
    listing = [_file("a", t), _file("b", t), _file("c", t), _file("d", "2024-05-01T10:00:01.000Z")]

    first, cursor = select_new_files(listing, FeedCursor(), limit=2, lookback=LOOKBACK)
    assert [f["id"] for f in first] == ["a", "b"]
    assert cursor.newest == t
    # The next tick lists `modifiedTime >= newest - lookback` again: a, b are known by time.
    second, cursor = select_new_files(listing, cursor, limit=2, lookback=LOOKBACK)
    assert [f["id"] for f in second] == ["c", "d"]
    third, cursor = select_new_files(listing, cursor, limit=2, lookback=LOOKBACK)
    assert third == []
    # A later upload at the very same millisecond as the newest is still new.
    late = [*listing, _file("e", "2024-05-01T10:00:01.000Z")]
    fourth, cursor = select_new_files(late, cursor, limit=10, lookback=LOOKBACK)
    assert [f["id"] for f in fourth] == ["e"]
    # A new revision of a known file changes its modifiedTime: it is new again.
    changed = [_file("a", "2024-05-01T10:02:00.000Z")]
    fifth, cursor = select_new_files(changed, cursor, limit=10, lookback=LOOKBACK)
    assert [f["id"] for f in fifth] == ["a"]


def test_the_cursor_forgets_what_is_older_than_the_lookback_and_survives_json():
    old, new = "2024-05-01T10:00:00.000Z", "2024-05-01T11:00:00.000Z"
    _, cursor = select_new_files([_file("a", old), _file("b", new)], FeedCursor(), 10, LOOKBACK)
    assert cursor.seen == {"b": new}
    restored = FeedCursor.from_json(cursor.to_json())
    assert restored == cursor
    assert restored.window_start(LOOKBACK) == "2024-05-01T10:55:00.000Z"
    query = inbound_query("folder'1", restored.window_start(LOOKBACK))
    assert query.startswith("'folder\\'1' in parents and trashed = false")
    assert query.endswith("modifiedTime >= '2024-05-01T10:55:00.000Z'")


def test_revisions_and_kinds():
    assert revision_of({"md5Checksum": "abc", "mimeType": "text/csv"}) == "abc"
    sheet = {"mimeType": GOOGLE_SHEET_MIME, "modifiedTime": "2024-05-01T10:00:00.123Z"}
    assert revision_of(sheet) == "mt-20240501T100000123Z"
    assert revision_of({"mimeType": "application/vnd.google-apps.document",
                        "modifiedTime": "2024-05-01T10:00:00.123Z"}) is None
    assert file_kind("a.CSV", "application/octet-stream") == "csv"
    assert file_kind("Residents", GOOGLE_SHEET_MIME) == "google_sheet"
    with pytest.raises(SheetError, match="save the sheet as .xlsx or CSV"):
        file_kind("old.xls", "application/vnd.ms-excel")
    with pytest.raises(SheetError, match="unsupported file type .pdf"):
        file_kind("scan.pdf", "application/pdf")


# -- reading sheets -------------------------------------------------------------------------------

def test_headers_are_matched_as_people_write_them():
    names, problem = check_header(["NSS ID", " date of birth ", "", "Extra"], ["nss_id",
                                                                               "date_of_birth"])
    assert names == ["nss_id", "date_of_birth", None, "extra"]
    assert problem.missing == [] and problem.unexpected == ["Extra"]
    _, problem = check_header(["nss_id", "NSS ID"], ["nss_id", "date_of_birth"])
    assert problem.describe() == "missing column(s) date_of_birth; repeated column(s) nss_id"


def test_csv_rows_are_numbered_as_in_a_spreadsheet(tmp_path):
    path = tmp_path / "a.csv"
    path.write_bytes('\ufeffID,Name,\n1,"Ann\nMarie",\n\n2, Bob ,\n,,\n3,Núñez,\n'.encode())
    reader = SheetReader(path, "csv")
    names, problem = check_header(reader.header, ["id", "name"])
    assert problem is None
    chunks = list(reader.chunks(names, 2))
    rows = {n: tuple(None if pd.isna(v) else v for v in row)
            for chunk in chunks for n, row in zip(chunk.index, chunk.astype(object).values)}
    assert rows[2] == ("1", "Ann\nMarie")
    assert rows[4] == ("2", "Bob")  # row 3 is the blank line
    assert rows[6] == ("3", "Núñez")


def test_windows_1252_and_malformed_csv(tmp_path):
    path = tmp_path / "excel.csv"
    path.write_bytes("ID,Name\n1,José\n".encode("cp1252"))
    reader = SheetReader(path, "csv")
    assert reader.encoding == "cp1252"
    assert list(reader.chunks(["id", "name"], 10))[0].loc[2, "name"] == "José"
    path.write_text("ID,Name\n1,Ann\n2,Lee, Bob\n")
    with pytest.raises(SheetError, match="row 3 has 3 fields, the header has 2"):
        list(SheetReader(path, "csv").chunks(["id", "name"], 10))
    for header_only in ("ID,Name\n", "ID,Name"):
        path.write_text(header_only)
        assert list(SheetReader(path, "csv").chunks(["id", "name"], 10)) == []
    path.write_text("")
    with pytest.raises(SheetError, match=r"^the file is empty \(0 bytes\)"):
        SheetReader(path, "csv")
    path.write_text("\nID,Name\n1,Ann\n")
    with pytest.raises(SheetError, match="^the file has no header row: row 1 is empty"):
        SheetReader(path, "csv")


def _rows(reader: SheetReader, names, chunk_rows: int) -> dict[int, tuple]:
    return {number: tuple(None if pd.isna(value) else value for value in row)
            for chunk in reader.chunks(names, chunk_rows)
            for number, row in zip(chunk.index, chunk.astype(object).values)}


@pytest.mark.parametrize("chunk_rows", [1, 2, 3, 100])
def test_a_row_with_fewer_fields_reads_the_missing_ones_as_empty_in_its_place(tmp_path, chunk_rows):
    # Some tools drop a row's trailing empty fields. Arrow hands such rows over separately;
    # they must come back in their place, wherever the chunks happen to end.
    path = tmp_path / "short.csv"
    path.write_text("ID,Name,City\n1,Ann,Leeds\n2,Bob\n3,Cy,York\n4\n\n5,Di,Hull\n6,\"Ed\nJr\"\n")
    rows = _rows(SheetReader(path, "csv"), ["id", "name", "city"], chunk_rows)
    assert rows == {2: ("1", "Ann", "Leeds"), 3: ("2", "Bob", None), 4: ("3", "Cy", "York"),
                    5: ("4", None, None), 6: (None, None, None), 7: ("5", "Di", "Hull"),
                    8: ("6", "Ed\nJr", None)}


def test_a_value_under_an_empty_header_cell_fails_the_file_naming_the_cell(tmp_path):
    path = tmp_path / "sheet.csv"
    # Empty columns without a header are what spreadsheet tools leave behind: ignored.
    path.write_text("ID,Name,,\n1,Ann,,\n2,Bob,, \n")
    assert _rows(SheetReader(path, "csv"), ["id", "name", None, None], 10) == {
        2: ("1", "Ann"), 3: ("2", "Bob")}
    # A value typed under no header would vanish: the file is refused, naming the cell.
    path.write_text("ID,Name,,\n1,Ann,,\n2,Bob,,kept?\n")
    with pytest.raises(SheetError, match="row 3 has a value in column D, which has no header"):
        _rows(SheetReader(path, "csv"), ["id", "name", None, None], 1)
    path.write_text("ID,,Name\n1,,Ann\n2,x\n")  # a short row with the value
    with pytest.raises(SheetError, match="row 3 has a value in column B, which has no header"):
        _rows(SheetReader(path, "csv"), ["id", None, "name"], 10)
    workbook = openpyxl.Workbook()
    workbook.active.append(["ID", None, "Name"])
    workbook.active.append(["N1", None, "Ann"])
    workbook.active.append(["N2", "typed here", "Bob"])
    workbook.save(tmp_path / "sheet.xlsx")
    with pytest.raises(SheetError, match="row 3 has a value in column B, which has no header"):
        _rows(SheetReader(tmp_path / "sheet.xlsx", "xlsx"), ["id", None, "name"], 10)


@pytest.mark.parametrize("rows_after", [5, 60_000])
def test_a_quote_left_open_mid_file_fails_naming_its_row_not_its_data(tmp_path, rows_after):
    # Arrow would read the open quote as one cell running to the end of the file: the rows
    # after it would vanish into it. Short or long, the file is refused at that row.
    path = tmp_path / "open-quote.csv"
    lines = ["ID,Name"] + [f"{n},Resident {n:07d} of a long enough name"
                           for n in range(10 + rows_after)]
    lines[10] = '9,"Jane Private, never closed'
    path.write_text("\n".join(lines) + "\n")
    with pytest.raises(SheetError, match="^malformed CSV: row 11 opens a quoted cell that never "
                                         "closes") as failure:
        _rows(SheetReader(path, "csv"), ["id", "name"], 4)
    assert "Jane" not in str(failure.value) and "Resident" not in str(failure.value)


def test_a_stray_quote_inside_an_unquoted_cell_is_kept(tmp_path):
    path = tmp_path / "ruler.csv"
    path.write_text('ID,Name\n1,12" ruler\n2,"Bob ""The Builder"""\n')
    assert _rows(SheetReader(path, "csv"), ["id", "name"], 10) == {
        2: ("1", '12" ruler'), 3: ("2", 'Bob "The Builder"')}


@pytest.mark.parametrize(("date_format", "cells"), [
    ("%d/%m/%Y", ["01/02/2020", "1/2/2020", "29/02/2020", "31/02/2020", "29/02/2021",
                  "01/02/20", "01/02/12020", "01/02/2020x", " 01/02/2020", "32/01/2020",
                  "00/01/2020", "01/13/2020", "2020-01-02", "1/1/0999", "31/12/2262", "",
                  None, "+1/02/2020", "٠١/٠٢/٢٠٢٠", "001/02/2020"]),
    ("%Y%m%d", ["20200102", "2020112", "20201301", "20200230", "202001021", "2020-01-02"]),
    ("%Y-%m-%d", ["2020-01-02", "2020-1-2", "2020-01-02T00:00", "2020-02-30", "20-01-02"]),
    ("%m/%d/%Y", ["02/01/2020", "2/30/2020", "12/31/1999", "13/01/2020"]),
    ("%Y.%d.%m", ["2020.02.01", "2020.2.1", "2020.30.02", "2020.01.13", "20.01.02"]),
    ("(%d).%m.%Y", ["(01).02.2020", "01.02.2020"]),
    ("%d/%m/%Y %H:%M:%S", ["01/02/2020 23:59:60", "1/2/2020 3:4:5", "01/02/2020"]),  # pandas'
    ("%d %b %Y", ["01 Feb 2020", "31 Feb 2020"]),  # pandas' own
])
def test_dates_are_read_exactly_as_pandas_reads_them(date_format, cells):
    """Arrow's lenient strptime (31/02 → 2 March, `20` → the year 20) never shows through.
    (`%Y%m%d` and `%Y-%m-%d` go to pandas itself; `%Y.%d.%m`, year first, goes to Arrow.)"""
    column = pd.Series(cells, dtype="string[pyarrow]", index=range(2, 2 + len(cells)))
    expected = pd.to_datetime(column, format=date_format, errors="coerce")
    pd.testing.assert_series_equal(parse_dates(column, date_format), expected)


def test_a_row_1_that_is_not_a_header_is_never_quoted():
    expected = ["nss_id", "first_name", "date_of_birth"]
    # The header left out: row 1 is data, perhaps a resident's.
    _, problem = check_header(["N1", "Ann Smith", "02/01/1980"], expected)
    assert problem.not_a_header and problem.unexpected == []
    assert problem.describe().startswith("row 1 is not the header: none of its 3 cells")
    assert "Ann" not in problem.describe() and "1980" not in problem.describe()
    # Line breaks lost: a header run together with the rows after it.
    run_together = ["NSS ID", "First Name", "Date of Birth N1", "Ann", "02/01/1980 N2"] * 20
    _, problem = check_header(run_together, expected)
    assert problem.describe().startswith("row 1 is not the header: it has 100 cells for the "
                                         "feed's 3 columns")
    assert "Ann" not in problem.describe()
    # A header with another separator is column names: shown, with what to do.
    _, problem = check_header(["NSS ID\tFirst Name\tDate of Birth"], expected)
    assert problem.describe().startswith("row 1 reads as 1 column, 'NSS ID\\tFirst Name")
    assert "separates its columns with tabs" in problem.describe()
    # A real header's unexpected columns are named, ten at most.
    _, problem = check_header(["NSS ID", "First Name", *(f"Extra {n}" for n in range(12))],
                              expected)
    assert problem.describe() == (
        "missing column(s) date_of_birth; unexpected column(s) " +
        ", ".join(f"'Extra {n}'" for n in range(10)) + " and 2 more")


def test_the_text_of_a_csv_and_where_it_stops_being_utf8(tmp_path):
    path = tmp_path / "a.csv"
    text = "ID,Name\n" + "".join(f"{n},Ann\n" for n in range(1000))
    path.write_bytes(b"\xef\xbb\xbf" + text.encode() + "Müller\n".encode("cp1252"))
    at = 3 + len(text.encode()) + 1  # the ü, after the byte-order mark and the text
    for block_size in (7, 1 << 20):  # a block boundary anywhere, even inside a character
        found = detect_text(path, block_size=block_size)
        assert (found.encoding, found.first_non_utf8_byte) == ("cp1252", at)
    assert SheetReader(path, "csv").notes == [
        (f"read as Windows-1252 text: the file is not UTF-8 (from byte {at:,}); saving it as "
         "'CSV UTF-8' avoids the guess")]
    path.write_bytes("ID,Name\n1,Zoë\n".encode())  # ë's two bytes either side of byte 13
    assert detect_text(path, block_size=13).encoding == "utf-8-sig"
    path.write_bytes(b"ID,Name\n1,Ann\n2,\x81\n")
    with pytest.raises(SheetError, match=r"^the file is not UTF-8 text \(at byte 16\), nor "
                                         "Windows-1252: save it as 'CSV UTF-8'"):
        SheetReader(path, "csv")
    path.write_bytes(b"ID,Name\n1,Ann\n2,\"Bo\nb\x00\"\n")
    with pytest.raises(SheetError, match="^row 3, column B holds a NUL character"):
        SheetReader(path, "csv")


def _workbook(path: Path, sheets: dict[str, list[list]], hidden: tuple[str, ...] = ()) -> Path:
    workbook = openpyxl.Workbook()
    workbook.remove(workbook.active)
    for name, rows in sheets.items():
        sheet = workbook.create_sheet(name)
        for row in rows:
            sheet.append(row)
        if name in hidden:
            sheet.sheet_state = "hidden"
    workbook.save(path)
    return path


def test_a_workbooks_rows_are_on_its_one_sheet_with_data(tmp_path):
    rows = [["NSS ID", "Name"], ["N1", "Ann"]]
    # Not the first sheet: the only one with data is the feed's.
    path = _workbook(tmp_path / "a.xlsx", {"Sheet1": [], "Members": rows, "Blank": [[None]]})
    reader = SheetReader(path, "xlsx")
    assert reader.header == ["NSS ID", "Name"]
    assert _rows(reader, ["nss_id", "name"], 10) == {2: ("N1", "Ann")}
    assert reader.notes == [("sheet 'Members' read; 2 other sheets not read, having no data: "
                             "Sheet1, Blank")]
    # A hidden sheet of data (a template's lookup lists, say) is data on a second sheet.
    path = _workbook(tmp_path / "b.xlsx", {"Members": rows, "Lists": [["yes"], ["no"]]},
                     hidden=("Lists",))
    with pytest.raises(SheetError, match=r"^the workbook has data on 2 sheets \(Members, Lists "
                                         r"\(hidden\)\): keep the feed's rows on one sheet"):
        SheetReader(path, "xlsx")
    path = _workbook(tmp_path / "c.xlsx", {"Sheet1": [], "Sheet2": [["  "]]})
    with pytest.raises(SheetError, match="^the file has no header row: every sheet"):
        SheetReader(path, "xlsx")


def test_empty_columns_without_a_header_are_named_as_not_read(tmp_path):
    path = tmp_path / "a.csv"
    path.write_text("ID,,Name,,,\n1,,Ann,,,\n")
    reader = SheetReader(path, "csv")
    assert _rows(reader, ["id", None, "name", None, None, None], 10) == {2: ("1", "Ann")}
    assert reader.notes == ["4 columns without a header and without values not read: B, D to F"]
    assert column_ranges([0, 25, 26, 27, 29]) == "A, Z to AB, AD"


def test_xlsx_cells_become_text_in_the_feeds_formats(tmp_path):
    path = tmp_path / "a.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["NSS ID", "Date of Birth", "Phone"])
    sheet.append([123, dt.datetime(1980, 1, 2), 7700900123])
    sheet.append([None, None, None])
    sheet.append(["N2", "02/01/1981", 1.5])
    workbook.save(path)
    reader = SheetReader(path, "xlsx", {"date_of_birth": "%d/%m/%Y"})
    names, _ = check_header(reader.header, ["nss_id", "date_of_birth", "phone"])
    [chunk] = list(reader.chunks(names, 10))
    assert chunk.loc[2].tolist() == ["123", "02/01/1980", "7700900123"]
    assert chunk.loc[3].isna().all()
    assert chunk.loc[4].tolist() == ["N2", "02/01/1981", "1.5"]
    (tmp_path / "bad.xlsx").write_bytes(b"not a zip")
    with pytest.raises(SheetError, match="not a readable XLSX"):
        SheetReader(tmp_path / "bad.xlsx", "xlsx")


# -- plans and definitions --------------------------------------------------------------------------

def _feed(**changes) -> FeedConfig:
    data = NSSS.model_dump(by_alias=True)
    data.update(changes)
    return FeedConfig.model_validate(data)


def test_a_feed_that_does_not_fit_its_model_fails_when_the_definitions_load():
    with pytest.raises(FeedConfigError, match="'NoSuchRecord' is not a DataFrameModel"):
        build_plan(_feed(schema="NoSuchRecord"))
    with pytest.raises(FeedConfigError, match="id_column: 'ctas_id' is not a column of NsssRecord"):
        build_plan(_feed(id_column="ctas_id"))
    with pytest.raises(FeedConfigError, match="'postcode' is not a DateTime column"):
        build_plan(_feed(date_formats={"postcode": "%Y"}))
    with pytest.raises(FeedConfigError, match="tracked_columns: no such column"):
        build_plan(_feed(tracked_columns=["shoe_size"]))


def test_a_new_feed_is_config_plus_a_model():
    extra = _feed(name="nsss_backfill", table="nsss_backfill_records",
                  inbound_folder_id="in-2", outbound_folder_id="out-2")
    config = CONFIG.model_copy(update={"feeds": [*CONFIG.feeds, extra]})
    defs = dg.Definitions.merge(dg.Definitions(resources=build_resources(config)),
                                drive_feeds.build_defs(config))
    repository = defs.get_repository_def()
    keys = {key.to_user_string() for key in repository.asset_graph.get_all_asset_keys()}
    assert {"drive/inbound/nsss_backfill_sheet", "tables/nsss_backfill_records",
            "drive/outbound/nsss_backfill_summary"} <= keys
    assert "drive_feed_nsss_backfill_job" in repository.job_names
    assert "drive_feed_nsss_backfill_inbound_sensor" in {s.name for s in repository.sensor_defs}


# Each a cell that breaks one rule of every default feed's model (by column).
BROKEN_CELLS = [
    ("first_name", ""), ("email", "not an address"), ("postcode", "12345"),
    ("date_of_birth", "1850-01-01"), ("date_of_birth", "not a date"),
]


@pytest.mark.parametrize("feed", CONFIG.feeds, ids=lambda feed: feed.name)
def test_a_clean_chunk_skips_pandera_and_every_broken_rule_is_still_caught(tmp_path, feed):
    """A chunk whose rows all pass skips pandera's own run (`FeedPlan.quick_checks`): the
    result must be what pandera's run gives, for clean chunks and for each rule broken."""
    plan = build_plan(feed)
    assert plan.quick_checks, "the default feeds' models are simple enough for the quick path"
    rows = sample_rows(feed, 12)
    broken = [(column, value) for column, value in BROKEN_CELLS if column in rows[0]]
    broken.append((feed.id_column, "x" * 65))  # longer than an id may be
    for position, (column, value) in enumerate(broken):
        if column == "date_of_birth" and value[0].isdigit():
            value = dt.date(1850, 1, 1).strftime(feed.date_formats.get(column, "%Y-%m-%d"))
        rows[position * 2 + 1][column] = value  # the first chunk of 4 rows stays clean
    rows = rows[:1] + [dict(row) for row in sample_rows(feed, 3, start=100)] + rows[1:]
    path = write_csv(tmp_path / "rows.csv", feed, rows)
    reader = SheetReader(path, "csv", feed.date_formats)
    names, _ = check_header(reader.header, plan.column_names)
    results = {}
    for quick in (True, False):
        plan.quick_checks = quick
        results[quick] = [validate_chunk(plan, chunk) for chunk in reader.chunks(names, 4)]
    for fast, full in zip(results[True], results[False]):
        assert fast.rejections == full.rejections
        assert fast.rejected_ids == full.rejected_ids
        pd.testing.assert_frame_equal(fast.good, full.good)
    rejected_rules = {(r.column, r.reason) for result in results[True] for r in result.rejections}
    assert {column for column, _ in rejected_rules} == {column for column, _ in broken}
    assert not results[True][0].rejections and len(results[True][0].good) == 4


# -- ingest -------------------------------------------------------------------------------------------

def _scenario(engine, tmp_path, feed: FeedConfig):
    """A first file with duplicates across chunks, then a correction of one tracked and one
    untracked column."""
    rows = sample_rows(feed, 10)
    rows[7][feed.id_column] = rows[1][feed.id_column]  # the same id in chunks 1 and 2
    first = ingest(engine, feed, write_csv(tmp_path / "v1.csv", feed, rows), "r1")
    corrected = sample_rows(feed, 10)
    corrected[2]["address_line_1"] = "1 New Road"  # tracked
    corrected[3]["phone_number"] = "07700 900999"  # not tracked
    second = ingest(engine, feed, write_csv(tmp_path / "v2.csv", feed, corrected), "r2")
    again = ingest(engine, feed, write_csv(tmp_path / "v2.csv", feed, corrected), "r2")
    return rows, first, second, again


def _contents(engine, tables: FeedTables) -> tuple[list, list]:
    """The feed table's rows (by id) and its change history."""
    with engine.connect() as connection:
        rows = connection.execute(sa.select(tables.records)
                                  .order_by(tables.records.c.nss_id)).all()
        return rows, connection.execute(sa.select(tables.history)).all()


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_an_older_file_run_again_does_not_undo_a_newer_one(backend, tmp_path, request):
    """A reparse of an upload after its correction: the correction's rows stay, no history."""
    engine = engine_for(backend, tmp_path, request)
    feed = _feed(tracked_columns=["address_line_1"])
    plan = build_plan(feed)
    upload = write_csv(tmp_path / "upload.csv", feed, sample_rows(feed, 6))
    corrected_rows = sample_rows(feed, 8, variant=1)  # 6 rows changed, 2 new
    correction = write_csv(tmp_path / "correction.csv", feed, corrected_rows)

    def ingest(path: Path, file_id: str, modified: str):
        return ingest_file(engine, plan, SheetReader(path, "csv", feed.date_formats),
                           SourceFile(feed.name, file_id, f"rev-{file_id}", path.name,
                                      modified_time=modified),
                           chunk_rows=4, run_id=f"run-{file_id}")

    tables = FeedTables(plan)
    try:
        ingest(upload, "upload", "2026-11-01T09:00:00.000Z")
        corrected = ingest(correction, "correction", "2026-11-02T09:00:00.000Z")
        before, history_before = _contents(engine, tables)
        again = ingest(upload, "upload", "2026-11-01T09:00:00.000Z")
        after, history_after = _contents(engine, tables)
        with engine.connect() as connection:
            record = processed_file(connection, feed.name, "upload", "rev-upload")
    finally:
        engine.dispose()
    # The summary accounts for every row read: the kept ones too.
    counts = parse_summary(write_summary(tmp_path / "summary.txt", feed, record, []).read_text())[
        "counts"]
    assert counts["kept as a later-modified file wrote them"] == 6
    assert counts["rows read"] == sum(counts[label] for label in (
        "inserted", "updated", "unchanged", "kept as a later-modified file wrote them",
        "rejected"))
    assert (corrected.updated, corrected.inserted) == (6, 2)
    assert (again.kept_newer, again.updated, again.inserted) == (6, 0, 0)
    assert after == before and history_after == history_before
    assert {row.source_file_id for row in after} == {"correction"}
    assert after[0].address_line_1 == corrected_rows[0]["address_line_1"]


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_bulk_upsert_history_and_duplicates(backend, tmp_path, request):
    engine = engine_for(backend, tmp_path, request)
    feed = _feed(tracked_columns=["address_line_1", "postcode"])
    try:
        rows, first, second, again = _scenario(engine, tmp_path, feed)
        tables = FeedTables(build_plan(feed))
        with engine.connect() as connection:
            stored = {r.nss_id: r for r in connection.execute(sa.select(tables.records))}
            history = connection.execute(sa.select(tables.history)).mappings().all()
            rejections = connection.execute(
                sa.select(rejections_table.c.row_number, rejections_table.c.reason)
                .where(rejections_table.c.revision == "r1")
                .order_by(rejections_table.c.row_number)).all()
    finally:
        engine.dispose()
    duplicate = rows[1]["nss_id"]
    assert (first.inserted, first.rejected) == (8, 2)
    assert [r.row_number for r in rejections] == [3, 9]  # rows 2 and 8 of the data, +header
    assert rejections[0].reason == "duplicate nss_id in this file (also row 9)"
    assert duplicate not in {r for r in stored if stored[r].source_revision == "r1"}
    # The correction: both ids of the duplicate rows come in now (row 8 had row 2's id), and
    # one tracked and one untracked change.
    assert (second.inserted, second.updated, second.unchanged) == (2, 2, 6)
    assert second.history_rows == 1
    [change] = history
    assert change["nss_id"] == rows[2]["nss_id"] and change["changed_columns"] == "address_line_1"
    assert json.loads(change["changes"])["address_line_1"]["to"] == "1 New Road"
    assert change["source_revision"] == "r2" and change["run_id"] == "run-r2"
    assert stored[rows[3]["nss_id"]].phone_number == "07700 900999"
    assert stored[rows[0]["nss_id"]].source_revision == "r1"  # unchanged: untouched
    assert isinstance(stored[rows[0]["nss_id"]].date_of_birth, dt.date)
    # Reprocessing the same revision changes nothing and writes no second history row.
    assert (again.inserted, again.updated, again.unchanged, again.history_rows) == (0, 0, 10, 0)


def test_a_wrong_header_writes_nothing(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'tables.db'}")
    path = write_csv(tmp_path / "bad.csv", NSSS, sample_rows(NSSS, 3),
                     headers={"nss_id": "NSS Number"})
    with pytest.raises(HeaderMismatch) as raised:
        ingest(engine, NSSS, path, "r1")
    assert raised.value.problem.missing == ["nss_id"]
    assert raised.value.problem.unexpected == ["NSS Number"]
    assert sa.inspect(engine).get_table_names() == []
    engine.dispose()


def test_rows_that_break_the_models_rules_are_rejected_with_their_reasons(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'tables.db'}")
    rows = sample_rows(NSSS, 8)
    rows[1]["email"] = "not an address"  # row 3 of the sheet
    rows[2]["postcode"] = "12345"  # row 4
    rows[3]["first_name"] = "   "  # row 5: only spaces is empty, and the name is required
    rows[4]["needs_essential_supplies"] = "maybe"  # row 6
    rows[5]["nhs_number"] = "123"  # row 7
    rows[6]["email"] = "  ann@example.org  "  # row 8: padded, still good
    try:
        report = ingest(engine, NSSS, write_csv(tmp_path / "rules.csv", NSSS, rows), "r1")
        with engine.connect() as connection:
            rejections = connection.execute(
                sa.select(rejections_table.c.row_number, rejections_table.c.column_name,
                          rejections_table.c.reason, rejections_table.c.value)
                .order_by(rejections_table.c.row_number)).all()
            records = FeedTables(build_plan(NSSS)).records
            emails = dict(connection.execute(sa.select(records.c.nss_id, records.c.email)).all())
    finally:
        engine.dispose()
    assert (report.inserted, report.rejected) == (3, 5)
    assert [tuple(r) for r in rejections] == [
        (3, "email", "not in the expected form", "not an address"),
        (4, "postcode", "not in the expected form", "12345"),
        (5, "first_name", "empty", None),
        (6, "needs_essential_supplies", "not one of the allowed values", "maybe"),
        (7, "nhs_number", "not in the expected form", "123"),
    ]
    assert emails[rows[6]["nss_id"]] == "ann@example.org"
    assert report.reasons["email: not in the expected form"] == 1


@pytest.mark.parametrize("backend", ["sqlite", pytest.param("postgresql",
                                                            marks=pytest.mark.postgres)])
def test_cells_reach_the_table_as_written_and_a_rerun_changes_nothing(backend, tmp_path,
                                                                        request):
    engine = engine_for(backend, tmp_path, request)
    feed = _feed(date_formats={})  # ISO 8601: a timestamp column
    rows = sample_rows(feed, 4, dates_as_text=False)
    rows[0]["address_line_1"] = 'Flat 2, "The Maltings"'
    rows[1]["address_line_2"] = "Rear entrance\nvia the lane"
    rows[2]["first_name"] = "Zoë"
    rows[3]["city"] = ""
    for row in rows:
        row["date_of_birth"] = row["date_of_birth"].isoformat()
    path = write_csv(tmp_path / "values.csv", feed, rows)
    try:
        first = ingest(engine, feed, path, "r1")
        again = ingest(engine, feed, path, "r2")
        records = FeedTables(build_plan(feed)).records
        with engine.connect() as connection:
            stored = {r.nss_id: r for r in connection.execute(sa.select(records))}
    finally:
        engine.dispose()
    assert first.inserted == 4
    assert (again.inserted, again.updated, again.unchanged, again.history_rows) == (0, 0, 4, 0)
    assert stored[rows[0]["nss_id"]].address_line_1 == 'Flat 2, "The Maltings"'
    assert stored[rows[1]["nss_id"]].address_line_2 == "Rear entrance\nvia the lane"
    assert stored[rows[2]["nss_id"]].first_name == "Zoë"
    assert stored[rows[3]["nss_id"]].city is None
    born = stored[rows[0]["nss_id"]].date_of_birth
    assert isinstance(born, dt.datetime) and born.date().isoformat() == rows[0]["date_of_birth"]


def test_a_file_malformed_after_its_first_chunks_writes_nothing(tmp_path):
    engine = create_engine(f"sqlite:///{tmp_path / 'tables.db'}")
    path = write_csv(tmp_path / "broken.csv", NSSS, sample_rows(NSSS, 12))
    with open(path, "a", encoding="utf-8") as handle:
        handle.write('N9,"a quote that never closes\n')
    try:
        with pytest.raises(SheetError, match="malformed CSV: row 14 opens a quoted cell that "
                                              "never closes"):
            ingest(engine, NSSS, path, "r1")  # 4 rows a chunk: three chunks staged first
        assert_nothing_written(engine, NSSS)
    finally:
        engine.dispose()


def test_the_staging_scratch_file_is_gone_after_an_ingest_that_worked_or_failed(
        tmp_path, monkeypatch):
    """SQLite stages in a scratch file, attached to the connection for the apply: neither the
    file nor the attachment outlives the ingest, whether the file was good or broken."""
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    engine = create_engine(f"sqlite:///{tmp_path / 'tables.db'}")
    good = write_csv(tmp_path / "good.csv", NSSS, sample_rows(NSSS, 12))
    broken = write_csv(tmp_path / "broken.csv", NSSS, sample_rows(NSSS, 12))
    with open(broken, "a", encoding="utf-8") as handle:
        handle.write('N9,"a quote that never closes\n')
    try:
        assert ingest(engine, NSSS, good, "r1").inserted == 12
        assert list(scratch.iterdir()) == []
        with pytest.raises(SheetError):
            ingest(engine, NSSS, broken, "r2")
        assert list(scratch.iterdir()) == []
        with engine.connect() as connection:  # the pool's one connection, used by both
            attached = [row[1] for row in connection.exec_driver_sql("PRAGMA database_list")]
        assert set(attached) <= {"main", "temp"}  # temp: SQLite's own, for sorts
    finally:
        engine.dispose()


def _with_extra_fields(path: Path, row: int, extra: str) -> Path:
    """`extra` (say `,x`: an unquoted comma's worth) appended to spreadsheet row `row`."""
    lines = path.read_bytes().decode().splitlines(keepends=True)
    line = lines[row - 1]
    body = line.rstrip("\r\n")
    lines[row - 1] = body + extra + line[len(body):]
    path.write_bytes("".join(lines).encode())
    return path


@pytest.mark.parametrize(("row", "extra", "fields"), [
    pytest.param(3, ",x", 13, id="first-chunk"),
    pytest.param(10, ",x", 13, id="first-row-of-a-later-chunk"),
    pytest.param(12, ",x", 13, id="later-chunk"),
    pytest.param(6, ",", 13, id="an-empty-extra-field-at-a-chunk-start"),
    pytest.param(10, ",,x", 14, id="two-extra-fields-at-a-chunk-start"),
])
def test_a_row_with_more_fields_than_the_header_fails_the_file_naming_the_row(
        tmp_path, row, extra, fields):
    # 12 data rows (sheet rows 2-13), 4 to a chunk: rows 2-5, 6-9, 10-13. pandas alone never
    # checks the first row of a later chunk: it dropped the extra fields there without a word.
    # An empty extra field is caught too (a sentinel column reads "" whether the field is
    # there or not), and the row is the one a spreadsheet shows.
    engine = create_engine(f"sqlite:///{tmp_path / 'tables.db'}")
    path = _with_extra_fields(write_csv(tmp_path / "Residents May.csv", NSSS,
                                        sample_rows(NSSS, 12)), row, extra)
    problem = f"malformed CSV: row {row} has {fields} fields, the header has 12"
    try:
        with pytest.raises(SheetError, match=problem):
            ingest(engine, NSSS, path, "r1", chunk_rows=4)
        assert_nothing_written(engine, NSSS)
    finally:
        engine.dispose()
    # A Google Sheet arrives as Drive's CSV export and is read the same way.
    reader = SheetReader(path, "google_sheet", NSSS.date_formats)
    names, _ = check_header(reader.header, build_plan(NSSS).column_names)
    with pytest.raises(SheetError, match=problem):
        list(reader.chunks(names, 4))


def test_xlsx_values_beyond_the_header_fail_in_any_chunk(tmp_path):
    path = tmp_path / "wide.xlsx"
    workbook = openpyxl.Workbook()
    sheet = workbook.active
    sheet.append(["ID", "Name"])
    for number in range(2, 12):
        sheet.append([f"N{number}", "Ann", "spill"] if number == 9 else [f"N{number}", "Ann"])
    workbook.save(path)
    reader = SheetReader(path, "xlsx")
    with pytest.raises(SheetError, match="row 9 has a value in column C, which has no header"):
        list(reader.chunks(["id", "name"], 3))
