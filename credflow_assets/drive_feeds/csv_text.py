"""Which text a CSV holds, found in one pass over its bytes before any row is read.

- UTF-8, with or without a byte-order mark, is read as UTF-8.
- Anything else that decodes as Windows-1252 (what Excel on Windows saves as plain "CSV") is
  read as Windows-1252, and the run's notes say so: a name like "Müller" arrives as written.
- A file that is neither is refused, naming the first byte that is not UTF-8.
- UTF-16 (Excel's "Unicode Text") and NUL bytes are refused: either would be read as garbage
  (every other character a NUL), and PostgreSQL cannot store a NUL in text at all.
"""

from __future__ import annotations

import codecs
import csv
from dataclasses import dataclass
from pathlib import Path

from credflow_assets.drive_feeds.sheet_errors import SheetError, column_letter

UTF8, WINDOWS_1252 = "utf-8-sig", "cp1252"
SAVE_AS_UTF8 = "save it as 'CSV UTF-8' and upload it again"


@dataclass(frozen=True)
class CsvText:
    encoding: str  # a Python codec name
    first_non_utf8_byte: int | None = None  # set when read as Windows-1252

    def note(self) -> str | None:
        if self.encoding != WINDOWS_1252:
            return None
        return (f"read as Windows-1252 text: the file is not UTF-8 (from byte "
                f"{self.first_non_utf8_byte:,}); saving it as 'CSV UTF-8' avoids the guess")


def detect_text(path: Path, block_size: int = 1 << 20) -> CsvText:
    """The file's encoding; SheetError for UTF-16, text in neither encoding, or a NUL byte."""
    with open(path, "rb") as handle:
        start = handle.read(2)
    if start in (codecs.BOM_UTF16_LE, codecs.BOM_UTF16_BE):
        raise SheetError(f"the file is UTF-16 text (Excel's 'Unicode Text'): {SAVE_AS_UTF8}")
    # Scanned as plain UTF-8 (a byte-order mark is valid UTF-8), so offsets count from byte 0.
    not_utf8_at, nul_at = _scan(path, "utf-8", block_size)
    text = CsvText(UTF8)
    if not_utf8_at is not None:
        not_1252_at, nul_at = _scan(path, WINDOWS_1252, block_size)
        if not_1252_at is not None:
            raise SheetError(f"the file is not UTF-8 text (at byte {not_utf8_at:,}), nor "
                             f"Windows-1252: {SAVE_AS_UTF8}")
        text = CsvText(WINDOWS_1252, not_utf8_at)
    if nul_at is not None:
        raise SheetError(_nul_problem(path, text.encoding, nul_at))
    return text


def _scan(path: Path, encoding: str, block_size: int) -> tuple[int | None, int | None]:
    """(offset of the first byte `encoding` cannot decode, offset of the first NUL byte);
    None where there is none. Stops at the first undecodable byte."""
    decoder = codecs.getincrementaldecoder(encoding)()
    offset, nul_at = 0, None
    with open(path, "rb") as handle:
        while block := handle.read(block_size):
            if nul_at is None and (found := block.find(b"\0")) >= 0:  # memchr: no cost to speak of
                nul_at = offset + found
            pending = len(decoder.getstate()[0])  # bytes of a character cut by the last block
            try:
                decoder.decode(block)
            except UnicodeDecodeError as error:
                return offset - pending + error.start, nul_at
            offset += len(block)
        try:
            decoder.decode(b"", final=True)
        except UnicodeDecodeError:  # the file ends inside a character
            return offset - len(decoder.getstate()[0]), nul_at
    return None, nul_at


def _nul_problem(path: Path, encoding: str, nul_at: int) -> str:
    """Where the first NUL is, as a spreadsheet would show it (row and column), else its byte."""
    where = f"byte {nul_at:,}"
    try:
        with open(path, newline="", encoding=encoding) as handle:
            for row, fields in enumerate(csv.reader(handle), start=1):
                column = next((i for i, field in enumerate(fields) if "\0" in field), None)
                if column is not None:
                    where = f"row {row}, column {column_letter(column)}"
                    break
    except csv.Error:  # a cell past the csv module's 128 KiB: the byte offset will do
        pass
    return (f"{where} holds a NUL character (byte 0), which no spreadsheet cell holds: the file "
            f"is damaged or not a CSV; {SAVE_AS_UTF8}")
