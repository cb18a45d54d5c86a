"""Inbound sheets on Drive and on disk: what kind a file is, which revision it is, and its rows
read in chunks of text cells, numbered as a spreadsheet numbers them (the header is row 1).

CSV (UTF-8 with or without a byte-order mark, else Windows-1252, as Excel writes it), XLSX (first
worksheet, openpyxl read-only mode: rows stream, memory stays flat) and Google Sheets (exported
by Drive as CSV) all become the same thing: a header and an iterator of DataFrames of strings.
"""

from __future__ import annotations

import codecs
import csv
import datetime as dt
import itertools
import re
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    import pandas as pd

GOOGLE_SHEET_MIME = "application/vnd.google-apps.spreadsheet"
XLSX_MIME = "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet"
CSV_MIME = "text/csv"
GOOGLE_APPS_PREFIX = "application/vnd.google-apps."
FOLDER_MIME = "application/vnd.google-apps.folder"

CSV, XLSX, GOOGLE_SHEET = "csv", "xlsx", "google_sheet"
FIRST_DATA_ROW = 2  # the header is row 1, as in a spreadsheet


class SheetError(ValueError):
    """The file cannot be read as a sheet at all (type, encoding, malformed rows)."""


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
    unexpected: list[str]  # as written in the file
    duplicated: list[str]

    def describe(self) -> str:
        parts = []
        if self.missing:
            parts.append(f"missing column(s) {', '.join(self.missing)}")
        if self.unexpected:
            parts.append(f"unexpected column(s) {', '.join(repr(c) for c in self.unexpected)}")
        if self.duplicated:
            parts.append(f"repeated column(s) {', '.join(self.duplicated)}")
        return "; ".join(parts)


def check_header(header: list[str], expected: list[str]) -> tuple[list[str | None], HeaderProblem | None]:
    """Map the file's header onto the expected columns.

    Returns the normalised name of each file column (None for an unnamed column, which is
    ignored: spreadsheet tools leave empty trailing columns) and the problem, if any.
    """
    names = [normalize_header(column) or None for column in header]
    wanted = set(expected)
    missing = [column for column in expected if column not in names]
    unexpected = [raw for raw, name in zip(header, names) if name is not None and name not in wanted]
    duplicated = sorted({name for name in names if name is not None and names.count(name) > 1})
    if missing or unexpected or duplicated:
        return names, HeaderProblem(missing, unexpected, duplicated)
    return names, None


# -- reading ---------------------------------------------------------------------------------------

def detect_encoding(path: Path, block_size: int = 1 << 20) -> str:
    """utf-8-sig when the whole file decodes as UTF-8, else cp1252 (Excel's "CSV" on Windows)."""
    for encoding in ("utf-8-sig", "cp1252"):
        decoder = codecs.getincrementaldecoder(encoding)()
        try:
            with open(path, "rb") as handle:
                while block := handle.read(block_size):
                    decoder.decode(block)
                decoder.decode(b"", final=True)
            return encoding
        except UnicodeDecodeError:
            continue
    raise SheetError("the file is neither UTF-8 nor Windows-1252 text: save it as 'CSV UTF-8'")


class SheetReader:
    """A sheet on disk: `header` first (cheap), then `chunks()` of text cells.

    Each chunk is a DataFrame whose columns are the normalised header names (unnamed columns
    dropped) and whose index is the spreadsheet row number; cells are stripped strings or None.
    """

    def __init__(self, path: Path, kind: str, date_formats: dict[str, str] | None = None):
        self.path, self.kind = Path(path), kind
        self.date_formats = date_formats or {}
        self.encoding = detect_encoding(self.path) if kind in (CSV, GOOGLE_SHEET) else None
        self.header = self._read_header()

    def _read_header(self) -> list[str]:
        if self.kind == XLSX:
            with _open_workbook(self.path) as sheet:
                first = next(sheet.iter_rows(values_only=True), None)
            header = [("" if cell is None else str(cell)) for cell in (first or ())]
        else:
            with open(self.path, newline="", encoding=self.encoding) as handle:
                header = next(csv.reader(handle), [])
        if not any(column.strip() for column in header):
            raise SheetError("the file has no header row")
        return header

    def chunks(self, names: list[str | None], chunk_rows: int) -> Iterator[pd.DataFrame]:
        if self.kind == XLSX:
            yield from self._xlsx_chunks(names, chunk_rows)
        else:
            yield from self._csv_chunks(names, chunk_rows)

    def _csv_chunks(self, names, chunk_rows):
        import numpy as np
        import pandas as pd

        width = len(names)
        columns = [name or f"__unnamed_{i}" for i, name in enumerate(names)]
        start = FIRST_DATA_ROW  # the row of the chunk being read
        try:
            with open(self.path, newline="", encoding=self.encoding) as handle, pd.read_csv(
                self.path, dtype=str, keep_default_na=False, na_filter=False,
                skip_blank_lines=False, chunksize=chunk_rows, encoding=self.encoding,
                header=0, names=columns, index_col=False,
            ) as frames:
                # A row with more fields than the header is malformed (an unquoted comma shifts
                # every cell after it). pandas raises for one only in some places (never in the
                # first rows of a later chunk) and drops the extra fields silently elsewhere;
                # a missing field reads as an empty one, so a sentinel column cannot tell a
                # trailing empty field from none. So the fields of each chunk's records are
                # counted by the csv module first (the same records pandas reads next), all in
                # C (`map(len, …)` into numpy), and checked at once.
                records = csv.reader(handle)
                next(records, None)  # the header
                while True:
                    counts = np.fromiter(map(len, itertools.islice(records, chunk_rows)),
                                         dtype=np.int64)
                    wide = np.flatnonzero(counts > width)
                    if wide.size:
                        first = int(wide[0])
                        raise SheetError("malformed CSV: " + _too_many_fields(
                            start + first, int(counts[first]), width))
                    frame = next(frames, None)
                    if frame is None:
                        return
                    frame.index = pd.RangeIndex(start, start + len(frame))
                    start += len(frame)
                    yield _clean(frame, names)
        except pd.errors.ParserError as error:
            raise SheetError(f"malformed CSV: {_parser_error(error, width)}") from None
        except csv.Error as error:  # e.g. a cell over 128 KiB: a quote left open
            raise SheetError(f"malformed CSV, at row {start} or after: {error}") from None

    def _xlsx_chunks(self, names, chunk_rows):
        import pandas as pd

        width = len(names)
        columns = [name or f"__unnamed_{i}" for i, name in enumerate(names)]
        rows, numbers = [], []
        with _open_workbook(self.path) as sheet:
            for number, cells in enumerate(sheet.iter_rows(values_only=True), start=1):
                if number == 1:
                    continue
                values = [self._cell_text(cell, names[i] if i < width else None)
                          for i, cell in enumerate(cells[:width])]
                extra = [cell for cell in cells[width:] if cell not in (None, "")]
                if extra:
                    raise SheetError(
                        f"row {number} has values beyond the last named column ({width} columns)"
                    )
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


class _open_workbook:
    def __init__(self, path: Path):
        self.path = path

    def __enter__(self):
        import openpyxl

        try:
            self.workbook = openpyxl.load_workbook(self.path, read_only=True, data_only=True)
        except Exception as error:  # zipfile.BadZipFile, KeyError, InvalidFileException, …
            raise SheetError(f"not a readable XLSX workbook ({type(error).__name__})") from None
        sheet = self.workbook.worksheets[0]
        sheet.reset_dimensions()  # some writers record wrong dimensions; read what is there
        return sheet

    def __exit__(self, *exc):
        self.workbook.close()


def _clean(frame: pd.DataFrame, names: list[str | None]) -> pd.DataFrame:
    """Drop unnamed columns; strip cells; empty cells become missing (pandas `string` dtype)."""
    import pandas as pd

    keep = [column for column, name in zip(frame.columns, names) if name is not None]
    cleaned = {}
    for column in keep:
        # One pass of plain str methods: half the cost of `.str.strip()` then a mask.
        cells = frame[column].to_numpy(dtype=object)
        cleaned[column] = pd.array(
            [(cell.strip() or None) if cell is not None else None for cell in cells],
            dtype="string")
    return pd.DataFrame(cleaned, index=frame.index)


def _too_many_fields(row: int, fields: int, width: int) -> str:
    return f"row {row} has {fields} fields, the header has {width} (an unquoted comma?)"


def _parser_error(error: Exception, width: int) -> str:
    text = str(error).strip().splitlines()[0]
    # pandas: "Error tokenizing data. C error: Expected 5 fields in line 7, saw 6", where the
    # line is the record's number counting the header as 1: the spreadsheet's row number.
    match = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", text)
    if match:
        _, line, saw = match.groups()
        return _too_many_fields(int(line), int(saw), width)
    # "… EOF inside string starting at row 3", counting the header as row 0
    match = re.search(r"EOF inside string starting at row (\d+)", text)
    if match:
        return (f"row {int(match.group(1)) + 1} opens a quoted cell that never closes "
                "(EOF inside string)")
    return text
