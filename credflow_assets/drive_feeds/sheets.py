"""Inbound sheets on Drive and on disk: what kind a file is, which revision it is, and its rows
read in chunks of text cells, numbered as a spreadsheet numbers them (the header is row 1).

CSV (which text: csv_text.py), XLSX (which sheet: workbook.py) and Google Sheets (exported by
Drive as CSV) all become the same thing: a header and an iterator of DataFrames of strings.
Nothing in a file is dropped without a word: a part not read as rows (an empty sheet, an empty
column without a header) is named in `SheetReader.notes`, blank rows are counted, and anything
else that would vanish (a value under no header, a second sheet of rows) refuses the file.
"""

from __future__ import annotations

import csv
import datetime as dt
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

from credflow_assets.common.csv_chunks import (
    CSV_BLOCK_BYTES,
    CsvChunkError,
    CsvShape,
    csv_chunks,
)
from credflow_assets.common.csv_columns import normalize_header
from credflow_assets.drive_feeds.csv_text import detect_text
from credflow_assets.drive_feeds.sheet_errors import (
    SheetError,
    column_letter,
    column_ranges,
)
from credflow_assets.drive_feeds.workbook import choose_sheet, open_workbook, sheet_rows

if TYPE_CHECKING:
    import pandas as pd

GOOGLE_SHEET_MIME = "application/vnd.google-apps.spreadsheet"
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MIME = "text/csv"
GOOGLE_APPS_PREFIX = "application/vnd.google-apps."
FOLDER_MIME = "application/vnd.google-apps.folder"

CSV, XLSX, GOOGLE_SHEET = "csv", "xlsx", "google_sheet"
FIRST_DATA_ROW = 2  # the header is row 1, as in a spreadsheet
# Row 1 may be data (a file without its header) or junk: its cells are quoted in a message only
# when it is a header, and then at most this many of them.
SHOWN_COLUMNS = 10
# Separators people's tools use instead of commas (Excel in much of Europe writes ';').
OTHER_SEPARATORS = {";": "semicolons (;)", "\t": "tabs", "|": "bars (|)"}


def file_kind(name: str, mime_type: str) -> str:
    """csv, xlsx or google_sheet; SheetError for anything else, saying what would work."""
    lower = name.lower()
    if mime_type == GOOGLE_SHEET_MIME:
        return GOOGLE_SHEET
    if lower.endswith(".xlsx") or mime_type == XLSX_MIME:
        return XLSX
    if lower.endswith(".csv") or mime_type in (CSV_MIME, "application/csv"):
        return CSV
    if lower.endswith(".xls") or mime_type == "application/vnd.ms-excel":
        raise SheetError("old Excel .xls files are not read: save the sheet as .xlsx or CSV")
    suffix = Path(lower).suffix or mime_type
    raise SheetError(f"unsupported file type {suffix}: expected CSV, XLSX or a Google Sheet")


def revision_of(file: dict) -> str | None:
    """Which version of the file this is: the md5 of a binary file's content, else (a Google
    Sheet, which Drive gives no checksum) its modifiedTime. None for Google types that are not
    sheets (docs, folders), which no feed reads."""
    if file.get("md5Checksum"):
        return file["md5Checksum"]
    if file.get("mimeType") == GOOGLE_SHEET_MIME:
        return "mt-" + re.sub(r"[^0-9TZ]", "", file["modifiedTime"])
    return None


def local_name(file: dict) -> str:
    """A safe local file name for a Drive file (Google Sheets are saved as their CSV export)."""
    suffix = ".xlsx" if file_kind(file["name"], file["mimeType"]) == XLSX else ".csv"
    return "source" + suffix


# -- headers --------------------------------------------------------------------------------------

@dataclass(frozen=True)
class HeaderProblem:
    missing: list[str]
    unexpected: list[str]  # as written in the file; empty when row 1 is not a header
    duplicated: list[str]
    # Row 1 is not a header: it holds none of the feed's columns, or far more cells than the
    # feed has columns (lines run together). It may then be data: its cells are never quoted.
    not_a_header: bool = False
    cells: int = 0  # row 1's cells that are not empty
    columns: int = 0  # the feed's
    # Row 1 splits into the feed's columns on another separator: a ';'-separated file, say.
    separator: str | None = None
    row_text: str = ""  # row 1 as one line, shown (shortened) when `separator` is set

    def describe(self) -> str:
        if self.separator:
            shown = self.row_text if len(self.row_text) <= 80 else self.row_text[:79] + "…"
            return (f"row 1 reads as {_count(self.cells, 'column')}, {shown!r}: the file "
                    f"separates its columns with {OTHER_SEPARATORS[self.separator]}, not "
                    "commas; save it as 'CSV UTF-8 (comma delimited)' and upload it again")
        if self.not_a_header and self.cells > _most_header_cells(self.columns):
            return (f"row 1 is not the header: it has {_count(self.cells, 'cell')} for the "
                    f"feed's {self.columns} columns (are the file's line breaks missing?); put "
                    "the column names alone in row 1, and each row on a line of its own")
        if self.not_a_header:
            return (f"row 1 is not the header: none of its {_count(self.cells, 'cell')} is one "
                    f"of the feed's columns ({_listed(self.missing)}); put the column names in "
                    "row 1, or check that the file belongs to this feed")
        parts = []
        if self.missing:
            parts.append(f"missing column(s) {_listed(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected column(s) {_listed([repr(c) for c in self.unexpected])}")
        if self.duplicated:
            parts.append(f"repeated column(s) {_listed(self.duplicated)}")
        return "; ".join(parts)


def _listed(items: list[str]) -> str:
    shown = ", ".join(items[:SHOWN_COLUMNS])
    return shown + (f" and {len(items) - SHOWN_COLUMNS:,} more" if len(items) > SHOWN_COLUMNS
                    else "")


def _count(count: int, noun: str) -> str:
    return f"{count:,} {noun}{'' if count == 1 else 's'}"


def _most_header_cells(columns: int) -> int:
    """More cells than this in row 1 is not a header with a few extra columns: it is lines run
    together (a file whose line breaks were lost), whose cells are data."""
    return 2 * columns + 10


def check_header(header: list[str], expected: list[str]) -> tuple[list[str | None], HeaderProblem | None]:
    """Map the file's header onto the expected columns.

    Returns the normalised name of each file column (None for an unnamed column: spreadsheet
    tools leave empty trailing columns; the reader drops them, and refuses the file when one
    holds a value, which would otherwise vanish) and the problem, if any.
    """
    names = [normalize_header(column) or None for column in header]
    wanted = set(expected)
    found = Counter(name for name in names if name is not None)
    missing = [column for column in expected if column not in found]
    cells = sum(found.values())
    if len(missing) == len(expected):  # none of the feed's columns: is row 1 a header at all?
        return names, _not_a_header(header, wanted, missing, cells)
    if cells > _most_header_cells(len(expected)):
        return names, HeaderProblem(missing, [], [], not_a_header=True, cells=cells,
                                    columns=len(expected))
    unexpected = [raw for raw, name in zip(header, names) if name is not None and name not in wanted]
    duplicated = sorted(name for name, count in found.items() if count > 1)
    if missing or unexpected or duplicated:
        return names, HeaderProblem(missing, unexpected, duplicated)
    return names, None


def _not_a_header(header: list[str], wanted: set[str], missing: list[str],
                  cells: int) -> HeaderProblem:
    """Row 1 holds none of the feed's columns: a header written with another separator (then
    it is column names, safe to show), or not a header (perhaps a row of data: not shown)."""
    text = ",".join(header).rstrip(",")  # the line as written, give or take quoting
    for separator in OTHER_SEPARATORS:
        if separator in text and wanted & {normalize_header(part)
                                          for part in text.split(separator)}:
            return HeaderProblem(missing, [], [], cells=cells, separator=separator,
                                 row_text=text)
    return HeaderProblem(missing, [], [], not_a_header=True, cells=cells, columns=len(wanted))


# -- reading ---------------------------------------------------------------------------------------

class SheetReader:
    """A sheet on disk: `header` first (cheap), then `chunks()` of text cells.

    Each chunk is a DataFrame whose columns are the normalised header names (unnamed columns
    dropped) and whose index is the spreadsheet row number; cells are stripped strings or
    missing (pandas `string` dtype: Arrow-backed for CSV, so later checks run in C++).
    What was not read as rows, or was read in a way worth knowing, is in `notes` once the
    chunks have all been read.
    """

    def __init__(self, path: Path, kind: str, date_formats: dict[str, str] | None = None):
        self.path, self.kind = Path(path), kind
        self.date_formats = date_formats or {}
        if self.path.stat().st_size == 0:
            raise SheetError("the file is empty (0 bytes): upload the sheet again, with its "
                             "header in row 1")
        self._notes: list[str] = []
        self.encoding = self.sheet_name = None
        if kind == XLSX:
            choice = choose_sheet(self.path)
            self.sheet_name, self.header = choice.name, choice.header
            self._notes.append(choice.note())
        else:
            text = detect_text(self.path)
            self.encoding = text.encoding
            self._notes.append(text.note())
            self.header = self._read_csv_header()
        if not any(column.strip() for column in self.header):
            raise SheetError("the file has no header row: row 1 is empty; put the feed's column "
                             "names in row 1")

    def _read_csv_header(self) -> list[str]:
        with open(self.path, newline="", encoding=self.encoding) as handle:
            try:
                return next(csv.reader(handle), [])
            except csv.Error:  # a cell over the csv module's 128 KiB: not a header
                raise SheetError("the file has no header row: row 1 holds a cell of more than "
                                 "128 KiB; put the feed's column names in row 1") from None

    @property
    def notes(self) -> list[str]:
        """Parts of the file not read as rows (empty sheets, empty columns without a header)
        and how it was read (its encoding): for the summary and the run's metadata. Blank
        rows are counted apart. Complete once every chunk has been read."""
        unnamed = [position for position, cell in enumerate(self.header)
                   if not normalize_header(cell)]
        unnamed_note = (f"{_count(len(unnamed), 'column')} without a header and without "
                        f"values not read: {column_ranges(unnamed)}") if unnamed else None
        return [note for note in (*self._notes, unnamed_note) if note]

    def chunks(self, names: list[str | None], chunk_rows: int) -> Iterator[pd.DataFrame]:
        if self.kind == XLSX:
            yield from self._xlsx_chunks(names, chunk_rows)
        else:
            yield from self._csv_chunks(names, chunk_rows)

    def _csv_chunks(self, names, chunk_rows):
        """The shared CSV engine (`common.csv_chunks`: Arrow, streamed), cells trimmed, blank
        lines kept as rows (they are counted), a row with more fields than the header refused;
        its problems become sentences for the person who uploaded the sheet."""
        _check_quotes_close(self.path, self.encoding)
        shape = CsvShape(names=tuple(names), first_row=FIRST_DATA_ROW,
                         encoding="utf8" if self.encoding == "utf-8-sig" else self.encoding)
        try:
            yield from csv_chunks(self.path, shape, chunk_rows)
        except CsvChunkError as error:
            raise SheetError(self._problem(error, len(names))) from None

    def _problem(self, error: CsvChunkError, width: int) -> str:
        if error.kind == "too_many_fields":
            return (f"malformed CSV: row {error.row} has {error.fields} fields, the header has "
                    f"{width} (an unquoted comma?)")
        if error.kind == "unclosed_quote":
            return (f"malformed CSV: row {error.row} opens a quoted cell that never closes "
                    "(EOF inside string)")
        if error.kind == "value_without_header":
            return _value_without_header(error.row, error.position)
        if error.kind == "row_too_long":
            return _oversized_row(self.path, self.encoding, error.row)
        return (f"malformed CSV, at row {error.row} or after: {error.detail}; save the sheet as "
                "CSV again and upload it again")

    def _xlsx_chunks(self, names, chunk_rows):
        import pandas as pd

        width = len(names)
        columns = [name or f"__unnamed_{i}" for i, name in enumerate(names)]
        rows, numbers = [], []
        with open_workbook(self.path) as workbook:
            for number, cells in enumerate(sheet_rows(workbook, self.sheet_name), start=1):
                if number == 1:
                    continue
                values = [self._cell_text(cell, names[i] if i < width else None)
                          for i, cell in enumerate(cells[:width])]
                extra = next((width + i for i, cell in enumerate(cells[width:])
                              if cell is not None and (not isinstance(cell, str)
                                                       or cell.strip())), None)
                if extra is not None:
                    raise SheetError(_value_without_header(number, extra))
                values += [None] * (width - len(values))
                rows.append(values)
                numbers.append(number)
                if len(rows) >= chunk_rows:
                    yield _clean(pd.DataFrame(rows, columns=columns, index=numbers, dtype=object),
                                 names)
                    rows, numbers = [], []
        if rows:
            yield _clean(pd.DataFrame(rows, columns=columns, index=numbers, dtype=object), names)

    def _cell_text(self, cell, column: str | None):
        if cell is None:
            return None
        if isinstance(cell, str):
            return cell
        if isinstance(cell, bool):
            return "TRUE" if cell else "FALSE"
        if isinstance(cell, int):
            return str(cell)
        if isinstance(cell, float):
            return str(int(cell)) if cell.is_integer() and abs(cell) < 1e15 else repr(cell)
        if isinstance(cell, (dt.datetime, dt.date)):
            # A real date cell: write it in the feed's format, so it parses like typed text.
            fmt = self.date_formats.get(column or "")
            if fmt:
                return cell.strftime(fmt)
            if isinstance(cell, dt.datetime) and cell.time() == dt.time(0):
                return cell.date().isoformat()
            return cell.isoformat()
        return str(cell)


def _clean(frame: pd.DataFrame, names: list[str | None]) -> pd.DataFrame:
    """Strip cells; empty cells become missing (pandas `string` dtype); unnamed columns are
    dropped once checked to be empty."""
    import pandas as pd

    cleaned = {}
    for position, (column, name) in enumerate(zip(frame.columns, names)):
        # One pass of plain str methods: half the cost of `.str.strip()` then a mask.
        cells = [(cell.strip() or None) if isinstance(cell, str) else cell
                 for cell in frame[column].to_numpy(dtype=object)]
        if name is None:
            filled = next((number for number, cell in zip(frame.index, cells)
                           if cell is not None), None)
            if filled is not None:
                raise SheetError(_value_without_header(int(filled), position))
            continue
        cleaned[column] = pd.array(cells, dtype="string")
    return pd.DataFrame(cleaned, index=frame.index)


def _check_quotes_close(path: Path, encoding: str, block_size: int = 1 << 20) -> None:
    """SheetError when the file ends inside a quoted cell.

    Arrow reads a quote left open as one cell running to the end of the file: the rows after it
    would vanish into that cell without a word. Every closed quote adds an even number of `"`
    characters, so an even count needs no further look; an odd one may still be a stray quote
    inside an unquoted cell (`12" ruler`), so the csv module then finds where the last record
    starts and reads it strictly."""
    quotes = 0
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            quotes += block.count(b'"')
    if quotes % 2 == 0:
        return
    last_row = last_start_line = 0
    with open(path, newline="", encoding=encoding) as handle:
        records = csv.reader(handle)
        line = 0
        try:
            for last_row, _ in enumerate(records, start=1):  # the header is row 1
                last_start_line, line = line, records.line_num
        except csv.Error:  # a cell over the csv module's 128 KiB: what an open quote reads
            raise SheetError(f"malformed CSV: row {last_row + 1} opens a quoted cell that never "
                             "closes (or holds a cell of more than 128 KiB)") from None
    with open(path, newline="", encoding=encoding) as handle:
        try:
            for _ in csv.reader(itertools.islice(handle, last_start_line, None), strict=True):
                pass
        except csv.Error as error:
            if "unexpected end of data" in str(error):
                raise SheetError(f"malformed CSV: row {last_row} opens a quoted cell that never "
                                 "closes (EOF inside string)") from None


def _value_without_header(row: int, position: int) -> str:
    """A cell under an empty header cell: refused rather than dropped without a word."""
    return (f"row {row} has a value in column {column_letter(position)}, which has no "
            "header: name the column or clear it")


def _oversized_row(path: Path, encoding: str, from_row: int) -> str:
    """The message for a row longer than Arrow's block, naming the row (found again by the csv
    module, from `from_row`, where Arrow had got to): no feed's row is that long, so it is a
    giant cell or a quote that swallowed the rows after it."""
    limit = CSV_BLOCK_BYTES >> 10
    problem = (f"is more than {limit} KiB long: a cell that long is no feed's value, or a quote "
               "left open took in the rows after it; check the file and upload it again")
    with open(path, newline="", encoding=encoding) as handle:
        records = csv.reader(handle)
        row = 0
        try:
            for row, fields in enumerate(records, start=1):
                if row >= from_row and sum(map(len, fields)) + len(fields) > CSV_BLOCK_BYTES:
                    return f"malformed CSV: row {row} {problem}"
        except csv.Error:  # a cell over the csv module's own 128 KiB
            return f"malformed CSV: row {row + 1} {problem}"
    return f"malformed CSV: a row from row {from_row} on {problem}"
