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
import io
import itertools
import re
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

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
# Arrow reads a CSV a block at a time and parses several blocks ahead: memory follows the block
# size (measured at 1M rows: +30 MB at 256 KiB with jemalloc, +120 MB at 1 MiB with mimalloc,
# pyarrow's default pool, which keeps freed memory). A cell may not be larger than a block
# (the csv module's limit was 128 KiB).
CSV_BLOCK_BYTES = 256 << 10
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

def normalize_header(text: object) -> str:
    """`Date of Birth`, ` date_of_birth ` and `DATE-OF-BIRTH` all become `date_of_birth`."""
    return re.sub(r"[^0-9a-z]+", "_", str(text if text is not None else "").strip().lower()).strip("_")


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
        """pyarrow's streaming CSV reader (C++, outside the GIL): cells stay Arrow strings, so
        stripping, the empty check and pandera's regex checks (RE2) never build Python strings.

        A row with fewer fields than the header is read as if the missing ones were empty, as
        spreadsheet tools do; Arrow hands such rows to `invalid_row_handler`, so they are parsed
        here and put back in their place. A row with more fields fails the file, naming it."""
        import pyarrow as pa
        import pyarrow.csv as pacsv

        _check_quotes_close(self.path, self.encoding)
        width = len(names)
        short_rows: dict[int, list[str]] = {}  # spreadsheet row number → fields, padded
        problems: list[str] = []

        def on_invalid_row(row) -> str:
            if row.actual_columns > row.expected_columns:
                problems.append(_too_many_fields(row.number, row.actual_columns, width))
                return "error"
            try:
                short_rows[row.number] = _short_row_fields(row.number, row.text, width)
            except SheetError as error:
                problems.append(str(error))
                return "error"
            return "skip"

        columns = [f"c{i}" for i in range(width)]
        rows = _CsvRowNumbers(short_rows)
        pool = _arrow_memory_pool()
        try:
            batches = pacsv.open_csv(
                self.path, memory_pool=pool,
                read_options=pacsv.ReadOptions(
                    column_names=columns, skip_rows=1, block_size=CSV_BLOCK_BYTES,
                    # `InvalidRow.number` (the row a spreadsheet shows) needs one thread.
                    use_threads=False,
                    encoding="utf8" if self.encoding == "utf-8-sig" else self.encoding),
                parse_options=pacsv.ParseOptions(
                    newlines_in_values=True, ignore_empty_lines=False,
                    invalid_row_handler=on_invalid_row),
                convert_options=pacsv.ConvertOptions(
                    column_types={column: pa.string() for column in columns},
                    strings_can_be_null=False, quoted_strings_can_be_null=False),
            )
            pending: list = []
            pending_rows = 0
            for batch in batches:
                pending.append(batch)
                pending_rows += batch.num_rows
                while pending_rows >= chunk_rows:
                    table = pa.Table.from_batches(pending)
                    yield _arrow_frame(table.slice(0, chunk_rows), names, rows, pool)
                    rest = table.slice(chunk_rows)
                    pending, pending_rows = rest.to_batches(), rest.num_rows
            if pending_rows or rows.has_short_rows_left():
                table = pa.Table.from_batches(pending, schema=batches.schema)
                yield _arrow_frame(table, names, rows, pool, last=True)
        except pa.ArrowInvalid as error:
            if "Could not skip initial" in str(error):  # a header with no line end, no rows
                return
            if problems:
                raise SheetError(f"malformed CSV: {problems[0]}") from None
            if "straddles two block boundaries" in str(error):
                raise SheetError(_oversized_row(self.path, self.encoding, rows.next_number)) \
                    from None
            raise SheetError(f"malformed CSV, at row {rows.next_number} or after: "
                             f"{_arrow_error(error)}; save the sheet as CSV again and upload "
                             "it again") from None

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


class _CsvRowNumbers:
    """The spreadsheet row number of each row Arrow yields: consecutive from row 2, except
    around the short rows Arrow skipped (read here instead), which keep their own numbers."""

    def __init__(self, short_rows: dict[int, list[str]]):
        self.short_rows = short_rows  # filled by the reader as it parses, consumed here
        self.next_number = FIRST_DATA_ROW

    def take(self, count: int, last: bool = False):
        """(the numbers of the next `count` Arrow rows, the short rows that go among them)."""
        import numpy as np
        import pandas as pd

        start = self.next_number
        waiting = [number for number in sorted(self.short_rows) if number >= start]
        if not waiting:
            self.next_number = start + count
            return pd.RangeIndex(start, start + count), []
        # The Arrow rows take the first `count` numbers that no short row holds.
        numbers = np.setdiff1d(np.arange(start, start + count + len(waiting)), waiting,
                               assume_unique=True)[:count]
        end = int(numbers[-1]) if count else start - 1
        taken = [number for number in waiting if last or number < end]
        self.next_number = max([end, *taken]) + 1
        return pd.Index(numbers), [(number, self.short_rows.pop(number)) for number in taken]

    def has_short_rows_left(self) -> bool:
        return bool(self.short_rows)


def _arrow_memory_pool():
    """jemalloc where pyarrow has it: it hands memory back as chunks come and go, where the
    default (mimalloc) kept about 50 MB more reading 1M rows."""
    import pyarrow as pa

    try:
        return pa.jemalloc_memory_pool()
    except NotImplementedError:  # a pyarrow built without it
        return pa.default_memory_pool()


def _arrow_frame(table, names: list[str | None], rows: _CsvRowNumbers, pool,
                 last: bool = False):
    """One chunk of Arrow cells → the reader's DataFrame: cells stripped, empty ones missing,
    unnamed columns dropped (once checked to be empty), indexed by spreadsheet row number."""
    import pandas as pd
    import pyarrow as pa
    import pyarrow.compute as pc

    index, short = rows.take(table.num_rows, last)
    missing = pa.scalar(None, pa.string())
    cleaned = {}
    for position, (name, cells) in enumerate(zip(names, table.columns)):
        cells = pc.utf8_trim_whitespace(cells, memory_pool=pool)
        cells = pc.if_else(pc.equal(pc.binary_length(cells, memory_pool=pool), 0,
                                    memory_pool=pool), missing, cells, memory_pool=pool)
        if name is None:
            filled = pc.is_valid(cells)
            if pc.any(filled).as_py():
                raise SheetError(_value_without_header(
                    int(index[pc.index(filled, True).as_py()]), position))
            continue
        cleaned[name] = pd.arrays.ArrowStringArray(cells)
    frame = pd.DataFrame(cleaned, index=index)
    if short:
        for number, fields in short:
            for position, name in enumerate(names):
                if name is None and fields[position].strip():
                    raise SheetError(_value_without_header(number, position))
        extra = pd.DataFrame(
            {name: pd.array([fields[position].strip() or None for _, fields in short],
                            dtype="string[pyarrow]")
             for position, name in enumerate(names) if name is not None},
            index=[number for number, _ in short])
        frame = pd.concat([frame, extra]).sort_index() if len(frame) else extra
    return frame


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


def _short_row_fields(number: int, text: str, width: int) -> list[str]:
    """The fields of a row with fewer than `width` (Arrow's raw text of it), padded with empty
    ones; SheetError when the row opens a quote that never closes (it then runs to the end of
    the file, so Arrow sees it as one short row)."""
    try:
        list(csv.reader(io.StringIO(text), strict=True))
    except csv.Error as error:
        if "unexpected end of data" in str(error):
            raise SheetError(
                f"row {number} opens a quoted cell that never closes (EOF inside string)"
            ) from None
    records = list(csv.reader(io.StringIO(text)))  # as leniently as Arrow read the others
    fields = records[0] if records else []
    return fields + [""] * (width - len(fields))


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


def _arrow_error(error: Exception) -> str:
    """What went wrong, from Arrow's message, without the row text Arrow quotes after it."""
    text = str(error).strip().splitlines()[0] if str(error).strip() else "unreadable"
    text = re.sub(r"^CSV (parse|conversion) error[^:]*: ", "", text)
    text = re.sub(r"^Row #\d+: ", "", text)
    return text.split(": ", 1)[0]


def _too_many_fields(row: int, fields: int, width: int) -> str:
    return f"row {row} has {fields} fields, the header has {width} (an unquoted comma?)"
