"""Which sheet of an XLSX workbook holds the feed's rows.

The rule: a feed's rows are on one sheet, the only sheet holding data (usually the first).
Empty sheets and chart sheets are not read, and the run's notes name them. Data on two sheets
or more fails the file before anything is read as rows, naming those sheets: which of them is
the feed's cannot be told, and a second sheet of rows must not vanish without a word.
Workbooks are opened in openpyxl's read-only mode: rows stream, memory stays flat.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path

from credflow_assets.drive_feeds.sheet_errors import SheetError

UNREADABLE = ("not a readable XLSX workbook: open it in Excel or Google Sheets, save it again "
              "as .xlsx and upload it again")


@dataclass(frozen=True)
class SheetChoice:
    name: str  # the sheet read
    header: list[str]  # its row 1, cells as text
    ignored: list[str] = field(default_factory=list)  # the other sheets, all without data

    def note(self) -> str | None:
        if not self.ignored:
            return None
        return (f"sheet {self.name!r} read; {_plural(len(self.ignored), 'other sheet')} not "
                f"read, having no data: {', '.join(self.ignored)}")


@contextmanager
def open_workbook(path: Path):
    import openpyxl

    try:
        workbook = openpyxl.load_workbook(path, read_only=True, data_only=True)
    except Exception:  # noqa: BLE001 - BadZipFile, KeyError, InvalidFileException…: one to a user
        raise SheetError(UNREADABLE) from None
    try:
        yield workbook
    finally:
        workbook.close()


def sheet_rows(workbook, name: str) -> Iterator[tuple]:
    """The sheet's rows as tuples of cell values, from row 1."""
    sheet = workbook[name]
    sheet.reset_dimensions()  # some writers record wrong dimensions; read what is there
    return sheet.iter_rows(values_only=True)


def choose_sheet(path: Path) -> SheetChoice:
    """The one sheet with data, and its header; SheetError when none or several have data."""
    with open_workbook(path) as workbook:
        with_data, empty = [], []
        for name in workbook.sheetnames:
            sheet = workbook[name]
            shown = name + (" (hidden)" if sheet.sheet_state != "visible" else "")
            is_worksheet = hasattr(sheet, "iter_rows")  # a chart sheet holds no cells
            (with_data if is_worksheet and _has_data(sheet_rows(workbook, name))
             else empty).append((name, shown))
        if len(with_data) > 1:
            raise SheetError(
                f"the workbook has data on {len(with_data)} sheets "
                f"({', '.join(shown for _, shown in with_data)}): keep the feed's rows on one "
                "sheet, delete or clear the others, and upload it again")
        if not with_data:
            raise SheetError("the file has no header row: every sheet of the workbook is empty")
        name = with_data[0][0]
        first = next(sheet_rows(workbook, name), ())
    return SheetChoice(name=name, header=[_header_text(cell) for cell in first],
                       ignored=[shown for _, shown in empty])


def _has_data(rows: Iterator[tuple]) -> bool:
    """Whether any cell holds something; stops at the first that does."""
    return any(cell is not None and (not isinstance(cell, str) or cell.strip())
               for row in rows for cell in row)


def _header_text(cell) -> str:
    return "" if cell is None else str(cell)


def _plural(count: int, noun: str) -> str:
    return f"{count} {noun}{'' if count == 1 else 's'}"
